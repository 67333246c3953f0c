//! Directories whose complete contents this mount knows (it listed them, or
//! created them here), with when it learned them. Within the time to live a
//! name missing from such a directory does not exist, so a create in it needs
//! no round trip to the bucket to know the name is free.
//!
//! Bounded: knowledge past its time to live is never used again, so it is
//! dropped when the directory is next touched, and at the latest at the next
//! directory learned once a time to live has passed since the last sweep (or
//! at once when 64 are known). So a mount that keeps learning directories
//! holds the names of those learned within about two times to live, and an
//! idle one those of its last time to live, not of every one ever created: a
//! burst of 18,000 files into new directories otherwise kept 1.2 MiB of
//! names until 64 directories had been learned (docs/BENCHMARKS-history.md, 2026-12-03).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Known directories beyond which every new one sweeps the expired.
const SWEEP_AT: usize = 64;

pub(crate) struct KnownDirs {
    ttl: Duration,
    dirs: HashMap<String, (Instant, HashSet<String>)>,
    swept: Instant,
}

impl KnownDirs {
    pub fn new(ttl: Duration) -> KnownDirs {
        KnownDirs {
            ttl,
            dirs: HashMap::new(),
            swept: Instant::now(),
        }
    }

    /// Remembers the complete contents of `dir` as of `at`.
    pub fn know(&mut self, dir: String, at: Instant, names: HashSet<String>) {
        if self.dirs.len() >= SWEEP_AT || self.swept.elapsed() >= self.ttl {
            let ttl = self.ttl;
            self.dirs.retain(|_, (seen, _)| seen.elapsed() < ttl);
            self.swept = Instant::now();
        }
        self.dirs.insert(dir, (at, names));
    }

    /// Records that `name` now exists (or not) in `dir`, if its contents are known.
    pub fn note(&mut self, dir: &str, name: &str, exists: bool) {
        let Some((at, names)) = self.dirs.get_mut(dir) else {
            return;
        };
        if at.elapsed() >= self.ttl {
            self.dirs.remove(dir);
        } else if exists {
            names.insert(name.to_string());
        } else {
            names.remove(name);
        }
    }

    /// Whether `name` is known not to exist in `dir`.
    pub(crate) fn absent(&self, dir: &str, name: &str) -> bool {
        matches!(self.dirs.get(dir), Some((at, names)) if at.elapsed() < self.ttl && !names.contains(name))
    }

    /// Whether a listing of `dir` learned within `within` showed `name`.
    pub fn listed(&self, dir: &str, name: &str, within: Duration) -> bool {
        matches!(self.dirs.get(dir), Some((at, names)) if at.elapsed() < within && names.contains(name))
    }

    /// Forgets `dir` (removed).
    pub(crate) fn forget(&mut self, dir: &str) {
        self.dirs.remove(dir);
    }

    /// Forgets `dir` and every directory below it (renamed).
    pub(crate) fn forget_tree(&mut self, dir: &str) {
        let below = format!("{dir}/");
        self.dirs.retain(|d, _| d != dir && !d.starts_with(&below));
    }

    /// Names held, over all known directories.
    #[cfg(test)]
    fn names_held(&self) -> usize {
        self.dirs.values().map(|(_, n)| n.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> HashSet<String> {
        (0..n).map(|i| format!("f{i}")).collect()
    }

    #[test]
    fn a_name_missing_from_a_fresh_listing_is_absent_until_it_is_created() {
        let mut k = KnownDirs::new(Duration::from_secs(60));
        k.know("d".into(), Instant::now(), names(3));
        assert!(k.absent("d", "new") && !k.absent("d", "f1"));
        assert!(
            !k.absent("other", "new"),
            "an unknown directory proves nothing"
        );
        k.note("d", "new", true);
        assert!(!k.absent("d", "new"));
        k.note("d", "f1", false);
        assert!(k.absent("d", "f1"));
        assert!(k.listed("d", "new", Duration::from_secs(1)));
    }

    #[test]
    fn expired_knowledge_proves_nothing() {
        let ttl = Duration::from_secs(10);
        let mut k = KnownDirs::new(ttl);
        k.know("d".into(), Instant::now() - 2 * ttl, names(3));
        assert!(!k.absent("d", "new"));
        assert!(!k.listed("d", "f1", ttl));
        assert!(
            k.listed("d", "f1", 3 * ttl),
            "a listing vouches for names for its own window"
        );
    }

    /// A few directories, each filled and then left alone: what was learned of
    /// them is let go once it has expired, not kept until 64 are known.
    #[test]
    fn names_of_expired_directories_are_dropped_even_when_few_are_known() {
        let ttl = Duration::from_secs(10);
        let mut k = KnownDirs::new(ttl);
        let long_ago = Instant::now() - 2 * ttl;
        for d in 0..5 {
            k.know(format!("burst/d{d}"), long_ago, names(900));
        }
        assert_eq!(
            k.names_held(),
            4500,
            "no sweep before a time to live has passed"
        );
        k.swept = long_ago;
        k.know("next/d0".into(), Instant::now(), names(1));
        assert_eq!(
            k.names_held(),
            1,
            "only the fresh directory's names are held"
        );
        assert!(k.absent("next/d0", "f7"));
    }

    #[test]
    fn sixty_four_known_directories_sweep_at_once() {
        let ttl = Duration::from_secs(10);
        let mut k = KnownDirs::new(ttl);
        let long_ago = Instant::now() - 2 * ttl;
        for d in 0..SWEEP_AT {
            k.know(format!("d{d}"), long_ago, names(10));
        }
        k.know("fresh".into(), Instant::now(), names(10));
        assert_eq!(k.names_held(), 10);
    }

    #[test]
    fn a_renamed_tree_is_forgotten_below_it_and_not_beside_it() {
        let mut k = KnownDirs::new(Duration::from_secs(60));
        for d in ["a", "a/b", "a/b/c", "ab", "z"] {
            k.know(d.into(), Instant::now(), names(1));
        }
        k.forget_tree("a");
        assert!(!k.absent("a", "x") && !k.absent("a/b/c", "x"));
        assert!(k.absent("ab", "x") && k.absent("z", "x"));
        k.forget("z");
        assert!(!k.absent("z", "x"));
    }
}
