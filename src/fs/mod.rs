//! The filesystem core: POSIX operations over the source bucket, the cache and
//! the uploader, written against no FUSE binding (`fuse.rs` is the thin
//! adapter). Every method returns a typed [`FsError`]; the adapter maps it to an
//! errno.
//!
//! What is true at any moment:
//! - A path exists if its newest local state says so: a node created here and
//!   not yet staged, else the newest queued operation on its key, else the bucket.
//! - A file's bytes are its working file when it has one (written here, or
//!   copied in to be written), else a clean copy of the object version in the
//!   bucket, downloaded on first read.
//! - close() (flush) and fsync() stage the working file: fsync it, journal a put,
//!   and only then return. From then on the file is shared with that put and the
//!   next write copies it first, so the staged bytes never change.
//!
//! `Core` is one type with its methods split by what they serve, each file
//! its own `impl Core` block: [`lookup`] (names to nodes), [`listing`]
//! (readdir), [`namespace`] (create and remove names), [`rename`], [`attrs`]
//! (setattr and xattrs), [`open`] (handles and working files), [`write`],
//! [`reading`], [`stage`] (flush, fsync, release: the durable steps) and
//! [`uploaded`] (what a finished upload teaches the nodes). This file holds
//! the state and the helpers they share.
//!
//! # Lock order
//! 1. A node's I/O lock ([`Core::io_lock`], a tokio mutex): held across
//!    awaits while a write, truncate or staging of that node runs.
//! 2. `Core`'s std mutexes (`inodes`, `handles`, `dir_handles`, `downloads`,
//!    `hidden_keys`, `known_dirs`, `resolving`): each a leaf among the others,
//!    never two at once and never held across an await.
//! 3. The uploader's and the cache's own locks, which may be taken under
//!    `inodes` (claiming a file, asking what is queued) and never the other
//!    way round: neither calls into `fs`; finished uploads come back over a
//!    channel ([`Core::on_uploaded`]).

mod attrs;
pub mod error;
pub mod fuse;
pub mod index;
pub mod inode;
mod known;
mod listing;
mod lookup;
mod merge;
#[cfg(test)]
mod model_test;
mod namespace;
mod open;
pub mod passthrough;
mod read;
mod reading;
mod rename;
#[cfg(test)]
mod scale_test;
mod stage;
mod uploaded;
mod write;

use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::cache::stamp;
use crate::cache::Cache;
use crate::config::{Config, FsyncDurability};
use crate::error::StoreError;
use crate::journal::{Journal, NewOp, Op, OpKind};
use crate::meta::{
    unix_secs, ObjectMeta, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK,
};
use crate::names;
use crate::regions::Fetch;
use crate::store::{GetRequest, ObjectStore};
use crate::uploader::{Completion, Uploader};
pub use error::FsError;

use index::{Fact, Indexer, CLOCK_SKEW_S};
use inode::{Inodes, Node, Working, ROOT};
use names::{check_key, check_name, child_path, dir_key, file_key, listed_entry, DIR_ATTRS};
use passthrough::{Backing, Mode, On, Want};

pub(crate) use read::Download;

/// Attributes as the adapter needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub(crate) ctime: SystemTime,
    pub(crate) rdev: u32,
    /// 0 once unlinked (an open file lives on without a name).
    pub(crate) nlink: u32,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DirEntry {
    pub ino: u64,
    pub name: String,
    pub mode: u32,
}

/// Changes asked by setattr.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    /// The handle of an ftruncate/fchmod, if any.
    pub fh: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
    /// Clear a regular file's set-user-ID bit, and its set-group-ID bit if
    /// group-executable, as Linux does on a chown, and on a write or
    /// truncate by a caller without CAP_FSETID (the kernel leaves it to
    /// regionfs: `FUSE_HANDLE_KILLPRIV_V2`). An explicit `mode` wins.
    pub kill_privs: bool,
}

/// Who is asking (for ownership of new files).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// An open file as the adapter replies it.
pub struct Opened {
    pub fh: u64,
    /// The kernel may keep the pages it caches for the inode.
    pub(crate) keep_cache: bool,
    /// Serve the open from this backing file (see [`passthrough`]); the
    /// adapter registers it with [`Core::backing_token`].
    pub backing: Option<Arc<std::fs::File>>,
}

struct Handle {
    ino: u64,
    write: bool,
    /// Served by passthrough (counted in the node's backing).
    pt: bool,
    /// A clean copy being read (pinned while open).
    download: Option<Arc<Download>>,
}

/// The mount-free filesystem.
pub struct Core {
    store: Arc<dyn ObjectStore>,
    uploader: Uploader,
    replicator: Option<crate::replicator::Replicator>,
    cache: Arc<Cache>,
    journal: Journal,
    prefix: String,
    fsync: FsyncDurability,
    ttl: Duration,
    default_file: ObjectMeta,
    default_dir: ObjectMeta,
    read_only: bool,
    /// `read.stream_unverified`: readers of a download take bytes before
    /// its checksum is checked.
    stream_unverified: bool,
    /// Directory attributes go to a `.regionfs-dir` object too, because the
    /// store drops metadata on `dir/` markers.
    dir_sidecar: bool,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Handle>>,
    /// Open directory handles: the listing taken when reading started at offset 0.
    dir_handles: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
    downloads: Mutex<HashMap<String, std::sync::Weak<Download>>>,
    hidden_keys: Mutex<HashSet<String>>,
    pub(crate) hidden_count: AtomicU64,
    /// Directories whose complete contents this mount knows (listed, or
    /// created here), for `mount.dir_ttl`.
    known_dirs: Mutex<known::KnownDirs>,
    /// Chooses the region a version's bytes are read from (None: always `store`).
    regions: Option<Arc<crate::regions::Regions>>,
    /// The kernel's writeback cache is on: the kernel owns a regular file's
    /// size and mtime while it caches the inode, sending mtime by SETATTR
    /// before the close that stages the data. Set by the adapter at init
    /// (off when passthrough is on).
    writeback: AtomicBool,
    /// `mount.writeback_cache`.
    writeback_wanted: bool,
    /// Passthrough may be asked of the kernel (configured, privileged, and
    /// the cache's filesystem has fine-grained change times).
    passthrough_allowed: AtomicBool,
    /// The connection has passthrough (see [`passthrough`]).
    passthrough: AtomicBool,
    /// Opens served by passthrough.
    pub passthrough_opens: prometheus_client::metrics::counter::Counter,
    /// One bucket lookup per path at a time: a lookup arriving while the
    /// attribute prefetch is asking about the same path waits for that answer
    /// instead of sending a second HEAD.
    resolving: Mutex<HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
    /// Bytes read() returned to the kernel (not counting its page cache hits).
    pub served_bytes: prometheus_client::metrics::counter::Counter,
    /// HEAD requests sent for a path's attributes.
    pub attribute_heads: prometheus_client::metrics::counter::Counter,
    /// Nodes beyond which idle clean files are let go.
    max_inodes: usize,
    /// Nodes in the table, as of the last trim.
    pub inode_count: prometheus_client::metrics::gauge::Gauge,
    /// Per-directory attribute indexes (None: `mount.attribute_index = false`).
    index: Option<Arc<Indexer>>,
}

/// Attribute HEADs in flight after a directory listing.
const PREFETCH: usize = 16;
/// A working file's writeback is started in blocks of this many bytes, as
/// writes complete them: the close's fdatasync of a file written
/// sequentially then has at most this much left to write (1 GiB `dd
/// conv=fsync`, paired runs: see docs/BENCHMARKS-history.md).
const WRITEBACK_STEP: u64 = 8 << 20;

/// The whole [`WRITEBACK_STEP`] blocks that a write of `offset..end`
/// completes (written sequentially, every byte of a file is in one of them
/// by its close but the tail), if any.
fn writeback_range(offset: u64, end: u64) -> Option<(u64, u64)> {
    let from = offset / WRITEBACK_STEP * WRITEBACK_STEP;
    let to = end / WRITEBACK_STEP * WRITEBACK_STEP;
    (to > from).then_some((from, to))
}

/// Seconds a node must have been unused before trimming lets it go. Every
/// path that hands a node to the kernel touches it, then counts the kernel's
/// reference without an await in between, so a node the kernel does not hold
/// yet is never dropped under a reply on its way.
const TRIM_IDLE_S: u32 = 2;

/// Files of a renamed directory moved at once.
const RENAME_PARALLEL: usize = 16;

/// How often the size of a file a passthrough writer is filling is looked
/// at, for its parts to go up as it grows (a 1 GiB `dd` takes about 1 s).
const GROWTH_POLL: Duration = Duration::from_millis(50);
/// The longest wait between two looks at a file that stopped growing.
const GROWTH_POLL_IDLE: Duration = Duration::from_secs(1);

/// What the core works over.
pub struct Backends {
    pub store: Arc<dyn ObjectStore>,
    pub regions: Option<Arc<crate::regions::Regions>>,
    pub uploader: Uploader,
    pub replicator: Option<crate::replicator::Replicator>,
    pub cache: Arc<Cache>,
    pub journal: Journal,
}

impl Core {
    /// `dir_sidecar`: the store drops metadata on `dir/` markers.
    pub fn new(config: &Config, backends: Backends, owner: Caller, dir_sidecar: bool) -> Arc<Core> {
        let Backends {
            store,
            regions,
            uploader,
            replicator,
            cache,
            journal,
        } = backends;
        let m = &config.mount;
        let default_file = ObjectMeta::new(S_IFREG | m.file_mode(), owner.uid, owner.gid);
        let default_dir = ObjectMeta::new(S_IFDIR | m.dir_mode(), owner.uid, owner.gid);
        Arc::new(Core {
            uploader,
            replicator,
            cache,
            journal,
            prefix: config.source.prefix.clone(),
            fsync: config.durability.fsync,
            ttl: m.attr_ttl(),
            inodes: Mutex::new(Inodes::new(default_dir.clone())),
            default_file,
            default_dir,
            read_only: config.read_only(),
            stream_unverified: config.read.stream_unverified,
            dir_sidecar,
            handles: Mutex::new(HashMap::new()),
            dir_handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            downloads: Mutex::new(HashMap::new()),
            hidden_keys: Mutex::new(HashSet::new()),
            hidden_count: AtomicU64::new(0),
            known_dirs: Mutex::new(known::KnownDirs::new(m.dir_ttl())),
            writeback: AtomicBool::new(m.writeback_cache()),
            writeback_wanted: m.writeback_cache(),
            passthrough_allowed: AtomicBool::new(false),
            passthrough: AtomicBool::new(false),
            passthrough_opens: Default::default(),
            regions,
            served_bytes: Default::default(),
            attribute_heads: Default::default(),
            resolving: Mutex::new(HashMap::new()),
            max_inodes: m.max_inodes(),
            inode_count: Default::default(),
            index: m.attribute_index().then(|| {
                Indexer::new(
                    store.clone(),
                    config.source.prefix.clone(),
                    !config.read_only(),
                )
            }),
            store,
        })
    }

    /// Whether to ask the kernel for its writeback cache (when passthrough
    /// is not on).
    pub(crate) fn writeback_cache(&self) -> bool {
        self.writeback_wanted
    }

    fn writeback(&self) -> bool {
        self.writeback.load(Ordering::Relaxed)
    }

    /// Lets the adapter ask the kernel for passthrough (the service checked
    /// the configuration, the privileges and the cache's filesystem).
    pub(crate) fn allow_passthrough(&self, allowed: bool) {
        self.passthrough_allowed.store(allowed, Ordering::Relaxed);
    }

    pub(crate) fn passthrough_allowed(&self) -> bool {
        self.passthrough_allowed.load(Ordering::Relaxed)
    }

    /// What the kernel agreed to at init: passthrough (which excludes the
    /// writeback cache), else the writeback cache if configured.
    pub(crate) fn set_kernel_caching(&self, passthrough: bool, writeback: bool) {
        self.passthrough.store(passthrough, Ordering::Relaxed);
        self.writeback
            .store(writeback && !passthrough, Ordering::Relaxed);
    }

    fn passthrough_on(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn uploader(&self) -> &Uploader {
        &self.uploader
    }

    fn attr_of(n: &Node) -> Attr {
        Attr {
            ino: n.ino,
            size: if n.is_dir() { 4096 } else { n.size },
            mode: n.meta.mode,
            uid: n.meta.uid,
            gid: n.meta.gid,
            atime: n.meta.atime(),
            mtime: n.meta.mtime(),
            ctime: n.ctime,
            rdev: n.meta.rdev,
            nlink: match (n.unlinked(), n.is_dir()) {
                (true, _) => 0,
                (false, true) => 2,
                (false, false) => 1,
            },
        }
    }

    fn node_attr(&self, ino: u64) -> Result<Attr, FsError> {
        let mut t = self.inodes.lock().unwrap();
        t.touch(ino);
        let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
        self.refresh(n);
        Ok(Self::attr_of(n))
    }

    /// Turns passthrough writes into the node's state: while passthrough
    /// writers have its working file open, a stamp that moved since the
    /// content was last known means the kernel wrote it (see [`passthrough`]).
    fn refresh(&self, n: &mut Node) {
        let (Some(w), Some(k)) = n.working_and_kernel() else {
            return;
        };
        if !k.writing() {
            return;
        }
        let Ok(s) = stamp::of(&w.file) else { return };
        if k.stamp == Some(s) {
            return;
        }
        k.stamp = Some(s);
        self.cache.account_data(&w.name, s.size);
        n.content.wrote();
        n.size = s.size;
        n.meta.set_mtime(s.mtime());
        n.ctime = SystemTime::now();
    }

    /// After regionfs changed a working file itself while passthrough
    /// writers have it open: its new stamp is known content.
    fn restamp(n: &mut Node) {
        let (Some(w), Some(k)) = n.working_and_kernel() else {
            return;
        };
        if k.writing() {
            k.stamp = stamp::of(&w.file).ok();
        }
    }

    /// The path of a directory node.
    fn dir_path(&self, ino: u64) -> Result<String, FsError> {
        let t = self.inodes.lock().unwrap();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        if !n.is_dir() {
            return Err(FsError::NotDir);
        }
        Ok(n.path.clone())
    }

    fn child(&self, parent: u64, name: &[u8]) -> Result<(String, String), FsError> {
        let name = check_name(name)?;
        let dir = self.dir_path(parent)?;
        let path = child_path(&dir, name);
        check_key(&file_key(&self.prefix, &path))?;
        check_key(&dir_key(&self.prefix, &path))?;
        Ok((dir, path))
    }

    /// The object (key, version) holding a clean node's bytes.
    fn content_of(&self, n: &Node) -> (String, Option<String>) {
        match &n.content_key {
            Some(k) => (k.clone(), n.version.clone()),
            None => (self.key(&n.path), n.version.clone()),
        }
    }

    fn key(&self, path: &str) -> String {
        file_key(&self.prefix, path)
    }

    fn dkey(&self, path: &str) -> String {
        dir_key(&self.prefix, path)
    }

    /// Counts a new kernel reference to the node and returns its attributes.
    pub(crate) fn remember(&self, ino: u64) -> Result<Attr, FsError> {
        let mut t = self.inodes.lock().unwrap();
        t.touch(ino);
        let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
        n.lookups += 1;
        self.refresh(n);
        Ok(Self::attr_of(n))
    }

    /// Lets go of idle clean files beyond `mount.max_inodes` (see
    /// [`Inodes::trim`]); returns the (parent inode, name) entries the kernel
    /// should drop.
    pub fn trim(&self) -> Vec<(u64, String)> {
        let mut t = self.inodes.lock().unwrap();
        let queued = |f: &str| self.uploader.reads(f);
        let asks = t.trim(self.max_inodes, TRIM_IDLE_S, queued);
        self.inode_count.set(t.nodes.len() as i64);
        asks
    }

    pub(crate) fn forget(&self, ino: u64, count: u64) {
        let queued = |f: &str| self.uploader.reads(f);
        self.inodes.lock().unwrap().forget(ino, count, queued);
    }

    /// Attributes come from memory: lookups refresh them from the bucket.
    pub(crate) fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        self.node_attr(ino)
    }

    /// What every write-side operation asks first: EROFS on a read-only
    /// mount, EIO once the local disk failed (`cache::failure`).
    fn check_writable(&self) -> Result<(), FsError> {
        if self.read_only {
            return Err(FsError::ReadOnly);
        }
        Ok(self.cache.fence().check()?)
    }

    /// `r`, having stopped the mount's writes if it says the local disk
    /// failed (`cache::failure`).
    fn noting_disk_failure<T>(&self, r: Result<T, FsError>) -> Result<T, FsError> {
        if let Err(e) = &r {
            if e.is_disk_failure() {
                self.cache.fence().trip(e.to_string());
            }
        }
        r
    }

    fn path_of(&self, ino: u64) -> Result<String, FsError> {
        let t = self.inodes.lock().unwrap();
        Ok(t.get(ino).ok_or(FsError::NotFound)?.path.clone())
    }

    /// The node's I/O lock (held across cache I/O and journal commits).
    fn io_lock(&self, ino: u64) -> Result<Arc<tokio::sync::Mutex<()>>, FsError> {
        let mut t = self.inodes.lock().unwrap();
        Ok(t.get_mut(ino).ok_or(FsError::NotFound)?.io())
    }

    fn handle_ino(&self, fh: u64) -> Result<u64, FsError> {
        self.handles
            .lock()
            .unwrap()
            .get(&fh)
            .map(|h| h.ino)
            .ok_or(FsError::BadHandle)
    }

    pub(crate) fn statfs(&self) -> (u64, u64) {
        self.cache.usage()
    }
}

/// The queued operations to merge into a LIST sent between two snapshots of
/// the queue: each key's newest. One queued before and finished while the
/// LIST ran may be missing from the listing, so it still counts (its effect
/// happened either way).
fn queued_across(before: Vec<Op>, after: Vec<Op>) -> Vec<Op> {
    let mut newest: BTreeMap<String, Op> = BTreeMap::new();
    for op in before.into_iter().chain(after) {
        if newest.get(&op.key).is_none_or(|o| o.seq <= op.seq) {
            newest.insert(op.key.clone(), op);
        }
    }
    newest.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::{writeback_range, WRITEBACK_STEP as STEP};

    #[test]
    fn writeback_starts_for_each_block_a_write_completes_and_never_past_its_end() {
        const M: u64 = 1 << 20;
        // 1 MiB sequential writes: nothing until one ends on a block's end.
        assert_eq!(writeback_range(0, M), None);
        assert_eq!(writeback_range(STEP - M, STEP), Some((0, STEP)));
        assert_eq!(writeback_range(STEP, STEP + M), None);
        // A write across a boundary completes the block it started in.
        assert_eq!(writeback_range(STEP - 4096, STEP + 4096), Some((0, STEP)));
        // One large write: every whole block below its end.
        assert_eq!(writeback_range(M, 3 * STEP + M), Some((0, 3 * STEP)));
        // Small writes inside a block, at any offset.
        assert_eq!(writeback_range(5 * STEP + 10, 5 * STEP + 4096), None);
    }
}
