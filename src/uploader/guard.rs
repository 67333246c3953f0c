//! Several writers of one key: an upload that replaces a version this host
//! never read is reported.
//!
//! The last close wins, as in S3, and nothing is lost: every version stays in
//! the source's history. But when another client (a second host, an SDK)
//! wrote the key after this host last saw it, the upload replaces a version
//! nobody here read; the user is told which (a warning and a `status` count
//! naming the key and the replaced version id), so `regionfs restore` can
//! bring it back.
//!
//! A put carries its [`Base`]: the ETag and version id its node held when it
//! was staged (empty for a new file). The PUT is conditional on it (`If-Match`
//! the ETag, `If-None-Match: *` for a new file). When the store refuses, the
//! current object is looked at: a version this host knows (the base, or this
//! journal's own last version of the key, which a node still being written
//! has not learned) is replaced without a report; any other is reported.
//! Either way the next PUT is conditional on the object just seen, so the
//! version reported is exactly the one replaced.
//!
//! Uploads in parts, and every upload to a store that answers NotImplemented
//! to conditions, look at the current object just before the version is
//! made (CompleteMultipartUpload, or the PUT) instead: another writer landing
//! in between goes unreported. Renames, metadata changes and deletes replace
//! whatever is there, unreported.

use std::sync::Arc;

use crate::error::StoreError;
use crate::journal::{Base, Op};
use crate::store::{Condition, ObjectInfo};

use super::Inner;

/// The condition an upload is first written with (pure).
pub(super) fn first_condition(base: Option<&Base>) -> Option<Condition> {
    base.map(|b| match b.etag.as_str() {
        "" => Condition::IfNoneMatch,
        etag => Condition::IfMatch(etag.to_string()),
    })
}

/// Whether the current object is one this host knows: the one it saw, or
/// its own last version of the key (pure).
pub(super) fn known(current: &ObjectInfo, base: &Base, own_last: Option<&str>) -> bool {
    let version = current.version_id.as_deref();
    (!base.etag.is_empty() && current.etag == base.etag)
        || (version.is_some() && version == base.version.as_deref())
        || (version.is_some() && version == own_last)
}

/// What a refused condition leads to: the next write's condition, after the
/// current object was looked at (and reported, if unknown).
pub(super) async fn after_refusal(
    inner: &Arc<Inner>,
    op: &Op,
    refused: &Condition,
) -> Result<Option<Condition>, StoreError> {
    let current = current(inner, op).await?;
    let next = match &current {
        None => Condition::IfNoneMatch,
        Some(info) => Condition::IfMatch(info.etag.clone()),
    };
    if &next == refused {
        // Refused although it holds: the store judges by something a HEAD
        // does not show (SeaweedFS: a directory of that name).
        return Ok(None);
    }
    if let Some(info) = current {
        report_unknown(inner, op, &info).await;
    }
    Ok(Some(next))
}

/// The look made where no condition guards the write (see the module doc).
pub(super) async fn look(inner: &Arc<Inner>, op: &Op) -> Result<(), StoreError> {
    if op.base.is_none() {
        return Ok(());
    }
    if let Some(info) = current(inner, op).await? {
        report_unknown(inner, op, &info).await;
    }
    Ok(())
}

async fn current(inner: &Inner, op: &Op) -> Result<Option<ObjectInfo>, StoreError> {
    match inner.store.head(&op.key, None).await {
        Ok(info) => Ok(Some(info)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reports `info` if this host does not know it.
async fn report_unknown(inner: &Inner, op: &Op, info: &ObjectInfo) {
    let Some(base) = &op.base else { return };
    let own_last = match inner.journal.own_last_version(op.key.clone()).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(key = %op.key, error = %e, "cannot read this key's last upload from the journal");
            None
        }
    };
    if known(info, base, own_last.as_deref()) {
        return;
    }
    let replaced = info.version_id.clone().unwrap_or_else(|| "null".into());
    tracing::warn!(
        key = %op.key,
        replaced_version = %replaced,
        "this upload replaces a version another client wrote since this host last read the key; it stays in the source's history (regionfs restore)"
    );
    if let Err(e) = inner
        .journal
        .note_conflict(op.seq, op.key.clone(), replaced)
        .await
    {
        tracing::warn!(key = %op.key, error = %e, "cannot count the replaced version in the journal");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(etag: &str, version: &str) -> ObjectInfo {
        ObjectInfo {
            etag: etag.into(),
            version_id: Some(version.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_file_is_written_only_where_nothing_is_and_a_read_one_only_over_what_was_read() {
        assert_eq!(first_condition(None), None);
        let new = Base::default();
        assert_eq!(first_condition(Some(&new)), Some(Condition::IfNoneMatch));
        let read = Base {
            etag: "\"e1\"".into(),
            version: None,
        };
        assert_eq!(
            first_condition(Some(&read)),
            Some(Condition::IfMatch("\"e1\"".into()))
        );
    }

    #[test]
    fn only_versions_this_host_saw_or_wrote_are_known() {
        let seen = Base {
            etag: "\"e1\"".into(),
            version: Some("v1".into()),
        };
        assert!(known(&object("\"e1\"", "v9"), &seen, None), "same bytes");
        assert!(
            known(&object("\"e2\"", "v1"), &seen, None),
            "the version seen"
        );
        assert!(
            known(&object("\"e3\"", "v3"), &seen, Some("v3")),
            "own upload"
        );
        assert!(!known(&object("\"e4\"", "v4"), &seen, Some("v3")));
        // A new file knows nothing at its key but its own uploads.
        let new = Base::default();
        assert!(
            !known(&object("", "v5"), &new, None),
            "an empty ETag is no match"
        );
        assert!(known(&object("\"e6\"", "v6"), &new, Some("v6")));
        let unversioned = ObjectInfo {
            etag: "\"e7\"".into(),
            ..Default::default()
        };
        assert!(
            !known(&unversioned, &new, None),
            "no version id matches none"
        );
    }
}
