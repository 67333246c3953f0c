//! [`ObjectStore`] over aws-sdk-s3, for AWS and any S3-compatible endpoint.
//!
//! Vendor differences this code absorbs, each tested against SeaweedFS and moto:
//! - HEAD answers carry no error body, so a 404 there has no code: it is NotFound.
//! - ListObjectVersions returns versions and delete markers as two lists; they
//!   are merged back into one newest-first history per key.
//! - Stores without S3 identities reject aws-chunked trailing checksums:
//!   `checksums = "when_required"` turns them off per bucket.
//! - ACL grants: SeaweedFS keeps only an AccessControlPolicy body and ignores a
//!   canned `x-amz-acl` on PutObject; moto keeps only `x-amz-grant-*` headers.
//!   Which form a store keeps is learned at the first PutObjectAcl.
//! - Checksums: every write asks for CRC-64/NVME (a full-object checksum
//!   for multipart uploads, see `checksum`); SeaweedFS 4.48 checks and keeps
//!   it, moto 5.1 takes the headers and keeps nothing, so a store's answer
//!   (not the request) says whether a version has one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::types::{
    AccessControlPolicy, BucketVersioningStatus, ChecksumType, CompletedMultipartUpload, Grant,
    Grantee as SdkGrantee, MetadataDirective, ObjectCannedAcl, ObjectOwnership, Owner, Permission,
    ServerSideEncryption, StorageClass, Tag, Tagging, TaggingDirective, Type as GranteeType,
};
use aws_sdk_s3::Client;

use super::checksum::{self, Crc64};
use super::unsigned::UnsignedBodies;
use super::{
    encode_tags, url_encode_path, Acl, AclBody, AclSupport, CompletedPart, Condition, DeleteResult,
    GetObject, GetRequest, Grantee, ListEntry, ListPage, ObjectInfo, ObjectStore, PutBody,
    PutOptions, PutResult, VersionEntry, VersionPage, Versioning,
};
use crate::config::{BucketConfig, ChecksumMode};
use crate::error::StoreError;

mod acl;
mod admin;
mod errors;
mod send;

use acl::{GRANTS_AS_BODY, GRANTS_AS_HEADERS, GRANTS_UNKNOWN};
use errors::classify;
use send::{FULL_OBJECT_IGNORED, FULL_OBJECT_TAKEN, FULL_OBJECT_UNKNOWN};

/// One bucket at one endpoint, through aws-sdk-s3.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    region: String,
    describe: String,
    /// How this store takes ACL grants (learned at the first PutObjectAcl).
    grant_form: Arc<AtomicU8>,
    /// Whether this store takes a multipart upload declared CRC-64/NVME
    /// full-object (learned at the first CreateMultipartUpload).
    full_object: Arc<AtomicU8>,
    /// Server-side encryption of what this store writes, and its KMS key.
    sse: Option<ServerSideEncryption>,
    kms_key_id: Option<String>,
    /// Bodies go unsigned (no SHA-256 of every byte): a CRC checksum of the
    /// body travels with it and the store checks that (see `unsigned`).
    unsigned_payloads: bool,
}

impl S3Store {
    /// Builds a client from the bucket's settings and the aws-config default
    /// chain (environment, profile, instance role). Nothing is sent yet.
    pub async fn connect(cfg: &BucketConfig) -> S3Store {
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(Region::new(cfg.region.clone()));
        if let Some(p) = &cfg.profile {
            loader = loader.profile_name(p);
        }
        if let (Some(ak), Some(sk)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                ak,
                sk,
                None,
                None,
                "regionfs-config",
            ));
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(cfg.path_style())
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(60))
                    .build(),
            );
        if let Some(e) = &cfg.endpoint {
            b = b.endpoint_url(e);
        }
        if cfg.checksums == ChecksumMode::WhenRequired {
            b = b
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        S3Store {
            client: Client::from_conf(b.build()),
            bucket: cfg.bucket.clone(),
            region: cfg.region.clone(),
            describe: cfg.describe(),
            grant_form: Arc::new(AtomicU8::new(GRANTS_UNKNOWN)),
            full_object: Arc::new(AtomicU8::new(FULL_OBJECT_UNKNOWN)),
            sse: cfg.sse.map(|s| ServerSideEncryption::from(s.as_str())),
            kms_key_id: cfg.kms_key_id.clone(),
            unsigned_payloads: cfg.checksums == ChecksumMode::WhenSupported,
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// A listing page as S3 writes one: `IsTruncated` present and each
    /// entry with its key and time. The SDK's XML reader stops quietly at
    /// the end of a cut body, which would read as a whole, shorter page (and
    /// keys missing from it as deleted): that is an error, retried.
    fn whole_listing<'a>(
        &self,
        is_truncated: Option<bool>,
        mut entries: impl Iterator<Item = (Option<&'a str>, bool)>,
    ) -> Result<(), StoreError> {
        let malformed = |what: String| StoreError::Malformed {
            bucket: self.describe.clone(),
            message: format!("a listing {what}: cut short or not S3's"),
        };
        if is_truncated.is_none() {
            return Err(malformed("without IsTruncated".into()));
        }
        if let Some((key, _)) = entries.find(|(key, dated)| key.is_none() || !dated) {
            return Err(malformed(format!(
                "entry {} without its {}",
                key.map(|k| format!("`{k}`")).unwrap_or_default(),
                if key.is_none() { "Key" } else { "LastModified" }
            )));
        }
        Ok(())
    }
}

fn time(t: Option<&DateTime>) -> Option<SystemTime> {
    t.and_then(|d| SystemTime::try_from(*d).ok())
}

fn meta_map(m: Option<&HashMap<String, String>>) -> BTreeMap<String, String> {
    m.map(|m| {
        m.iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    })
    .unwrap_or_default()
}

/// What a HEAD or GET answer says of the version (their outputs are two
/// types with the same accessors).
macro_rules! info_of {
    ($key:expr, $out:expr) => {
        ObjectInfo {
            key: $key.to_string(),
            size: $out.content_length().unwrap_or(0).max(0) as u64,
            etag: etag($out.e_tag()),
            version_id: $out.version_id().map(str::to_string),
            last_modified: time($out.last_modified()),
            content_type: $out.content_type().map(str::to_string),
            metadata: meta_map($out.metadata()),
            storage_class: $out.storage_class().map(|s| s.as_str().to_string()),
            crc64nvme: full_crc64($out.checksum_crc64_nvme()),
            other_checksum: [
                $out.checksum_crc32(),
                $out.checksum_crc32_c(),
                $out.checksum_sha1(),
                $out.checksum_sha256(),
            ]
            .iter()
            .any(Option::is_some),
        }
    };
}

/// A store's CRC-64/NVME answer, kept only when it is one (8 bytes of
/// base64: a composite `…-N` of parts is not the object's).
fn full_crc64(c: Option<&str>) -> Option<String> {
    c.and_then(Crc64::from_base64).map(Crc64::to_base64)
}

fn etag(e: Option<&str>) -> String {
    e.unwrap_or_default().trim_matches('"').to_string()
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn versioning(&self) -> Result<Versioning, StoreError> {
        let out = self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| self.err(None, e))?;
        Ok(match out.status() {
            Some(BucketVersioningStatus::Enabled) => Versioning::Enabled,
            Some(BucketVersioningStatus::Suspended) => Versioning::Suspended,
            _ => Versioning::Off,
        })
    }

    async fn head(&self, key: &str, version_id: Option<&str>) -> Result<ObjectInfo, StoreError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| self.err(Some(key), e))?;
        Ok(info_of!(key, out))
    }

    async fn get(&self, key: &str, req: GetRequest) -> Result<GetObject, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(req.version_id)
            // A whole object's bytes are checked against the checksum the
            // store kept, where it kept one: a body that does not match is
            // an error while it is read, never bytes handed on.
            .set_checksum_mode(
                req.range
                    .is_none()
                    .then_some(aws_sdk_s3::types::ChecksumMode::Enabled),
            )
            .set_range(req.range.map(|(a, b)| format!("bytes={a}-{b}")))
            .send()
            .await
            .map_err(|e| self.err(Some(key), e))?;
        let info = info_of!(key, out);
        Ok(GetObject {
            info,
            body: out.body,
        })
    }

    async fn put(
        &self,
        key: &str,
        body: PutBody,
        opts: &PutOptions,
    ) -> Result<PutResult, StoreError> {
        let (body, len) = self.body(body).await?;
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body)
            .content_length(len)
            .set_content_type(opts.content_type.clone())
            .set_metadata(Some(opts.metadata.clone().into_iter().collect()))
            .set_tagging((!opts.tags.is_empty()).then(|| encode_tags(&opts.tags)))
            .set_storage_class(opts.storage_class.as_deref().map(StorageClass::from))
            .set_acl(opts.acl.as_deref().map(ObjectCannedAcl::from))
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.kms_key_id.clone())
            .set_if_match(match &opts.condition {
                Some(Condition::IfMatch(e)) => Some(format!("\"{e}\"")),
                _ => None,
            })
            .set_if_none_match(
                matches!(opts.condition, Some(Condition::IfNoneMatch)).then(|| "*".to_string()),
            )
            .set_checksum_crc64_nvme(opts.checksum.clone())
            .set_checksum_algorithm(self.crc64_trailer(opts.checksum.is_none()))
            .customize()
            .interceptor(UnsignedBodies(self.unsigned_payloads))
            .send()
            .await
            .map_err(|e| self.err(Some(key), e))?;
        Ok(PutResult {
            version_id: out.version_id().map(str::to_string),
            etag: etag(out.e_tag()),
            crc64nvme: full_crc64(out.checksum_crc64_nvme()),
        })
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String, StoreError> {
        // Declared CRC-64/NVME full-object, the store checks the whole at
        // completion and keeps one checksum whatever the parts. A store that
        // does not echo the declaration does not take it (moto 5.1 then
        // answers GETs with a checksum no body matches): that upload is
        // dropped and every later one goes undeclared.
        let state = self.full_object.load(Ordering::Relaxed);
        if self.unsigned_payloads && state != FULL_OBJECT_IGNORED {
            let (id, taken) = self.create_multipart_as(key, opts, true).await?;
            if taken {
                self.full_object.store(FULL_OBJECT_TAKEN, Ordering::Relaxed);
                return Ok(id);
            }
            self.full_object
                .store(FULL_OBJECT_IGNORED, Ordering::Relaxed);
            tracing::info!(bucket = %self.describe, "the store does not take full-object CRC-64/NVME on multipart uploads: their checksums are kept in regionfs's journal and on replicas only");
            self.abort_multipart(key, &id).await?;
        }
        Ok(self.create_multipart_as(key, opts, false).await?.0)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: PutBody,
    ) -> Result<CompletedPart, StoreError> {
        let (body, len) = self.body(body).await?;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(body)
            .content_length(len)
            .set_checksum_algorithm(self.part_crc64())
            .customize()
            .interceptor(UnsignedBodies(self.unsigned_payloads))
            .send()
            .await
            .map_err(|e| self.err(Some(key), e))?;
        Ok(CompletedPart {
            number,
            etag: out.e_tag().unwrap_or_default().to_string(),
            crc64nvme: out
                .checksum_crc64_nvme()
                .and_then(Crc64::from_base64)
                .map(|c| (c, len.max(0) as u64)),
        })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<PutResult, StoreError> {
        // Where the store answered every part's CRC, the whole object's is
        // sent for it to check against the parts it holds and keep.
        let whole = checksum::of_parts(parts.iter().map(|p| p.crc64nvme));
        let parts = parts
            .into_iter()
            .map(|p| {
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(p.number)
                    .e_tag(p.etag)
                    .set_checksum_crc64_nvme(p.crc64nvme.map(|(c, _)| c.to_base64()))
                    .build()
            })
            .collect();
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .set_checksum_crc64_nvme(whole.map(Crc64::to_base64))
            .set_checksum_type(whole.map(|_| ChecksumType::FullObject))
            .send()
            .await
            .map_err(|e| self.err(Some(key), e))?;
        Ok(PutResult {
            version_id: out.version_id().map(str::to_string),
            etag: etag(out.e_tag()),
            crc64nvme: full_crc64(out.checksum_crc64_nvme()),
        })
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Already gone (completed or aborted before a crash): nothing to do.
            Err(e) if e.code() == Some("NoSuchUpload") => Ok(()),
            Err(e) => Err(self.err(Some(key), e)),
        }
    }

    async fn copy(
        &self,
        src_key: &str,
        src_version: Option<&str>,
        dst_key: &str,
        opts: &PutOptions,
    ) -> Result<PutResult, StoreError> {
        let mut source = format!(
            "{}/{}",
            url_encode_path(&self.bucket, false),
            url_encode_path(src_key, true)
        );
        if let Some(v) = src_version {
            source.push_str("?versionId=");
            source.push_str(&url_encode_path(v, false));
        }
        let out = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(dst_key)
            .copy_source(source)
            .metadata_directive(MetadataDirective::Replace)
            .tagging_directive(TaggingDirective::Replace)
            .set_tagging(Some(encode_tags(&opts.tags)))
            .set_content_type(opts.content_type.clone())
            .set_metadata(Some(opts.metadata.clone().into_iter().collect()))
            .set_storage_class(opts.storage_class.as_deref().map(StorageClass::from))
            .set_acl(opts.acl.as_deref().map(ObjectCannedAcl::from))
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.kms_key_id.clone())
            .send()
            .await
            .map_err(|e| self.err(Some(src_key), e))?;
        Ok(PutResult {
            version_id: out.version_id().map(str::to_string),
            etag: etag(out.copy_object_result().and_then(|r| r.e_tag())),
            crc64nvme: full_crc64(
                out.copy_object_result()
                    .and_then(|r| r.checksum_crc64_nvme()),
            ),
        })
    }

    async fn delete(&self, key: &str) -> Result<DeleteResult, StoreError> {
        let out = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.err(Some(key), e))?;
        Ok(DeleteResult {
            version_id: out.version_id().map(str::to_string),
            delete_marker: out.delete_marker().unwrap_or(false),
        })
    }

    async fn delete_version(&self, key: &str, version_id: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .version_id(version_id)
            .send()
            .await
            .map_err(|e| self.err(Some(key), e))?;
        Ok(())
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_string))
            .set_continuation_token(token)
            .set_max_keys(max_keys)
            .send()
            .await
            .map_err(|e| self.err(None, e))?;
        self.whole_listing(
            out.is_truncated(),
            out.contents()
                .iter()
                .map(|o| (o.key(), o.last_modified().is_some())),
        )?;
        Ok(ListPage {
            objects: out
                .contents()
                .iter()
                .map(|o| ListEntry {
                    key: o.key().unwrap_or_default().to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: etag(o.e_tag()),
                    last_modified: time(o.last_modified()),
                })
                .collect(),
            common_prefixes: out
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_string))
                .collect(),
            next_token: if out.is_truncated().unwrap_or(false) {
                out.next_continuation_token().map(str::to_string)
            } else {
                None
            },
        })
    }

    async fn list_versions(
        &self,
        prefix: &str,
        from: Option<(String, Option<String>)>,
        max_keys: Option<i32>,
    ) -> Result<VersionPage, StoreError> {
        let (key_marker, version_marker) = match from {
            Some((k, v)) => (Some(k), v),
            None => (None, None),
        };
        let out = self
            .client
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_key_marker(key_marker)
            .set_version_id_marker(version_marker)
            .set_max_keys(max_keys)
            .send()
            .await
            .map_err(|e| self.err(None, e))?;
        self.whole_listing(
            out.is_truncated(),
            out.versions()
                .iter()
                .map(|v| (v.key(), v.last_modified().is_some()))
                .chain(
                    out.delete_markers()
                        .iter()
                        .map(|d| (d.key(), d.last_modified().is_some())),
                ),
        )?;
        let mut versions: Vec<VersionEntry> = out
            .versions()
            .iter()
            .map(|v| VersionEntry {
                key: v.key().unwrap_or_default().to_string(),
                version_id: v.version_id().unwrap_or("null").to_string(),
                is_latest: v.is_latest().unwrap_or(false),
                is_delete_marker: false,
                size: v.size().unwrap_or(0).max(0) as u64,
                etag: etag(v.e_tag()),
                last_modified: time(v.last_modified()),
            })
            .chain(out.delete_markers().iter().map(|d| VersionEntry {
                key: d.key().unwrap_or_default().to_string(),
                version_id: d.version_id().unwrap_or("null").to_string(),
                is_latest: d.is_latest().unwrap_or(false),
                is_delete_marker: true,
                size: 0,
                etag: String::new(),
                last_modified: time(d.last_modified()),
            }))
            .collect();
        // The wire interleaves both kinds newest-first per key; the SDK splits them.
        // Restore that order: by key, the latest first, then by time, newest first.
        versions.sort_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then(b.is_latest.cmp(&a.is_latest))
                .then(b.last_modified.cmp(&a.last_modified))
        });
        let next = if out.is_truncated().unwrap_or(false) {
            out.next_key_marker().map(|k| {
                (
                    k.to_string(),
                    out.next_version_id_marker().map(str::to_string),
                )
            })
        } else {
            None
        };
        Ok(VersionPage { versions, next })
    }

    async fn get_tags(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        let out = self
            .client
            .get_object_tagging()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.err(Some(key), e))?;
        Ok(out
            .tag_set()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect())
    }

    async fn acl_support(&self) -> Result<AclSupport, StoreError> {
        let out = self
            .client
            .get_bucket_ownership_controls()
            .bucket(&self.bucket)
            .send()
            .await;
        match out {
            Ok(o) => {
                let enforced = o.ownership_controls().is_some_and(|c| {
                    c.rules()
                        .iter()
                        .any(|r| r.object_ownership() == &ObjectOwnership::BucketOwnerEnforced)
                });
                Ok(if enforced {
                    AclSupport::Disabled(
                        "Object Ownership is BucketOwnerEnforced (ACLs disabled)".into(),
                    )
                } else {
                    AclSupport::Enabled
                })
            }
            Err(e) => match self.acl_err(None, e) {
                // No ownership controls: ACLs are on, as before S3 had the setting.
                StoreError::Rejected { code, .. } if code == "OwnershipControlsNotFoundError" => {
                    Ok(AclSupport::Enabled)
                }
                // A store without the setting at all: ACLs are tried, and a
                // refusal then switches them off.
                StoreError::AclNotSupported { .. } => Ok(AclSupport::Enabled),
                StoreError::NotFound { .. } => Ok(AclSupport::Enabled),
                other => Err(other),
            },
        }
    }

    async fn get_acl(&self, key: &str, version_id: Option<&str>) -> Result<Acl, StoreError> {
        let out = self
            .client
            .get_object_acl()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.acl_err(Some(key), e))?;
        let owner = out
            .owner()
            .and_then(|o| o.id())
            .unwrap_or_default()
            .to_string();
        let grants = out
            .grants()
            .iter()
            .filter_map(|g| {
                let who = g.grantee()?;
                let grantee = match who.r#type() {
                    GranteeType::CanonicalUser => Grantee::User(who.id()?.to_string()),
                    GranteeType::Group => Grantee::Group(who.uri()?.to_string()),
                    GranteeType::AmazonCustomerByEmail => {
                        Grantee::Email(who.email_address()?.to_string())
                    }
                    _ => return None,
                };
                Some((grantee, g.permission()?.as_str().to_string()))
            })
            .collect();
        Ok(Acl { owner, grants })
    }

    async fn put_acl(
        &self,
        key: &str,
        version_id: Option<&str>,
        acl: &AclBody,
    ) -> Result<(), StoreError> {
        let grants = match acl {
            AclBody::Canned(c) => {
                return self
                    .acl_request(key, version_id)
                    .acl(ObjectCannedAcl::from(c.as_str()))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| self.acl_err(Some(key), e));
            }
            AclBody::Grants(a) => a,
        };
        // S3 takes grants as a body or as headers; SeaweedFS reads only the
        // body and moto only the headers, each ignoring the other silently.
        // The first time, check which one took and keep using that one.
        let form = self.grant_form.load(Ordering::Relaxed);
        if form != GRANTS_AS_HEADERS {
            self.put_grants_body(key, version_id, grants).await?;
            if form == GRANTS_AS_BODY || self.grants_took(key, version_id, grants).await? {
                self.grant_form.store(GRANTS_AS_BODY, Ordering::Relaxed);
                return Ok(());
            }
        }
        self.put_grants_headers(key, version_id, grants).await?;
        if form == GRANTS_AS_HEADERS || self.grants_took(key, version_id, grants).await? {
            self.grant_form.store(GRANTS_AS_HEADERS, Ordering::Relaxed);
            return Ok(());
        }
        Err(StoreError::AclNotSupported {
            bucket: self.describe.clone(),
            code: "AclIgnored".into(),
            message: "PutObjectAcl succeeded but the grants were not kept".into(),
        })
    }

    async fn put_tags(
        &self,
        key: &str,
        version_id: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let set: Vec<Tag> = tags
            .iter()
            .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
            .collect();
        let tagging = Tagging::builder()
            .set_tag_set(Some(set))
            .build()
            .map_err(|e| StoreError::Rejected {
                bucket: self.describe.clone(),
                status: 0,
                code: "InvalidTag".into(),
                message: e.to_string(),
            })?;
        self.client
            .put_object_tagging()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .tagging(tagging)
            .send()
            .await
            .map_err(|e| self.err(Some(key), e))?;
        Ok(())
    }
}
