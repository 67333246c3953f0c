//! The inode table: stable inode numbers for paths, and what is known of each
//! node (attributes, its local working file, its upload state).
//!
//! Lock order: a node's `io` lock (async, held across cache I/O and journal
//! commits) before the table's mutex (std, never held across an await).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::meta::{ObjectMeta, S_IFDIR, S_IFLNK, S_IFMT};

pub const ROOT: u64 = 1;

/// A local file holding the node's current content.
#[derive(Clone)]
pub struct Working {
    /// Name under the cache's `data/`.
    pub name: String,
    pub file: Arc<File>,
}

pub struct Node {
    pub ino: u64,
    pub path: String,
    pub meta: ObjectMeta,
    pub size: u64,
    pub ctime: SystemTime,
    /// ETag of the object this node's content came from (clean copies key on it).
    pub etag: String,
    /// Version id in the source bucket of the last finished upload, if known.
    pub version: Option<String>,
    /// Where the bytes live while a rename's copy is queued: the old key (at
    /// `version`). `None`: the node's own key.
    pub content_key: Option<String>,
    pub working: Option<Working>,
    /// The working file differs from every staged/uploaded state.
    pub dirty: bool,
    /// Data was written (or ftruncated) since the last stage: the next close
    /// of a writer stages it. Creating or O_TRUNC alone does not count.
    pub written: bool,
    /// The working file is referenced by a staged put: copy before writing.
    pub shared: bool,
    /// The last operation staged for this node (fsync waits on it).
    pub last_seq: Option<i64>,
    /// Exists only here: created, not yet staged.
    pub local_only: bool,
    pub open: u32,
    pub open_writers: u32,
    /// When the attributes were last read from the bucket.
    pub fetched: Option<Instant>,
    /// The LastModified second of the version the attributes were read from,
    /// kept only when the read came in a later second: a listing then showing
    /// this ETag and second shows that same version (any later version, even a
    /// metadata-only copy with the same ETag, carries a later second).
    pub listed_as: Option<i64>,
    /// The bucket's metadata for this node is known (HEAD done, or written here).
    pub meta_known: bool,
    pub unlinked: bool,
    /// Entries the kernel holds for this inode (lookups minus forgets).
    pub lookups: u64,
    /// The content (ETag) the kernel's page cache holds for this inode, as of
    /// the last open: while it is still the node's, an open keeps the cache.
    pub kernel_etag: Option<String>,
    /// Parts of the working file already on their way to the bucket (a file
    /// written from empty); handed to the put at staging.
    pub early: Option<Arc<crate::uploader::EarlyUpload>>,
    pub io: Arc<tokio::sync::Mutex<()>>,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        self.meta.mode & S_IFMT == S_IFDIR
    }
    pub fn is_symlink(&self) -> bool {
        self.meta.mode & S_IFMT == S_IFLNK
    }
}

pub struct Inodes {
    /// Boxed: the table keeps spare slots as it grows, and a slot is then a
    /// pointer rather than a whole node.
    pub nodes: HashMap<u64, Box<Node>>,
    pub by_path: HashMap<String, u64>,
    /// Nodes that exist only locally (created and not yet staged).
    pub local_only: HashSet<u64>,
    next: u64,
}

impl Inodes {
    pub fn new(root_meta: ObjectMeta) -> Inodes {
        let mut t = Inodes {
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            local_only: HashSet::new(),
            next: ROOT + 1,
        };
        let mut root = Self::blank(ROOT, String::new(), root_meta);
        root.meta_known = true;
        root.fetched = Some(Instant::now());
        t.nodes.insert(ROOT, Box::new(root));
        t.by_path.insert(String::new(), ROOT);
        t
    }

    fn blank(ino: u64, path: String, meta: ObjectMeta) -> Node {
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
            dirty: false,
            written: false,
            shared: false,
            last_seq: None,
            local_only: false,
            open: 0,
            open_writers: 0,
            fetched: None,
            listed_as: None,
            meta_known: false,
            unlinked: false,
            lookups: 0,
            kernel_etag: None,
            early: None,
            io: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino).map(|n| &**n)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino).map(|n| &mut **n)
    }

    pub fn lookup_path(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// The node at `path`, created with `meta` if there is none; an existing node
    /// of another file type is replaced (the bucket changed under us).
    pub fn upsert(&mut self, path: &str, meta: ObjectMeta) -> u64 {
        if let Some(ino) = self.lookup_path(path) {
            let n = self.nodes.get_mut(&ino).expect("by_path points at a node");
            if n.meta.mode & S_IFMT == meta.mode & S_IFMT {
                return ino;
            }
            self.detach(ino);
        }
        let ino = self.next;
        self.next += 1;
        self.nodes
            .insert(ino, Box::new(Self::blank(ino, path.to_string(), meta)));
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
            self.local_only.remove(&ino);
        }
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
                    }
                }
            }
            if let Some(n) = self.nodes.get_mut(&i) {
                n.path = p;
            }
        }
    }

    /// Nodes under directory `dir` that exist only locally.
    pub fn local_children(&self, dir: &str) -> Vec<u64> {
        self.local_only
            .iter()
            .filter(|i| {
                self.nodes.get(i).is_some_and(|n| {
                    crate::fs::names::parent_of(&n.path) == dir && !n.path.is_empty()
                })
            })
            .copied()
            .collect()
    }

    /// Drops a node the kernel forgot, unless something still needs it.
    pub fn forget(&mut self, ino: u64, count: u64) {
        if ino == ROOT {
            return;
        }
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.lookups = n.lookups.saturating_sub(count);
        }
        let removable = self.nodes.get(&ino).is_some_and(|n| {
            n.lookups == 0
                && n.open == 0
                && n.working.is_none()
                && !n.local_only
                && (n.unlinked || (!n.dirty && !n.shared))
        });
        if removable {
            if let Some(n) = self.nodes.remove(&ino) {
                if self.by_path.get(&n.path) == Some(&ino) {
                    self.by_path.remove(&n.path);
                }
            }
        }
    }
}
