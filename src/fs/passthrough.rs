//! FUSE passthrough: which opens the kernel serves straight from a cache
//! file, and what regionfs must then do without seeing the reads and writes.
//!
//! With passthrough (Linux 6.9+, `mount.passthrough`), an open answered with
//! a *backing* file makes the kernel read, write and mmap that file itself:
//! a warm read runs at local-disk speed and a write lands in the cache file
//! with no request to regionfs. The kernel's rules, found by trying them
//! (docs/BENCHMARKS-history.md, 2026-12-02 and 2026-12-06):
//! - it excludes the writeback cache (on for the whole connection or not);
//! - at any moment the opens of one inode are all passthrough to one
//!   backing file, or none is (an open breaking this fails with EIO);
//! - an mmap through a passthrough open maps the backing file, so such a
//!   mapping outlives the open's RELEASE and writes without telling anyone.
//!
//! # Which opens go passthrough ([`decide`])
//! - An inode the kernel has open through regionfs (cached) stays so.
//! - An inode open by passthrough: every further open joins it.
//! - Otherwise a write-only open does (the file's own working file is made
//!   first: copied, downloaded or truncated as for any write), and so does a
//!   read-only open of a file whose bytes are here: its own working file, or
//!   a whole clean copy. A read-write open, and a read of bytes not here
//!   (a cold download) go through regionfs: only a descriptor open for
//!   reading can map a file, and a mapping of the backing file writes
//!   where regionfs cannot see. So does a write-only open while the cache's
//!   unuploaded data fills three quarters of `cache.max_size`: regionfs
//!   cannot make a passthrough writer wait, so writers then go through it
//!   and meet its back-pressure. And so does a writer of a file with a
//!   set-user-ID or set-group-ID bit: regionfs clears those bits on a write
//!   (the kernel leaves that to it, `FUSE_HANDLE_KILLPRIV_V2`), so the write
//!   must reach it.
//!
//! # Invariants
//! - While an inode has a backing file, that file is the node's content and
//!   is never replaced, only changed in place. A writer joining readers of a
//!   clean copy takes that copy over as its working file (the readers see the
//!   writes, as on a local disk); a writer joining readers of a file a queued
//!   upload still needs gives the upload a copy first.
//! - Writes by passthrough are found by the working file's
//!   [`Stamp`](crate::cache::stamp::Stamp): a stamp that differs from the one
//!   taken when the content was last known means written since. This is
//!   checked at every decision that needs it (close, fsync, getattr, the last
//!   writer's release) and turned into the node's `dirty`/`written` flags,
//!   so the rest of the core reasons as if it had seen the writes.
//! - A close or fsync stages the file as it is then, without a copy: other
//!   descriptors (a dup, a forked child, another open) may go on writing
//!   it. Its upload reads it as one state or not at all (`uploader`, "Files
//!   written after staging"): a version then holds later bytes, never a mix
//!   (SEMANTICS.md, "Passthrough"). The last writer's release stages what
//!   was written after the last close.
//! - A clean copy serving as a backing file is pinned while the kernel has
//!   it open, so it is never evicted or emptied under a reader.

use std::fs::File;
use std::sync::Arc;

use crate::cache::stamp::Stamp;

/// What an open asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    Read,
    WriteOnly,
    ReadWrite,
}

impl Want {
    pub fn of(flags: i32) -> Want {
        match flags & libc::O_ACCMODE {
            libc::O_RDONLY => Want::Read,
            libc::O_WRONLY => Want::WriteOnly,
            _ => Want::ReadWrite,
        }
    }
    pub fn writes(self) -> bool {
        self != Want::Read
    }
}

/// How the kernel is to serve an open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Through regionfs's READ and WRITE requests.
    Cached,
    /// From a backing file.
    Passthrough,
}

/// What the cache is like for a new open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Here {
    /// The file's bytes are all here: its own working file, or a whole
    /// clean copy.
    pub local: bool,
    /// The cache has room for a writer that regionfs does not meter.
    pub(crate) room: bool,
    /// The file has a set-user-ID or set-group-ID bit, which a write clears.
    pub(crate) privileged: bool,
}

/// The mode for a new open: `enabled` (the connection has passthrough),
/// the inode's current opens, what is asked, and the cache's state.
pub(crate) fn decide(enabled: bool, kernel: Option<&KernelState>, want: Want, here: Here) -> Mode {
    if !enabled {
        return Mode::Cached;
    }
    if let Some(k) = kernel {
        if k.cached > 0 {
            return Mode::Cached;
        }
        if k.backing.is_some() {
            return Mode::Passthrough;
        }
    }
    match want {
        Want::WriteOnly if here.room && !here.privileged => Mode::Passthrough,
        Want::Read if here.local => Mode::Passthrough,
        _ => Mode::Cached,
    }
}

/// Where a backing file lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum On {
    /// The node's working file (`data/` name).
    Working(String),
    /// A clean copy of `key`, pinned at `path` while the kernel has it.
    Clean {
        key: String,
        path: std::path::PathBuf,
    },
}

/// The kernel's backing file for one inode.
pub(crate) struct Backing {
    /// Opened read-write, whatever the first open asked: a writer may join.
    pub file: Arc<File>,
    pub on: On,
    /// The kernel's id for it, made by the adapter with the first open's
    /// reply and closed when dropped (after the last release).
    pub token: Option<Arc<dyn std::any::Any + Send + Sync>>,
    pub opens: u32,
    pub writers: u32,
}

/// Per-node state of a mount with passthrough; absent while all is zero.
#[derive(Default)]
pub(crate) struct KernelState {
    /// Opens served through regionfs.
    pub cached: u32,
    pub backing: Option<Backing>,
    /// The working file's stamp when its content was last known.
    pub(crate) stamp: Option<Stamp>,
}

impl KernelState {
    /// Nothing left to keep.
    pub(crate) fn is_idle(&self) -> bool {
        self.cached == 0 && self.backing.is_none()
    }

    /// Passthrough writers have the working file open: its stamp tells
    /// whether they wrote.
    pub fn writing(&self) -> bool {
        self.backing.as_ref().is_some_and(|b| b.writers > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Here = Here {
        local: true,
        room: true,
        privileged: false,
    };
    const NONE: Here = Here {
        local: false,
        room: false,
        privileged: false,
    };

    fn with_backing(writers: u32) -> KernelState {
        KernelState {
            backing: Some(Backing {
                file: Arc::new(tempfile::tempfile().unwrap()),
                on: On::Working("w".into()),
                token: None,
                opens: 1,
                writers,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_inode_keeps_the_mode_of_its_open_descriptors() {
        let cached = KernelState {
            cached: 1,
            ..Default::default()
        };
        for want in [Want::Read, Want::WriteOnly, Want::ReadWrite] {
            assert_eq!(decide(true, Some(&cached), want, ALL), Mode::Cached);
            assert_eq!(
                decide(true, Some(&with_backing(0)), want, NONE),
                Mode::Passthrough,
                "{want:?} joins the backing file"
            );
            assert_eq!(decide(false, None, want, ALL), Mode::Cached, "off");
        }
    }

    #[test]
    fn a_first_open_goes_passthrough_unless_it_could_map_or_download_or_the_cache_is_full() {
        let remote = Here {
            local: false,
            ..ALL
        };
        let full = Here { room: false, ..ALL };
        let setuid = Here {
            privileged: true,
            ..ALL
        };
        assert_eq!(decide(true, None, Want::WriteOnly, setuid), Mode::Cached);
        assert_eq!(decide(true, None, Want::Read, setuid), Mode::Passthrough);
        assert_eq!(
            decide(true, None, Want::WriteOnly, remote),
            Mode::Passthrough
        );
        assert_eq!(decide(true, None, Want::WriteOnly, full), Mode::Cached);
        assert_eq!(decide(true, None, Want::ReadWrite, ALL), Mode::Cached);
        assert_eq!(decide(true, None, Want::Read, full), Mode::Passthrough);
        assert_eq!(decide(true, None, Want::Read, remote), Mode::Cached);
        let idle = KernelState::default();
        assert_eq!(
            decide(true, Some(&idle), Want::Read, ALL),
            Mode::Passthrough
        );
        assert!(idle.is_idle() && !with_backing(1).is_idle());
        assert!(with_backing(1).writing() && !with_backing(0).writing());
    }
}
