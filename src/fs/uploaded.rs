//! What the mount learns when an upload finishes: the node's new version and
//! ETag (unless it was written again since), the attribute index, and the
//! re-queueing of an operation whose input was lost (a working file removed
//! under it) from what the node holds now.

use super::*;

impl Core {
    // ----- upload completions -----

    /// Applies a finished upload to the node and the cache: the staged file
    /// becomes the clean copy of that version, or is removed when superseded.
    /// Called while the operation is still queued (see
    /// [`crate::uploader::Landed`]): it does not count as queued here.
    pub(crate) fn on_uploaded(&self, c: &Completion) {
        let key = &c.op.key;
        let rel = key.strip_prefix(&self.prefix).unwrap_or(key);
        let mut t = self.inodes.lock().unwrap();
        // Both asked under the inodes lock: a stage or rename queues its op
        // before it updates the node under this lock, and takes its claim
        // while it reads the node under it, so neither can fall between
        // these answers and the node's state below.
        let still_queued = self.uploader.submitting(key)
            || self
                .uploader
                .pending_for(key)
                .iter()
                .any(|o| o.seq != c.op.seq);
        // Another queued operation may stage the same file under another key
        // (a rename's put), or be about to (a claim): the last of them to
        // finish decides what becomes of it.
        let referenced =
            c.op.file
                .as_deref()
                .is_some_and(|f| self.uploader.references_besides(f, &c.op));
        let at_key = t.lookup_path(rel.trim_end_matches('/'));
        if let Some(n) = at_key.and_then(|i| t.get_mut(i)) {
            self.refresh(n);
            if !still_queued && !n.content.dirty() && c.op.kind != OpKind::Delete {
                self.learn_uploaded(rel, c);
                // The node is the version it now names: a node made from a
                // listing while the op was queued held default attributes.
                if let Some(meta) = ObjectMeta::from_json(&c.op.meta) {
                    if meta.mode & S_IFMT == n.meta.mode & S_IFMT {
                        n.meta = meta;
                        n.learned_meta(Instant::now());
                    }
                }
                n.content_key = None;
                n.version = c.result.version_id.clone();
                if !c.result.etag.is_empty() {
                    // The uploaded bytes were written through the kernel's
                    // pages (or are the pages' content, renamed or re-tagged).
                    if n.kernel_tag == Some(inode::content_tag(&n.etag)) {
                        n.kernel_tag = Some(inode::content_tag(&c.result.etag));
                    }
                    n.etag = c.result.etag.clone();
                }
                n.fetched = Some(Instant::now());
            }
        }
        let Some(f) = c.op.file.as_deref() else {
            return;
        };
        if referenced {
            return;
        }
        // Only a node holding the file can hand it to a new op (a claim is
        // taken from `working`, under the lock): if none does, nothing can
        // reference it any more.
        let mut make_clean = false;
        // The node's I/O lock while its working file is retired: whoever
        // holds it may have read the node and be about to use the file by
        // name (an open copying it, a truncate); then the file stays.
        let mut retiring = None;
        let keep = match t.holder_of(f) {
            None => false,
            Some(h) => {
                let n = t.get_mut(h).expect("a holder exists");
                if n.unlinked() && n.open == 0 {
                    // Its name went and no one has it open: the file goes.
                    t.set_working(h, None);
                    false
                } else {
                    // A backing file stays the working file until the kernel
                    // lets go of it (then `settle_working`).
                    let backed = n.kernel.as_ref().is_some_and(|k| k.backing.is_some());
                    let idle = n.io().try_lock_owned().ok();
                    if at_key == Some(h)
                        && !still_queued
                        && n.content.shared()
                        && n.open_writers == 0
                        && !backed
                        && !c.result.etag.is_empty()
                        && idle.is_some()
                    {
                        n.content.owns_file();
                        t.set_working(h, None);
                        make_clean = true;
                        retiring = idle;
                    } else if at_key != Some(h) || !still_queued {
                        // No queued op reads it: writes may go in place.
                        n.content.owns_file();
                    }
                    true
                }
            }
        };
        if !keep {
            // Under the lock: a node made again from the queue meanwhile
            // (`adopt_pending`) opens the file under it too, so it either
            // holds the file before this looked, or finds it gone.
            self.cache.remove_data(f);
        }
        drop(t);
        if make_clean {
            self.cache.make_clean(f, key, &c.result.etag);
        }
        drop(retiring);
    }

    /// A queued operation's input was gone and nothing queued after it sets
    /// its key (see `uploader::replan`): queues what the name holds here
    /// now (its working file, else a copy of the version holding its
    /// bytes), which supersedes it. Nothing when the name is gone or its
    /// bytes are not here: the operation stays listed as lost.
    ///
    /// The uploader learns what supersedes the lost operation when `landed`
    /// is dropped, so it is held until the new operation is queued — unless
    /// the node is busy (its I/O lock held: a rename or flush may be waiting
    /// for the lost operation itself), when it is let go at once and the
    /// new operation follows in the background.
    pub(crate) fn requeue_lost(self: &Arc<Self>, landed: crate::uploader::Landed) {
        let crate::uploader::Event::Lost { op, error } = &landed.event else {
            return;
        };
        let rel = op.key.strip_prefix(&self.prefix).unwrap_or(&op.key);
        let path = rel.trim_end_matches('/').to_string();
        let gone = (op.src_key.clone(), op.src_version.clone());
        let error = error.clone();
        let me = self.clone();
        tokio::spawn(async move {
            let mut landed = Some(landed);
            let requeued = me.requeue(&path, gone, &mut landed).await;
            drop(landed);
            match requeued {
                Ok(true) => tracing::info!(path, error, "queued the bytes the name holds here in place of an operation whose input was gone"),
                Ok(false) => {}
                Err(e) => tracing::error!(path, error = %e, "cannot queue the name's bytes again"),
            }
        });
    }

    pub(super) async fn requeue(
        &self,
        path: &str,
        gone: (Option<String>, Option<String>),
        landed: &mut Option<crate::uploader::Landed>,
    ) -> Result<bool, FsError> {
        let Some(ino) = self.inodes.lock().unwrap().lookup_path(path) else {
            return Ok(false);
        };
        let io = self.io_lock(ino)?;
        let _g = match io.try_lock() {
            Ok(g) => g,
            Err(_) => {
                landed.take();
                io.lock().await
            }
        };
        let content = {
            let mut t = self.inodes.lock().unwrap();
            let Some(n) = t.get_mut(ino).filter(|n| !n.unlinked() && !n.is_dir()) else {
                return Ok(false);
            };
            if n.working().is_some() {
                // Staged again as it is now.
                n.content.changed();
                None
            } else {
                Some((self.content_of(n), n.meta.clone(), n.size))
            }
        };
        match content {
            None => Ok(self.stage_locked(ino).await?.is_some()),
            Some(((key, Some(version)), meta, size))
                if (Some(&key), Some(&version)) != (gone.0.as_ref(), gone.1.as_ref()) =>
            {
                let op = NewOp {
                    key: self.key(path),
                    kind: OpKind::Copy,
                    file: None,
                    size,
                    meta: meta.to_json(),
                    src_key: Some(key),
                    src_version: Some(version),
                    inline: None,
                    base: None,
                };
                let seq = self.uploader.submit(op).await?;
                if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
                    n.last_seq = Some(seq);
                }
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }

    /// Tells the indexer what a HEAD of an uploaded file's version would say.
    /// Only below 5 MiB, S3's smallest part: a file uploaded in parts while
    /// it was written carries other metadata (no mtime, see
    /// `uploader::early`), which its HEAD will tell.
    pub(super) fn learn_uploaded(&self, rel: &str, c: &Completion) {
        let (Some(ix), Some(v)) = (&self.index, &c.result.version_id) else {
            return;
        };
        if c.op.size >= crate::config::MIN_PART_SIZE
            || c.op.key.ends_with('/')
            || c.result.etag.is_empty()
        {
            return;
        }
        let Some(meta) = ObjectMeta::from_json(&c.op.meta) else {
            return;
        };
        let o = meta.to_put_options_for(&c.op.key);
        ix.learn(rel, Fact::new(v, o.content_type.as_deref(), &o.metadata));
    }
}
