//! Whether the machine restarted since this cache dir was last mounted.
//!
//! Small staged files are made durable by the journal alone: their cache
//! copies are written but never synced (see `journal`, step 2). A crash of
//! the process leaves those copies whole in the kernel's page cache; only a
//! crash of the machine (power loss, kernel panic, reset) can tear them. So a
//! start rewrites them from the journal only when the machine booted since the
//! last mount of this cache dir recorded its boot: a `kill -9` costs a remount
//! no pass over the pending files, a power loss still gets every one restored.
//!
//! The record is written only after the restore is done, and it names the
//! current boot, which no later boot shares: a restore cut short by another
//! crash of the machine leaves an older record, so the next start restores
//! again. A record that cannot be read (missing, torn, no boot id on this
//! system) counts as a restart.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Linux's random id of the running boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

fn record(root: &Path) -> PathBuf {
    root.join("boot")
}

/// The id of the running boot, if the system gives one.
fn current() -> Option<String> {
    let id = std::fs::read_to_string(BOOT_ID).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// True when the last mount of the cache dir at `root` ran in this boot.
pub(crate) fn unchanged(root: &Path) -> bool {
    match (current(), std::fs::read_to_string(record(root))) {
        (Some(now), Ok(then)) => then.trim() == now,
        _ => false,
    }
}

/// Records the running boot (after the restore it vouches for).
pub fn note(root: &Path) -> std::io::Result<()> {
    let Some(id) = current() else {
        return Ok(());
    };
    let tmp = root.join("boot.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{id}\n").as_bytes())?;
    std::fs::rename(&tmp, record(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_dir_is_vouched_for_only_in_the_boot_that_recorded_it() {
        let d = tempfile::tempdir().unwrap();
        assert!(!unchanged(d.path()), "never recorded: restore");
        note(d.path()).unwrap();
        assert_eq!(unchanged(d.path()), current().is_some());
        std::fs::write(record(d.path()), "another-boot\n").unwrap();
        assert!(!unchanged(d.path()), "recorded in another boot: restore");
        std::fs::write(record(d.path()), "").unwrap();
        assert!(!unchanged(d.path()), "a torn record: restore");
    }
}
