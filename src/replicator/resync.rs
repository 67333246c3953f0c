//! `resync` (S3 Batch Replication's job: backfill what rules did not cover, such
//! as objects that existed before a rule) and `verify` (compare source and
//! destinations within the rules' scope). Both work without a mount.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::StoreError;
use crate::journal::{NewTask, TaskKind};
use crate::store::checksum;
use crate::store::{
    Acl, AclSupport, Grantee, ObjectInfo, ObjectStore, CHECKSUM_META, SOURCE_VERSION_META,
};

use super::rules::{Change, Rules};

/// One source version and where its rules send it.
pub struct Candidate {
    pub key: String,
    pub version_id: String,
    pub size: u64,
    pub targets: Vec<NewTask>,
}

/// What verify found for one object at one destination.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    /// No replica at all.
    Missing,
    /// The replica is of another (older) source version.
    Stale { replica_of: Option<String> },
    /// Claims to be this version but differs in size or ETag.
    Mismatched {
        source_size: u64,
        replica_size: u64,
        source_etag: String,
        replica_etag: String,
    },
    /// Same version, other grants (both buckets take ACLs).
    AclDiffers { source: String, replica: String },
    /// Same version, other tags (changed on the source since it was copied).
    TagsDiffer { source: String, replica: String },
    /// Same version and size, other bytes: the CRC-64/NVME the stores keep
    /// (or, with `--deep`, of both copies read whole) differs.
    BytesDiffer {
        source_crc64nvme: String,
        replica_crc64nvme: String,
    },
    /// The replica was written with a CRC-64/NVME that its store no longer
    /// has, while it keeps another checksum: another client rewrote it.
    Rewritten { written_crc64nvme: String },
    /// Same version and bytes, other user metadata.
    MetadataDiffers { source: String, replica: String },
}

impl std::fmt::Display for Difference {
    /// What differs, for people: `verify`'s report.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Missing => write!(f, "missing: no replica"),
            Difference::Stale {
                replica_of: Some(v),
            } => write!(f, "stale: the replica is of source version {v}"),
            Difference::Stale { replica_of: None } => write!(
                f,
                "stale: the replica was not written by regionfs and its bytes differ"
            ),
            Difference::Mismatched {
                source_size,
                replica_size,
                source_etag,
                replica_etag,
            } => write!(
                f,
                "bytes differ: source {source_size} bytes, ETag {source_etag}; replica {replica_size} bytes, ETag {replica_etag}"
            ),
            Difference::AclDiffers { source, replica } => {
                write!(f, "ACL differs: source {source}; replica {replica}")
            }
            Difference::TagsDiffer { source, replica } => {
                write!(f, "tags differ: source {source}; replica {replica}")
            }
            Difference::BytesDiffer {
                source_crc64nvme,
                replica_crc64nvme,
            } => write!(
                f,
                "bytes differ at the same size: source CRC-64/NVME {source_crc64nvme}, replica {replica_crc64nvme}"
            ),
            Difference::Rewritten { written_crc64nvme } => write!(
                f,
                "rewritten by another client: the replica was written with CRC-64/NVME {written_crc64nvme}, its store now keeps another checksum"
            ),
            Difference::MetadataDiffers { source, replica } => {
                write!(f, "user metadata differs: source {source}; replica {replica}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub key: String,
    pub destination: String,
    pub source_version: String,
    /// The version id of the replica found, if there is one.
    pub replica_version: Option<String>,
    pub difference: Difference,
}

impl std::fmt::Display for Finding {
    /// `KEY → DESTINATION: what differs (source version V, replica version R)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} → {}: {} (source version {}",
            self.key, self.destination, self.difference, self.source_version
        )?;
        match &self.replica_version {
            Some(r) => write!(f, ", replica version {r})"),
            None => write!(f, ")"),
        }
    }
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
                    checksum: None,
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
        .then(|| Difference::Mismatched {
            source_size: source.size,
            replica_size: r.size,
            source_etag: source.etag.clone(),
            replica_etag: r.etag.clone(),
        })
        .or_else(|| checksum_difference(source, r))
        .or_else(|| metadata_difference(source, r)),
        // A copy made by another tool counts when its bytes match.
        None if r.size == source.size && r.etag == source.etag => None,
        other => Some(Difference::Stale {
            replica_of: other.cloned(),
        }),
    }
}

/// The bytes of a replica of the right version, by the CRC-64/NVME the
/// stores keep (no byte is read): what the source keeps, else what the
/// replica was written with (the destination checked that value then),
/// against what the replica's store keeps now. Where a store keeps no
/// checksums, nothing is said here (sizes and ETags were compared; `--deep`
/// reads the bytes).
fn checksum_difference(source: &ObjectInfo, r: &ObjectInfo) -> Option<Difference> {
    let written = r.metadata.get(CHECKSUM_META);
    let want = source.crc64nvme.as_ref().or(written)?;
    match &r.crc64nvme {
        Some(have) if have != want => Some(Difference::BytesDiffer {
            source_crc64nvme: checksum::hex_of_base64(want),
            replica_crc64nvme: checksum::hex_of_base64(have),
        }),
        Some(_) => None,
        None => match written {
            Some(w) if r.other_checksum => Some(Difference::Rewritten {
                written_crc64nvme: checksum::hex_of_base64(w),
            }),
            _ => None,
        },
    }
}

/// User metadata as a replica must carry it: regionfs's own keys left out,
/// and the `mtime` a replica gains when its source has none (see `copy`).
fn metadata_difference(source: &ObjectInfo, r: &ObjectInfo) -> Option<Difference> {
    let user = |m: &BTreeMap<String, String>, drop_mtime: bool| -> BTreeMap<String, String> {
        m.iter()
            .filter(|(k, _)| {
                let ours = k.starts_with("regionfs-");
                let supplied = drop_mtime && *k == "mtime";
                !ours && !supplied
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let no_mtime = !source.metadata.contains_key("mtime");
    let (want, have) = (user(&source.metadata, false), user(&r.metadata, no_mtime));
    (want != have).then(|| Difference::MetadataDiffers {
        source: describe_tags(&want),
        replica: describe_tags(&have),
    })
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
    deep: bool,
    opaque_etags: HashSet<String>,
}

impl Checker {
    pub fn new(owner_override: HashSet<String>) -> Checker {
        Checker {
            owner_override,
            source_acls: None,
            dest_acls: HashMap::new(),
            deep: false,
            opaque_etags: HashSet::new(),
        }
    }

    /// Destinations whose replicas' ETags cannot be compared with the
    /// source's (SSE-KMS on either side): sizes and versions still are, and
    /// `deep` the bytes.
    pub fn opaque_etags(mut self, destinations: HashSet<String>) -> Checker {
        self.opaque_etags = destinations;
        self
    }

    /// Also reads both copies whole and compares their CRC-64/NVME: a replica
    /// whose bytes were changed behind regionfs's back at the same size (and
    /// ETag scheme) is found, whatever the vendors and part layouts.
    pub fn deep(mut self, deep: bool) -> Checker {
        self.deep = deep;
        self
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
    ) -> Result<Option<(Difference, Option<String>)>, StoreError> {
        let replica = match dest.head(&head.key, None).await {
            Ok(i) => Some(i),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let replica_version = replica.as_ref().and_then(|r| r.version_id.clone());
        let replica = match replica {
            Some(mut r) if self.opaque_etags.contains(destination) => {
                r.etag.clear();
                Some(r)
            }
            other => other,
        };
        let found = self
            .difference(source, head, version, destination, dest, rule_id, replica)
            .await?;
        Ok(found.map(|d| (d, replica_version)))
    }

    #[allow(clippy::too_many_arguments)]
    async fn difference(
        &mut self,
        source: &dyn ObjectStore,
        head: &ObjectInfo,
        version: &str,
        destination: &str,
        dest: &dyn ObjectStore,
        rule_id: &str,
        replica: Option<ObjectInfo>,
    ) -> Result<Option<Difference>, StoreError> {
        let difference = compare(head, version, replica.as_ref());
        if difference.is_some() || head.key.ends_with('/') {
            return Ok(difference);
        }
        let replica_version = replica.as_ref().and_then(|r| r.version_id.as_deref());
        if self.deep {
            let want = crate::store::content_crc64(source, &head.key, Some(version)).await?;
            let have = crate::store::content_crc64(dest, &head.key, replica_version).await?;
            if want != have {
                return Ok(Some(Difference::BytesDiffer {
                    source_crc64nvme: want,
                    replica_crc64nvme: have,
                }));
            }
        }
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
            if let Some((difference, replica_version)) = found {
                findings.push(Finding {
                    key: c.key.clone(),
                    destination: t.destination.clone(),
                    source_version: c.version_id.clone(),
                    replica_version,
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
            Some(Difference::Mismatched {
                source_size: 10,
                replica_size: 9,
                source_etag: "e1".into(),
                replica_etag: "e1".into(),
            })
        );
        assert_eq!(
            compare(&src, "v2", Some(&info(10, "e1", None))),
            None,
            "an identical foreign copy"
        );
    }

    #[test]
    fn a_replica_is_compared_by_the_checksums_the_stores_keep_in_any_part_layout() {
        use crate::store::checksum::Crc64;
        let (a, b) = (Crc64::of(b"same bytes"), Crc64::of(b"same bytez"));
        let with = |mut i: ObjectInfo, kept: Option<Crc64>, written: Option<Crc64>| {
            i.crc64nvme = kept.map(Crc64::to_base64);
            if let Some(w) = written {
                i.metadata.insert(CHECKSUM_META.into(), w.to_base64());
            }
            i
        };
        // Multipart on both sides, other part counts: ETags say nothing.
        let src = with(info(10, "m-2", None), Some(a), None);
        let same = with(info(10, "r-3", Some("v2")), Some(a), Some(a));
        assert_eq!(compare(&src, "v2", Some(&same)), None);
        let flipped = with(info(10, "r-3", Some("v2")), Some(b), Some(a));
        assert_eq!(
            compare(&src, "v2", Some(&flipped)),
            Some(Difference::BytesDiffer {
                source_crc64nvme: a.to_hex(),
                replica_crc64nvme: b.to_hex(),
            })
        );
        // A source store that keeps none: the value the replica was written with.
        let bare = info(10, "m-2", None);
        assert_eq!(
            compare(&bare, "v2", Some(&flipped)),
            compare(&src, "v2", Some(&flipped))
        );
        // Rewritten by a client that sent CRC32: ours is gone, another kept.
        let mut rewritten = with(info(10, "r-1", Some("v2")), None, Some(a));
        rewritten.other_checksum = true;
        assert_eq!(
            compare(&src, "v2", Some(&rewritten)),
            Some(Difference::Rewritten {
                written_crc64nvme: a.to_hex()
            })
        );
        // A store that keeps no checksum at all: nothing to say without --deep.
        let unkept = with(info(10, "r-1", Some("v2")), None, Some(a));
        assert_eq!(compare(&src, "v2", Some(&unkept)), None);
    }

    #[test]
    fn user_metadata_must_match_except_regionfs_keys_and_a_supplied_mtime() {
        let mut src = info(10, "e1", None);
        src.metadata.insert("mode".into(), "33188".into());
        let mut r = info(10, "e1", Some("v2"));
        r.metadata.insert("mode".into(), "33188".into());
        r.metadata.insert("mtime".into(), "1700000000".into());
        assert_eq!(compare(&src, "v2", Some(&r)), None);
        r.metadata.insert("owner".into(), "someone".into());
        assert_eq!(
            compare(&src, "v2", Some(&r)),
            Some(Difference::MetadataDiffers {
                source: "mode=33188".into(),
                replica: "mode=33188, owner=someone".into(),
            })
        );
    }

    #[test]
    fn each_difference_is_reported_as_a_line_naming_key_destination_and_both_versions() {
        let f = |difference, replica_version: Option<&str>| {
            Finding {
                key: "docs/a.txt".into(),
                destination: "eu".into(),
                source_version: "v2".into(),
                replica_version: replica_version.map(str::to_string),
                difference,
            }
            .to_string()
        };
        assert_eq!(
            f(Difference::Missing, None),
            "docs/a.txt → eu: missing: no replica (source version v2)"
        );
        assert_eq!(
            f(
                Difference::Stale {
                    replica_of: Some("v1".into())
                },
                Some("r1")
            ),
            "docs/a.txt → eu: stale: the replica is of source version v1 (source version v2, replica version r1)"
        );
        assert_eq!(
            f(
                Difference::Mismatched {
                    source_size: 10,
                    replica_size: 10,
                    source_etag: "\"a\"".into(),
                    replica_etag: "\"b\"".into(),
                },
                Some("r2")
            ),
            "docs/a.txt → eu: bytes differ: source 10 bytes, ETag \"a\"; replica 10 bytes, ETag \"b\" (source version v2, replica version r2)"
        );
        let json = serde_json::to_value(Finding {
            key: "k".into(),
            destination: "eu".into(),
            source_version: "v2".into(),
            replica_version: None,
            difference: Difference::TagsDiffer {
                source: "a=1".into(),
                replica: "none".into(),
            },
        })
        .unwrap();
        assert_eq!(json["difference"]["kind"], "tags_differ");
        assert_eq!(json["difference"]["replica"], "none");
        assert_eq!(json["replica_version"], serde_json::Value::Null);
    }
}
