//! A failed write or fsync of the local disk stops the mount's writes.
//!
//! Why: after a failed fsync the kernel may already have dropped the dirty
//! pages it could not write (and cleared the error), so a retry that succeeds
//! proves nothing about the bytes: PostgreSQL and neon treat it as fatal for
//! the same reason. A cache file or journal that failed once cannot vouch for
//! what is written next.
//!
//! What: the first EIO or EROFS from a write or fsync of a cache file, or a
//! journal commit that fails on its disk, trips the [`Fence`]; from then on
//! every write-side operation of the file system (create, write, close of a
//! written file, fsync, rename, unlink, chmod, …) answers EIO, the failing
//! one included, so nothing written after the failure is reported durable.
//! Reads go on, and so do the uploads and replicas of what was acknowledged
//! before (their bytes were synced before the failure). ENOSPC is not a
//! failure of the disk: it stays back-pressure (`CacheError::NoSpace`).
//!
//! The cause is written to [`MARKER`] in the cache directory (when the disk
//! still takes it) for `regionfs status` and for the next start, which
//! re-checks the cache (a file written, fsynced and read back) before it
//! accepts writes again ([`recheck`]); the log says it at ERROR level.
//!
//! Invariant: a tripped fence stays tripped for the life of the process.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;

use super::CacheError;

/// The file in the cache directory that keeps a failure's cause.
pub(crate) const MARKER: &str = "local-disk-failed";

/// Whether an error of a write or fsync of local data means the disk can no
/// longer be trusted (ENOSPC, EDQUOT: full, not failing).
pub(crate) fn is_fatal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EROFS))
}

/// Set once the local disk failed; see the module documentation.
pub struct Fence {
    cause: OnceLock<String>,
    marker: PathBuf,
    /// Fault injection: I/O calls left before each fails with EIO (-1: never).
    faults_after: AtomicI64,
}

impl Fence {
    pub(super) fn new(root: &Path) -> Fence {
        Fence {
            cause: OnceLock::new(),
            marker: root.join(MARKER),
            faults_after: AtomicI64::new(-1),
        }
    }

    /// Records the failure (the first cause is kept) and says it loudly.
    pub(crate) fn trip(&self, cause: String) {
        if self.cause.set(cause.clone()).is_ok() {
            tracing::error!(
                %cause,
                "the local disk failed: this mount accepts no more writes (each gets EIO); \
                 what was acknowledged before is still uploaded. Check the disk, then remount: \
                 the next start re-checks the cache before it accepts writes"
            );
            // Best effort: the disk that failed may not take this either.
            let at = crate::clock::now_ms();
            let _ = std::fs::write(&self.marker, format!("{at} {cause}\n"));
        }
    }

    /// Why the mount stopped accepting writes, if it did.
    pub fn cause(&self) -> Option<&str> {
        self.cause.get().map(String::as_str)
    }

    /// `Err` once the disk failed: what a write-side operation answers.
    pub fn check(&self) -> Result<(), CacheError> {
        match self.cause() {
            None => Ok(()),
            Some(cause) => Err(CacheError::DiskFailed {
                cause: cause.to_string(),
            }),
        }
    }

    /// Fault injection for tests: the next `n` writes and fsyncs of cache
    /// files succeed and every later one fails with EIO; -1 ends it.
    pub fn fail_io_after(&self, n: i64) {
        self.faults_after.store(n, Ordering::SeqCst);
    }

    /// The injected fault, if one is due.
    pub(super) fn injected(&self) -> io::Result<()> {
        let left = self.faults_after.load(Ordering::SeqCst);
        if left == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        if left > 0 {
            self.faults_after.store(left - 1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// `e` (from a write or fsync of `path`) as a [`CacheError`], tripping
    /// the fence if it is fatal.
    pub(super) fn io(&self, path: &Path, e: io::Error) -> CacheError {
        if is_fatal(&e) {
            self.trip(format!("{}: {e}", path.display()));
        }
        CacheError::io(path, e)
    }
}

/// What the cache directory at `root` says of an earlier failure: its cause.
pub fn recorded(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join(MARKER)).ok()?;
    let text = text.trim();
    Some(match text.split_once(' ') {
        Some((at, cause)) if at.parse::<i64>().is_ok() => cause.to_string(),
        _ => text.to_string(),
    })
}

/// At start, after a failure was recorded: a file written, fsynced and read
/// back in `data/` proves the disk takes writes again, and the marker is
/// removed. `Ok(None)`: nothing was recorded; `Ok(Some(cause))`: re-checked.
pub(crate) fn recheck(root: &Path) -> Result<Option<String>, CacheError> {
    let Some(cause) = recorded(root) else {
        return Ok(None);
    };
    let probe = root.join("data").join(".disk-check");
    let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let checked = (|| -> io::Result<bool> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe)?;
        file.write_all_at(&pattern, 0)?;
        file.sync_all()?;
        let mut back = vec![0u8; pattern.len()];
        file.read_exact_at(&mut back, 0)?;
        Ok(back == pattern)
    })();
    let _ = std::fs::remove_file(&probe);
    match checked {
        Ok(true) => {}
        Ok(false) => {
            return Err(CacheError::DiskFailed {
                cause: format!(
                    "{cause}; re-checked at start: {} read back other bytes than written",
                    probe.display()
                ),
            })
        }
        Err(e) => {
            return Err(CacheError::DiskFailed {
                cause: format!("{cause}; re-checked at start: {}: {e}", probe.display()),
            })
        }
    }
    std::fs::remove_file(root.join(MARKER)).map_err(|e| CacheError::io(&root.join(MARKER), e))?;
    tracing::warn!(%cause, "the local disk had failed; re-checked at start, writes are accepted again");
    Ok(Some(cause))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_eio_and_erofs_are_fatal_a_full_disk_is_back_pressure() {
        for (errno, fatal) in [
            (libc::EIO, true),
            (libc::EROFS, true),
            (libc::ENOSPC, false),
            (libc::EDQUOT, false),
            (libc::EINTR, false),
        ] {
            assert_eq!(
                is_fatal(&io::Error::from_raw_os_error(errno)),
                fatal,
                "{errno}"
            );
        }
    }

    #[test]
    fn a_tripped_fence_keeps_its_first_cause_and_leaves_it_for_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let fence = Fence::new(dir.path());
        assert!(fence.check().is_ok());
        let e = fence.io(Path::new("x"), io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(e, CacheError::Io { .. }));
        assert!(fence.check().is_ok(), "ENOSPC does not trip it");
        fence.io(Path::new("first"), io::Error::from_raw_os_error(libc::EIO));
        fence.trip("second".into());
        assert!(fence.cause().unwrap().starts_with("first"));
        assert!(matches!(fence.check(), Err(CacheError::DiskFailed { .. })));
        assert!(recorded(dir.path()).unwrap().starts_with("first"));
        // The next start re-checks the disk and clears the record.
        assert!(recheck(dir.path()).unwrap().unwrap().starts_with("first"));
        assert_eq!(recorded(dir.path()), None);
        assert_eq!(recheck(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_recheck_that_cannot_write_keeps_the_mount_from_starting() {
        let dir = tempfile::tempdir().unwrap();
        // `data` is a file: nothing can be written under it.
        std::fs::write(dir.path().join("data"), b"").unwrap();
        std::fs::write(
            dir.path().join(MARKER),
            "1 journal.db: Input/output error\n",
        )
        .unwrap();
        let e = recheck(dir.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains("journal.db: Input/output error; re-checked at start"),
            "{e}"
        );
        assert!(recorded(dir.path()).is_some(), "still recorded");
    }

    #[test]
    fn injected_faults_start_after_the_given_count_and_end_on_minus_one() {
        let fence = Fence::new(Path::new("/nonexistent"));
        assert!(fence.injected().is_ok());
        fence.fail_io_after(1);
        assert!(fence.injected().is_ok());
        assert!(fence.injected().is_err());
        assert!(fence.injected().is_err());
        fence.fail_io_after(-1);
        assert!(fence.injected().is_ok());
    }
}
