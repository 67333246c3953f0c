//! What becomes of a queued operation whose input is gone: a copy whose
//! source object (or version) does not exist, a put whose staged file is
//! not there. That is a planning error, not a store failure: retrying it
//! can never succeed, and running it later (a copy whose source reappears)
//! could bring back a name that was deleted since. So it is never retried.
//!
//! A pure function of the operation and the operations queued after it on
//! its key:
//! - When a later operation sets the key's content without reading it (a
//!   put, a delete, a copy from another key or of a named version), the
//!   gone operation is *superseded*: it is dropped, with the copies onto
//!   the key itself queued between the two (a chmod reads whatever the key
//!   holds, so it would apply new attributes to the wrong bytes); whoever
//!   waits for them waits for the superseding operation instead.
//! - Otherwise the key's state is *lost* as far as the queue knows: the
//!   operation and the self-copies after it are dropped, and the owner of
//!   the local state (the mount's core) is asked to queue what the name
//!   should hold now (see `fs`), which supersedes them in turn.

use crate::journal::{Op, OpKind};

/// The decision for a gone operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Replan {
    /// Drop `dropped` (the gone op first); `by` sets the key's content.
    Superseded { by: i64, dropped: Vec<i64> },
    /// Drop `dropped` (the gone op first); nothing queued sets the key.
    Lost { dropped: Vec<i64> },
}

/// Whether `op` reads the key's current content (a copy of the key onto
/// itself at no named version: a metadata change).
pub(crate) fn reads_current(op: &Op) -> bool {
    op.kind == OpKind::Copy
        && op.src_version.is_none()
        && op.src_key.as_deref().is_none_or(|k| k == op.key)
}

/// `gone`: the operation whose input is gone; `later`: the operations
/// queued on its key after it, oldest first.
pub(crate) fn replan(gone: &Op, later: &[Op]) -> Replan {
    let mut dropped = vec![gone.seq];
    for op in later {
        if reads_current(op) {
            dropped.push(op.seq);
        } else {
            return Replan::Superseded {
                by: op.seq,
                dropped,
            };
        }
    }
    Replan::Lost { dropped }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(seq: i64, kind: OpKind, src: Option<(&str, Option<&str>)>) -> Op {
        Op {
            file: (kind == OpKind::Put).then(|| format!("f{seq}")),
            size: 1,
            meta: "{}".into(),
            src_key: src.map(|(k, _)| k.to_string()),
            src_version: src.and_then(|(_, v)| v.map(str::to_string)),
            ..Op::pending(seq, "k", kind)
        }
    }

    /// Every kind of operation that can follow on the key.
    fn kinds(seq: i64) -> Vec<(Op, bool)> {
        vec![
            (op(seq, OpKind::Put, None), false),
            (op(seq, OpKind::Delete, None), false),
            (op(seq, OpKind::Copy, Some(("k", None))), true),
            (op(seq, OpKind::Copy, None), true),
            (op(seq, OpKind::Copy, Some(("k", Some("v1")))), false),
            (op(seq, OpKind::Copy, Some(("other", Some("v2")))), false),
            (op(seq, OpKind::Copy, Some(("other", None))), false),
        ]
    }

    #[test]
    fn the_first_later_op_that_does_not_read_the_key_supersedes_and_self_copies_before_it_go() {
        let gone = op(1, OpKind::Copy, Some(("src", Some("v0"))));
        // Every sequence of up to three later operations, of every kind.
        let mut sequences: Vec<Vec<(Op, bool)>> = vec![vec![]];
        for len in 1..=3 {
            let mut next = Vec::new();
            for s in sequences.iter().filter(|s| s.len() == len - 1) {
                for k in kinds(len as i64 + 1) {
                    let mut t = s.clone();
                    t.push(k);
                    next.push(t);
                }
            }
            sequences.extend(next);
        }
        assert_eq!(sequences.len(), 1 + 7 + 49 + 343);
        for seq in sequences {
            let later: Vec<Op> = seq.iter().map(|(o, _)| o.clone()).collect();
            let first_setter = seq.iter().position(|(_, reads)| !reads);
            let expected = match first_setter {
                Some(i) => Replan::Superseded {
                    by: later[i].seq,
                    dropped: std::iter::once(1)
                        .chain(later[..i].iter().map(|o| o.seq))
                        .collect(),
                },
                None => Replan::Lost {
                    dropped: std::iter::once(1)
                        .chain(later.iter().map(|o| o.seq))
                        .collect(),
                },
            };
            assert_eq!(replan(&gone, &later), expected, "{later:?}");
        }
    }

    #[test]
    fn a_gone_put_with_nothing_after_it_is_lost() {
        let gone = op(3, OpKind::Put, None);
        assert_eq!(replan(&gone, &[]), Replan::Lost { dropped: vec![3] });
    }
}
