//! The reference: the tree as POSIX says it is, and nothing else.

use std::collections::BTreeMap;

use crate::meta::{S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
    Fifo,
}

#[derive(Debug, Clone)]
pub(super) struct MNode {
    pub kind: Kind,
    /// Permission bits.
    pub(crate) perm: u32,
    pub(crate) xattr: Option<Vec<u8>>,
}

impl MNode {
    pub(super) fn type_bits(&self) -> u32 {
        match self.kind {
            Kind::File(_) => S_IFREG,
            Kind::Dir => S_IFDIR,
            Kind::Symlink(_) => S_IFLNK,
            Kind::Fifo => S_IFIFO,
        }
    }
}

/// The tree as POSIX says it is: names to nodes, nodes by id (an open file
/// keeps its node when its name goes).
#[derive(Debug, Clone)]
pub(super) struct Model {
    pub(crate) paths: BTreeMap<String, usize>,
    pub nodes: Vec<MNode>,
}

pub(super) type Expect = Result<(), i32>;

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

impl Model {
    /// An empty tree: its root is node 0.
    pub(super) fn new() -> Model {
        Model {
            paths: BTreeMap::new(),
            nodes: vec![MNode {
                kind: Kind::Dir,
                perm: 0o755,
                xattr: None,
            }],
        }
    }

    pub(super) fn node(&self, path: &str) -> Option<&MNode> {
        self.paths.get(path).map(|&i| &self.nodes[i])
    }

    /// What a lookup of `path`'s parent answers: Ok, or the errno of the walk.
    pub(super) fn walk_parent(&self, path: &str) -> Expect {
        let mut at = String::new();
        for part in parent(path).split('/').filter(|s| !s.is_empty()) {
            at = if at.is_empty() {
                part.to_string()
            } else {
                format!("{at}/{part}")
            };
            match self.node(&at) {
                None => return Err(libc::ENOENT),
                Some(n) if n.kind != Kind::Dir => return Err(libc::ENOTDIR),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// `path` itself must exist (`""` is the root, node 0).
    /// The regular file at `path`: EISDIR for a directory, the errno of the
    /// walk when missing, -1 for a symlink or fifo (not modelled there).
    pub(super) fn file(&self, path: &str) -> Result<usize, i32> {
        self.walk(path).and_then(|id| match self.nodes[id].kind {
            Kind::File(_) => Ok(id),
            Kind::Dir => Err(libc::EISDIR),
            _ => Err(-1),
        })
    }

    pub(super) fn walk(&self, path: &str) -> Result<usize, i32> {
        if path.is_empty() {
            return Ok(0);
        }
        self.walk_parent(path)?;
        self.paths.get(path).copied().ok_or(libc::ENOENT)
    }

    pub(super) fn children(&self, dir: &str) -> Vec<String> {
        let below = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.paths
            .keys()
            .filter(|p| p.starts_with(&below) && !p[below.len()..].contains('/'))
            .filter(|p| !p.is_empty())
            .cloned()
            .collect()
    }

    pub(super) fn add(&mut self, path: &str, kind: Kind, perm: u32) -> usize {
        self.nodes.push(MNode {
            kind,
            perm,
            xattr: None,
        });
        let id = self.nodes.len() - 1;
        self.paths.insert(path.to_string(), id);
        id
    }

    pub(super) fn remove_tree(&mut self, path: &str) {
        let below = format!("{path}/");
        self.paths
            .retain(|p, _| p != path && !p.starts_with(&below));
    }

    pub(super) fn rename(&mut self, from: &str, to: &str) -> Expect {
        let src = self.walk(from)?;
        self.walk_parent(to)?;
        if from == to {
            return Ok(());
        }
        let src_dir = self.nodes[src].kind == Kind::Dir;
        if src_dir && to.starts_with(&format!("{from}/")) {
            return Err(libc::EINVAL);
        }
        if let Some(&dst) = self.paths.get(to) {
            let dst_dir = self.nodes[dst].kind == Kind::Dir;
            match (src_dir, dst_dir) {
                (false, true) => return Err(libc::EISDIR),
                (true, false) => return Err(libc::ENOTDIR),
                (true, true) if !self.children(to).is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
            self.paths.remove(to);
        }
        let below = format!("{from}/");
        let moved: Vec<(String, usize)> = self
            .paths
            .iter()
            .filter(|(p, _)| *p == from || p.starts_with(&below))
            .map(|(p, i)| (format!("{to}{}", &p[from.len()..]), *i))
            .collect();
        self.remove_tree(from);
        self.paths.extend(moved);
        Ok(())
    }
}

/// `len` bytes that name the step that wrote them (its number in the
/// first 8, when there is room), the rest pseudo-random.
pub(super) fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    if len >= 8 {
        out[..8].copy_from_slice(&seed.to_le_bytes());
    }
    out
}

pub(super) fn write_into(buf: &mut Vec<u8>, off: usize, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    if buf.len() < off + data.len() {
        buf.resize(off + data.len(), 0);
    }
    buf[off..off + data.len()].copy_from_slice(data);
}
