//! The upload queue's state: every queued operation by key (run one at a
//! time, in `seq` order), with the indexes that spare the scheduler and the
//! writers a scan of it (ops by seq, readers of each cache file, heads by seq,
//! backoffs by time), and who waits for what. It holds no I/O: the
//! [`super::worker`] changes it under the uploader's lock.

use super::*;

/// A key as the queue's maps hold it: one allocation shared by all of them.
pub(super) type Key = Arc<str>;

pub(super) struct Queue {
    /// One deque per key, made with room for one op (most keys have one):
    /// a default deque reserves four, which made a queued op cost about
    /// 1.7 KiB instead of under 0.9 (`a_queued_op_costs_under_a_kilobyte`).
    pub(super) by_key: BTreeMap<Key, VecDeque<Op>>,
    /// Operations in `by_key`, and how each cache file is used (kept
    /// alongside so neither needs a scan of the queue).
    pub(super) count: usize,
    pub(super) files: HashMap<String, FileUse>,
    /// The key of every queued op, by seq: a wait, and a writer about to
    /// change a file in place, find theirs without a scan of the queue
    /// (which holds every file a large copy-in has written until the store
    /// catches up).
    pub(super) keys: HashMap<i64, Key>,
    pub(super) running: HashSet<Key>,
    /// Heads: the front op's seq of every key neither running nor backing
    /// off (see "Scheduling"). An entry whose op is no longer its key's
    /// idle front is stale and dropped when met.
    pub(super) heads: BTreeMap<i64, Key>,
    /// Front ops waiting out a retry backoff, by when they may run again.
    pub(super) backoff: BTreeMap<(Instant, i64), Key>,
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
    /// At most this many ops in memory before new ones spill (see "Spill").
    pub(super) held: usize,
    /// The ops past the window, while there are any.
    pub(super) spill: Option<Spill>,
    /// The largest seq ever queued in memory.
    pub(super) high_seq: i64,
    /// Ops whose submit is to be ignored when it arrives: a refill loaded
    /// them already, or they were dropped from the spill before it did.
    pub(super) preloaded: HashSet<i64>,
    /// A refill is reading the journal, or (`Some(t)`) none before `t`.
    pub(super) refilling: bool,
    pub(super) refill_after: Option<Instant>,
}

/// Open ops in the journal only: every op with a seq above `upto` (and
/// none at or below it, which are in memory or done).
#[derive(Debug)]
pub(super) struct Spill {
    pub(super) upto: i64,
    /// The spilled ops whose submit arrived (or that a start found), as
    /// ranges first..=last, and how many: what `pending` counts and a
    /// refill takes off as it loads them.
    ranges: BTreeMap<i64, i64>,
    count: usize,
}

impl Spill {
    pub(super) fn new(upto: i64) -> Spill {
        Spill {
            upto,
            ranges: BTreeMap::new(),
            count: 0,
        }
    }

    pub(super) fn count(&self) -> usize {
        self.count
    }

    /// The largest seq counted.
    #[cfg(test)]
    pub(super) fn last(&self) -> Option<i64> {
        self.ranges.last_key_value().map(|(_, last)| *last)
    }

    /// Counts `seq` (submits arrive about in seq order: one range grows).
    pub(super) fn add(&mut self, seq: i64) {
        if self.contains(seq) {
            return;
        }
        self.count += 1;
        let below = self.ranges.range(..seq).next_back().map(|(f, l)| (*f, *l));
        let above = self.ranges.get(&(seq + 1)).copied();
        match (below, above) {
            (Some((f, l)), Some(al)) if l + 1 == seq => {
                self.ranges.remove(&(seq + 1));
                self.ranges.insert(f, al);
            }
            (Some((f, l)), _) if l + 1 == seq => {
                self.ranges.insert(f, seq);
            }
            (_, Some(al)) => {
                self.ranges.remove(&(seq + 1));
                self.ranges.insert(seq, al);
            }
            _ => {
                self.ranges.insert(seq, seq);
            }
        }
    }

    pub(super) fn contains(&self, seq: i64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, l)| seq <= *l)
    }

    /// Uncounts `seq`; whether it was counted.
    pub(super) fn remove(&mut self, seq: i64) -> bool {
        let Some((f, l)) = self
            .ranges
            .range(..=seq)
            .next_back()
            .map(|(f, l)| (*f, *l))
            .filter(|(_, l)| seq <= *l)
        else {
            return false;
        };
        self.count -= 1;
        self.ranges.remove(&f);
        if f < seq {
            self.ranges.insert(f, seq - 1);
        }
        if seq < l {
            self.ranges.insert(seq + 1, l);
        }
        true
    }
}

/// How a cache file is used: by queued operations and live claims
/// (`uses`), and which of those operations read it (`readers`, by seq).
#[derive(Default)]
pub(super) struct FileUse {
    uses: usize,
    readers: Vec<i64>,
}

impl Queue {
    /// An empty queue; `quiet` ends a burst of submissions.
    pub(super) fn new(quiet: Duration) -> Queue {
        Queue {
            by_key: BTreeMap::new(),
            count: 0,
            files: HashMap::new(),
            keys: HashMap::new(),
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
            quiet,
            early: HashMap::new(),
            changed: HashSet::new(),
            held: usize::MAX,
            spill: None,
            high_seq: 0,
            preloaded: HashSet::new(),
            refilling: false,
            refill_after: None,
        }
    }

    /// Operations to run: in memory and spilled.
    pub(super) fn pending(&self) -> usize {
        self.count + self.spill.as_ref().map_or(0, Spill::count)
    }

    /// Where the spill begins (ops after this seq are in the journal only).
    pub(super) fn spilled_after(&self) -> Option<i64> {
        self.spill.as_ref().map(|s| s.upto)
    }

    /// Takes the op a submit staged: queued in memory, or only counted as
    /// spilled when the window is full (or a spill is on and it is past
    /// it). An op a refill loaded already is left as it is.
    pub(super) fn arrive(&mut self, op: Op) {
        if self.preloaded.remove(&op.seq) {
            return;
        }
        match &mut self.spill {
            Some(s) if op.seq > s.upto => return s.add(op.seq),
            // Only past everything in memory, so that the spill holds
            // every op after its start.
            None if self.count >= self.held && op.seq > self.high_seq => {
                let mut s = Spill::new(op.seq - 1);
                s.add(op.seq);
                self.spill = Some(s);
                return;
            }
            _ => {}
        }
        self.insert(op);
    }

    /// The next refill to start, if one is due: read at most `limit` open
    /// ops after `after`. Due when a spill is on and memory has drained to
    /// half the window.
    pub(super) fn refill_due(&self, now: Instant) -> Option<(i64, usize)> {
        let s = self.spill.as_ref()?;
        if self.refilling
            || self.count > self.held / 2
            || self.refill_after.is_some_and(|t| now < t)
        {
            return None;
        }
        Some((s.upto, self.held.saturating_sub(self.count).max(1)))
    }

    /// What a refill read: `ops`, the oldest open ones after the spill's
    /// start, `limit` at most. They are queued in memory and the spill
    /// starts after the last; it ends once the journal had no more and
    /// every spilled submit that arrived was among them.
    pub(super) fn refilled(&mut self, ops: Vec<Op>, limit: usize, now: Instant) {
        self.refilling = false;
        let complete = ops.len() < limit;
        self.refill_after = ops.is_empty().then(|| now + Duration::from_secs(1));
        let Some(mut s) = self.spill.take() else {
            return;
        };
        for op in ops {
            if op.seq <= s.upto {
                continue;
            }
            s.upto = op.seq;
            if !s.remove(op.seq) {
                // Staged, its submit not arrived yet.
                self.preloaded.insert(op.seq);
            }
            if !self.keys.contains_key(&op.seq) {
                self.insert(op);
            }
        }
        if !(complete && s.count == 0) {
            self.spill = Some(s);
        }
    }

    /// One more use of cache file `f`: by operation `reader`, or a claim.
    pub(super) fn use_file(&mut self, f: &str, reader: Option<i64>) {
        let u = match self.files.get_mut(f) {
            Some(u) => u,
            None => self.files.entry(f.to_string()).or_default(),
        };
        u.uses += 1;
        if let Some(seq) = reader {
            if u.readers.is_empty() {
                u.readers.reserve_exact(1);
            }
            if let Err(at) = u.readers.binary_search(&seq) {
                u.readers.insert(at, seq);
            }
        }
    }

    /// Ends a use taken by [`Queue::use_file`] with the same arguments.
    pub(super) fn release_file(&mut self, f: &str, reader: Option<i64>) {
        let Some(u) = self.files.get_mut(f) else {
            return;
        };
        u.uses = u.uses.saturating_sub(1);
        if let Some(seq) = reader {
            if let Ok(at) = u.readers.binary_search(&seq) {
                u.readers.remove(at);
            }
        }
        if u.uses == 0 {
            self.files.remove(f);
        }
    }

    /// Whether a queued operation reads cache file `f`.
    pub(super) fn is_read(&self, f: &str) -> bool {
        self.files.get(f).is_some_and(|u| !u.readers.is_empty())
    }

    /// The queued operations reading cache file `f`, by seq.
    pub(super) fn readers(&self, f: &str) -> Vec<i64> {
        self.files
            .get(f)
            .map(|u| u.readers.clone())
            .unwrap_or_default()
    }

    /// How many operations and claims use cache file `f`.
    pub(super) fn uses(&self, f: &str) -> usize {
        self.files.get(f).map_or(0, |u| u.uses)
    }

    /// The queue's handle of `key`, when it holds an op of it.
    pub(super) fn key(&self, key: &str) -> Option<Key> {
        self.by_key.get_key_value(key).map(|(k, _)| k.clone())
    }

    /// `op` left the queue: out of the indexes.
    pub(super) fn unindex(&mut self, op: &Op) {
        self.keys.remove(&op.seq);
        if let Some(f) = &op.file {
            self.release_file(f, Some(op.seq));
        }
    }

    /// Queues `op` behind the operations of its key with smaller seqs.
    pub(super) fn insert(&mut self, op: Op) {
        if let Some(f) = &op.file {
            self.use_file(f, Some(op.seq));
        }
        let key = self
            .key(&op.key)
            .unwrap_or_else(|| Key::from(op.key.as_str()));
        self.keys.insert(op.seq, key.clone());
        self.count += 1;
        let list = self
            .by_key
            .entry(key.clone())
            .or_insert_with(|| VecDeque::with_capacity(1));
        let pos = list
            .iter()
            .position(|o| o.seq > op.seq)
            .unwrap_or(list.len());
        let seq = op.seq;
        self.high_seq = self.high_seq.max(seq);
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
        let Some((key, seq)) = self
            .by_key
            .get_key_value(key)
            .and_then(|(k, l)| Some((k.clone(), l.front()?.seq)))
        else {
            return;
        };
        match retry {
            Some(at) => self.backoff.insert((at, seq), key),
            None => self.heads.insert(seq, key),
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
        for seq in seqs {
            self.changed.remove(seq);
            self.early.remove(seq);
            if let Some(s) = &mut self.spill {
                if !s.remove(*seq) && *seq > s.upto {
                    // Spilled, its submit not arrived: it must not count
                    // when it does.
                    self.preloaded.insert(*seq);
                }
            }
        }
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
                if ran_on != Some(f.as_str()) && self.uses(f) == 0 {
                    unused = Some(f.clone());
                }
            }
        }
        unused
    }
}
