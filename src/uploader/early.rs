//! Parts of a large file uploaded while it is still being written: a file
//! written sequentially from empty is in the bucket soon after its close,
//! instead of one whole upload after it.
//!
//! # Invariant
//! Parts are read only from bytes `[0, claimed)` of one cache file, and only
//! once everything below them has been written. Any later change that could
//! touch that range — a write below `claimed`, a truncate, a copy of the
//! working file, a rename, different metadata at close — makes the upload
//! *invalid*: it is aborted and the staged file is uploaded whole, as without
//! this module. So the parts that reach CompleteMultipartUpload hold exactly
//! the bytes staged at close.
//!
//! # Blind uploads (passthrough writers)
//! A file written by passthrough is written by the kernel, not through
//! regionfs: no write is seen, only the file's size as it grows
//! ([`EarlyUpload::grown`], polled while the writer has it open). A blind
//! upload takes `[0, size)` as written (true of a sequential writer), and
//! each part's body records the digest of the bytes it sent (CRC-64/NVME).
//! At [`finish`](EarlyUpload::finish) every part's digest is compared with
//! the staged file's bytes; one that differs (a writer that seeked back, or
//! wrote ahead and filled in later) makes the upload invalid, as above. The
//! comparison reads the file after the uploader took its stamp, and the
//! upload is completed only if that stamp still holds, so the parts are the
//! staged bytes here too.
//!
//! # Crash consistency
//! Nothing here is acknowledged to anyone. The upload id is journaled
//! (`early_uploads`) before the first part, and recovery aborts every id left
//! there. Once its file is staged the id is also recorded in the op row, whose
//! recovery aborts it and uploads the file whole.
//!
//! # Metadata
//! CreateMultipartUpload fixes the object's metadata before the last write, so
//! these objects carry no `mtime`: readers take the file's mtime from the
//! object's LastModified. Mode, owner, xattrs and content type must be the
//! same at close as at the first write, or the file is uploaded whole.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OnceCell};

use super::{backoff, Inner};
use crate::error::StoreError;
use crate::journal::{Journal, Op};
use crate::meta::ObjectMeta;
use crate::store::{digest_of, CompletedPart, ObjectStore, PartDigest, PutBody, PutOptions};

/// Parts are claimed only this many parts behind the written end, so the
/// kernel's out-of-order write-back near the end never lands in a claimed part.
const SLACK_PARTS: u64 = 1;

/// Parts of one file in flight while it is written: the writer keeps the CPU
/// it needs (1 GiB `dd`, paired runs: close 4.7-5.7 s with 4 vs 5.3-6.4 s with
/// 16, durable the same). From the staging of a close or fsync on (the writer
/// is done, the kernel has handed over every page) the parts already written
/// go up at the uploader's full concurrency, during the cache file's sync.
const IN_FLIGHT: usize = 4;

/// The same for a blind upload: a passthrough writer fills the page cache
/// at memory speed on one CPU, and every part sent meanwhile takes CPU from
/// it (the store's and ours). 1 GiB `dd conv=fsync` against the local
/// disk's 0.5-0.6 s, three rounds each: with 4 in flight the close took
/// 0.77-0.99 s (durable 0.90-1.13 × the raw client), with none 0.65-0.72 s
/// (durable 1.09-1.20 ×), with 1 0.63-0.77 s (durable 1.03-1.20 ×, median
/// 1.07) (2026-12-06).
const BLIND_IN_FLIGHT: usize = 1;

/// More separate written ranges than this ahead of the contiguous prefix: the
/// file is not written sequentially; stop.
const MAX_AHEAD: usize = 256;

/// S3 allows 10,000 parts per upload.
const MAX_PARTS: u64 = 10_000;

/// Metadata a multipart upload can carry before the file is complete.
pub(super) fn early_options(mut o: PutOptions) -> PutOptions {
    for k in ["mtime", "mtime-nsec", "atime"] {
        o.metadata.remove(k);
    }
    o
}

/// What an early upload uses of the uploader. Not the uploader itself: its
/// queue holds early uploads, and a reference back would be a cycle that
/// outlives the uploader.
struct Deps {
    store: Arc<dyn ObjectStore>,
    journal: Journal,
    parts: Arc<tokio::sync::Semaphore>,
    concurrency: usize,
}

/// One file's upload in progress; see the module docs.
pub struct EarlyUpload {
    up: Deps,
    key: String,
    file: String,
    path: PathBuf,
    options: PutOptions,
    part: u64,
    /// Sees only the file's size (see "Blind uploads").
    blind: bool,
    id: OnceCell<String>,
    state: Mutex<State>,
    settled: Notify,
    runtime: tokio::runtime::Handle,
}

#[derive(Default)]
struct State {
    /// `[0, claimed)` is uploaded or being uploaded.
    claimed: u64,
    /// `[0, contiguous)` has been written.
    contiguous: u64,
    /// Written ranges beyond `contiguous`: start → end.
    ahead: BTreeMap<u64, u64>,
    in_flight: usize,
    /// A close or fsync is staging the file: no write is under way.
    flushing: bool,
    parts: Vec<CompletedPart>,
    /// Blind: each uploaded part's offset and the digest of what it sent.
    digests: Vec<(u64, Arc<PartDigest>)>,
    invalid: Option<String>,
    /// Handed to the uploader, which completes or aborts it.
    taken: bool,
}

/// What [`EarlyUpload::finish`] leaves for the uploader.
pub(super) struct Finished {
    pub(crate) upload_id: String,
    pub parts: Vec<CompletedPart>,
    /// `[0, uploaded)` is in `parts`, in parts of `part` bytes.
    pub uploaded: u64,
    pub part: u64,
}

impl EarlyUpload {
    pub(super) fn new(
        up: &Inner,
        key: String,
        file: String,
        meta: &ObjectMeta,
        blind: bool,
    ) -> Self {
        let path = up.cache.data_path(&file);
        let part = crate::config::plan_part_size(up.cfg.part_size.0, 0);
        let up = Deps {
            store: up.store.clone(),
            journal: up.journal.clone(),
            parts: up.parts.clone(),
            concurrency: up.cfg.concurrency,
        };
        EarlyUpload {
            options: early_options(meta.to_put_options_for(&key)),
            key,
            file,
            path,
            part,
            blind,
            id: OnceCell::new(),
            state: Mutex::new(State::default()),
            settled: Notify::new(),
            runtime: tokio::runtime::Handle::current(),
            up,
        }
    }

    /// Bytes `[offset, end)` of cache file `file` were just written.
    pub fn written(self: &Arc<Self>, file: &str, offset: u64, end: u64) {
        let mut s = self.state.lock().unwrap();
        if s.invalid.is_some() {
            return;
        }
        if file != self.file {
            s.invalid = Some("the working file was copied".into());
            return;
        }
        if offset < s.claimed {
            s.invalid = Some(format!("a write at {offset}, below the uploaded parts"));
            return;
        }
        if offset <= s.contiguous {
            s.contiguous = s.contiguous.max(end);
        } else {
            let e = s.ahead.entry(offset).or_insert(end);
            *e = (*e).max(end);
            if s.ahead.len() > MAX_AHEAD {
                s.invalid = Some("the file is not written sequentially".into());
                return;
            }
        }
        while let Some((&start, &stop)) = s.ahead.first_key_value() {
            if start > s.contiguous {
                break;
            }
            s.ahead.pop_first();
            s.contiguous = s.contiguous.max(stop);
        }
        s.flushing = false;
        self.claim(&mut s);
    }

    /// Blind: the file is now `size` bytes long, `[0, size)` taken as written.
    pub(crate) fn grown(self: &Arc<Self>, size: u64) {
        let mut s = self.state.lock().unwrap();
        if s.invalid.is_some() || !self.blind {
            return;
        }
        if size < s.claimed {
            s.invalid = Some(format!("cut to {size} bytes, below the uploaded parts"));
            return;
        }
        s.contiguous = size;
        self.claim(&mut s);
    }

    /// Nothing more will be uploaded before the file is staged: handed to
    /// the uploader, or given up.
    /// Whether no part was started: the upload is still just a plan, so
    /// the op it belongs to may take other metadata (`Uploader::amend_meta`).
    pub(super) fn sent_nothing(&self) -> bool {
        let s = self.state.lock().unwrap();
        s.claimed == 0 && s.in_flight == 0
    }

    pub(crate) fn is_done(&self) -> bool {
        let s = self.state.lock().unwrap();
        s.taken || s.invalid.is_some()
    }

    /// Its file was staged: what the upload takes is fixed from here on.
    pub(crate) fn is_flushing(&self) -> bool {
        self.state.lock().unwrap().flushing
    }

    pub(crate) fn is_blind(&self) -> bool {
        self.blind
    }

    /// A close or fsync is about to stage the file: every whole part written
    /// so far goes up now, at full concurrency (a later write below them
    /// still makes the upload invalid, as always).
    pub(crate) fn flushing(self: &Arc<Self>) {
        let mut s = self.state.lock().unwrap();
        s.flushing = true;
        self.claim(&mut s);
    }

    /// Starts uploads of the next written parts, as many as may be in flight.
    fn claim(self: &Arc<Self>, s: &mut State) {
        let (slack, cap) = if s.flushing {
            (0, self.up.concurrency)
        } else {
            (
                SLACK_PARTS,
                if self.blind {
                    BLIND_IN_FLIGHT
                } else {
                    IN_FLIGHT
                },
            )
        };
        while s.invalid.is_none()
            && !s.taken
            && s.contiguous >= s.claimed + (1 + slack) * self.part
            && s.claimed / self.part < MAX_PARTS - 1
            && s.in_flight < cap
        {
            let offset = s.claimed;
            s.claimed += self.part;
            s.in_flight += 1;
            let me = self.clone();
            self.runtime
                .spawn(async move { me.upload_part(offset).await });
        }
    }

    async fn upload_id(&self) -> Result<&String, StoreError> {
        self.id
            .get_or_try_init(|| async {
                let store = &self.up.store;
                let id = store.create_multipart(&self.key, &self.options).await?;
                let noted = self
                    .up
                    .journal
                    .note_early(self.key.clone(), id.clone())
                    .await;
                if let Err(e) = noted {
                    let _ = store.abort_multipart(&self.key, &id).await;
                    return Err(StoreError::LocalIo {
                        bucket: store.describe(),
                        source: std::io::Error::other(e.to_string()),
                    });
                }
                Ok(id)
            })
            .await
    }

    async fn upload_part(self: Arc<Self>, offset: u64) {
        let permit = self.up.parts.clone().acquire_owned().await;
        let result = async {
            if self.state.lock().unwrap().invalid.is_some() {
                return Ok(None);
            }
            let id = self.upload_id().await?;
            let number = (offset / self.part) as i32 + 1;
            let mut attempt = 0;
            loop {
                let digest = Arc::new(PartDigest::default());
                let body = if self.blind {
                    PutBody::HashedFile {
                        path: self.path.clone(),
                        offset,
                        len: self.part,
                        digest: digest.clone(),
                    }
                } else {
                    PutBody::File {
                        path: self.path.clone(),
                        offset,
                        len: self.part,
                    }
                };
                match self.up.store.upload_part(&self.key, id, number, body).await {
                    Ok(p) => return Ok(Some((p, digest))),
                    Err(e) if !e.is_permanent() && attempt < 5 => {
                        attempt += 1;
                        tokio::time::sleep(backoff(attempt, false)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        .await;
        drop(permit);
        let mut s = self.state.lock().unwrap();
        s.in_flight -= 1;
        match result {
            Ok(Some((p, digest))) => {
                s.parts.push(p);
                if self.blind {
                    s.digests.push((offset, digest));
                }
            }
            Ok(None) => {}
            Err(e) => {
                if s.invalid.is_none() {
                    s.invalid = Some(format!("a part failed: {e}"));
                }
            }
        }
        // Parts written while this one was in flight need no new write to go.
        self.claim(&mut s);
        drop(s);
        self.settled.notify_waiters();
    }

    /// At the upload of the staged file: waits for the parts in flight, then
    /// returns them if they still match `op` (its file, key, metadata and
    /// size). Otherwise aborts the upload and returns `None`: the caller
    /// uploads the file whole.
    pub(super) async fn finish(
        &self,
        op: &Op,
        size: u64,
        options: &PutOptions,
    ) -> Option<Finished> {
        self.state.lock().unwrap().taken = true;
        loop {
            let settled = self.settled.notified();
            if self.state.lock().unwrap().in_flight == 0 {
                break;
            }
            settled.await;
        }
        let why = {
            let mut s = self.state.lock().unwrap();
            if s.invalid.is_none() {
                s.invalid = if op.key != self.key {
                    Some("renamed before its close".into())
                } else if op.file.as_deref() != Some(self.file.as_str()) {
                    Some("another file was staged".into())
                } else if size < s.claimed {
                    Some("truncated below the uploaded parts".into())
                } else if size.div_ceil(self.part) > MAX_PARTS {
                    Some("too large for the part size".into())
                } else if early_options(options.clone()) != self.options {
                    Some("its metadata changed before its close".into())
                } else if s.parts.is_empty() {
                    Some("no part uploaded".into())
                } else {
                    None
                };
            }
            s.invalid.clone()
        };
        let why = match why {
            None if self.blind => self.verify().await,
            other => other,
        };
        let id = self.id.get().cloned();
        match (why, id) {
            (None, Some(upload_id)) => {
                let mut s = self.state.lock().unwrap();
                let mut parts = std::mem::take(&mut s.parts);
                parts.sort_by_key(|p| p.number);
                Some(Finished {
                    upload_id,
                    parts,
                    uploaded: s.claimed,
                    part: self.part,
                })
            }
            (why, id) => {
                if let Some(id) = id {
                    tracing::debug!(key = %self.key, reason = ?why, "early upload not used; uploading the file whole");
                    self.abort(id).await;
                }
                None
            }
        }
    }

    /// Blind: why the staged file's bytes differ from what some part sent,
    /// if they do (see "Blind uploads").
    async fn verify(&self) -> Option<String> {
        let digests = std::mem::take(&mut self.state.lock().unwrap().digests);
        let (path, part) = (self.path.clone(), self.part);
        let checked = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path)?;
            for (offset, sent) in digests {
                if sent.get() != Some(digest_of(&file, offset, part)?) {
                    return Ok(Some(offset));
                }
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;
        let why = match checked {
            Ok(Ok(None)) => return None,
            Ok(Ok(Some(offset))) => {
                format!("the bytes of the part at {offset} changed after it went")
            }
            Ok(Err(e)) => format!("cannot read the staged file: {e}"),
            Err(e) => format!("cannot compare the parts: {e}"),
        };
        self.state.lock().unwrap().invalid = Some(why.clone());
        Some(why)
    }

    async fn abort(&self, id: String) {
        abort_upload(&self.up.store, &self.up.journal, &self.key, id).await;
    }
}

/// Aborts an early upload. Its journal row goes only once the bucket has
/// dropped the upload, so an abort that fails (source unreachable) is retried
/// at the next start instead of leaving parts in the bucket for good.
pub(super) async fn abort_upload(
    store: &Arc<dyn ObjectStore>,
    journal: &Journal,
    key: &str,
    id: String,
) {
    match store.abort_multipart(key, &id).await {
        Ok(()) => {
            let _ = journal.forget_early(id).await;
        }
        Err(e) => {
            tracing::warn!(key, error = %e, "cannot abort an early upload; retried at the next start");
            let _ = journal.note_early(key.to_string(), id).await;
        }
    }
}

impl Drop for EarlyUpload {
    /// Abandoned (the file was never staged, or was staged by another path):
    /// the parts are aborted in the background; recovery catches any left.
    fn drop(&mut self) {
        let taken = self.state.lock().map(|s| s.taken).unwrap_or(true);
        let Some(id) = self.id.take() else { return };
        if taken {
            return;
        }
        let (store, journal, key) = (
            self.up.store.clone(),
            self.up.journal.clone(),
            self.key.clone(),
        );
        self.runtime
            .spawn(async move { abort_upload(&store, &journal, &key, id).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_time_fields_differ_between_early_and_final_options() {
        let mut m = ObjectMeta::new(0o100644, 1, 2);
        let a = early_options(m.to_put_options());
        m.set_mtime(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7));
        assert_eq!(early_options(m.to_put_options()), a);
        m.mode = 0o100600;
        assert_ne!(early_options(m.to_put_options()), a);
    }
}
