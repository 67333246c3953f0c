//! Opening files: a handle per open, the working file a writer needs (a copy
//! of the clean or staged bytes, taken before the first write so staged bytes
//! never change), passthrough backing files, and the early multipart upload
//! of a file written from empty.

use super::*;

impl Core {
    // ----- file data -----

    pub(super) fn new_working(&self) -> Result<Working, FsError> {
        self.open_working(self.cache.create_data_file()?)
    }

    pub(super) fn open_working(&self, name: String) -> Result<Working, FsError> {
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
    pub(super) fn mode_for(&self, ino: u64, want: Want) -> Result<Mode, FsError> {
        let t = self.inodes.lock().unwrap();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        let local = match n.working() {
            Some(_) => !n.content.shared(),
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
    pub(super) fn register(&self, ino: u64, flags: i32, mode: Mode) -> Result<Opened, FsError> {
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
            let n_working = n.working().map(|w| w.file.clone());
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
    pub(crate) fn has_set_id_bits(&self, ino: u64) -> bool {
        let t = self.inodes.lock().unwrap();
        t.get(ino)
            .is_some_and(|n| crate::meta::has_set_id_bits(n.meta.mode))
    }

    /// A passthrough writer of an empty file: its parts go up as it grows,
    /// found by polling its size (`uploader::early`, "Blind uploads"), as
    /// the writes through regionfs drive them for a cached writer.
    pub(super) fn start_blind_early(&self, n: &mut Node) {
        let Some(w) = n.working().filter(|_| n.size == 0 && !n.unlinked()) else {
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
                // Staged (its size was taken then), taken or dropped: the
                // file and its descriptor are let go (a long backlog of
                // staged files must not hold one each).
                let Some(e) = early.upgrade().filter(|e| !e.is_done() && !e.is_flushing()) else {
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
    pub(super) fn backing_for(&self, n: &mut Node) -> Option<Arc<std::fs::File>> {
        if let Some(b) = n.kernel.as_ref().and_then(|k| k.backing.as_ref()) {
            return Some(b.file.clone());
        }
        let (file, on) = match n.working() {
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
    pub(crate) fn backing_token<T: std::any::Any + Send + Sync>(
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
    pub(crate) fn passthrough_refused(&self, fh: u64, e: &std::io::Error) {
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
    pub(super) fn drop_backing(&self, b: Option<Backing>) {
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
    pub(super) async fn ensure_working(&self, ino: u64) -> Result<Working, FsError> {
        let (working, shared, key, etag, version, size, backed) = {
            let t = self.inodes.lock().unwrap();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            if n.is_dir() {
                return Err(FsError::IsDir);
            }
            let (key, version) = self.content_of(n);
            (
                n.working().cloned(),
                n.content.shared(),
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
        n.content.owns_file();
        n.size = len;
        t.set_working(ino, Some(fresh.clone()));
        Ok(fresh)
    }

    /// Before a working file the kernel has as a backing file is written in
    /// place by a new writer: the queued uploads that read it get a synced
    /// copy of it first, so each still uploads what its close acknowledged.
    pub(super) async fn give_uploads_a_copy(&self, ino: u64, w: &Working) -> Result<(), FsError> {
        let users = self.uploader.users(&w.name);
        if !users.is_empty() {
            let copy = self.cache.copy_data_file(&w.name)?;
            let f = std::fs::File::open(self.cache.data_path(&copy))?;
            self.cache.sync_data(&copy, &f)?;
            self.uploader.repoint(&users, &w.name, &copy).await?;
        }
        if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
            n.content.owns_file();
        }
        Ok(())
    }

    /// A writer joins the kernel's readers of a clean copy: the copy becomes
    /// the node's working file, in place (the readers see the writes). A copy
    /// no longer of the node's version (another client's newer one arrived)
    /// is named anew in `data/` and refilled with the current version.
    pub(super) async fn take_over_clean_copy(
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
        n.content.owns_file();
        n.size = len;
        if let Some(b) = n.kernel.as_mut().and_then(|k| k.backing.as_mut()) {
            // No pin left to undo: the clean copy's entry went with it.
            b.on = On::Working(w.name.clone());
        }
        Self::restamp(n);
        Ok(w)
    }

    /// Streams one object version into a working file.
    pub(super) async fn download_into(
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
            let chunk =
                chunk.map_err(|e| crate::store::body_error(&self.store.describe(), key, &e))?;
            w.file.write_all_at(&chunk, offset)?;
            offset += chunk.len() as u64;
        }
        Ok(())
    }
}
