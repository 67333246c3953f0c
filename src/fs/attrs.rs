//! Attributes and extended attributes: chmod, chown, utimens, truncate via
//! setattr, and the `user.*` xattrs kept in the object's metadata, plus the
//! read-only `regionfs.*` ones (version, replication status). A change to a
//! file whose upload is queued and not started joins that upload; otherwise
//! it is a metadata copy of the object onto itself.

use super::*;

impl Core {
    /// Reads the object's metadata (HEAD) into a node listed without it.
    pub(super) async fn refresh_meta(&self, ino: u64) -> Result<(), FsError> {
        let path = self.path_of(ino)?;
        let key = self.key(&path);
        let info = self
            .ask(&format!("a HEAD of `{key}`"), self.store.head(&key, None))
            .await?;
        let meta = ObjectMeta::from_object(&info, &self.default_file);
        let mut t = self.inodes.lock().unwrap();
        // Queued operations on the key are newer than what the HEAD saw.
        let queued = !self.uploader.pending_for(&key).is_empty();
        if let Some(n) = t.get_mut(ino) {
            if n.only_in_bucket() && !queued {
                n.content_key = None;
                n.meta = meta;
                n.size = info.size;
                n.etag = info.etag;
                n.version = info.version_id;
            }
            n.learned_meta(Instant::now());
        }
        Ok(())
    }

    pub async fn setattr(&self, ino: u64, set: SetAttr) -> Result<Attr, FsError> {
        let needs_meta = {
            !self
                .inodes
                .lock()
                .unwrap()
                .get(ino)
                .ok_or(FsError::NotFound)?
                .meta_known()
        };
        if needs_meta {
            let _ = self.refresh_meta(ino).await;
        }
        if set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.size.is_some()
            || set.mtime.is_some()
        {
            self.check_writable()?;
        }
        // Asked with nothing else (after a passthrough write): nothing to
        // clear on a read-only mount, which no one writes.
        let set = SetAttr {
            kill_privs: set.kill_privs && self.check_writable().is_ok(),
            ..set
        };
        if set.size.is_some_and(|s| s > crate::config::MAX_OBJECT_SIZE) {
            return Err(FsError::TooLarge);
        }
        let io = self.io_lock(ino)?;
        let _g = io.lock().await;
        if let Some(size) = set.size {
            self.truncate_locked(ino, size).await?;
            if let Some(fh) = set.fh {
                self.mark_written(fh);
            }
        }
        let (stage_now, copy_meta) = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            self.refresh(n);
            // Only a real change makes a version: with the writeback cache the
            // kernel re-sends the mtime it already has after every ctime bump
            // (rename, unlink, link count), and that must not copy the object.
            let before = (n.meta.mode, n.meta.uid, n.meta.gid, n.meta.mtime());
            if let Some(m) = set.mode {
                n.meta.mode = (n.meta.mode & S_IFMT) | (m & 0o7777);
            }
            if let Some(u) = set.uid {
                n.meta.uid = u;
            }
            if let Some(g) = set.gid {
                n.meta.gid = g;
            }
            if set.kill_privs && set.mode.is_none() && n.meta.mode & S_IFMT == S_IFREG {
                n.meta.mode = crate::meta::without_privs(n.meta.mode);
            }
            if let Some(a) = set.atime {
                n.meta.set_atime(a);
            }
            if let Some(m) = set.mtime {
                n.meta.set_mtime(m);
            } else if set.size.is_some() {
                n.meta.set_mtime(SystemTime::now());
            }
            let meta_changed = before != (n.meta.mode, n.meta.uid, n.meta.gid, n.meta.mtime());
            if meta_changed || set.size.is_some() {
                n.ctime = SystemTime::now();
            }
            let open_for_write = n.open_writers > 0;
            if n.unlinked() {
                // No name left to write a version under.
                (false, false)
            } else if n.content.dirty() {
                // Folded into the upload at close (or now, for truncate(2) of a
                // file nobody has open for writing).
                (!open_for_write, false)
            } else {
                (false, meta_changed)
            }
        };
        if stage_now {
            drop(_g);
            self.stage(ino).await?;
        } else if copy_meta {
            self.store_meta_locked(ino).await?;
        }
        self.node_attr(ino)
    }

    /// Writes a metadata change of a clean (or staged) node as a new version:
    /// a copy onto itself, or a fresh marker for a directory.
    pub(super) async fn store_meta_locked(&self, ino: u64) -> Result<(), FsError> {
        let (path, is_dir, meta, content, size) = {
            let t = self.inodes.lock().unwrap();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            (
                n.path.clone(),
                n.is_dir(),
                n.meta.clone(),
                self.content_of(n),
                n.size,
            )
        };
        if ino == ROOT {
            return Ok(());
        }
        let op = if is_dir {
            let seq = self.put_dir_attrs(&path, &meta).await?;
            if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
                n.last_seq = Some(seq);
            }
            return Ok(());
        } else {
            let key = self.key(&path);
            if let Some(seq) = self.uploader.amend_meta(&key, meta.to_json()).await? {
                if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
                    n.last_seq = Some(seq);
                }
                return Ok(());
            }
            let queued = !self.uploader.pending_for(&key).is_empty();
            // With uploads queued the copy must take what they produce;
            // else the version holding the bytes (the old key's, while a
            // rename's copy has not landed).
            let (src_key, src_version) = match queued {
                true => (key.clone(), None),
                false => content,
            };
            NewOp {
                src_key: Some(src_key),
                src_version,
                key,
                kind: OpKind::Copy,
                file: None,
                size,
                meta: meta.to_json(),
                inline: None,
                base: None,
            }
        };
        let seq = self.uploader.submit(op).await?;
        if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
            n.last_seq = Some(seq);
        }
        Ok(())
    }

    // ----- extended attributes -----

    /// An extended attribute answered from memory (the node's metadata is
    /// known); `None` for regionfs's own attributes and unknown metadata.
    pub(crate) fn getxattr_cached(&self, ino: u64, name: &str) -> Option<Result<Vec<u8>, FsError>> {
        if name == "user.regionfs.version" || name == "user.regionfs.replication" {
            return None;
        }
        let t = self.inodes.lock().unwrap();
        let n = t.get(ino).filter(|n| n.meta_known())?;
        Some(n.meta.xattrs.get(name).cloned().ok_or(FsError::NoAttribute))
    }

    pub(crate) async fn getxattr(&self, ino: u64, name: &str) -> Result<Vec<u8>, FsError> {
        if name == "user.regionfs.version" {
            return self.version_of(ino).await.map(|v| v.into_bytes());
        }
        if name == "user.regionfs.replication" {
            return self.replication_of(ino).await.map(|v| v.into_bytes());
        }
        self.ensure_meta(ino).await?;
        let t = self.inodes.lock().unwrap();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        n.meta.xattrs.get(name).cloned().ok_or(FsError::NoAttribute)
    }

    pub(super) async fn ensure_meta(&self, ino: u64) -> Result<(), FsError> {
        let known = self
            .inodes
            .lock()
            .unwrap()
            .get(ino)
            .ok_or(FsError::NotFound)?
            .meta_known();
        if !known {
            self.refresh_meta(ino).await?;
        }
        Ok(())
    }

    /// The source version id of the node's current content, or `pending`/`local`.
    pub(super) async fn version_of(&self, ino: u64) -> Result<String, FsError> {
        let (path, dirty, shared) = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            self.refresh(n);
            (n.path.clone(), n.content.dirty(), n.content.shared())
        };
        if dirty {
            return Ok("local".into());
        }
        let key = self.key(&path);
        if shared || !self.uploader.pending_for(&key).is_empty() {
            return Ok("pending".into());
        }
        if let Some(op) = self.journal.latest_done(key.clone()).await? {
            if let Some(v) = op.version_id {
                return Ok(v);
            }
        }
        let info = self
            .ask(&format!("a HEAD of `{key}`"), self.store.head(&key, None))
            .await?;
        Ok(info.version_id.unwrap_or_default())
    }

    /// `{"<destination>": {"status": "PENDING|COMPLETED|FAILED", "error": …}}`
    /// for the file's newest replicated version.
    pub(super) async fn replication_of(&self, ino: u64) -> Result<String, FsError> {
        let path = self.path_of(ino)?;
        let tasks = self.journal.latest_tasks(self.key(&path)).await?;
        let map: serde_json::Map<String, serde_json::Value> = tasks
            .into_iter()
            .map(|t| {
                (
                    t.destination,
                    serde_json::json!({"status": t.status, "version": t.version_id, "error": t.error}),
                )
            })
            .collect();
        Ok(serde_json::Value::Object(map).to_string())
    }

    pub(crate) async fn listxattr(&self, ino: u64) -> Result<Vec<String>, FsError> {
        self.ensure_meta(ino).await?;
        let t = self.inodes.lock().unwrap();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        Ok(n.meta.xattrs.keys().cloned().collect())
    }

    pub(crate) async fn setxattr(
        &self,
        ino: u64,
        name: &str,
        value: Option<&[u8]>,
        flags: i32,
    ) -> Result<(), FsError> {
        self.check_writable()?;
        if !name.starts_with("user.") {
            return Err(FsError::NotSupported(
                "only user.* attributes can be stored",
            ));
        }
        if name.starts_with("user.regionfs.") {
            return Err(FsError::NotPermitted(
                "user.regionfs.* attributes are read-only",
            ));
        }
        self.ensure_meta(ino).await?;
        let io = self.io_lock(ino)?;
        let _g = io.lock().await;
        let dirty = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            let exists = n.meta.xattrs.contains_key(name);
            match value {
                Some(v) => {
                    if flags & libc::XATTR_CREATE != 0 && exists {
                        return Err(FsError::Exists);
                    }
                    if flags & libc::XATTR_REPLACE != 0 && !exists {
                        return Err(FsError::NoAttribute);
                    }
                    n.meta.xattrs.insert(name.to_string(), v.to_vec());
                }
                None => {
                    if n.meta.xattrs.remove(name).is_none() {
                        return Err(FsError::NoAttribute);
                    }
                }
            }
            n.ctime = SystemTime::now();
            n.content.dirty()
        };
        if !dirty {
            self.store_meta_locked(ino).await?;
        }
        Ok(())
    }
}
