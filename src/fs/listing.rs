//! Directory listings: the entries of a directory are the merge of its nodes
//! created here and not yet staged, the newest queued operation on each key,
//! and the bucket's LIST (`queued_across` keeps a queued operation that
//! finished while the LIST ran; the merge of the last two is the pure
//! [`merge::merge`]). A listing also primes attributes, from the
//! directory's attribute index or by HEADs [`PREFETCH`] at a time.

use std::collections::BTreeSet;

use super::*;

impl Core {
    /// Lists a directory: the bucket's listing merged with queued operations and
    /// local-only nodes. Every entry gets a node (and the kernel a reference,
    /// by the caller, for readdirplus). A bucket that hangs is given up (see
    /// [`Core::ask`]): the listing fails, as it does when the bucket refuses.
    pub(crate) async fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let dir = self.dir_path(ino)?;
        self.ask(
            &format!("a listing of `{dir}/`"),
            self.list_dir(dir.clone()),
        )
        .await
    }

    /// [`Core::readdir`] unbounded. It changes the inode table only after its
    /// last request is answered, so giving it up midway leaves the table as
    /// it was.
    pub(super) async fn list_dir(&self, dir: String) -> Result<Vec<DirEntry>, FsError> {
        let started = Instant::now();
        let dkey = self.dkey(&dir);
        let mut files: BTreeMap<String, merge::Listed> = BTreeMap::new();
        let mut dirs: BTreeSet<String> = BTreeSet::new();
        // What is local or queued before the LIST is sent: an upload or delete
        // finishing while it runs may be missing from both the listing and
        // the queue afterwards. Local first: a file leaves the local set only
        // once queued.
        let local_before: Vec<String> = {
            let t = self.inodes.lock().unwrap();
            t.local_children(&dir)
                .into_iter()
                .map(|i| t.nodes[&i].path.clone())
                .collect()
        };
        let queued_before = self.uploader.pending_under(&dkey);
        let mut token = None;
        loop {
            let page = self.store.list(&dkey, Some("/"), token, None).await?;
            for o in &page.objects {
                match listed_entry(&dkey, &o.key) {
                    Some((name, false)) => {
                        files.insert(name.to_string(), (o.size, o.etag.clone(), o.last_modified));
                    }
                    Some((name, true)) => {
                        dirs.insert(name.to_string());
                    }
                    None if o.key.ends_with(DIR_ATTRS) || o.key == dkey => {}
                    None => self.hide(&o.key, &dkey),
                }
            }
            for p in &page.common_prefixes {
                match listed_entry(&dkey, p) {
                    Some((name, _)) => {
                        dirs.insert(name.to_string());
                    }
                    None if names::is_index_key(p) => {}
                    None => self.hide(p, &dkey),
                }
            }
            match page.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        // Queued operations are newer than the listing.
        let queued = queued_across(queued_before, self.uploader.pending_under(&dkey));
        let merge::Merged {
            mut files,
            mut dirs,
            mut queued_meta,
            maybe_gone,
        } = merge::merge(&dkey, files, dirs, &queued);
        // A directory listed only because of keys whose deletes are still queued
        // is already gone (rm -rf right after writes must find it empty).
        for name in maybe_gone {
            if !self.dir_exists(&child_path(&dir, &name)).await? {
                dirs.remove(&name);
            }
        }
        let index = match &self.index {
            Some(ix) if self.needs_attributes(&dir, &files) => ix.read(&dir).await.map(|(i, _)| i),
            _ => None,
        };
        let mut out = Vec::with_capacity(files.len() + dirs.len());
        let mut t = self.inodes.lock().unwrap();
        let still_linked = local_before.iter().filter_map(|p| t.lookup_path(p));
        let local: HashSet<u64> = still_linked.chain(t.local_children(&dir)).collect();
        for ino in local {
            let n = &t.nodes[&ino];
            let name = names::name_of(&n.path).to_string();
            if n.is_dir() {
                dirs.insert(name);
            } else {
                files.insert(name, (n.size, String::new(), None));
            }
        }
        for name in &dirs {
            let path = child_path(&dir, name);
            let existing = t.lookup_path(&path).filter(|i| t.nodes[i].is_dir());
            let ino = match existing {
                Some(i) => i,
                None => t.upsert(&path, self.default_dir.clone()),
            };
            out.push(DirEntry {
                ino,
                name: name.clone(),
                mode: t.nodes[&ino].meta.mode,
            });
        }
        for (name, (size, etag, modified)) in files {
            let path = child_path(&dir, &name);
            // A name that is both a directory and a file lists as the directory.
            if dirs.contains(&name) {
                continue;
            }
            self.renumber_if_changed(&mut t, &path, &etag);
            let ino = match t.lookup_path(&path) {
                Some(i) if !t.nodes[&i].is_dir() => i,
                _ => {
                    let mut meta = self.default_file.clone();
                    if let Some(m) = modified {
                        meta.set_mtime(m);
                    }
                    let meta = queued_meta.remove(&name).unwrap_or(meta);
                    let i = t.upsert(&path, meta);
                    let n = t.get_mut(i).unwrap();
                    n.size = size;
                    n.etag = etag.clone();
                    i
                }
            };
            t.touch(ino);
            let n = t.get_mut(ino).unwrap();
            if n.only_in_bucket() && !etag.is_empty() && n.etag != etag {
                // Changed in the bucket since we looked: sizes from the listing,
                // attributes again at the next lookup.
                n.etag = etag.clone();
                n.size = size;
                n.forget_meta();
                n.listed_as = None;
            } else if n.only_in_bucket()
                && !etag.is_empty()
                && n.etag == etag
                && n.meta_known()
                && n.listed_as.is_some()
                && n.listed_as == modified.map(unix_secs)
            {
                // The version whose attributes we hold is still the current
                // one: trust them again without a HEAD per file.
                n.fetched = Some(started);
            }
            if let Some(e) = index.as_ref().and_then(|i| i.files.get(&name)) {
                if !self.attributes_fresh(n)
                    && n.only_in_bucket()
                    && e.describes(size, &etag, modified)
                {
                    // The index names this very version: its attributes
                    // without a HEAD (see `index`).
                    n.meta = ObjectMeta::from_object(&e.info(&path), &self.default_file);
                    n.etag = etag.clone();
                    n.size = size;
                    n.version = e.version.clone();
                    n.content_key = None;
                    n.learned_meta(started);
                    n.listed_as = Some(e.modified);
                }
            }
            out.push(DirEntry {
                ino,
                name,
                mode: n.meta.mode,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        drop(t);
        self.know_dir(dir, started, out.iter().map(|e| e.name.clone()).collect());
        Ok(out)
    }

    /// Whether some listed file has no fresh attributes in memory (then the
    /// directory's attribute index is worth a GET).
    pub(super) fn needs_attributes(
        &self,
        dir: &str,
        files: &BTreeMap<String, (u64, String, Option<SystemTime>)>,
    ) -> bool {
        let t = self.inodes.lock().unwrap();
        files.iter().any(|(name, (_, etag, _))| {
            !etag.is_empty()
                && t.lookup_path(&child_path(dir, name))
                    .and_then(|i| t.get(i))
                    .is_none_or(|n| !self.attributes_fresh(n))
        })
    }

    /// The node's attributes came from the bucket within `attr_ttl`.
    pub(super) fn attributes_fresh(&self, n: &Node) -> bool {
        n.meta_known() && n.fetched.is_some_and(|f| f.elapsed() < self.ttl)
    }

    /// The attribute indexer, to run in the background (None: disabled).
    pub(crate) fn indexer(&self) -> Option<Arc<Indexer>> {
        self.index.clone()
    }

    pub(crate) fn opendir(&self, _ino: u64) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn releasedir(&self, fh: u64) {
        self.dir_handles.lock().unwrap().remove(&fh);
    }

    /// The listing for a directory handle: taken afresh at offset 0, reused for
    /// the following pages so a large directory is listed once per pass.
    pub(crate) async fn readdir_at(
        self: &Arc<Self>,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> Result<Arc<Vec<DirEntry>>, FsError> {
        if offset > 0 {
            if let Some(l) = self.dir_handles.lock().unwrap().get(&fh) {
                return Ok(l.clone());
            }
        }
        let l = Arc::new(self.readdir(ino).await?);
        self.dir_handles.lock().unwrap().insert(fh, l.clone());
        self.prefetch_attributes(&l);
        Ok(l)
    }

    /// A listing is usually followed by a stat of every entry (`ls -l`, `find`,
    /// `rsync`), one lookup at a time. LIST carries no metadata (mode, owner,
    /// mtime), so fetch it now for the listed entries the attribute index did
    /// not cover (files, and directories: their marker), [`PREFETCH`] at a
    /// time in listing order: the lookups then find fresh attributes.
    pub(super) fn prefetch_attributes(self: &Arc<Self>, entries: &[DirEntry]) {
        let paths: Vec<String> = {
            let t = self.inodes.lock().unwrap();
            entries
                .iter()
                .filter_map(|e| t.get(e.ino))
                .filter(|n| {
                    !n.content.local_only()
                        && n.only_in_bucket()
                        && n.fetched.is_none_or(|f| f.elapsed() >= self.ttl)
                })
                .map(|n| n.path.clone())
                .collect()
        };
        if paths.is_empty() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            for path in paths {
                if set.len() >= PREFETCH {
                    set.join_next().await;
                }
                let me = me.clone();
                set.spawn(async move {
                    let _ = me.resolve_remote(&path).await;
                });
            }
            while set.join_next().await.is_some() {}
        });
    }

    /// Counts and logs (once per key) a key that cannot be a path.
    pub(super) fn hide(&self, key: &str, dir: &str) {
        if self.hidden_keys.lock().unwrap().insert(key.to_string()) {
            self.hidden_count.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(key, dir, "key cannot be a path (empty segment, `.`/`..`, or a segment over 255 bytes): hidden from the listing");
        }
    }
}
