//! Uploads in parts: the whole staged file in parts of `upload.part_size`,
//! [`upload_parts`] at a time under the uploader's part semaphore, or the
//! rest of a file whose first parts went up before its close (`early`),
//! then CompleteMultipartUpload after the last look (`guard`). A failure
//! aborts the upload; the retry starts again from the staged file.

use super::worker::{options, unchanged};
use super::*;

pub(super) async fn multipart(
    inner: &Arc<Inner>,
    op: &Op,
    path: std::path::PathBuf,
    before: Stamp,
    acl: &Option<String>,
) -> Result<PutResult, StoreError> {
    let size = before.size;
    let store = inner.store.clone();
    let upload_id = store.create_multipart(&op.key, &options(op, acl)).await?;
    if let Err(e) = inner
        .journal
        .set_multipart(op.seq, Some(upload_id.clone()))
        .await
    {
        let _ = store.abort_multipart(&op.key, &upload_id).await;
        return Err(StoreError::LocalIo {
            bucket: store.describe(),
            source: std::io::Error::other(e.to_string()),
        });
    }
    let part = inner.cfg.part_size_for(size);
    let uploaded = upload_parts(inner, op, &path, &upload_id, 0, size, part)
        .await
        .and_then(|p| unchanged(store.as_ref(), &path, before).map(|_| p));
    // The last look before the version exists (see `guard`).
    let looked = match uploaded {
        Ok(p) => guard::look(inner, op).await.map(|_| p),
        Err(e) => Err(e),
    };
    let parts = match looked {
        Ok(p) => p,
        Err(e) => {
            let _ = store.abort_multipart(&op.key, &upload_id).await;
            let _ = inner.journal.set_multipart(op.seq, None).await;
            return Err(e);
        }
    };
    store.complete_multipart(&op.key, &upload_id, parts).await
}

/// Finishes an upload whose first parts went up before the close: the rest of
/// the staged file, then CompleteMultipartUpload. On failure the upload is
/// aborted and the retry uploads the file whole.
pub(super) async fn complete_early(
    inner: &Arc<Inner>,
    op: &Op,
    path: std::path::PathBuf,
    before: Stamp,
    f: early::Finished,
) -> Result<PutResult, StoreError> {
    let store = inner.store.clone();
    let size = before.size;
    let id = f.upload_id;
    let result = async {
        inner
            .journal
            .set_multipart(op.seq, Some(id.clone()))
            .await
            .map_err(|e| StoreError::LocalIo {
                bucket: store.describe(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let _ = inner.journal.forget_early(id.clone()).await;
        tracing::debug!(
            key = %op.key,
            early_bytes = f.uploaded,
            rest_bytes = size - f.uploaded,
            "completing an upload whose first parts went up before the close"
        );
        let mut parts = f.parts;
        parts.extend(upload_parts(inner, op, &path, &id, f.uploaded, size, f.part).await?);
        unchanged(store.as_ref(), &path, before)?;
        guard::look(inner, op).await?;
        store.complete_multipart(&op.key, &id, parts).await
    }
    .await;
    if result.is_err() {
        // The retry uploads the file whole; the parts go, now or at restart
        // (the op row names the upload until then).
        early::abort_upload(&store, &inner.journal, &op.key, id).await;
        let _ = inner.journal.set_multipart(op.seq, None).await;
    }
    result
}

/// Uploads `[from, size)` of `path` as parts of `part` bytes (numbered from
/// the start of the file), several at once.
pub(super) async fn upload_parts(
    inner: &Arc<Inner>,
    op: &Op,
    path: &std::path::Path,
    upload_id: &str,
    from: u64,
    size: u64,
    part: u64,
) -> Result<Vec<CompletedPart>, StoreError> {
    let store = inner.store.clone();
    let mut set = JoinSet::new();
    for offset in (from..size).step_by(part as usize) {
        let permit = inner
            .parts
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let store = store.clone();
        let key = op.key.clone();
        let id = upload_id.to_string();
        let path = path.to_path_buf();
        let len = part.min(size - offset);
        let number = (offset / part) as i32 + 1;
        set.spawn(async move {
            let mut attempt = 0;
            let result = loop {
                let body = PutBody::File {
                    path: path.clone(),
                    offset,
                    len,
                };
                match store.upload_part(&key, &id, number, body).await {
                    Ok(p) => break Ok::<CompletedPart, StoreError>(p),
                    Err(e) if !e.is_permanent() && attempt < 5 => {
                        attempt += 1;
                        tokio::time::sleep(backoff(attempt, false)).await;
                    }
                    Err(e) => break Err(e),
                }
            };
            drop(permit);
            result
        });
    }
    let mut parts = Vec::new();
    let mut failure = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(p)) => parts.push(p),
            Ok(Err(e)) => {
                failure.get_or_insert(e);
                set.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                failure.get_or_insert(StoreError::LocalIo {
                    bucket: store.describe(),
                    source: std::io::Error::other(e.to_string()),
                });
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    parts.sort_by_key(|p| p.number);
    Ok(parts)
}
