//! Which queued uploads start now (pure): the scheduler's decision, apart from
//! the queue it reads and the clock.
//!
//! Operations on one key run one at a time in `seq` order, so only each key's
//! front operation, while the key is neither running nor waiting out a retry
//! backoff, is a candidate: a *head*. Heads start oldest first, at most as
//! many as there are free slots, once *due*:
//! - after the write-back delay (`cache.write_back_delay`) from its staging;
//! - while closes keep coming closer together than [`QUIET`], after the pause
//!   in them, but no later than `upload.defer_while_writing` from its staging
//!   (0 turns this off);
//! - at once when someone waits for it (fsync, a rename's copy) or the mount
//!   is draining.
//!
//! When a head is due never decreases with its staging time, and heads are
//! staged in `seq` order, so the pass stops at the first head not yet due:
//! no later head is due sooner. A pass therefore costs the heads it starts,
//! not the length of the queue. The exhaustive test below checks the early
//! stop against the plain definition (every due head, oldest first).

use std::time::Duration;

/// Closes closer together than this are one burst of writing.
pub(crate) const QUIET: Duration = Duration::from_millis(200);

/// A head as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub seq: i64,
    /// When its operation was staged (Unix ms).
    pub(crate) staged_at_ms: i64,
}

/// What decides when a head is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Timing {
    /// `cache.write_back_delay`, in ms.
    pub(crate) delay_ms: i64,
    /// `upload.defer_while_writing`, in ms (0: off).
    pub(crate) defer_ms: i64,
    /// How long until the current burst of closes is over (0: no burst).
    pub(crate) quiet_left_ms: i64,
    /// Heads up to this seq are waited for.
    pub(crate) urgent_upto: i64,
    /// Unmounting: nothing is held back.
    pub draining: bool,
}

/// When `head` may start (Unix ms).
pub(crate) fn due_at(t: &Timing, head: Head, now_ms: i64) -> i64 {
    if t.draining || head.seq <= t.urgent_upto {
        return head.staged_at_ms;
    }
    let due = head.staged_at_ms + t.delay_ms;
    if t.defer_ms == 0 || t.quiet_left_ms == 0 {
        return due;
    }
    let pause = now_ms + t.quiet_left_ms;
    due.max(pause.min(head.staged_at_ms + t.defer_ms))
}

/// One pass's decision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Decision {
    /// The heads to start, oldest first.
    pub start: Vec<i64>,
    /// When the first head not started is due, if one is not due yet.
    pub(crate) next_due_ms: Option<i64>,
}

/// Starts due heads from `heads` (in `seq` order) oldest first, at most
/// `free` of them; stops at the first head not yet due.
pub(crate) fn decide(
    heads: impl IntoIterator<Item = Head>,
    free: usize,
    t: &Timing,
    now_ms: i64,
) -> Decision {
    let mut d = Decision::default();
    for head in heads {
        if d.start.len() >= free {
            break;
        }
        let due = due_at(t, head, now_ms);
        if due > now_ms {
            d.next_due_ms = Some(due);
            break;
        }
        d.start.push(head.seq);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(delay_ms: i64, defer_ms: i64, quiet_left_ms: i64) -> Timing {
        Timing {
            delay_ms,
            defer_ms,
            quiet_left_ms,
            ..Timing::default()
        }
    }

    #[test]
    fn a_head_waits_out_the_write_back_delay_unless_it_is_waited_for() {
        let h = Head {
            seq: 5,
            staged_at_ms: 1_000,
        };
        let t = timing(2_000, 0, 0);
        assert_eq!(due_at(&t, h, 1_500), 3_000);
        let urgent = Timing {
            urgent_upto: 5,
            ..t
        };
        assert_eq!(due_at(&urgent, h, 1_500), 1_000);
        let draining = Timing {
            draining: true,
            ..t
        };
        assert_eq!(due_at(&draining, h, 1_500), 1_000);
    }

    #[test]
    fn during_a_burst_a_head_waits_for_the_pause_but_no_longer_than_its_deferral() {
        let h = Head {
            seq: 1,
            staged_at_ms: 1_000,
        };
        // The burst ends 150 ms from now, well within the 5 s deferral.
        assert_eq!(due_at(&timing(0, 5_000, 150), h, 1_100), 1_250);
        // A burst that goes on: the deferral caps the wait.
        assert_eq!(due_at(&timing(0, 5_000, 200), h, 5_900), 6_000);
        // No burst, or deferral off: the delay alone.
        assert_eq!(due_at(&timing(300, 5_000, 0), h, 1_100), 1_300);
        assert_eq!(due_at(&timing(300, 0, 200), h, 1_100), 1_300);
    }

    #[test]
    fn the_pass_stops_at_the_first_head_not_due_and_at_the_free_slots() {
        let heads = [(1, 0), (2, 10), (3, 20), (4, 30)]
            .map(|(seq, staged_at_ms)| Head { seq, staged_at_ms });
        let t = timing(100, 0, 0);
        assert_eq!(
            decide(heads, 8, &t, 115),
            Decision {
                start: vec![1, 2],
                next_due_ms: Some(120)
            }
        );
        assert_eq!(
            decide(heads, 1, &t, 200),
            Decision {
                start: vec![1],
                next_due_ms: None
            }
        );
        assert_eq!(decide(heads, 0, &t, 200), Decision::default());
    }

    /// Every queue of up to four heads (staged in seq order at times 0-2),
    /// every timing and clock in a small range: the early-stopping pass
    /// starts exactly the oldest `free` due heads, and reports when the
    /// oldest one it left is due whenever that is later than now.
    #[test]
    fn exhaustively_the_early_stop_starts_what_the_definition_does() {
        let mut cases = 0u64;
        for n in 0..=4usize {
            // Staging times, nondecreasing with seq: each of 3^n, sorted.
            for code in 0..3usize.pow(n as u32) {
                let mut staged: Vec<i64> = (0..n)
                    .map(|i| (code / 3usize.pow(i as u32) % 3) as i64)
                    .collect();
                staged.sort_unstable();
                let heads: Vec<Head> = staged
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| Head {
                        seq: i as i64 + 1,
                        staged_at_ms: s,
                    })
                    .collect();
                for delay_ms in [0, 2] {
                    for defer_ms in [0, 3] {
                        for quiet_left_ms in [0, 1, 3] {
                            for urgent_upto in 0..=n as i64 {
                                for draining in [false, true] {
                                    let t = Timing {
                                        delay_ms,
                                        defer_ms,
                                        quiet_left_ms,
                                        urgent_upto,
                                        draining,
                                    };
                                    for now_ms in 0..=6 {
                                        for free in 0..=3 {
                                            check(&heads, free, &t, now_ms);
                                            cases += 1;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(cases > 100_000, "{cases} cases");
    }

    fn check(heads: &[Head], free: usize, t: &Timing, now_ms: i64) {
        let d = decide(heads.iter().copied(), free, t, now_ms);
        // The definition: every due head, oldest first, as many as fit.
        let due: Vec<i64> = heads
            .iter()
            .filter(|h| due_at(t, **h, now_ms) <= now_ms)
            .map(|h| h.seq)
            .collect();
        let want: Vec<i64> = due.iter().copied().take(free).collect();
        assert_eq!(d.start, want, "{heads:?} free {free} {t:?} now {now_ms}");
        // Never a head twice, never past the slots.
        assert!(d.start.len() <= free);
        assert!(d.start.windows(2).all(|w| w[0] < w[1]));
        // The wake: the first head left that is not due, when the pass got to it.
        match d.next_due_ms {
            Some(at) => {
                assert!(at > now_ms);
                let first_left = heads.iter().find(|h| !d.start.contains(&h.seq)).unwrap();
                assert_eq!(at, due_at(t, *first_left, now_ms));
            }
            None => assert!(
                d.start.len() == free || heads.iter().all(|h| due_at(t, *h, now_ms) <= now_ms),
                "{heads:?} free {free} {t:?} now {now_ms}: a head not due and no wake"
            ),
        }
    }
}
