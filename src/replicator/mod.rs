//! The replicator: copies every new source version to the destinations its
//! rules name, with the semantics of S3 replication.
//!
//! # Consistency
//! Tasks are created by the uploader in the same journal transaction that
//! records the version (`journal::complete_with_tasks`), so an uploaded version
//! always has its replication queued, across any crash. A task is (key, source
//! version id, destination); it is COMPLETED only after the replica exists.
//!
//! # Ordering
//! `ordering::runnable` lets only the oldest open task of a (key, destination)
//! run, one at a time: versions reach a destination in source order and a late
//! older copy never overwrites a newer one. Across writers (other hosts,
//! discovery, resync) `copy` compares versions in the source's own order
//! before replacing a destination's current object, and writes conditionally.
//!
//! # Idempotency
//! Before copying, the destination's current object is looked at (see `copy`
//! for the one write that need not look first): if it already carries
//! `regionfs-source-version` = this version (a copy that finished just before
//! a crash, or one made by another writer), the task completes without
//! writing a duplicate version.
//!
//! After a crash, a copy that was in flight may still complete at the
//! destination; recovered tasks wait 2 s before they check, so such a late copy
//! is seen (and not written again, nor allowed to land after a newer version).
//!
//! # Retries
//! Transient errors leave the task PENDING and retry with jittered backoff,
//! unbounded. Permanent ones (AccessDenied, NoSuchBucket, versioning off at the
//! destination) mark it FAILED with the reason — and FAILED tasks are retried
//! every 30 s, so fixing the cause completes them without manual steps.
//!
//! Bytes are streamed: a GET of the source version feeds the destination PUT
//! (ranged GETs per part for large objects, [`PARTS_IN_FLIGHT`] at a time);
//! nothing is held whole in memory.
//!
//! # Giving way to new writes
//! A new write is durable only once it is in the source; a replica of an
//! older version can wait. So replicas give way to the uploader (its
//! [`SourceLoad`], read from the [`SourceGauge`] this replicator makes and
//! the uploader it is handed to keeps current), each at most
//! [`GIVE_WAY_AT_MOST`] at a time, so that a
//! source that is never idle slows replication but never stops it:
//! - each part of a large replica (one copied in parts) waits while any
//!   upload is queued or one was submitted a moment ago;
//! - a small replica waits only while the uploads are backed up (more queued
//!   than twice the uploader's concurrency): a steady stream the uploader
//!   keeps up with replicates at once, which keeps its replication lag low.
//!
//! # Bounded memory
//! A long backlog (a destination down for a day, a burst of files) lives in
//! the journal, not in memory: at most [`HELD_TASKS`] open tasks per
//! destination are held, its oldest by id. Tasks arriving beyond that stay in
//! the journal only (they are committed before they are queued); when the
//! held ones fall to half, the next oldest are read back. Ids follow the order
//! versions were recorded in, and a key's next version is recorded only after
//! its previous one was queued, so the oldest open task of every key is held
//! before any newer one: ordering is unchanged. Pending counts include the
//! tasks in the journal only, and so does the heartbeat's oldest open task.
//!
//! # Fresh small versions
//! A small file this process has just uploaded hands its bytes, ETag and
//! options to its tasks ([`Fresh`]): the replica is written from them, with no
//! HEAD, tagging, ACL request or GET at the source (only versions uploaded
//! without an ACL, hence private, qualify). At most [`FRESH_BUDGET`] bytes are
//! held in memory; the tasks beyond it keep only the ETag and options and
//! read the bytes from the file's clean copy in the cache when they run
//! (the `clean` cache given to [`Replicator::start`]), taking the ordinary path when that copy
//! is gone, incomplete or of another version. Either way they are exactly the
//! uploaded bytes: the uploader PUT this very buffer, and a clean copy is a
//! whole copy of the version whose ETag it carries, pinned while read (see
//! `cache`). Fresh state lives in memory only; after a failure or a restart
//! the task takes the ordinary path.

mod copy;
pub mod discover;
pub mod heartbeat;
pub mod ordering;
mod queue;
pub mod resync;
pub mod rules;
mod worker;

use queue::{Queue, Spill, HELD_TASKS};
use worker::{check_destination, give_way, run, Yield, RECOVERY_GRACE};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::config::{Config, OwnerOverride, UploadConfig};
use crate::error::StoreError;
use crate::journal::{Journal, NewTask, Op, OpKind, Task, TaskKind, TaskStatus};
use crate::meta::ObjectMeta;
use crate::store::probe::versioning_problem;
use crate::store::{AclState, ObjectStore, PutOptions};
use rules::{Change, Rules};

struct Destination {
    store: Arc<dyn ObjectStore>,
    config: crate::config::BucketConfig,
    /// Last versioning check: when, and what it found.
    checked: Mutex<Option<(Instant, Result<(), String>)>>,
    acls: AclState,
    conditions: crate::store::ConditionSupport,
}

/// The bytes and metadata of a version this process has just uploaded,
/// without an ACL (so it is private).
pub(crate) struct Fresh {
    /// `None` for tasks beyond [`FRESH_BUDGET`]: read from the clean copy.
    pub body: Option<bytes::Bytes>,
    /// The uploaded version's ETag (its clean copy carries it).
    pub etag: String,
    /// What the upload sent (metadata, content type, tags), without an ACL.
    pub opts: PutOptions,
}

/// A fresh version's bytes in hand for its replica.
struct FreshReady {
    body: bytes::Bytes,
    fresh: Arc<Fresh>,
}

/// Parts of one large replica copied at once.
pub(crate) const PARTS_IN_FLIGHT: usize = 4;

/// The longest one part of a large replica waits for the source to go idle.
pub(crate) const GIVE_WAY_AT_MOST: Duration = Duration::from_secs(1);

/// How often a waiting part looks again.
const GIVE_WAY_POLL: Duration = Duration::from_millis(20);

/// What the uploader is doing now (see "Giving way").
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SourceLoad {
    /// Operations queued for the source (running ones included).
    pub queued: usize,
    /// One was submitted a moment ago: a writer between two closes.
    pub(crate) submitting: bool,
}

impl SourceLoad {
    /// Any upload queued, or one submitted a moment ago: parts of large
    /// replicas wait (see "Giving way").
    pub(crate) fn busy(self) -> bool {
        self.queued > 0 || self.submitting
    }
}

/// The uploader's load as it changes. The replicator makes it and the
/// uploader it is handed to keeps it current, so neither needs telling
/// about the other once both exist. A replicator no uploader feeds (a
/// resync's, a repair's) reads an idle source and never waits.
#[derive(Debug, Default)]
pub(crate) struct SourceGauge {
    queued: std::sync::atomic::AtomicUsize,
    submitting_until: Mutex<Option<Instant>>,
}

impl SourceGauge {
    /// Operations queued for the source now (running ones included).
    pub(crate) fn set_queued(&self, n: usize) {
        self.queued.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// An operation was submitted now: a writer may be between two closes,
    /// so the source counts as busy for `quiet`.
    pub(crate) fn submitted(&self, quiet: Duration) {
        *self.submitting_until.lock().unwrap() = Some(Instant::now() + quiet);
    }

    pub(crate) fn load(&self) -> SourceLoad {
        let until = *self.submitting_until.lock().unwrap();
        SourceLoad {
            queued: self.queued.load(std::sync::atomic::Ordering::Relaxed),
            submitting: until.is_some_and(|u| Instant::now() < u),
        }
    }
}

impl Inner {
    /// What the uploader is doing now.
    fn source_load(&self) -> SourceLoad {
        #[cfg(test)]
        if let Some((busy, _)) = self.pinned_load.get() {
            return busy();
        }
        self.gauge.load()
    }

    /// The longest one replica (or part) waits for the source.
    fn give_way_at_most(&self) -> Duration {
        #[cfg(test)]
        if let Some((_, at_most)) = self.pinned_load.get() {
            return *at_most;
        }
        GIVE_WAY_AT_MOST
    }
}

/// A load tests impose in place of the gauge's, with its own bound.
#[cfg(test)]
pub(crate) type SourceBusy = Arc<dyn Fn() -> SourceLoad + Send + Sync>;

/// At most this many bytes of fresh versions are held in memory for their
/// replicas; beyond it a task reads its clean copy (see "Fresh small versions").
/// Enough for a steady stream, whose replicas run at once; a burst, whose
/// replicas wait, is what reads its clean copies.
pub(crate) const FRESH_BUDGET: usize = 1 << 20;

#[derive(Default)]
struct FreshBodies {
    by_task: HashMap<i64, Arc<Fresh>>,
    bytes: usize,
}

impl FreshBodies {
    fn take(&mut self, task: i64) -> Option<Arc<Fresh>> {
        let f = self.by_task.remove(&task)?;
        self.bytes -= f.body.as_ref().map_or(0, |b| b.len());
        Some(f)
    }
}

/// What the replicator measures as it works, per destination: seconds from
/// a version's staging to its replica, and bytes copied by this process.
/// The families are shared handles: the metrics endpoint registers clones.
#[derive(Clone)]
pub struct Observed {
    pub lag: Family<Vec<(String, String)>, Histogram>,
    pub bytes: Family<Vec<(String, String)>, Counter>,
}

impl Default for Observed {
    fn default() -> Self {
        Observed {
            lag: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.05, 2.0, 16))
            }),
            bytes: Family::default(),
        }
    }
}

impl Observed {
    fn observe(&self, destination: &str, lag_s: f64, bytes: u64) {
        let labels = vec![("destination".to_string(), destination.to_string())];
        self.lag.get_or_create(&labels).observe(lag_s);
        self.bytes.get_or_create(&labels).inc_by(bytes);
    }
}

struct Inner {
    source: Arc<dyn ObjectStore>,
    destinations: HashMap<String, Destination>,
    rules: Rules,
    journal: Journal,
    workers: usize,
    upload: UploadConfig,
    target_ms: i64,
    queue: Mutex<Queue>,
    fresh: Mutex<FreshBodies>,
    /// Where fresh tasks beyond the budget read their bytes.
    clean: Option<Arc<crate::cache::Cache>>,
    wake: Notify,
    /// Signalled whenever a task finishes (fsync all-regions waits on it).
    finished: Notify,
    pending: watch::Sender<usize>,
    observed: Observed,
    source_acls: AclState,
    /// Rules whose replicas go to the destination's owner.
    owner_override: HashSet<String>,
    /// The uploader's load replicas give way to (see "Giving way").
    gauge: Arc<SourceGauge>,
    #[cfg(test)]
    pinned_load: std::sync::OnceLock<(SourceBusy, Duration)>,
    /// Open tasks held per destination; `None`: all of them (a resync's own).
    held_at_most: Option<usize>,
    /// Until then, tasks read from the journal wait (see [`RECOVERY_GRACE`]).
    grace_until: Instant,
}

/// Handle to the replication workers.
#[derive(Clone)]
pub struct Replicator {
    inner: Arc<Inner>,
}

impl Replicator {
    /// Starts the workers with the open tasks from the journal.
    /// `clean`: the cache whose clean copies fresh tasks beyond
    /// [`FRESH_BUDGET`] read their bytes from (see "Fresh small versions").
    pub async fn start(
        config: &Config,
        source: Arc<dyn ObjectStore>,
        destinations: HashMap<String, Arc<dyn ObjectStore>>,
        journal: Journal,
        clean: Arc<crate::cache::Cache>,
    ) -> Result<Replicator, crate::journal::JournalError> {
        let r = Self::start_from_journal(
            config,
            source,
            destinations,
            journal,
            HELD_TASKS,
            Some(clean),
        )
        .await?;
        // Only the replicator that owns all open tasks may say how far
        // replication has got (resync runs a partial one).
        tokio::spawn(heartbeat::run(
            r.inner.clone(),
            config.source.prefix.clone(),
        ));
        Ok(r)
    }

    /// Starts the workers with the oldest `held` open tasks of each
    /// destination from the journal; the rest are read as those finish.
    /// Without `clean`, fresh tasks beyond the budget read the source.
    pub(crate) async fn start_from_journal(
        config: &Config,
        source: Arc<dyn ObjectStore>,
        destinations: HashMap<String, Arc<dyn ObjectStore>>,
        journal: Journal,
        held: usize,
        clean: Option<Arc<crate::cache::Cache>>,
    ) -> Result<Replicator, crate::journal::JournalError> {
        let mut open = Vec::new();
        let mut spilled = HashMap::new();
        for name in journal.open_task_destinations().await? {
            let w = journal.open_tasks_window(name.clone(), held).await?;
            let left = (w.open as usize).saturating_sub(w.tasks.len());
            if left > 0 {
                spilled.insert(
                    name,
                    Spill {
                        count: left,
                        earliest_ms: w.earliest_ms.unwrap_or(i64::MIN),
                        ..Spill::empty()
                    },
                );
            }
            open.extend(w.tasks);
        }
        Ok(Self::start_inner(
            config,
            source,
            destinations,
            journal,
            open,
            Some((held.max(1), spilled)),
            clean,
        ))
    }

    /// Starts the workers with only the given tasks, all held in memory
    /// (resync runs the tasks it queued, not those a running mount owns).
    pub fn start_with(
        config: &Config,
        source: Arc<dyn ObjectStore>,
        destinations: HashMap<String, Arc<dyn ObjectStore>>,
        journal: Journal,
        open: Vec<Task>,
    ) -> Replicator {
        Self::start_inner(config, source, destinations, journal, open, None, None)
    }

    fn start_inner(
        config: &Config,
        source: Arc<dyn ObjectStore>,
        destinations: HashMap<String, Arc<dyn ObjectStore>>,
        journal: Journal,
        open: Vec<Task>,
        window: Option<(usize, HashMap<String, Spill>)>,
        clean: Option<Arc<crate::cache::Cache>>,
    ) -> Replicator {
        let destinations = destinations
            .into_iter()
            .filter_map(|(name, store)| {
                let config = config.destination(&name)?.clone();
                let acls = AclState::new(&name, journal.acl_noter());
                Some((
                    name,
                    Destination {
                        store,
                        config,
                        checked: Mutex::new(None),
                        acls,
                        conditions: crate::store::ConditionSupport::new(),
                    },
                ))
            })
            .collect();
        // A copy in flight when the previous process died may still land at the
        // destination a moment later: give it that moment before the recovered
        // tasks look at the destination (else the late copy could overwrite a
        // newer version, or be written twice).
        let grace = Instant::now() + RECOVERY_GRACE;
        let retry_at: HashMap<i64, Instant> = open.iter().map(|t| (t.id, grace)).collect();
        let (held_at_most, spilled) = match window {
            Some((n, spilled)) => (Some(n), spilled),
            None => (None, HashMap::new()),
        };
        let mut queue = Queue {
            open: BTreeMap::new(),
            running: HashSet::new(),
            retry_at,
            held: HashMap::new(),
            failed: HashMap::new(),
            spilled,
            refilling: HashSet::new(),
            done_while_refilling: HashSet::new(),
        };
        for t in open {
            queue.insert(t);
        }
        let n = queue.pending();
        let source_acls = AclState::new(&config.source.name, journal.acl_noter());
        let inner = Arc::new(Inner {
            source,
            destinations,
            rules: Rules::from_config(config),
            journal,
            workers: config.replication.workers,
            upload: config.upload.clone(),
            target_ms: config.replication.time_target.0.as_millis() as i64,
            queue: Mutex::new(queue),
            fresh: Mutex::new(FreshBodies::default()),
            clean,
            wake: Notify::new(),
            finished: Notify::new(),
            pending: watch::channel(n).0,
            observed: Observed::default(),
            source_acls,
            owner_override: config
                .rules
                .iter()
                .filter(|r| r.owner_override == Some(OwnerOverride::Destination))
                .map(|r| r.id.clone())
                .collect(),
            gauge: Arc::default(),
            #[cfg(test)]
            pinned_load: std::sync::OnceLock::new(),
            held_at_most,
            grace_until: grace,
        });
        crate::background::spawn(run(inner.clone()));
        Replicator { inner }
    }

    /// The gauge the uploader this replicator is handed to keeps current.
    pub(crate) fn source_gauge(&self) -> Arc<SourceGauge> {
        self.inner.gauge.clone()
    }

    /// From now on replicas give way to the load `busy` reports instead of
    /// the gauge's, each at most `at_most` at a time. Only the first call
    /// counts.
    #[cfg(test)]
    pub(crate) fn give_way_to(&self, busy: SourceBusy, at_most: Duration) {
        let _ = self.inner.pinned_load.set((busy, at_most));
    }

    /// What this replicator measured so far (the metrics endpoint serves it).
    pub fn observed(&self) -> &Observed {
        &self.inner.observed
    }

    /// The tasks a finished operation creates (pure: rules only).
    pub(crate) fn plan(&self, op: &Op) -> Vec<NewTask> {
        let meta = ObjectMeta::from_json(&op.meta);
        let (change, kind) = match op.kind {
            OpKind::Delete => (Change::DeleteMarker, TaskKind::Delete),
            OpKind::Put | OpKind::Copy => (Change::Version, TaskKind::Version),
        };
        let tags = meta.as_ref().map(ObjectMeta::tags).unwrap_or_default();
        let metadata = meta
            .map(|m| m.to_put_options().metadata)
            .unwrap_or_default();
        self.inner
            .rules
            .targets(&op.key, &tags, &metadata, change)
            .into_iter()
            .filter(|t| self.inner.destinations.contains_key(&t.destination))
            .map(|t| NewTask {
                checksum: None,
                destination: t.destination,
                rule_id: t.rule_id,
                kind,
                storage_class: t.storage_class,
            })
            .collect()
    }

    /// Queues tasks just committed to the journal.
    pub fn enqueue(&self, tasks: Vec<Task>) {
        self.enqueue_fresh(tasks, None);
    }

    /// Queues tasks just committed to the journal, with the bytes of their
    /// version when the uploader still holds them (see [`Fresh`]).
    pub(crate) fn enqueue_fresh(&self, tasks: Vec<Task>, fresh: Option<Fresh>) {
        if tasks.is_empty() {
            return;
        }
        let mut q = self.inner.queue.lock().unwrap();
        let mut kept = Vec::with_capacity(tasks.len());
        for t in tasks {
            let full = self
                .inner
                .held_at_most
                .is_some_and(|at_most| q.held(&t.destination) >= at_most);
            if full || q.spilled.contains_key(&t.destination) {
                // In the journal already; a refill reads it in its turn.
                q.spill(&t);
            } else {
                kept.push((t.id, t.kind));
                q.insert(t);
            }
        }
        if let Some(f) = fresh {
            // Bodies only for tasks held: a spilled one may wait long. Given
            // before the queue lock is let go, so that no worker starts one of
            // these tasks without its body.
            let len = f.body.as_ref().map_or(0, |b| b.len());
            let f = Arc::new(f);
            // Shared by this version's tasks beyond the budget.
            let mut lean: Option<Arc<Fresh>> = None;
            let mut held = self.inner.fresh.lock().unwrap();
            for (id, _) in kept.iter().filter(|(_, k)| *k == TaskKind::Version) {
                let f = if f.body.is_some() && held.bytes + len <= FRESH_BUDGET {
                    held.bytes += len;
                    f.clone()
                } else if self.inner.clean.is_some() {
                    lean.get_or_insert_with(|| {
                        Arc::new(Fresh {
                            body: None,
                            etag: f.etag.clone(),
                            opts: f.opts.clone(),
                        })
                    })
                    .clone()
                } else {
                    break;
                };
                held.by_task.insert(*id, f);
            }
        }
        // Sent under the lock: sent after it, two updates could arrive in
        // the wrong order and leave a stale count (a drain would wait it out).
        self.inner.pending.send_replace(q.pending());
        drop(q);
        self.inner.wake.notify_one();
    }

    /// Tests: the queue's state, for a failure message.
    #[cfg(test)]
    pub(crate) fn debug_state(&self) -> String {
        let q = self.inner.queue.lock().unwrap();
        format!(
            "open {:?}, running {:?}, spilled {:?}, refilling {:?}, held {:?}, pending {}",
            q.open
                .values()
                .map(|t| (t.id, &t.key, t.status))
                .collect::<Vec<_>>(),
            q.running,
            q.spilled,
            q.refilling,
            q.held,
            q.pending()
        )
    }

    /// Open tasks held in memory now.
    #[cfg(test)]
    pub(crate) fn held_count(&self) -> usize {
        self.inner.queue.lock().unwrap().open.len()
    }

    pub fn pending_count(&self) -> usize {
        *self.inner.pending.borrow()
    }

    /// Waits until every task of the version made by operation `seq` is
    /// COMPLETED; Err with the reason when one is FAILED.
    pub async fn wait_replicated(&self, seq: i64) -> Result<(), String> {
        loop {
            let finished = self.inner.finished.notified();
            let open = self
                .inner
                .journal
                .open_tasks_of(seq)
                .await
                .map_err(|e| e.to_string())?;
            if open.is_empty() {
                return Ok(());
            }
            if let Some(f) = open.iter().find(|t| t.status == TaskStatus::Failed) {
                return Err(format!(
                    "replication to {} failed: {}",
                    f.destination,
                    f.error.clone().unwrap_or_default()
                ));
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), finished).await;
        }
    }

    /// Waits until no task is open or `timeout` passes; returns how many are left.
    pub async fn drain(&self, timeout: Duration, progress: impl FnMut(usize)) -> usize {
        crate::retry::wait_for_zero(self.inner.pending.subscribe(), timeout, progress).await
    }

    #[cfg(test)]
    /// Retries FAILED tasks now (`resync --failed`, or a fixed destination).
    pub(crate) fn retry_failed(&self) {
        self.inner.queue.lock().unwrap().retry_at.clear();
        self.inner.wake.notify_one();
    }
}

use crate::retry::jittered_backoff as backoff;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

#[cfg(test)]
mod tests;
