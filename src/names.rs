//! Paths under the mount ↔ object keys (pure functions).
//!
//! A path `a/b/c.txt` is the key `<prefix>a/b/c.txt`; a directory `a/b` is the
//! prefix `<prefix>a/b/` (and its optional zero-byte marker object of that name).
//! Keys that cannot be paths — empty segments (`a//b`), `.` or `..`, segments
//! over 255 bytes — are left out of listings.

/// Longest file name (one path segment), as on Linux.
pub(crate) const NAME_MAX: usize = 255;
/// Longest S3 key.
pub(crate) const KEY_MAX: usize = 1024;

/// The hidden object that carries a directory's attributes on stores that drop
/// metadata on `dir/` marker objects (SeaweedFS). Reserved: never listed, never
/// creatable.
pub(crate) const DIR_ATTRS: &str = ".regionfs-dir";

/// The object in each destination (at the source prefix) where the replicator
/// says how far replication has got (see `replicator::heartbeat`). Reserved
/// like [`DIR_ATTRS`].
pub(crate) const HEARTBEAT: &str = ".regionfs-replicated";

/// The folder, at the source prefix, of the per-directory attribute indexes
/// (see `fs::index`). Reserved like [`DIR_ATTRS`], also as a directory name.
pub(crate) const INDEX_DIR: &str = ".regionfs-index";

fn reserved(name: &str) -> bool {
    name == DIR_ATTRS || name == HEARTBEAT || name == INDEX_DIR
}

/// Whether a key is one of regionfs's own attribute indexes (never a file,
/// never replicated).
pub(crate) fn is_index_key(key: &str) -> bool {
    key.split('/').any(|s| s == INDEX_DIR)
}

/// Why a name cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameError {
    TooLong,
    Invalid,
}

/// Checks one path segment given by the kernel.
pub(crate) fn check_name(name: &[u8]) -> Result<&str, NameError> {
    if name.len() > NAME_MAX {
        return Err(NameError::TooLong);
    }
    let s = std::str::from_utf8(name).map_err(|_| NameError::Invalid)?;
    if s.is_empty() || s == "." || s == ".." || s.contains('/') || reserved(s) {
        return Err(NameError::Invalid);
    }
    Ok(s)
}

/// The path of `name` inside directory `parent` ("" is the root).
pub(crate) fn child_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// The parent directory of a path ("" for top-level entries).
pub(crate) fn parent_of(path: &str) -> &str {
    path.rfind('/').map(|i| &path[..i]).unwrap_or("")
}

/// The last segment of a path.
pub(crate) fn name_of(path: &str) -> &str {
    path.rfind('/').map(|i| &path[i + 1..]).unwrap_or(path)
}

/// The key of a file at `path`.
pub(crate) fn file_key(prefix: &str, path: &str) -> String {
    format!("{prefix}{path}")
}

/// The listing prefix (and marker key) of a directory at `path`.
pub(crate) fn dir_key(prefix: &str, path: &str) -> String {
    if path.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}{path}/")
    }
}

/// Whether a key fits in S3.
pub(crate) fn check_key(key: &str) -> Result<(), NameError> {
    if key.len() > KEY_MAX {
        Err(NameError::TooLong)
    } else {
        Ok(())
    }
}

/// The entry a listed key (or common prefix) stands for inside the directory
/// listed as `dir_prefix`: `Some((name, is_dir))`, or `None` for the directory's
/// own marker and for keys that cannot be paths.
pub(crate) fn listed_entry<'a>(dir_prefix: &str, key: &'a str) -> Option<(&'a str, bool)> {
    let rest = key.strip_prefix(dir_prefix)?;
    if rest.is_empty() {
        return None;
    }
    let (name, is_dir) = match rest.find('/') {
        Some(i) => (&rest[..i], true),
        None => (rest, false),
    };
    ((!reserved(name) || is_dir && name != INDEX_DIR) && valid_segment(name))
        .then_some((name, is_dir))
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.len() <= NAME_MAX
}

#[cfg(test)]
/// Whether every segment of a key below `prefix` can be a path segment.
pub(crate) fn key_is_path(prefix: &str, key: &str) -> bool {
    match key.strip_prefix(prefix) {
        Some(rest) => {
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            !rest.is_empty() && rest.split('/').all(valid_segment)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_keys_and_back() {
        assert_eq!(child_path("", "a"), "a");
        assert_eq!(child_path("a/b", "c"), "a/b/c");
        assert_eq!(parent_of("a/b/c"), "a/b");
        assert_eq!(parent_of("a"), "");
        assert_eq!(name_of("a/b/c"), "c");
        assert_eq!(file_key("pre/", "a/b"), "pre/a/b");
        assert_eq!(dir_key("pre/", "a/b"), "pre/a/b/");
        assert_eq!(dir_key("pre/", ""), "pre/");
    }

    #[test]
    fn names_longer_than_255_bytes_are_too_long() {
        assert_eq!(check_name(&[b'x'; 256]), Err(NameError::TooLong));
        assert!(check_name(&[b'x'; 255]).is_ok());
        assert_eq!(check_name(b".."), Err(NameError::Invalid));
        assert!(check_key(&"k".repeat(1025)).is_err());
    }

    #[test]
    fn keys_that_cannot_be_paths_are_left_out_of_listings() {
        assert_eq!(listed_entry("d/", "d/"), None, "the marker itself");
        assert_eq!(listed_entry("d/", "d/f"), Some(("f", false)));
        assert_eq!(listed_entry("d/", "d/sub/"), Some(("sub", true)));
        assert_eq!(listed_entry("d/", "d//"), None, "empty segment");
        assert_eq!(listed_entry("d/", "d/../"), None);
        assert_eq!(listed_entry("d/", "d/."), None);
        assert_eq!(
            listed_entry("", ".regionfs-index/"),
            None,
            "the attribute indexes"
        );
        assert_eq!(
            listed_entry("d/", "d/.regionfs-dir/"),
            Some((".regionfs-dir", true))
        );
        let long = format!("d/{}", "x".repeat(256));
        assert_eq!(listed_entry("d/", &long), None);
        assert!(key_is_path("", "a/b/c"));
        assert!(!key_is_path("", "a//c"));
        assert!(!key_is_path("", "a/./c"));
    }

    proptest::proptest! {
        #[test]
        fn a_valid_child_lists_back_as_itself(parent in "[a-z]{0,3}(/[a-z]{1,3}){0,2}", name in "[a-zA-Z0-9 ._-]{1,20}") {
            proptest::prop_assume!(name != "." && name != "..");
            let path = child_path(&parent, &name);
            let prefix = dir_key("p/", &parent);
            let key = file_key("p/", &path);
            proptest::prop_assert_eq!(listed_entry(&prefix, &key), Some((name.as_str(), false)));
            proptest::prop_assert_eq!(parent_of(&path), parent.as_str());
        }
    }
}
