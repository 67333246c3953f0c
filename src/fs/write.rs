//! write(2) and truncation of a working file. A write marks the node dirty
//! (its next close stages it) and starts the writeback of each
//! [`WRITEBACK_STEP`] block it completes, so a close has little left to sync.

use super::*;

impl Core {
    /// Sets the size of a node's content. Caller holds `io`.
    pub(super) async fn truncate_locked(&self, ino: u64, size: u64) -> Result<(), FsError> {
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
                (n.working().cloned(), n.content.shared(), backed)
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
        n.content.owns_file();
        n.content.changed();
        n.size = size;
        n.meta.set_mtime(SystemTime::now());
        Self::restamp(n);
        Ok(())
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let ino = self.handle_ino(fh)?;
        // A descriptor opened before the local disk failed writes no more.
        self.check_writable()?;
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
    pub(crate) fn write_now(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
    ) -> Option<Result<u32, FsError>> {
        let ino = self.handle_ino(fh).ok()?;
        if let Err(e) = self.check_writable() {
            return Some(Err(e));
        }
        if offset.saturating_add(data.len() as u64) > crate::config::MAX_OBJECT_SIZE {
            return None;
        }
        let io = self.io_lock(ino).ok()?;
        let _g = io.try_lock().ok()?;
        let (w, size) = {
            let t = self.inodes.lock().unwrap();
            let n = t.get(ino)?;
            match n.working() {
                Some(w) if !n.content.shared() => (w.clone(), n.size),
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
    pub(super) fn write_locked(
        &self,
        ino: u64,
        w: &Working,
        offset: u64,
        data: &[u8],
        size: u64,
    ) -> Result<u32, FsError> {
        let end = offset + data.len() as u64;
        self.cache
            .write_data(&w.name, &w.direct, &w.file, data, offset)?;
        let mut t = self.inodes.lock().unwrap();
        let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
        n.content.wrote();
        if n.early.is_none() && offset == 0 && size == 0 && !n.unlinked() {
            n.early = self
                .uploader
                .early(&self.key(&n.path), &w.name, &n.meta, false);
        }
        if let Some(e) = &n.early {
            e.written(&w.name, offset, end);
        }
        n.size = n.size.max(end);
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
}
