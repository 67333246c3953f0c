//! The local data files: working and staged copies of written files (`data/`),
//! clean copies of downloaded objects (`clean/`, LRU by bytes), space accounting
//! with back-pressure, the one-mount-per-directory lock, and start-up recovery.
//!
//! Invariants:
//! - A file in `data/` is either the working copy of an open or dirty file, or
//!   the content of a journaled put (then it is never written again: a writer
//!   copies it first). Files in `data/` are never evicted.
//! - A file in `clean/` is an exact copy of one object version; it may be
//!   evicted (LRU) whenever it is not open. Losing it loses nothing. A
//!   download registers its copy before the bytes arrive; only a finished one
//!   (or an uploaded file made clean) is whole, and only a whole copy is
//!   opened as one. Pins are per copy: a newer version taking the key
//!   unlinks an open old copy and leaves its readers' pins with it.
//! - `data/` files the journal does not know after a crash held unacknowledged
//!   writes; they are moved to `quarantine/` (never deleted silently).
//! - When data + clean bytes would exceed `max_size`, or clean files would be
//!   more than `max_clean_files` (each costs memory here), clean files are evicted;
//!   when only dirty data is left, writers wait for uploads to free space and
//!   get ENOSPC after `space_wait` without progress.
//! - `spare/` holds empty files made ahead of need ([`Spares`]), and small
//!   files no longer needed, truncated to nothing (recycled rather than
//!   deleted); they hold no data and are deleted at start. A file is recycled
//!   only where it would otherwise be deleted, so nothing still reading it
//!   (a queued upload, an open clean copy) can see it emptied.
//! - Large writes to `data/` files skip the page cache ([`direct`]); that
//!   changes when their bytes reach the disk, never what a sync promises.
//! - With passthrough (`fs::passthrough`) the kernel writes working files
//!   itself: their sizes are recorded after the fact ([`Cache::account_data`])
//!   and such writers start only while there is room
//!   ([`Cache::room_for_unmetered_writer`]). A clean copy the kernel reads
//!   from is pinned like any open one; a writer joining its readers takes it
//!   over as a working file in place ([`Cache::adopt_clean_in_place`]), and
//!   a read of a clean copy for a replica is a stable read ([`stamp`]), so
//!   it never passes off a file being written as a copy of a version.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

pub mod boot;
pub mod direct;
pub mod failure;
mod spares;
pub(crate) mod stamp;

use spares::{Spares, RECYCLE_MAX};

/// Why the cache cannot serve a request.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache directory {dir} is in use by another regionfs mount{}: one mount per cache dir", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error("cache is full of data not yet uploaded ({used} of {max} bytes) and no upload made progress for {waited:?}")]
    NoSpace {
        used: u64,
        max: u64,
        waited: Duration,
    },
    #[error("cache file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the local disk failed ({cause}): this mount accepts no writes until it is remounted")]
    DiskFailed { cause: String },
}

impl CacheError {
    pub(crate) fn io(path: &Path, source: io::Error) -> CacheError {
        CacheError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

struct CleanEntry {
    name: String,
    /// Identifies the object version the copy holds (version id or etag).
    tag: String,
    size: u64,
    open: u32,
    /// Holds the whole version: made from an upload, or a download that
    /// finished. A download under way is registered before its bytes arrive.
    complete: bool,
}

/// Up to `len` bytes of `file` from `offset` (fewer only at its end), read
/// into a buffer that is not zeroed first: for a read's reply the zeroing
/// was 2-4 % of the daemon's CPU in a cold 1 GiB read (perf, 2026-12-03),
/// and every byte is overwritten before anything sees it.
pub(crate) fn read_at_most(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let filled = buf.len();
        let spare = buf.spare_capacity_mut();
        // SAFETY: pread writes at most `len - filled` bytes into the spare
        // capacity, which is at least that long, and `set_len` below covers
        // only the bytes it reports written.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                len - filled,
                (offset + filled as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        // SAFETY: the kernel initialized these `n` bytes.
        unsafe { buf.set_len(filled + n as usize) };
    }
    Ok(buf)
}

impl CleanEntry {
    /// Whether this is a whole copy of version `tag`.
    fn holds(&self, tag: &str) -> bool {
        self.tag == tag && self.complete
    }
}

fn is_copy(e: &CleanEntry, path: &Path) -> bool {
    path.file_name() == Some(std::ffi::OsStr::new(&e.name))
}

struct Space {
    /// Bytes per `data/` file.
    data: HashMap<String, u64>,
    data_total: u64,
    /// key -> clean copy, least recently used first.
    clean: lru::LruCache<String, CleanEntry>,
    clean_total: u64,
    last_progress: Instant,
    /// Data files whose directory entry is known durable.
    entry_synced: HashSet<String>,
}

pub struct Cache {
    root: PathBuf,
    spares: Arc<Spares>,
    max_size: u64,
    max_clean_files: std::sync::atomic::AtomicUsize,
    space_wait: Duration,
    next_id: AtomicU64,
    prefix: String,
    space: Mutex<Space>,
    freed: Notify,
    fence: failure::Fence,
    _lock: File,
}

impl Drop for Cache {
    fn drop(&mut self) {
        // Under the lock: the refill thread cannot be between its check and
        // its wait.
        let _ready = self.spares.ready.lock().unwrap();
        self.spares.closed.store(true, Ordering::Relaxed);
        self.spares.wanted.notify_all();
    }
}

/// Takes group and others' permissions away from `path` if it has any
/// (`mode` is what it gets then).
pub(crate) fn owner_only(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let now = std::fs::metadata(path)?.permissions().mode();
    if now & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

impl Cache {
    /// Opens the cache directory (creating it 0700), taking its lock.
    pub fn open(
        root: &Path,
        max_size: u64,
        space_wait: Duration,
    ) -> Result<Arc<Cache>, CacheError> {
        for d in ["", "data", "clean", "quarantine", "spare"] {
            let p = root.join(d);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(|e| CacheError::io(&p, e))?;
        }
        // A directory made beforehand (by a package, by hand) may let others
        // in: the cache holds the files' bytes, so only its owner may enter.
        owner_only(root, 0o700).map_err(|e| CacheError::io(root, e))?;
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| CacheError::io(&lock_path, e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on a descriptor `lock` keeps open.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let pid = std::fs::read_to_string(&lock_path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            return Err(CacheError::Locked {
                dir: root.to_path_buf(),
                pid,
            });
        }
        let _ = lock.set_len(0);
        let _ = std::fs::write(&lock_path, std::process::id().to_string());
        // Clean copies from an earlier run may be stale: drop them all, off the
        // start-up path (a rename, then a background delete).
        let clean = root.join("clean");
        let old = root.join(format!("clean.old.{}", std::process::id()));
        if std::fs::rename(&clean, &old).is_ok() {
            let _ = std::fs::DirBuilder::new().mode(0o700).create(&clean);
            std::thread::spawn(move || std::fs::remove_dir_all(old));
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let spare_dir = root.join("spare");
        if let Ok(left) = std::fs::read_dir(&spare_dir) {
            for e in left.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let spares = Arc::new(Spares {
            dir: spare_dir,
            prefix: format!("{nanos:x}"),
            next: AtomicU64::new(0),
            ready: Mutex::new(Vec::new()),
            wanted: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        let refill = spares.clone();
        std::thread::Builder::new()
            .name("regionfs-spares".into())
            .spawn(move || refill.refill())
            .map_err(|e| CacheError::io(root, e))?;
        Ok(Arc::new(Cache {
            root: root.to_path_buf(),
            spares,
            max_size,
            max_clean_files: std::sync::atomic::AtomicUsize::new(usize::MAX),
            space_wait,
            next_id: AtomicU64::new(0),
            prefix: format!("{nanos:x}"),
            space: Mutex::new(Space {
                data: HashMap::new(),
                data_total: 0,
                clean: lru::LruCache::unbounded(),
                clean_total: 0,
                last_progress: Instant::now(),
                entry_synced: HashSet::new(),
            }),
            freed: Notify::new(),
            fence: failure::Fence::new(root),
            _lock: lock,
        }))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the local disk failed, and the fault hook of its file layer.
    pub fn fence(&self) -> &failure::Fence {
        &self.fence
    }

    /// Writes `data` at `offset` of data file `name` (open as `file`) through
    /// `direct`; a failure of the disk trips the [`failure::Fence`].
    pub(crate) fn write_data(
        &self,
        name: &str,
        direct: &direct::Direct,
        file: &File,
        data: &[u8],
        offset: u64,
    ) -> Result<(), CacheError> {
        self.fence
            .injected()
            .and_then(|()| direct.write_all_at(file, data, offset))
            .map_err(|e| self.fence.io(&self.data_path(name), e))
    }

    /// At most `n` clean copies are kept (oldest evicted first).
    pub(crate) fn limit_clean_files(&self, n: usize) {
        self.max_clean_files.store(n, Ordering::Relaxed);
        let mut s = self.space.lock().unwrap();
        self.evict_clean(&mut s, 0);
    }

    #[cfg(test)]
    /// Clean copies held.
    pub(crate) fn clean_files(&self) -> usize {
        self.space.lock().unwrap().clean.len()
    }

    pub(crate) fn journal_path(&self) -> PathBuf {
        self.root.join("journal.db")
    }

    pub(crate) fn data_path(&self, name: &str) -> PathBuf {
        self.root.join("data").join(name)
    }

    fn clean_path(&self, name: &str) -> PathBuf {
        self.root.join("clean").join(name)
    }

    fn new_name(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Creates an empty working file in `data/` (a spare one when ready).
    pub(crate) fn create_data_file(&self) -> Result<String, CacheError> {
        if let Some(name) = self.spares.take() {
            if std::fs::rename(self.spares.dir.join(&name), self.data_path(&name)).is_ok() {
                self.space.lock().unwrap().data.insert(name.clone(), 0);
                return Ok(name);
            }
        }
        let name = self.new_name();
        let path = self.data_path(&name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| CacheError::io(&path, e))?;
        self.space.lock().unwrap().data.insert(name.clone(), 0);
        Ok(name)
    }

    /// Copies a data file (one that a staged put references) into a new working
    /// file, so the staged content stays exactly as acknowledged.
    pub(crate) fn copy_data_file(&self, from: &str) -> Result<String, CacheError> {
        let name = self.new_name();
        let src = self.data_path(from);
        let dst = self.data_path(&name);
        let n = std::fs::copy(&src, &dst).map_err(|e| CacheError::io(&src, e))?;
        let mut s = self.space.lock().unwrap();
        s.data.insert(name.clone(), n);
        s.data_total += n;
        Ok(name)
    }

    /// Moves a clean copy into `data/` as a working file (opening a clean file
    /// for write).
    pub(crate) fn adopt_clean(&self, key: &str, tag: &str) -> Result<Option<String>, CacheError> {
        let entry = {
            let mut s = self.space.lock().unwrap();
            if tag.is_empty() || s.clean.peek(key).is_some_and(|e| e.tag != tag) {
                return Ok(None);
            }
            match s.clean.pop(key) {
                Some(e) => {
                    s.clean_total -= e.size;
                    e
                }
                None => return Ok(None),
            }
        };
        let name = self.new_name();
        let src = self.clean_path(&entry.name);
        let dst = self.data_path(&name);
        if entry.open > 0 {
            std::fs::copy(&src, &dst).map_err(|e| CacheError::io(&src, e))?;
        } else {
            std::fs::rename(&src, &dst).map_err(|e| CacheError::io(&src, e))?;
        }
        let mut s = self.space.lock().unwrap();
        s.data.insert(name.clone(), entry.size);
        s.data_total += entry.size;
        Ok(Some(name))
    }

    /// Makes the clean copy at `path` (pinned, open by the kernel as a
    /// passthrough backing file) a working file in `data/`, in place: a
    /// writer joins the kernel's readers of it (see `fs::passthrough`).
    /// `Ok(Some(name))` when it still was `key`'s copy at version `tag` and
    /// moved; `Ok(None)` when it no longer is (replaced or dropped, maybe
    /// unlinked): the caller links `file` into `data/` itself
    /// ([`Cache::link_data_file`]) and refills it.
    pub(crate) fn adopt_clean_in_place(
        &self,
        key: &str,
        tag: &str,
        path: &Path,
    ) -> Result<Option<String>, CacheError> {
        let mut s = self.space.lock().unwrap();
        if !s
            .clean
            .peek(key)
            .is_some_and(|e| is_copy(e, path) && e.holds(tag))
        {
            return Ok(None);
        }
        let name = self.new_name();
        std::fs::rename(path, self.data_path(&name)).map_err(|e| CacheError::io(path, e))?;
        let e = s.clean.pop(key).expect("peeked above");
        s.clean_total -= e.size;
        s.data.insert(name.clone(), e.size);
        s.data_total += e.size;
        Ok(Some(name))
    }

    /// Gives the open `file` (a backing file whose name is gone or not its
    /// own) a new name in `data/`, as a working file of `size` bytes.
    pub(crate) fn link_data_file(&self, file: &File, size: u64) -> Result<String, CacheError> {
        use std::os::fd::AsRawFd;
        let name = self.new_name();
        let dst = self.data_path(&name);
        let src = format!("/proc/self/fd/{}", file.as_raw_fd());
        let (c_src, c_dst) = (
            std::ffi::CString::new(src.clone()).expect("no NUL"),
            std::ffi::CString::new(dst.as_os_str().as_encoded_bytes())
                .map_err(|_| CacheError::io(&dst, io::Error::from(io::ErrorKind::InvalidInput)))?,
        );
        // SAFETY: both are NUL-terminated paths that outlive the call.
        let r = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                c_src.as_ptr(),
                libc::AT_FDCWD,
                c_dst.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if r != 0 {
            return Err(CacheError::io(Path::new(&src), io::Error::last_os_error()));
        }
        let mut s = self.space.lock().unwrap();
        s.data.insert(name.clone(), size);
        s.data_total += size;
        Ok(name)
    }

    /// Whether a writer regionfs cannot make wait (passthrough) may start:
    /// data not yet uploaded fills less than three quarters of `max_size`.
    pub(crate) fn room_for_unmetered_writer(&self) -> bool {
        self.space.lock().unwrap().data_total < self.max_size / 4 * 3
    }

    /// Records a data file's size after the kernel wrote it directly
    /// (passthrough): the bytes are on the disk already, so this never
    /// waits or refuses; it only evicts clean copies to stay within
    /// `max_size` where it can.
    pub(crate) fn account_data(&self, name: &str, size: u64) {
        let mut s = self.space.lock().unwrap();
        let old = s.data.get(name).copied().unwrap_or(0);
        self.evict_clean(&mut s, size.saturating_sub(old));
        s.data_total = s.data_total + size - old;
        s.data.insert(name.to_string(), size);
    }

    /// Records the new size of a data file, waiting for space first when it grows
    /// past `max_size` (back-pressure), and failing with NoSpace after
    /// `space_wait` without upload progress.
    pub(crate) async fn resize_data(&self, name: &str, new_size: u64) -> Result<(), CacheError> {
        loop {
            let notified = self.freed.notified();
            {
                let mut s = self.space.lock().unwrap();
                if self.resize_if_room(&mut s, name, new_size) {
                    return Ok(());
                }
                let waited = s.last_progress.elapsed();
                if waited >= self.space_wait {
                    return Err(CacheError::NoSpace {
                        used: s.data_total,
                        max: self.max_size,
                        waited,
                    });
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
        }
    }

    /// [`Cache::resize_data`] when it need not wait: false (and nothing
    /// recorded) when the growth does not fit.
    pub(crate) fn try_resize_data(&self, name: &str, new_size: u64) -> bool {
        let mut s = self.space.lock().unwrap();
        self.resize_if_room(&mut s, name, new_size)
    }

    fn resize_if_room(&self, s: &mut Space, name: &str, new_size: u64) -> bool {
        let old = s.data.get(name).copied().unwrap_or(0);
        let grow = new_size.saturating_sub(old);
        if grow == 0 || s.data_total + grow <= self.max_size {
            self.evict_clean(s, grow);
            s.data_total = s.data_total + new_size - old;
            s.data.insert(name.to_string(), new_size);
            return true;
        }
        false
    }

    /// Evicts clean copies (oldest first, not open) until `need` more bytes
    /// fit and the count is within `max_clean_files`.
    fn evict_clean(&self, s: &mut Space, need: u64) {
        let mut skipped = Vec::new();
        let max_files = self.max_clean_files.load(Ordering::Relaxed);
        while s.data_total + s.clean_total + need > self.max_size
            || s.clean.len() + skipped.len() > max_files
        {
            let Some((key, e)) = s.clean.pop_lru() else {
                break;
            };
            if e.open > 0 {
                skipped.push((key, e));
                continue;
            }
            s.clean_total -= e.size;
            self.discard(&self.clean_path(&e.name), e.size);
        }
        for (k, e) in skipped {
            s.clean.put(k, e);
        }
    }

    /// Deletes (or recycles) a file that nothing uses any more.
    fn discard(&self, path: &Path, size: u64) {
        if size > RECYCLE_MAX || !self.spares.recycle(path) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// A data file is no longer needed (uploaded and superseded, or unlinked).
    pub(crate) fn remove_data(&self, name: &str) {
        let mut s = self.space.lock().unwrap();
        s.entry_synced.remove(name);
        // Unknown size: not recycled.
        let size = s.data.remove(name).unwrap_or(u64::MAX);
        if size != u64::MAX {
            s.data_total -= size;
        }
        s.last_progress = Instant::now();
        drop(s);
        // Recorded sizes are the files' own: space is reserved before a file grows.
        self.discard(&self.data_path(name), size);
        self.freed.notify_waiters();
    }

    /// An upload made progress: writers waiting for space keep waiting.
    pub(crate) fn note_progress(&self) {
        self.space.lock().unwrap().last_progress = Instant::now();
        self.freed.notify_waiters();
    }

    /// Turns an uploaded data file into the clean copy of `key` at `tag`.
    pub(crate) fn make_clean(&self, name: &str, key: &str, tag: &str) {
        let name_clean = self.new_name();
        let ok = std::fs::rename(self.data_path(name), self.clean_path(&name_clean)).is_ok();
        let mut s = self.space.lock().unwrap();
        s.entry_synced.remove(name);
        let size = s.data.remove(name).unwrap_or(0);
        s.data_total -= size;
        s.last_progress = Instant::now();
        if ok {
            self.insert_clean(&mut s, key, tag, name_clean, size, true);
        }
        drop(s);
        self.freed.notify_waiters();
    }

    fn insert_clean(
        &self,
        s: &mut Space,
        key: &str,
        tag: &str,
        name: String,
        size: u64,
        complete: bool,
    ) {
        if let Some(old) = s.clean.pop(key) {
            s.clean_total -= old.size;
            if old.open == 0 {
                self.discard(&self.clean_path(&old.name), old.size);
            } else {
                let _ = std::fs::remove_file(self.clean_path(&old.name));
            }
        }
        s.clean_total += size;
        s.clean.put(
            key.to_string(),
            CleanEntry {
                name,
                tag: tag.to_string(),
                size,
                open: 0,
                complete,
            },
        );
        self.evict_clean(s, 0);
    }

    /// Whether a whole clean copy of `key` at version `tag` is here (not pinned).
    pub(crate) fn has_clean(&self, key: &str, tag: &str) -> bool {
        let s = self.space.lock().unwrap();
        s.clean.peek(key).is_some_and(|e| e.holds(tag))
    }

    /// Opens the clean copy of `key` if it holds all of version `tag`; pins
    /// it while open (until [`Cache::close_clean`] with the same path).
    pub(crate) fn open_clean(&self, key: &str, tag: &str) -> Option<(PathBuf, u64)> {
        let mut s = self.space.lock().unwrap();
        let e = s.clean.peek_mut(key).filter(|e| e.holds(tag))?;
        e.open += 1;
        let out = (self.clean_path(&e.name), e.size);
        s.clean.promote(key);
        Some(out)
    }

    /// Unpins the clean copy of `key` at `path`. Only that copy: once a newer
    /// one took its place (the old file was unlinked then, being open), the
    /// newer one's pins are its own readers'.
    pub(crate) fn close_clean(&self, key: &str, path: &Path) {
        let mut s = self.space.lock().unwrap();
        if let Some(e) = s.clean.peek_mut(key).filter(|e| is_copy(e, path)) {
            e.open = e.open.saturating_sub(1);
        }
    }

    /// The download into the clean copy of `key` at `path` has every byte.
    pub(crate) fn clean_complete(&self, key: &str, path: &Path) {
        let mut s = self.space.lock().unwrap();
        if let Some(e) = s.clean.peek_mut(key).filter(|e| is_copy(e, path)) {
            e.complete = true;
        }
    }

    /// The bytes of the clean copy of `key` if it holds all of version `tag`
    /// and has `size` bytes; `None` otherwise (evicted, replaced by another
    /// version, still downloading, or unreadable). Pinned while read, so it
    /// is neither evicted nor recycled (emptied) under the read.
    pub(crate) fn read_clean(&self, key: &str, tag: &str, size: u64) -> Option<Vec<u8>> {
        if tag.is_empty() {
            // Names no version.
            return None;
        }
        let (path, _) = self.open_clean(key, tag)?;
        // A stable read: a writer taking the copy over meanwhile (see
        // `fs::passthrough`) makes it no copy of `tag` any more.
        let read = || -> io::Result<Option<Vec<u8>>> {
            let mut f = File::open(&path)?;
            let before = stamp::of(&f)?;
            let mut bytes = Vec::with_capacity(size as usize);
            io::Read::read_to_end(&mut f, &mut bytes)?;
            Ok((stamp::of(&f)? == before).then_some(bytes))
        };
        let bytes = read().ok().flatten();
        self.close_clean(key, &path);
        bytes.filter(|b| b.len() as u64 == size)
    }

    /// Drops the clean copy of `key` (the object changed or was deleted).
    pub(crate) fn forget_clean(&self, key: &str) {
        self.forget_clean_if(key, |_| true);
    }

    /// Drops the clean copy of `key` at `path` (its download failed), not a
    /// newer one that took its place.
    pub(crate) fn forget_clean_copy(&self, key: &str, path: &Path) {
        self.forget_clean_if(key, |e| is_copy(e, path));
    }

    fn forget_clean_if(&self, key: &str, which: impl Fn(&CleanEntry) -> bool) {
        let mut s = self.space.lock().unwrap();
        if !s.clean.peek(key).is_some_and(which) {
            return;
        }
        if let Some(e) = s.clean.pop(key) {
            s.clean_total -= e.size;
            if e.open == 0 {
                self.discard(&self.clean_path(&e.name), e.size);
            }
        }
    }

    /// A new file in `clean/` to download `key` into; registered (and pinned
    /// once, for the downloader) right away so readers can share it.
    pub(crate) fn begin_clean(
        &self,
        key: &str,
        tag: &str,
        size: u64,
    ) -> Result<(PathBuf, File), CacheError> {
        let name = self.new_name();
        let path = self.clean_path(&name);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| CacheError::io(&path, e))?;
        let mut s = self.space.lock().unwrap();
        self.evict_clean(&mut s, size);
        self.insert_clean(&mut s, key, tag, name, size, false);
        if let Some(e) = s.clean.peek_mut(key) {
            e.open += 1;
        }
        Ok((path, f))
    }

    /// Bytes used: (data not yet uploaded or open for write, clean copies).
    pub fn usage(&self) -> (u64, u64) {
        let s = self.space.lock().unwrap();
        (s.data_total, s.clean_total)
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// Starts writing `from..to` of a data file to disk now, without waiting.
    /// Only a head start for the fdatasync at staging, which alone makes the
    /// bytes durable: a large file's close then waits for its last few
    /// megabytes instead of all of it. A failure only loses the head start.
    pub(crate) fn start_writeback(file: &File, from: u64, to: u64) {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on an open descriptor; no memory is shared.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                from as libc::off64_t,
                to.saturating_sub(from) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }

    /// Makes a data file (open as `file`) and its directory entry durable. The
    /// directory is fsynced once per file: its entry does not change after.
    pub fn sync_data(&self, name: &str, file: &File) -> Result<(), CacheError> {
        let path = self.data_path(name);
        self.fence
            .injected()
            .and_then(|()| file.sync_data())
            .map_err(|e| self.fence.io(&path, e))?;
        if self.space.lock().unwrap().entry_synced.contains(name) {
            return Ok(());
        }
        let dir = self.root.join("data");
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.fence.io(&dir, e))?;
        self.space
            .lock()
            .unwrap()
            .entry_synced
            .insert(name.to_string());
        Ok(())
    }

    /// Recovery: registers the data files the journal still needs, and moves
    /// every other `data/` file to `quarantine/` with a warning.
    pub(crate) fn recover(&self, needed: &HashSet<String>) -> Result<Vec<String>, CacheError> {
        let dir = self.root.join("data");
        let mut quarantined = Vec::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| CacheError::io(&dir, e))?;
        let mut s = self.space.lock().unwrap();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if needed.contains(&name) {
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                s.entry_synced.insert(name.clone());
                s.data.insert(name, size);
                s.data_total += size;
            } else {
                let to = self.root.join("quarantine").join(&name);
                let _ = std::fs::rename(e.path(), &to);
                quarantined.push(name);
            }
        }
        Ok(quarantined)
    }
}

#[cfg(test)]
mod tests;
