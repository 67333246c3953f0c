//! Large writes to a data file that bypass the page cache (`O_DIRECT`).
//!
//! Why: a write-back request's bytes otherwise sit in the page cache twice
//! (the kernel's pages of the FUSE file, then the data file's), and copying
//! them into the data file's pages, then writing those back, was half of the
//! daemon's CPU during a 1 GiB `dd` (perf, 2026-12-02). Written directly, the
//! bytes go from one aligned buffer to the disk, and the fdatasync at staging
//! has nothing left to write.
//!
//! Invariants:
//! - Durability does not change. Nothing written here is durable until the
//!   staging's fdatasync ([`super::Cache::sync_data`]), which covers the
//!   file's direct and buffered bytes alike: it flushes the device's cache
//!   and the file's metadata (its size, its new extents).
//! - Every byte lands where a buffered write would have put it. Only the
//!   page-aligned middle of a large write goes direct; its unaligned head and
//!   tail, small writes, and every write on a filesystem without direct I/O
//!   take the buffered path. The kernel writes back and drops the file's
//!   cached pages in a direct write's range before and after it, so buffered
//!   and direct writes of one file, in turn, read back in order. Writes to a
//!   working file are serialized by the node's I/O lock, and nothing reads a
//!   range while it is being written (early parts read only ranges already
//!   written).
//! - A direct write the filesystem refuses (EINVAL: alignment it did not
//!   announce) turns direct writes off for that file and is redone buffered,
//!   so the fallback costs speed, never bytes.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// Writes shorter than this (after alignment) stay buffered: a direct write
/// waits for the device, which many small writes would feel.
pub(crate) const DIRECT_MIN: usize = 256 << 10;

/// The most bytes one direct write sends: FUSE's largest request (1 MiB
/// `max_write`); longer writes go in pieces of this size.
const CHUNK: usize = 1 << 20;

/// Aligned buffers kept for reuse: about one per writer at a time.
const KEEP_BUFFERS: usize = 2;

/// The direct-I/O side of one data file: a second descriptor opened with
/// `O_DIRECT` at its first large write, or nothing where the filesystem has
/// no direct I/O.
#[derive(Default)]
pub(crate) struct Direct {
    fd: OnceLock<Option<DirectFd>>,
    /// Set once a direct write was refused: the rest go buffered.
    off: AtomicBool,
}

struct DirectFd {
    file: File,
    /// Offsets and lengths are multiples of this (at least the page size).
    align: usize,
    /// Buffers start at a multiple of this.
    mem_align: usize,
}

impl Direct {
    /// Whether large writes to `file` go direct (opens the descriptor if it
    /// is not open yet).
    #[cfg(test)]
    fn active(&self, file: &File) -> bool {
        !self.off.load(Ordering::Relaxed) && self.fd(file).is_some()
    }

    fn fd(&self, file: &File) -> Option<&DirectFd> {
        self.fd.get_or_init(|| open_direct(file)).as_ref()
    }

    /// Writes all of `data` at `offset` of `file` (its ordinary descriptor):
    /// the aligned middle of a large write direct, the rest buffered.
    pub fn write_all_at(&self, file: &File, data: &[u8], offset: u64) -> io::Result<()> {
        if data.len() < DIRECT_MIN || self.off.load(Ordering::Relaxed) {
            return file.write_all_at(data, offset);
        }
        let Some(d) = self.fd(file) else {
            return file.write_all_at(data, offset);
        };
        let align = d.align as u64;
        let end = offset + data.len() as u64;
        let mid_from = offset.div_ceil(align) * align;
        let mid_to = end / align * align;
        if mid_to <= mid_from || ((mid_to - mid_from) as usize) < DIRECT_MIN {
            return file.write_all_at(data, offset);
        }
        let at = |pos: u64| (pos - offset) as usize;
        file.write_all_at(&data[..at(mid_from)], offset)?;
        let mut pos = mid_from;
        while pos < mid_to {
            let len = ((mid_to - pos) as usize).min(CHUNK);
            let piece = &data[at(pos)..at(pos) + len];
            let written = match d.write(piece, pos) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(error = %e, "direct write refused; this file's writes go through the page cache");
                    self.off.store(true, Ordering::Relaxed);
                    0
                }
                Err(e) => return Err(e),
            };
            if written < len {
                // Short or refused: the rest of the middle goes buffered.
                file.write_all_at(&data[at(pos) + written..at(mid_to)], pos + written as u64)?;
                break;
            }
            pos += len as u64;
        }
        file.write_all_at(&data[at(mid_to)..], mid_to)
    }
}

impl DirectFd {
    /// One direct write of `piece` (aligned, at most [`CHUNK`]) at `pos`
    /// through an aligned copy. Returns how many bytes it wrote.
    fn write(&self, piece: &[u8], pos: u64) -> io::Result<usize> {
        let mut buf = take_buffer(self.mem_align);
        let b = buf.slice_mut(piece.len());
        b.copy_from_slice(piece);
        let result = loop {
            match self.file.write_at(b, pos) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        give_back(buf);
        result
    }
}

/// Opens `file` again with `O_DIRECT` when its filesystem announces direct
/// I/O alignments (statx `STATX_DIOALIGN`); `None` otherwise.
fn open_direct(file: &File) -> Option<DirectFd> {
    let fd = file.as_raw_fd();
    // SAFETY: statx writes only into the zeroed struct we own; the path is
    // an empty C string used with AT_EMPTY_PATH on an open descriptor.
    let (offset_align, mem_align) = unsafe {
        let mut st: libc::statx = std::mem::zeroed();
        let r = libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut st,
        );
        if r != 0 || st.stx_mask & libc::STATX_DIOALIGN == 0 {
            return None;
        }
        (
            st.stx_dio_offset_align as usize,
            st.stx_dio_mem_align as usize,
        )
    };
    if offset_align == 0 || mem_align == 0 {
        return None;
    }
    let page = page_size();
    let align = offset_align.max(page);
    if !align.is_power_of_two() || align > CHUNK {
        return None;
    }
    // The same inode, even if the data file was renamed or unlinked since.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{fd}"))
        .ok()?;
    Some(DirectFd {
        file,
        align,
        mem_align: mem_align.max(page),
    })
}

fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// A buffer of [`CHUNK`] bytes starting at an aligned address.
struct Aligned {
    raw: Vec<u8>,
    start: usize,
    align: usize,
}

impl Aligned {
    fn new(align: usize) -> Aligned {
        let raw = vec![0u8; CHUNK + align];
        let start = raw.as_ptr().align_offset(align);
        Aligned { raw, start, align }
    }

    fn slice_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.start..self.start + len]
    }
}

static BUFFERS: Mutex<Vec<Aligned>> = Mutex::new(Vec::new());

fn take_buffer(align: usize) -> Aligned {
    let mut pool = BUFFERS.lock().unwrap();
    match pool.iter().position(|b| b.align == align) {
        Some(i) => pool.swap_remove(i),
        None => Aligned::new(align),
    }
}

fn give_back(buf: Aligned) {
    let mut pool = BUFFERS.lock().unwrap();
    if pool.len() < KEEP_BUFFERS {
        pool.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn open(dir: &tempfile::TempDir, name: &str) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join(name))
            .unwrap()
    }

    fn read_all(file: &File) -> Vec<u8> {
        let len = file.metadata().unwrap().len() as usize;
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    /// Applies one write to the model of the file's bytes.
    fn apply(model: &mut Vec<u8>, data: &[u8], offset: usize) {
        if model.len() < offset + data.len() {
            model.resize(offset + data.len(), 0);
        }
        model[offset..offset + data.len()].copy_from_slice(data);
    }

    #[test]
    fn a_large_unaligned_write_reads_back_exactly_and_its_middle_went_direct() {
        let dir = tempfile::tempdir().unwrap();
        let file = open(&dir, "f");
        let direct = Direct::default();
        let data: Vec<u8> = (0..3 * CHUNK + 777).map(|i| (i * 31 % 251) as u8).collect();
        direct.write_all_at(&file, &data, 4096 + 100).unwrap();
        let mut model = Vec::new();
        apply(&mut model, &data, 4096 + 100);
        assert_eq!(read_all(&file), model);
        // Where the filesystem has direct I/O (ext4 has), it was used
        // and was not turned off by a refusal.
        if open_direct(&file).is_some() {
            assert!(direct.active(&file), "direct writes were turned off");
        }
    }

    #[test]
    fn direct_and_buffered_writes_of_one_file_in_any_order_read_back_like_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let file = open(&dir, "f");
        let direct = Direct::default();
        let mut model = Vec::new();
        // A fixed pseudo-random sequence: large page-aligned writes (direct),
        // unaligned ones (direct middle, buffered ends) and small ones
        // (buffered) over each other's ranges, growing and overwriting.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..60u64 {
            let len = match next(3) {
                0 => 1 + next(8192) as usize,
                1 => CHUNK,
                _ => DIRECT_MIN + next(2 * CHUNK as u64) as usize,
            };
            let offset = match next(2) {
                0 => next(6 * CHUNK as u64 / 4096) as usize * 4096,
                _ => next(6 * CHUNK as u64) as usize,
            };
            let data: Vec<u8> = (0..len).map(|i| (i as u64 * 7 + round) as u8).collect();
            direct.write_all_at(&file, &data, offset as u64).unwrap();
            apply(&mut model, &data, offset);
            if round % 10 == 9 {
                assert_eq!(read_all(&file), model, "after round {round}");
            }
        }
        assert_eq!(read_all(&file), model);
    }

    #[test]
    fn a_direct_write_the_filesystem_refuses_is_redone_buffered_and_turns_direct_off() {
        let dir = tempfile::tempdir().unwrap();
        let file = open(&dir, "f");
        let Some(real) = open_direct(&file) else {
            eprintln!("no direct I/O on this filesystem: nothing to refuse");
            return;
        };
        // Claim byte alignment, so the first direct write starts at an
        // offset the kernel refuses (EINVAL: block devices need 512 or more).
        let lie = 1;
        let direct = Direct::default();
        assert!(direct
            .fd
            .set(Some(DirectFd {
                file: real.file,
                align: lie,
                mem_align: real.mem_align,
            }))
            .is_ok());
        let data: Vec<u8> = (0..2 * DIRECT_MIN).map(|i| (i % 253) as u8).collect();
        direct.write_all_at(&file, &data, lie as u64).unwrap();
        let mut model = Vec::new();
        apply(&mut model, &data, lie);
        assert_eq!(read_all(&file), model, "every byte landed, buffered");
        assert!(!direct.active(&file), "direct writes are off for this file");
        // Later large writes go buffered at once, and land too.
        direct.write_all_at(&file, &data, 0).unwrap();
        apply(&mut model, &data, 0);
        assert_eq!(read_all(&file), model);
    }
}
