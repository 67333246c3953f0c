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
//! [`SourceLoad`]), each at most [`GIVE_WAY_AT_MOST`] at a time, so that a
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
//! ([`Replicator::read_fresh_from`]), taking the ordinary path when that copy
//! is gone, incomplete or of another version. Either way they are exactly the
//! uploaded bytes: the uploader PUT this very buffer, and a clean copy is a
//! whole copy of the version whose ETag it carries, pinned while read (see
//! `cache`). Fresh state lives in memory only; after a failure or a restart
//! the task takes the ordinary path.

mod copy;
pub mod discover;
pub mod heartbeat;
pub mod ordering;
pub mod resync;
pub mod rules;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::config::{Config, OwnerOverride, UploadConfig};
use crate::error::StoreError;
use crate::journal::{Journal, NewTask, Op, OpKind, Task, TaskKind, TaskStatus};
use crate::meta::ObjectMeta;
use crate::store::probe::versioning_problem;
use crate::store::{AclSupport, ObjectStore, PutOptions};
use rules::{Change, Rules};

struct Destination {
    store: Arc<dyn ObjectStore>,
    config: crate::config::BucketConfig,
    /// Last versioning check: when, and what it found.
    checked: Mutex<Option<(Instant, Result<(), String>)>>,
    acls: AclState,
    conditions: crate::store::ConditionSupport,
}

/// Whether a bucket takes object ACLs: asked once (its Object Ownership), and
/// switched off for good by the first refusal, with one warning either way.
/// What is found is noted in the journal under the bucket's config name, for
/// `regionfs status`.
pub struct AclState {
    found: Mutex<Option<AclSupport>>,
    name: String,
    journal: Journal,
}

impl AclState {
    pub fn new(name: &str, journal: Journal) -> AclState {
        AclState {
            found: Mutex::new(None),
            name: name.to_string(),
            journal,
        }
    }

    fn note(&self, s: &AclSupport) {
        let text = match s {
            AclSupport::Enabled => "enabled".to_string(),
            AclSupport::Disabled(why) => format!("not supported: {why}"),
        };
        let (journal, name) = (self.journal.clone(), self.name.clone());
        tokio::spawn(async move {
            let _ = journal.note_acl_support(name, text).await;
        });
    }

    pub async fn enabled(&self, store: &dyn ObjectStore) -> bool {
        if let Some(s) = self.found.lock().unwrap().clone() {
            return s == AclSupport::Enabled;
        }
        match store.acl_support().await {
            Ok(AclSupport::Enabled) => {
                *self.found.lock().unwrap() = Some(AclSupport::Enabled);
                self.note(&AclSupport::Enabled);
                true
            }
            Ok(AclSupport::Disabled(why)) => {
                self.refused(store, &why);
                false
            }
            // Unknown for now (unreachable): skip ACLs this time, ask again.
            Err(e) => {
                tracing::debug!(bucket = %store.describe(), error = %e, "cannot tell whether the bucket takes ACLs");
                false
            }
        }
    }

    pub fn refused(&self, store: &dyn ObjectStore, why: &str) {
        let mut s = self.found.lock().unwrap();
        if !matches!(*s, Some(AclSupport::Disabled(_))) {
            tracing::warn!(bucket = %store.describe(), reason = %why, "object ACLs are not supported here: ACLs are skipped for this bucket (bytes, metadata and tags still replicate)");
            let d = AclSupport::Disabled(why.to_string());
            self.note(&d);
            *s = Some(d);
        }
    }
}

/// The bytes and metadata of a version this process has just uploaded,
/// without an ACL (so it is private).
pub struct Fresh {
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
pub const PARTS_IN_FLIGHT: usize = 4;

/// The longest one part of a large replica waits for the source to go idle.
pub const GIVE_WAY_AT_MOST: Duration = Duration::from_secs(1);

/// How often a waiting part looks again.
const GIVE_WAY_POLL: Duration = Duration::from_millis(20);

/// What the uploader is doing now (see "Giving way").
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceLoad {
    /// Operations queued for the source (running ones included).
    pub queued: usize,
    /// One was submitted a moment ago: a writer between two closes.
    pub submitting: bool,
}

/// Reads the uploader's [`SourceLoad`].
pub type SourceBusy = Arc<dyn Fn() -> SourceLoad + Send + Sync>;

struct GiveWay {
    busy: SourceBusy,
    at_most: Duration,
}

/// At most this many bytes of fresh versions are held in memory for their
/// replicas; beyond it a task reads its clean copy (see "Fresh small versions").
/// Enough for a steady stream, whose replicas run at once; a burst, whose
/// replicas wait, is what reads its clean copies.
pub const FRESH_BUDGET: usize = 1 << 20;

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

/// Open tasks held in memory per destination, at most (see "Bounded memory").
pub const HELD_TASKS: usize = 2048;

struct Queue {
    /// By id: source order per key. A map, so that finishing one task of a
    /// long backlog costs O(log n), not a pass over the backlog.
    open: BTreeMap<i64, Task>,
    running: HashSet<(String, String)>,
    retry_at: HashMap<i64, Instant>,
    /// Tasks in `open`, per destination, and how many of them FAILED (they
    /// do not count against the share, so that tasks that keep failing never
    /// hold back the rest; see "Bounded memory").
    held: HashMap<String, usize>,
    failed: HashMap<String, usize>,
    /// Destinations whose backlog is partly in the journal only.
    spilled: HashMap<String, Spill>,
    /// Destinations being refilled from the journal, and the tasks finished
    /// meanwhile (a refill's read may still have seen them open).
    refilling: HashSet<String>,
    done_while_refilling: HashSet<i64>,
}

/// What is known of a destination's tasks that are in the journal only.
#[derive(Debug)]
struct Spill {
    /// How many (exact after a refill, counted up as tasks arrive).
    count: usize,
    /// The earliest staging time among them (or earlier: never later).
    earliest_ms: i64,
    /// Tasks that arrived since the last refill began, and their earliest
    /// staging time: a refill that began before them has not seen them.
    arrived: u64,
    arrived_earliest_ms: i64,
    /// A refill failed: the next one not before then.
    refill_after: Option<Instant>,
}

impl Spill {
    fn empty() -> Spill {
        Spill {
            count: 0,
            earliest_ms: i64::MAX,
            arrived: 0,
            arrived_earliest_ms: i64::MAX,
            refill_after: None,
        }
    }
}

impl Queue {
    /// The earliest staging time of an open task per destination, those in
    /// the journal only included (what the heartbeat reports).
    fn oldest_open_ms(&self) -> HashMap<String, i64> {
        let mut m: HashMap<String, i64> = HashMap::new();
        let times = self
            .open
            .values()
            .map(|t| (&t.destination, t.created_at_ms))
            .chain(self.spilled.iter().map(|(d, s)| (d, s.earliest_ms)));
        for (d, at) in times {
            let e = m.entry(d.clone()).or_insert(at);
            *e = (*e).min(at);
        }
        m
    }

    fn insert(&mut self, t: Task) {
        let (dest, failed) = (t.destination.clone(), t.status == TaskStatus::Failed);
        if self.open.insert(t.id, t).is_none() {
            *self.held.entry(dest.clone()).or_default() += 1;
            if failed {
                *self.failed.entry(dest).or_default() += 1;
            }
        }
    }

    fn remove(&mut self, id: i64) {
        if let Some(t) = self.open.remove(&id) {
            if let Some(n) = self.held.get_mut(&t.destination) {
                *n = n.saturating_sub(1);
            }
            self.set_failed(&t.destination, t.status == TaskStatus::Failed, false);
            if !self.refilling.is_empty() {
                self.done_while_refilling.insert(id);
            }
        }
    }

    fn set_failed(&mut self, dest: &str, was: bool, now: bool) {
        if was != now {
            let n = self.failed.entry(dest.to_string()).or_default();
            *n = if now { *n + 1 } else { n.saturating_sub(1) };
        }
    }

    /// Held tasks of `dest` that count against its share.
    fn held(&self, dest: &str) -> usize {
        let failed = self.failed.get(dest).copied().unwrap_or(0);
        self.held
            .get(dest)
            .copied()
            .unwrap_or(0)
            .saturating_sub(failed)
    }

    fn failed(&self, dest: &str) -> usize {
        self.failed.get(dest).copied().unwrap_or(0)
    }

    /// Open tasks, in memory and in the journal only (never 0 while any is
    /// in the journal only).
    fn pending(&self) -> usize {
        self.open.len() + self.spilled.values().map(|s| s.count.max(1)).sum::<usize>()
    }

    /// Leaves `t` to the journal (its destination's share of memory is full).
    fn spill(&mut self, t: &Task) {
        let s = self
            .spilled
            .entry(t.destination.clone())
            .or_insert_with(Spill::empty);
        s.count += 1;
        s.earliest_ms = s.earliest_ms.min(t.created_at_ms);
        s.arrived += 1;
        s.arrived_earliest_ms = s.arrived_earliest_ms.min(t.created_at_ms);
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
    clean: std::sync::OnceLock<Arc<crate::cache::Cache>>,
    wake: Notify,
    /// Signalled whenever a task finishes (fsync all-regions waits on it).
    finished: Notify,
    pending: watch::Sender<usize>,
    metrics: Mutex<Option<Arc<crate::metrics::Metrics>>>,
    source_acls: AclState,
    /// Rules whose replicas go to the destination's owner.
    owner_override: HashSet<String>,
    give_way: std::sync::OnceLock<GiveWay>,
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
    pub async fn start(
        config: &Config,
        source: Arc<dyn ObjectStore>,
        destinations: HashMap<String, Arc<dyn ObjectStore>>,
        journal: Journal,
    ) -> Result<Replicator, crate::journal::JournalError> {
        let r = Self::start_from_journal(config, source, destinations, journal, HELD_TASKS).await?;
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
    pub async fn start_from_journal(
        config: &Config,
        source: Arc<dyn ObjectStore>,
        destinations: HashMap<String, Arc<dyn ObjectStore>>,
        journal: Journal,
        held: usize,
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
        Self::start_inner(config, source, destinations, journal, open, None)
    }

    fn start_inner(
        config: &Config,
        source: Arc<dyn ObjectStore>,
        destinations: HashMap<String, Arc<dyn ObjectStore>>,
        journal: Journal,
        open: Vec<Task>,
        window: Option<(usize, HashMap<String, Spill>)>,
    ) -> Replicator {
        let destinations = destinations
            .into_iter()
            .filter_map(|(name, store)| {
                let config = config.destination(&name)?.clone();
                let acls = AclState::new(&name, journal.clone());
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
        let source_acls = AclState::new(&config.source.name, journal.clone());
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
            clean: std::sync::OnceLock::new(),
            wake: Notify::new(),
            finished: Notify::new(),
            pending: watch::channel(n).0,
            metrics: Mutex::new(None),
            source_acls,
            owner_override: config
                .rules
                .iter()
                .filter(|r| r.owner_override == Some(OwnerOverride::Destination))
                .map(|r| r.id.clone())
                .collect(),
            give_way: std::sync::OnceLock::new(),
            held_at_most,
            grace_until: grace,
        });
        crate::background::spawn(run(inner.clone()));
        Replicator { inner }
    }

    /// From now on replicas give way to the uploads `busy` reports, each at
    /// most `at_most` at a time (see "Giving way").
    /// Only the first call counts.
    pub fn give_way_to(&self, busy: SourceBusy, at_most: Duration) {
        let _ = self.inner.give_way.set(GiveWay { busy, at_most });
    }

    /// Fresh tasks beyond [`FRESH_BUDGET`] read their bytes from the clean
    /// copies in `cache` from now on (see "Fresh small versions"); without
    /// it they read the source. Only the first call counts.
    pub fn read_fresh_from(&self, cache: Arc<crate::cache::Cache>) {
        let _ = self.inner.clean.set(cache);
    }

    /// Reports replication lag and bytes to `metrics` from now on.
    pub fn set_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        *self.inner.metrics.lock().unwrap() = Some(metrics);
    }

    /// The tasks a finished operation creates (pure: rules only).
    pub fn plan(&self, op: &Op) -> Vec<NewTask> {
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
    pub fn enqueue_fresh(&self, tasks: Vec<Task>, fresh: Option<Fresh>) {
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
                } else if self.inner.clean.get().is_some() {
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
    pub fn held_count(&self) -> usize {
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
        crate::uploader::wait_for_zero(self.inner.pending.subscribe(), timeout, progress).await
    }

    /// Retries FAILED tasks now (`resync --failed`, or a fixed destination).
    pub fn retry_failed(&self) {
        self.inner.queue.lock().unwrap().retry_at.clear();
        self.inner.wake.notify_one();
    }
}

use crate::uploader::jittered_backoff as backoff;

/// How long tasks recovered from the journal wait for orphaned copies of the
/// previous process to land.
const RECOVERY_GRACE: Duration = Duration::from_secs(2);

/// A permanent failure is retried after this long (the periodic probe).
const FAILED_RETRY: Duration = Duration::from_secs(30);

async fn run(inner: Arc<Inner>) {
    let mut in_flight: HashMap<String, usize> = HashMap::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    loop {
        while let Ok(dest) = done_rx.try_recv() {
            if let Some(n) = in_flight.get_mut(&dest) {
                *n = n.saturating_sub(1);
            }
        }
        let mut next_wake = Duration::from_secs(1);
        start_refills(&inner);
        let pass = Instant::now();
        let start: Vec<Task> = {
            let mut q = inner.queue.lock().unwrap();
            let now = Instant::now();
            let free: HashMap<String, usize> = inner
                .destinations
                .keys()
                .map(|d| {
                    (
                        d.clone(),
                        inner
                            .workers
                            .saturating_sub(*in_flight.get(d).unwrap_or(&0)),
                    )
                })
                .collect();
            let queued: Vec<ordering::Queued> = q
                .open
                .values()
                .map(|t| {
                    let due = match q.retry_at.get(&t.id) {
                        Some(at) if *at > now => {
                            next_wake = next_wake.min(*at - now);
                            false
                        }
                        _ => true,
                    };
                    ordering::Queued {
                        id: t.id,
                        key: &t.key,
                        destination: &t.destination,
                        due,
                    }
                })
                .collect();
            let ids = ordering::runnable(&queued, &q.running, &free);
            let tasks: Vec<Task> = ids
                .iter()
                .filter_map(|id| q.open.get(id))
                .cloned()
                .collect();
            for t in &tasks {
                q.running.insert((t.key.clone(), t.destination.clone()));
            }
            tasks
        };
        let took = pass.elapsed();
        for task in start {
            *in_flight.entry(task.destination.clone()).or_default() += 1;
            let inner = inner.clone();
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                let dest = task.destination.clone();
                execute(&inner, task).await;
                let _ = done_tx.send(dest);
                inner.wake.notify_one();
            });
        }
        if let Some(pause) = pause_after_pass(took) {
            tokio::time::sleep(pause).await;
        }
        let _ = tokio::time::timeout(next_wake, inner.wake.notified()).await;
    }
}

/// Starts a refill for each destination whose backlog is partly in the
/// journal and whose tasks in memory have fallen to half their share.
fn start_refills(inner: &Arc<Inner>) {
    let Some(at_most) = inner.held_at_most else {
        return;
    };
    let now = Instant::now();
    let due: Vec<String> = {
        let mut q = inner.queue.lock().unwrap();
        let due: Vec<String> = q
            .spilled
            .iter()
            .filter(|(d, s)| {
                !q.refilling.contains(*d)
                    && q.held(d) <= at_most / 2
                    && s.refill_after.is_none_or(|at| at <= now)
            })
            .map(|(d, _)| d.clone())
            .collect();
        for d in &due {
            q.refilling.insert(d.clone());
            let s = q.spilled.get_mut(d).expect("listed above");
            s.arrived = 0;
            s.arrived_earliest_ms = i64::MAX;
        }
        due
    };
    for d in due {
        tokio::spawn(refill(inner.clone(), d, at_most));
    }
}

/// Reads the oldest open tasks of `dest` from the journal into memory, up to
/// its share; ends the spill when the journal holds no more than memory.
///
/// The window is the destination's oldest open tasks by id, and ids follow
/// the order versions were recorded in, so a key's older version is always
/// read before (or with) a newer one: [`ordering::runnable`] still sees the
/// oldest open task of every key it runs. A task finished while the read was
/// under way may still be in the window; `done_while_refilling` keeps it out.
async fn refill(inner: Arc<Inner>, dest: String, at_most: usize) {
    // The window reaches past the held FAILED tasks (they are among the oldest).
    let failed = inner.queue.lock().unwrap().failed(&dest);
    let read = inner
        .journal
        .open_tasks_window(dest.clone(), at_most + failed)
        .await;
    let mut q = inner.queue.lock().unwrap();
    q.refilling.remove(&dest);
    match read {
        Err(e) => {
            tracing::warn!(destination = %dest, error = %e, "cannot read queued replications from the journal; will retry");
            if let Some(s) = q.spilled.get_mut(&dest) {
                s.refill_after = Some(Instant::now() + Duration::from_secs(1));
            }
        }
        Ok(w) => {
            let now = Instant::now();
            let whole = w.tasks.len() as u64 >= w.open;
            let mut all_held = true;
            for t in w.tasks {
                if q.open.contains_key(&t.id) || q.done_while_refilling.contains(&t.id) {
                    continue;
                }
                if q.held(&dest) >= at_most {
                    all_held = false;
                    break;
                }
                if inner.grace_until > now {
                    q.retry_at.insert(t.id, inner.grace_until);
                }
                q.insert(t);
            }
            let held = q.held.get(&dest).copied().unwrap_or(0);
            if let Some(s) = q.spilled.get_mut(&dest) {
                if whole && all_held && s.arrived == 0 {
                    q.spilled.remove(&dest);
                } else {
                    s.count = (w.open as usize).saturating_sub(held) + s.arrived as usize;
                    s.earliest_ms = w.earliest_ms.unwrap_or(i64::MAX).min(s.arrived_earliest_ms);
                    s.refill_after = None;
                }
            }
        }
    }
    if q.refilling.is_empty() {
        q.done_while_refilling.clear();
    }
    inner.pending.send_replace(q.pending());
    drop(q);
    inner.wake.notify_one();
}

/// How long to wait before the next scheduling pass after one that took
/// `took`. Each pass looks at the whole backlog: with a long one (a
/// destination down under load) passes take at most a tenth of a core,
/// instead of one per arriving version; short passes are not held back.
fn pause_after_pass(took: Duration) -> Option<Duration> {
    (took > Duration::from_millis(1)).then(|| took * 9)
}

async fn execute(inner: &Arc<Inner>, task: Task) {
    if task.size < inner.upload.multipart_threshold.0 {
        give_way(inner, Yield::BackedUp).await;
    }
    // Taken whatever happens: a retry reads the source like any other task.
    let fresh = inner.fresh.lock().unwrap().take(task.id);
    let fresh = fresh.and_then(|f| fresh_bytes(inner, &task, f));
    let result = match inner.destinations.get(&task.destination) {
        Some(d) => copy::replicate(inner, d, &task, fresh).await,
        None => Err(StoreError::Rejected {
            bucket: task.destination.clone(),
            status: 0,
            code: "UnknownDestination".into(),
            message: "no such destination in the configuration".into(),
        }),
    };
    let result = match result {
        Err(e) if e.is_not_found() && source_version_gone(inner, &task).await => {
            // Deleted for good (a DELETE naming the version) before it was
            // copied: as in S3, there is nothing left to replicate.
            tracing::info!(key = %task.key, version = %task.version_id, destination = %task.destination, "the source version was deleted before it was copied; nothing to replicate");
            Ok(crate::journal::Replica::default())
        }
        other => other,
    };
    let pair = (task.key.clone(), task.destination.clone());
    match result {
        Ok(replica) => {
            if let Err(e) = inner
                .journal
                .task_completed(task.id, replica, inner.target_ms)
                .await
            {
                tracing::error!(key = %task.key, error = %e, "cannot record a replication in the journal; will retry");
                let mut q = inner.queue.lock().unwrap();
                q.running.remove(&pair);
                q.retry_at
                    .insert(task.id, Instant::now() + backoff(task.attempts));
                return;
            }
            if let Some(m) = inner.metrics.lock().unwrap().as_ref() {
                let lag = (crate::journal::now_ms() - task.created_at_ms).max(0) as f64 / 1000.0;
                m.observe(&task.destination, lag, task.size);
            }
            let mut q = inner.queue.lock().unwrap();
            q.running.remove(&pair);
            q.retry_at.remove(&task.id);
            q.remove(task.id);
            inner.pending.send_replace(q.pending());
            drop(q);
        }
        Err(e) => {
            let permanent = e.is_permanent();
            let msg = e.to_string();
            if permanent {
                tracing::error!(key = %task.key, destination = %task.destination, error = %msg, "replication FAILED; retrying every 30 s until the cause is fixed");
            } else {
                tracing::warn!(key = %task.key, destination = %task.destination, error = %msg, "replication failed; retrying");
            }
            let _ = inner
                .journal
                .task_failed(task.id, msg.clone(), permanent)
                .await;
            let mut q = inner.queue.lock().unwrap();
            q.running.remove(&pair);
            let (attempts, was_failed) = match q.open.get_mut(&task.id) {
                Some(t) => {
                    let was = t.status == TaskStatus::Failed;
                    t.attempts += 1;
                    t.error = Some(msg);
                    t.status = if permanent {
                        TaskStatus::Failed
                    } else {
                        TaskStatus::Pending
                    };
                    (t.attempts, Some(was))
                }
                None => (task.attempts + 1, None),
            };
            if let Some(was) = was_failed {
                q.set_failed(&task.destination, was, permanent);
            }
            let wait = if permanent {
                FAILED_RETRY
            } else {
                backoff(attempts)
            };
            q.retry_at.insert(task.id, Instant::now() + wait);
        }
    }
    inner.finished.notify_waiters();
}

/// Whether the task's version no longer exists in the source (asked
/// again: a NotFound may have come from the destination).
async fn source_version_gone(inner: &Inner, task: &Task) -> bool {
    task.kind == TaskKind::Version
        && inner
            .source
            .head(&task.key, Some(&task.version_id))
            .await
            .is_err_and(|e| e.is_not_found())
}

/// Fails permanently when the destination's versioning is not Enabled (checked
/// at most once a minute).
async fn check_destination(d: &Destination) -> Result<(), StoreError> {
    if let Some((at, r)) = d.checked.lock().unwrap().as_ref() {
        if at.elapsed() < Duration::from_secs(60) {
            return r.clone().map_err(|m| StoreError::Rejected {
                bucket: d.store.describe(),
                status: 0,
                code: "VersioningNotEnabled".into(),
                message: m,
            });
        }
    }
    let v = d.store.versioning().await?;
    let r = match versioning_problem(&d.config, v) {
        None => Ok(()),
        Some(p) => Err(p),
    };
    *d.checked.lock().unwrap() = Some((Instant::now(), r.clone()));
    r.map_err(|m| StoreError::Rejected {
        bucket: d.store.describe(),
        status: 0,
        code: "VersioningNotEnabled".into(),
        message: m,
    })
}

/// The bytes of a fresh version: held, or read from its clean copy; `None`
/// when that copy no longer holds exactly the uploaded version.
fn fresh_bytes(inner: &Inner, task: &Task, fresh: Arc<Fresh>) -> Option<FreshReady> {
    let body = match &fresh.body {
        Some(b) => b.clone(),
        None => inner
            .clean
            .get()?
            .read_clean(&task.key, &fresh.etag, task.size)
            .map(bytes::Bytes::from)?,
    };
    Some(FreshReady { body, fresh })
}

/// When a replica waits for the uploader (see "Giving way").
#[derive(Clone, Copy)]
enum Yield {
    /// While any upload is queued or being submitted (parts of large replicas).
    Busy,
    /// While the uploads are backed up (small replicas).
    BackedUp,
}

/// Waits while the source's load calls for it, at most the configured bound.
async fn give_way(inner: &Inner, when: Yield) {
    let Some(g) = inner.give_way.get() else {
        return;
    };
    let backed_up = 2 * inner.upload.concurrency.max(1);
    let waits = || {
        let load = (g.busy)();
        match when {
            Yield::Busy => load.queued > 0 || load.submitting,
            Yield::BackedUp => load.queued > backed_up,
        }
    };
    let until = Instant::now() + g.at_most;
    while waits() && Instant::now() < until {
        tokio::time::sleep(GIVE_WAY_POLL.min(until - Instant::now())).await;
    }
}

#[cfg(test)]
mod tests;
