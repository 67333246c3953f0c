//! `resync` (S3 Batch Replication's job: backfill what rules did not cover, such
//! as objects that existed before a rule) and `verify` (compare source and
//! destinations within the rules' scope). Both work without a mount.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::StoreError;
use crate::journal::{NewTask, TaskKind};
use crate::store::{Acl, AclSupport, Grantee, ObjectInfo, ObjectStore, SOURCE_VERSION_META};

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
    /// Same version, other grants (both buckets take ACLs).
    AclDiffers { source: String, replica: String },
    /// Same version, other tags (changed on the source since it was copied).
    TagsDiffer { source: String, replica: String },
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
            // Attribute indexes are each mount's cache, never replicated.
            if v.is_delete_marker
                || (!all_versions && !v.is_latest)
                || crate::names::is_index_key(&v.key)
            {
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
    // A directory marker has no bytes to differ, and SeaweedFS keeps no
    // metadata on `dir/` keys, so a replica of one cannot say whose it is.
    if source.key.ends_with('/') && source.size == 0 && r.size == 0 {
        return None;
    }
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

/// `a=1, b=2` (`none` for no tags), for messages.
fn describe_tags(tags: &BTreeMap<String, String>) -> String {
    if tags.is_empty() {
        return "none".into();
    }
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `owner: FULL_CONTROL, AllUsers: READ`, for messages.
fn describe_acl(acl: &Acl) -> String {
    acl.normalized()
        .iter()
        .map(|(who, p)| {
            let who = match who {
                Grantee::User(id) => id.clone(),
                Grantee::Group(uri) => uri.rsplit('/').next().unwrap_or(uri).to_string(),
                Grantee::Email(e) => e.clone(),
            };
            format!("{who}: {p}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the ACLs of a source version and its replica differ; `None` when
/// they match.
async fn acl_difference(
    source: &dyn ObjectStore,
    dest: &dyn ObjectStore,
    key: &str,
    version: &str,
    replica_version: Option<&str>,
) -> Result<Option<Difference>, StoreError> {
    let want = source.get_acl(key, Some(version)).await?;
    let have = dest.get_acl(key, replica_version).await?;
    Ok(
        (want.normalized() != have.normalized()).then(|| Difference::AclDiffers {
            source: describe_acl(&want),
            replica: describe_acl(&have),
        }),
    )
}

/// Compares one source version with a destination's current object: bytes by
/// [`compare`], then ACLs where both buckets take them (asked once per bucket),
/// except for rules in `owner_override` (their replicas belong to the
/// destination's owner by design) and for directory markers (SeaweedFS keeps
/// their ACLs on the directory, not per version).
pub struct Checker {
    owner_override: HashSet<String>,
    source_acls: Option<bool>,
    dest_acls: HashMap<String, bool>,
}

impl Checker {
    pub fn new(owner_override: HashSet<String>) -> Checker {
        Checker {
            owner_override,
            source_acls: None,
            dest_acls: HashMap::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn check(
        &mut self,
        source: &dyn ObjectStore,
        head: &ObjectInfo,
        version: &str,
        destination: &str,
        dest: &dyn ObjectStore,
        rule_id: &str,
    ) -> Result<Option<Difference>, StoreError> {
        let replica = match dest.head(&head.key, None).await {
            Ok(i) => Some(i),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let difference = compare(head, version, replica.as_ref());
        if difference.is_some() || head.key.ends_with('/') {
            return Ok(difference);
        }
        let replica_version = replica.as_ref().and_then(|r| r.version_id.as_deref());
        let want = source.get_tags(&head.key, Some(version)).await?;
        let have = dest.get_tags(&head.key, replica_version).await?;
        if want != have {
            return Ok(Some(Difference::TagsDiffer {
                source: describe_tags(&want),
                replica: describe_tags(&have),
            }));
        }
        if self.owner_override.contains(rule_id) {
            return Ok(None);
        }
        let source_acls = match self.source_acls {
            Some(on) => on,
            None => {
                let on = matches!(source.acl_support().await, Ok(AclSupport::Enabled));
                self.source_acls = Some(on);
                on
            }
        };
        let dest_acls = match self.dest_acls.get(destination) {
            Some(on) => *on,
            None => {
                let on = matches!(dest.acl_support().await, Ok(AclSupport::Enabled));
                self.dest_acls.insert(destination.to_string(), on);
                on
            }
        };
        if !source_acls || !dest_acls {
            return Ok(None);
        }
        acl_difference(source, dest, &head.key, version, replica_version).await
    }
}

/// The differences between the source's latest versions under `prefix` and the
/// destinations their rules name (see [`Checker`]).
pub async fn verify(
    source: &dyn ObjectStore,
    destinations: &BTreeMap<String, std::sync::Arc<dyn ObjectStore>>,
    rules: &Rules,
    checker: &mut Checker,
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
            checked += 1;
            let found = checker
                .check(
                    source,
                    &head,
                    &c.version_id,
                    &t.destination,
                    dest.as_ref(),
                    &t.rule_id,
                )
                .await?;
            if let Some(difference) = found {
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

    #[tokio::test]
    async fn resync_never_replicates_the_attribute_indexes() {
        use crate::config::RuleConfig;
        use crate::store::{MemoryStore, PutBody, PutOptions};
        let src = MemoryStore::new("src");
        for key in [
            "a.txt",
            ".regionfs-index/index.json",
            ".regionfs-index/d/index.json",
        ] {
            src.put(key, PutBody::Bytes("x".into()), &PutOptions::default())
                .await
                .unwrap();
        }
        let rules = Rules::new(vec![RuleConfig {
            id: "all".into(),
            priority: 0,
            prefix: String::new(),
            tags: Default::default(),
            destination: "b".into(),
            delete_markers: false,
            storage_class: None,
            owner_override: None,
        }]);
        let got = candidates(&src, &rules, "", true, |_| {}).await.unwrap();
        let keys: Vec<&str> = got.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, vec!["a.txt"]);
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
