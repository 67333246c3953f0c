//! Making writes durable: flush (close), fsync and release.
//!
//! The durable steps of a close or fsync of a dirty file, in order:
//! 1. The working file's bytes are final for this state: read whole if small
//!    (at most `journal::INLINE_MAX`), else fdatasync'ed with its directory
//!    entry (`Cache::sync_data`).
//! 2. The node is marked clean and shared *before* the put is queued: the put
//!    may finish at once, and its completion must find the node staged.
//! 3. The put is committed to the journal (a small file's bytes in the row),
//!    and only then does close()/fsync() return. From then on the working
//!    file is shared with that put and the next write copies it first, so the
//!    staged bytes never change.
//! 4. If the commit fails, the node is dirty again and the error is returned:
//!    nothing was acknowledged.
//!
//! With `durability.fsync = "source"` (the default) an fsync also waits for
//! the upload, and with `"all-regions"` for every replica too.

use super::*;

impl Core {
    /// Stages the node's working file: fsync it, journal a put, return the seq.
    /// Only after this may close()/fsync() return.
    pub(super) async fn stage(&self, ino: u64) -> Result<Option<i64>, FsError> {
        let io = self.io_lock(ino)?;
        let _g = io.lock().await;
        self.stage_locked(ino).await
    }

    /// [`Core::stage`] with the node's I/O lock held.
    pub(super) async fn stage_locked(&self, ino: u64) -> Result<Option<i64>, FsError> {
        let staged = self.stage_dirty(ino).await;
        self.noting_disk_failure(staged)
    }

    /// [`Core::stage_locked`] before its error is looked at.
    async fn stage_dirty(&self, ino: u64) -> Result<Option<i64>, FsError> {
        let (working, path, meta, size, unlinked, early, _claim, writing, base) = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            self.refresh(n);
            if !n.content.dirty() {
                return Ok(n.last_seq);
            }
            // What this host last saw at the key: the upload reports
            // replacing anything else (`uploader::guard`).
            let base = crate::journal::Base {
                etag: n.etag.clone(),
                version: n.version.clone(),
            };
            (
                n.working().cloned(),
                n.path.clone(),
                n.meta.clone(),
                n.size,
                n.unlinked(),
                n.early.take(),
                // As in `rename_file`: no finishing upload retires the file
                // until the put below is queued.
                n.working().map(|w| self.uploader.claim(&w.name)),
                n.kernel.as_ref().is_some_and(|k| k.writing()),
                base,
            )
        };
        // Dirty, after the local disk failed: these bytes cannot be vouched
        // for, so the close or fsync fails and nothing is queued.
        self.check_writable()?;
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
        let before = {
            let mut t = self.inodes.lock().unwrap();
            let before = t.staged(ino);
            if let Some(n) = t.get_mut(ino) {
                if let Some(k) = n.kernel.as_deref_mut().filter(|_| writing) {
                    // Taken before the bytes were read: a write since shows.
                    k.stamp = stamped;
                    n.size = size;
                }
            }
            before
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
        match (&queued, before) {
            (Ok(seq), _) => {
                if let Some(n) = t.get_mut(ino) {
                    n.last_seq = Some(*seq);
                }
            }
            // Not staged: the next close stages it again.
            (Err(_), Some(before)) => t.unstaged(ino, before, true),
            (Err(_), None) => {}
        }
        Ok(Some(queued?))
    }

    /// A working file passthrough writers may be writing, staged as one
    /// state: its bytes if small (inline) or else fdatasync'ed, with the
    /// stamp taken before. A small file written during every one of three
    /// reads is staged as a file instead, whose upload checks it is stable.
    pub(super) fn read_stable(
        &self,
        w: &Working,
    ) -> Result<(Option<Vec<u8>>, stamp::Stamp), FsError> {
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
    pub(super) async fn supersede_inline(&self, name: &str) -> Result<(), FsError> {
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
                n.content.written()
            })
        };
        if write && written {
            self.stage(ino).await?;
        }
        Ok(())
    }

    pub(super) fn mark_written(&self, fh: u64) {
        let Ok(ino) = self.handle_ino(fh) else { return };
        if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
            n.content.note_written();
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
                .map(|n| (n.content.local_only(), n.content.dirty() && n.open <= 1))
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
                if n.unlinked() && n.open == 0 {
                    unused = !n.content.shared();
                } else if (h.write || backing_gone) && n.open_writers == 0 {
                    maybe_clean = n.working().map(|w| w.name.clone());
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
    pub(super) async fn release_backing(&self, ino: u64, write: bool) -> Result<bool, FsError> {
        let io = self.io_lock(ino)?;
        let _g = io.lock().await;
        let last_writer = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            // While this writer still counts, so its writes are found.
            self.refresh(n);
            let named = !n.unlinked();
            let Some(b) = n.kernel.as_mut().and_then(|k| k.backing.as_mut()) else {
                return Ok(false);
            };
            if write {
                b.writers -= 1;
            }
            (write && b.writers == 0).then_some(named && n.content.dirty())
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
    pub(super) async fn settle_working(&self, ino: u64, name: &str) {
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
                && !n.content.dirty()
                && !n.content.shared()
                && n.kernel.as_ref().is_none_or(|k| k.backing.is_none())
                && !n.content.local_only()
                && !n.unlinked()
                && !n.etag.is_empty()
                && n.working().is_some_and(|w| w.name == name);
            if !settled {
                return;
            }
            let etag = n.etag.clone();
            t.set_working(ino, None);
            etag
        };
        self.cache.make_clean(name, &key, &etag);
    }
}
