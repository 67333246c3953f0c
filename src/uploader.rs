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
//! every submission scan everything queued.
//!
//! # Retries
//! Transient errors (network, throttling, 5xx) retry with jittered exponential
//! backoff, capped at 30 s, forever. Permanent errors (AccessDenied,
//! NoSuchBucket, …) mark the operation failed in the journal — visible in
//! `status` — and retry every minute, so fixing the bucket or the credentials
//! resumes the upload without losing it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::cache::stamp::{self, Stamp};
use crate::cache::Cache;
use crate::config::UploadConfig;
use crate::error::StoreError;
use crate::journal::{now_ms, Durability, Journal, JournalError, NewOp, Op, OpKind, OpState};
use crate::meta::ObjectMeta;
use crate::store::{
    AclBody, CompletedPart, Condition, ConditionSupport, ObjectStore, PutBody, PutOptions,
    PutResult,
};

mod early;
mod guard;
mod replan;
pub use early::EarlyUpload;

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

struct Queue {
    by_key: BTreeMap<String, VecDeque<Op>>,
    /// Operations in `by_key`, and how many of them (and of the live
    /// [`FileClaim`]s) use each cache file (kept alongside so neither needs a
    /// scan of the queue).
    count: usize,
    files: HashMap<String, usize>,
    /// The key of every queued op, and the queued ops reading each cache
    /// file, by seq: a wait, and a writer about to change a file in place,
    /// find theirs without a scan of the queue (which holds every file a
    /// large copy-in has written until the store catches up).
    keys: HashMap<i64, String>,
    readers: HashMap<String, BTreeSet<i64>>,
    running: HashSet<String>,
    /// Heads: the front op's seq of every key neither running nor backing
    /// off (see "Scheduling"). An entry whose op is no longer its key's
    /// idle front is stale and dropped when met.
    heads: BTreeMap<i64, String>,
    /// Front ops waiting out a retry backoff, by when they may run again.
    backoff: BTreeMap<(Instant, i64), String>,
    /// Heads the scheduler looked at, over its life (tests).
    #[cfg(test)]
    examined: u64,
    waiters: HashMap<i64, Vec<oneshot::Sender<WaitResult>>>,
    /// Next queue position of a submitted op whose seq is not known yet.
    next_ticket: u64,
    /// Operations up to this seq are not deferred (someone waits for them).
    urgent_upto: i64,
    /// Draining (unmount): nothing is deferred.
    draining: bool,
    /// When the last operation was submitted.
    last_submit: Option<Instant>,
    /// Submissions closer together than this are one burst ([`QUIET`]).
    quiet: Duration,
    tickets: HashMap<String, VecDeque<u64>>,
    /// Parts uploaded before the op's file was staged, by op seq.
    early: HashMap<i64, Arc<EarlyUpload>>,
    /// Ops whose last attempt found their file written while it was read:
    /// the next one uploads a copy (see "Files written after staging").
    changed: HashSet<i64>,
}

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
            queue: Mutex::new(Queue {
                by_key: BTreeMap::new(),
                count: 0,
                files: HashMap::new(),
                keys: HashMap::new(),
                readers: HashMap::new(),
                running: HashSet::new(),
                heads: BTreeMap::new(),
                backoff: BTreeMap::new(),
                #[cfg(test)]
                examined: 0,
                waiters: HashMap::new(),
                next_ticket: 0,
                tickets: HashMap::new(),
                urgent_upto: 0,
                draining: false,
                last_submit: None,
                quiet: QUIET,
                early: HashMap::new(),
                changed: HashSet::new(),
            }),
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

    /// The queued operations that read cache file `name`, by seq.
    pub fn users(&self, name: &str) -> Vec<i64> {
        let q = self.inner.queue.lock().unwrap();
        q.readers
            .get(name)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
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
            Queue::release(&mut q.files, from);
            *q.files.entry(to.to_string()).or_default() += 1;
            Queue::unread(&mut q.readers, from, *seq);
            q.readers.entry(to.to_string()).or_default().insert(*seq);
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
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(_, ops)| ops.back().cloned())
            .collect()
    }

    /// Whether a queued operation (or a [`FileClaim`]) still needs the cache
    /// file `name`.
    pub fn references(&self, name: &str) -> bool {
        self.inner.queue.lock().unwrap().files.contains_key(name)
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
            .get(&landed.key)
            .and_then(|l| l.iter().find(|o| o.seq == landed.seq));
        let file = queued.map_or(landed.file.as_deref(), |o| o.file.as_deref());
        let own = usize::from(file == Some(name));
        q.files.get(name).is_some_and(|n| *n > own)
    }

    /// Marks the cache file `name` as needed from now until the returned claim
    /// drops. A caller about to stage an operation with a node's working file
    /// takes the claim when it reads the node, and drops it once the operation
    /// is queued: an upload finishing in between sees the file referenced and
    /// does not retire it (make it a clean copy, or delete it).
    pub fn claim(&self, name: &str) -> FileClaim {
        *self
            .inner
            .queue
            .lock()
            .unwrap()
            .files
            .entry(name.to_string())
            .or_default() += 1;
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
            q.heads.iter().filter(|(_, k)| *k == key).collect::<Vec<_>>(),
            q.backoff.iter().filter(|(_, k)| *k == key).collect::<Vec<_>>(),
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

/// Waits until a watched count reaches zero or `timeout` passes; returns the
/// count left, calling `progress` with every value seen.
pub(crate) async fn wait_for_zero(
    mut rx: watch::Receiver<usize>,
    timeout: Duration,
    mut progress: impl FnMut(usize),
) -> usize {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = *rx.borrow_and_update();
        progress(n);
        if n == 0 {
            return 0;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return *rx.borrow();
        }
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
        Queue::release(&mut self.inner.queue.lock().unwrap().files, &self.name);
    }
}

impl Queue {
    fn release(files: &mut HashMap<String, usize>, f: &str) {
        if let Some(n) = files.get_mut(f) {
            *n -= 1;
            if *n == 0 {
                files.remove(f);
            }
        }
    }

    fn unread(readers: &mut HashMap<String, BTreeSet<i64>>, f: &str, seq: i64) {
        if let Some(s) = readers.get_mut(f) {
            s.remove(&seq);
            if s.is_empty() {
                readers.remove(f);
            }
        }
    }

    /// `op` left the queue: out of the indexes.
    fn unindex(&mut self, op: &Op) {
        self.keys.remove(&op.seq);
        if let Some(f) = &op.file {
            Self::release(&mut self.files, f);
            Self::unread(&mut self.readers, f, op.seq);
        }
    }

    /// Queues `op` behind the operations of its key with smaller seqs.
    fn insert(&mut self, op: Op) {
        if let Some(f) = &op.file {
            *self.files.entry(f.clone()).or_default() += 1;
            self.readers.entry(f.clone()).or_default().insert(op.seq);
        }
        self.keys.insert(op.seq, op.key.clone());
        self.count += 1;
        let list = self.by_key.entry(op.key.clone()).or_default();
        let pos = list
            .iter()
            .position(|o| o.seq > op.seq)
            .unwrap_or(list.len());
        let (seq, key) = (op.seq, op.key.clone());
        list.insert(pos, op);
        // A new front of a key that is not running is a head (an older entry
        // of that key goes stale).
        if pos == 0 && !self.running.contains(&key) {
            self.heads.insert(seq, key);
        }
    }

    /// `key` stopped running: its next op, if any, becomes a head, now or
    /// (`retry`) once that backoff has passed.
    fn idle(&mut self, key: &str, retry: Option<Instant>) {
        self.running.remove(key);
        let Some(seq) = self.by_key.get(key).and_then(|l| l.front()).map(|o| o.seq) else {
            return;
        };
        match retry {
            Some(at) => self.backoff.insert((at, seq), key.to_string()),
            None => self.heads.insert(seq, key.to_string()),
        };
    }

    /// Whether `seq` is still `key`'s front op, not running.
    fn is_idle_front(&self, key: &str, seq: i64) -> bool {
        !self.running.contains(key)
            && self.by_key.get(key).and_then(|l| l.front()).map(|o| o.seq) == Some(seq)
    }

    /// Removes operations `seqs` of `key` (dropped: see `replan`). They
    /// name no cache file but the gone one's, which is not there.
    fn remove_ops(&mut self, key: &str, seqs: &[i64]) {
        let Some(list) = self.by_key.get_mut(key) else {
            return;
        };
        let mut removed = Vec::new();
        list.retain(|o| {
            if !seqs.contains(&o.seq) {
                return true;
            }
            removed.push(o.clone());
            false
        });
        self.count -= removed.len();
        if list.is_empty() {
            self.by_key.remove(key);
        }
        for seq in seqs {
            self.changed.remove(seq);
            self.early.remove(seq);
        }
        for o in &removed {
            self.unindex(o);
        }
    }

    /// Removes the finished head operation `seq` of `key`; returns the cache
    /// file it named when that is now unused (a copy it was repointed to
    /// while an attempt read the original, see [`Uploader::repoint`]).
    fn remove_front(&mut self, key: &str, seq: i64, ran_on: Option<&str>) -> Option<String> {
        self.changed.remove(&seq);
        let list = self.by_key.get_mut(key)?;
        let mut unused = None;
        let popped = if list.front().map(|o| o.seq) == Some(seq) {
            list.pop_front()
        } else {
            None
        };
        if list.is_empty() {
            self.by_key.remove(key);
        }
        if let Some(op) = popped {
            self.count -= 1;
            self.unindex(&op);
            if let Some(f) = &op.file {
                if ran_on != Some(f.as_str()) && !self.files.contains_key(f) {
                    unused = Some(f.clone());
                }
            }
        }
        unused
    }
}

/// Submissions closer together than this are one burst of writing.
pub const QUIET: Duration = Duration::from_millis(200);

/// When a staged operation may start: after the write-back delay, and while
/// writes keep coming, after the pause in them or its deferral limit; at
/// once when waited for.
fn due_at(inner: &Inner, q: &Queue, op: &Op, now: Instant) -> i64 {
    if q.draining || op.seq <= q.urgent_upto {
        // Waited for (fsync, unmount): neither delay applies.
        return op.staged_at_ms;
    }
    let defer = inner.cfg.defer_while_writing.0;
    let mut due = op.staged_at_ms + inner.delay.as_millis() as i64;
    if defer.is_zero() {
        return due;
    }
    if let Some(last) = q.last_submit {
        let quiet_in = q.quiet.saturating_sub(now.duration_since(last));
        if !quiet_in.is_zero() {
            let pause = now_ms() + quiet_in.as_millis() as i64;
            due = due.max(pause.min(op.staged_at_ms + defer.as_millis() as i64));
        }
    }
    due
}

/// The scheduler: starts heads (see "Scheduling") whose write-back delay,
/// deferral and retry backoff have passed, oldest first, up to `concurrency`
/// at once.
async fn run(inner: Arc<Inner>) {
    let slots = Arc::new(Semaphore::new(inner.cfg.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    loop {
        let mut next_wake = Duration::from_secs(1);
        let ready: Vec<Op> = {
            let mut guard = inner.queue.lock().unwrap();
            let q = &mut *guard;
            let now = Instant::now();
            let now_ms = now_ms();
            while let Some(entry) = q.backoff.first_entry() {
                let (at, seq) = *entry.key();
                if at > now {
                    next_wake = next_wake.min(at - now);
                    break;
                }
                let key = entry.remove();
                if q.is_idle_front(&key, seq) {
                    q.heads.insert(seq, key);
                }
            }
            let mut ready: Vec<Op> = Vec::new();
            let mut stale: Vec<i64> = Vec::new();
            let budget = slots.available_permits();
            for (&seq, key) in &q.heads {
                if ready.len() >= budget {
                    break;
                }
                #[cfg(test)]
                {
                    q.examined += 1;
                }
                if !q.is_idle_front(key, seq) {
                    stale.push(seq);
                    continue;
                }
                let op = q.by_key[key].front().expect("an idle front");
                let due = due_at(&inner, q, op, now);
                if due > now_ms {
                    // Later heads were staged no sooner: none is due before it.
                    next_wake = next_wake.min(Duration::from_millis((due - now_ms) as u64));
                    break;
                }
                ready.push(op.clone());
            }
            for seq in stale {
                q.heads.remove(&seq);
            }
            for op in &ready {
                q.heads.remove(&op.seq);
                q.running.insert(op.key.clone());
            }
            ready
        };
        for op in ready {
            let permit = slots.clone().acquire_owned().await.expect("semaphore open");
            let inner = inner.clone();
            tasks.spawn(async move {
                execute(&inner, op).await;
                drop(permit);
                inner.wake.notify_one();
            });
        }
        while tasks.try_join_next().is_some() {}
        let _ = tokio::time::timeout(next_wake, inner.wake.notified()).await;
    }
}

fn backoff(attempts: u32, permanent: bool) -> Duration {
    if permanent {
        return Duration::from_secs(60);
    }
    jittered_backoff(attempts)
}

/// Exponential backoff from 250 ms, capped at 30 s, with "equal jitter".
pub(crate) fn jittered_backoff(attempts: u32) -> Duration {
    let base = 250u64.saturating_mul(1u64 << attempts.min(7)).min(30_000);
    let jitter = rand::random::<u64>() % (base / 2 + 1);
    Duration::from_millis(base / 2 + jitter)
}

/// How a finished upload is recorded: lazily when a power loss that undoes the
/// record can be redone from the journal alone (the row holds the bytes, or
/// there is no cache file to lose once the record returns).
fn redoable(op: &Op) -> Durability {
    if op.inline || op.file.is_none() {
        Durability::Lazy
    } else {
        Durability::Synced
    }
}

async fn execute(inner: &Arc<Inner>, op: Op) {
    let changed = inner.queue.lock().unwrap().changed.contains(&op.seq);
    let op = if changed {
        match snapshot(inner, op.clone()).await {
            Ok(op) => op,
            Err(e) => return failed(inner, op, e).await,
        }
    } else {
        op
    };
    let (result, small) = match small_body(inner, &op) {
        Ok(small) => (perform_with_acl(inner, &op, small.as_ref()).await, small),
        Err(e) => (Err(e), None),
    };
    match result {
        Ok(res) => {
            // The version and its replication tasks are recorded together.
            let plan = inner
                .replicator
                .as_ref()
                .map(|r| r.plan(&op))
                .unwrap_or_default();
            let recorded = inner
                .journal
                .complete_with_tasks(op.seq, res.version_id.clone(), plan, redoable(&op))
                .await;
            if let (Ok(tasks), Some(r)) = (&recorded, &inner.replicator) {
                let fresh = small.map(|body| crate::replicator::Fresh {
                    body: Some(body),
                    etag: res.etag.clone(),
                    opts: options(&op, &None),
                });
                r.enqueue_fresh(tasks.clone(), fresh);
            }
            if let Err(e) = recorded {
                // The version is in the bucket but not recorded: the op stays queued
                // and runs again (a duplicate version with the same bytes).
                tracing::error!(key = %op.key, error = %e, "cannot record an upload in the journal; will retry");
                let mut q = inner.queue.lock().unwrap();
                q.idle(&op.key, Some(Instant::now() + backoff(op.attempts, false)));
                return;
            }
            tell_owner(
                inner,
                Event::Uploaded(Completion {
                    op: op.clone(),
                    result: res.clone(),
                }),
            )
            .await;
            let (waiters, unused) = {
                let mut q = inner.queue.lock().unwrap();
                let unused = q.remove_front(&op.key, op.seq, op.file.as_deref());
                q.idle(&op.key, None);
                inner.pending.send_replace(q.count);
                (q.waiters.remove(&op.seq).unwrap_or_default(), unused)
            };
            if let Some(f) = unused {
                inner.cache.remove_data(&f);
            }
            inner.cache.note_progress();
            for w in waiters {
                let _ = w.send(Ok(()));
            }
        }
        Err(e) => failed(inner, op, e).await,
    }
}

/// Hands `event` to the owner of local state and waits until it is applied
/// (see [`Landed`]); at once when there is no owner.
async fn tell_owner(inner: &Inner, event: Event) {
    let (applied, landed) = oneshot::channel();
    let sent = inner.done_tx.send(Landed {
        event,
        _applied: applied,
    });
    if sent.is_ok() {
        // Resolves (with an error) when the receiver drops it.
        let _ = landed.await;
    }
}

/// Whether `e`, from running `op`, says its input is gone: the object a
/// copy names, or the staged file a put reads (see `replan`).
fn input_gone(op: &Op, e: &StoreError) -> bool {
    match op.kind {
        OpKind::Copy => e.is_not_found(),
        OpKind::Put => matches!(
            e,
            StoreError::LocalIo { source, .. } if source.kind() == std::io::ErrorKind::NotFound
        ),
        OpKind::Delete => false,
    }
}

/// Drops an operation whose input is gone, never to retry it (see
/// `replan`). Its waiters, and those of the self-copies dropped with it,
/// wait for the operation that supersedes them; when none is queued, the
/// owner of local state is asked for one first, and without one they fail.
async fn gone(inner: &Arc<Inner>, op: Op, why: String) {
    let later = |q: &Queue| -> Vec<Op> {
        q.by_key
            .get(&op.key)
            .map(|l| l.iter().filter(|o| o.seq > op.seq).cloned().collect())
            .unwrap_or_default()
    };
    let plan = replan::replan(&op, &later(&inner.queue.lock().unwrap()));
    let (by, dropped) = match plan {
        replan::Replan::Superseded { by, dropped } => {
            tracing::info!(key = %op.key, seq = op.seq, superseded_by = by, error = %why, "a queued operation's input is gone; a later operation on the key supersedes it");
            (Some(by), dropped)
        }
        replan::Replan::Lost { dropped } => {
            tracing::warn!(key = %op.key, error = %why, "a queued operation's input is gone; queueing what the name holds now");
            tell_owner(
                inner,
                Event::Lost {
                    op: op.clone(),
                    error: why.clone(),
                },
            )
            .await;
            // What the owner queued meanwhile supersedes them.
            let last = *dropped.last().expect("the gone op");
            let by = later(&inner.queue.lock().unwrap())
                .into_iter()
                .find(|o| o.seq > last && !replan::reads_current(o))
                .map(|o| o.seq);
            (by, dropped)
        }
    };
    let reason = match by {
        Some(b) => format!("not run: {why}; superseded by operation {b}"),
        None => format!("not run: {why}; nothing queued since sets the name"),
    };
    if by.is_none() {
        tracing::error!(key = %op.key, error = %why, "a queued operation's input is gone and the name's bytes are not here; listed by `regionfs status --failed`");
    }
    if let Err(e) = inner
        .journal
        .drop_ops(dropped.clone(), reason.clone(), by.is_some())
        .await
    {
        // Stays queued: the next attempt decides again.
        tracing::error!(key = %op.key, error = %e, "cannot record a dropped operation in the journal; will retry");
        let mut q = inner.queue.lock().unwrap();
        q.idle(&op.key, Some(Instant::now() + backoff(op.attempts, false)));
        return;
    }
    let failed_waiters = {
        let mut q = inner.queue.lock().unwrap();
        q.remove_ops(&op.key, &dropped);
        let mut orphaned = Vec::new();
        for seq in &dropped {
            orphaned.extend(q.waiters.remove(seq).unwrap_or_default());
        }
        let failed = match by {
            Some(b) => {
                q.waiters.entry(b).or_default().extend(orphaned);
                q.urgent_upto = q.urgent_upto.max(b);
                Vec::new()
            }
            None => orphaned,
        };
        q.idle(&op.key, None);
        inner.pending.send_replace(q.count);
        failed
    };
    inner.wake.notify_one();
    for w in failed_waiters {
        let _ = w.send(Err(reason.clone()));
    }
}

/// Records a failed attempt and schedules the retry (backoff by error class).
async fn failed(inner: &Arc<Inner>, op: Op, e: StoreError) {
    if input_gone(&op, &e) {
        return gone(inner, op, e.to_string()).await;
    }
    let permanent = e.is_permanent();
    let msg = e.to_string();
    if permanent {
        tracing::error!(key = %op.key, error = %msg, "upload failed permanently; retrying every minute until the cause is fixed");
    } else {
        tracing::warn!(key = %op.key, error = %msg, "upload failed; retrying");
    }
    let _ = inner
        .journal
        .record_failure(op.seq, msg.clone(), permanent)
        .await;
    let waiters = {
        let mut q = inner.queue.lock().unwrap();
        let attempts = if let Some(o) = q.by_key.get_mut(&op.key).and_then(|l| l.front_mut()) {
            o.attempts += 1;
            o.error = Some(msg.clone());
            o.state = if permanent {
                OpState::Failed
            } else {
                OpState::Pending
            };
            o.attempts
        } else {
            op.attempts + 1
        };
        if is_changed(&e) {
            q.changed.insert(op.seq);
        }
        q.idle(&op.key, Some(Instant::now() + backoff(attempts, permanent)));
        if permanent {
            q.waiters.remove(&op.seq).unwrap_or_default()
        } else {
            Vec::new()
        }
    };
    for w in waiters {
        let _ = w.send(Err(msg.clone()));
    }
}

fn options(op: &Op, acl: &Option<String>) -> PutOptions {
    let mut o = ObjectMeta::from_json(&op.meta)
        .map(|m| m.to_put_options_for(&op.key))
        .unwrap_or_default();
    o.acl = acl.clone();
    o
}

/// Writes the operation with the source's ACL, if one is configured and the
/// bucket takes ACLs. Some stores accept `x-amz-acl` on a PUT and ignore it, so
/// the ACL is also set on the new version explicitly.
async fn perform_with_acl(
    inner: &Arc<Inner>,
    op: &Op,
    small: Option<&Bytes>,
) -> Result<PutResult, StoreError> {
    let store = inner.store.as_ref();
    let configured = inner.acl.lock().unwrap().clone();
    let Some((canned, state)) = configured.filter(|_| op.kind != OpKind::Delete) else {
        return perform_guarded(inner, op, &None, small).await;
    };
    if !state.enabled(store).await {
        return perform_guarded(inner, op, &None, small).await;
    }
    let res = match perform_guarded(inner, op, &Some(canned.clone()), small).await {
        Err(StoreError::AclNotSupported { message, .. }) => {
            state.refused(store, &message);
            return perform_guarded(inner, op, &None, small).await;
        }
        other => other?,
    };
    if canned != "private" {
        let set = store
            .put_acl(&op.key, res.version_id.as_deref(), &AclBody::Canned(canned))
            .await;
        match set {
            Err(StoreError::AclNotSupported { message, .. }) => state.refused(store, &message),
            other => other?,
        }
    }
    Ok(res)
}

/// The bytes of a small put, read once when a replicator will want them: the
/// upload sends this very buffer and the replicas are written from it
/// (`replicator::Fresh`), so they need not read the source.
fn small_body(inner: &Inner, op: &Op) -> Result<Option<Bytes>, StoreError> {
    let (OpKind::Put, Some(name), None, Some(_)) =
        (op.kind, &op.file, &op.multipart_id, &inner.replicator)
    else {
        return Ok(None);
    };
    if inner.acl.lock().unwrap().is_some() {
        // Its replicas copy the source version's ACL, read from the source.
        return Ok(None);
    }
    if op.size > crate::journal::INLINE_MAX || op.size >= inner.cfg.multipart_threshold.0 {
        return Ok(None);
    }
    let path = inner.cache.data_path(name);
    let local = |e: std::io::Error| local_io(inner.store.as_ref(), &path, e);
    let before = stamp::of_path(&path).map_err(local)?;
    let bytes = std::fs::read(&path).map_err(local)?;
    // The size in the row is what was staged. A file written since (see
    // "Files written after staging") is uploaded from the file, whose
    // upload checks it was not written meanwhile.
    let stable = stamp::of_path(&path).map_err(local)? == before;
    Ok((stable && bytes.len() as u64 == op.size).then(|| Bytes::from(bytes)))
}

/// Writes the operation over what its writer last saw, reporting any other
/// writer's version it replaces instead (see `guard`).
async fn perform_guarded(
    inner: &Arc<Inner>,
    op: &Op,
    acl: &Option<String>,
    small: Option<&Bytes>,
) -> Result<PutResult, StoreError> {
    let mut cond = guard::first_condition(op.base.as_ref()).filter(|_| inner.conditions.on());
    if cond.is_none() && op.base.is_some() && !multipart_upload(inner, op) {
        guard::look(inner, op).await?;
    }
    for _ in 0..CONFLICT_ROUNDS {
        let Some(c) = cond.clone() else {
            return perform(inner, op, acl, small, None).await;
        };
        match perform(inner, op, acl, small, Some(c.clone())).await {
            Err(StoreError::PreconditionFailed { .. }) => {
                cond = guard::after_refusal(inner, op, &c).await?;
            }
            // S3 answers If-Match on a missing key with NoSuchKey.
            Err(StoreError::NotFound { .. }) if matches!(c, Condition::IfMatch(_)) => {
                cond = guard::after_refusal(inner, op, &c).await?;
            }
            Err(e) if ConditionSupport::refuses(&e) => {
                inner.conditions.refused(
                    inner.store.as_ref(),
                    &e,
                    "uploads look at the current object first instead",
                );
                guard::look(inner, op).await?;
                cond = None;
            }
            other => return other,
        }
    }
    // Other writers keep replacing the key: back off and try again.
    Err(StoreError::Throttled {
        bucket: inner.store.describe(),
        code: "ConcurrentWriters".into(),
    })
}

/// Conditional writes a put makes, and the looks between them, before it
/// backs off: other writers keep replacing the key.
const CONFLICT_ROUNDS: usize = 4;

/// Whether the put's version is made by CompleteMultipartUpload (which
/// takes no condition on every store; `guard::look` runs before it).
fn multipart_upload(inner: &Inner, op: &Op) -> bool {
    op.kind == OpKind::Put
        && op.file.is_some()
        && (op.size >= inner.cfg.multipart_threshold.0
            || inner.queue.lock().unwrap().early.contains_key(&op.seq))
}

async fn perform(
    inner: &Arc<Inner>,
    op: &Op,
    acl: &Option<String>,
    small: Option<&Bytes>,
    cond: Option<Condition>,
) -> Result<PutResult, StoreError> {
    let store = &inner.store;
    // Only whole PUTs take the condition (see `guard`).
    let put_options = |op: &Op, acl: &Option<String>| PutOptions {
        condition: cond.clone(),
        ..options(op, acl)
    };
    match op.kind {
        OpKind::Delete => {
            let d = store.delete(&op.key).await?;
            Ok(PutResult {
                version_id: d.version_id,
                etag: String::new(),
            })
        }
        OpKind::Copy => {
            let src = op.src_key.as_deref().unwrap_or(&op.key);
            store
                .copy(src, op.src_version.as_deref(), &op.key, &options(op, acl))
                .await
        }
        OpKind::Put => {
            let Some(name) = op.file.as_deref() else {
                // A directory marker (or an empty object with no cache file).
                return store
                    .put(
                        &op.key,
                        PutBody::Bytes(bytes::Bytes::new()),
                        &put_options(op, acl),
                    )
                    .await;
            };
            let path = inner.cache.data_path(name);
            // Taken before any byte is read: unchanged at the end, it proves
            // the bytes sent are one state of the file (see `cache::stamp`).
            let before = stamp::of_path(&path).map_err(|e| local_io(store.as_ref(), &path, e))?;
            let size = before.size;
            let early = inner.queue.lock().unwrap().early.remove(&op.seq);
            if let Some(old) = &op.multipart_id {
                store.abort_multipart(&op.key, old).await?;
                let _ = inner.journal.set_multipart(op.seq, None).await;
            }
            if let (Some(e), None) = (early, acl) {
                if let Some(f) = e.finish(op, size, &options(op, acl)).await {
                    return complete_early(inner, op, path, before, f).await;
                }
            }
            if let Some(b) = small.filter(|b| b.len() as u64 == size) {
                return store
                    .put(&op.key, PutBody::Bytes(b.clone()), &put_options(op, acl))
                    .await;
            }
            if size < inner.cfg.multipart_threshold.0 {
                let check_path = path.clone();
                let unchanged = Arc::new(move || stamp::of_path(&check_path).ok() == Some(before));
                let res = store
                    .put(
                        &op.key,
                        PutBody::StableFile {
                            path: path.clone(),
                            len: size,
                            unchanged,
                        },
                        &put_options(op, acl),
                    )
                    .await;
                return match res {
                    Err(_) if stamp::of_path(&path).ok() != Some(before) => {
                        Err(changed_error(store.as_ref(), &path))
                    }
                    other => other,
                };
            }
            multipart(inner, op, path, before, acl).await
        }
    }
}

async fn multipart(
    inner: &Arc<Inner>,
    op: &Op,
    path: std::path::PathBuf,
    before: Stamp,
    acl: &Option<String>,
) -> Result<PutResult, StoreError> {
    let size = before.size;
    let store = inner.store.clone();
    let upload_id = store.create_multipart(&op.key, &options(op, acl)).await?;
    if let Err(e) = inner
        .journal
        .set_multipart(op.seq, Some(upload_id.clone()))
        .await
    {
        let _ = store.abort_multipart(&op.key, &upload_id).await;
        return Err(StoreError::LocalIo {
            bucket: store.describe(),
            source: std::io::Error::other(e.to_string()),
        });
    }
    let part = inner.cfg.part_size_for(size);
    let uploaded = upload_parts(inner, op, &path, &upload_id, 0, size, part)
        .await
        .and_then(|p| unchanged(store.as_ref(), &path, before).map(|_| p));
    // The last look before the version exists (see `guard`).
    let looked = match uploaded {
        Ok(p) => guard::look(inner, op).await.map(|_| p),
        Err(e) => Err(e),
    };
    let parts = match looked {
        Ok(p) => p,
        Err(e) => {
            let _ = store.abort_multipart(&op.key, &upload_id).await;
            let _ = inner.journal.set_multipart(op.seq, None).await;
            return Err(e);
        }
    };
    store.complete_multipart(&op.key, &upload_id, parts).await
}

/// Finishes an upload whose first parts went up before the close: the rest of
/// the staged file, then CompleteMultipartUpload. On failure the upload is
/// aborted and the retry uploads the file whole.
async fn complete_early(
    inner: &Arc<Inner>,
    op: &Op,
    path: std::path::PathBuf,
    before: Stamp,
    f: early::Finished,
) -> Result<PutResult, StoreError> {
    let store = inner.store.clone();
    let size = before.size;
    let id = f.upload_id;
    let result = async {
        inner
            .journal
            .set_multipart(op.seq, Some(id.clone()))
            .await
            .map_err(|e| StoreError::LocalIo {
                bucket: store.describe(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let _ = inner.journal.forget_early(id.clone()).await;
        tracing::debug!(
            key = %op.key,
            early_bytes = f.uploaded,
            rest_bytes = size - f.uploaded,
            "completing an upload whose first parts went up before the close"
        );
        let mut parts = f.parts;
        parts.extend(upload_parts(inner, op, &path, &id, f.uploaded, size, f.part).await?);
        unchanged(store.as_ref(), &path, before)?;
        guard::look(inner, op).await?;
        store.complete_multipart(&op.key, &id, parts).await
    }
    .await;
    if result.is_err() {
        // The retry uploads the file whole; the parts go, now or at restart
        // (the op row names the upload until then).
        early::abort_upload(&store, &inner.journal, &op.key, id).await;
        let _ = inner.journal.set_multipart(op.seq, None).await;
    }
    result
}

/// Points `op` at a private copy of its file, made while nothing wrote the
/// file (tried three times), synced, and recorded in the journal before the
/// op uses it. The copy goes once uploaded (`remove_front`).
async fn snapshot(inner: &Arc<Inner>, op: Op) -> Result<Op, StoreError> {
    let Some(from) = op.file.clone() else {
        return Ok(op);
    };
    let store = inner.store.as_ref();
    let path = inner.cache.data_path(&from);
    for _ in 0..3 {
        let before = stamp::of_path(&path).map_err(|e| local_io(store, &path, e))?;
        let copy = inner
            .cache
            .copy_data_file(&from)
            .map_err(|e| local_io(store, &path, std::io::Error::other(e.to_string())))?;
        let copied = inner.cache.data_path(&copy);
        if stamp::of_path(&path).map_err(|e| local_io(store, &path, e))? != before {
            inner.cache.remove_data(&copy);
            continue;
        }
        let synced = std::fs::File::open(&copied)
            .map_err(|e| local_io(store, &copied, e))
            .and_then(|f| {
                inner
                    .cache
                    .sync_data(&copy, &f)
                    .map_err(|e| local_io(store, &copied, std::io::Error::other(e.to_string())))
            });
        if let Err(e) = synced {
            inner.cache.remove_data(&copy);
            return Err(e);
        }
        let up = Uploader {
            inner: inner.clone(),
        };
        if let Err(e) = up.repoint(&[op.seq], &from, &copy).await {
            inner.cache.remove_data(&copy);
            return Err(local_io(
                store,
                &copied,
                std::io::Error::other(e.to_string()),
            ));
        }
        tracing::info!(key = %op.key, "uploading a copy of a file still being written");
        inner.queue.lock().unwrap().changed.remove(&op.seq);
        return Ok(Op {
            file: Some(copy),
            size: before.size,
            ..op
        });
    }
    Err(changed_error(store, &path))
}

/// The error of an attempt that found its file written while reading it.
fn changed_error(store: &dyn ObjectStore, path: &std::path::Path) -> StoreError {
    StoreError::LocalIo {
        bucket: store.describe(),
        source: std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            format!("{}: written while it was uploaded", path.display()),
        ),
    }
}

fn is_changed(e: &StoreError) -> bool {
    matches!(e, StoreError::LocalIo { source, .. } if source.kind() == std::io::ErrorKind::Interrupted)
}

fn local_io(store: &dyn ObjectStore, path: &std::path::Path, e: std::io::Error) -> StoreError {
    StoreError::LocalIo {
        bucket: store.describe(),
        source: std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
    }
}

/// Fails (transiently: the retry uploads the file as it then is) when the
/// file at `path` was written since `before` was taken.
fn unchanged(
    store: &dyn ObjectStore,
    path: &std::path::Path,
    before: Stamp,
) -> Result<(), StoreError> {
    let now = stamp::of_path(path).map_err(|e| local_io(store, path, e))?;
    if now == before {
        return Ok(());
    }
    tracing::info!(file = %path.display(), "a cache file was written while it was uploaded; uploading a copy");
    Err(changed_error(store, path))
}

/// Uploads `[from, size)` of `path` as parts of `part` bytes (numbered from
/// the start of the file), several at once.
async fn upload_parts(
    inner: &Arc<Inner>,
    op: &Op,
    path: &std::path::Path,
    upload_id: &str,
    from: u64,
    size: u64,
    part: u64,
) -> Result<Vec<CompletedPart>, StoreError> {
    let store = inner.store.clone();
    let mut set = JoinSet::new();
    for offset in (from..size).step_by(part as usize) {
        let permit = inner
            .parts
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let store = store.clone();
        let key = op.key.clone();
        let id = upload_id.to_string();
        let path = path.to_path_buf();
        let len = part.min(size - offset);
        let number = (offset / part) as i32 + 1;
        set.spawn(async move {
            let mut attempt = 0;
            let result = loop {
                let body = PutBody::File {
                    path: path.clone(),
                    offset,
                    len,
                };
                match store.upload_part(&key, &id, number, body).await {
                    Ok(p) => break Ok::<CompletedPart, StoreError>(p),
                    Err(e) if !e.is_permanent() && attempt < 5 => {
                        attempt += 1;
                        tokio::time::sleep(backoff(attempt, false)).await;
                    }
                    Err(e) => break Err(e),
                }
            };
            drop(permit);
            result
        });
    }
    let mut parts = Vec::new();
    let mut failure = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(p)) => parts.push(p),
            Ok(Err(e)) => {
                failure.get_or_insert(e);
                set.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                failure.get_or_insert(StoreError::LocalIo {
                    bucket: store.describe(),
                    source: std::io::Error::other(e.to_string()),
                });
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    parts.sort_by_key(|p| p.number);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MIB;
    use crate::store::{FaultyStore, MemoryStore};
    use std::os::unix::fs::FileExt as _;

    struct Rig {
        _dir: tempfile::TempDir,
        mem: Arc<MemoryStore>,
        faulty: Arc<FaultyStore>,
        cache: Arc<Cache>,
        journal: Journal,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 256 * MIB, Duration::from_secs(5)).unwrap();
        let journal = Journal::open(&cache.journal_path()).unwrap();
        let mem = Arc::new(MemoryStore::new("src"));
        let faulty = Arc::new(FaultyStore::new(mem.clone()));
        Rig {
            _dir: dir,
            mem,
            faulty,
            cache,
            journal,
        }
    }

    fn start(r: &Rig, recovered: Vec<Op>) -> Uploader {
        let cfg = UploadConfig {
            multipart_threshold: crate::config::ByteSize(5 * MIB),
            ..Default::default()
        };
        start_with(r, cfg, QUIET, recovered)
    }

    fn start_with(r: &Rig, cfg: UploadConfig, quiet: Duration, recovered: Vec<Op>) -> Uploader {
        let (up, _) = Uploader::start(
            r.faulty.clone(),
            r.journal.clone(),
            r.cache.clone(),
            cfg,
            Duration::ZERO,
            recovered,
            None,
        );
        up.set_quiet(quiet);
        up
    }

    fn staged_file(r: &Rig, content: &[u8]) -> String {
        let name = r.cache.create_data_file().unwrap();
        std::fs::write(r.cache.data_path(&name), content).unwrap();
        name
    }

    fn put(key: &str, file: &str, size: u64) -> NewOp {
        NewOp {
            key: key.into(),
            kind: OpKind::Put,
            file: Some(file.into()),
            size,
            meta: ObjectMeta::new(crate::meta::S_IFREG | 0o644, 0, 0).to_json(),
            src_key: None,
            src_version: None,
            inline: None,
            base: None,
        }
    }

    fn start_deferring(r: &Rig, defer: Duration) -> Uploader {
        let cfg = UploadConfig {
            defer_while_writing: crate::config::HumanDuration(defer),
            ..Default::default()
        };
        // A burst ends after 2 s without a submission: a test thread paused
        // by a loaded machine does not end it.
        start_with(r, cfg, Duration::from_secs(2), vec![])
    }

    async fn landed(r: &Rig, key: &str) -> bool {
        r.mem.head(key, None).await.is_ok()
    }

    fn copy_of(key: &str, src: &str, version: Option<&str>) -> NewOp {
        NewOp {
            key: key.into(),
            kind: OpKind::Copy,
            file: None,
            size: 1,
            meta: ObjectMeta::new(crate::meta::S_IFREG | 0o600, 0, 0).to_json(),
            src_key: Some(src.into()),
            src_version: version.map(str::to_string),
            inline: None,
            base: None,
        }
    }

    fn delete_of(key: &str) -> NewOp {
        NewOp {
            key: key.into(),
            kind: OpKind::Delete,
            file: None,
            size: 0,
            meta: "{}".into(),
            src_key: None,
            src_version: None,
            inline: None,
            base: None,
        }
    }

    async fn put_bytes_into(mem: &MemoryStore, key: &str, body: &'static [u8]) {
        mem.put(
            key,
            PutBody::Bytes(Bytes::from_static(body)),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    }

    /// Uploads wait 300 ms after staging (unless waited for): a test
    /// queues what follows an operation before it runs.
    fn start_delayed(r: &Rig) -> Uploader {
        start_delayed_owned(r).0
    }

    /// [`start_delayed`] with the channel an owner of local state reads.
    fn start_delayed_owned(r: &Rig) -> (Uploader, mpsc::UnboundedReceiver<Landed>) {
        Uploader::start(
            r.faulty.clone(),
            r.journal.clone(),
            r.cache.clone(),
            UploadConfig::default(),
            Duration::from_millis(300),
            vec![],
            None,
        )
    }

    async fn drained(up: &Uploader) {
        let left = wait_for_zero(
            up.inner.pending.subscribe(),
            Duration::from_secs(10),
            |_| {},
        )
        .await;
        assert_eq!(left, 0, "the queue drained");
    }

    #[tokio::test]
    async fn a_copy_from_a_vanished_source_followed_by_a_delete_is_dropped_and_never_brings_the_name_back(
    ) {
        let r = rig();
        let up = start_delayed(&r);
        // `gone` never existed at this version; the name is deleted after.
        let copy = up.submit(copy_of("k", "gone", Some("v9"))).await.unwrap();
        up.submit(delete_of("k")).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(10), up.wait(copy)).await;
        assert_eq!(waited.unwrap(), Ok(()), "its waiter follows the delete");
        drained(&up).await;
        assert!(!landed(&r, "k").await);
        assert!(
            r.mem.history("k").iter().all(|(_, b)| b.is_none()),
            "nothing but a delete marker: {:?}",
            r.mem.history("k")
        );
        let summary = r.journal.upload_summary().await.unwrap();
        assert_eq!((summary.pending, summary.failed), (0, 0));
        // The source appearing later changes nothing.
        put_bytes_into(&r.mem, "gone", b"late").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!landed(&r, "k").await, "the deleted name stays deleted");
    }

    /// A put of `body` at `key` written over `base` (`None`: a new file).
    async fn put_over(r: &Rig, up: &Uploader, key: &str, body: &[u8], base: Option<&str>) {
        let file = staged_file(r, body);
        let op = NewOp {
            base: Some(crate::journal::Base {
                etag: base.unwrap_or_default().to_string(),
                version: None,
            }),
            ..put(key, &file, body.len() as u64)
        };
        let seq = up.submit(op).await.unwrap();
        assert_eq!(up.wait(seq).await, Ok(()));
    }

    async fn etag_of(r: &Rig, key: &str) -> String {
        r.mem.head(key, None).await.unwrap().etag
    }

    /// (key, replaced version) of every reported upload, sorted.
    async fn reported(r: &Rig) -> Vec<(String, String)> {
        let c = r.journal.conflicts(100).await.unwrap();
        let mut v: Vec<_> = c
            .recent
            .into_iter()
            .map(|c| (c.key, c.replaced_version))
            .collect();
        v.sort();
        v
    }

    /// Another writer's version, over which the host writes (seen or not),
    /// with or without conditional PUTs at the store.
    async fn writers_of_one_key(conditions: bool) {
        let r = rig();
        if !conditions {
            r.mem.refuse_conditions();
        }
        let up = start(&r, vec![]);
        put_bytes_into(&r.mem, "k", b"theirs 1").await;
        let seen = etag_of(&r, "k").await;
        put_over(&r, &up, "k", b"mine 1", Some(&seen)).await;
        // Still naming what it saw before its own upload: not reported.
        put_over(&r, &up, "k", b"mine 2", Some(&seen)).await;
        put_bytes_into(&r.mem, "k", b"theirs 2").await;
        let unread = r.mem.head("k", None).await.unwrap().version_id.unwrap();
        let mine = etag_of(&r, "k").await;
        assert_ne!(mine, seen);
        put_over(&r, &up, "k", b"mine 3", Some(&seen)).await;
        // A new file here, where another client made one meanwhile.
        put_bytes_into(&r.mem, "new", b"theirs").await;
        let theirs_new = r.mem.head("new", None).await.unwrap().version_id.unwrap();
        put_over(&r, &up, "new", b"mine", None).await;
        drained(&up).await;
        assert_eq!(
            reported(&r).await,
            [("k".to_string(), unread), ("new".to_string(), theirs_new)]
        );
        let bodies: Vec<_> = r
            .mem
            .history("k")
            .into_iter()
            .map(|(_, b)| b.unwrap())
            .collect();
        assert_eq!(
            bodies,
            ["theirs 1", "mine 1", "mine 2", "theirs 2", "mine 3"].map(Bytes::from),
            "the last close wins and every version stays"
        );
    }

    #[tokio::test]
    async fn an_upload_over_a_version_this_host_never_read_is_reported_and_over_its_own_not() {
        writers_of_one_key(true).await;
    }

    #[tokio::test]
    async fn a_store_without_conditional_puts_still_gets_every_upload_and_the_report() {
        writers_of_one_key(false).await;
    }

    #[tokio::test]
    async fn a_put_whose_staged_file_vanished_is_superseded_by_the_next_put_of_its_key() {
        let r = rig();
        let up = start_delayed(&r);
        let missing = staged_file(&r, b"first");
        std::fs::remove_file(r.cache.data_path(&missing)).unwrap();
        let second = staged_file(&r, b"second");
        let seq = up.submit(put("k", &missing, 5)).await.unwrap();
        up.submit(put("k", &second, 6)).await.unwrap();
        assert_eq!(up.wait(seq).await, Ok(()));
        drained(&up).await;
        let history = r.mem.history("k");
        assert_eq!(history.len(), 1, "one version: the second put's");
        assert_eq!(history[0].1.as_deref(), Some(&b"second"[..]));
        let summary = r.journal.upload_summary().await.unwrap();
        assert_eq!((summary.pending, summary.failed), (0, 0));
    }

    #[tokio::test]
    async fn metadata_set_before_a_put_starts_goes_with_it_as_one_version() {
        let r = rig();
        let up = start_delayed(&r);
        let f = staged_file(&r, b"body");
        let seq = up.submit(put("k", &f, 4)).await.unwrap();
        let mode = |m: u32| ObjectMeta::new(crate::meta::S_IFREG | m, 1000, 1000).to_json();
        assert_eq!(up.amend_meta("k", mode(0o600)).await.unwrap(), Some(seq));
        let m640 = mode(0o640);
        assert_eq!(up.amend_meta("k", m640.clone()).await.unwrap(), Some(seq));
        // What a restart would run carries it too.
        let row = r.journal.open_ops().await.unwrap();
        assert_eq!(row[0].meta, m640);
        up.wait(seq).await.unwrap();
        assert_eq!(r.mem.history("k").len(), 1, "one version");
        let head = r.mem.head("k", None).await.unwrap();
        assert_eq!(
            head.metadata["mode"],
            (crate::meta::S_IFREG | 0o640).to_string()
        );
        assert_eq!(head.metadata["uid"], "1000");
        // Nothing queued: the caller copies.
        assert_eq!(up.amend_meta("k", mode(0o600)).await.unwrap(), None);
        // A delete is not amended.
        let del = up.submit(delete_of("k")).await.unwrap();
        assert_eq!(up.amend_meta("k", mode(0o600)).await.unwrap(), None);
        up.wait(del).await.unwrap();
    }

    #[tokio::test]
    async fn a_gone_copy_with_nothing_after_it_is_lost_not_retried_and_listed_with_its_cause() {
        let r = rig();
        let (up, mut owner) = start_delayed_owned(&r);
        let copy = up.submit(copy_of("k", "gone", None)).await.unwrap();
        // A metadata change after it reads what it would have made.
        let chmod = up.submit(copy_of("k", "k", None)).await.unwrap();
        let waiting = tokio::spawn({
            let up = up.clone();
            async move { up.wait(chmod).await }
        });
        let told = tokio::time::timeout(Duration::from_secs(10), owner.recv())
            .await
            .unwrap()
            .unwrap();
        match &told.event {
            Event::Lost { op, error } => {
                assert_eq!(op.seq, copy);
                assert!(error.contains("gone"), "{error}");
            }
            Event::Uploaded(c) => panic!("uploaded {c:?}"),
        }
        drop(told);
        // No owner from here on: completions are not waited for.
        drop(owner);
        let told = waiting.await.unwrap();
        assert!(
            told.unwrap_err().contains("nothing queued since"),
            "its waiters are told"
        );
        drained(&up).await;
        let attempts = r.faulty.attempts.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            r.faulty.attempts.load(std::sync::atomic::Ordering::SeqCst),
            attempts,
            "never retried"
        );
        let summary = r.journal.upload_summary().await.unwrap();
        assert_eq!((summary.pending, summary.failed), (0, 2));
        let failed = r.journal.failed_ops().await.unwrap();
        assert_eq!(
            failed.iter().map(|o| o.seq).collect::<Vec<_>>(),
            vec![copy, chmod]
        );
        assert!(
            failed[0].error.as_deref().unwrap().contains("no such key"),
            "{failed:?}"
        );
        assert!(!landed(&r, "k").await);
        // A restart does not run them again.
        assert!(r.journal.open_ops().await.unwrap().is_empty());
        // A newer version of the name clears them.
        let file = staged_file(&r, b"new");
        let seq = up.submit(put("k", &file, 3)).await.unwrap();
        assert_eq!(up.wait(seq).await, Ok(()));
        assert!(r.journal.failed_ops().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_claimed_file_stays_referenced_after_its_uploads_finish_until_the_claim_drops() {
        let r = rig();
        let up = start(&r, vec![]);
        let f = staged_file(&r, b"body");
        let seq = up.submit(put("old", &f, 4)).await.unwrap();
        // Taken before the upload finishes, as a rename reading the node does.
        let claim = up.claim(&f);
        up.wait(seq).await.unwrap();
        assert!(landed(&r, "old").await);
        assert!(up.pending_for("old").is_empty());
        assert!(up.references(&f), "the claim keeps the file needed");
        let seq = up.submit(put("new", &f, 4)).await.unwrap();
        drop(claim);
        assert!(up.references(&f), "the queued put still needs it");
        up.wait(seq).await.unwrap();
        assert!(!up.references(&f), "nothing needs the file any more");
        let body = r.mem.get("new", Default::default()).await.unwrap();
        assert_eq!(&body.bytes().await.unwrap()[..], b"body");
    }

    /// Submits a small put every 50 ms for `n` rounds (a writer closing files).
    async fn burst(r: &Rig, up: &Uploader, tag: &str, n: usize) {
        for i in 0..n {
            let f = staged_file(r, b"x");
            up.submit(put(&format!("{tag}{i}"), &f, 1)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An uploader deferring up to `defer`, given "first" and then a burst of
    /// `n` more ("a0".."a{n-1}").
    async fn first_then_burst(r: &Rig, defer: Duration, n: usize) -> Uploader {
        let up = start_deferring(r, defer);
        let f = staged_file(r, b"first");
        up.submit(put("first", &f, 5)).await.unwrap();
        burst(r, &up, "a", n).await;
        up
    }

    #[tokio::test]
    async fn uploads_wait_for_a_pause_in_the_writes_and_go_at_once_when_waited_for() {
        let r = rig();
        let up = first_then_burst(&r, Duration::from_secs(30), 20).await;
        assert!(
            !landed(&r, "first").await,
            "nothing is uploaded while files keep being closed"
        );
        assert_eq!(up.pending_count(), 21);

        // fsync (durability "source") waits for its operation: it and every
        // operation staged before it go now, writes going on or not.
        let f = staged_file(&r, b"synced");
        let synced = up.submit(put("synced", &f, 6)).await.unwrap();
        let (waited, ()) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(10), up.wait(synced)),
            burst(&r, &up, "b", 10)
        );
        waited.expect("fsync's upload was not deferred").unwrap();
        assert!(landed(&r, "first").await && landed(&r, "a19").await);

        // Once the writes pause (2 s here), the rest follows unasked.
        let deadline = Instant::now() + Duration::from_secs(20);
        while up.pending_count() > 0 {
            assert!(
                Instant::now() < deadline,
                "uploads did not follow the pause"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(landed(&r, "b9").await);

        // Unmount drains at once, mid-burst: sooner than the 2 s pause.
        burst(&r, &up, "c", 5).await;
        let left = up.drain(Duration::from_millis(1500), |_| {}).await;
        assert_eq!(left, 0);
        assert!(landed(&r, "c4").await);
    }

    #[tokio::test]
    async fn a_deferred_upload_starts_at_its_limit_even_if_writes_never_pause() {
        let r = rig();
        let _up = first_then_burst(&r, Duration::from_millis(500), 30).await;
        assert!(
            landed(&r, "first").await,
            "uploaded 0.5 s after its close, mid-burst"
        );
        assert!(!landed(&r, "a29").await, "the last ones still wait");
    }

    #[tokio::test]
    async fn with_deferral_off_uploads_start_during_the_writes() {
        let r = rig();
        let _up = first_then_burst(&r, Duration::ZERO, 10).await;
        assert!(landed(&r, "first").await);
    }

    /// Held back by a deferral, then let go by a drain with one upload at a
    /// time: keys go oldest first, not in key order.
    #[tokio::test]
    async fn held_back_uploads_start_oldest_first_across_keys() {
        let r = rig();
        let cfg = UploadConfig {
            defer_while_writing: crate::config::HumanDuration(Duration::from_secs(30)),
            concurrency: 1,
            ..Default::default()
        };
        let up = start_with(&r, cfg, Duration::from_secs(30), vec![]);
        let keys = ["z", "a", "m", "b", "y"];
        for k in keys {
            let f = staged_file(&r, k.as_bytes());
            up.submit(put(k, &f, 1)).await.unwrap();
        }
        assert!(!landed(&r, "z").await, "held back");
        assert_eq!(up.drain(Duration::from_secs(10), |_| {}).await, 0);
        let mut landed_in: Vec<(String, &str)> = Vec::new();
        for k in keys {
            let v = r.mem.head(k, None).await.unwrap().version_id.unwrap();
            landed_in.push((v, k));
        }
        landed_in.sort();
        let order: Vec<&str> = landed_in.into_iter().map(|(_, k)| k).collect();
        assert_eq!(order, keys);
    }

    /// A burst of closes held back by the deferral: each submission wakes the
    /// scheduler, which looks at the oldest head only, not at every queued op
    /// (a pass per submission was quadratic in the burst).
    #[tokio::test]
    async fn a_burst_of_held_back_uploads_costs_the_scheduler_no_pass_per_submission() {
        let r = rig();
        let up = start_deferring(&r, Duration::from_secs(30));
        let n = 1000u64;
        // The scheduler runs its wakes while each submission awaits the
        // journal.
        for i in 0..n {
            let f = staged_file(&r, b"x");
            up.submit(put(&format!("k{i:04}"), &f, 1)).await.unwrap();
        }
        let examined = up.inner.queue.lock().unwrap().examined;
        assert!(
            examined <= 2 * n,
            "{examined} heads examined for {n} submissions"
        );
        assert_eq!(up.pending_count(), n as usize, "all still held back");
        assert_eq!(up.drain(Duration::from_secs(30), |_| {}).await, 0);
        assert!(landed(&r, "k0999").await);
    }

    #[tokio::test]
    async fn a_file_written_while_it_uploads_makes_no_version_and_a_copy_goes_up_instead() {
        let r = rig();
        if !crate::cache::stamp::fine_grained(r.cache.root()) {
            eprintln!("skipped: coarse change times here");
            return;
        }
        let up = start(&r, vec![]);
        for (key, len) in [("single", 70_000usize), ("parts", 6 * MIB as usize)] {
            let f = staged_file(&r, &vec![1u8; len]);
            let path = r.cache.data_path(&f);
            // A writer the file system cannot see changes the file as its
            // upload begins (after the upload took its stamp).
            r.faulty.before_next_write(move || {
                let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                file.write_all_at(&[2u8; 10], 0).unwrap();
            });
            let seq = up.submit(put(key, &f, len as u64)).await.unwrap();
            up.wait(seq).await.unwrap();
            let history = r.mem.history(key);
            assert_eq!(history.len(), 1, "{key}: no version of the changing file");
            let body = history[0].1.as_ref().unwrap();
            assert_eq!(
                &body[..10],
                &[2u8; 10],
                "{key}: the copy holds the later bytes"
            );
            assert!(body[10..].iter().all(|b| *b == 1), "{key}");
            assert!(!up.references(&f), "{key}: the op moved to the copy");
        }
        let ops = r.journal.open_ops().await.unwrap();
        assert!(ops.is_empty(), "both recorded: {ops:?}");
    }

    #[tokio::test]
    async fn a_repointed_put_uploads_the_copy_and_its_original_may_change() {
        let r = rig();
        let up = start(&r, vec![]);
        // The first attempt fails: the retry runs after the repoint.
        r.faulty.fail_next(1);
        let f = staged_file(&r, b"original");
        let seq = up.submit(put("k", &f, 8)).await.unwrap();
        assert_eq!(up.users(&f), vec![seq]);
        let copy = r.cache.copy_data_file(&f).unwrap();
        up.repoint(&[seq], &f, &copy).await.unwrap();
        assert!(up.references(&copy) && !up.references(&f));
        assert_eq!(
            r.journal.open_ops().await.unwrap()[0].file.as_deref(),
            Some(copy.as_str())
        );
        std::fs::write(r.cache.data_path(&f), b"rewritten in place").unwrap();
        up.wait(seq).await.unwrap();
        let body = r.mem.get("k", Default::default()).await.unwrap();
        assert_eq!(&body.bytes().await.unwrap()[..], b"original");
        assert!(!up.references(&copy));
        assert!(r.journal.open_ops().await.unwrap().is_empty());
    }

    /// A put running on a file when a writer repoints it to a copy (to
    /// write the file in place) lands as the op it ran as: the file it ran
    /// on belongs to the writer's next put, which must keep it.
    #[tokio::test]
    async fn a_put_repointed_while_it_ran_leaves_its_old_file_to_the_next_put() {
        let r = rig();
        let up = start_delayed(&r);
        let f = staged_file(&r, b"first");
        let first = up.submit(put("k", &f, 5)).await.unwrap();
        let ran = up.pending_for("k").remove(0);
        let copy = r.cache.copy_data_file(&f).unwrap();
        up.repoint(&[first], &f, &copy).await.unwrap();
        std::fs::write(r.cache.data_path(&f), b"second").unwrap();
        up.submit(put("k", &f, 6)).await.unwrap();
        assert_eq!(ran.file.as_deref(), Some(f.as_str()));
        assert!(up.references_besides(&f, &ran), "the second put's file");
        assert!(
            !up.references_besides(&copy, &ran),
            "the first's copy is its own"
        );
        drained(&up).await;
    }

    #[tokio::test]
    async fn versions_of_one_key_land_in_staging_order_despite_transient_failures() {
        let r = rig();
        let up = start(&r, vec![]);
        r.faulty.fail_next(3);
        let mut last = 0;
        for i in 0..10u8 {
            let f = staged_file(&r, &[i; 100]);
            last = up.submit(put("k", &f, 100)).await.unwrap();
        }
        up.wait(last).await.unwrap();
        let history: Vec<u8> = r
            .mem
            .history("k")
            .iter()
            .map(|(_, b)| b.as_ref().unwrap()[0])
            .collect();
        assert_eq!(history, (0..10).collect::<Vec<u8>>());
        assert_eq!(up.drain(Duration::from_secs(5), |_| {}).await, 0);
        assert!(r.journal.open_ops().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_permanent_failure_keeps_the_upload_visible_and_resumes_when_fixed() {
        let r = rig();
        let up = start(&r, vec![]);
        r.faulty.fail_permanently(true);
        let f = staged_file(&r, b"precious");
        let seq = up.submit(put("p", &f, 8)).await.unwrap();
        let e = up.wait(seq).await.unwrap_err();
        assert!(e.contains("AccessDenied") || e.contains("denied"), "{e}");
        let s = r.journal.upload_summary().await.unwrap();
        assert_eq!((s.pending, s.failed), (1, 1));
        assert!(r.mem.history("p").is_empty());
        r.faulty.fail_permanently(false);
        // The retry comes a minute later; in the test, nudge by restarting from the journal.
        drop(up);
        let up = start(&r, r.journal.open_ops().await.unwrap());
        assert_eq!(up.drain(Duration::from_secs(10), |_| {}).await, 0);
        assert_eq!(r.mem.history("p")[0].1.as_deref(), Some(&b"precious"[..]));
    }

    #[tokio::test]
    async fn recovered_operations_run_and_a_recorded_multipart_is_aborted_and_redone() {
        let r = rig();
        let big: Vec<u8> = (0..6 * MIB).map(|i| (i % 253) as u8).collect();
        let f = staged_file(&r, &big);
        let seq = r
            .journal
            .stage(put("big", &f, big.len() as u64))
            .await
            .unwrap();
        let stale = r
            .mem
            .create_multipart("big", &PutOptions::default())
            .await
            .unwrap();
        r.journal.set_multipart(seq, Some(stale)).await.unwrap();
        let up = start(&r, r.journal.open_ops().await.unwrap());
        assert_eq!(up.drain(Duration::from_secs(10), |_| {}).await, 0);
        let h = r.mem.history("big");
        assert_eq!(h.len(), 1);
        assert!(h[0].1.as_deref() == Some(&big[..]));
    }

    /// Writes `content` into cache file `name` in 1 MiB writes from `from`,
    /// telling `early` about each; a blind one learns only the file's size,
    /// as the size poll of a passthrough writer's file tells it.
    fn write_through(r: &Rig, early: &Arc<EarlyUpload>, name: &str, content: &[u8], from: usize) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(r.cache.data_path(name))
            .unwrap();
        for off in (from..content.len()).step_by(MIB as usize) {
            let end = (off + MIB as usize).min(content.len());
            f.write_all_at(&content[off..end], off as u64).unwrap();
            if early.is_blind() {
                early.grown(f.metadata().unwrap().len());
            } else {
                early.written(name, off as u64, end as u64);
            }
        }
    }

    async fn wait_parts(r: &Rig, key: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !r
            .mem
            .open_uploads()
            .iter()
            .any(|(k, p)| k == key && *p >= n)
        {
            assert!(
                Instant::now() < deadline,
                "{n} early parts of {key}: {:?}",
                r.mem.open_uploads()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn early_rig() -> (Rig, Uploader) {
        let r = rig();
        let cfg = UploadConfig {
            multipart_threshold: crate::config::ByteSize(5 * MIB),
            part_size: crate::config::ByteSize(5 * MIB),
            ..Default::default()
        };
        let up = start_with(&r, cfg, QUIET, vec![]);
        (r, up)
    }

    fn meta() -> ObjectMeta {
        ObjectMeta::new(crate::meta::S_IFREG | 0o644, 0, 0)
    }

    /// 18 MiB written in order to a new cache file for key "big", with its
    /// first two 5 MiB parts (each sent once the next is written) uploaded.
    async fn big_file_with_early_parts(
        r: &Rig,
        up: &Uploader,
    ) -> (Vec<u8>, String, Arc<EarlyUpload>) {
        let body: Vec<u8> = (0..18 * MIB).map(|i| (i % 251) as u8).collect();
        let name = r.cache.create_data_file().unwrap();
        let early = up.early("big", &name, &meta(), false).unwrap();
        write_through(r, &early, &name, &body, 0);
        wait_parts(r, "big", 2).await;
        (body, name, early)
    }

    /// Stages "big" with its early upload; returns its only version's bytes.
    async fn stage_big(
        r: &Rig,
        up: &Uploader,
        name: &str,
        len: usize,
        early: Arc<EarlyUpload>,
    ) -> bytes::Bytes {
        up.submit_with(put("big", name, len as u64), Some(early))
            .await
            .unwrap();
        assert_eq!(up.drain(Duration::from_secs(10), |_| {}).await, 0);
        let h = r.mem.history("big");
        assert_eq!(h.len(), 1);
        h[0].1.clone().unwrap()
    }

    /// "big"'s early parts were aborted and the file went up whole.
    async fn assert_uploaded_whole(r: &Rig) {
        assert!(
            r.mem.open_uploads().is_empty(),
            "the early parts were aborted"
        );
        let head = r.mem.head("big", None).await.unwrap();
        assert!(
            head.metadata.contains_key("mtime"),
            "uploaded whole, with its mtime"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_file_written_in_order_is_uploaded_in_parts_before_it_is_staged() {
        let (r, up) = early_rig();
        let (body, name, early) = big_file_with_early_parts(&r, &up).await;
        assert_eq!(r.journal.early_uploads().await.unwrap().len(), 1);
        let got = stage_big(&r, &up, &name, body.len(), early).await;
        assert!(got[..] == body[..], "the object is the staged file");
        assert!(r.mem.open_uploads().is_empty());
        assert!(r.journal.early_uploads().await.unwrap().is_empty());
        let head = r.mem.head("big", None).await.unwrap();
        assert_eq!(head.metadata.get("mode").map(String::as_str), Some("33188"));
        assert!(
            !head.metadata.contains_key("mtime"),
            "mtime is the LastModified"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn at_a_close_every_whole_part_written_goes_up_before_staging() {
        let (r, up) = early_rig();
        let (body, name, early) = big_file_with_early_parts(&r, &up).await;
        // While written, the part just behind the written end waits (the
        // kernel may still write it again); once the close stages, it goes.
        early.flushing();
        wait_parts(&r, "big", 3).await;
        let got = stage_big(&r, &up, &name, body.len(), early).await;
        assert!(got[..] == body[..], "the object is the staged file");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_write_below_the_uploaded_parts_makes_the_file_upload_whole() {
        let (r, up) = early_rig();
        let (mut body, name, early) = big_file_with_early_parts(&r, &up).await;
        // A header rewritten at the end, as many formats do.
        body[..MIB as usize].fill(7);
        write_through(&r, &early, &name, &body[..MIB as usize], 0);
        let got = stage_big(&r, &up, &name, body.len(), early).await;
        assert!(got[..] == body[..], "the rewritten header is uploaded");
        assert_uploaded_whole(&r).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_blind_upload_of_a_file_written_in_order_completes_from_its_early_parts() {
        let (r, up) = early_rig();
        let body: Vec<u8> = (0..18 * MIB).map(|i| (i % 251) as u8).collect();
        let name = r.cache.create_data_file().unwrap();
        let early = up.early("big", &name, &meta(), true).unwrap();
        write_through(&r, &early, &name, &body, 0);
        wait_parts(&r, "big", 2).await;
        early.flushing();
        let got = stage_big(&r, &up, &name, body.len(), early).await;
        assert!(got[..] == body[..], "the object is the staged file");
        let head = r.mem.head("big", None).await.unwrap();
        assert!(
            !head.metadata.contains_key("mtime"),
            "completed from the early parts (which carry no mtime)"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_blind_upload_whose_sent_bytes_changed_is_aborted_and_the_file_uploaded_whole() {
        let (r, up) = early_rig();
        let mut body: Vec<u8> = (0..18 * MIB).map(|i| (i % 251) as u8).collect();
        let name = r.cache.create_data_file().unwrap();
        let early = up.early("big", &name, &meta(), true).unwrap();
        write_through(&r, &early, &name, &body, 0);
        wait_parts(&r, "big", 2).await;
        // A header rewritten at the end: regionfs sees no write, the size
        // does not change, only the digests can tell.
        body[..MIB as usize].fill(7);
        write_through(&r, &early, &name, &body[..MIB as usize], 0);
        let got = stage_big(&r, &up, &name, body.len(), early).await;
        assert!(got[..] == body[..], "the rewritten header is uploaded");
        assert_uploaded_whole(&r).await;
    }

    #[tokio::test]
    async fn early_parts_are_off_when_configured_off_or_an_acl_is_set() {
        let (r, up) = early_rig();
        assert!(up.early("k", "f", &meta(), false).is_some());
        up.set_acl("src", Some("private".into()));
        assert!(
            up.early("k", "f", &meta(), false).is_none(),
            "the ACL is decided per upload"
        );
        let off = start_with(
            &r,
            UploadConfig {
                early_parts: false,
                ..Default::default()
            },
            QUIET,
            vec![],
        );
        assert!(off.early("k", "f", &meta(), false).is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_early_upload_never_staged_is_aborted_and_recovery_aborts_what_a_crash_left() {
        let (r, up) = early_rig();
        let body = vec![1u8; 12 * MIB as usize];
        let name = r.cache.create_data_file().unwrap();
        let early = up.early("gone", &name, &meta(), false).unwrap();
        write_through(&r, &early, &name, &body, 0);
        wait_parts(&r, "gone", 1).await;
        drop(early);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !r.mem.open_uploads().is_empty()
            || !r.journal.early_uploads().await.unwrap().is_empty()
        {
            assert!(Instant::now() < deadline, "the abandoned upload is aborted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(r.mem.history("gone").is_empty());

        // What kill -9 leaves: a journaled upload id nobody will finish.
        let id = r
            .mem
            .create_multipart("crashed", &PutOptions::default())
            .await
            .unwrap();
        r.journal.note_early("crashed".into(), id).await.unwrap();
        // The source refuses: the upload stays recorded for the next start.
        r.faulty.fail_permanently(true);
        up.abort_stale_early().await;
        assert_eq!(r.mem.open_uploads().len(), 1);
        assert_eq!(r.journal.early_uploads().await.unwrap().len(), 1);
        r.faulty.fail_permanently(false);
        up.abort_stale_early().await;
        assert!(r.mem.open_uploads().is_empty());
        assert!(r.journal.early_uploads().await.unwrap().is_empty());
    }

    /// An uploader from the rig's source that replicates everything to a
    /// memory bucket "eu".
    fn replicating(r: &Rig) -> (Uploader, crate::replicator::Replicator, Arc<MemoryStore>) {
        let dest = Arc::new(MemoryStore::new("dst"));
        let rep = crate::replicator::Replicator::start_with(
            &replicating_config(),
            r.faulty.clone(),
            HashMap::from([("eu".to_string(), dest.clone() as Arc<dyn ObjectStore>)]),
            r.journal.clone(),
            vec![],
        );
        (replicating_uploader(r, &rep), rep, dest)
    }

    /// [`replicating`] with a replicator that holds at most `held` open tasks
    /// in memory and reads the rest from the rig's journal.
    async fn replicating_held(
        r: &Rig,
        dest: Arc<dyn ObjectStore>,
        held: usize,
    ) -> (Uploader, crate::replicator::Replicator) {
        let rep = crate::replicator::Replicator::start_from_journal(
            &replicating_config(),
            r.faulty.clone(),
            HashMap::from([("eu".to_string(), dest)]),
            r.journal.clone(),
            held,
        )
        .await
        .unwrap();
        (replicating_uploader(r, &rep), rep)
    }

    fn replicating_uploader(r: &Rig, rep: &crate::replicator::Replicator) -> Uploader {
        let cfg = UploadConfig {
            multipart_threshold: crate::config::ByteSize(5 * MIB),
            ..Default::default()
        };
        Uploader::start(
            r.faulty.clone(),
            r.journal.clone(),
            r.cache.clone(),
            cfg,
            Duration::ZERO,
            vec![],
            Some(rep.clone()),
        )
        .0
    }

    fn replicating_config() -> crate::config::Config {
        crate::config::two_region_test_config("[[rule]]\nid = \"all\"\ndestination = \"eu\"\n")
    }

    /// Holds every small replica back (the uploads look backed up) until the
    /// returned flag is cleared.
    fn hold_replicas(rep: &crate::replicator::Replicator) -> Arc<std::sync::atomic::AtomicBool> {
        let hold = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let h = hold.clone();
        rep.give_way_to(
            Arc::new(move || crate::replicator::SourceLoad {
                queued: if h.load(std::sync::atomic::Ordering::SeqCst) {
                    1000
                } else {
                    0
                },
                submitting: false,
            }),
            Duration::from_secs(60),
        );
        hold
    }

    /// Waits until every task is done, checking all along that at most
    /// `held` are in memory.
    async fn drained_holding_at_most(
        rep: &crate::replicator::Replicator,
        held: usize,
        within: Duration,
    ) {
        let deadline = Instant::now() + within;
        while rep.pending_count() > 0 {
            assert!(rep.held_count() <= held, "held {}", rep.held_count());
            assert!(Instant::now() < deadline, "replicated within {within:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn a_backlog_longer_than_memory_holds_replicates_every_version_in_order() {
        let r = rig();
        let dest = Arc::new(MemoryStore::new("dst"));
        let (up, rep) = replicating_held(&r, dest.clone(), 4).await;
        let hold = hold_replicas(&rep);
        // 10 keys, 4 versions each, round robin: 40 tasks, 4 held in memory.
        let body = |k: usize, v: usize| format!("key {k} version {v}").into_bytes();
        for v in 0..4 {
            for k in 0..10 {
                uploaded(&r, &up, &format!("k{k}"), &body(k, v)).await;
            }
        }
        assert_eq!(rep.held_count(), 4, "the rest wait in the journal");
        assert_eq!(rep.pending_count(), 40, "all of them count as pending");
        // Memory never holds more than the share while the backlog drains.
        hold.store(false, std::sync::atomic::Ordering::SeqCst);
        drained_holding_at_most(&rep, 4, Duration::from_secs(30)).await;
        for k in 0..10 {
            let bodies: Vec<Vec<u8>> = dest
                .history(&format!("k{k}"))
                .into_iter()
                .map(|(_, b)| b.unwrap().to_vec())
                .collect();
            assert_eq!(
                bodies,
                (0..4).map(|v| body(k, v)).collect::<Vec<_>>(),
                "k{k}: every version once, in source order"
            );
        }
        assert!(r.journal.open_tasks().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn failed_tasks_do_not_hold_back_the_rest_of_a_long_backlog() {
        let r = rig();
        let mem = Arc::new(MemoryStore::new("dst"));
        let dest = Arc::new(FaultyStore::new(mem.clone()));
        dest.refuse_prefix(Some("refused/"));
        let (up, rep) = replicating_held(&r, dest.clone(), 4).await;
        // More refused files than the share, then files it takes.
        for i in 0..10 {
            uploaded(&r, &up, &format!("refused/f{i}"), b"refused").await;
        }
        for i in 0..10 {
            uploaded(&r, &up, &format!("ok/f{i}"), b"taken").await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while (0..10).any(|i| mem.history(&format!("ok/f{i}")).is_empty()) {
            assert!(
                Instant::now() < deadline,
                "the others replicated past the refused ones"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(rep.pending_count(), 10, "the refused ones stay pending");
        let failed = r.journal.open_tasks().await.unwrap();
        assert_eq!(failed.len(), 10);
        assert!(failed.iter().all(
            |t| t.key.starts_with("refused/") && t.status == crate::journal::TaskStatus::Failed
        ));
        // Fixed: they complete at the next retry.
        dest.refuse_prefix(None);
        rep.retry_failed();
        let deadline = Instant::now() + Duration::from_secs(20);
        while rep.pending_count() > 0 {
            assert!(
                Instant::now() < deadline,
                "the refused ones replicated once fixed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!((0..10).all(|i| mem.history(&format!("refused/f{i}")).len() == 1));
    }

    #[tokio::test]
    async fn a_restart_reads_a_long_backlog_from_the_journal_a_share_at_a_time() {
        let r = rig();
        // A first process uploads 30 versions and dies before replicating any.
        {
            let dest = Arc::new(MemoryStore::new("dst"));
            let (up, rep) = replicating_held(&r, dest, 1000).await;
            let _hold = hold_replicas(&rep);
            for i in 0..30 {
                uploaded(&r, &up, &format!("f{i}"), format!("file {i}").as_bytes()).await;
            }
            assert_eq!(r.journal.open_tasks().await.unwrap().len(), 30);
        }
        // The next one holds 8 of them at a time and replicates them all.
        let dest = Arc::new(MemoryStore::new("dst2"));
        let (_up, rep) = replicating_held(&r, dest.clone(), 8).await;
        assert_eq!(rep.held_count(), 8);
        assert_eq!(rep.pending_count(), 30);
        drained_holding_at_most(&rep, 8, Duration::from_secs(30)).await;
        for i in 0..30 {
            assert_eq!(
                dest.history(&format!("f{i}"))[0].1.as_deref(),
                Some(format!("file {i}").as_bytes()),
                "f{i}"
            );
        }
        assert!(r.journal.open_tasks().await.unwrap().is_empty());
    }

    /// Submits `body` as `key` and waits until it is in the source.
    async fn uploaded(r: &Rig, up: &Uploader, key: &str, body: &[u8]) {
        let f = staged_file(r, body);
        up.submit(put(key, &f, body.len() as u64)).await.unwrap();
        all_uploaded(up, Duration::from_secs(10)).await;
    }

    async fn all_uploaded(up: &Uploader, within: Duration) {
        let deadline = Instant::now() + within;
        while up.pending_count() > 0 {
            assert!(Instant::now() < deadline, "uploaded within {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn replicated(rep: &crate::replicator::Replicator, within: Duration) {
        let deadline = Instant::now() + within;
        while rep.pending_count() > 0 {
            assert!(Instant::now() < deadline, "replicated within {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_large_replica_waits_while_the_source_takes_new_writes_then_copies_every_part() {
        let r = rig();
        let (up, rep, dest) = replicating(&r);
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = busy.clone();
        rep.give_way_to(
            Arc::new(move || crate::replicator::SourceLoad {
                queued: 0,
                submitting: flag.load(std::sync::atomic::Ordering::SeqCst),
            }),
            Duration::from_secs(60),
        );
        // Three parts of 8, 8 and 4 MiB, all in flight at once.
        let body: Vec<u8> = (0..20 * MIB as usize).map(|i| (i % 251) as u8).collect();
        uploaded(&r, &up, "big", &body).await;
        // While the source is busy no part is copied (watched for 300 ms).
        let watch_until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < watch_until {
            assert_eq!(rep.pending_count(), 1, "the replica waits");
            assert!(
                dest.open_uploads().iter().all(|(_, parts)| *parts == 0),
                "no part copied while the source is busy: {:?}",
                dest.open_uploads()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        busy.store(false, std::sync::atomic::Ordering::SeqCst);
        replicated(&rep, Duration::from_secs(10)).await;
        let history = dest.history("big");
        assert_eq!(history.len(), 1, "one replica version");
        assert!(
            history[0].1.as_deref() == Some(&body[..]),
            "the replica has the source's bytes, parts in order"
        );
        assert!(dest.open_uploads().is_empty(), "no upload left open");
    }

    #[tokio::test]
    async fn a_small_replica_waits_only_while_the_uploads_are_backed_up() {
        let r = rig();
        let (up, rep, dest) = replicating(&r);
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(1));
        let q = queued.clone();
        rep.give_way_to(
            Arc::new(move || crate::replicator::SourceLoad {
                queued: q.load(std::sync::atomic::Ordering::SeqCst),
                submitting: true,
            }),
            Duration::from_secs(60),
        );
        // A source that keeps up (one upload queued): replicated at once, not
        // after the 60 s bound.
        uploaded(&r, &up, "steady", b"one of a steady stream").await;
        replicated(&rep, Duration::from_secs(10)).await;
        assert_eq!(dest.history("steady").len(), 1);
        // Backed up (more than twice the uploader's 16 at a time): it waits.
        queued.store(33, std::sync::atomic::Ordering::SeqCst);
        uploaded(&r, &up, "burst", b"one of a burst").await;
        let watch_until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < watch_until {
            assert_eq!(rep.pending_count(), 1, "the replica waits");
            assert!(dest.history("burst").is_empty());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        queued.store(32, std::sync::atomic::Ordering::SeqCst);
        replicated(&rep, Duration::from_secs(10)).await;
        assert_eq!(
            dest.history("burst")[0].1.as_deref(),
            Some(&b"one of a burst"[..])
        );
    }

    #[tokio::test]
    async fn a_source_that_is_never_idle_slows_a_large_replica_but_does_not_stop_it() {
        let r = rig();
        let (up, rep, dest) = replicating(&r);
        let at_most = Duration::from_millis(300);
        rep.give_way_to(
            Arc::new(|| crate::replicator::SourceLoad {
                queued: 1,
                submitting: true,
            }),
            at_most,
        );
        let body = vec![9u8; 20 * MIB as usize]; // over the 16 MiB multipart threshold
                                                 // Its replica starts the moment the version is in the source.
        let t = Instant::now();
        uploaded(&r, &up, "big", &body).await;
        replicated(&rep, Duration::from_secs(10)).await;
        assert!(t.elapsed() >= at_most, "each part waited its bound first");
        assert!(dest.history("big")[0].1.as_deref() == Some(&body[..]));
    }

    #[tokio::test]
    async fn the_source_counts_as_busy_while_an_upload_is_queued_and_just_after_a_submit() {
        let r = rig();
        let cfg = UploadConfig {
            multipart_threshold: crate::config::ByteSize(5 * MIB),
            ..Default::default()
        };
        let quiet = Duration::from_millis(100);
        let up = start_with(&r, cfg, quiet, vec![]);
        let load = up.busy_signal();
        let busy = || {
            let l = load();
            l.queued > 0 || l.submitting
        };
        assert!(!busy(), "idle before any write");
        // An upload retrying after two refusals (backoffs of at least 125 and
        // 250 ms) keeps the source busy past the pause.
        r.faulty.fail_next(2);
        let f = staged_file(&r, b"refused for now");
        up.submit(put("k", &f, 15)).await.unwrap();
        assert!(busy(), "busy right after a submit");
        let t = Instant::now();
        while t.elapsed() < quiet * 3 {
            assert!(busy(), "busy while the upload is queued");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while busy() {
            assert!(Instant::now() < deadline, "idle once uploaded and quiet");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(up.pending_count(), 0);
        assert!(
            r.mem.head("k", None).await.is_ok(),
            "the write is in the source"
        );
    }

    #[tokio::test]
    async fn a_small_file_is_replicated_from_its_uploaded_bytes_without_reading_the_source() {
        let r = rig();
        let (up, rep, dest) = replicating(&r);
        let mut meta = ObjectMeta::new(crate::meta::S_IFREG | 0o640, 7, 8);
        meta.xattrs.insert("user.tag.team".into(), b"blue".to_vec());
        meta.xattrs.insert("user.note".into(), b"kept".to_vec());
        let submit = |key: &'static str, body: Vec<u8>| {
            let f = staged_file(&r, &body);
            let mut op = put(key, &f, body.len() as u64);
            op.meta = meta.to_json();
            up.submit(op)
        };
        let small = b"four KiB at most".repeat(256);
        let larger = vec![7u8; 100 * 1024];
        submit("small", small.clone()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while up.pending_count() > 0 || rep.pending_count() > 0 {
            assert!(Instant::now() < deadline, "replicated in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            r.faulty.reads.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no HEAD, tagging request or GET at the source"
        );
        // Over the size kept in memory: the replica is read from the source.
        submit("larger", larger.clone()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while up.pending_count() > 0 || rep.pending_count() > 0 {
            assert!(Instant::now() < deadline, "replicated in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(r.faulty.reads.load(std::sync::atomic::Ordering::SeqCst) >= 2);

        for (key, body) in [("small", small), ("larger", larger)] {
            let src = r.mem.head(key, None).await.unwrap();
            let got = dest.head(key, None).await.unwrap();
            let mut want = src.metadata.clone();
            want.insert(
                crate::store::SOURCE_VERSION_META.into(),
                src.version_id.clone().unwrap(),
            );
            assert_eq!(got.metadata, want, "{key}: the source's metadata");
            assert_eq!(got.content_type, src.content_type, "{key}");
            assert_eq!(
                dest.get_tags(key, None).await.unwrap(),
                BTreeMap::from([("team".to_string(), "blue".to_string())]),
                "{key}: the source's tags"
            );
            let history = dest.history(key);
            assert_eq!(history.len(), 1, "{key}: one replica version");
            assert_eq!(history[0].1.as_deref(), Some(&body[..]), "{key}: its bytes");
        }
    }

    #[tokio::test]
    async fn small_replicas_beyond_the_memory_budget_are_written_from_their_clean_copies() {
        let r = rig();
        let (up, rep, dest) = replicating(&r);
        rep.read_fresh_from(r.cache.clone());
        let hold = hold_replicas(&rep);
        let size = 60 * 1024;
        let n = crate::replicator::FRESH_BUDGET / size + 4;
        let mut files = Vec::new();
        for i in 0..n {
            let key = format!("burst/{i:03}");
            let body = vec![i as u8; size];
            let f = staged_file(&r, &body);
            up.submit(put(&key, &f, size as u64)).await.unwrap();
            files.push((key, f, body));
        }
        all_uploaded(&up, Duration::from_secs(20)).await;
        assert_eq!(rep.pending_count(), n, "the replicas wait");
        // What the mount does once a file is uploaded: its staged file becomes
        // the clean copy of that version. But the last one's copy was evicted,
        // the one before now holds another version (written since), and the
        // one before that was opened for writing (its copy is a working file).
        let (evicted, rewritten, reopened) = (&files[n - 1].0, &files[n - 2].0, &files[n - 3].0);
        for (key, f, _) in &files {
            let etag = r.mem.head(key, None).await.unwrap().etag;
            if key == rewritten {
                let newer = staged_file(&r, &vec![0xee; size]);
                r.cache
                    .make_clean(&newer, key, "\"etag-of-a-newer-version\"");
            } else if key != evicted {
                r.cache.make_clean(f, key, &etag);
            }
            if key == reopened {
                let working = r.cache.adopt_clean(key, &etag).unwrap().unwrap();
                std::fs::write(r.cache.data_path(&working), vec![0xdd; size]).unwrap();
            }
        }
        hold.store(false, std::sync::atomic::Ordering::SeqCst);
        replicated(&rep, Duration::from_secs(20)).await;
        for (key, _, body) in &files {
            let history = dest.history(key);
            assert_eq!(history.len(), 1, "{key}: one replica version");
            assert_eq!(history[0].1.as_deref(), Some(&body[..]), "{key}: its bytes");
        }
        let mut got = r.faulty.got.lock().unwrap().clone();
        got.sort();
        assert_eq!(
            got,
            [reopened.clone(), rewritten.clone(), evicted.clone()],
            "only the replicas without a clean copy of their version read the source"
        );
    }
}
