//! Write-back: runs the journal's operations against the source bucket — per key
//! in journal order, across keys concurrently — and records each resulting
//! version.
//!
//! # Ordering
//! Operations on one key run one at a time in `seq` order (a later version never
//! lands before an earlier one). [`Uploader::submit`] sends the journal insert
//! and queues the operation under one lock, so queue order equals `seq` order
//! in memory and after a restart alike.
//!
//! # Crash consistency
//! An operation leaves the queue only after `journal.complete()` committed its
//! version id; a crash before that re-runs it at the next start (see
//! `journal`). A multipart upload id is journaled before its first part, so
//! recovery aborts it instead of leaking it. The file a put uploads is not
//! written again once staged by any writer regionfs sees (they copy it
//! first), so the bytes uploaded are exactly the bytes acknowledged at
//! close()/fsync(). A file the kernel writes directly (passthrough, see
//! `fs::passthrough`) may still be written through a descriptor left open
//! after the close that staged it; the next section bounds what that does.
//!
//! # Files written after staging
//! Every upload from a cache file is a stable read (`cache::stamp`): the
//! file's stamp is taken before its first byte is read and checked again
//! before the version can exist: a single PUT's body fails before its last
//! byte is sent ([`PutBody::StableFile`]), a multipart upload is not
//! completed. So no version is ever made of a file that changed while it was
//! read. Such an attempt fails transiently, and the next one first copies
//! the file (checked the same way) and points the op at the copy, in the
//! journal too: a writer that never pauses delays the upload by one copy,
//! never forever. The version then holds the file's later bytes, which
//! SEMANTICS.md ("Passthrough") states; a file no descriptor writes is
//! uploaded exactly as staged.
//!
//! # Deferral
//! Uploads compete with the writer for CPU and network. While operations keep
//! being submitted (one at least every [`QUIET`]), a new one waits until the
//! submissions pause, at most `upload.defer_while_writing` after its staging,
//! as rclone's write-back delay does. `fsync` with durability beyond "local"
//! (a [`Uploader::wait`]) and draining at unmount end the wait at once. The
//! operation is already durable in the journal, so deferral only moves when
//! it reaches the bucket.
//!
//! # Scheduling
//! The next operation of every key that is neither running nor backing off
//! is a *head*, kept by seq. The scheduler starts heads oldest first and
//! stops at the first one not yet due (when an operation is due grows with
//! its staging time, so every later head is due no sooner). A wake therefore
//! costs the operations it starts, not a pass over the queue: a burst of
//! deferred closes, or a queue waiting out a source outage, no longer makes
//! every submission scan everything queued. The decision is a pure function
//! ([`schedule::decide`], with an exhaustive test); [`queue`] keeps the state
//! it reads and [`worker`] runs what it starts.
//!
//! # Spill
//! At most `upload.held_in_memory` operations are queued in memory. An
//! operation submitted while that many are held (and past every held one)
//! stays in the journal only, and so does every one after it while the
//! *spill* lasts: memory does not grow with the backlog of a copy-in that
//! outruns the source, or of a source that is down. Once the held ones
//! drain to half the window, the oldest spilled ones are read back, in seq
//! order; the spill ends when a read-back finds none left. So every op up
//! to the spill's start is in memory (or done), every one after it in the
//! journal, and per-key order holds as above.
//!
//! What the mount asks of queued ops (a key's pending ops, the newest under
//! a prefix, who reads a cache file, waiting for one) is answered from
//! memory and, past the spill's start, from the journal
//! ([`SpillReader`]): an op is in one or the other, never neither, since it
//! is committed before it is counted and leaves the journal's open rows
//! only by running. A read-back and a change of spilled ops (a metadata
//! amend, a repoint to a copy, a drop by `replan`) exclude each other, so
//! none is lost between the journal read and the queueing. The spill
//! counts the ops it holds exactly, as seq ranges, so `pending` (what the
//! drain at unmount waits on) is exact too.
//!
//! # Retries
//! Transient errors (network, throttling, 5xx) retry with jittered exponential
//! backoff, capped at 30 s, forever. Permanent errors (AccessDenied,
//! NoSuchBucket, …) mark the operation failed in the journal — visible in
//! `status` — and retry every minute, so fixing the bucket or the credentials
//! resumes the upload without losing it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::cache::stamp::{self, Stamp};
use crate::cache::Cache;
use crate::clock::now_ms;
use crate::config::UploadConfig;
use crate::error::StoreError;
use crate::journal::{Durability, Journal, JournalError, NewOp, Op, OpKind, OpState, SpillReader};
use crate::meta::ObjectMeta;
use crate::retry::{jittered_backoff, wait_for_zero};
use crate::store::{
    AclBody, CompletedPart, Condition, ConditionSupport, ObjectStore, PutBody, PutOptions,
    PutResult,
};

mod early;
mod files;
mod guard;
mod parts;
mod queue;
mod replan;
mod schedule;
mod worker;

pub(crate) use early::EarlyUpload;
use queue::Queue;
pub(crate) use schedule::QUIET;
use worker::{backoff, run};

/// An operation that reached the bucket.
#[derive(Debug, Clone)]
pub(crate) struct Completion {
    pub op: Op,
    pub result: PutResult,
}

/// What the uploader tells whoever keeps local state (the mount's core).
/// The operation leaves the queue only once this is dropped: local state
/// never lags behind a queue that no longer holds the operation, so a
/// caller that finds nothing queued for a key also finds the key's last
/// version applied (a copy naming it, say).
pub struct Landed {
    pub(crate) event: Event,
    _applied: oneshot::Sender<()>,
}

pub(crate) enum Event {
    /// The operation reached the bucket.
    Uploaded(Completion),
    /// The operation's input is gone and nothing queued after it sets its
    /// key (see `replan`): queue what the name should hold now, if it
    /// still exists here. `error` says what was gone.
    Lost { op: Op, error: String },
}

/// The open operations a start finds in the journal.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The oldest (at most `upload.held_in_memory`), queued in memory.
    pub held: Vec<Op>,
    /// The seqs of the open ones after them, left in the journal (see
    /// "Spill").
    pub(crate) spilled: Vec<i64>,
}

impl From<Vec<Op>> for Recovered {
    fn from(held: Vec<Op>) -> Recovered {
        Recovered {
            held,
            spilled: Vec::new(),
        }
    }
}

/// What waiting for an operation ended with.
pub(crate) type WaitResult = Result<(), String>;

struct Inner {
    store: Arc<dyn ObjectStore>,
    journal: Journal,
    cache: Arc<Cache>,
    cfg: UploadConfig,
    delay: Duration,
    queue: Mutex<Queue>,
    wake: Notify,
    pending: watch::Sender<usize>,
    done_tx: mpsc::UnboundedSender<Landed>,
    parts: Arc<Semaphore>,
    replicator: Option<crate::replicator::Replicator>,
    /// The load replicas give way to: the replicator's gauge when there is
    /// one (see `replicator`, "Giving way"), kept current here.
    gauge: Arc<crate::replicator::SourceGauge>,
    /// `[source] acl`, and whether the bucket takes ACLs.
    acl: Option<(String, Arc<crate::store::AclState>)>,
    /// Whether the source takes conditional PUTs (see `guard`).
    conditions: ConditionSupport,
    /// Held while the spill's boundary may move under a change of spilled
    /// ops: a refill (reads the journal, then queues what it read) against
    /// an amend, a repoint or a drop of ops past it (see "Spill").
    spill_lock: tokio::sync::Mutex<()>,
    /// Lookups of spilled ops, opened at the first.
    reader: std::sync::OnceLock<Option<SpillReader>>,
}

impl Inner {
    /// Tells waiters (drain, status) and the replicas giving way how many
    /// operations are queued.
    fn publish_pending(&self, q: &Queue) {
        let n = q.pending();
        self.pending.send_replace(n);
        self.gauge.set_queued(n);
    }
}

/// Handle to the write-back worker.
#[derive(Clone)]
pub struct Uploader {
    inner: Arc<Inner>,
}

/// What each version written gets besides its bytes.
#[derive(Clone, Default)]
pub struct EachVersion {
    /// The canned ACL (`[source] acl`), unless the bucket turns out not to
    /// take ACLs (then one warning).
    pub acl: Option<SourceAcl>,
    /// Where it goes to be replicated.
    pub replicator: Option<crate::replicator::Replicator>,
}

/// `[source] acl`, and the source's config name (for status).
#[derive(Clone)]
pub struct SourceAcl {
    pub bucket: String,
    pub canned: String,
}

impl Uploader {
    /// Starts the worker with the operations recovered from the journal.
    /// Every finished operation is also sent on the returned channel (see
    /// [`Landed`]).
    pub fn start(
        store: Arc<dyn ObjectStore>,
        journal: Journal,
        cache: Arc<Cache>,
        cfg: UploadConfig,
        delay: Duration,
        recovered: Recovered,
        each: EachVersion,
    ) -> (Uploader, mpsc::UnboundedReceiver<Landed>) {
        let EachVersion { acl, replicator } = each;
        let Recovered {
            held: recovered,
            spilled,
        } = recovered;
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        // The canned ACL and whether the source takes ACLs, noted in the journal.
        let acl = acl.map(|a| {
            let state = crate::store::AclState::new(&a.bucket, journal.acl_noter());
            (a.canned, Arc::new(state))
        });
        let n = recovered.len() + spilled.len();
        let held = cfg.held_in_memory.max(1);
        let parts = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
        let gauge = replicator
            .as_ref()
            .map_or_else(Default::default, |r| r.source_gauge());
        gauge.set_queued(n);
        let inner = Arc::new(Inner {
            store,
            journal,
            cache,
            cfg,
            delay,
            conditions: ConditionSupport::new(),
            spill_lock: tokio::sync::Mutex::new(()),
            reader: std::sync::OnceLock::new(),
            queue: Mutex::new(Queue::new(QUIET)),
            wake: Notify::new(),
            pending: watch::channel(n).0,
            done_tx,
            parts,
            replicator,
            gauge,
            acl,
        });
        {
            let mut q = inner.queue.lock().unwrap();
            q.held = held;
            let upto = recovered.last().map_or(0, |o| o.seq);
            for op in recovered {
                q.insert(op);
            }
            if !spilled.is_empty() {
                let mut s = queue::Spill::new(upto);
                for seq in spilled {
                    s.add(seq);
                }
                q.spill = Some(s);
            }
        }
        crate::background::spawn(run(inner.clone()));
        (Uploader { inner }, done_rx)
    }

    /// Aborts the early uploads (see [`EarlyUpload`]) a previous process left
    /// behind. Call before the mount starts new ones.
    pub(crate) async fn abort_stale_early(&self) {
        let Ok(stale) = self.inner.journal.early_uploads().await else {
            return;
        };
        for (key, id) in stale {
            early::abort_upload(&self.inner.store, &self.inner.journal, &key, id).await;
        }
    }

    /// Starts uploading a file that is being written from empty, part by part
    /// as it grows (`upload.early_parts`); hand it to [`Uploader::submit_with`]
    /// when the file is staged. `blind`: the writes are not seen, only the
    /// size ([`EarlyUpload::grown`]; see `early`, "Blind uploads"). `None`
    /// when early parts are off, or an ACL is configured (its state is known
    /// only per upload).
    pub fn early(
        &self,
        key: &str,
        file: &str,
        meta: &ObjectMeta,
        blind: bool,
    ) -> Option<Arc<EarlyUpload>> {
        if !self.inner.cfg.early_parts || self.inner.acl.is_some() {
            return None;
        }
        Some(Arc::new(EarlyUpload::new(
            &self.inner,
            key.to_string(),
            file.to_string(),
            meta,
            blind,
        )))
    }

    /// Journals `op` durably and queues it behind earlier operations on its key.
    /// `e`, having stopped the mount's writes if it says the journal's disk
    /// failed (`cache::failure`).
    fn noting_disk_failure(&self, e: JournalError) -> JournalError {
        if e.is_disk_failure() {
            self.inner.cache.fence().trip(e.to_string());
        }
        e
    }

    /// Returns once committed: the caller may acknowledge the write.
    pub(crate) async fn submit(&self, op: NewOp) -> Result<i64, JournalError> {
        self.submit_with(op, None).await
    }

    /// [`Uploader::submit`] of a put whose first parts may already be uploaded.
    pub(crate) async fn submit_with(
        &self,
        op: NewOp,
        early: Option<Arc<EarlyUpload>>,
    ) -> Result<i64, JournalError> {
        let key = op.key.clone();
        let (fut, ticket) = {
            let mut q = self.inner.queue.lock().unwrap();
            let ticket = q.next_ticket;
            q.next_ticket += 1;
            q.last_submit = Some(Instant::now());
            self.inner.gauge.submitted(q.quiet);
            q.tickets.entry(key.clone()).or_default().push_back(ticket);
            (self.inner.journal.stage_in_order(op.clone()), ticket)
        };
        let res = fut.await.map_err(|e| self.noting_disk_failure(e));
        let mut q = self.inner.queue.lock().unwrap();
        if let Some(t) = q.tickets.get_mut(&key) {
            t.retain(|x| *x != ticket);
            if t.is_empty() {
                q.tickets.remove(&key);
            }
        }
        if let Ok(seq) = res {
            let staged = Op {
                seq,
                key: op.key,
                kind: op.kind,
                file: op.file,
                size: op.size,
                meta: op.meta,
                src_key: op.src_key,
                src_version: op.src_version,
                state: OpState::Pending,
                attempts: 0,
                error: None,
                multipart_id: None,
                version_id: None,
                staged_at_ms: now_ms(),
                inline: op.inline.is_some(),
                base: op.base,
            };
            if let Some(e) = early {
                q.early.insert(seq, e);
            }
            q.arrive(staged);
            // Sent under the lock: sent after it, two updates could arrive
            // in the wrong order and leave a stale count.
            self.inner.publish_pending(&q);
            drop(q);
        }
        self.inner.wake.notify_one();
        res
    }

    /// Gives `key`'s newest queued operation the metadata `meta` (a JSON
    /// [`crate::meta::ObjectMeta`]) instead of queueing a copy of the key
    /// onto itself after it: a chown, chmod and utimens after a close (as
    /// `tar -xpf` and `cp -p` do) then make one version, not four. Only a
    /// put or copy that has not started, with no parts sent early (they
    /// carry the metadata the upload was created with; an early upload
    /// that sent nothing is only a plan) and no submit of
    /// the key in flight (it would be newer); else None, and the caller
    /// queues the copy. The queued op changes first, so an attempt starting
    /// from now on sends `meta`; then its journal row, before the caller
    /// answers.
    pub(crate) async fn amend_meta(
        &self,
        key: &str,
        meta: String,
    ) -> Result<Option<i64>, JournalError> {
        if self.inner.queue.lock().unwrap().spill.is_none() {
            return self.amend_held(key, meta).await;
        }
        // The key's newest op may be spilled: amended in the journal, where
        // the refill that queues it will read it (not meanwhile: the lock).
        let _boundary = self.inner.spill_lock.lock().await;
        let Some(after) = self.inner.queue.lock().unwrap().spilled_after() else {
            return self.amend_held(key, meta).await;
        };
        let Some(reader) = self.reader() else {
            return Ok(None);
        };
        let newest = match reader.of_key(key, after) {
            Ok(ops) => ops.into_iter().last(),
            // The caller queues a copy instead: one version more.
            Err(e) => {
                tracing::warn!(key, error = %e, "cannot read the spilled uploads");
                return Ok(None);
            }
        };
        let Some(op) = newest else {
            return self.amend_held(key, meta).await;
        };
        {
            let q = self.inner.queue.lock().unwrap();
            if q.tickets.contains_key(key)
                || op.kind == OpKind::Delete
                || q.early.get(&op.seq).is_some_and(|e| !e.sent_nothing())
            {
                return Ok(None);
            }
        }
        self.inner.journal.amend_meta(op.seq, meta).await?;
        Ok(Some(op.seq))
    }

    /// [`Uploader::amend_meta`] of an op held in memory.
    async fn amend_held(&self, key: &str, meta: String) -> Result<Option<i64>, JournalError> {
        let seq = {
            let mut q = self.inner.queue.lock().unwrap();
            let q = &mut *q;
            if q.tickets.contains_key(key) {
                return Ok(None);
            }
            let running = q.running.contains(key);
            let Some(list) = q.by_key.get_mut(key) else {
                return Ok(None);
            };
            let started = running && list.len() == 1;
            let Some(op) = list.back_mut() else {
                return Ok(None);
            };
            let parts_sent = q.early.get(&op.seq).is_some_and(|e| !e.sent_nothing());
            if started || op.kind == OpKind::Delete || parts_sent {
                return Ok(None);
            }
            op.meta = meta.clone();
            op.seq
        };
        self.inner.journal.amend_meta(seq, meta).await?;
        Ok(Some(seq))
    }

    /// The lookups of spilled ops (None, logged, when the journal cannot be
    /// opened for them).
    fn reader(&self) -> Option<&SpillReader> {
        Self::spill_reader(&self.inner)
    }

    fn spill_reader(inner: &Inner) -> Option<&SpillReader> {
        inner
            .reader
            .get_or_init(|| match SpillReader::open(&inner.journal.path()) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the journal to look up spilled uploads");
                    None
                }
            })
            .as_ref()
    }

    /// Waits until operation `seq` reached the bucket (Ok) or failed permanently (Err).
    pub async fn wait(&self, seq: i64) -> WaitResult {
        let rx = {
            let mut q = self.inner.queue.lock().unwrap();
            // Under the lock: an op dropped from the spill (`worker::gone`)
            // is either not open here or its waiters are taken after.
            let spilled = q.spilled_after().is_some_and(|after| {
                seq > after && self.reader().is_none_or(|r| r.is_open(seq).unwrap_or(true))
            });
            if !q.keys.contains_key(&seq) && !spilled {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            q.waiters.entry(seq).or_default().push(tx);
            q.urgent_upto = q.urgent_upto.max(seq);
            rx
        };
        self.inner.wake.notify_one();
        rx.await
            .unwrap_or_else(|_| Err("the uploader stopped".into()))
    }

    /// The operations still queued for `key`, oldest first.
    pub(crate) fn pending_for(&self, key: &str) -> Vec<Op> {
        let (mut ops, after): (Vec<Op>, _) = {
            let q = self.inner.queue.lock().unwrap();
            let held = q.by_key.get(key).map(|v| v.iter().cloned().collect());
            (held.unwrap_or_default(), q.spilled_after())
        };
        if let (Some(a), Some(r)) = (after, after.and_then(|_| self.reader())) {
            match r.of_key(key, a) {
                Ok(spilled) => ops.extend(spilled),
                Err(e) => tracing::warn!(key, error = %e, "cannot read the spilled uploads"),
            }
        }
        ops
    }

    /// The newest queued operation of every key under `prefix`.
    pub(crate) fn pending_under(&self, prefix: &str) -> Vec<Op> {
        let (held, after): (Vec<Op>, _) = {
            let q = self.inner.queue.lock().unwrap();
            let held = q
                .by_key
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(prefix))
                .filter_map(|(_, ops)| ops.back().cloned())
                .collect();
            (held, q.spilled_after())
        };
        let Some((a, r)) = after.zip(after.and_then(|_| self.reader())) else {
            return held;
        };
        let spilled = match r.under(prefix, a) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(prefix, error = %e, "cannot read the spilled uploads");
                return held;
            }
        };
        // A key's spilled op is newer than its held ones.
        let mut newest: BTreeMap<String, Op> =
            held.into_iter().map(|o| (o.key.clone(), o)).collect();
        for o in spilled {
            newest.insert(o.key.clone(), o);
        }
        newest.into_values().collect()
    }

    /// Whether an operation on `key` is being submitted right now (or one
    /// is announced, see [`Uploader::announce`]).
    pub(crate) fn submitting(&self, key: &str) -> bool {
        self.inner.queue.lock().unwrap().tickets.contains_key(key)
    }

    /// Counts as an operation on `key` being submitted until the returned
    /// guard drops: a caller that changes local state for an operation it
    /// is about to submit (a rename moves its node first) keeps the
    /// completions of `key`'s earlier operations from being taken for it.
    pub(crate) fn announce(&self, key: &str) -> Announced {
        let mut q = self.inner.queue.lock().unwrap();
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.tickets
            .entry(key.to_string())
            .or_default()
            .push_back(ticket);
        Announced {
            inner: self.inner.clone(),
            key: key.to_string(),
            ticket,
        }
    }

    /// Tests: every operation queued now is due at once (as if waited for),
    /// whatever the write-back delay.
    #[cfg(test)]
    pub(crate) fn hurry(&self) {
        let mut q = self.inner.queue.lock().unwrap();
        let last = q.keys.keys().max().copied().unwrap_or(0);
        let spilled = q.spill.as_ref().and_then(|s| s.last()).unwrap_or(0);
        q.urgent_upto = q.urgent_upto.max(last).max(spilled);
        drop(q);
        self.inner.wake.notify_one();
    }

    /// Tests: heads the scheduler looked at, over its life.
    #[cfg(test)]
    pub(crate) fn examined(&self) -> u64 {
        self.inner.queue.lock().unwrap().examined
    }

    /// Tests: whether an operation is running (or its completion is not
    /// applied yet).
    #[cfg(test)]
    pub(crate) fn busy(&self) -> bool {
        !self.inner.queue.lock().unwrap().running.is_empty()
    }

    /// Tests: what is running and the count.
    #[cfg(test)]
    pub(crate) fn debug_all(&self) -> String {
        let q = self.inner.queue.lock().unwrap();
        format!(
            "running {:?}, keys {:?}, count {}, watched {}",
            q.running,
            q.by_key
                .iter()
                .map(|(k, l)| (k, l.iter().map(|o| o.seq).collect::<Vec<_>>()))
                .collect::<Vec<_>>(),
            q.count,
            *self.inner.pending.borrow()
        )
    }

    /// Tests: the scheduler's view of `key`.
    #[cfg(test)]
    pub(crate) fn debug_key(&self, key: &str) -> String {
        let q = self.inner.queue.lock().unwrap();
        let seqs: Vec<i64> = q
            .by_key
            .get(key)
            .map(|l| l.iter().map(|o| o.seq).collect())
            .unwrap_or_default();
        format!(
            "{key}: ops {seqs:?}, running {}, heads {:?}, backoff {:?}, tickets {:?}, urgent_upto {}, count {}",
            q.running.contains(key),
            q.heads.iter().filter(|(_, k)| &***k == key).collect::<Vec<_>>(),
            q.backoff.iter().filter(|(_, k)| &***k == key).collect::<Vec<_>>(),
            q.tickets.get(key),
            q.urgent_upto,
            q.count,
        )
    }

    /// Tests: another pause length ending a burst of writes.
    #[cfg(test)]
    fn set_quiet(&self, quiet: Duration) {
        self.inner.queue.lock().unwrap().quiet = quiet;
    }

    pub fn pending_count(&self) -> usize {
        *self.inner.pending.borrow()
    }

    /// The load replicas give way to: operations queued, and whether one
    /// was submitted less than [`QUIET`] ago.
    #[cfg(test)]
    pub(crate) fn source_load(&self) -> crate::replicator::SourceLoad {
        self.inner.gauge.load()
    }

    /// Waits until no operation is queued, or `timeout` passes; returns how many
    /// are left. `progress` is called whenever the count changes.
    pub async fn drain(&self, timeout: Duration, progress: impl FnMut(usize)) -> usize {
        self.inner.queue.lock().unwrap().draining = true;
        self.inner.wake.notify_one();
        wait_for_zero(self.inner.pending.subscribe(), timeout, progress).await
    }
}

/// See [`Uploader::announce`].
pub(crate) struct Announced {
    inner: Arc<Inner>,
    key: String,
    ticket: u64,
}

impl Drop for Announced {
    fn drop(&mut self) {
        let mut q = self.inner.queue.lock().unwrap();
        if let Some(t) = q.tickets.get_mut(&self.key) {
            t.retain(|x| *x != self.ticket);
            if t.is_empty() {
                q.tickets.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests;
