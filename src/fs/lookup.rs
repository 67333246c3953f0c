//! Name resolution: a path's node from what this mount knows (nodes, queued
//! operations, directories it listed or created) before asking the bucket,
//! one HEAD (or listing) per path at a time.
//!
//! A name this mount knows is absent (a directory it listed or created within
//! its time to live) costs no round trip; a queued operation on the key wins
//! over what the bucket says (its effect happened here first).

use super::*;

impl Core {
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
    pub(crate) fn lookup_cached(&self, parent: u64, name: &[u8]) -> Option<Attr> {
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
        let local = n.content.local_only() || n.working().is_some() || n.content.dirty();
        (!n.unlinked() && (local || fresh)).then(|| Self::attr_of(n))
    }

    /// `request` to the bucket names are looked up in, given up on a bucket
    /// that hangs as [`crate::regions::Regions::patiently`] says (a mount
    /// without regions waits as long as the S3 client does). `what` names
    /// the request in the error.
    pub(super) async fn ask<T, E: From<StoreError>>(
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
    pub(super) async fn resolve(&self, path: &str) -> Result<u64, FsError> {
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
                    .filter(|i| !t.nodes[i].unlinked())
                    .ok_or(FsError::NotFound)
            }
            other => other,
        }
    }

    /// Records that `name` now exists (or not) in the known directory `dir`.
    pub(super) fn note_entry(&self, dir: &str, name: &str, exists: bool) {
        self.known_dirs.lock().unwrap().note(dir, name, exists);
    }

    /// Remembers the complete contents of `dir` as of `at`.
    pub(super) fn know_dir(&self, dir: String, at: Instant, names: HashSet<String>) {
        self.known_dirs.lock().unwrap().know(dir, at, names);
    }

    pub(super) fn note_path(&self, path: &str, exists: bool) {
        self.note_entry(names::parent_of(path), names::name_of(path), exists);
    }

    /// Whether a listing of `path`'s parent taken within `attr_ttl` showed it
    /// as a directory (a common prefix, and no object of that name): then a
    /// HEAD of the name and a listing of the prefix would tell nothing new,
    /// just as a listing vouches for a file's attributes for `attr_ttl`.
    pub(super) fn listed_as_dir(&self, path: &str) -> bool {
        let dir = names::parent_of(path);
        let name = names::name_of(path);
        let listed = self.known_dirs.lock().unwrap().listed(dir, name, self.ttl);
        let t = self.inodes.lock().unwrap();
        listed && t.lookup_path(path).is_some_and(|i| t.nodes[&i].is_dir())
    }

    /// Whether `path` is known not to exist (its directory's contents are known
    /// and fresh, and the name is not among them).
    pub(super) fn known_absent(&self, path: &str) -> bool {
        let dir = names::parent_of(path);
        let name = names::name_of(path);
        self.known_dirs.lock().unwrap().absent(dir, name)
    }

    /// The lock that serializes bucket lookups of `path`.
    pub(super) fn resolving(&self, path: &str) -> Arc<tokio::sync::Mutex<()>> {
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

    pub(super) async fn resolve_remote(&self, path: &str) -> Result<u64, FsError> {
        let lock = self.resolving(path);
        let _one = lock.lock().await;
        self.resolve_remote_locked(path).await
    }

    pub(super) async fn resolve_remote_locked(&self, path: &str) -> Result<u64, FsError> {
        if self.known_absent(path) && self.uploader.pending_for(&self.key(path)).is_empty() {
            let mut t = self.inodes.lock().unwrap();
            match t.lookup_path(path) {
                Some(ino) if t.is_local_only(ino) => return Ok(ino),
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
                if n.content.local_only() || n.working().is_some() || n.content.dirty() || fresh {
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
                    if n.only_in_bucket() {
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
                    n.learned_meta(Instant::now());
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
            n.learned_meta(Instant::now());
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
    pub(super) fn renumber_if_changed(&self, t: &mut Inodes, path: &str, etag: &str) {
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
            && n.only_in_bucket()
            && !n.content.local_only()
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
    pub(super) async fn adopt_pending(&self, path: &str, op: &Op) -> u64 {
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
        let (staged, size, content) = match (source.kind, &source.file) {
            (OpKind::Put, Some(name)) => (Some(name.clone()), source.size, None),
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
        // Opened under the lock: a finished upload removes a file no node
        // holds under it too (`on_uploaded`), so the file is either still
        // there and held from here on, or gone, and then its version is in
        // the bucket, where the node reads it.
        let working = staged.and_then(|name| self.open_working(name).ok());
        let ino = t.upsert(path, meta.clone());
        let n = t.get_mut(ino).unwrap();
        let fresh = n.only_in_bucket();
        if fresh {
            n.meta = meta;
            n.size = size;
            n.content.adopted(working.is_some());
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
        n.learned_meta(Instant::now());
        ino
    }

    /// Whether a directory exists at `path`: a queued marker or file below it,
    /// a local child, or anything in the bucket below its prefix.
    pub(super) async fn dir_exists(&self, path: &str) -> Result<bool, FsError> {
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
    pub(super) async fn dir_meta(&self, path: &str) -> ObjectMeta {
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
}
