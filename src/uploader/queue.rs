//! The upload queue's state: every queued operation by key (run one at a
//! time, in `seq` order), with the indexes that spare the scheduler and the
//! writers a scan of it (ops by seq, readers of each cache file, heads by seq,
//! backoffs by time), and who waits for what. It holds no I/O: the
//! [`super::worker`] changes it under the uploader's lock.

use super::*;

pub(super) struct Queue {
    pub(super) by_key: BTreeMap<String, VecDeque<Op>>,
    /// Operations in `by_key`, and how many of them (and of the live
    /// [`FileClaim`]s) use each cache file (kept alongside so neither needs a
    /// scan of the queue).
    pub(super) count: usize,
    pub(super) files: HashMap<String, usize>,
    /// The key of every queued op, and the queued ops reading each cache
    /// file, by seq: a wait, and a writer about to change a file in place,
    /// find theirs without a scan of the queue (which holds every file a
    /// large copy-in has written until the store catches up).
    pub(super) keys: HashMap<i64, String>,
    pub(super) readers: HashMap<String, BTreeSet<i64>>,
    pub(super) running: HashSet<String>,
    /// Heads: the front op's seq of every key neither running nor backing
    /// off (see "Scheduling"). An entry whose op is no longer its key's
    /// idle front is stale and dropped when met.
    pub(super) heads: BTreeMap<i64, String>,
    /// Front ops waiting out a retry backoff, by when they may run again.
    pub(super) backoff: BTreeMap<(Instant, i64), String>,
    /// Heads the scheduler looked at, over its life (tests).
    #[cfg(test)]
    pub(super) examined: u64,
    pub(super) waiters: HashMap<i64, Vec<oneshot::Sender<WaitResult>>>,
    /// Next queue position of a submitted op whose seq is not known yet.
    pub(super) next_ticket: u64,
    /// Operations up to this seq are not deferred (someone waits for them).
    pub(super) urgent_upto: i64,
    /// Draining (unmount): nothing is deferred.
    pub(super) draining: bool,
    /// When the last operation was submitted.
    pub(super) last_submit: Option<Instant>,
    /// Submissions closer together than this are one burst ([`QUIET`]).
    pub(super) quiet: Duration,
    pub(super) tickets: HashMap<String, VecDeque<u64>>,
    /// Parts uploaded before the op's file was staged, by op seq.
    pub(super) early: HashMap<i64, Arc<EarlyUpload>>,
    /// Ops whose last attempt found their file written while it was read:
    /// the next one uploads a copy (see "Files written after staging").
    pub(super) changed: HashSet<i64>,
}

impl Queue {
    pub(super) fn release(files: &mut HashMap<String, usize>, f: &str) {
        if let Some(n) = files.get_mut(f) {
            *n -= 1;
            if *n == 0 {
                files.remove(f);
            }
        }
    }

    pub(super) fn unread(readers: &mut HashMap<String, BTreeSet<i64>>, f: &str, seq: i64) {
        if let Some(s) = readers.get_mut(f) {
            s.remove(&seq);
            if s.is_empty() {
                readers.remove(f);
            }
        }
    }

    /// `op` left the queue: out of the indexes.
    pub(super) fn unindex(&mut self, op: &Op) {
        self.keys.remove(&op.seq);
        if let Some(f) = &op.file {
            Self::release(&mut self.files, f);
            Self::unread(&mut self.readers, f, op.seq);
        }
    }

    /// Queues `op` behind the operations of its key with smaller seqs.
    pub(super) fn insert(&mut self, op: Op) {
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
    pub(super) fn idle(&mut self, key: &str, retry: Option<Instant>) {
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
    pub(super) fn is_idle_front(&self, key: &str, seq: i64) -> bool {
        !self.running.contains(key)
            && self.by_key.get(key).and_then(|l| l.front()).map(|o| o.seq) == Some(seq)
    }

    /// Removes operations `seqs` of `key` (dropped: see `replan`). They
    /// name no cache file but the gone one's, which is not there.
    pub(super) fn remove_ops(&mut self, key: &str, seqs: &[i64]) {
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
    pub(super) fn remove_front(
        &mut self,
        key: &str,
        seq: i64,
        ran_on: Option<&str>,
    ) -> Option<String> {
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
