//! Clean copies downloaded on first read: one download per object version,
//! shared by every reader. A read of a copy still downloading waits until the
//! whole copy has arrived and matched its checksum; with
//! `read.stream_unverified` it waits only until its own range has arrived, so
//! sequential reads stream while the download runs. A read whose bytes may be
//! served is answered on the FUSE thread that received it
//! ([`Download::read_now`]); only one that must wait goes to the runtime.
//!
//! Objects of [`PARALLEL_FROM`] bytes or more are fetched as ranged GETs of
//! [`CHUNK`] bytes, [`PARALLEL`] at a time, each streamed straight to its place
//! in the clean copy: a high-latency link is kept full, and memory stays
//! bounded (no chunk is buffered whole).
//!
//! Integrity: a single GET is checked by the SDK against the CRC-64/NVME the
//! store keeps. Ranged GETs carry no checksum of the whole, so each chunk's
//! CRC is taken as it is written, and once all have arrived they are combined
//! and compared with the CRC the region keeps for the version (one HEAD).
//! Bytes that do not match are a [`StoreError::BadDigest`] from that region:
//! it is ranked last (as after any failed read) and the copy is fetched again
//! from the next region that holds the version; when none is left the copy
//! is never kept (later reads fetch again) and waiting reads get EIO. No
//! reader sees a byte before the check, except with `read.stream_unverified`,
//! whose readers take bytes as they come and cannot have them taken back.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::cache::Cache;
use crate::error::StoreError;
use crate::fs::FsError;
use crate::regions::Fetch;
use crate::store::checksum::{self, Crc64};
use crate::store::GetRequest;

/// Objects this large or larger are fetched in parallel ranges.
pub(crate) const PARALLEL_FROM: u64 = 16 << 20;
/// The size of one ranged GET.
pub(crate) const CHUNK: u64 = 8 << 20;
/// Ranged GETs in flight per download.
pub(crate) const PARALLEL: usize = 4;

pub(crate) struct Download {
    pub key: String,
    /// The ETag of the version being copied.
    pub tag: String,
    /// The clean copy, pinned until this is dropped.
    path: PathBuf,
    file: File,
    size: AtomicU64,
    /// Bytes written so far at the start of each chunk (one chunk for the
    /// whole object when it is fetched by a single GET).
    progress: Vec<AtomicU64>,
    /// Each ranged chunk's CRC-64/NVME and length, as written.
    crcs: Mutex<Vec<Option<(Crc64, u64)>>>,
    chunk: u64,
    /// Readers may take a range as soon as it has arrived, before the check.
    stream: bool,
    done: AtomicBool,
    error: Mutex<Option<String>>,
    arrived: Notify,
    cache: Arc<Cache>,
}

impl Download {
    /// The download of the clean copy at `path` in chunks of `chunk` bytes,
    /// with every byte there already (`whole`) or none yet.
    fn new(
        cache: Arc<Cache>,
        key: &str,
        tag: &str,
        path: PathBuf,
        size: u64,
        chunk: u64,
        whole: bool,
    ) -> Result<Download, FsError> {
        let arrived = if whole { chunk } else { 0 };
        Ok(Download {
            key: key.to_string(),
            tag: tag.to_string(),
            file: File::open(&path)?,
            path,
            size: AtomicU64::new(size),
            progress: (0..size.div_ceil(chunk).max(1))
                .map(|_| AtomicU64::new(arrived))
                .collect(),
            crcs: Mutex::new(vec![None; size.div_ceil(chunk).max(1) as usize]),
            chunk,
            stream: true,
            done: AtomicBool::new(whole),
            error: Mutex::new(None),
            arrived: Notify::new(),
            cache,
        })
    }

    /// A clean copy already complete in the cache (pinned by `open_clean`).
    pub fn complete(
        cache: Arc<Cache>,
        key: &str,
        tag: &str,
        path: PathBuf,
        len: u64,
    ) -> Result<Arc<Download>, FsError> {
        Ok(Arc::new(Download::new(
            cache,
            key,
            tag,
            path,
            len,
            len.max(1),
            true,
        )?))
    }

    /// Starts streaming `key` into a new clean copy from the first of `from`
    /// (best region first) that answers; `stream`: readers take ranges as
    /// they arrive instead of after the check.
    pub fn start(
        from: Vec<Fetch>,
        cache: Arc<Cache>,
        key: &str,
        tag: &str,
        size: u64,
        stream: bool,
    ) -> Result<Arc<Download>, FsError> {
        let (path, writer) = cache.begin_clean(key, tag, size)?;
        let chunk = if size >= PARALLEL_FROM {
            CHUNK
        } else {
            size.max(1)
        };
        let mut d = Download::new(cache, key, tag, path, size, chunk, false)?;
        d.stream = stream;
        let d = Arc::new(d);
        let dl = d.clone();
        tokio::spawn(async move {
            let writer = Arc::new(writer);
            let result = dl.clone().fetch_all(&from, writer).await;
            match result {
                Ok(()) => dl.cache.clean_complete(&dl.key, &dl.path),
                Err(e) => {
                    tracing::warn!(key = %dl.key, error = %e, "download failed");
                    *dl.error.lock().unwrap() = Some(e.to_string());
                    dl.cache.forget_clean_copy(&dl.key, &dl.path);
                }
            }
            dl.done.store(true, Ordering::SeqCst);
            dl.arrived.notify_waiters();
        });
        Ok(d)
    }

    /// The first chunk from the first region that answers (trying each in
    /// turn), then the other chunks from that region, [`PARALLEL`] at a time.
    /// A region that hangs is given up as [`Fetch::patiently`] says; when the
    /// source is given up, the replicas holding the version are tried next.
    /// Bytes that fail their checksum start the copy again from the next
    /// region; any other failure after bytes arrived ends the download (the
    /// next open starts afresh).
    async fn fetch_all(self: Arc<Self>, from: &[Fetch], out: Arc<File>) -> Result<(), FsError> {
        let mut from = from.to_vec();
        let mut next = 0;
        loop {
            let f = self.first_chunk(&mut from, &mut next, &out).await?;
            let rest = self.clone().other_chunks(&f, &out).await;
            match rest {
                Err(e) if is_bad_digest(&e) => {
                    self.give_up_on(&f, &mut from, next, &e).await;
                    if next == from.len() {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    /// Chunk 0 from `from[*next..]`, the first region that serves it; that
    /// region.
    async fn first_chunk(
        &self,
        from: &mut Vec<Fetch>,
        next: &mut usize,
        out: &File,
    ) -> Result<Fetch, FsError> {
        let mut last = None;
        while *next < from.len() {
            let f = from[*next].clone();
            *next += 1;
            match f
                .patiently(
                    &format!("a read of `{}`", self.key),
                    || self.progress[0].load(Ordering::SeqCst),
                    self.fetch_chunk(&f, 0, out),
                )
                .await
            {
                Ok(()) => return Ok(f),
                Err(e) if self.progress[0].load(Ordering::SeqCst) == 0 || is_bad_digest(&e) => {
                    let transient = matches!(&e, FsError::Store(s) if !s.is_permanent());
                    if transient {
                        self.give_up_on(&f, from, *next, &e).await;
                    }
                    tracing::debug!(key = %self.key, region = %f.region, error = %e, "read from this region failed; trying the next");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(FsError::NotFound))
    }

    /// After a transient failure or bytes that failed their checksum from
    /// `f`: ranks its region last, forgets what arrived, and when `f` was the
    /// last to try (`next` is past it), adds the replicas holding the
    /// version that were not tried yet.
    async fn give_up_on(&self, f: &Fetch, from: &mut Vec<Fetch>, next: usize, e: &FsError) {
        f.failed(&e.to_string());
        if is_bad_digest(e) {
            tracing::warn!(key = %self.key, region = %f.region, error = %e, "bytes read do not match the version's checksum; reading them from another region");
        }
        for p in &self.progress {
            p.store(0, Ordering::SeqCst);
        }
        self.crcs.lock().unwrap().fill(None);
        if next == from.len() {
            let tried: Vec<String> = from.iter().map(|f| f.region.clone()).collect();
            let more = f.after_source_failed(&self.key).await;
            from.extend(more.into_iter().filter(|m| !tried.contains(&m.region)));
        }
    }

    /// Chunks 1.. from `f`, then the check of the whole.
    async fn other_chunks(self: Arc<Self>, f: &Fetch, out: &Arc<File>) -> Result<(), FsError> {
        let mut set = tokio::task::JoinSet::new();
        let mut next = 1;
        while next < self.progress.len() || !set.is_empty() {
            while next < self.progress.len() && set.len() < PARALLEL {
                let (me, f, out, i) = (self.clone(), f.clone(), out.clone(), next);
                set.spawn(async move { me.fetch_chunk_retrying(&f, i, &out).await });
                next += 1;
            }
            if let Some(done) = set.join_next().await {
                done.map_err(|e| FsError::Upload(format!("download task: {e}")))??;
            }
        }
        if self.progress.len() > 1 {
            self.check_ranges(f).await?;
        }
        Ok(())
    }

    /// The chunks' CRCs combined against the CRC the region keeps for the
    /// version (nothing to compare where it keeps none).
    async fn check_ranges(&self, f: &Fetch) -> Result<(), FsError> {
        let info = f.store.head(&self.key, f.version.as_deref()).await?;
        let Some(kept) = info.crc64nvme.as_deref().and_then(Crc64::from_base64) else {
            return Ok(());
        };
        let got = checksum::of_parts(self.crcs.lock().unwrap().iter().copied());
        match got {
            Some(got) if got == kept => Ok(()),
            got => Err(FsError::Store(StoreError::BadDigest {
                bucket: f.store.describe(),
                key: self.key.clone(),
                message: format!(
                    "the ranges read have CRC-64/NVME {}, the version's is {}",
                    got.map(Crc64::to_hex).unwrap_or_else(|| "unknown".into()),
                    kept.to_hex()
                ),
            })),
        }
    }

    /// A chunk after the first: transient failures before any of its bytes
    /// arrived are retried a few times.
    async fn fetch_chunk_retrying(&self, f: &Fetch, i: usize, out: &File) -> Result<(), FsError> {
        let mut attempt = 0;
        loop {
            match f
                .patiently(
                    &format!("a read of `{}`", self.key),
                    || self.progress[i].load(Ordering::SeqCst),
                    self.fetch_chunk(f, i, out),
                )
                .await
            {
                Err(FsError::Store(e))
                    if !e.is_permanent()
                        && attempt < 3
                        && self.progress[i].load(Ordering::SeqCst) == 0 =>
                {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// Streams chunk `i` (the whole object for a single-chunk download).
    async fn fetch_chunk(&self, from: &Fetch, i: usize, out: &File) -> Result<(), FsError> {
        let store = from.store.as_ref();
        let whole = self.progress.len() == 1;
        let start = i as u64 * self.chunk;
        let size = self.size.load(Ordering::SeqCst);
        let range = (!whole).then(|| (start, (start + self.chunk).min(size) - 1));
        let obj = store
            .get(
                &self.key,
                GetRequest {
                    version_id: from.version.clone(),
                    range,
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
        if whole {
            self.size.store(obj.info.size, Ordering::SeqCst);
        }
        let mut body = obj.body;
        let mut offset = start;
        let mut crc = range.map(|_| checksum::hasher());
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| crate::store::body_error(&store.describe(), &self.key, &e))?;
            out.write_all_at(&chunk, offset)?;
            offset += chunk.len() as u64;
            from.count(chunk.len() as u64);
            if let Some(h) = crc.as_mut() {
                h.update(&chunk);
            }
            self.progress[i].store(offset - start, Ordering::SeqCst);
            self.arrived.notify_waiters();
        }
        if let Some(h) = crc {
            self.crcs.lock().unwrap()[i] =
                Crc64::from_be_bytes(&h.finalize()).map(|c| (c, offset - start));
        }
        Ok(())
    }

    /// Whether `offset..end` has arrived.
    fn covered(&self, offset: u64, end: u64) -> bool {
        if end <= offset {
            return true;
        }
        let first = (offset / self.chunk) as usize;
        let last = ((end - 1) / self.chunk) as usize;
        (first..=last).all(|i| {
            let Some(p) = self.progress.get(i) else {
                return true;
            };
            let chunk_start = i as u64 * self.chunk;
            let need = end.min(chunk_start + self.chunk) - chunk_start;
            p.load(Ordering::SeqCst) >= need
        })
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
            if done || (self.stream && self.covered(offset, want)) {
                return self.read_arrived(offset, want);
            }
            notified.await;
        }
    }

    /// Reads `offset..offset+size` if it has already arrived; `None` when
    /// the read would wait or the download failed (the async [`Self::read`]
    /// says why), so a FUSE thread can answer it without a hop to the
    /// runtime.
    pub(crate) fn read_now(&self, offset: u64, size: u32) -> Option<Result<Vec<u8>, FsError>> {
        let want = (offset + size as u64).min(self.size.load(Ordering::SeqCst));
        let done = self.done.load(Ordering::SeqCst);
        if self.failed() || !(done || (self.stream && self.covered(offset, want))) {
            return None;
        }
        Some(self.read_arrived(offset, want))
    }

    fn read_arrived(&self, offset: u64, want: u64) -> Result<Vec<u8>, FsError> {
        let len = want.saturating_sub(offset) as usize;
        Ok(crate::cache::read_at_most(&self.file, offset, len)?)
    }
}

fn is_bad_digest(e: &FsError) -> bool {
    matches!(e, FsError::Store(StoreError::BadDigest { .. }))
}

impl Drop for Download {
    fn drop(&mut self) {
        self.cache.close_clean(&self.key, &self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MIB;
    use crate::store::{MemoryStore, ObjectStore, PutBody, PutOptions};
    use std::time::Duration;

    /// A download of `body` whose progress the test sets by hand: chunks of
    /// `chunk` bytes, none arrived yet.
    fn in_progress(body: &[u8], chunk: u64) -> (tempfile::TempDir, Download) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 64 * MIB, Duration::from_secs(1)).unwrap();
        let (path, writer) = cache.begin_clean("k", "t", body.len() as u64).unwrap();
        writer.write_all_at(body, 0).unwrap();
        let d = Download::new(cache, "k", "t", path, body.len() as u64, chunk, false).unwrap();
        (dir, d)
    }

    #[test]
    fn read_now_answers_only_ranges_that_have_arrived() {
        let body: Vec<u8> = (0..40u32).map(|i| i as u8).collect();
        let (_dir, d) = in_progress(&body, 16);
        assert!(d.read_now(0, 8).is_none(), "nothing arrived");
        d.progress[0].store(10, Ordering::SeqCst);
        assert_eq!(d.read_now(0, 8).unwrap().unwrap(), &body[..8]);
        assert!(d.read_now(4, 8).is_none(), "bytes 10..12 are missing");
        d.progress[0].store(16, Ordering::SeqCst);
        assert!(d.read_now(12, 8).is_none(), "spans into chunk 1");
        d.progress[1].store(16, Ordering::SeqCst);
        assert_eq!(d.read_now(12, 8).unwrap().unwrap(), &body[12..20]);
        assert!(d.read_now(30, 20).is_none(), "the last chunk is missing");
        d.progress[2].store(8, Ordering::SeqCst);
        assert_eq!(
            d.read_now(30, 20).unwrap().unwrap(),
            &body[30..],
            "a read past the end gets the bytes up to it"
        );
        assert_eq!(d.read_now(40, 8).unwrap().unwrap(), b"");
    }

    #[test]
    fn without_streaming_no_range_is_read_before_the_whole_copy_is_checked() {
        let body: Vec<u8> = (0..40u32).map(|i| i as u8).collect();
        let (_dir, mut d) = in_progress(&body, 16);
        d.stream = false;
        for p in &d.progress {
            p.store(16, Ordering::SeqCst);
        }
        assert!(d.read_now(0, 8).is_none(), "arrived, not yet checked");
        d.done.store(true, Ordering::SeqCst);
        assert_eq!(d.read_now(0, 8).unwrap().unwrap(), &body[..8]);
    }

    #[test]
    fn read_now_leaves_a_failed_download_to_the_async_read_which_reports_it() {
        let body = vec![7u8; 32];
        let (_dir, d) = in_progress(&body, 32);
        d.progress[0].store(32, Ordering::SeqCst);
        *d.error.lock().unwrap() = Some("connection reset".into());
        d.done.store(true, Ordering::SeqCst);
        assert!(d.read_now(0, 8).is_none());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt.block_on(d.read(0, 8)).unwrap_err();
        assert!(e.to_string().contains("connection reset"), "{e}");
    }

    #[tokio::test]
    async fn a_parallel_download_reads_back_exact_bytes_at_every_offset() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 256 * MIB, Duration::from_secs(1)).unwrap();
        let store = Arc::new(MemoryStore::new("src"));
        let size = PARALLEL_FROM as usize + (CHUNK as usize) / 2 + 3;
        let body: Vec<u8> = (0..size as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let put = store
            .put(
                "big",
                PutBody::Bytes(body.clone().into()),
                &PutOptions::default(),
            )
            .await
            .unwrap();
        let from = vec![Fetch::direct(store.clone(), put.version_id.clone())];
        let d = Download::start(from, cache, "big", &put.etag, size as u64, true).unwrap();
        // Reads in the order a kernel's readahead sends them, each taking
        // the synchronous path once its range is there.
        let step = 256 << 10;
        let mut got = Vec::with_capacity(size);
        let mut offset = 0;
        while offset < size as u64 {
            let part = match d.read_now(offset, step) {
                Some(r) => r.unwrap(),
                None => d.read(offset, step).await.unwrap(),
            };
            assert!(!part.is_empty(), "no bytes at {offset}");
            offset += part.len() as u64;
            got.extend_from_slice(&part);
        }
        assert!(got == body, "bytes differ");
        assert_eq!(
            d.read_now(size as u64 - 5, 4).unwrap().unwrap(),
            &body[size - 5..size - 1]
        );
    }
}
