//! Creating and removing names: mkdir, create, mknod, symlink, unlink,
//! rmdir. Each is journaled before it answers (a file created here is kept
//! local until its first close stages it); a removed name is hidden at once
//! and its delete queued, so it never comes back from a listing that raced it.

use super::*;

impl Core {
    /// Writes a directory's marker (and, where markers lose metadata, its
    /// attributes object).
    pub(super) async fn put_dir_attrs(
        &self,
        path: &str,
        meta: &ObjectMeta,
    ) -> Result<i64, FsError> {
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
    pub(super) async fn delete_dir_keys(&self, path: &str) -> Result<(), FsError> {
        if let Some(ix) = &self.index {
            ix.forget_dir(path);
        }
        let dkey = self.dkey(path);
        if self.dir_sidecar {
            self.uploader
                .submit(NewOp::delete(format!("{dkey}{DIR_ATTRS}")))
                .await?;
        }
        self.uploader.submit(NewOp::delete(dkey)).await?;
        Ok(())
    }

    /// Fails with EEXIST when `path` exists.
    pub(super) async fn ensure_absent(&self, path: &str) -> Result<(), FsError> {
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
        n.learned_meta(Instant::now());
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
            n.learned_meta(Instant::now());
            n.ctime = SystemTime::now();
            n.kernel_tag = None;
            // A file of another node this one replaces stays that node's.
            t.set_working(ino, Some(working));
            t.created(ino);
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
    pub(crate) async fn mknod(
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
    pub(super) fn touch_dir(&self, ino: u64) {
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
            n.content.changed();
            n.learned_meta(Instant::now());
            t.set_working(ino, Some(working));
            ino
        };
        self.stage(ino).await?;
        self.node_attr(ino)
    }

    pub(crate) async fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let (working, key, size) = {
            let t = self.inodes.lock().unwrap();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            if !n.is_symlink() {
                return Err(FsError::Invalid("not a symlink"));
            }
            (n.working().cloned(), self.content_of(n), n.size)
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

    pub(crate) async fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        self.check_writable()?;
        let (_, path) = self.child(parent, name)?;
        let ino = self.resolve(&path).await?;
        let (local_only, io) = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            if n.is_dir() {
                return Err(FsError::IsDir);
            }
            (n.content.local_only(), n.io())
        };
        let _g = io.lock().await;
        let key = self.key(&path);
        let never_uploaded = local_only && self.uploader.pending_for(&key).is_empty();
        if !never_uploaded {
            self.uploader.submit(NewOp::delete(key.clone())).await?;
        }
        self.cache.forget_clean(&key);
        self.touch_dir(parent);
        self.note_path(&path, false);
        let mut t = self.inodes.lock().unwrap();
        t.detach(ino);
        t.discard(ino);
        let drop_file = match t.get_mut(ino) {
            Some(n) => {
                n.early = None;
                let unused = n.open == 0 && !n.content.shared();
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

    /// Whether a directory has no entries (queued deletes count as gone).
    pub(super) async fn dir_is_empty(&self, ino: u64) -> Result<bool, FsError> {
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
}
