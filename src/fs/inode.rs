//! The inode table: stable inode numbers for paths, and what is known of each
//! node (attributes, its local working file, its upload state).
//!
//! Lock order: a node's `io` lock (async, held across cache I/O and journal
//! commits) before the table's mutex (std, never held across an await).
//!
//! Bounded size: a node lives while the kernel holds its inode, and the
//! kernel holds an inode while a dentry names it, which on a large machine is
//! until unmount. So [`Inodes::trim`] picks the least recently used idle clean
//! files beyond a limit: those the kernel does not hold are dropped at once,
//! the others are named for the adapter to invalidate in the kernel, whose
//! FORGET then drops them. A dropped node costs a lookup (and, once its
//! attributes are older than `attr_ttl`, a HEAD) at its next use.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::meta::{ObjectMeta, S_IFDIR, S_IFLNK, S_IFMT};

pub const ROOT: u64 = 1;

/// Stands for an ETag where only equality matters (64 bits: a chance
/// collision between two versions of one file is not a concern).
pub(crate) fn content_tag(etag: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    etag.hash(&mut h);
    h.finish()
}

/// A local file holding the node's current content.
#[derive(Clone)]
pub(crate) struct Working {
    /// Name under the cache's `data/`.
    pub name: String,
    pub file: Arc<File>,
    /// Its large writes bypass the page cache (see [`crate::cache::direct`]).
    pub direct: Arc<crate::cache::direct::Direct>,
}

pub(crate) struct Node {
    pub ino: u64,
    pub path: String,
    pub meta: ObjectMeta,
    pub size: u64,
    pub(crate) ctime: SystemTime,
    /// ETag of the object this node's content came from (clean copies key on it).
    pub etag: String,
    /// Version id in the source bucket of the last finished upload, if known.
    pub version: Option<String>,
    /// Where the bytes live while a rename's copy is queued: the old key (at
    /// `version`). `None`: the node's own key.
    pub(crate) content_key: Option<String>,
    /// Changed only through [`Inodes::set_working`].
    working: Option<Working>,
    /// What the bytes are next to the bucket's (see [`Content`]).
    pub(crate) content: Content,
    /// The last operation staged for this node (fsync waits on it).
    pub(crate) last_seq: Option<i64>,
    pub open: u32,
    pub(crate) open_writers: u32,
    /// When the attributes were last read from the bucket.
    pub fetched: Option<Instant>,
    /// The LastModified second of the version the attributes were read from,
    /// kept only when the read came in a later second: a listing then showing
    /// this ETag and second shows that same version (any later version, even a
    /// metadata-only copy with the same ETag, carries a later second).
    pub(crate) listed_as: Option<i64>,
    /// The bucket's metadata for this node is known (HEAD done, or written
    /// here); set with `fetched` (see [`Node::learned_meta`]).
    meta_known: bool,
    /// No name leads here any more (unlinked, or replaced by a rename); set
    /// only by the table, which removes the name with it.
    unlinked: bool,
    /// Entries the kernel holds for this inode (lookups minus forgets).
    pub(crate) lookups: u64,
    /// The content (a [`content_tag`] of the ETag) the kernel's page cache
    /// holds for this inode, as of the last open: while it is still the
    /// node's, an open keeps the cache.
    pub(crate) kernel_tag: Option<u64>,
    /// Parts of the working file already on their way to the bucket (a file
    /// written from empty); handed to the put at staging.
    pub early: Option<Arc<crate::uploader::EarlyUpload>>,
    /// How the kernel has the file open, with passthrough on (see
    /// `fs::passthrough`); boxed and absent while there is nothing to keep.
    pub kernel: Option<Box<crate::fs::passthrough::KernelState>>,
    /// Made at first use: most nodes are only ever listed or stat'ed.
    io: Option<Arc<tokio::sync::Mutex<()>>>,
    /// When the node was last used (seconds since the table was made).
    pub(crate) used: u32,
    /// The kernel was asked to drop its entry (see [`Inodes::trim`]).
    release_asked: bool,
}

/// What a node's bytes are next to the bucket's. The fields are private:
/// `fs` changes them only through the transitions below, each named for the
/// event that makes it, so flags that must move together do. Those that
/// move `local_only` are the table's (it keeps the set of local-only nodes
/// in step): [`Inodes::created`], [`Inodes::staged`], [`Inodes::unstaged`],
/// [`Inodes::discard`].
///
/// The states that occur (the working file is [`Node::working`]):
/// - clean (`Content::default()`): the bytes are the version the node names,
///   in the bucket or in a working file equal to it;
/// - created here (`local_only`, `dirty`): exists nowhere else yet;
/// - staged (`shared`): a queued put reads the working file, so a write
///   copies it first;
/// - changed (`dirty`): the working file differs from everything staged;
///   `written` says data (not only a create or truncate) changed since the
///   last stage. A changed file may still be read by an older queued put
///   (`shared` too) until its first write copies it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Content {
    dirty: bool,
    written: bool,
    shared: bool,
    local_only: bool,
}

impl Content {
    /// The working file differs from every staged or uploaded state.
    pub(crate) fn dirty(self) -> bool {
        self.dirty
    }
    /// Data was written (or ftruncated) since the last stage: the next close
    /// of a writer stages it. Creating or O_TRUNC alone does not count.
    pub(crate) fn written(self) -> bool {
        self.written
    }
    /// The working file is referenced by a staged put: copy before writing.
    pub(crate) fn shared(self) -> bool {
        self.shared
    }
    /// Exists only here: created, not yet staged.
    pub(crate) fn local_only(self) -> bool {
        self.local_only
    }

    /// Data went into the working file: it differs, and the next close of a
    /// writer stages it.
    pub(crate) fn wrote(&mut self) {
        self.dirty = true;
        self.written = true;
    }
    /// The kernel reports data written through a descriptor (a SETATTR of
    /// the mtime after write-back): the next close of a writer stages.
    pub(crate) fn note_written(&mut self) {
        self.written = true;
    }
    /// The working file differs without data written (a truncate, a symlink
    /// made, a lost upload's bytes to queue again): staged at release, or
    /// by the caller at once.
    pub(crate) fn changed(&mut self) {
        self.dirty = true;
    }
    /// The working file is the node's own (a fresh copy, or no queued put
    /// reads it any more): writes may go in place.
    pub(crate) fn owns_file(&mut self) {
        self.shared = false;
    }
    /// A node made again from a queued put: clean, and its working file (if
    /// any) is the put's.
    pub(crate) fn adopted(&mut self, queued_file: bool) {
        self.shared = queued_file;
    }

    fn created(&mut self) {
        *self = Content {
            dirty: true,
            written: self.written,
            shared: false,
            local_only: true,
        };
    }
    fn staged(&mut self) {
        *self = Content {
            dirty: false,
            written: false,
            shared: true,
            local_only: false,
        };
    }
    fn unstaged(&mut self, before: Content, has_bytes: bool) {
        *self = Content {
            dirty: before.dirty || has_bytes,
            written: before.written || has_bytes,
            shared: self.shared,
            local_only: before.local_only,
        };
    }
    fn discard(&mut self) {
        self.dirty = false;
        self.written = false;
        self.local_only = false;
    }
}

impl Node {
    /// Nothing here but what the bucket says: no working file, no change.
    pub(crate) fn only_in_bucket(&self) -> bool {
        self.working.is_none() && !self.content.dirty
    }
    /// The local file holding the node's current content, if any.
    pub(crate) fn working(&self) -> Option<&Working> {
        self.working.as_ref()
    }
    /// The working file, and the kernel's state, changeable beside it.
    pub(crate) fn working_and_kernel(
        &mut self,
    ) -> (
        Option<&Working>,
        Option<&mut crate::fs::passthrough::KernelState>,
    ) {
        (self.working.as_ref(), self.kernel.as_deref_mut())
    }
    pub(crate) fn unlinked(&self) -> bool {
        self.unlinked
    }
    pub(crate) fn meta_known(&self) -> bool {
        self.meta_known
    }
    /// The node's attributes are the bucket's as of `at` (or written here).
    pub(crate) fn learned_meta(&mut self, at: Instant) {
        self.meta_known = true;
        self.fetched = Some(at);
    }
    /// The node's attributes are to be asked for again at the next use.
    pub(crate) fn forget_meta(&mut self) {
        self.meta_known = false;
        self.fetched = None;
    }

    pub fn is_dir(&self) -> bool {
        self.meta.mode & S_IFMT == S_IFDIR
    }
    pub(crate) fn is_symlink(&self) -> bool {
        self.meta.mode & S_IFMT == S_IFLNK
    }

    /// The node's `io` lock (see the lock order above).
    pub fn io(&mut self) -> Arc<tokio::sync::Mutex<()>> {
        self.io
            .get_or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }

    /// Nothing here but what the bucket can tell again: a file (or symlink)
    /// not open, without local data, upload or pending change (nor a rename
    /// whose copy is still queued).
    /// A file whose bytes are only a staged put still queued (closed, no
    /// later change, no I/O in progress): the queued operation names its
    /// cache file, so the node can go and be made again from the queue
    /// (`Core::adopt_pending`). Letting these go keeps the memory and the
    /// descriptors of a long upload backlog bounded.
    fn idle_staged(&self) -> bool {
        self.ino != ROOT
            && !self.is_dir()
            && self.open == 0
            && self.working.is_some()
            && self.content.shared
            && !self.content.dirty
            && !self.content.local_only
            && !self.unlinked
            && self.early.is_none()
            && self.content_key.is_none()
            && self.kernel.is_none()
            && self.io.as_ref().is_none_or(|m| Arc::strong_count(m) == 1)
    }

    fn idle_clean(&self) -> bool {
        self.ino != ROOT
            && !self.is_dir()
            && self.open == 0
            && self.working.is_none()
            && self.content == Content::default()
            && !self.unlinked
            && self.early.is_none()
            && self.content_key.is_none()
            && self.kernel.is_none()
    }
}

pub(crate) struct Inodes {
    /// Boxed: the table keeps spare slots as it grows, and a slot is then a
    /// pointer rather than a whole node.
    pub nodes: HashMap<u64, Box<Node>>,
    pub(crate) by_path: HashMap<String, u64>,
    /// Nodes that exist only locally (created and not yet staged), kept in
    /// step with their [`Content`] by the transitions that move it.
    local_only: HashSet<u64>,
    /// The node holding each working file (see [`Inodes::set_working`]).
    holders: HashMap<String, u64>,
    next: u64,
    epoch: Instant,
}

impl Inodes {
    pub fn new(root_meta: ObjectMeta) -> Inodes {
        let mut t = Inodes {
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            local_only: HashSet::new(),
            holders: HashMap::new(),
            next: ROOT + 1,
            epoch: Instant::now(),
        };
        let mut root = Self::blank(ROOT, String::new(), root_meta, 0);
        root.learned_meta(Instant::now());
        t.nodes.insert(ROOT, Box::new(root));
        t.by_path.insert(String::new(), ROOT);
        t
    }

    fn blank(ino: u64, path: String, meta: ObjectMeta, used: u32) -> Node {
        Node {
            ino,
            path,
            ctime: meta.mtime(),
            meta,
            size: 0,
            etag: String::new(),
            version: None,
            content_key: None,
            working: None,
            content: Content::default(),
            last_seq: None,
            open: 0,
            open_writers: 0,
            fetched: None,
            listed_as: None,
            meta_known: false,
            unlinked: false,
            lookups: 0,
            kernel_tag: None,
            early: None,
            kernel: None,
            io: None,
            used,
            release_asked: false,
        }
    }

    fn now_s(&self) -> u32 {
        self.epoch.elapsed().as_secs() as u32
    }

    /// Marks a node used now: trimming lets go of the least recently used.
    pub fn touch(&mut self, ino: u64) {
        let now = self.now_s();
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.used = now;
            n.release_asked = false;
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino).map(|n| &**n)
    }

    pub(crate) fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino).map(|n| &mut **n)
    }

    pub(crate) fn lookup_path(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// The node at `path`, created with `meta` if there is none; an existing node
    /// of another file type is replaced (the bucket changed under us).
    pub(crate) fn upsert(&mut self, path: &str, meta: ObjectMeta) -> u64 {
        if let Some(ino) = self.lookup_path(path) {
            let n = self.nodes.get_mut(&ino).expect("by_path points at a node");
            if n.meta.mode & S_IFMT == meta.mode & S_IFMT {
                return ino;
            }
            self.detach(ino);
        }
        let ino = self.next;
        self.next += 1;
        let used = self.now_s();
        self.nodes.insert(
            ino,
            Box::new(Self::blank(ino, path.to_string(), meta, used)),
        );
        self.by_path.insert(path.to_string(), ino);
        ino
    }

    /// Removes a node's name (unlink, or replaced by rename); the node lives on
    /// while the kernel or open handles still use it.
    pub fn detach(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            if self.by_path.get(&n.path) == Some(&ino) {
                self.by_path.remove(&n.path);
            }
            n.unlinked = true;
            // Nothing without a name is uploaded at its close.
            n.content.local_only = false;
            self.local_only.remove(&ino);
        }
    }

    /// Node `ino` was made here and exists nowhere else yet (see [`Content`]).
    pub(crate) fn created(&mut self, ino: u64) {
        self.with_content(ino, Content::created);
    }

    /// Node `ino`'s working file is now read by a queued put; returns the
    /// content before, for [`Inodes::unstaged`] should the queueing fail.
    pub(crate) fn staged(&mut self, ino: u64) -> Option<Content> {
        self.with_content(ino, Content::staged)
    }

    /// Queueing the put that [`Inodes::staged`] announced failed: the node
    /// is as `before`, and changed if it has bytes of its own (`has_bytes`),
    /// so the next close stages it again.
    pub(crate) fn unstaged(&mut self, ino: u64, before: Content, has_bytes: bool) {
        self.with_content(ino, |c| c.unstaged(before, has_bytes));
    }

    /// The node's name is gone (unlink): changes not yet staged go with it.
    pub(crate) fn discard(&mut self, ino: u64) {
        self.with_content(ino, Content::discard);
    }

    /// Whether node `ino` exists only here.
    pub(crate) fn is_local_only(&self, ino: u64) -> bool {
        self.local_only.contains(&ino)
    }

    fn with_content(&mut self, ino: u64, change: impl FnOnce(&mut Content)) -> Option<Content> {
        let n = self.nodes.get_mut(&ino)?;
        let before = n.content;
        change(&mut n.content);
        if n.content.local_only && !n.unlinked {
            self.local_only.insert(ino);
        } else {
            n.content.local_only = false;
            self.local_only.remove(&ino);
        }
        Some(before)
    }

    /// Gives node `ino` the working file `w` (or none), returning the one it
    /// had. The only way a node's working file changes, so that the node
    /// holding a file is always known: an upload of that file finishing
    /// must not remove it while a node (at any path, or unlinked and open)
    /// still reads and writes it.
    pub(crate) fn set_working(&mut self, ino: u64, w: Option<Working>) -> Option<Working> {
        let n = self.nodes.get_mut(&ino)?;
        let old = std::mem::replace(&mut n.working, w);
        if let Some(o) = &old {
            if self.holders.get(&o.name) == Some(&ino) {
                self.holders.remove(&o.name);
            }
        }
        if let Some(new) = n.working() {
            self.holders.insert(new.name.clone(), ino);
        }
        old
    }

    /// The node whose working file is `file`.
    pub(crate) fn holder_of(&self, file: &str) -> Option<u64> {
        let ino = *self.holders.get(file)?;
        let holds = self
            .nodes
            .get(&ino)
            .and_then(|n| n.working())
            .is_some_and(|w| w.name == file);
        holds.then_some(ino)
    }

    /// Moves a node (and, for a directory, every node below it) to a new path.
    pub fn rename(&mut self, ino: u64, to: &str) {
        let Some(from) = self.nodes.get(&ino).map(|n| n.path.clone()) else {
            return;
        };
        let below = format!("{from}/");
        let moved: Vec<(u64, String)> = self
            .by_path
            .iter()
            .filter(|(p, _)| **p == from || p.starts_with(&below))
            .map(|(p, i)| (*i, format!("{to}{}", &p[from.len()..])))
            .collect();
        for (i, _) in &moved {
            let p = self.nodes[i].path.clone();
            self.by_path.remove(&p);
        }
        for (i, p) in moved {
            if let Some(old) = self.by_path.insert(p.clone(), i) {
                if old != i {
                    if let Some(n) = self.nodes.get_mut(&old) {
                        n.unlinked = true;
                        n.content.local_only = false;
                    }
                    self.local_only.remove(&old);
                }
            }
            if let Some(n) = self.nodes.get_mut(&i) {
                n.path = p;
            }
        }
    }

    /// Nodes under directory `dir` that exist only locally.
    pub(crate) fn local_children(&self, dir: &str) -> Vec<u64> {
        self.local_only
            .iter()
            .filter(|i| {
                self.nodes
                    .get(i)
                    .is_some_and(|n| crate::names::parent_of(&n.path) == dir && !n.path.is_empty())
            })
            .copied()
            .collect()
    }

    /// Drops a node the kernel forgot, unless something still needs it.
    /// `queued` says which cache files queued operations read (see
    /// [`Inodes::trim`]).
    pub(crate) fn forget(&mut self, ino: u64, count: u64, queued: impl Fn(&str) -> bool) {
        if ino == ROOT {
            return;
        }
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.lookups = n.lookups.saturating_sub(count);
        }
        let removable = self.nodes.get(&ino).is_some_and(|n| {
            let staged = n.idle_staged() && n.working().is_some_and(|w| queued(&w.name));
            n.lookups == 0
                && n.open == 0
                && (n.working().is_none() || staged)
                && !n.content.local_only
                && n.kernel.is_none()
                && (n.unlinked || (!n.content.dirty && !n.content.shared) || staged)
        });
        if removable {
            self.set_working(ino, None);
            if let Some(n) = self.nodes.remove(&ino) {
                if self.by_path.get(&n.path) == Some(&ino) {
                    self.by_path.remove(&n.path);
                }
            }
        }
    }

    /// Brings the table back to three quarters of `limit` nodes when it holds
    /// more, letting go of idle clean files unused for `idle_s` seconds or
    /// more, least recently used first. Those the kernel does not hold are
    /// dropped here; the others are returned as (parent inode, name) for the
    /// kernel to drop its entry, after which its FORGET drops the node.
    /// Directories are kept (their children's entries pin them in the kernel
    /// anyway), and so is everything with local state.
    ///
    /// A file whose bytes are a staged put still queued (`queued` says
    /// which cache files queued operations read) goes too: its working file
    /// stays in the cache for the upload, and a later lookup makes the node
    /// again from the queued operation.
    pub fn trim(
        &mut self,
        limit: usize,
        idle_s: u32,
        queued: impl Fn(&str) -> bool,
    ) -> Vec<(u64, String)> {
        if self.nodes.len() <= limit {
            return Vec::new();
        }
        let now = self.now_s();
        let mut idle: Vec<(u32, u64)> = self
            .nodes
            .values()
            .filter(|n| !n.release_asked && now.saturating_sub(n.used) >= idle_s)
            .filter(|n| {
                n.idle_clean() || (n.idle_staged() && n.working().is_some_and(|w| queued(&w.name)))
            })
            .map(|n| (n.used, n.ino))
            .collect();
        idle.sort_unstable();
        let excess = self.nodes.len() - (limit - limit / 4);
        let mut asks = Vec::new();
        for (_, ino) in idle.into_iter().take(excess) {
            let n = &self.nodes[&ino];
            if n.lookups == 0 {
                self.set_working(ino, None);
                let n = self.nodes.remove(&ino).expect("listed above");
                if self.by_path.get(&n.path) == Some(&ino) {
                    self.by_path.remove(&n.path);
                }
                continue;
            }
            let parent = crate::names::parent_of(&n.path);
            if let Some(&p) = self.by_path.get(parent) {
                asks.push((p, crate::names::name_of(&n.path).to_string()));
                self.nodes
                    .get_mut(&ino)
                    .expect("listed above")
                    .release_asked = true;
            }
        }
        asks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(files: usize) -> Inodes {
        let dir = ObjectMeta::new(S_IFDIR | 0o755, 0, 0);
        let mut t = Inodes::new(dir.clone());
        t.upsert("d", dir);
        for i in 0..files {
            let ino = t.upsert(&format!("d/f{i}"), ObjectMeta::new(0o100644, 0, 0));
            t.get_mut(ino).unwrap().lookups = 1;
        }
        t
    }

    #[test]
    fn trim_lets_go_of_idle_clean_files_only_and_keeps_three_quarters() {
        let mut t = table(20);
        assert!(
            t.trim(100, 0, |_| false).is_empty(),
            "under the limit: nothing"
        );
        let ino = |t: &Inodes, i: usize| t.lookup_path(&format!("d/f{i}")).unwrap();
        // Local state of every kind is kept.
        let (a, b, c) = (ino(&t, 0), ino(&t, 1), ino(&t, 2));
        t.get_mut(a).unwrap().open = 1;
        t.get_mut(b).unwrap().content.changed();
        // Listed only, never handed to the kernel.
        t.get_mut(c).unwrap().lookups = 0;
        // 22 nodes (root, d, 20 files), limit 16: down to 12.
        let asks = t.trim(16, 0, |_| false);
        assert_eq!(
            t.nodes.len(),
            21,
            "the unreferenced node is dropped at once"
        );
        assert_eq!(asks.len(), 9, "the rest asked of the kernel");
        let d = t.lookup_path("d").unwrap();
        assert!(asks.iter().all(|(p, n)| *p == d && n != "f0" && n != "f1"));
        assert!(t.lookup_path("d/f2").is_none());
        // Asked once: the kernel's FORGET does the rest.
        assert!(t.trim(16, 0, |_| false).iter().all(|a| !asks.contains(a)));
        for (_, name) in &asks {
            let i = t.lookup_path(&format!("d/{name}")).unwrap();
            t.forget(i, 1, |_| false);
        }
        assert_eq!(t.nodes.len(), 12);
        assert!(t.get(a).is_some() && t.get(b).is_some() && t.get(ROOT).is_some());
    }

    #[test]
    fn staging_takes_a_created_file_out_of_the_local_set_and_a_failed_queue_puts_it_back() {
        let mut t = table(2);
        let a = t.lookup_path("d/f0").unwrap();
        t.created(a);
        let c = t.get(a).unwrap().content;
        assert!(c.local_only() && c.dirty() && !c.shared() && !c.written());
        assert!(t.is_local_only(a));
        assert_eq!(t.local_children("d"), vec![a]);

        t.get_mut(a).unwrap().content.wrote();
        let before = t.staged(a).expect("the node exists");
        let c = t.get(a).unwrap().content;
        assert!(c.shared() && !c.dirty() && !c.written() && !c.local_only());
        assert!(!t.is_local_only(a) && t.local_children("d").is_empty());

        t.unstaged(a, before, true);
        let c = t.get(a).unwrap().content;
        assert!(c.local_only() && c.dirty() && c.written(), "{c:?}");
        assert!(t.is_local_only(a), "the next close stages it as new again");

        // A write after staging copies the file first: it is its own again.
        t.staged(a);
        let n = t.get_mut(a).unwrap();
        n.content.owns_file();
        n.content.wrote();
        assert!(n.content.dirty() && !n.content.shared() && !n.content.local_only());
    }

    #[test]
    fn a_file_created_and_unlinked_before_its_close_is_let_go_when_the_kernel_forgets_it() {
        let mut t = table(1);
        let a = t.lookup_path("d/f0").unwrap();
        t.created(a);
        t.get_mut(a).unwrap().content.wrote();
        t.detach(a);
        t.discard(a);
        let n = t.get(a).unwrap();
        assert!(
            n.unlinked() && n.content == Content::default(),
            "{:?}",
            n.content
        );
        assert!(!t.is_local_only(a) && t.local_children("d").is_empty());
        t.forget(a, 1, |_| false);
        assert!(t.get(a).is_none(), "nothing keeps a nameless node");
    }

    #[test]
    fn a_rename_over_a_file_created_here_leaves_only_the_moved_file_local() {
        let mut t = table(2);
        let (a, b) = (
            t.lookup_path("d/f0").unwrap(),
            t.lookup_path("d/f1").unwrap(),
        );
        t.created(a);
        t.created(b);
        t.rename(a, "d/f1");
        assert!(t.get(b).unwrap().unlinked());
        assert!(!t.get(b).unwrap().content.local_only() && !t.is_local_only(b));
        assert_eq!(t.local_children("d"), vec![a]);
        assert_eq!(t.lookup_path("d/f1"), Some(a));
    }

    #[test]
    fn learned_attributes_are_fresh_and_forgotten_ones_are_asked_for_again() {
        let mut t = table(1);
        let a = t.lookup_path("d/f0").unwrap();
        let n = t.get_mut(a).unwrap();
        assert!(!n.meta_known() && n.fetched.is_none());
        let at = Instant::now();
        n.learned_meta(at);
        assert!(n.meta_known() && n.fetched == Some(at));
        n.forget_meta();
        assert!(!n.meta_known() && n.fetched.is_none());
    }

    #[test]
    fn trim_keeps_recently_used_nodes() {
        let mut t = table(20);
        assert!(
            t.trim(16, 60, |_| false).is_empty(),
            "all used within the last minute"
        );
    }
}
