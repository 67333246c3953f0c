//! The merge behind a directory listing, as a pure function: the bucket's
//! LIST of one directory with the queued operations on keys in it applied
//! over it (they are newer than anything listed). What it cannot decide
//! alone it returns as a question: a listed directory below which a delete
//! is queued may be empty once the deletes land (`maybe_gone`; the caller
//! asks the bucket and the queue). The nodes created here and not yet
//! queued are merged by the caller, under the inode table's lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::SystemTime;

use crate::journal::{Op, OpKind};
use crate::meta::ObjectMeta;
use crate::names::listed_entry;

/// A file as listed: size, ETag (empty for one a queued operation makes),
/// Last-Modified.
pub(super) type Listed = (u64, String, Option<SystemTime>);

/// One directory's entries after the queue.
#[derive(Debug, PartialEq)]
pub(super) struct Merged {
    pub files: BTreeMap<String, Listed>,
    pub dirs: BTreeSet<String>,
    /// The attributes queued puts and copies give names they make.
    pub(crate) queued_meta: HashMap<String, ObjectMeta>,
    /// Directories still listed below which a delete is queued.
    pub(crate) maybe_gone: Vec<String>,
}

/// Applies `queued` (the newest operation per key) to what the LIST of the
/// directory whose key is `dkey` found (`files`, `dirs`).
pub(super) fn merge(
    dkey: &str,
    mut files: BTreeMap<String, Listed>,
    mut dirs: BTreeSet<String>,
    queued: &[Op],
) -> Merged {
    let mut queued_meta = HashMap::new();
    for op in queued {
        let Some((name, is_dir)) = listed_entry(dkey, &op.key) else {
            continue;
        };
        let deeper = op.key.len() > dkey.len() + name.len() + 1;
        match (op.kind, is_dir) {
            (OpKind::Delete, false) => {
                files.remove(name);
            }
            // The directory's own marker: rmdir, which found it empty.
            (OpKind::Delete, true) if !deeper => {
                dirs.remove(name);
            }
            // A key below it: whether anything is left there is a question.
            (OpKind::Delete, true) => {}
            (_, false) => {
                files.insert(name.to_string(), (op.size, String::new(), None));
                if let Some(meta) = ObjectMeta::from_json(&op.meta) {
                    queued_meta.insert(name.to_string(), meta);
                }
            }
            (_, true) => {
                dirs.insert(name.to_string());
            }
        }
    }
    let maybe_gone = dirs
        .iter()
        .filter(|name| {
            let below = format!("{dkey}{name}/");
            queued
                .iter()
                .any(|o| o.kind == OpKind::Delete && o.key.starts_with(&below))
        })
        .cloned()
        .collect();
    Merged {
        files,
        dirs,
        queued_meta,
        maybe_gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(seq: i64, key: &str, kind: OpKind, size: u64) -> Op {
        Op {
            size,
            ..Op::pending(seq, key, kind)
        }
    }

    fn listed(names: &[(&str, u64)]) -> BTreeMap<String, Listed> {
        names
            .iter()
            .map(|(n, s)| (n.to_string(), (*s, format!("etag-{n}"), None)))
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn without_a_queue_the_listing_is_the_directory() {
        let m = merge("p/d/", listed(&[("a", 1)]), set(&["s"]), &[]);
        assert_eq!(m.files, listed(&[("a", 1)]));
        assert_eq!(m.dirs, set(&["s"]));
        assert!(m.maybe_gone.is_empty() && m.queued_meta.is_empty());
    }

    #[test]
    fn queued_puts_and_copies_add_or_replace_files_with_their_size_and_no_etag() {
        let mut copy = op(2, "p/d/b", OpKind::Copy, 9);
        let meta = ObjectMeta::new(0o100600, 7, 8);
        copy.meta = meta.to_json();
        let m = merge(
            "p/d/",
            listed(&[("a", 1), ("b", 2)]),
            set(&[]),
            &[
                op(1, "p/d/a", OpKind::Put, 5),
                copy,
                op(3, "p/d/c", OpKind::Put, 0),
            ],
        );
        let want: BTreeMap<String, Listed> = [("a", 5), ("b", 9), ("c", 0)]
            .iter()
            .map(|(n, s)| (n.to_string(), (*s, String::new(), None)))
            .collect();
        assert_eq!(m.files, want);
        assert_eq!(m.queued_meta.get("b"), Some(&meta));
    }

    #[test]
    fn a_queued_delete_removes_a_file_and_rmdir_removes_a_directory() {
        let m = merge(
            "",
            listed(&[("a", 1), ("b", 2)]),
            set(&["s", "t"]),
            &[
                op(1, "a", OpKind::Delete, 0),
                op(2, "s/", OpKind::Delete, 0),
            ],
        );
        assert_eq!(m.files, listed(&[("b", 2)]));
        assert_eq!(m.dirs, set(&["t"]));
        assert!(m.maybe_gone.is_empty());
    }

    #[test]
    fn a_delete_below_a_listed_directory_leaves_it_as_a_question() {
        let m = merge(
            "d/",
            listed(&[]),
            set(&["s", "t"]),
            &[
                op(1, "d/s/x", OpKind::Delete, 0),
                op(2, "d/s/y/z", OpKind::Delete, 0),
            ],
        );
        assert_eq!(m.dirs, set(&["s", "t"]));
        assert_eq!(m.maybe_gone, vec!["s".to_string()]);
    }

    #[test]
    fn a_put_below_makes_the_directory_and_keys_elsewhere_change_nothing() {
        let m = merge(
            "d/",
            listed(&[]),
            set(&[]),
            &[
                op(1, "d/new/deep/f", OpKind::Put, 3),
                op(2, "e/x", OpKind::Put, 3),
                op(3, "d", OpKind::Put, 3),
            ],
        );
        assert_eq!(m.dirs, set(&["new"]));
        assert!(m.files.is_empty(), "{:?}", m.files);
    }
}
