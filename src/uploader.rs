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
use crate::journal::{Durability, Journal, JournalError, NewOp, Op, OpKind, OpState};
use crate::meta::ObjectMeta;
use crate::retry::{jittered_backoff, wait_for_zero};
use crate::store::{
    AclBody, CompletedPart, Condition, ConditionSupport, ObjectStore, PutBody, PutOptions,
    PutResult,
};

mod early;
mod guard;
mod queue;
mod replan;
mod schedule;
mod worker;

pub use early::EarlyUpload;
use queue::Queue;
pub use schedule::QUIET;
use worker::{backoff, run};

/// An operation that reached the bucket.
#[derive(Debug, Clone)]
pub struct Completion {
    pub op: Op,
    pub result: PutResult,
}

/// What the uploader tells whoever keeps local state (the mount's core).
/// The operation leaves the queue only once this is dropped: local state
/// never lags behind a queue that no longer holds the operation, so a
/// caller that finds nothing queued for a key also finds the key's last
/// version applied (a copy naming it, say).
pub struct Landed {
    pub event: Event,
    _applied: oneshot::Sender<()>,
}

pub enum Event {
    /// The operation reached the bucket.
    Uploaded(Completion),
    /// The operation's input is gone and nothing queued after it sets its
    /// key (see `replan`): queue what the name should hold now, if it
    /// still exists here. `error` says what was gone.
    Lost { op: Op, error: String },
}

/// What waiting for an operation ended with.
pub type WaitResult = Result<(), String>;

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
    /// `[source] acl`, and whether the bucket takes ACLs.
    acl: Mutex<Option<(String, Arc<crate::replicator::AclState>)>>,
    /// Whether the source takes conditional PUTs (see `guard`).
    conditions: ConditionSupport,
}

/// Handle to the write-back worker.
#[derive(Clone)]
pub struct Uploader {
    inner: Arc<Inner>,
}

impl Uploader {
    /// Starts the worker with the operations recovered from the journal. Every
    /// finished operation is also sent on the returned channel (see
    /// [`Landed`]).
    pub fn start(
        store: Arc<dyn ObjectStore>,
        journal: Journal,
        cache: Arc<Cache>,
        cfg: UploadConfig,
        delay: Duration,
        recovered: Vec<Op>,
        replicator: Option<crate::replicator::Replicator>,
    ) -> (Uploader, mpsc::UnboundedReceiver<Landed>) {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let n = recovered.len();
        let parts = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
        let inner = Arc::new(Inner {
            store,
            journal,
            cache,
            cfg,
            delay,
            conditions: ConditionSupport::new(),
            queue: Mutex::new(Queue::new(QUIET)),
            wake: Notify::new(),
            pending: watch::channel(n).0,
            done_tx,
            parts,
            replicator,
            acl: Mutex::new(None),
        });
        {
            let mut q = inner.queue.lock().unwrap();
            for op in recovered {
                q.insert(op);
            }
        }
        crate::background::spawn(run(inner.clone()));
        (Uploader { inner }, done_rx)
    }

    /// Every version written from now on gets this canned ACL (`[source] acl`),
    /// unless the bucket turns out not to take ACLs (then one warning).
    /// `bucket` is the source's config name (for status).
    pub fn set_acl(&self, bucket: &str, acl: Option<String>) {
        let state = Arc::new(crate::replicator::AclState::new(
            bucket,
            self.inner.journal.clone(),
        ));
        *self.inner.acl.lock().unwrap() = acl.map(|a| (a, state));
    }

    /// Aborts the early uploads (see [`EarlyUpload`]) a previous process left
    /// behind. Call before the mount starts new ones.
    pub async fn abort_stale_early(&self) {
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
        if !self.inner.cfg.early_parts || self.inner.acl.lock().unwrap().is_some() {
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
    /// Returns once committed: the caller may acknowledge the write.
    pub async fn submit(&self, op: NewOp) -> Result<i64, JournalError> {
        self.submit_with(op, None).await
    }

    /// [`Uploader::submit`] of a put whose first parts may already be uploaded.
    pub async fn submit_with(
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
            q.tickets.entry(key.clone()).or_default().push_back(ticket);
            (self.inner.journal.stage_in_order(op.clone()), ticket)
        };
        let res = fut.await;
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
            q.insert(staged);
            // Sent under the lock: sent after it, two updates could arrive
            // in the wrong order and leave a stale count.
            self.inner.pending.send_replace(q.count);
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
    /// carry the metadata the upload was created with) and no submit of
    /// the key in flight (it would be newer); else None, and the caller
    /// queues the copy. The queued op changes first, so an attempt starting
    /// from now on sends `meta`; then its journal row, before the caller
    /// answers.
    pub async fn amend_meta(&self, key: &str, meta: String) -> Result<Option<i64>, JournalError> {
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
            if started || op.kind == OpKind::Delete || q.early.contains_key(&op.seq) {
                return Ok(None);
            }
            op.meta = meta.clone();
            op.seq
        };
        self.inner.journal.amend_meta(seq, meta).await?;
        Ok(Some(seq))
    }

    /// Waits until operation `seq` reached the bucket (Ok) or failed permanently (Err).
    pub async fn wait(&self, seq: i64) -> WaitResult {
        let rx = {
            let mut q = self.inner.queue.lock().unwrap();
            if !q.keys.contains_key(&seq) {
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

    /// Whether a queued operation reads cache file `name`.
    pub fn reads(&self, name: &str) -> bool {
        self.inner.queue.lock().unwrap().is_read(name)
    }

    /// The queued operations that read cache file `name`, by seq.
    pub fn users(&self, name: &str) -> Vec<i64> {
        self.inner.queue.lock().unwrap().readers(name)
    }

    /// Moves operations `seqs` from cache file `from` to `to`, a copy with
    /// the same bytes, in the journal and then in the queue: from then on
    /// `from` may be written. An attempt already reading `from` is checked
    /// like any (see "Files written after staging"); its retry reads `to`.
    pub async fn repoint(&self, seqs: &[i64], from: &str, to: &str) -> Result<(), JournalError> {
        for seq in seqs {
            self.inner.journal.repoint(*seq, to.to_string()).await?;
        }
        let mut q = self.inner.queue.lock().unwrap();
        let q = &mut *q;
        for seq in seqs {
            let Some(key) = q.keys.get(seq) else { continue };
            let Some(o) = q
                .by_key
                .get_mut(key)
                .and_then(|l| l.iter_mut().find(|o| o.seq == *seq))
            else {
                continue;
            };
            if o.file.as_deref() != Some(from) {
                continue;
            }
            o.file = Some(to.to_string());
            q.release_file(from, Some(*seq));
            q.use_file(to, Some(*seq));
        }
        Ok(())
    }

    /// The operations still queued for `key`, oldest first.
    pub fn pending_for(&self, key: &str) -> Vec<Op> {
        let q = self.inner.queue.lock().unwrap();
        q.by_key
            .get(key)
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The newest queued operation of every key under `prefix`.
    pub fn pending_under(&self, prefix: &str) -> Vec<Op> {
        let q = self.inner.queue.lock().unwrap();
        q.by_key
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(_, ops)| ops.back().cloned())
            .collect()
    }

    /// Whether a queued operation (or a [`FileClaim`]) still needs the cache
    /// file `name`.
    pub fn references(&self, name: &str) -> bool {
        self.inner.queue.lock().unwrap().uses(name) > 0
    }

    /// [`Uploader::references`] by anything but the operation `landed`
    /// (whose completion is being applied, see [`Landed`]).
    pub fn references_besides(&self, name: &str, landed: &Op) -> bool {
        let q = self.inner.queue.lock().unwrap();
        // `landed` counts under the file it is queued with now: a writer
        // that changes its file in place while it runs repoints it to a
        // copy (`repoint`), and the file it ran on is then someone else's.
        let queued = q
            .by_key
            .get(landed.key.as_str())
            .and_then(|l| l.iter().find(|o| o.seq == landed.seq));
        let file = queued.map_or(landed.file.as_deref(), |o| o.file.as_deref());
        let own = usize::from(file == Some(name));
        q.uses(name) > own
    }

    /// Marks the cache file `name` as needed from now until the returned claim
    /// drops. A caller about to stage an operation with a node's working file
    /// takes the claim when it reads the node, and drops it once the operation
    /// is queued: an upload finishing in between sees the file referenced and
    /// does not retire it (make it a clean copy, or delete it).
    pub fn claim(&self, name: &str) -> FileClaim {
        self.inner.queue.lock().unwrap().use_file(name, None);
        FileClaim {
            inner: self.inner.clone(),
            name: name.to_string(),
        }
    }

    /// Whether an operation on `key` is being submitted right now (or one
    /// is announced, see [`Uploader::announce`]).
    pub fn submitting(&self, key: &str) -> bool {
        self.inner.queue.lock().unwrap().tickets.contains_key(key)
    }

    /// Counts as an operation on `key` being submitted until the returned
    /// guard drops: a caller that changes local state for an operation it
    /// is about to submit (a rename moves its node first) keeps the
    /// completions of `key`'s earlier operations from being taken for it.
    pub fn announce(&self, key: &str) -> Announced {
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
        q.urgent_upto = q.urgent_upto.max(last);
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

    /// The load replicas give way to (`Replicator::give_way_to`): operations
    /// queued, and whether one was submitted less than [`QUIET`] ago.
    pub fn busy_signal(&self) -> crate::replicator::SourceBusy {
        let inner = Arc::downgrade(&self.inner);
        Arc::new(move || {
            inner.upgrade().map_or_else(Default::default, |i| {
                let q = i.queue.lock().unwrap();
                crate::replicator::SourceLoad {
                    queued: q.count,
                    submitting: q.last_submit.is_some_and(|t| t.elapsed() < q.quiet),
                }
            })
        })
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
pub struct Announced {
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

/// See [`Uploader::claim`].
pub struct FileClaim {
    inner: Arc<Inner>,
    name: String,
}

impl Drop for FileClaim {
    fn drop(&mut self) {
        self.inner
            .queue
            .lock()
            .unwrap()
            .release_file(&self.name, None);
    }
}

#[cfg(test)]
mod tests;
