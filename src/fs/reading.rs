//! read(2) on a handle: the working file if the node has one, else the clean
//! copy of its version, downloaded on first read from the nearest region that
//! holds it (see [`Download`]). A read whose bytes are there is answered on
//! the FUSE thread that received it.

use super::*;

impl Core {
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let data = self.read_at(fh, offset, size).await?;
        self.served_bytes.inc_by(data.len() as u64);
        Ok(data)
    }

    /// A read answered on the calling FUSE thread: only one the handle's
    /// download already holds (the common case of a sequential read behind
    /// a running or finished download). `None`: take [`Self::read`].
    pub(crate) fn read_now(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Option<Result<Vec<u8>, FsError>> {
        let (ino, dl) = {
            let handles = self.handles.lock().unwrap();
            let h = handles.get(&fh)?;
            (h.ino, h.download.clone()?)
        };
        {
            // As in `read_at`: a working file, or a newer version than the
            // download's, is read elsewhere; past the end is the async path's.
            let t = self.inodes.lock().unwrap();
            let n = t.get(ino)?;
            if n.working().is_some() || n.etag != dl.tag || offset >= n.size {
                return None;
            }
        }
        let r = dl.read_now(offset, size)?;
        if let Ok(d) = &r {
            self.served_bytes.inc_by(d.len() as u64);
        }
        Some(r)
    }

    pub(super) async fn read_at(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, FsError> {
        let ino = self.handle_ino(fh)?;
        let (working, file_size, key, etag, version) = {
            let t = self.inodes.lock().unwrap();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            let (key, version) = self.content_of(n);
            (n.working().cloned(), n.size, key, n.etag.clone(), version)
        };
        if let Some(w) = working {
            let len = (size as u64).min(file_size.saturating_sub(offset)) as usize;
            return Ok(crate::cache::read_at_most(&w.file, offset, len)?);
        }
        if offset >= file_size {
            return Ok(Vec::new());
        }
        let dl = self
            .download_for(fh, &key, &etag, version, file_size)
            .await?;
        dl.read(offset, size).await
    }

    /// The shared download (clean copy) a handle reads from.
    pub(super) async fn download_for(
        &self,
        fh: u64,
        key: &str,
        etag: &str,
        version: Option<String>,
        size: u64,
    ) -> Result<Arc<Download>, FsError> {
        if let Some(d) = self
            .handles
            .lock()
            .unwrap()
            .get(&fh)
            .and_then(|h| h.download.clone())
        {
            if d.tag == etag {
                return Ok(d);
            }
        }
        let shared = |map: &HashMap<String, std::sync::Weak<Download>>| {
            map.get(key)
                .and_then(|w| w.upgrade())
                .filter(|d| d.tag == etag && !d.failed())
        };
        let existing = shared(&self.downloads.lock().unwrap());
        let dl = match existing {
            Some(d) => d,
            None => {
                // Where the bytes come from is decided before taking the map's
                // lock (it may ask a replica which version it holds).
                let from = match (&self.regions, self.cache.has_clean(key, etag)) {
                    (Some(r), false) => r.sources_for(key, version.as_deref()).await,
                    _ => vec![Fetch::direct(self.store.clone(), version.clone())],
                };
                let mut map = self.downloads.lock().unwrap();
                match shared(&map) {
                    Some(d) => d,
                    None => {
                        let d = match self.cache.open_clean(key, etag) {
                            Some((path, len)) => {
                                Download::complete(self.cache.clone(), key, etag, path, len)?
                            }
                            None => Download::start(
                                from,
                                self.cache.clone(),
                                key,
                                etag,
                                size,
                                self.stream_unverified,
                            )?,
                        };
                        if map.len() >= 1024 {
                            // A finished download's entry would keep its
                            // allocation (and key) for good.
                            map.retain(|_, w| w.strong_count() > 0);
                        }
                        map.insert(key.to_string(), Arc::downgrade(&d));
                        d
                    }
                }
            }
        };
        if let Some(h) = self.handles.lock().unwrap().get_mut(&fh) {
            h.download = Some(dl.clone());
        }
        Ok(dl)
    }
}
