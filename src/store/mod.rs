//! One S3 bucket in one region: the [`ObjectStore`] capability and its types.
//!
//! `s3.rs` implements it over aws-sdk-s3 for any S3-compatible endpoint (the
//! product); `memory.rs` is an in-process model used only by unit tests. Every
//! method returns a typed [`StoreError`] whose `is_permanent()` drives retries.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use crate::error::StoreError;

pub mod acl;
pub mod checksum;
/// Test doubles: an in-memory bucket, and one that injects faults. Only in
/// the crate's own tests and with the `test-doubles` feature (integration
/// tests and benchmarks), never in the product.
#[cfg(any(test, feature = "test-doubles"))]
pub mod memory;
pub mod probe;
pub mod s3;
mod stable;
pub(crate) use stable::{digest_of, PartDigest};
mod unsigned;

pub(crate) use acl::AclState;
#[cfg(any(test, feature = "test-doubles"))]
pub use memory::MemoryStore;
pub use s3::S3Store;

/// User metadata key that marks a replica and names the source version it copies.
pub const SOURCE_VERSION_META: &str = "regionfs-source-version";

/// User metadata key on a replica: the CRC-64/NVME (base64) of the source
/// version's bytes, which the destination checked the replica's bytes
/// against when it was written (see `checksum`). Where a store keeps no
/// checksums, this is the only record of it.
pub const CHECKSUM_META: &str = "regionfs-crc64nvme";

/// Bucket versioning as S3 reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioning {
    /// Never enabled.
    Off,
    Enabled,
    Suspended,
}

/// What a HEAD (or a GET) says about one version of an object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub version_id: Option<String>,
    pub last_modified: Option<SystemTime>,
    pub content_type: Option<String>,
    /// User metadata (`x-amz-meta-*`), keys lower-case without the prefix.
    pub metadata: BTreeMap<String, String>,
    pub storage_class: Option<String>,
    /// The store's own full-object CRC-64/NVME of this version (base64), where
    /// it keeps one: what it checked the bytes against when they arrived.
    pub crc64nvme: Option<String>,
    /// The store keeps a checksum of another algorithm (and none of ours):
    /// the version was written by a client that did not send CRC-64/NVME.
    pub(crate) other_checksum: bool,
}

/// Options written with a new version (PUT, multipart, copy with REPLACE).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PutOptions {
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub storage_class: Option<String>,
    /// A canned ACL (`x-amz-acl`), e.g. `bucket-owner-full-control`.
    pub acl: Option<String>,
    /// Write only if the key's current object is still the one expected
    /// (single-request PUTs only; refused with `PreconditionFailed`).
    pub condition: Option<Condition>,
    /// The CRC-64/NVME (base64) the bytes must have: sent as
    /// `x-amz-checksum-crc64nvme`, so the store refuses other bytes
    /// (BadDigest) and keeps it. Without it the SDK computes one as the bytes
    /// go (where the bucket sends checksums).
    pub checksum: Option<String>,
}

/// A conditional write (S3's `If-Match` / `If-None-Match: *` on PutObject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The current object has this ETag.
    IfMatch(String),
    /// There is no current object (absent, or a delete marker).
    IfNoneMatch,
}

/// Whether a store honours conditional writes: on until it answers
/// NotImplemented to one (then writers look first, and write without one).
pub(crate) struct ConditionSupport {
    on: AtomicBool,
}

impl Default for ConditionSupport {
    fn default() -> Self {
        Self::new()
    }
}

impl ConditionSupport {
    pub fn new() -> ConditionSupport {
        ConditionSupport {
            on: AtomicBool::new(true),
        }
    }

    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Turns conditions off for `store`, with one warning saying `instead`.
    pub fn refused(&self, store: &dyn ObjectStore, e: &StoreError, instead: &str) {
        if self.on.swap(false, Ordering::Relaxed) {
            tracing::warn!(bucket = %store.describe(), error = %e, "the store does not take conditional writes; {instead}");
        }
    }

    /// The answer of a store that does not know `If-Match` /
    /// `If-None-Match` on PUT.
    pub fn refuses(e: &StoreError) -> bool {
        matches!(e, StoreError::Rejected { status: 501, .. })
            || matches!(e, StoreError::Rejected { code, .. } if code == "NotImplemented")
    }
}

/// Who an ACL grant is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grantee {
    /// A canonical user id.
    User(String),
    /// A predefined group, by URI (AllUsers, AuthenticatedUsers, LogDelivery).
    Group(String),
    Email(String),
}

/// One object version's ACL, as GetObjectAcl returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// Canonical id of the object's owner.
    pub owner: String,
    /// (grantee, permission: FULL_CONTROL, READ, WRITE, READ_ACP, WRITE_ACP).
    pub grants: Vec<(Grantee, String)>,
}

impl Acl {
    /// The grants with the owner's own id written as `owner`, sorted: the
    /// same ACL in two accounts compares equal.
    pub fn normalized(&self) -> Vec<(Grantee, String)> {
        let mut g: Vec<(Grantee, String)> = self
            .grants
            .iter()
            .map(|(who, p)| match who {
                Grantee::User(id) if *id == self.owner => {
                    (Grantee::User("owner".into()), p.clone())
                }
                other => (other.clone(), p.clone()),
            })
            .collect();
        g.sort();
        g.dedup();
        g
    }

    /// Only the owner has access: what every new object gets by default.
    pub fn is_private(&self) -> bool {
        self.normalized() == [(Grantee::User("owner".into()), "FULL_CONTROL".to_string())]
    }

    /// The same grants for an object owned by `owner`: what the source's owner
    /// had, the replica's owner gets; every other grantee is kept.
    pub(crate) fn for_owner(&self, owner: &str) -> Acl {
        Acl {
            owner: owner.to_string(),
            grants: self
                .grants
                .iter()
                .map(|(who, p)| match who {
                    Grantee::User(id) if *id == self.owner => {
                        (Grantee::User(owner.to_string()), p.clone())
                    }
                    other => (other.clone(), p.clone()),
                })
                .collect(),
        }
    }
}

/// What PutObjectAcl sets.
#[derive(Debug, Clone, PartialEq)]
pub enum AclBody {
    Canned(String),
    Grants(Acl),
}

/// Whether a bucket honours object ACLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclSupport {
    Enabled,
    /// ACLs are off (S3 Object Ownership `BucketOwnerEnforced`, or the store
    /// answered that it has none); the reason says which.
    Disabled(String),
}

/// The bytes of a PUT or an upload part.
pub enum PutBody {
    Bytes(Bytes),
    /// A slice of a local file; the SDK can rewind and retry it.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    /// The whole of a local file that must not change while it is sent:
    /// `unchanged` is asked once its last byte is read, before that byte
    /// goes; `false` fails the request, so no object is made of a file
    /// written meanwhile (see `uploader`, "Files written after staging").
    StableFile {
        path: PathBuf,
        len: u64,
        unchanged: Arc<dyn Fn() -> bool + Send + Sync>,
    },
    /// A slice of a local file that may be written while it is sent: the
    /// digest of the bytes sent is recorded in `digest` (see `stable`).
    HashedFile {
        path: PathBuf,
        offset: u64,
        len: u64,
        digest: Arc<PartDigest>,
    },
    /// A stream of known length (e.g. a GET from another region). It cannot be
    /// rewound, so a failed request is retried by the caller from the start.
    Stream {
        body: ByteStream,
        len: u64,
    },
}

impl PutBody {
    pub fn len(&self) -> u64 {
        match self {
            PutBody::Bytes(b) => b.len() as u64,
            PutBody::File { len, .. }
            | PutBody::StableFile { len, .. }
            | PutBody::HashedFile { len, .. }
            | PutBody::Stream { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The result of writing a version.
#[derive(Debug, Clone, PartialEq)]
pub struct PutResult {
    /// `None` only on buckets without versioning.
    pub version_id: Option<String>,
    pub etag: String,
    /// The CRC-64/NVME (base64) of the bytes written, as the store answered
    /// it; `None` where it keeps none.
    pub crc64nvme: Option<String>,
}

/// A part of a multipart upload, as complete_multipart needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedPart {
    pub(crate) number: i32,
    pub etag: String,
    /// The part's CRC-64/NVME as the store answered it, and its length: the
    /// parts combine into the object's full checksum.
    pub crc64nvme: Option<(checksum::Crc64, u64)>,
}

#[derive(Debug, Clone, Default)]
pub struct GetRequest {
    pub version_id: Option<String>,
    /// Inclusive byte range `start..=end`; `None` reads the whole object.
    pub range: Option<(u64, u64)>,
}

pub struct GetObject {
    pub info: ObjectInfo,
    pub body: ByteStream,
}

/// `e` and its sources, `: `-joined (a body's error says little on its own:
/// "streaming error", caused by "checksum mismatch").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// An error while a body is read: bytes that did not match the checksum the
/// store kept are [`StoreError::BadDigest`], anything else (a cut body)
/// [`StoreError::Malformed`]; both are retried.
pub(crate) fn body_error(bucket: &str, key: &str, e: &dyn std::error::Error) -> StoreError {
    let message = format!("reading the body of `{key}`: {}", error_chain(e));
    if message.contains("checksum mismatch") {
        StoreError::BadDigest {
            bucket: bucket.to_string(),
            key: key.to_string(),
            message,
        }
    } else {
        StoreError::Malformed {
            bucket: bucket.to_string(),
            message,
        }
    }
}

/// The CRC-64/NVME of an object version's bytes (hex), read whole: what
/// `verify --deep` compares, since ETags of multipart uploads and of other
/// vendors do not name the bytes.
pub(crate) async fn content_crc64(
    store: &dyn ObjectStore,
    key: &str,
    version_id: Option<&str>,
) -> Result<String, StoreError> {
    let obj = store
        .get(
            key,
            GetRequest {
                version_id: version_id.map(str::to_string),
                range: None,
            },
        )
        .await?;
    let mut h = checksum::hasher();
    let mut body = obj.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| body_error(&store.describe(), key, &e))?;
        h.update(&chunk);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl GetObject {
    pub async fn bytes(self) -> Result<Bytes, StoreError> {
        let key = self.info.key.clone();
        self.body
            .collect()
            .await
            .map(|d| d.into_bytes())
            .map_err(|e| body_error("", &key, &e))
    }
}

/// What a DeleteObject without version id did.
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteResult {
    /// The version id of the delete marker written (versioned buckets).
    pub version_id: Option<String>,
    pub delete_marker: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListEntry {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: Option<SystemTime>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListPage {
    pub objects: Vec<ListEntry>,
    /// With a delimiter: the "directories" directly under the prefix, with the
    /// trailing delimiter.
    pub common_prefixes: Vec<String>,
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VersionEntry {
    pub key: String,
    pub version_id: String,
    pub is_latest: bool,
    pub is_delete_marker: bool,
    pub size: u64,
    pub etag: String,
    pub last_modified: Option<SystemTime>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct VersionPage {
    pub versions: Vec<VersionEntry>,
    /// Continue with these markers while `Some`.
    pub next: Option<(String, Option<String>)>,
}

/// One bucket in one region. Object keys are full keys (the source prefix is
/// applied by the caller).
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// The bucket and where it lives, for messages.
    fn describe(&self) -> String;

    async fn versioning(&self) -> Result<Versioning, StoreError>;
    async fn head(&self, key: &str, version_id: Option<&str>) -> Result<ObjectInfo, StoreError>;
    async fn get(&self, key: &str, req: GetRequest) -> Result<GetObject, StoreError>;
    async fn put(
        &self,
        key: &str,
        body: PutBody,
        opts: &PutOptions,
    ) -> Result<PutResult, StoreError>;

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String, StoreError>;
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: PutBody,
    ) -> Result<CompletedPart, StoreError>;
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<PutResult, StoreError>;
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError>;

    /// Server-side copy of `src_key` (at `src_version`, else the current version)
    /// within this bucket, replacing metadata and tags with `opts`.
    async fn copy(
        &self,
        src_key: &str,
        src_version: Option<&str>,
        dst_key: &str,
        opts: &PutOptions,
    ) -> Result<PutResult, StoreError>;

    /// Deletes the current version: on a versioned bucket this writes a delete marker.
    async fn delete(&self, key: &str) -> Result<DeleteResult, StoreError>;
    /// Permanently removes one version (never replicated).
    async fn delete_version(&self, key: &str, version_id: &str) -> Result<(), StoreError>;

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError>;

    /// Every version and delete marker under `prefix`, newest first within a key.
    async fn list_versions(
        &self,
        prefix: &str,
        from: Option<(String, Option<String>)>,
        max_keys: Option<i32>,
    ) -> Result<VersionPage, StoreError>;

    async fn get_tags(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<BTreeMap<String, String>, StoreError>;

    /// Whether the bucket uses object ACLs (its Object Ownership setting).
    async fn acl_support(&self) -> Result<AclSupport, StoreError>;
    async fn get_acl(&self, key: &str, version_id: Option<&str>) -> Result<Acl, StoreError>;
    async fn put_acl(
        &self,
        key: &str,
        version_id: Option<&str>,
        acl: &AclBody,
    ) -> Result<(), StoreError>;
    async fn put_tags(
        &self,
        key: &str,
        version_id: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), StoreError>;
}

/// An `impl ObjectStore for T { <the read methods> }` for a read-only view,
/// completed with every write method returning `self.refused()`.
macro_rules! read_only_store {
    (impl ObjectStore for $t:ty { $($reads:tt)* }) => {
        #[async_trait::async_trait]
        impl ObjectStore for $t {
            $($reads)*

        async fn put(&self, _: &str, _: PutBody, _: &PutOptions) -> Result<PutResult, StoreError> {
            Err(self.refused())
        }
        async fn create_multipart(&self, _: &str, _: &PutOptions) -> Result<String, StoreError> {
            Err(self.refused())
        }
        async fn upload_part(
            &self,
            _: &str,
            _: &str,
            _: i32,
            _: PutBody,
        ) -> Result<CompletedPart, StoreError> {
            Err(self.refused())
        }
        async fn complete_multipart(
            &self,
            _: &str,
            _: &str,
            _: Vec<CompletedPart>,
        ) -> Result<PutResult, StoreError> {
            Err(self.refused())
        }
        async fn abort_multipart(&self, _: &str, _: &str) -> Result<(), StoreError> {
            Err(self.refused())
        }
        async fn copy(
            &self,
            _: &str,
            _: Option<&str>,
            _: &str,
            _: &PutOptions,
        ) -> Result<PutResult, StoreError> {
            Err(self.refused())
        }
        async fn delete(&self, _: &str) -> Result<DeleteResult, StoreError> {
            Err(self.refused())
        }
        async fn delete_version(&self, _: &str, _: &str) -> Result<(), StoreError> {
            Err(self.refused())
        }
        async fn put_tags(
            &self,
            _: &str,
            _: Option<&str>,
            _: &BTreeMap<String, String>,
        ) -> Result<(), StoreError> {
            Err(self.refused())
        }
        async fn put_acl(&self, _: &str, _: Option<&str>, _: &AclBody) -> Result<(), StoreError> {
            Err(self.refused())
        }
        }
    };
}
pub(crate) use read_only_store;

/// `k=v&k2=v2`, URL-encoded, as the `x-amz-tagging` header wants it.
pub(crate) fn encode_tags(tags: &BTreeMap<String, String>) -> String {
    tags.iter()
        .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/` when
/// `keep_slash`).
pub(crate) fn url_encode_path(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn url_encode(s: &str) -> String {
    url_encode_path(s, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_url_encoded() {
        let mut t = BTreeMap::new();
        t.insert("class".to_string(), "critical data".to_string());
        t.insert("a&b".to_string(), "x=y".to_string());
        assert_eq!(encode_tags(&t), "a%26b=x%3Dy&class=critical%20data");
    }
}

#[cfg(any(test, feature = "test-doubles"))]
pub mod faulty;
#[cfg(any(test, feature = "test-doubles"))]
pub use faulty::FaultyStore;
