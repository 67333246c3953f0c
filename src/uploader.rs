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
mod tests;
