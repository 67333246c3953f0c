//! rename(2): a file is a copy of its current version (or its queued put
//! repointed) plus a delete of the old key, journaled before the answer; a
//! directory is the same per key under it, [`RENAME_PARALLEL`] at a time,
//! **not atomic** (every step is journaled and completes after a crash).

use super::*;

impl Core {
    /// rename(2). A file is copied server-side (or, with local data, uploaded
    /// under its new key) and the old key deleted; a directory is renamed key
    /// by key, which is not atomic.
    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<(), FsError> {
        self.check_writable()?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(FsError::Invalid("RENAME_EXCHANGE is not supported"));
        }
        let (_, from) = self.child(parent, name)?;
        let (_, to) = self.child(newparent, newname)?;
        let src = self.resolve(&from).await?;
        if from == to {
            return Ok(());
        }
        let src_is_dir = self.inodes.lock().unwrap().nodes[&src].is_dir();
        if src_is_dir && (to.starts_with(&format!("{from}/"))) {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        match self.resolve(&to).await {
            Ok(dst) => {
                if flags & libc::RENAME_NOREPLACE != 0 {
                    return Err(FsError::Exists);
                }
                let dst_is_dir = self.inodes.lock().unwrap().nodes[&dst].is_dir();
                match (src_is_dir, dst_is_dir) {
                    (false, true) => return Err(FsError::IsDir),
                    (true, false) => return Err(FsError::NotDir),
                    (true, true) => {
                        if !self.dir_is_empty(dst).await? {
                            return Err(FsError::NotEmpty);
                        }
                        self.delete_dir_keys(&to).await?;
                    }
                    (false, false) => {}
                }
                self.inodes.lock().unwrap().detach(dst);
            }
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        self.touch_dir(parent);
        self.touch_dir(newparent);
        self.note_path(&from, false);
        self.note_path(&to, true);
        if src_is_dir {
            // What this mount knew of the old subtree no longer holds, nor
            // what it knew of an empty directory the new one replaces.
            {
                let mut known = self.known_dirs.lock().unwrap();
                known.forget_tree(&from);
                known.forget_tree(&to);
            }
            self.rename_dir(src, &from, &to).await
        } else {
            self.rename_file(src, &from, &to).await
        }
    }

    /// Queues the new key's content and the old key's delete for one file,
    /// and moves its node. The node moves first: the new key's operation
    /// may finish at once, and its completion finds the node by its path.
    /// `from` is where the caller found the node; a node that moved since
    /// (another rename came first) is not there any more (`NotFound`).
    pub(super) async fn rename_file(&self, ino: u64, from: &str, to: &str) -> Result<(), FsError> {
        let io = self.io_lock(ino)?;
        let _g = io.lock().await;
        let (working, before, meta, size, content, _claim, writing) = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            if n.path != from || n.unlinked() {
                return Err(FsError::NotFound);
            }
            self.refresh(n);
            (
                n.working().cloned(),
                n.content,
                n.meta.clone(),
                n.size,
                // Where a clean node's bytes are: one (key, version) pair,
                // read together.
                self.content_of(n),
                // Read under the lock the finishing upload of the old key
                // checks it in (`on_uploaded`), so that upload cannot retire
                // the file before the put below is queued.
                n.working().map(|w| self.uploader.claim(&w.name)),
                n.kernel.as_ref().is_some_and(|k| k.writing()),
            )
        };
        let (from_key, to_key) = (self.key(from), self.key(to));
        let (src_key, mut version) = content;
        if working.is_none() && version.is_none() {
            // The copy must name the version it copies (the old key is deleted
            // right after): let queued changes land, then ask the bucket.
            if let Some(last) = self.uploader.pending_for(&src_key).last() {
                self.uploader
                    .wait(last.seq)
                    .await
                    .map_err(FsError::Upload)?;
            }
            let what = format!("a HEAD of `{src_key}`");
            version = self
                .ask(&what, self.store.head(&src_key, None))
                .await?
                .version_id;
        }
        let pending_src = self.uploader.pending_for(&from_key);
        // From the node's move until its ops are queued, what finishes for
        // the new key (the replaced file's upload) is not the node's.
        let _announced = self.uploader.announce(&to_key);
        let mut stamped = None;
        let op = match &working {
            Some(w) => {
                let mut size = size;
                if writing {
                    // Passthrough writers go on writing it: staged as of now,
                    // held until they close (see `passthrough`).
                    let s = stamp::of(&w.file)?;
                    self.cache.sync_data(&w.name, &w.file)?;
                    self.supersede_inline(&w.name).await?;
                    (size, stamped) = (s.size, Some(s));
                } else if before.dirty() {
                    self.cache.sync_data(&w.name, &w.file)?;
                }
                NewOp::put(to_key.clone(), w.name.clone(), size, meta.to_json(), None)
            }
            None => NewOp {
                key: to_key.clone(),
                kind: OpKind::Copy,
                file: None,
                size,
                meta: meta.to_json(),
                // A named version stays copyable after the delete below.
                src_key: Some(src_key.clone()),
                src_version: version.clone(),
                inline: None,
                base: None,
            },
        };
        {
            let mut t = self.inodes.lock().unwrap();
            t.rename(ino, to);
            if working.is_some() {
                t.staged(ino);
            }
            if let Some(n) = t.get_mut(ino) {
                if n.working().is_some() {
                    if let (Some(k), Some(_)) = (n.kernel.as_deref_mut(), stamped) {
                        k.stamp = stamped;
                    }
                } else {
                    // Until the copy lands, the bytes are read from the old key.
                    n.content_key = Some(src_key);
                    n.version = version;
                }
            }
        }
        let queued = async {
            let seq = self.uploader.submit(op).await?;
            if !(before.local_only() && pending_src.is_empty()) {
                self.uploader
                    .submit(NewOp::delete(from_key.clone()))
                    .await?;
            }
            Ok::<_, FsError>(seq)
        }
        .await;
        let mut t = self.inodes.lock().unwrap();
        match &queued {
            Ok(seq) => {
                if let Some(n) = t.get_mut(ino) {
                    n.last_seq = Some(*seq);
                }
            }
            // Not staged: the next close stages it again.
            Err(_) => t.unstaged(ino, before, working.is_some()),
        }
        queued.map(|_| ())
    }

    pub(super) async fn rename_dir(&self, ino: u64, from: &str, to: &str) -> Result<(), FsError> {
        let from_prefix = self.dkey(from);
        // Every key below the old prefix: the bucket's and the queued ones.
        let mut keys: BTreeMap<String, ()> = BTreeMap::new();
        let queued_before = self.uploader.pending_under(&from_prefix);
        let mut token = None;
        loop {
            let what = format!("a listing of `{from_prefix}`");
            let page = self
                .ask(&what, self.store.list(&from_prefix, None, token, None))
                .await?;
            keys.extend(page.objects.into_iter().map(|o| (o.key, ())));
            match page.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        for op in queued_across(queued_before, self.uploader.pending_under(&from_prefix)) {
            if op.kind == OpKind::Delete {
                keys.remove(&op.key);
            } else {
                keys.insert(op.key, ());
            }
        }
        let meta = self.inodes.lock().unwrap().nodes[&ino].meta.clone();
        self.put_dir_attrs(to, &meta).await?;
        let mut files = Vec::new();
        for key in keys.keys() {
            let rel = &key[self.prefix.len()..];
            let Some(below) = rel.strip_prefix(from).and_then(|r| r.strip_prefix('/')) else {
                continue;
            };
            if below.is_empty() || below == DIR_ATTRS || below.ends_with(&format!("/{DIR_ATTRS}")) {
                continue;
            }
            let new_rel = format!("{to}/{below}");
            if let Some(sub) = rel.strip_suffix('/') {
                // A subdirectory marker: its attributes travel with it.
                let m = self.dir_meta(sub).await;
                self.put_dir_attrs(new_rel.trim_end_matches('/'), &m)
                    .await?;
                self.delete_dir_keys(sub).await?;
                continue;
            }
            files.push((rel.to_string(), new_rel));
        }
        // Files are independent (each copy is staged before its own delete):
        // their lookups and journal commits overlap.
        let mut moves = futures_util::stream::iter(files)
            .map(|(path, new_rel)| async move {
                let child = match self.resolve(&path).await {
                    Ok(i) => i,
                    Err(FsError::NotFound) => return Ok(()),
                    Err(e) => return Err(e),
                };
                if !self.inodes.lock().unwrap().nodes[&child].meta_known() {
                    // Attributes travel with the copy: read them first.
                    let _ = self.refresh_meta(child).await;
                }
                match self.rename_file(child, &path, &new_rel).await {
                    // Renamed or removed meanwhile: not below `from` any more.
                    Err(FsError::NotFound) => Ok(()),
                    other => other,
                }
            })
            .buffer_unordered(RENAME_PARALLEL);
        while let Some(moved) = moves.next().await {
            moved?;
        }
        drop(moves);
        self.delete_dir_keys(from).await?;
        self.inodes.lock().unwrap().rename(ino, to);
        Ok(())
    }
}
