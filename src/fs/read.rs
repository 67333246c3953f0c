//! Clean copies downloaded on first read: one download per object version,
//! shared by every reader; a read waits only until its range has arrived, so
//! sequential reads stream while the download runs.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::cache::Cache;
use crate::error::{FsError, StoreError};
use crate::regions::Fetch;
use crate::store::GetRequest;

pub struct Download {
    pub key: String,
    /// The ETag of the version being copied.
    pub tag: String,
    file: File,
    size: AtomicU64,
    avail: AtomicU64,
    done: AtomicBool,
    error: Mutex<Option<String>>,
    arrived: Notify,
    cache: Arc<Cache>,
}

impl Download {
    /// A clean copy already complete in the cache (pinned by `open_clean`).
    pub fn complete(
        cache: Arc<Cache>,
        key: &str,
        tag: &str,
        path: PathBuf,
        len: u64,
    ) -> Result<Arc<Download>, FsError> {
        let file = File::open(&path)?;
        Ok(Arc::new(Download {
            key: key.to_string(),
            tag: tag.to_string(),
            file,
            size: AtomicU64::new(len),
            avail: AtomicU64::new(len),
            done: AtomicBool::new(true),
            error: Mutex::new(None),
            arrived: Notify::new(),
            cache,
        }))
    }

    /// Starts streaming `key` into a new clean copy from the first of `from`
    /// (best region first) that answers.
    pub fn start(
        from: Vec<Fetch>,
        cache: Arc<Cache>,
        key: &str,
        tag: &str,
        size: u64,
    ) -> Result<Arc<Download>, FsError> {
        let (path, writer) = cache.begin_clean(key, tag, size)?;
        let file = File::open(&path)?;
        let d = Arc::new(Download {
            key: key.to_string(),
            tag: tag.to_string(),
            file,
            size: AtomicU64::new(size),
            avail: AtomicU64::new(0),
            done: AtomicBool::new(false),
            error: Mutex::new(None),
            arrived: Notify::new(),
            cache,
        });
        let dl = d.clone();
        tokio::spawn(async move {
            let result = dl.fetch_first(&from, &writer).await;
            if let Err(e) = result {
                tracing::warn!(key = %dl.key, error = %e, "download failed");
                *dl.error.lock().unwrap() = Some(e.to_string());
                dl.cache.forget_clean(&dl.key);
            }
            dl.done.store(true, Ordering::SeqCst);
            dl.arrived.notify_waiters();
        });
        Ok(d)
    }

    /// Tries each region in turn until one starts sending the object; a failure
    /// after bytes arrived ends the download (the next open starts afresh).
    async fn fetch_first(&self, from: &[Fetch], out: &File) -> Result<(), FsError> {
        let mut last = None;
        for f in from {
            match self.fetch(f, out).await {
                Ok(()) => return Ok(()),
                Err(e) if self.avail.load(Ordering::SeqCst) == 0 => {
                    if matches!(&e, FsError::Store(s) if !s.is_permanent()) {
                        f.failed(&e.to_string());
                    }
                    tracing::debug!(key = %self.key, region = %f.region, error = %e, "read from this region failed; trying the next");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(FsError::NotFound))
    }

    async fn fetch(&self, from: &Fetch, out: &File) -> Result<(), FsError> {
        let store = from.store.as_ref();
        let obj = store
            .get(
                &self.key,
                GetRequest {
                    version_id: from.version.clone(),
                    range: None,
                },
            )
            .await?;
        // A replica's ETag may differ for the same bytes (other part sizes);
        // it was chosen because it names this exact source version.
        if from.is_source
            && !self.tag.is_empty()
            && !obj.info.etag.is_empty()
            && obj.info.etag != self.tag
        {
            return Err(FsError::Store(StoreError::PreconditionFailed {
                bucket: store.describe(),
                key: self.key.clone(),
            }));
        }
        self.size.store(obj.info.size, Ordering::SeqCst);
        let mut body = obj.body;
        let mut offset = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::Unreachable {
                bucket: store.describe(),
                message: format!("reading `{}`: {e}", self.key),
            })?;
            out.write_all_at(&chunk, offset)?;
            offset += chunk.len() as u64;
            from.count(chunk.len() as u64);
            self.avail.store(offset, Ordering::SeqCst);
            self.arrived.notify_waiters();
        }
        Ok(())
    }

    pub fn failed(&self) -> bool {
        self.error.lock().unwrap().is_some()
    }

    /// Reads once `offset..offset+size` has arrived (or the download ended).
    pub async fn read(&self, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        loop {
            let notified = self.arrived.notified();
            let total = self.size.load(Ordering::SeqCst);
            let want = (offset + size as u64).min(total);
            let done = self.done.load(Ordering::SeqCst);
            if let Some(e) = self.error.lock().unwrap().clone() {
                return Err(FsError::Upload(format!(
                    "download of `{}` failed: {e}",
                    self.key
                )));
            }
            if done || self.avail.load(Ordering::SeqCst) >= want {
                let len = want.saturating_sub(offset) as usize;
                let mut buf = vec![0; len];
                let n = self.file.read_at(&mut buf, offset)?;
                buf.truncate(n);
                return Ok(buf);
            }
            notified.await;
        }
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        self.cache.close_clean(&self.key);
    }
}
