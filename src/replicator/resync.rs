//! `resync` (S3 Batch Replication's job: backfill what rules did not cover, such
//! as objects that existed before a rule) and `verify` (compare source and
//! destinations within the rules' scope). Both work without a mount.

use std::collections::BTreeMap;

use crate::error::StoreError;
use crate::journal::{NewTask, TaskKind};
use crate::store::{ObjectInfo, ObjectStore, SOURCE_VERSION_META};

use super::rules::{Change, Rules};

/// One source version and where its rules send it.
pub struct Candidate {
    pub key: String,
    pub version_id: String,
    pub size: u64,
    pub targets: Vec<NewTask>,
}

/// What verify found for one object at one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// No replica at all.
    Missing,
    /// The replica is of another (older) source version.
    Stale { replica_of: Option<String> },
    /// Claims to be this version but differs in size or ETag.
    Mismatched,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub key: String,
    pub destination: String,
    pub source_version: String,
    pub difference: Difference,
}

/// Lists the source under `prefix`: the latest version of every object, or
/// every version (oldest first per key) with `all_versions`. Replicas (objects
/// that carry `regionfs-source-version`) are skipped: never replicated again.
pub async fn candidates(
    source: &dyn ObjectStore,
    rules: &Rules,
    prefix: &str,
    all_versions: bool,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Candidate>, StoreError> {
    let mut versions: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    let mut from = None;
    loop {
        let page = source.list_versions(prefix, from, None).await?;
        for v in page.versions {
            if v.is_delete_marker || (!all_versions && !v.is_latest) {
                continue;
            }
            versions
                .entry(v.key)
                .or_default()
                .push((v.version_id, v.size));
        }
        match page.next {
            Some(n) => from = Some(n),
            None => break,
        }
    }
    let mut out = Vec::new();
    for (key, mut list) in versions {
        list.reverse(); // oldest first: replicas land in source order
        for (version_id, size) in list {
            let head = source.head(&key, Some(&version_id)).await?;
            let tags = source
                .get_tags(&key, Some(&version_id))
                .await
                .unwrap_or_default();
            let targets = rules
                .targets(&key, &tags, &head.metadata, Change::Version)
                .into_iter()
                .map(|t| NewTask {
                    destination: t.destination,
                    rule_id: t.rule_id,
                    kind: TaskKind::Version,
                    storage_class: t.storage_class,
                })
                .collect::<Vec<_>>();
            if !targets.is_empty() {
                out.push(Candidate {
                    key: key.clone(),
                    version_id,
                    size,
                    targets,
                });
            }
            progress(out.len());
        }
    }
    Ok(out)
}

/// How a destination's current object compares with a source version.
pub fn compare(
    source: &ObjectInfo,
    source_version: &str,
    replica: Option<&ObjectInfo>,
) -> Option<Difference> {
    let Some(r) = replica else {
        return Some(Difference::Missing);
    };
    match r.metadata.get(SOURCE_VERSION_META) {
        Some(v) if v == source_version => (r.size != source.size
            || (!r.etag.is_empty()
                && !source.etag.is_empty()
                && r.etag != source.etag
                && !source.etag.contains('-')
                && !r.etag.contains('-')))
        .then_some(Difference::Mismatched),
        // A copy made by another tool counts when its bytes match.
        None if r.size == source.size && r.etag == source.etag => None,
        other => Some(Difference::Stale {
            replica_of: other.cloned(),
        }),
    }
}

/// The differences between the source's latest versions under `prefix` and the
/// destinations their rules name.
pub async fn verify(
    source: &dyn ObjectStore,
    destinations: &BTreeMap<String, std::sync::Arc<dyn ObjectStore>>,
    rules: &Rules,
    prefix: &str,
) -> Result<(usize, Vec<Finding>), StoreError> {
    let cands = candidates(source, rules, prefix, false, |_| {}).await?;
    let mut findings = Vec::new();
    let mut checked = 0;
    for c in &cands {
        let head = source.head(&c.key, Some(&c.version_id)).await?;
        for t in &c.targets {
            let Some(dest) = destinations.get(&t.destination) else {
                continue;
            };
            let replica = match dest.head(&c.key, None).await {
                Ok(i) => Some(i),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            checked += 1;
            if let Some(difference) = compare(&head, &c.version_id, replica.as_ref()) {
                findings.push(Finding {
                    key: c.key.clone(),
                    destination: t.destination.clone(),
                    source_version: c.version_id.clone(),
                    difference,
                });
            }
        }
    }
    Ok((checked, findings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(size: u64, etag: &str, src: Option<&str>) -> ObjectInfo {
        let mut i = ObjectInfo {
            size,
            etag: etag.into(),
            ..Default::default()
        };
        if let Some(s) = src {
            i.metadata.insert(SOURCE_VERSION_META.into(), s.into());
        }
        i
    }

    #[test]
    fn a_replica_matches_missing_stale_or_mismatched() {
        let src = info(10, "e1", None);
        assert_eq!(compare(&src, "v2", None), Some(Difference::Missing));
        assert_eq!(compare(&src, "v2", Some(&info(10, "e1", Some("v2")))), None);
        assert_eq!(
            compare(&src, "v2", Some(&info(7, "e0", Some("v1")))),
            Some(Difference::Stale {
                replica_of: Some("v1".into())
            })
        );
        assert_eq!(
            compare(&src, "v2", Some(&info(9, "e1", Some("v2")))),
            Some(Difference::Mismatched)
        );
        assert_eq!(
            compare(&src, "v2", Some(&info(10, "e1", None))),
            None,
            "an identical foreign copy"
        );
    }
}
