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

pub mod fuse;
pub mod index;
pub mod inode;
mod known;
#[cfg(test)]
mod model_test;
pub mod names;
pub mod passthrough;
mod read;
#[cfg(test)]
mod scale_test;

use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::cache::stamp;
use crate::cache::Cache;
use crate::config::{Config, FsyncDurability};
use crate::error::{FsError, StoreError};
use crate::journal::{Journal, NewOp, Op, OpKind};
use crate::meta::{
    unix_secs, ObjectMeta, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK,
};
use crate::regions::Fetch;
use crate::store::{GetRequest, ObjectStore};
use crate::uploader::{Completion, Uploader};

use index::{Fact, Indexer, CLOCK_SKEW_S};
use inode::{Inodes, Node, Working, ROOT};
use names::{check_key, check_name, child_path, dir_key, file_key, listed_entry, DIR_ATTRS};
use passthrough::{Backing, Mode, On, Want};

pub use read::Download;

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
    pub ctime: SystemTime,
    pub rdev: u32,
    /// 0 once unlinked (an open file lives on without a name).
    pub nlink: u32,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq)]
pub struct DirEntry {
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
    pub keep_cache: bool,
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
    pub hidden_count: AtomicU64,
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
    pub fn writeback_cache(&self) -> bool {
        self.writeback_wanted
    }

    fn writeback(&self) -> bool {
        self.writeback.load(Ordering::Relaxed)
    }

    /// Lets the adapter ask the kernel for passthrough (the service checked
    /// the configuration, the privileges and the cache's filesystem).
    pub fn allow_passthrough(&self, allowed: bool) {
        self.passthrough_allowed.store(allowed, Ordering::Relaxed);
    }

    pub fn passthrough_allowed(&self) -> bool {
        self.passthrough_allowed.load(Ordering::Relaxed)
    }

    /// What the kernel agreed to at init: passthrough (which excludes the
    /// writeback cache), else the writeback cache if configured.
    pub fn set_kernel_caching(&self, passthrough: bool, writeback: bool) {
        self.passthrough.store(passthrough, Ordering::Relaxed);
        self.writeback
            .store(writeback && !passthrough, Ordering::Relaxed);
    }

    fn passthrough_on(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    pub fn ttl(&self) -> Duration {
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
            nlink: match (n.unlinked, n.is_dir()) {
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
        let Some(w) = &n.working else { return };
        let Some(k) = n.kernel.as_deref_mut().filter(|k| k.writing()) else {
            return;
        };
        let Ok(s) = stamp::of(&w.file) else { return };
        if k.stamp == Some(s) {
            return;
        }
        k.stamp = Some(s);
        self.cache.account_data(&w.name, s.size);
        n.dirty = true;
        n.written = true;
        n.size = s.size;
        n.meta.set_mtime(s.mtime());
        n.ctime = SystemTime::now();
    }

    /// After regionfs changed a working file itself while passthrough
    /// writers have it open: its new stamp is known content.
    fn restamp(n: &mut Node) {
        let (Some(w), Some(k)) = (&n.working, n.kernel.as_deref_mut()) else {
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
    pub fn remember(&self, ino: u64) -> Result<Attr, FsError> {
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
        let asks = t.trim(self.max_inodes, TRIM_IDLE_S);
        self.inode_count.set(t.nodes.len() as i64);
        asks
    }

    pub fn forget(&self, ino: u64, count: u64) {
        self.inodes.lock().unwrap().forget(ino, count);
    }

    // ----- namespace -----

    /// Finds `name` in `parent`; returns its attributes (the caller calls
    /// [`Core::remember`] when it hands the entry to the kernel).
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        let (_, path) = self.child(parent, name)?;
        let ino = self.resolve(&path).await?;
        self.node_attr(ino)
    }

    /// A lookup answered from memory: what [`Core::lookup`] would answer
    /// without a request (the node is local, or its attributes are fresh).
    /// `None`: the lookup has to ask the bucket (or fail).
    pub fn lookup_cached(&self, parent: u64, name: &[u8]) -> Option<Attr> {
        let (_, path) = self.child(parent, name).ok()?;
        if self.known_absent(&path) {
            return None;
        }
        let mut t = self.inodes.lock().unwrap();
        let ino = t.lookup_path(&path)?;
        t.touch(ino);
        let n = t.get_mut(ino)?;
        self.refresh(n);
        let fresh = n.fetched.is_some_and(|f| f.elapsed() < self.ttl);
        let local = n.local_only || n.working.is_some() || n.dirty;
        (!n.unlinked && (local || fresh)).then(|| Self::attr_of(n))
    }

    /// `request` to the bucket names are looked up in, given up on a bucket
    /// that hangs as [`crate::regions::Regions::patiently`] says (a mount
    /// without regions waits as long as the S3 client does). `what` names
    /// the request in the error.
    async fn ask<T, E: From<StoreError>>(
        &self,
        what: &str,
        request: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        match &self.regions {
            Some(r) => r.patiently(r.first(), what, request).await,
            None => request.await,
        }
    }

    /// The node at `path`, consulting local state first and the bucket last.
    /// A bucket that hangs is given up (see [`Core::ask`]) and answered like
    /// one that refused: from local state.
    async fn resolve(&self, path: &str) -> Result<u64, FsError> {
        let answer = self
            .ask(&format!("a lookup of `{path}`"), self.resolve_remote(path))
            .await;
        match answer {
            Err(FsError::Store(e)) if !e.is_permanent() => {
                // The source is unreachable: answer from what this mount knows,
                // so that new files can still be created (and uploaded later).
                tracing::warn!(path, error = %e, "source unreachable: answering from local state");
                let t = self.inodes.lock().unwrap();
                t.lookup_path(path)
                    .filter(|i| !t.nodes[i].unlinked)
                    .ok_or(FsError::NotFound)
            }
            other => other,
        }
    }

    /// Records that `name` now exists (or not) in the known directory `dir`.
    fn note_entry(&self, dir: &str, name: &str, exists: bool) {
        self.known_dirs.lock().unwrap().note(dir, name, exists);
    }

    /// Remembers the complete contents of `dir` as of `at`.
    fn know_dir(&self, dir: String, at: Instant, names: HashSet<String>) {
        self.known_dirs.lock().unwrap().know(dir, at, names);
    }

    fn note_path(&self, path: &str, exists: bool) {
        self.note_entry(names::parent_of(path), names::name_of(path), exists);
    }

    /// Whether a listing of `path`'s parent taken within `attr_ttl` showed it
    /// as a directory (a common prefix, and no object of that name): then a
    /// HEAD of the name and a listing of the prefix would tell nothing new,
    /// just as a listing vouches for a file's attributes for `attr_ttl`.
    fn listed_as_dir(&self, path: &str) -> bool {
        let dir = names::parent_of(path);
        let name = names::name_of(path);
        let listed = self.known_dirs.lock().unwrap().listed(dir, name, self.ttl);
        let t = self.inodes.lock().unwrap();
        listed && t.lookup_path(path).is_some_and(|i| t.nodes[&i].is_dir())
    }

    /// Whether `path` is known not to exist (its directory's contents are known
    /// and fresh, and the name is not among them).
    fn known_absent(&self, path: &str) -> bool {
        let dir = names::parent_of(path);
        let name = names::name_of(path);
        self.known_dirs.lock().unwrap().absent(dir, name)
    }

    /// The lock that serializes bucket lookups of `path`.
    fn resolving(&self, path: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.resolving.lock().unwrap();
        if let Some(l) = map.get(path).and_then(|w| w.upgrade()) {
            return l;
        }
        if map.len() >= 1024 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let l = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(path.to_string(), Arc::downgrade(&l));
        l
    }

    async fn resolve_remote(&self, path: &str) -> Result<u64, FsError> {
        let lock = self.resolving(path);
        let _one = lock.lock().await;
        self.resolve_remote_locked(path).await
    }

    async fn resolve_remote_locked(&self, path: &str) -> Result<u64, FsError> {
        if self.known_absent(path) && self.uploader.pending_for(&self.key(path)).is_empty() {
            let mut t = self.inodes.lock().unwrap();
            match t.lookup_path(path) {
                Some(ino) if !t.nodes[&ino].unlinked && t.nodes[&ino].local_only => return Ok(ino),
                Some(ino) => t.detach(ino),
                None => {}
            }
            return Err(FsError::NotFound);
        }
        {
            let t = self.inodes.lock().unwrap();
            if let Some(ino) = t.lookup_path(path) {
                let n = &t.nodes[&ino];
                let fresh = n.fetched.is_some_and(|f| f.elapsed() < self.ttl);
                if n.local_only || n.working.is_some() || n.dirty || fresh {
                    return Ok(ino);
                }
            }
        }
        let key = self.key(path);
        let listed_dir = self.listed_as_dir(path)
            && self.uploader.pending_for(&key).is_empty()
            && self.uploader.pending_under(&self.dkey(path)).is_empty();
        // The newest queued operation on the key decides before the bucket does.
        if let Some(op) = self.uploader.pending_for(&key).pop() {
            if op.kind != OpKind::Delete {
                return Ok(self.adopt_pending(path, &op).await);
            }
        } else if !listed_dir {
            self.attribute_heads.inc();
            let asked = unix_secs(SystemTime::now());
            match self.store.head(&key, None).await {
                Ok(info) => {
                    // An operation queued while the HEAD was in flight (an
                    // unlink, a rewrite) is newer than what the bucket said.
                    if let Some(op) = self.uploader.pending_for(&key).pop() {
                        if op.kind == OpKind::Delete {
                            return Err(FsError::NotFound);
                        }
                        return Ok(self.adopt_pending(path, &op).await);
                    }
                    if self.known_absent(path) {
                        // Unlinked here meanwhile, and its delete already done.
                        return Err(FsError::NotFound);
                    }
                    let meta = ObjectMeta::from_object(&info, &self.default_file);
                    if let (Some(ix), Some(v)) = (&self.index, &info.version_id) {
                        ix.learn(
                            path,
                            Fact::new(v, info.content_type.as_deref(), &info.metadata),
                        );
                    }
                    let mut t = self.inodes.lock().unwrap();
                    self.renumber_if_changed(&mut t, path, &info.etag);
                    let ino = t.upsert(path, meta.clone());
                    let n = t.get_mut(ino).unwrap();
                    if n.working.is_none() && !n.dirty {
                        n.meta = meta;
                        n.size = info.size;
                        n.listed_as = info
                            .last_modified
                            .map(unix_secs)
                            .filter(|&s| asked >= s + 1 + CLOCK_SKEW_S);
                        n.etag = info.etag;
                        n.version = info.version_id;
                        n.content_key = None;
                    }
                    n.meta_known = true;
                    n.fetched = Some(Instant::now());
                    return Ok(ino);
                }
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if listed_dir || self.dir_exists(path).await? {
            let meta = self.dir_meta(path).await;
            let mut t = self.inodes.lock().unwrap();
            let ino = t.upsert(path, meta.clone());
            let n = t.get_mut(ino).unwrap();
            // Entry changes made here move the directory's mtime in memory only.
            let local = n.meta.mtime();
            n.meta = meta;
            if local > n.meta.mtime() {
                n.meta.set_mtime(local);
            }
            n.fetched = Some(Instant::now());
            n.meta_known = true;
            return Ok(ino);
        }
        let mut t = self.inodes.lock().unwrap();
        if let Some(ino) = t.lookup_path(path) {
            t.detach(ino);
        }
        Err(FsError::NotFound)
    }

    /// With the writeback cache the kernel trusts its own size and mtime of a
    /// cached inode and would never see another client's new version: a file
    /// changed in the bucket gets a fresh inode number, so the kernel drops
    /// the old inode (and its pages) at the next lookup. Only for nodes with
    /// no local state and no open handle; those keep their number.
    fn renumber_if_changed(&self, t: &mut Inodes, path: &str, etag: &str) {
        if !self.writeback() || etag.is_empty() {
            return;
        }
        let Some(ino) = t.lookup_path(path) else {
            return;
        };
        let n = &t.nodes[&ino];
        let stale = !n.etag.is_empty()
            && n.etag != etag
            && !n.is_dir()
            && n.working.is_none()
            && !n.dirty
            && !n.local_only
            && n.open == 0;
        if stale {
            t.detach(ino);
        }
    }

    /// A node for a key whose newest state is a queued put or copy (after a
    /// restart, or after the kernel forgot the node). Its bytes are where
    /// that operation takes them from: a metadata change copies the key's
    /// previous state, so copies of the key onto itself are followed back
    /// to the queued put whose staged file holds them, else to the object
    /// version a copy names (the old key's, for a rename).
    async fn adopt_pending(&self, path: &str, op: &Op) -> u64 {
        let meta = ObjectMeta::from_json(&op.meta).unwrap_or_else(|| self.default_file.clone());
        let queued = self.uploader.pending_for(&op.key);
        let mut source = op.clone();
        while source.kind == OpKind::Copy
            && source.src_version.is_none()
            && source.src_key.as_deref().is_none_or(|k| k == op.key)
        {
            match queued.iter().rev().find(|o| o.seq < source.seq) {
                Some(prev) => source = prev.clone(),
                None => break,
            }
        }
        let (working, size, content) = match (source.kind, &source.file) {
            (OpKind::Put, Some(name)) => (self.open_working(name.clone()).ok(), source.size, None),
            (OpKind::Copy, _) => {
                let src = source.src_key.clone().unwrap_or_else(|| op.key.clone());
                let size = self
                    .store
                    .head(&src, source.src_version.as_deref())
                    .await
                    .map(|i| i.size)
                    .unwrap_or(0);
                (None, size, Some((src, source.src_version.clone())))
            }
            _ => (None, source.size, None),
        };
        let mut t = self.inodes.lock().unwrap();
        let ino = t.upsert(path, meta.clone());
        let n = t.get_mut(ino).unwrap();
        let fresh = n.working.is_none() && !n.dirty;
        if fresh {
            n.meta = meta;
            n.size = size;
            n.shared = working.is_some();
            if let Some((src, version)) = content {
                n.content_key = (src != op.key).then_some(src);
                n.version = version;
            }
            n.last_seq = Some(op.seq);
            if working.is_some() {
                t.set_working(ino, working);
            }
        }
        let n = t.get_mut(ino).unwrap();
        n.meta_known = true;
        n.fetched = Some(Instant::now());
        ino
    }

    /// Whether a directory exists at `path`: a queued marker or file below it,
    /// a local child, or anything in the bucket below its prefix.
    async fn dir_exists(&self, path: &str) -> Result<bool, FsError> {
        let dkey = self.dkey(path);
        let pending = self.uploader.pending_under(&dkey);
        if pending.iter().any(|o| o.kind != OpKind::Delete) {
            return Ok(true);
        }
        if !self.inodes.lock().unwrap().local_children(path).is_empty() {
            return Ok(true);
        }
        let deleted: HashSet<String> = pending.into_iter().map(|o| o.key).collect();
        let page = self
            .store
            .list(&dkey, None, None, Some(1 + deleted.len().min(999) as i32))
            .await?;
        Ok(page.objects.iter().any(|o| !deleted.contains(&o.key)))
    }

    /// A directory's attributes from its marker object, else the defaults.
    async fn dir_meta(&self, path: &str) -> ObjectMeta {
        let dkey = self.dkey(path);
        let sidecar = format!("{dkey}{DIR_ATTRS}");
        for key in [&sidecar, &dkey] {
            if let Some(op) = self.uploader.pending_for(key).pop() {
                if let Some(m) = ObjectMeta::from_json(&op.meta) {
                    return m;
                }
            }
        }
        let as_dir = |info: &crate::store::ObjectInfo| {
            let mut m = ObjectMeta::from_object(info, &self.default_dir);
            m.mode = S_IFDIR | (m.mode & 0o7777);
            m
        };
        // Both at once: one round trip where markers lose metadata.
        let (marker, side) = tokio::join!(self.store.head(&dkey, None), async {
            match self.dir_sidecar {
                true => self.store.head(&sidecar, None).await.ok(),
                false => None,
            }
        });
        if let Ok(info) = marker {
            if info.metadata.contains_key("mode") || !self.dir_sidecar {
                return as_dir(&info);
            }
        }
        match side {
            Some(info) => as_dir(&info),
            None => self.default_dir.clone(),
        }
    }

    /// Writes a directory's marker (and, where markers lose metadata, its
    /// attributes object).
    async fn put_dir_attrs(&self, path: &str, meta: &ObjectMeta) -> Result<i64, FsError> {
        let dkey = self.dkey(path);
        let put = |key: String| NewOp {
            key,
            kind: OpKind::Put,
            file: None,
            size: 0,
            meta: meta.to_json(),
            src_key: None,
            src_version: None,
            inline: None,
            base: None,
        };
        let mut seq = self.uploader.submit(put(dkey.clone())).await?;
        if self.dir_sidecar {
            seq = self
                .uploader
                .submit(put(format!("{dkey}{DIR_ATTRS}")))
                .await?;
        }
        Ok(seq)
    }

    /// Deletes a directory's marker (and attributes object).
    async fn delete_dir_keys(&self, path: &str) -> Result<(), FsError> {
        if let Some(ix) = &self.index {
            ix.forget_dir(path);
        }
        let dkey = self.dkey(path);
        if self.dir_sidecar {
            self.uploader
                .submit(self.delete_op(format!("{dkey}{DIR_ATTRS}")))
                .await?;
        }
        self.uploader.submit(self.delete_op(dkey)).await?;
        Ok(())
    }

    /// Attributes come from memory: lookups refresh them from the bucket.
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        self.node_attr(ino)
    }

    /// Lists a directory: the bucket's listing merged with queued operations and
    /// local-only nodes. Every entry gets a node (and the kernel a reference,
    /// by the caller, for readdirplus). A bucket that hangs is given up (see
    /// [`Core::ask`]): the listing fails, as it does when the bucket refuses.
    pub async fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let dir = self.dir_path(ino)?;
        self.ask(
            &format!("a listing of `{dir}/`"),
            self.list_dir(dir.clone()),
        )
        .await
    }

    /// [`Core::readdir`] unbounded. It changes the inode table only after its
    /// last request is answered, so giving it up midway leaves the table as
    /// it was.
    async fn list_dir(&self, dir: String) -> Result<Vec<DirEntry>, FsError> {
        let started = Instant::now();
        let dkey = self.dkey(&dir);
        let mut files: BTreeMap<String, (u64, String, Option<SystemTime>)> = BTreeMap::new();
        let mut dirs: HashSet<String> = HashSet::new();
        // What is local or queued before the LIST is sent: an upload or delete
        // finishing while it runs may be missing from both the listing and
        // the queue afterwards. Local first: a file leaves the local set only
        // once queued.
        let local_before: Vec<String> = {
            let t = self.inodes.lock().unwrap();
            t.local_children(&dir)
                .into_iter()
                .map(|i| t.nodes[&i].path.clone())
                .collect()
        };
        let queued_before = self.uploader.pending_under(&dkey);
        let mut token = None;
        loop {
            let page = self.store.list(&dkey, Some("/"), token, None).await?;
            for o in &page.objects {
                match listed_entry(&dkey, &o.key) {
                    Some((name, false)) => {
                        files.insert(name.to_string(), (o.size, o.etag.clone(), o.last_modified));
                    }
                    Some((name, true)) => {
                        dirs.insert(name.to_string());
                    }
                    None if o.key.ends_with(DIR_ATTRS) || o.key == dkey => {}
                    None => self.hide(&o.key, &dkey),
                }
            }
            for p in &page.common_prefixes {
                match listed_entry(&dkey, p) {
                    Some((name, _)) => {
                        dirs.insert(name.to_string());
                    }
                    None if names::is_index_key(p) => {}
                    None => self.hide(p, &dkey),
                }
            }
            match page.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        // Queued operations are newer than the listing.
        let queued = queued_across(queued_before, self.uploader.pending_under(&dkey));
        // What the queued puts and copies will make: the attributes of
        // names not known here yet (a symlink is listed as one).
        let mut queued_meta: HashMap<String, ObjectMeta> = HashMap::new();
        for op in &queued {
            let Some((name, is_dir)) = listed_entry(&dkey, &op.key) else {
                continue;
            };
            let deeper = op.key.len() > dkey.len() + name.len() + 1;
            match (op.kind, is_dir) {
                (OpKind::Delete, false) => {
                    files.remove(name);
                }
                (OpKind::Delete, true) if !deeper => {
                    dirs.remove(name);
                }
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
        // A directory listed only because of keys whose deletes are still queued
        // is already gone (rm -rf right after writes must find it empty).
        let mut gone = Vec::new();
        for name in &dirs {
            let sub = child_path(&dir, name);
            let below = self.dkey(&sub);
            let deleting = queued
                .iter()
                .any(|o| o.kind == OpKind::Delete && o.key.starts_with(&below));
            if deleting && !self.dir_exists(&sub).await? {
                gone.push(name.clone());
            }
        }
        for name in gone {
            dirs.remove(&name);
        }
        let index = match &self.index {
            Some(ix) if self.needs_attributes(&dir, &files) => ix.read(&dir).await.map(|(i, _)| i),
            _ => None,
        };
        let mut out = Vec::with_capacity(files.len() + dirs.len());
        let mut t = self.inodes.lock().unwrap();
        let still_linked = local_before.iter().filter_map(|p| t.lookup_path(p));
        let local: HashSet<u64> = still_linked.chain(t.local_children(&dir)).collect();
        for ino in local {
            let n = &t.nodes[&ino];
            let name = names::name_of(&n.path).to_string();
            if n.is_dir() {
                dirs.insert(name);
            } else {
                files.insert(name, (n.size, String::new(), None));
            }
        }
        for name in dirs {
            let path = child_path(&dir, &name);
            let existing = t.lookup_path(&path).filter(|i| t.nodes[i].is_dir());
            let ino = match existing {
                Some(i) => i,
                None => t.upsert(&path, self.default_dir.clone()),
            };
            out.push(DirEntry {
                ino,
                name,
                mode: t.nodes[&ino].meta.mode,
            });
        }
        for (name, (size, etag, modified)) in files {
            let path = child_path(&dir, &name);
            if out.iter().any(|e| e.name == name) {
                continue;
            }
            self.renumber_if_changed(&mut t, &path, &etag);
            let ino = match t.lookup_path(&path) {
                Some(i) if !t.nodes[&i].is_dir() => i,
                _ => {
                    let mut meta = self.default_file.clone();
                    if let Some(m) = modified {
                        meta.set_mtime(m);
                    }
                    let meta = queued_meta.remove(&name).unwrap_or(meta);
                    let i = t.upsert(&path, meta);
                    let n = t.get_mut(i).unwrap();
                    n.size = size;
                    n.etag = etag.clone();
                    i
                }
            };
            t.touch(ino);
            let n = t.get_mut(ino).unwrap();
            if n.working.is_none() && !n.dirty && !etag.is_empty() && n.etag != etag {
                // Changed in the bucket since we looked: sizes from the listing,
                // attributes again at the next lookup.
                n.etag = etag.clone();
                n.size = size;
                n.meta_known = false;
                n.fetched = None;
                n.listed_as = None;
            } else if n.working.is_none()
                && !n.dirty
                && !etag.is_empty()
                && n.etag == etag
                && n.meta_known
                && n.listed_as.is_some()
                && n.listed_as == modified.map(unix_secs)
            {
                // The version whose attributes we hold is still the current
                // one: trust them again without a HEAD per file.
                n.fetched = Some(started);
            }
            if let Some(e) = index.as_ref().and_then(|i| i.files.get(&name)) {
                if !self.attributes_fresh(n)
                    && n.working.is_none()
                    && !n.dirty
                    && e.describes(size, &etag, modified)
                {
                    // The index names this very version: its attributes
                    // without a HEAD (see `index`).
                    n.meta = ObjectMeta::from_object(&e.info(&path), &self.default_file);
                    n.etag = etag.clone();
                    n.size = size;
                    n.version = e.version.clone();
                    n.content_key = None;
                    n.meta_known = true;
                    n.fetched = Some(started);
                    n.listed_as = Some(e.modified);
                }
            }
            out.push(DirEntry {
                ino,
                name,
                mode: n.meta.mode,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        drop(t);
        self.know_dir(dir, started, out.iter().map(|e| e.name.clone()).collect());
        Ok(out)
    }

    /// Whether some listed file has no fresh attributes in memory (then the
    /// directory's attribute index is worth a GET).
    fn needs_attributes(
        &self,
        dir: &str,
        files: &BTreeMap<String, (u64, String, Option<SystemTime>)>,
    ) -> bool {
        let t = self.inodes.lock().unwrap();
        files.iter().any(|(name, (_, etag, _))| {
            !etag.is_empty()
                && t.lookup_path(&child_path(dir, name))
                    .and_then(|i| t.get(i))
                    .is_none_or(|n| !self.attributes_fresh(n))
        })
    }

    /// The node's attributes came from the bucket within `attr_ttl`.
    fn attributes_fresh(&self, n: &Node) -> bool {
        n.meta_known && n.fetched.is_some_and(|f| f.elapsed() < self.ttl)
    }

    /// The attribute indexer, to run in the background (None: disabled).
    pub fn indexer(&self) -> Option<Arc<Indexer>> {
        self.index.clone()
    }

    pub fn opendir(&self, _ino: u64) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dir_handles.lock().unwrap().remove(&fh);
    }

    /// The listing for a directory handle: taken afresh at offset 0, reused for
    /// the following pages so a large directory is listed once per pass.
    pub async fn readdir_at(
        self: &Arc<Self>,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> Result<Arc<Vec<DirEntry>>, FsError> {
        if offset > 0 {
            if let Some(l) = self.dir_handles.lock().unwrap().get(&fh) {
                return Ok(l.clone());
            }
        }
        let l = Arc::new(self.readdir(ino).await?);
        self.dir_handles.lock().unwrap().insert(fh, l.clone());
        self.prefetch_attributes(&l);
        Ok(l)
    }

    /// A listing is usually followed by a stat of every entry (`ls -l`, `find`,
    /// `rsync`), one lookup at a time. LIST carries no metadata (mode, owner,
    /// mtime), so fetch it now for the listed entries the attribute index did
    /// not cover (files, and directories: their marker), [`PREFETCH`] at a
    /// time in listing order: the lookups then find fresh attributes.
    fn prefetch_attributes(self: &Arc<Self>, entries: &[DirEntry]) {
        let paths: Vec<String> = {
            let t = self.inodes.lock().unwrap();
            entries
                .iter()
                .filter_map(|e| t.get(e.ino))
                .filter(|n| {
                    !n.local_only
                        && n.working.is_none()
                        && !n.dirty
                        && n.fetched.is_none_or(|f| f.elapsed() >= self.ttl)
                })
                .map(|n| n.path.clone())
                .collect()
        };
        if paths.is_empty() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            for path in paths {
                if set.len() >= PREFETCH {
                    set.join_next().await;
                }
                let me = me.clone();
                set.spawn(async move {
                    let _ = me.resolve_remote(&path).await;
                });
            }
            while set.join_next().await.is_some() {}
        });
    }

    /// Counts and logs (once per key) a key that cannot be a path.
    fn hide(&self, key: &str, dir: &str) {
        if self.hidden_keys.lock().unwrap().insert(key.to_string()) {
            self.hidden_count.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(key, dir, "key cannot be a path (empty segment, `.`/`..`, or a segment over 255 bytes): hidden from the listing");
        }
    }

    fn check_writable(&self) -> Result<(), FsError> {
        if self.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Fails with EEXIST when `path` exists.
    async fn ensure_absent(&self, path: &str) -> Result<(), FsError> {
        match self.resolve(path).await {
            Ok(_) => Err(FsError::Exists),
            Err(FsError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        who: Caller,
    ) -> Result<Attr, FsError> {
        self.check_writable()?;
        let (_, path) = self.child(parent, name)?;
        self.ensure_absent(&path).await?;
        let meta = ObjectMeta::new(S_IFDIR | (mode & 0o7777), who.uid, who.gid);
        self.put_dir_attrs(&path, &meta).await?;
        self.touch_dir(parent);
        self.note_path(&path, true);
        // A directory made here starts empty: its contents are known.
        self.know_dir(path.clone(), Instant::now(), HashSet::new());
        let mut t = self.inodes.lock().unwrap();
        let ino = t.upsert(&path, meta.clone());
        let n = t.get_mut(ino).unwrap();
        n.meta = meta;
        n.meta_known = true;
        n.fetched = Some(Instant::now());
        n.unlinked = false;
        Ok(Self::attr_of(n))
    }

    /// Creates a regular file (or fifo) that exists at once, locally, and is
    /// uploaded at its first close even if nothing is written.
    pub async fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> Result<(Attr, Opened), FsError> {
        self.check_writable()?;
        let (_, path) = self.child(parent, name)?;
        match self.resolve(&path).await {
            Ok(ino) => {
                if flags & libc::O_EXCL != 0 {
                    return Err(FsError::Exists);
                }
                let opened = self.open(ino, flags | libc::O_TRUNC).await?;
                return Ok((self.node_attr(ino)?, opened));
            }
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let kind = match mode & S_IFMT {
            k @ (S_IFIFO | S_IFCHR | S_IFBLK | S_IFSOCK) => k,
            _ => S_IFREG,
        };
        let meta = ObjectMeta::new(kind | (mode & 0o7777), who.uid, who.gid);
        let working = self.new_working()?;
        self.touch_dir(parent);
        let ino = {
            let mut t = self.inodes.lock().unwrap();
            let ino = t.upsert(&path, meta.clone());
            let n = t.get_mut(ino).unwrap();
            n.meta = meta;
            n.size = 0;
            n.etag.clear();
            n.version = None;
            n.dirty = true;
            n.shared = false;
            n.local_only = true;
            n.unlinked = false;
            n.meta_known = true;
            n.fetched = Some(Instant::now());
            n.ctime = SystemTime::now();
            n.kernel_tag = None;
            // A file of another node this one replaces stays that node's.
            t.set_working(ino, Some(working));
            t.local_only.insert(ino);
            ino
        };
        self.note_path(&path, true);
        let here = passthrough::Here {
            local: true,
            room: self.cache.room_for_unmetered_writer(),
            privileged: crate::meta::has_set_id_bits(mode),
        };
        let mode = passthrough::decide(self.passthrough_on(), None, Want::of(flags), here);
        let opened = self.register(ino, flags, mode)?;
        Ok((self.node_attr(ino)?, opened))
    }

    /// mknod: any file type becomes a zero-byte object carrying its mode (and,
    /// for devices, `rdev`). The mount is `nodev`, so device nodes stay inert.
    pub async fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        who: Caller,
    ) -> Result<Attr, FsError> {
        // Read-write: served through regionfs, never a passthrough backing
        // file for an open no kernel file stands for.
        let (attr, opened) = self
            .create(parent, name, mode, libc::O_EXCL | libc::O_RDWR, who)
            .await?;
        let fh = opened.fh;
        if rdev != 0 {
            if let Some(n) = self.inodes.lock().unwrap().get_mut(attr.ino) {
                n.meta.rdev = rdev;
            }
        }
        self.release(fh).await?;
        self.node_attr(attr.ino)
    }

    /// A directory's mtime and ctime move when its entries change (kept in
    /// memory; the marker is not rewritten for it).
    fn touch_dir(&self, ino: u64) {
        let now = SystemTime::now();
        if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
            n.meta.set_mtime(now);
            n.ctime = now;
        }
    }

    pub async fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        who: Caller,
    ) -> Result<Attr, FsError> {
        self.check_writable()?;
        let (_, path) = self.child(parent, name)?;
        self.ensure_absent(&path).await?;
        let working = self.new_working()?;
        working.file.write_all_at(target, 0)?;
        self.cache
            .resize_data(&working.name, target.len() as u64)
            .await?;
        let meta = ObjectMeta::new(S_IFLNK | 0o777, who.uid, who.gid);
        self.touch_dir(parent);
        self.note_path(&path, true);
        let ino = {
            let mut t = self.inodes.lock().unwrap();
            let ino = t.upsert(&path, meta.clone());
            let n = t.get_mut(ino).unwrap();
            n.meta = meta;
            n.size = target.len() as u64;
            n.dirty = true;
            n.unlinked = false;
            n.meta_known = true;
            n.fetched = Some(Instant::now());
            t.set_working(ino, Some(working));
            ino
        };
        self.stage(ino).await?;
        self.node_attr(ino)
    }

    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let (working, key, size) = {
            let t = self.inodes.lock().unwrap();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            if !n.is_symlink() {
                return Err(FsError::Invalid("not a symlink"));
            }
            (n.working.clone(), self.content_of(n), n.size)
        };
        if let Some(w) = working {
            let mut buf = vec![0; size as usize];
            let n = w.file.read_at(&mut buf, 0)?;
            buf.truncate(n);
            return Ok(buf);
        }
        let (key, version_id) = key;
        let req = GetRequest {
            version_id,
            range: None,
        };
        let what = format!("a GET of `{key}`");
        let obj = self.ask(&what, self.store.get(&key, req)).await?;
        Ok(self.ask(&what, obj.bytes()).await?.to_vec())
    }

    pub async fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        self.check_writable()?;
        let (_, path) = self.child(parent, name)?;
        let ino = self.resolve(&path).await?;
        let (local_only, io) = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            if n.is_dir() {
                return Err(FsError::IsDir);
            }
            (n.local_only, n.io())
        };
        let _g = io.lock().await;
        let key = self.key(&path);
        let never_uploaded = local_only && self.uploader.pending_for(&key).is_empty();
        if !never_uploaded {
            self.uploader.submit(self.delete_op(key.clone())).await?;
        }
        self.cache.forget_clean(&key);
        self.touch_dir(parent);
        self.note_path(&path, false);
        let mut t = self.inodes.lock().unwrap();
        t.detach(ino);
        let drop_file = match t.get_mut(ino) {
            Some(n) => {
                n.early = None;
                n.dirty = false;
                n.written = false;
                let unused = n.open == 0 && !n.shared;
                unused.then(|| t.set_working(ino, None)).flatten()
            }
            None => None,
        };
        drop(t);
        if let Some(w) = drop_file {
            self.cache.remove_data(&w.name);
        }
        Ok(())
    }

    fn delete_op(&self, key: String) -> NewOp {
        NewOp {
            key,
            kind: OpKind::Delete,
            file: None,
            size: 0,
            meta: "{}".into(),
            src_key: None,
            src_version: None,
            inline: None,
            base: None,
        }
    }

    /// Whether a directory has no entries (queued deletes count as gone).
    async fn dir_is_empty(&self, ino: u64) -> Result<bool, FsError> {
        Ok(self.readdir(ino).await?.is_empty())
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        self.check_writable()?;
        let (_, path) = self.child(parent, name)?;
        let ino = self.resolve(&path).await?;
        if !self.inodes.lock().unwrap().nodes[&ino].is_dir() {
            return Err(FsError::NotDir);
        }
        if !self.dir_is_empty(ino).await? {
            return Err(FsError::NotEmpty);
        }
        self.delete_dir_keys(&path).await?;
        self.inodes.lock().unwrap().detach(ino);
        self.touch_dir(parent);
        self.note_path(&path, false);
        self.known_dirs.lock().unwrap().forget(&path);
        Ok(())
    }

    /// rename(2). A file is copied server-side (or, with local data, uploaded
    /// under its new key) and the old key deleted; a directory is renamed key
    /// by key, which is not atomic.
    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<(), FsError> {
        self.check_writable()?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(FsError::Invalid("RENAME_EXCHANGE is not supported"));
        }
        let (_, from) = self.child(parent, name)?;
        let (_, to) = self.child(newparent, newname)?;
        let src = self.resolve(&from).await?;
        if from == to {
            return Ok(());
        }
        let src_is_dir = self.inodes.lock().unwrap().nodes[&src].is_dir();
        if src_is_dir && (to.starts_with(&format!("{from}/"))) {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        match self.resolve(&to).await {
            Ok(dst) => {
                if flags & libc::RENAME_NOREPLACE != 0 {
                    return Err(FsError::Exists);
                }
                let dst_is_dir = self.inodes.lock().unwrap().nodes[&dst].is_dir();
                match (src_is_dir, dst_is_dir) {
                    (false, true) => return Err(FsError::IsDir),
                    (true, false) => return Err(FsError::NotDir),
                    (true, true) => {
                        if !self.dir_is_empty(dst).await? {
                            return Err(FsError::NotEmpty);
                        }
                        self.delete_dir_keys(&to).await?;
                    }
                    (false, false) => {}
                }
                self.inodes.lock().unwrap().detach(dst);
            }
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        self.touch_dir(parent);
        self.touch_dir(newparent);
        self.note_path(&from, false);
        self.note_path(&to, true);
        if src_is_dir {
            // What this mount knew of the old subtree no longer holds, nor
            // what it knew of an empty directory the new one replaces.
            {
                let mut known = self.known_dirs.lock().unwrap();
                known.forget_tree(&from);
                known.forget_tree(&to);
            }
            self.rename_dir(src, &from, &to).await
        } else {
            self.rename_file(src, &from, &to).await
        }
    }

    /// Queues the new key's content and the old key's delete for one file,
    /// and moves its node. The node moves first: the new key's operation
    /// may finish at once, and its completion finds the node by its path.
    /// `from` is where the caller found the node; a node that moved since
    /// (another rename came first) is not there any more (`NotFound`).
    async fn rename_file(&self, ino: u64, from: &str, to: &str) -> Result<(), FsError> {
        let io = self.io_lock(ino)?;
        let _g = io.lock().await;
        let (working, dirty, written, local_only, meta, size, content, _claim, writing) = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            if n.path != from || n.unlinked {
                return Err(FsError::NotFound);
            }
            self.refresh(n);
            (
                n.working.clone(),
                n.dirty,
                n.written,
                n.local_only,
                n.meta.clone(),
                n.size,
                // Where a clean node's bytes are: one (key, version) pair,
                // read together.
                self.content_of(n),
                // Read under the lock the finishing upload of the old key
                // checks it in (`on_uploaded`), so that upload cannot retire
                // the file before the put below is queued.
                n.working.as_ref().map(|w| self.uploader.claim(&w.name)),
                n.kernel.as_ref().is_some_and(|k| k.writing()),
            )
        };
        let (from_key, to_key) = (self.key(from), self.key(to));
        let (src_key, mut version) = content;
        if working.is_none() && version.is_none() {
            // The copy must name the version it copies (the old key is deleted
            // right after): let queued changes land, then ask the bucket.
            if let Some(last) = self.uploader.pending_for(&src_key).last() {
                self.uploader
                    .wait(last.seq)
                    .await
                    .map_err(FsError::Upload)?;
            }
            let what = format!("a HEAD of `{src_key}`");
            version = self
                .ask(&what, self.store.head(&src_key, None))
                .await?
                .version_id;
        }
        let pending_src = self.uploader.pending_for(&from_key);
        // From the node's move until its ops are queued, what finishes for
        // the new key (the replaced file's upload) is not the node's.
        let _announced = self.uploader.announce(&to_key);
        let mut stamped = None;
        let op = match &working {
            Some(w) => {
                let mut size = size;
                if writing {
                    // Passthrough writers go on writing it: staged as of now,
                    // held until they close (see `passthrough`).
                    let s = stamp::of(&w.file)?;
                    self.cache.sync_data(&w.name, &w.file)?;
                    self.supersede_inline(&w.name).await?;
                    (size, stamped) = (s.size, Some(s));
                } else if dirty {
                    self.cache.sync_data(&w.name, &w.file)?;
                }
                NewOp::put(to_key.clone(), w.name.clone(), size, meta.to_json(), None)
            }
            None => NewOp {
                key: to_key.clone(),
                kind: OpKind::Copy,
                file: None,
                size,
                meta: meta.to_json(),
                // A named version stays copyable after the delete below.
                src_key: Some(src_key.clone()),
                src_version: version.clone(),
                inline: None,
                base: None,
            },
        };
        {
            let mut t = self.inodes.lock().unwrap();
            t.rename(ino, to);
            if let Some(n) = t.get_mut(ino) {
                if n.working.is_some() {
                    n.shared = true;
                    n.dirty = false;
                    n.written = false;
                    if let (Some(k), Some(_)) = (n.kernel.as_deref_mut(), stamped) {
                        k.stamp = stamped;
                    }
                } else {
                    // Until the copy lands, the bytes are read from the old key.
                    n.content_key = Some(src_key);
                    n.version = version;
                }
                n.local_only = false;
            }
            t.local_only.remove(&ino);
        }
        let queued = async {
            let seq = self.uploader.submit(op).await?;
            if !(local_only && pending_src.is_empty()) {
                self.uploader
                    .submit(self.delete_op(from_key.clone()))
                    .await?;
            }
            Ok::<_, FsError>(seq)
        }
        .await;
        let mut t = self.inodes.lock().unwrap();
        if let Some(n) = t.get_mut(ino) {
            match &queued {
                Ok(seq) => n.last_seq = Some(*seq),
                Err(_) => {
                    // Not staged: the next close stages it again.
                    n.dirty = dirty || working.is_some();
                    n.written = written || working.is_some();
                }
            }
        }
        queued.map(|_| ())
    }

    async fn rename_dir(&self, ino: u64, from: &str, to: &str) -> Result<(), FsError> {
        let from_prefix = self.dkey(from);
        // Every key below the old prefix: the bucket's and the queued ones.
        let mut keys: BTreeMap<String, ()> = BTreeMap::new();
        let queued_before = self.uploader.pending_under(&from_prefix);
        let mut token = None;
        loop {
            let what = format!("a listing of `{from_prefix}`");
            let page = self
                .ask(&what, self.store.list(&from_prefix, None, token, None))
                .await?;
            keys.extend(page.objects.into_iter().map(|o| (o.key, ())));
            match page.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        for op in queued_across(queued_before, self.uploader.pending_under(&from_prefix)) {
            if op.kind == OpKind::Delete {
                keys.remove(&op.key);
            } else {
                keys.insert(op.key, ());
            }
        }
        let meta = self.inodes.lock().unwrap().nodes[&ino].meta.clone();
        self.put_dir_attrs(to, &meta).await?;
        let mut files = Vec::new();
        for key in keys.keys() {
            let rel = &key[self.prefix.len()..];
            let Some(below) = rel.strip_prefix(from).and_then(|r| r.strip_prefix('/')) else {
                continue;
            };
            if below.is_empty() || below == DIR_ATTRS || below.ends_with(&format!("/{DIR_ATTRS}")) {
                continue;
            }
            let new_rel = format!("{to}/{below}");
            if let Some(sub) = rel.strip_suffix('/') {
                // A subdirectory marker: its attributes travel with it.
                let m = self.dir_meta(sub).await;
                self.put_dir_attrs(new_rel.trim_end_matches('/'), &m)
                    .await?;
                self.delete_dir_keys(sub).await?;
                continue;
            }
            files.push((rel.to_string(), new_rel));
        }
        // Files are independent (each copy is staged before its own delete):
        // their lookups and journal commits overlap.
        let mut moves = futures_util::stream::iter(files)
            .map(|(path, new_rel)| async move {
                let child = match self.resolve(&path).await {
                    Ok(i) => i,
                    Err(FsError::NotFound) => return Ok(()),
                    Err(e) => return Err(e),
                };
                if !self.inodes.lock().unwrap().nodes[&child].meta_known {
                    // Attributes travel with the copy: read them first.
                    let _ = self.refresh_meta(child).await;
                }
                match self.rename_file(child, &path, &new_rel).await {
                    // Renamed or removed meanwhile: not below `from` any more.
                    Err(FsError::NotFound) => Ok(()),
                    other => other,
                }
            })
            .buffer_unordered(RENAME_PARALLEL);
        while let Some(moved) = moves.next().await {
            moved?;
        }
        drop(moves);
        self.delete_dir_keys(from).await?;
        self.inodes.lock().unwrap().rename(ino, to);
        Ok(())
    }

    /// Reads the object's metadata (HEAD) into a node listed without it.
    async fn refresh_meta(&self, ino: u64) -> Result<(), FsError> {
        let path = self.path_of(ino)?;
        let key = self.key(&path);
        let info = self
            .ask(&format!("a HEAD of `{key}`"), self.store.head(&key, None))
            .await?;
        let meta = ObjectMeta::from_object(&info, &self.default_file);
        let mut t = self.inodes.lock().unwrap();
        // Queued operations on the key are newer than what the HEAD saw.
        let queued = !self.uploader.pending_for(&key).is_empty();
        if let Some(n) = t.get_mut(ino) {
            if n.working.is_none() && !n.dirty && !queued {
                n.content_key = None;
                n.meta = meta;
                n.size = info.size;
                n.etag = info.etag;
                n.version = info.version_id;
            }
            n.meta_known = true;
            n.fetched = Some(Instant::now());
        }
        Ok(())
    }

    pub async fn setattr(&self, ino: u64, set: SetAttr) -> Result<Attr, FsError> {
        let needs_meta = {
            !self
                .inodes
                .lock()
                .unwrap()
                .get(ino)
                .ok_or(FsError::NotFound)?
                .meta_known
        };
        if needs_meta {
            let _ = self.refresh_meta(ino).await;
        }
        if set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.size.is_some()
            || set.mtime.is_some()
        {
            self.check_writable()?;
        }
        // Asked with nothing else (after a passthrough write): nothing to
        // clear on a read-only mount, which no one writes.
        let set = SetAttr {
            kill_privs: set.kill_privs && self.check_writable().is_ok(),
            ..set
        };
        if set.size.is_some_and(|s| s > crate::config::MAX_OBJECT_SIZE) {
            return Err(FsError::TooLarge);
        }
        let io = self.io_lock(ino)?;
        let _g = io.lock().await;
        if let Some(size) = set.size {
            self.truncate_locked(ino, size).await?;
            if let Some(fh) = set.fh {
                self.mark_written(fh);
            }
        }
        let (stage_now, copy_meta) = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            self.refresh(n);
            // Only a real change makes a version: with the writeback cache the
            // kernel re-sends the mtime it already has after every ctime bump
            // (rename, unlink, link count), and that must not copy the object.
            let before = (n.meta.mode, n.meta.uid, n.meta.gid, n.meta.mtime());
            if let Some(m) = set.mode {
                n.meta.mode = (n.meta.mode & S_IFMT) | (m & 0o7777);
            }
            if let Some(u) = set.uid {
                n.meta.uid = u;
            }
            if let Some(g) = set.gid {
                n.meta.gid = g;
            }
            if set.kill_privs && set.mode.is_none() && n.meta.mode & S_IFMT == S_IFREG {
                n.meta.mode = crate::meta::without_privs(n.meta.mode);
            }
            if let Some(a) = set.atime {
                n.meta.set_atime(a);
            }
            if let Some(m) = set.mtime {
                n.meta.set_mtime(m);
            } else if set.size.is_some() {
                n.meta.set_mtime(SystemTime::now());
            }
            let meta_changed = before != (n.meta.mode, n.meta.uid, n.meta.gid, n.meta.mtime());
            if meta_changed || set.size.is_some() {
                n.ctime = SystemTime::now();
            }
            let open_for_write = n.open_writers > 0;
            if n.unlinked {
                // No name left to write a version under.
                (false, false)
            } else if n.dirty {
                // Folded into the upload at close (or now, for truncate(2) of a
                // file nobody has open for writing).
                (!open_for_write, false)
            } else {
                (false, meta_changed)
            }
        };
        if stage_now {
            drop(_g);
            self.stage(ino).await?;
        } else if copy_meta {
            self.store_meta_locked(ino).await?;
        }
        self.node_attr(ino)
    }

    /// Writes a metadata change of a clean (or staged) node as a new version:
    /// a copy onto itself, or a fresh marker for a directory.
    async fn store_meta_locked(&self, ino: u64) -> Result<(), FsError> {
        let (path, is_dir, meta, content, size) = {
            let t = self.inodes.lock().unwrap();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            (
                n.path.clone(),
                n.is_dir(),
                n.meta.clone(),
                self.content_of(n),
                n.size,
            )
        };
        if ino == ROOT {
            return Ok(());
        }
        let op = if is_dir {
            let seq = self.put_dir_attrs(&path, &meta).await?;
            if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
                n.last_seq = Some(seq);
            }
            return Ok(());
        } else {
            let key = self.key(&path);
            if let Some(seq) = self.uploader.amend_meta(&key, meta.to_json()).await? {
                if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
                    n.last_seq = Some(seq);
                }
                return Ok(());
            }
            let queued = !self.uploader.pending_for(&key).is_empty();
            // With uploads queued the copy must take what they produce;
            // else the version holding the bytes (the old key's, while a
            // rename's copy has not landed).
            let (src_key, src_version) = match queued {
                true => (key.clone(), None),
                false => content,
            };
            NewOp {
                src_key: Some(src_key),
                src_version,
                key,
                kind: OpKind::Copy,
                file: None,
                size,
                meta: meta.to_json(),
                inline: None,
                base: None,
            }
        };
        let seq = self.uploader.submit(op).await?;
        if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
            n.last_seq = Some(seq);
        }
        Ok(())
    }

    // ----- file data -----

    fn new_working(&self) -> Result<Working, FsError> {
        self.open_working(self.cache.create_data_file()?)
    }

    fn open_working(&self, name: String) -> Result<Working, FsError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.cache.data_path(&name))?;
        Ok(Working {
            name,
            file: Arc::new(file),
            direct: Default::default(),
        })
    }

    /// How the kernel is to serve a new open of `ino` (see [`passthrough`]).
    fn mode_for(&self, ino: u64, want: Want) -> Result<Mode, FsError> {
        let t = self.inodes.lock().unwrap();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        let local = match &n.working {
            Some(_) => !n.shared,
            None => {
                let (key, _) = self.content_of(n);
                !n.etag.is_empty() && self.cache.has_clean(&key, &n.etag)
            }
        };
        let here = passthrough::Here {
            local,
            room: self.cache.room_for_unmetered_writer(),
            privileged: crate::meta::has_set_id_bits(n.meta.mode),
        };
        Ok(passthrough::decide(
            self.passthrough_on(),
            n.kernel.as_deref(),
            want,
            here,
        ))
    }

    /// Registers an open handle served in `mode`. A passthrough open gets the
    /// node's backing file (set up by the first one), or falls back to
    /// cached when the clean copy it would use is gone meanwhile. A cached
    /// open may keep the kernel's pages only while they hold the content the
    /// node still has (another client's version, seen since, drops them);
    /// writes here go through those pages, so they never make them stale.
    fn register(&self, ino: u64, flags: i32, mode: Mode) -> Result<Opened, FsError> {
        let write = Want::of(flags).writes();
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut t = self.inodes.lock().unwrap();
        let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
        let backing = match mode {
            Mode::Passthrough => self.backing_for(n),
            Mode::Cached => None,
        };
        n.open += 1;
        if write {
            n.open_writers += 1;
        }
        let mut keep = false;
        if backing.is_some() {
            // Joining writers: what the others wrote so far is found now,
            // before this open's writes mix in.
            self.refresh(n);
            let n_working = n.working.as_ref().map(|w| w.file.clone());
            let k = n.kernel.as_deref_mut().expect("set up by backing_for");
            let b = k.backing.as_mut().expect("set up by backing_for");
            b.opens += 1;
            if write {
                if b.writers == 0 {
                    k.stamp = n_working.and_then(|f| stamp::of(&f).ok());
                }
                b.writers += 1;
                // Cached opens after these writes must not keep old pages.
                n.kernel_tag = None;
                self.start_blind_early(n);
            }
            self.passthrough_opens.inc();
        } else {
            if self.passthrough_on() {
                n.kernel.get_or_insert_with(Default::default).cached += 1;
            }
            let tag = inode::content_tag(&n.etag);
            keep = n.kernel_tag == Some(tag);
            n.kernel_tag = Some(tag);
        }
        drop(t);
        self.handles.lock().unwrap().insert(
            fh,
            Handle {
                ino,
                write,
                pt: backing.is_some(),
                download: None,
            },
        );
        Ok(Opened {
            fh,
            keep_cache: keep,
            backing,
        })
    }

    /// The node's mode has a set-user-ID or set-group-ID bit.
    pub fn has_set_id_bits(&self, ino: u64) -> bool {
        let t = self.inodes.lock().unwrap();
        t.get(ino)
            .is_some_and(|n| crate::meta::has_set_id_bits(n.meta.mode))
    }

    /// A passthrough writer of an empty file: its parts go up as it grows,
    /// found by polling its size (`uploader::early`, "Blind uploads"), as
    /// the writes through regionfs drive them for a cached writer.
    fn start_blind_early(&self, n: &mut Node) {
        let Some(w) = n.working.as_ref().filter(|_| n.size == 0 && !n.unlinked) else {
            return;
        };
        if n.early.is_some() {
            return;
        }
        let Some(e) = self
            .uploader
            .early(&self.key(&n.path), &w.name, &n.meta, true)
        else {
            return;
        };
        let (early, file) = (Arc::downgrade(&e), w.file.clone());
        n.early = Some(e);
        tokio::spawn(async move {
            let (mut seen, mut wait) = (0, GROWTH_POLL);
            loop {
                tokio::time::sleep(wait).await;
                let Some(e) = early.upgrade().filter(|e| !e.is_done()) else {
                    return;
                };
                match file.metadata() {
                    Ok(m) if m.len() != seen => {
                        seen = m.len();
                        e.grown(seen);
                        wait = GROWTH_POLL;
                    }
                    // A writer that keeps its file open without writing
                    // costs a look a second.
                    Ok(_) => wait = (wait * 2).min(GROWTH_POLL_IDLE),
                    Err(_) => return,
                }
            }
        });
    }

    /// The node's backing file, set up (on its working file, else a pinned
    /// whole clean copy) when the kernel has none yet. `None`: the clean
    /// copy went meanwhile.
    fn backing_for(&self, n: &mut Node) -> Option<Arc<std::fs::File>> {
        if let Some(b) = n.kernel.as_ref().and_then(|k| k.backing.as_ref()) {
            return Some(b.file.clone());
        }
        let (file, on) = match &n.working {
            Some(w) => (w.file.clone(), On::Working(w.name.clone())),
            None => {
                let (key, _) = self.content_of(n);
                let (path, _) = self.cache.open_clean(&key, &n.etag)?;
                // Read-write although readers asked: a writer may join them.
                match std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                {
                    Ok(f) => (Arc::new(f), On::Clean { key, path }),
                    Err(_) => {
                        self.cache.close_clean(&key, &path);
                        return None;
                    }
                }
            }
        };
        n.kernel.get_or_insert_with(Default::default).backing = Some(Backing {
            file: file.clone(),
            on,
            token: None,
            opens: 0,
            writers: 0,
        });
        Some(file)
    }

    /// The kernel's id of `ino`'s backing file, made by `make` (the
    /// adapter's registration with the kernel) for the first open; every
    /// open of the inode must name the same one.
    pub fn backing_token<T: std::any::Any + Send + Sync>(
        &self,
        ino: u64,
        make: impl FnOnce(&std::fs::File) -> std::io::Result<T>,
    ) -> std::io::Result<Arc<dyn std::any::Any + Send + Sync>> {
        let mut t = self.inodes.lock().unwrap();
        let b = t
            .get_mut(ino)
            .and_then(|n| n.kernel.as_deref_mut())
            .and_then(|k| k.backing.as_mut())
            .ok_or_else(|| std::io::Error::other("no backing file"))?;
        if let Some(token) = &b.token {
            return Ok(token.clone());
        }
        let token: Arc<dyn std::any::Any + Send + Sync> = Arc::new(make(&b.file)?);
        b.token = Some(token.clone());
        Ok(token)
    }

    /// The kernel would not take a backing file (`FUSE_DEV_IOC_BACKING_OPEN`
    /// failed: no CAP_SYS_ADMIN, a stacked filesystem): handle `fh` becomes
    /// a cached open, and so does every later one.
    pub fn passthrough_refused(&self, fh: u64, e: &std::io::Error) {
        if self.passthrough.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %e, "the kernel refused a passthrough backing file; files are served through regionfs from now on");
        }
        let Some((ino, write)) = self.handles.lock().unwrap().get_mut(&fh).map(|h| {
            h.pt = false;
            (h.ino, h.write)
        }) else {
            return;
        };
        let gone = {
            let mut t = self.inodes.lock().unwrap();
            let Some(k) = t.get_mut(ino).and_then(|n| n.kernel.as_deref_mut()) else {
                return;
            };
            k.cached += 1;
            let b = k.backing.as_mut().expect("a passthrough open has one");
            b.opens -= 1;
            if write {
                b.writers -= 1;
            }
            (b.opens == 0).then(|| k.backing.take()).flatten()
        };
        self.drop_backing(gone);
    }

    /// Lets go of a backing file the kernel no longer uses: unpins its clean
    /// copy; dropping its token closes the kernel's id.
    fn drop_backing(&self, b: Option<Backing>) {
        if let Some(Backing {
            on: On::Clean { key, path },
            ..
        }) = &b
        {
            self.cache.close_clean(key, path);
        }
    }

    /// Opens a file: the handle, whether the kernel may keep its cached
    /// pages, and the backing file for passthrough.
    pub async fn open(&self, ino: u64, flags: i32) -> Result<Opened, FsError> {
        let want = Want::of(flags);
        let trunc = flags & libc::O_TRUNC != 0;
        let io = self.io_lock(ino)?;
        let _g = io.lock().await;
        if want.writes() || trunc {
            self.check_writable()?;
            if trunc {
                self.truncate_locked(ino, 0).await?;
            } else {
                self.ensure_working(ino).await?;
            }
        }
        let mode = self.mode_for(ino, want)?;
        self.register(ino, flags, mode)
    }

    /// Gives the node a private working file holding its current content (copied
    /// from a staged file, a clean copy, or downloaded). Caller holds `io`.
    async fn ensure_working(&self, ino: u64) -> Result<Working, FsError> {
        let (working, shared, key, etag, version, size, backed) = {
            let t = self.inodes.lock().unwrap();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            if n.is_dir() {
                return Err(FsError::IsDir);
            }
            let (key, version) = self.content_of(n);
            (
                n.working.clone(),
                n.shared,
                key,
                n.etag.clone(),
                version,
                n.size,
                n.kernel
                    .as_ref()
                    .and_then(|k| k.backing.as_ref())
                    .map(|b| (b.on.clone(), b.file.clone())),
            )
        };
        // The kernel's backing file is the content: changed in place only.
        match (backed, &working) {
            (Some((On::Working(_), _)), Some(w)) => {
                if shared {
                    self.give_uploads_a_copy(ino, w).await?;
                }
                return Ok(w.clone());
            }
            (Some((On::Clean { key: ck, path }, file)), None) => {
                return self.take_over_clean_copy(ino, &ck, &path, file).await;
            }
            _ => {}
        }
        let fresh = match working {
            Some(w) if !shared => return Ok(w),
            Some(w) => self.open_working(self.cache.copy_data_file(&w.name)?)?,
            None => match self.cache.adopt_clean(&key, &etag)? {
                Some(name) => self.open_working(name)?,
                None => {
                    let w = self.new_working()?;
                    if size > 0 || version.is_some() || !etag.is_empty() {
                        self.download_into(&key, version, &w).await?;
                    }
                    w
                }
            },
        };
        let len = fresh.file.metadata()?.len();
        self.cache.resize_data(&fresh.name, len).await?;
        let mut t = self.inodes.lock().unwrap();
        let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
        n.shared = false;
        n.size = len;
        t.set_working(ino, Some(fresh.clone()));
        Ok(fresh)
    }

    /// Before a working file the kernel has as a backing file is written in
    /// place by a new writer: the queued uploads that read it get a synced
    /// copy of it first, so each still uploads what its close acknowledged.
    async fn give_uploads_a_copy(&self, ino: u64, w: &Working) -> Result<(), FsError> {
        let users = self.uploader.users(&w.name);
        if !users.is_empty() {
            let copy = self.cache.copy_data_file(&w.name)?;
            let f = std::fs::File::open(self.cache.data_path(&copy))?;
            self.cache.sync_data(&copy, &f)?;
            self.uploader.repoint(&users, &w.name, &copy).await?;
        }
        if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
            n.shared = false;
        }
        Ok(())
    }

    /// A writer joins the kernel's readers of a clean copy: the copy becomes
    /// the node's working file, in place (the readers see the writes). A copy
    /// no longer of the node's version (another client's newer one arrived)
    /// is named anew in `data/` and refilled with the current version.
    async fn take_over_clean_copy(
        &self,
        ino: u64,
        key: &str,
        path: &std::path::Path,
        file: Arc<std::fs::File>,
    ) -> Result<Working, FsError> {
        let (etag, version, size) = {
            let t = self.inodes.lock().unwrap();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            (n.etag.clone(), self.content_of(n).1, n.size)
        };
        let w = match self.cache.adopt_clean_in_place(key, &etag, path)? {
            Some(name) => Working {
                name,
                file,
                direct: Default::default(),
            },
            None => {
                self.cache.forget_clean_copy(key, path);
                let name = self.cache.link_data_file(&file, 0)?;
                file.set_len(0)?;
                let w = Working {
                    name,
                    file,
                    direct: Default::default(),
                };
                if size > 0 || version.is_some() || !etag.is_empty() {
                    self.download_into(key, version, &w).await?;
                }
                let len = w.file.metadata()?.len();
                self.cache.account_data(&w.name, len);
                w
            }
        };
        let len = w.file.metadata()?.len();
        let mut t = self.inodes.lock().unwrap();
        t.set_working(ino, Some(w.clone()));
        let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
        n.shared = false;
        n.size = len;
        if let Some(b) = n.kernel.as_mut().and_then(|k| k.backing.as_mut()) {
            // No pin left to undo: the clean copy's entry went with it.
            b.on = On::Working(w.name.clone());
        }
        Self::restamp(n);
        Ok(w)
    }

    /// Streams one object version into a working file.
    async fn download_into(
        &self,
        key: &str,
        version: Option<String>,
        w: &Working,
    ) -> Result<(), FsError> {
        let obj = self
            .store
            .get(
                key,
                GetRequest {
                    version_id: version,
                    range: None,
                },
            )
            .await?;
        let mut body = obj.body;
        let mut offset = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::Unreachable {
                bucket: self.store.describe(),
                message: format!("reading `{key}`: {e}"),
            })?;
            w.file.write_all_at(&chunk, offset)?;
            offset += chunk.len() as u64;
        }
        Ok(())
    }

    /// Sets the size of a node's content. Caller holds `io`.
    async fn truncate_locked(&self, ino: u64, size: u64) -> Result<(), FsError> {
        let is_dir = self
            .inodes
            .lock()
            .unwrap()
            .get(ino)
            .ok_or(FsError::NotFound)?
            .is_dir();
        if is_dir {
            return Err(FsError::IsDir);
        }
        let w = if size == 0 {
            let (working, shared, backed) = {
                let t = self.inodes.lock().unwrap();
                let n = &t.nodes[&ino];
                let backed = n.kernel.as_ref().is_some_and(|k| k.backing.is_some());
                (n.working.clone(), n.shared, backed)
            };
            match working {
                _ if backed => self.ensure_working(ino).await?,
                Some(w) if !shared => w,
                _ => self.new_working()?,
            }
        } else {
            self.ensure_working(ino).await?
        };
        self.cache.resize_data(&w.name, size).await?;
        w.file.set_len(size)?;
        let mut t = self.inodes.lock().unwrap();
        t.set_working(ino, Some(w));
        let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
        // Its parts may hold bytes this cuts or zeroes.
        n.early = None;
        n.shared = false;
        n.size = size;
        n.dirty = true;
        n.meta.set_mtime(SystemTime::now());
        Self::restamp(n);
        Ok(())
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let ino = self.handle_ino(fh)?;
        if data.is_empty() {
            // Changes nothing (not even the size, past the end).
            return Ok(0);
        }
        if offset.saturating_add(data.len() as u64) > crate::config::MAX_OBJECT_SIZE {
            return Err(FsError::TooLarge);
        }
        let io = self.io_lock(ino)?;
        let _g = io.lock().await;
        let w = self.ensure_working(ino).await?;
        let end = offset + data.len() as u64;
        let size = self.inodes.lock().unwrap().nodes[&ino].size;
        if end > size {
            self.cache.resize_data(&w.name, end).await?;
        }
        self.write_locked(ino, &w, offset, data, size)
    }

    /// [`Core::write`] answered by the calling (FUSE) thread, so the data
    /// needs no copy for the hop to the runtime: a 1 MiB write-back request
    /// otherwise costs an allocation, its page faults and a memcpy (a fifth
    /// of the daemon's CPU during a large sequential write). Only when
    /// nothing has to wait: the node's I/O lock is free, its working file is
    /// open and its own, and the cache has room for the growth. `None`: take
    /// the async path, which waits for each of those. Call it within the
    /// runtime's context: the first write may start an early upload.
    pub fn write_now(&self, fh: u64, offset: u64, data: &[u8]) -> Option<Result<u32, FsError>> {
        let ino = self.handle_ino(fh).ok()?;
        if offset.saturating_add(data.len() as u64) > crate::config::MAX_OBJECT_SIZE {
            return None;
        }
        let io = self.io_lock(ino).ok()?;
        let _g = io.try_lock().ok()?;
        let (w, size) = {
            let t = self.inodes.lock().unwrap();
            let n = t.get(ino)?;
            match &n.working {
                Some(w) if !n.shared => (w.clone(), n.size),
                _ => return None,
            }
        };
        let end = offset + data.len() as u64;
        if end > size && !self.cache.try_resize_data(&w.name, end) {
            return None;
        }
        Some(self.write_locked(ino, &w, offset, data, size))
    }

    /// The write itself, with the node's I/O lock held, its working file
    /// `w` and the cache's room for `offset + data.len()` secured; `size`
    /// is the node's size before it.
    fn write_locked(
        &self,
        ino: u64,
        w: &Working,
        offset: u64,
        data: &[u8],
        size: u64,
    ) -> Result<u32, FsError> {
        let end = offset + data.len() as u64;
        w.direct.write_all_at(&w.file, data, offset)?;
        let mut t = self.inodes.lock().unwrap();
        let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
        n.written = true;
        if n.early.is_none() && offset == 0 && size == 0 && !n.unlinked {
            n.early = self
                .uploader
                .early(&self.key(&n.path), &w.name, &n.meta, false);
        }
        if let Some(e) = &n.early {
            e.written(&w.name, offset, end);
        }
        n.size = n.size.max(end);
        n.dirty = true;
        if !self.writeback() {
            // With the writeback cache the kernel's mtime (from the write
            // syscall) arrives by SETATTR; a write-back processed after it
            // must not move it.
            n.meta.set_mtime(SystemTime::now());
        }
        drop(t);
        if let Some((from, to)) = writeback_range(offset, end) {
            Cache::start_writeback(&w.file, from, to);
        }
        Ok(data.len() as u32)
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

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let data = self.read_at(fh, offset, size).await?;
        self.served_bytes.inc_by(data.len() as u64);
        Ok(data)
    }

    /// A read answered on the calling FUSE thread: only one the handle's
    /// download already holds (the common case of a sequential read behind
    /// a running or finished download). `None`: take [`Self::read`].
    pub fn read_now(&self, fh: u64, offset: u64, size: u32) -> Option<Result<Vec<u8>, FsError>> {
        let (ino, dl) = {
            let handles = self.handles.lock().unwrap();
            let h = handles.get(&fh)?;
            (h.ino, h.download.clone()?)
        };
        {
            // As in `read_at`: a working file, or a newer version than the
            // download's, is read elsewhere; past the end is the async path's.
            let t = self.inodes.lock().unwrap();
            let n = t.get(ino)?;
            if n.working.is_some() || n.etag != dl.tag || offset >= n.size {
                return None;
            }
        }
        let r = dl.read_now(offset, size)?;
        if let Ok(d) = &r {
            self.served_bytes.inc_by(d.len() as u64);
        }
        Some(r)
    }

    async fn read_at(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let ino = self.handle_ino(fh)?;
        let (working, file_size, key, etag, version) = {
            let t = self.inodes.lock().unwrap();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            let (key, version) = self.content_of(n);
            (n.working.clone(), n.size, key, n.etag.clone(), version)
        };
        if let Some(w) = working {
            let len = (size as u64).min(file_size.saturating_sub(offset)) as usize;
            return Ok(crate::cache::read_at_most(&w.file, offset, len)?);
        }
        if offset >= file_size {
            return Ok(Vec::new());
        }
        let dl = self
            .download_for(fh, &key, &etag, version, file_size)
            .await?;
        dl.read(offset, size).await
    }

    /// The shared download (clean copy) a handle reads from.
    async fn download_for(
        &self,
        fh: u64,
        key: &str,
        etag: &str,
        version: Option<String>,
        size: u64,
    ) -> Result<Arc<Download>, FsError> {
        if let Some(d) = self
            .handles
            .lock()
            .unwrap()
            .get(&fh)
            .and_then(|h| h.download.clone())
        {
            if d.tag == etag {
                return Ok(d);
            }
        }
        let shared = |map: &HashMap<String, std::sync::Weak<Download>>| {
            map.get(key)
                .and_then(|w| w.upgrade())
                .filter(|d| d.tag == etag && !d.failed())
        };
        let existing = shared(&self.downloads.lock().unwrap());
        let dl = match existing {
            Some(d) => d,
            None => {
                // Where the bytes come from is decided before taking the map's
                // lock (it may ask a replica which version it holds).
                let from = match (&self.regions, self.cache.has_clean(key, etag)) {
                    (Some(r), false) => r.sources_for(key, version.as_deref()).await,
                    _ => vec![Fetch::direct(self.store.clone(), version.clone())],
                };
                let mut map = self.downloads.lock().unwrap();
                match shared(&map) {
                    Some(d) => d,
                    None => {
                        let d = match self.cache.open_clean(key, etag) {
                            Some((path, len)) => {
                                Download::complete(self.cache.clone(), key, etag, path, len)?
                            }
                            None => Download::start(from, self.cache.clone(), key, etag, size)?,
                        };
                        if map.len() >= 1024 {
                            // A finished download's entry would keep its
                            // allocation (and key) for good.
                            map.retain(|_, w| w.strong_count() > 0);
                        }
                        map.insert(key.to_string(), Arc::downgrade(&d));
                        d
                    }
                }
            }
        };
        if let Some(h) = self.handles.lock().unwrap().get_mut(&fh) {
            h.download = Some(dl.clone());
        }
        Ok(dl)
    }

    /// Stages the node's working file: fsync it, journal a put, return the seq.
    /// Only after this may close()/fsync() return.
    async fn stage(&self, ino: u64) -> Result<Option<i64>, FsError> {
        let io = self.io_lock(ino)?;
        let _g = io.lock().await;
        self.stage_locked(ino).await
    }

    /// [`Core::stage`] with the node's I/O lock held.
    async fn stage_locked(&self, ino: u64) -> Result<Option<i64>, FsError> {
        let (working, path, meta, size, unlinked, early, _claim, writing, base) = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            self.refresh(n);
            if !n.dirty {
                return Ok(n.last_seq);
            }
            // What this host last saw at the key: the upload reports
            // replacing anything else (`uploader::guard`).
            let base = crate::journal::Base {
                etag: n.etag.clone(),
                version: n.version.clone(),
            };
            (
                n.working.clone(),
                n.path.clone(),
                n.meta.clone(),
                n.size,
                n.unlinked,
                n.early.take(),
                // As in `rename_file`: no finishing upload retires the file
                // until the put below is queued.
                n.working.as_ref().map(|w| self.uploader.claim(&w.name)),
                n.kernel.as_ref().is_some_and(|k| k.writing()),
                base,
            )
        };
        if unlinked {
            return Ok(None);
        }
        let Some(w) = working else { return Ok(None) };
        if let Some(e) = &early {
            if e.is_blind() {
                e.grown(w.file.metadata()?.len());
            }
            e.flushing();
        }
        let (inline, size, stamped) = if writing {
            let (inline, s) = self.read_stable(&w)?;
            (inline, s.size, Some(s))
        } else if size <= crate::journal::INLINE_MAX {
            // A small file's bytes go into the journal commit itself: one
            // sync instead of three (file, directory entry, journal).
            let mut buf = vec![0u8; size as usize];
            w.file.read_exact_at(&mut buf, 0)?;
            (Some(buf), size, None)
        } else {
            self.cache.sync_data(&w.name, &w.file)?;
            (None, size, None)
        };
        if writing && inline.is_none() {
            self.supersede_inline(&w.name).await?;
        }
        let early = early.filter(|_| inline.is_none());
        // The node is staged before the put is queued: the put may finish
        // at once, and its completion must find the node clean (else the
        // node would never learn that version, and a later copy of the
        // node, a chmod say, would name an older one).
        let was_local = {
            let mut t = self.inodes.lock().unwrap();
            let was_local = t.local_only.remove(&ino);
            if let Some(n) = t.get_mut(ino) {
                n.dirty = false;
                n.written = false;
                n.shared = true;
                n.local_only = false;
                if let Some(k) = n.kernel.as_deref_mut().filter(|_| writing) {
                    // Taken before the bytes were read: a write since shows.
                    k.stamp = stamped;
                    n.size = size;
                }
            }
            was_local
        };
        let queued = self
            .uploader
            .submit_with(
                NewOp {
                    base: Some(base),
                    ..NewOp::put(
                        self.key(&path),
                        w.name.clone(),
                        size,
                        meta.to_json(),
                        inline,
                    )
                },
                early,
            )
            .await;
        let mut t = self.inodes.lock().unwrap();
        if let Some(n) = t.get_mut(ino) {
            match &queued {
                Ok(seq) => n.last_seq = Some(*seq),
                Err(_) => {
                    // Not staged: the next close stages it again.
                    n.dirty = true;
                    n.written = true;
                    n.local_only = was_local;
                }
            }
        }
        if was_local && queued.is_err() {
            t.local_only.insert(ino);
        }
        Ok(Some(queued?))
    }

    /// A working file passthrough writers may be writing, staged as one
    /// state: its bytes if small (inline) or else fdatasync'ed, with the
    /// stamp taken before. A small file written during every one of three
    /// reads is staged as a file instead, whose upload checks it is stable.
    fn read_stable(&self, w: &Working) -> Result<(Option<Vec<u8>>, stamp::Stamp), FsError> {
        for _ in 0..3 {
            let before = stamp::of(&w.file)?;
            if before.size > crate::journal::INLINE_MAX {
                break;
            }
            let buf = crate::cache::read_at_most(&w.file, 0, before.size as usize)?;
            if buf.len() as u64 == before.size && stamp::of(&w.file)? == before {
                return Ok((Some(buf), before));
            }
        }
        let before = stamp::of(&w.file)?;
        self.cache.sync_data(&w.name, &w.file)?;
        Ok((None, before))
    }

    /// Working file `name` was just synced in a newer state than its queued
    /// puts that were staged inline: their rows' bytes must not be written
    /// back over it at recovery (SEMANTICS.md, "Passthrough": those puts
    /// take the file's later bytes).
    async fn supersede_inline(&self, name: &str) -> Result<(), FsError> {
        let users = self.uploader.users(name);
        if !users.is_empty() {
            self.journal.forget_inline(users).await?;
        }
        Ok(())
    }

    /// close() of a writer: data written to the file since the last stage
    /// becomes durable locally. A close with nothing written since (the first
    /// close of a `dup2` redirection, as in dd and shells) stages nothing; a
    /// file created or truncated but never written is staged at release.
    /// Written data counts per file, not per descriptor, because with the
    /// kernel's writeback cache any writable descriptor may carry the writes.
    pub async fn flush(&self, fh: u64) -> Result<(), FsError> {
        let (ino, write) = {
            let h = self.handles.lock().unwrap();
            let h = h.get(&fh).ok_or(FsError::BadHandle)?;
            (h.ino, h.write)
        };
        let written = {
            let mut t = self.inodes.lock().unwrap();
            t.get_mut(ino).is_some_and(|n| {
                self.refresh(n);
                n.written
            })
        };
        if write && written {
            self.stage(ino).await?;
        }
        Ok(())
    }

    fn mark_written(&self, fh: u64) {
        let Ok(ino) = self.handle_ino(fh) else { return };
        if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
            n.written = true;
        }
    }

    pub async fn fsync(&self, fh: u64) -> Result<(), FsError> {
        let ino = self.handle_ino(fh)?;
        let seq = self.stage(ino).await?;
        if self.fsync == FsyncDurability::Local {
            return Ok(());
        }
        if let Some(seq) = seq {
            self.uploader.wait(seq).await.map_err(FsError::Upload)?;
            if self.fsync == FsyncDurability::AllRegions {
                if let Some(r) = &self.replicator {
                    r.wait_replicated(seq).await.map_err(FsError::Upload)?;
                }
            }
        }
        Ok(())
    }

    pub async fn release(&self, fh: u64) -> Result<(), FsError> {
        let h = self
            .handles
            .lock()
            .unwrap()
            .remove(&fh)
            .ok_or(FsError::BadHandle)?;
        let mut backing_gone = false;
        if h.pt {
            backing_gone = self.release_backing(h.ino, h.write).await?;
        } else if let Some(k) = self
            .inodes
            .lock()
            .unwrap()
            .get_mut(h.ino)
            .and_then(|n| n.kernel.as_deref_mut())
        {
            k.cached = k.cached.saturating_sub(1);
        }
        let (local_only, dirty_alone) = {
            let t = self.inodes.lock().unwrap();
            t.get(h.ino)
                .map(|n| (n.local_only, n.dirty && n.open <= 1))
                .unwrap_or((false, false))
        };
        // Staged now: a file created or truncated but never written, or dirty
        // data (mmap writes after the last flush) nobody else has open. Not
        // another writer's unfinished data (its close will stage it).
        if local_only || dirty_alone {
            self.stage(h.ino).await?;
        }
        let (drop_file, maybe_clean) = {
            let mut t = self.inodes.lock().unwrap();
            t.touch(h.ino);
            let mut drop_file = None;
            let mut maybe_clean = None;
            let mut unused = false;
            if let Some(n) = t.get_mut(h.ino) {
                n.open = n.open.saturating_sub(1);
                if h.write {
                    n.open_writers = n.open_writers.saturating_sub(1);
                }
                if n.unlinked && n.open == 0 {
                    unused = !n.shared;
                } else if (h.write || backing_gone) && n.open_writers == 0 {
                    maybe_clean = n.working.as_ref().map(|w| w.name.clone());
                }
                if n.kernel.as_ref().is_some_and(|k| k.is_idle()) {
                    n.kernel = None;
                }
            }
            if unused {
                drop_file = t.set_working(h.ino, None);
            }
            (drop_file, maybe_clean)
        };
        if let Some(w) = drop_file {
            self.cache.remove_data(&w.name);
        }
        if let Some(name) = maybe_clean {
            self.settle_working(h.ino, &name).await;
        }
        drop(h.download);
        Ok(())
    }

    /// A passthrough open's release. The last writer's: what was written
    /// since the last stage (through a descriptor that outlived a close, or
    /// by mmap before the close) is staged. The last open's: the kernel's
    /// backing file is let go. Returns whether it was.
    async fn release_backing(&self, ino: u64, write: bool) -> Result<bool, FsError> {
        let io = self.io_lock(ino)?;
        let _g = io.lock().await;
        let last_writer = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            // While this writer still counts, so its writes are found.
            self.refresh(n);
            let named = !n.unlinked;
            let Some(b) = n.kernel.as_mut().and_then(|k| k.backing.as_mut()) else {
                return Ok(false);
            };
            if write {
                b.writers -= 1;
            }
            (write && b.writers == 0).then_some(named && n.dirty)
        };
        let staged = match last_writer {
            Some(true) => self.stage_locked(ino).await.map(|_| ()),
            _ => Ok(()),
        };
        let gone = {
            let mut t = self.inodes.lock().unwrap();
            let k = t.get_mut(ino).and_then(|n| n.kernel.as_deref_mut());
            k.and_then(|k| {
                let b = k.backing.as_mut()?;
                b.opens -= 1;
                (b.opens == 0).then(|| k.backing.take()).flatten()
            })
        };
        let was = gone.is_some();
        self.drop_backing(gone);
        staged.map(|_| was)
    }

    /// After the last writer closed: if the working file's data is uploaded
    /// (the upload finished while the file was still open), it becomes the
    /// clean copy of that version, so the bucket is asked again after
    /// `attr_ttl` like for any clean file and another client's newer version
    /// is seen.
    async fn settle_working(&self, ino: u64, name: &str) {
        let Ok(path) = self.path_of(ino) else { return };
        let key = self.key(&path);
        if self.uploader.references(name) || !self.uploader.pending_for(&key).is_empty() {
            return;
        }
        let Ok(io) = self.io_lock(ino) else { return };
        let _g = io.lock().await;
        let etag = {
            let mut t = self.inodes.lock().unwrap();
            let Some(n) = t.get_mut(ino) else { return };
            let settled = n.open_writers == 0
                && !n.dirty
                && !n.shared
                && n.kernel.as_ref().is_none_or(|k| k.backing.is_none())
                && !n.local_only
                && !n.unlinked
                && !n.etag.is_empty()
                && n.working.as_ref().is_some_and(|w| w.name == name);
            if !settled {
                return;
            }
            let etag = n.etag.clone();
            t.set_working(ino, None);
            etag
        };
        self.cache.make_clean(name, &key, &etag);
    }

    // ----- extended attributes -----

    /// An extended attribute answered from memory (the node's metadata is
    /// known); `None` for regionfs's own attributes and unknown metadata.
    pub fn getxattr_cached(&self, ino: u64, name: &str) -> Option<Result<Vec<u8>, FsError>> {
        if name == "user.regionfs.version" || name == "user.regionfs.replication" {
            return None;
        }
        let t = self.inodes.lock().unwrap();
        let n = t.get(ino).filter(|n| n.meta_known)?;
        Some(n.meta.xattrs.get(name).cloned().ok_or(FsError::NoAttribute))
    }

    pub async fn getxattr(&self, ino: u64, name: &str) -> Result<Vec<u8>, FsError> {
        if name == "user.regionfs.version" {
            return self.version_of(ino).await.map(|v| v.into_bytes());
        }
        if name == "user.regionfs.replication" {
            return self.replication_of(ino).await.map(|v| v.into_bytes());
        }
        self.ensure_meta(ino).await?;
        let t = self.inodes.lock().unwrap();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        n.meta.xattrs.get(name).cloned().ok_or(FsError::NoAttribute)
    }

    async fn ensure_meta(&self, ino: u64) -> Result<(), FsError> {
        let known = self
            .inodes
            .lock()
            .unwrap()
            .get(ino)
            .ok_or(FsError::NotFound)?
            .meta_known;
        if !known {
            self.refresh_meta(ino).await?;
        }
        Ok(())
    }

    /// The source version id of the node's current content, or `pending`/`local`.
    async fn version_of(&self, ino: u64) -> Result<String, FsError> {
        let (path, dirty, shared) = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            self.refresh(n);
            (n.path.clone(), n.dirty, n.shared)
        };
        if dirty {
            return Ok("local".into());
        }
        let key = self.key(&path);
        if shared || !self.uploader.pending_for(&key).is_empty() {
            return Ok("pending".into());
        }
        if let Some(op) = self.journal.latest_done(key.clone()).await? {
            if let Some(v) = op.version_id {
                return Ok(v);
            }
        }
        let info = self
            .ask(&format!("a HEAD of `{key}`"), self.store.head(&key, None))
            .await?;
        Ok(info.version_id.unwrap_or_default())
    }

    /// `{"<destination>": {"status": "PENDING|COMPLETED|FAILED", "error": …}}`
    /// for the file's newest replicated version.
    async fn replication_of(&self, ino: u64) -> Result<String, FsError> {
        let path = self.path_of(ino)?;
        let tasks = self.journal.latest_tasks(self.key(&path)).await?;
        let map: serde_json::Map<String, serde_json::Value> = tasks
            .into_iter()
            .map(|t| {
                (
                    t.destination,
                    serde_json::json!({"status": t.status, "version": t.version_id, "error": t.error}),
                )
            })
            .collect();
        Ok(serde_json::Value::Object(map).to_string())
    }

    pub async fn listxattr(&self, ino: u64) -> Result<Vec<String>, FsError> {
        self.ensure_meta(ino).await?;
        let t = self.inodes.lock().unwrap();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        Ok(n.meta.xattrs.keys().cloned().collect())
    }

    pub async fn setxattr(
        &self,
        ino: u64,
        name: &str,
        value: Option<&[u8]>,
        flags: i32,
    ) -> Result<(), FsError> {
        self.check_writable()?;
        if !name.starts_with("user.") {
            return Err(FsError::NotSupported(
                "only user.* attributes can be stored",
            ));
        }
        if name.starts_with("user.regionfs.") {
            return Err(FsError::NotPermitted(
                "user.regionfs.* attributes are read-only",
            ));
        }
        self.ensure_meta(ino).await?;
        let io = self.io_lock(ino)?;
        let _g = io.lock().await;
        let dirty = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            let exists = n.meta.xattrs.contains_key(name);
            match value {
                Some(v) => {
                    if flags & libc::XATTR_CREATE != 0 && exists {
                        return Err(FsError::Exists);
                    }
                    if flags & libc::XATTR_REPLACE != 0 && !exists {
                        return Err(FsError::NoAttribute);
                    }
                    n.meta.xattrs.insert(name.to_string(), v.to_vec());
                }
                None => {
                    if n.meta.xattrs.remove(name).is_none() {
                        return Err(FsError::NoAttribute);
                    }
                }
            }
            n.ctime = SystemTime::now();
            n.dirty
        };
        if !dirty {
            self.store_meta_locked(ino).await?;
        }
        Ok(())
    }

    // ----- upload completions -----

    /// Applies a finished upload to the node and the cache: the staged file
    /// becomes the clean copy of that version, or is removed when superseded.
    /// Called while the operation is still queued (see
    /// [`crate::uploader::Landed`]): it does not count as queued here.
    pub fn on_uploaded(&self, c: &Completion) {
        let key = &c.op.key;
        let rel = key.strip_prefix(&self.prefix).unwrap_or(key);
        let mut t = self.inodes.lock().unwrap();
        // Both asked under the inodes lock: a stage or rename queues its op
        // before it updates the node under this lock, and takes its claim
        // while it reads the node under it, so neither can fall between
        // these answers and the node's state below.
        let still_queued = self.uploader.submitting(key)
            || self
                .uploader
                .pending_for(key)
                .iter()
                .any(|o| o.seq != c.op.seq);
        // Another queued operation may stage the same file under another key
        // (a rename's put), or be about to (a claim): the last of them to
        // finish decides what becomes of it.
        let referenced =
            c.op.file
                .as_deref()
                .is_some_and(|f| self.uploader.references_besides(f, &c.op));
        let at_key = t.lookup_path(rel.trim_end_matches('/'));
        if let Some(n) = at_key.and_then(|i| t.get_mut(i)) {
            self.refresh(n);
            if !still_queued && !n.dirty && c.op.kind != OpKind::Delete {
                self.learn_uploaded(rel, c);
                // The node is the version it now names: a node made from a
                // listing while the op was queued held default attributes.
                if let Some(meta) = ObjectMeta::from_json(&c.op.meta) {
                    if meta.mode & S_IFMT == n.meta.mode & S_IFMT {
                        n.meta = meta;
                        n.meta_known = true;
                    }
                }
                n.content_key = None;
                n.version = c.result.version_id.clone();
                if !c.result.etag.is_empty() {
                    // The uploaded bytes were written through the kernel's
                    // pages (or are the pages' content, renamed or re-tagged).
                    if n.kernel_tag == Some(inode::content_tag(&n.etag)) {
                        n.kernel_tag = Some(inode::content_tag(&c.result.etag));
                    }
                    n.etag = c.result.etag.clone();
                }
                n.fetched = Some(Instant::now());
            }
        }
        let Some(f) = c.op.file.as_deref() else {
            return;
        };
        if referenced {
            return;
        }
        // Only a node holding the file can hand it to a new op (a claim is
        // taken from `working`, under the lock): if none does, nothing can
        // reference it any more.
        let mut make_clean = false;
        // The node's I/O lock while its working file is retired: whoever
        // holds it may have read the node and be about to use the file by
        // name (an open copying it, a truncate); then the file stays.
        let mut retiring = None;
        let keep = match t.holder_of(f) {
            None => false,
            Some(h) => {
                let n = t.get_mut(h).expect("a holder exists");
                if n.unlinked && n.open == 0 {
                    // Its name went and no one has it open: the file goes.
                    t.set_working(h, None);
                    false
                } else {
                    // A backing file stays the working file until the kernel
                    // lets go of it (then `settle_working`).
                    let backed = n.kernel.as_ref().is_some_and(|k| k.backing.is_some());
                    let idle = n.io().try_lock_owned().ok();
                    if at_key == Some(h)
                        && !still_queued
                        && n.shared
                        && n.open_writers == 0
                        && !backed
                        && !c.result.etag.is_empty()
                        && idle.is_some()
                    {
                        n.shared = false;
                        t.set_working(h, None);
                        make_clean = true;
                        retiring = idle;
                    } else if at_key != Some(h) || !still_queued {
                        // No queued op reads it: writes may go in place.
                        n.shared = false;
                    }
                    true
                }
            }
        };
        drop(t);
        if make_clean {
            self.cache.make_clean(f, key, &c.result.etag);
        } else if !keep {
            self.cache.remove_data(f);
        }
        drop(retiring);
    }

    /// A queued operation's input was gone and nothing queued after it sets
    /// its key (see `uploader::replan`): queues what the name holds here
    /// now (its working file, else a copy of the version holding its
    /// bytes), which supersedes it. Nothing when the name is gone or its
    /// bytes are not here: the operation stays listed as lost.
    ///
    /// The uploader learns what supersedes the lost operation when `landed`
    /// is dropped, so it is held until the new operation is queued — unless
    /// the node is busy (its I/O lock held: a rename or flush may be waiting
    /// for the lost operation itself), when it is let go at once and the
    /// new operation follows in the background.
    pub fn requeue_lost(self: &Arc<Self>, landed: crate::uploader::Landed) {
        let crate::uploader::Event::Lost { op, error } = &landed.event else {
            return;
        };
        let rel = op.key.strip_prefix(&self.prefix).unwrap_or(&op.key);
        let path = rel.trim_end_matches('/').to_string();
        let gone = (op.src_key.clone(), op.src_version.clone());
        let error = error.clone();
        let me = self.clone();
        tokio::spawn(async move {
            let mut landed = Some(landed);
            let requeued = me.requeue(&path, gone, &mut landed).await;
            drop(landed);
            match requeued {
                Ok(true) => tracing::info!(path, error, "queued the bytes the name holds here in place of an operation whose input was gone"),
                Ok(false) => {}
                Err(e) => tracing::error!(path, error = %e, "cannot queue the name's bytes again"),
            }
        });
    }

    async fn requeue(
        &self,
        path: &str,
        gone: (Option<String>, Option<String>),
        landed: &mut Option<crate::uploader::Landed>,
    ) -> Result<bool, FsError> {
        let Some(ino) = self.inodes.lock().unwrap().lookup_path(path) else {
            return Ok(false);
        };
        let io = self.io_lock(ino)?;
        let _g = match io.try_lock() {
            Ok(g) => g,
            Err(_) => {
                landed.take();
                io.lock().await
            }
        };
        let content = {
            let mut t = self.inodes.lock().unwrap();
            let Some(n) = t.get_mut(ino).filter(|n| !n.unlinked && !n.is_dir()) else {
                return Ok(false);
            };
            if n.working.is_some() {
                // Staged again as it is now.
                n.dirty = true;
                None
            } else {
                Some((self.content_of(n), n.meta.clone(), n.size))
            }
        };
        match content {
            None => Ok(self.stage_locked(ino).await?.is_some()),
            Some(((key, Some(version)), meta, size))
                if (Some(&key), Some(&version)) != (gone.0.as_ref(), gone.1.as_ref()) =>
            {
                let op = NewOp {
                    key: self.key(path),
                    kind: OpKind::Copy,
                    file: None,
                    size,
                    meta: meta.to_json(),
                    src_key: Some(key),
                    src_version: Some(version),
                    inline: None,
                    base: None,
                };
                let seq = self.uploader.submit(op).await?;
                if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
                    n.last_seq = Some(seq);
                }
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }

    /// Tells the indexer what a HEAD of an uploaded file's version would say.
    /// Only below 5 MiB, S3's smallest part: a file uploaded in parts while
    /// it was written carries other metadata (no mtime, see
    /// `uploader::early`), which its HEAD will tell.
    fn learn_uploaded(&self, rel: &str, c: &Completion) {
        let (Some(ix), Some(v)) = (&self.index, &c.result.version_id) else {
            return;
        };
        if c.op.size >= crate::config::MIN_PART_SIZE
            || c.op.key.ends_with('/')
            || c.result.etag.is_empty()
        {
            return;
        }
        let Some(meta) = ObjectMeta::from_json(&c.op.meta) else {
            return;
        };
        let o = meta.to_put_options_for(&c.op.key);
        ix.learn(rel, Fact::new(v, o.content_type.as_deref(), &o.metadata));
    }

    pub fn statfs(&self) -> (u64, u64) {
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
