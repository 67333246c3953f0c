//! The replicator's in-memory queue: the open tasks it holds (at most
//! [`HELD_TASKS`] per destination, the oldest), what runs, what waits out a
//! backoff, and what it knows of the tasks left in the journal only (the
//! *spill*: how many, and the earliest staging time among them).

use super::*;

/// Open tasks held in memory per destination, at most (see "Bounded memory").
pub(crate) const HELD_TASKS: usize = 2048;

pub(super) struct Queue {
    /// By id: source order per key. A map, so that finishing one task of a
    /// long backlog costs O(log n), not a pass over the backlog.
    pub(super) open: BTreeMap<i64, Task>,
    pub(super) running: HashSet<(String, String)>,
    pub(super) retry_at: HashMap<i64, Instant>,
    /// Tasks in `open`, per destination, and how many of them FAILED (they
    /// do not count against the share, so that tasks that keep failing never
    /// hold back the rest; see "Bounded memory").
    pub(super) held: HashMap<String, usize>,
    pub(super) failed: HashMap<String, usize>,
    /// Destinations whose backlog is partly in the journal only.
    pub(super) spilled: HashMap<String, Spill>,
    /// Destinations being refilled from the journal, and the tasks finished
    /// meanwhile (a refill's read may still have seen them open).
    pub(super) refilling: HashSet<String>,
    pub(super) done_while_refilling: HashSet<i64>,
}

/// What is known of a destination's tasks that are in the journal only.
#[derive(Debug)]
pub(super) struct Spill {
    /// How many (exact after a refill, counted up as tasks arrive).
    pub(super) count: usize,
    /// The earliest staging time among them (or earlier: never later).
    pub(super) earliest_ms: i64,
    /// Tasks that arrived since the last refill began, and their earliest
    /// staging time: a refill that began before them has not seen them.
    pub(super) arrived: u64,
    pub(super) arrived_earliest_ms: i64,
    /// A refill failed: the next one not before then.
    pub(super) refill_after: Option<Instant>,
}

impl Spill {
    pub(super) fn empty() -> Spill {
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
    pub(super) fn oldest_open_ms(&self) -> HashMap<String, i64> {
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

    pub(super) fn insert(&mut self, t: Task) {
        let (dest, failed) = (t.destination.clone(), t.status == TaskStatus::Failed);
        if self.open.insert(t.id, t).is_none() {
            *self.held.entry(dest.clone()).or_default() += 1;
            if failed {
                *self.failed.entry(dest).or_default() += 1;
            }
        }
    }

    pub(super) fn remove(&mut self, id: i64) {
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

    pub(super) fn set_failed(&mut self, dest: &str, was: bool, now: bool) {
        if was != now {
            let n = self.failed.entry(dest.to_string()).or_default();
            *n = if now { *n + 1 } else { n.saturating_sub(1) };
        }
    }

    /// Held tasks of `dest` that count against its share.
    pub(super) fn held(&self, dest: &str) -> usize {
        let failed = self.failed.get(dest).copied().unwrap_or(0);
        self.held
            .get(dest)
            .copied()
            .unwrap_or(0)
            .saturating_sub(failed)
    }

    pub(super) fn failed(&self, dest: &str) -> usize {
        self.failed.get(dest).copied().unwrap_or(0)
    }

    /// Open tasks, in memory and in the journal only (never 0 while any is
    /// in the journal only).
    pub(super) fn pending(&self) -> usize {
        self.open.len() + self.spilled.values().map(|s| s.count.max(1)).sum::<usize>()
    }

    /// Leaves `t` to the journal (its destination's share of memory is full).
    pub(super) fn spill(&mut self, t: &Task) {
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
