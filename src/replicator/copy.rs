//! Writing one replica: whether the destination needs it, then the write.
//!
//! # A destination never ends older than its source
//! Many writers may replicate versions of one key to one destination, in any
//! order: this process's uploads, `resync`, discovery of versions written by
//! other clients, other hosts on the same bucket. So before a replica (or a
//! delete marker) replaces the destination's current object, the source
//! version that object carries (`regionfs-source-version`) is compared with
//! the task's in the source's own version order ([`newer_in_source`]): when it
//! is newer, the task completes without writing (it is superseded; the
//! destination's history lacks that version, its current object is right).
//!
//! The write itself is conditional, `If-Match` the ETag seen (`If-None-Match:
//! *` where there was none), so a replica that lands between the look and the
//! write makes it fail with PreconditionFailed, and the task looks again.
//!
//! Two shortcuts keep the common case as cheap as before:
//! - a version this journal uploaded is newer than the one its own previous
//!   replica of the key carries, without asking the source: this journal's
//!   uploads of one key run one after another, in task order;
//! - a key this journal never replicated to the destination is written at
//!   once with `If-None-Match: *`, without a HEAD; if something is there the
//!   write is refused and the task looks.
//!
//! Limits, where a store gives no conditional write: replicas copied in
//! parts, directory markers and delete markers are written after the look
//! without a condition (S3 has no conditional CompleteMultipartUpload on
//! every store, and no conditional delete on general-purpose buckets), so a
//! replica landing in that window can still be replaced by an older one;
//! `verify` reports it and `resync` repairs it. A store that answers
//! NotImplemented to conditions is written the same way, with one warning.

use std::sync::Arc;

use crate::error::StoreError;
use crate::journal::{PreviousReplica, Replica, Task, TaskKind};
use crate::store::checksum::{self, Crc64};
use crate::store::{
    AclBody, CompletedPart, Condition, ConditionSupport, GetRequest, ObjectInfo, ObjectStore,
    PutBody, PutOptions, PutResult, CHECKSUM_META, SOURCE_VERSION_META,
};

use super::{check_destination, give_way, Destination, FreshReady, Inner, Yield, PARTS_IN_FLIGHT};

/// Looks and writes that find the destination changed under them before a
/// task gives up for this attempt (and retries with backoff).
const CONFLICT_ROUNDS: usize = 4;

/// How a task first approaches the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Look {
    /// Write at once, guarded by the condition.
    Blind(Condition),
    /// HEAD the destination's current object first.
    Head,
}

/// What the destination's current object calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// It is a replica of this very version already (with its version id).
    There(Option<String>),
    /// A delete with nothing to delete.
    Absent,
    /// It carries another source version: newer or older, the source decides.
    AskOrder(String),
    /// Replace it; the condition (if any) makes sure it is still what was seen.
    Write(Option<Condition>),
}

/// Whether a task may write without looking first (pure).
pub(super) fn first_look(task: &Task, prev: Option<&PreviousReplica>, in_parts: bool) -> Look {
    let plain = task.kind == TaskKind::Version && !task.key.ends_with('/') && !in_parts;
    if plain && task.seq > 0 && prev.is_none() {
        Look::Blind(Condition::IfNoneMatch)
    } else {
        Look::Head
    }
}

/// What to do about the destination's current object `current` (pure).
pub(super) fn verdict(
    task: &Task,
    current: Option<&ObjectInfo>,
    prev: Option<&PreviousReplica>,
    in_parts: bool,
) -> Verdict {
    let carried = current.and_then(|c| c.metadata.get(SOURCE_VERSION_META));
    if task.kind == TaskKind::Version && carried == Some(&task.version_id) {
        return Verdict::There(current.and_then(|c| c.version_id.clone()));
    }
    if task.kind == TaskKind::Delete && current.is_none() {
        return Verdict::Absent;
    }
    // A marker has no bytes to be stale, and SeaweedFS keeps no metadata on
    // `dir/` keys: it cannot say whose it is.
    if task.key.ends_with('/') {
        return Verdict::Write(None);
    }
    if let Some(other) = carried {
        let known_older = task.seq > 0 && prev.is_some_and(|p| p.own && &p.version_id == other);
        if !known_older {
            return Verdict::AskOrder(other.clone());
        }
    }
    Verdict::Write(condition_for(task, current, in_parts))
}

/// The condition that a write replaces exactly `current` (pure).
fn condition_for(task: &Task, current: Option<&ObjectInfo>, in_parts: bool) -> Option<Condition> {
    if task.kind == TaskKind::Delete || in_parts || task.key.ends_with('/') {
        return None;
    }
    Some(match current {
        Some(c) => Condition::IfMatch(c.etag.clone()),
        None => Condition::IfNoneMatch,
    })
}

/// Whether version `a` of `key` is newer than version `b` in the source's
/// version list. A version the source no longer lists is not newer.
pub(super) async fn newer_in_source(
    source: &dyn ObjectStore,
    key: &str,
    a: &str,
    b: &str,
) -> Result<bool, StoreError> {
    let mut from = None;
    loop {
        let page = source.list_versions(key, from, Some(100)).await?;
        let past = page.versions.last().is_some_and(|v| v.key.as_str() > key);
        for v in page.versions.iter().filter(|v| v.key == key) {
            if v.version_id == a {
                return Ok(true);
            }
            if v.version_id == b {
                return Ok(false);
            }
        }
        match page.next {
            Some(n) if !past => from = Some(n),
            _ => return Ok(false),
        }
    }
}

/// Makes the replica of one version (or replicates one delete marker), unless
/// the destination holds it or something newer; says what it left there.
pub(super) async fn replicate(
    inner: &Arc<Inner>,
    d: &Destination,
    task: &Task,
    fresh: Option<FreshReady>,
) -> Result<Replica, StoreError> {
    check_destination(d).await?;
    let dest = d.store.as_ref();
    let in_parts = fresh.is_none() && task.size >= inner.upload.multipart_threshold.0;
    let prev = if task.seq > 0 {
        match inner
            .journal
            .previous_replica(task.key.clone(), task.destination.clone(), task.id)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(key = %task.key, error = %e, "cannot read the previous replica from the journal; looking at the destination");
                None
            }
        }
    } else {
        None
    };
    let mut look = first_look(task, prev.as_ref(), in_parts);
    // The condition the last write was refused with.
    let mut refused: Option<Condition> = None;
    for _ in 0..CONFLICT_ROUNDS {
        let condition = match look {
            Look::Blind(c) => Some(c),
            Look::Head => {
                let current = match dest.head(&task.key, None).await {
                    Ok(info) => Some(info),
                    Err(StoreError::NotFound { .. }) => None,
                    Err(e) => return Err(e),
                };
                match verdict(task, current.as_ref(), prev.as_ref(), in_parts) {
                    Verdict::There(version) => {
                        // Already there (a resync, a restart, another host):
                        // tags and grants changed on the source version since
                        // are brought over.
                        if !inner.owner_override.contains(&task.rule_id) && fresh.is_none() {
                            copy_acl(inner, d, task, version.as_deref(), true).await?;
                        }
                        if task.kind == TaskKind::Version && !task.key.ends_with('/') {
                            copy_tags(inner, d, task, version.as_deref()).await?;
                        }
                        return Ok(Replica {
                            version,
                            etag: None,
                        });
                    }
                    Verdict::Absent => return Ok(Replica::default()),
                    Verdict::Write(c) => c,
                    Verdict::AskOrder(other) => {
                        if newer_in_source(
                            inner.source.as_ref(),
                            &task.key,
                            &other,
                            &task.version_id,
                        )
                        .await?
                        {
                            tracing::debug!(key = %task.key, destination = %task.destination, version = %task.version_id, newer = %other, "superseded: the destination holds a newer version");
                            return Ok(Replica::default());
                        }
                        condition_for(task, current.as_ref(), in_parts)
                    }
                }
            }
        };
        // Refused although the look says it holds: the store judges it by
        // something a HEAD does not show (SeaweedFS: a directory of that
        // name). Nothing changed in between, so the write goes unconditioned.
        let condition = condition
            .filter(|_| d.conditions.on())
            .filter(|c| refused.as_ref() != Some(c));
        if task.kind == TaskKind::Delete {
            return Ok(Replica {
                version: dest.delete(&task.key).await?.version_id,
                etag: None,
            });
        }
        match write_with_acl(inner, d, task, fresh.as_ref(), condition.clone()).await {
            Err(StoreError::PreconditionFailed { .. }) => {
                refused = condition;
                look = Look::Head;
            }
            Err(e) if condition.is_some() && ConditionSupport::refuses(&e) => {
                d.conditions
                    .refused(dest, &e, "replicas are written after a look, without one");
                look = Look::Head;
            }
            Err(e) => return Err(e),
            Ok(None) => return Ok(Replica::default()),
            Ok(Some(res)) => {
                // A fresh version was uploaded without an ACL, so it is
                // private, and so is every new replica: nothing to copy.
                if !inner.owner_override.contains(&task.rule_id) && fresh.is_none() {
                    copy_acl(inner, d, task, res.version_id.as_deref(), false).await?;
                }
                return Ok(Replica {
                    version: res.version_id,
                    etag: Some(res.etag),
                });
            }
        }
    }
    // Other writers keep replacing the object: back off and look again.
    Err(StoreError::Throttled {
        bucket: dest.describe(),
        code: "ConcurrentReplicas".into(),
    })
}

/// [`write_replica`], with the destination owner's canned ACL for rules that
/// give replicas to it (dropped, for good, where the bucket takes no ACLs).
async fn write_with_acl(
    inner: &Arc<Inner>,
    d: &Destination,
    task: &Task,
    fresh: Option<&FreshReady>,
    condition: Option<Condition>,
) -> Result<Option<PutResult>, StoreError> {
    let dest = d.store.as_ref();
    let canned = (inner.owner_override.contains(&task.rule_id) && d.acls.enabled(dest).await)
        .then(|| "bucket-owner-full-control".to_string());
    match write_replica(inner, d, task, fresh, canned.clone(), condition.clone()).await {
        Err(StoreError::AclNotSupported { message, .. }) if canned.is_some() => {
            d.acls.refused(dest, &message);
            write_replica(inner, d, task, fresh, None, condition).await
        }
        other => other,
    }
}

/// Gives the replica the tags of the source version where they differ (a
/// PutObjectTagging on the source after the replica was written).
async fn copy_tags(
    inner: &Arc<Inner>,
    d: &Destination,
    task: &Task,
    replica: Option<&str>,
) -> Result<(), StoreError> {
    let want = inner
        .source
        .get_tags(&task.key, Some(&task.version_id))
        .await?;
    let have = d.store.get_tags(&task.key, replica).await?;
    if have != want {
        tracing::info!(key = %task.key, destination = %task.destination, "bringing the replica's tags up to the source version's");
        d.store.put_tags(&task.key, replica, &want).await?;
    }
    Ok(())
}

/// Gives the replica the grants of the source version (the source owner's
/// grants go to the replica's owner). Skipped where either side has no ACLs.
/// A new replica (`existing` false) is private already, so a private source
/// costs no look at it.
async fn copy_acl(
    inner: &Arc<Inner>,
    d: &Destination,
    task: &Task,
    replica: Option<&str>,
    existing: bool,
) -> Result<(), StoreError> {
    let (src, dest) = (inner.source.as_ref(), d.store.as_ref());
    if !inner.source_acls.enabled(src).await || !d.acls.enabled(dest).await {
        return Ok(());
    }
    let want = match src.get_acl(&task.key, Some(&task.version_id)).await {
        Ok(a) => a,
        Err(StoreError::AclNotSupported { message, .. }) => {
            inner.source_acls.refused(src, &message);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    tracing::debug!(key = %task.key, acl = ?want, "source ACL");
    // Every new replica is private already: the common case costs one GET.
    if want.is_private() && !existing {
        return Ok(());
    }
    let result = async {
        let have = dest.get_acl(&task.key, replica).await?;
        if have.normalized() != want.normalized() {
            dest.put_acl(
                &task.key,
                replica,
                &AclBody::Grants(want.for_owner(&have.owner)),
            )
            .await?;
        }
        Ok(())
    }
    .await;
    match result {
        Err(StoreError::AclNotSupported { message, .. }) => {
            d.acls.refused(dest, &message);
            Ok(())
        }
        other => other,
    }
}

/// Writes the replica (streamed from the source version, or from the fresh
/// bytes); `None` when the version is itself a replica.
async fn write_replica(
    inner: &Arc<Inner>,
    d: &Destination,
    task: &Task,
    fresh: Option<&FreshReady>,
    acl: Option<String>,
    condition: Option<Condition>,
) -> Result<Option<PutResult>, StoreError> {
    let dest = &d.store;
    if let Some(f) = fresh {
        let mut opts = f.fresh.opts.clone();
        opts.metadata
            .insert(SOURCE_VERSION_META.to_string(), task.version_id.clone());
        opts.storage_class = task.storage_class.clone();
        opts.acl = acl;
        opts.condition = condition;
        let crc = Crc64::of(&f.body).to_base64();
        if task.checksum.as_ref().is_some_and(|c| *c != crc) {
            // The bytes in hand are not the version uploaded: never a replica.
            return Err(bad_digest(
                dest.as_ref(),
                task,
                task.checksum.as_deref(),
                &crc,
            ));
        }
        opts.metadata.insert(CHECKSUM_META.to_string(), crc.clone());
        opts.checksum = Some(crc);
        return dest
            .put(&task.key, PutBody::Bytes(f.body.clone()), &opts)
            .await
            .map(Some);
    }
    let src = &inner.source;
    let threshold = inner.upload.multipart_threshold.0;
    // A small version is read whole at once: its GET says what a HEAD
    // would, one request fewer.
    let (head, body) = if task.size < threshold {
        let obj = src
            .get(
                &task.key,
                GetRequest {
                    version_id: Some(task.version_id.clone()),
                    range: None,
                },
            )
            .await?;
        (obj.info, Some(obj.body))
    } else {
        (src.head(&task.key, Some(&task.version_id)).await?, None)
    };
    if head.metadata.contains_key(SOURCE_VERSION_META) {
        // A replica (found by discovery, as with two-way rules): never
        // replicated again.
        return Ok(None);
    }
    let tags = src
        .get_tags(&task.key, Some(&task.version_id))
        .await
        .unwrap_or_default();
    // The bytes' CRC as the upload sent it (the journal), else as the source
    // keeps it: the destination checks the replica against it.
    let checksum = match (&task.checksum, &head.crc64nvme) {
        (Some(sent), Some(kept)) if sent != kept => {
            return Err(bad_digest(src.as_ref(), task, Some(sent), kept));
        }
        (Some(c), _) | (None, Some(c)) => Some(c.clone()),
        (None, None) => None,
    };
    let mut metadata = head.metadata.clone();
    metadata.insert(SOURCE_VERSION_META.to_string(), task.version_id.clone());
    metadata.remove(CHECKSUM_META);
    if let Some(c) = &checksum {
        metadata.insert(CHECKSUM_META.to_string(), c.clone());
    }
    if metadata.contains_key("mode") && !metadata.contains_key("mtime") {
        // A file uploaded in parts while written has no stored mtime; its
        // mtime is the source's LastModified, which the replica must not
        // replace with its own.
        if let Some(t) = head.last_modified {
            metadata.insert("mtime".to_string(), crate::meta::unix_secs(t).to_string());
        }
    }
    let opts = PutOptions {
        content_type: head.content_type.clone(),
        metadata,
        tags,
        storage_class: task.storage_class.clone(),
        acl,
        condition: None,
        checksum: None,
    };
    let size = head.size;
    let res: PutResult = if size < threshold {
        let body = match body {
            Some(b) => b,
            // Recorded larger than it is (a size the task did not know).
            None => {
                let req = GetRequest {
                    version_id: Some(task.version_id.clone()),
                    range: None,
                };
                src.get(&task.key, req).await?.body
            }
        };
        dest.put(
            &task.key,
            PutBody::Stream { body, len: size },
            &PutOptions {
                condition,
                checksum,
                ..opts
            },
        )
        .await?
    } else {
        // No condition on a multipart write (see "Limits").
        copy_in_parts(inner, dest.as_ref(), task, size, &opts, checksum.as_deref()).await?
    };
    Ok(Some(res))
}

/// `BadDigest` for bytes of `task`'s version whose CRC is not the one expected.
fn bad_digest(store: &dyn ObjectStore, task: &Task, want: Option<&str>, have: &str) -> StoreError {
    StoreError::BadDigest {
        bucket: store.describe(),
        key: task.key.clone(),
        message: format!(
            "version {} should have CRC-64/NVME {}, the bytes read have {}",
            task.version_id,
            want.map(checksum::hex_of_base64).unwrap_or_default(),
            checksum::hex_of_base64(have)
        ),
    }
}

/// Large objects: one ranged GET per part, streamed into UploadPart,
/// [`PARTS_IN_FLIGHT`] parts at a time, each giving way to new writes first.
/// A ranged GET carries no checksum of the whole, so the parts' CRCs, as the
/// destination answered them, are combined and compared with `checksum`
/// before the replica is completed (and the destination checks the combined
/// value against the parts it holds).
async fn copy_in_parts(
    inner: &Arc<Inner>,
    dest: &dyn ObjectStore,
    task: &Task,
    size: u64,
    opts: &PutOptions,
    checksum: Option<&str>,
) -> Result<PutResult, StoreError> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let part = inner.upload.part_size_for(size);
    let id = dest.create_multipart(&task.key, opts).await?;
    let copies = stream::iter((0..size).step_by(part as usize).enumerate())
        .map(|(i, offset)| {
            let (id, end) = (&id, (offset + part).min(size) - 1);
            async move {
                give_way(inner, Yield::Busy).await;
                let obj = inner
                    .source
                    .get(
                        &task.key,
                        GetRequest {
                            version_id: Some(task.version_id.clone()),
                            range: Some((offset, end)),
                        },
                    )
                    .await?;
                dest.upload_part(
                    &task.key,
                    id,
                    i as i32 + 1,
                    PutBody::Stream {
                        body: obj.body,
                        len: end - offset + 1,
                    },
                )
                .await
            }
        })
        .buffered(PARTS_IN_FLIGHT);
    // The first failure drops the parts still in flight, then aborts.
    let parts: Result<Vec<CompletedPart>, StoreError> = copies.try_collect().await;
    let parts = parts.and_then(|parts| {
        let whole = checksum::of_parts(parts.iter().map(|p| p.crc64nvme));
        match (checksum, whole) {
            (Some(want), Some(have)) if Crc64::from_base64(want) != Some(have) => {
                Err(bad_digest(dest, task, Some(want), &have.to_base64()))
            }
            _ => Ok(parts),
        }
    });
    match parts {
        Ok(parts) => dest.complete_multipart(&task.key, &id, parts).await,
        Err(e) => {
            let _ = dest.abort_multipart(&task.key, &id).await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests;
