//! Empty files made ahead of need: allocating an inode can cost far more than
//! the rest of a create (ext4 without a journal looks past every inode freed
//! in the last minutes, at up to a millisecond per create after a large
//! delete), so a background thread keeps some ready in `spare/` and a create
//! only renames one into `data/`; small files no longer needed are emptied
//! and kept as spares instead of deleted.

use super::*;

/// The spare files ready in `spare/`, and what the refill thread needs.
pub(super) struct Spares {
    pub(super) dir: PathBuf,
    pub(super) prefix: String,
    pub(super) next: AtomicU64,
    pub(super) ready: Mutex<Vec<String>>,
    pub(super) wanted: Condvar,
    pub(super) closed: AtomicBool,
}

/// Spare files kept ready; refilled when half are used.
pub(super) const SPARES: usize = 64;

/// Recycled files kept at most (beyond, they are deleted).
pub(super) const RECYCLED: usize = 4 * SPARES;

/// Files up to this size are recycled instead of deleted: those come by the
/// thousand; a large file's inode is a small part of its cost.
pub(super) const RECYCLE_MAX: u64 = 1 << 20;

impl Spares {
    /// The refill thread: runs at a lower priority than the file system's
    /// own work, and stops when the cache is dropped or `spare/` fails.
    pub(super) fn refill(self: Arc<Self>) {
        // SAFETY: plain syscalls on this thread's own id; no memory is shared.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
        }
        loop {
            {
                let mut ready = self.ready.lock().unwrap();
                while ready.len() >= SPARES / 2 && !self.closed.load(Ordering::Relaxed) {
                    ready = self.wanted.wait(ready).unwrap();
                }
                if self.closed.load(Ordering::Relaxed) {
                    return;
                }
            }
            loop {
                let missing = SPARES.saturating_sub(self.ready.lock().unwrap().len());
                if missing == 0 || self.closed.load(Ordering::Relaxed) {
                    break;
                }
                let name = self.new_name();
                let made = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(self.dir.join(&name));
                if let Err(e) = made {
                    // Creates fall back to making their own file, which
                    // reports the error where it matters.
                    tracing::debug!(error = %e, "cannot make spare cache files");
                    return;
                }
                self.ready.lock().unwrap().push(name);
            }
        }
    }

    pub(super) fn new_name(&self) -> String {
        format!(
            "{}-s{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Empties a file no longer needed and keeps it as a spare: freeing an
    /// inode and allocating another costs far more on ext4 without a journal
    /// (each allocation looks past every inode freed in the last minutes)
    /// than truncating and renaming. False: the caller deletes it.
    pub(super) fn recycle(&self, path: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        if self.ready.lock().unwrap().len() >= RECYCLED {
            return false;
        }
        let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: a NUL-terminated path that outlives the call.
        if unsafe { libc::truncate(c.as_ptr(), 0) } != 0 {
            return false;
        }
        let name = self.new_name();
        if std::fs::rename(path, self.dir.join(&name)).is_err() {
            return false;
        }
        self.ready.lock().unwrap().push(name);
        true
    }

    pub(super) fn take(&self) -> Option<String> {
        let mut ready = self.ready.lock().unwrap();
        let name = ready.pop();
        if ready.len() < SPARES / 2 {
            self.wanted.notify_one();
        }
        name
    }
}
