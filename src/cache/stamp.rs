//! Change stamps of cache files: telling, without seeing the writes, whether
//! a file was written since a given moment.
//!
//! Why: with FUSE passthrough (`fs::passthrough`) the kernel writes a
//! working file directly, and the daemon hears of no WRITE. It learns that a
//! file changed by comparing its [`Stamp`] (change time to the nanosecond,
//! and size) with the one it took when it last knew the content.
//!
//! The argument: on a filesystem with fine-grained change times (Linux 6.13
//! and later give ext4, xfs, btrfs and tmpfs "multigrain" timestamps), a
//! write after a stat of the file always gets a change time later than the
//! one that stat reported; only writes between two stats with no stat in
//! between may share one. So a stamp taken *before* reading a file, equal
//! to one taken after, proves nothing wrote it in between ("a stable read").
//! [`fine_grained`] checks this of the cache's filesystem at start; without
//! it the mount does not use passthrough.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What a file's content is known by: its change time and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    ctime_s: i64,
    ctime_ns: i64,
    pub size: u64,
    /// Modification time, seconds and nanoseconds (not part of equality's
    /// purpose, but kept: a changed file takes its mtime from here).
    mtime_s: i64,
    mtime_ns: i64,
}

impl Stamp {
    /// The file's modification time.
    pub fn mtime(&self) -> std::time::SystemTime {
        crate::meta::to_time(self.mtime_s, self.mtime_ns as u32)
    }
}

/// The stamp of an open file.
pub fn of(file: &File) -> io::Result<Stamp> {
    Ok(from_metadata(&file.metadata()?))
}

/// The stamp of the file at `path`.
pub(crate) fn of_path(path: &Path) -> io::Result<Stamp> {
    Ok(from_metadata(&std::fs::metadata(path)?))
}

fn from_metadata(m: &std::fs::Metadata) -> Stamp {
    Stamp {
        ctime_s: m.ctime(),
        ctime_ns: m.ctime_nsec(),
        size: m.size(),
        mtime_s: m.mtime(),
        mtime_ns: m.mtime_nsec(),
    }
}

/// Whether `dir`'s filesystem gives every write after a stat a new change
/// time: 64 rounds of stat, one-byte write, stat, each of which must see a
/// change. A coarse clock (one tick per jiffy, several milliseconds) fails
/// at once, as nothing here waits between the calls.
pub(crate) fn fine_grained(dir: &Path) -> bool {
    let probe = || -> io::Result<bool> {
        let f = tempfile_in(dir)?;
        let file = &f.1;
        use std::os::unix::fs::FileExt;
        for i in 0..64u64 {
            let before = of(file)?;
            file.write_all_at(b"x", i)?;
            if of(file)? == before {
                return Ok(false);
            }
        }
        Ok(true)
    };
    probe().unwrap_or(false)
}

/// A file in `dir` removed when dropped.
struct TempFile(std::path::PathBuf, File);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tempfile_in(dir: &Path) -> io::Result<TempFile> {
    let path = dir.join(format!(".stamp-probe-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    Ok(TempFile(path, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_write_after_a_stamp_changes_it_and_a_read_does_not() {
        let dir = tempfile::tempdir().unwrap();
        if !fine_grained(dir.path()) {
            eprintln!("skipped: this filesystem has coarse change times");
            return;
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        let s = of(&f).unwrap();
        let mut buf = [0u8; 5];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(of(&f).unwrap(), s, "a read leaves the stamp");
        // Same size, same bytes count: only the change time tells.
        f.write_all_at(b"HELLO", 0).unwrap();
        let after = of(&f).unwrap();
        assert_ne!(
            after, s,
            "an overwrite of the same length changes the stamp"
        );
        assert_eq!(after.size, 5);
        assert_eq!(of_path(&dir.path().join("f")).unwrap(), after);
    }
}
