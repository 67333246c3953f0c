//! What goes out with a write: request bodies from memory or local files,
//! and the CRC-64/NVME each carries (a trailer the SDK computes as the
//! bytes go; multipart uploads declared full-object where the store takes
//! it, see `checksum`).

use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumType, ObjectCannedAcl, StorageClass};
use std::sync::atomic::Ordering;

use super::super::{encode_tags, PutBody, PutOptions};
use super::S3Store;
use crate::error::StoreError;

/// What [`S3Store::full_object`] knows.
pub(super) const FULL_OBJECT_UNKNOWN: u8 = 0;
pub(super) const FULL_OBJECT_TAKEN: u8 = 1;
pub(super) const FULL_OBJECT_IGNORED: u8 = 2;

/// Bytes read from a cache file at a time for an upload: each read is a hop
/// to a blocking thread and back, which at the SDK's 64 KiB cost more CPU
/// than the copy.
const FILE_READ: usize = 256 << 10;

impl S3Store {
    /// CRC-64/NVME computed by the SDK as the body goes (a trailer), where
    /// the bucket sends checksums and `wanted`.
    pub(super) fn crc64_trailer(&self, wanted: bool) -> Option<ChecksumAlgorithm> {
        (wanted && self.unsigned_payloads).then_some(ChecksumAlgorithm::Crc64Nvme)
    }

    /// Parts carry their CRC where uploads are declared full-object.
    pub(super) fn part_crc64(&self) -> Option<ChecksumAlgorithm> {
        self.crc64_trailer(self.full_object.load(Ordering::Relaxed) == FULL_OBJECT_TAKEN)
    }

    /// CreateMultipartUpload, `declared` CRC-64/NVME full-object or not;
    /// returns the upload id and whether the store echoed the declaration.
    pub(super) async fn create_multipart_as(
        &self,
        key: &str,
        opts: &PutOptions,
        declared: bool,
    ) -> Result<(String, bool), StoreError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_content_type(opts.content_type.clone())
            .set_metadata(Some(opts.metadata.clone().into_iter().collect()))
            .set_tagging((!opts.tags.is_empty()).then(|| encode_tags(&opts.tags)))
            .set_storage_class(opts.storage_class.as_deref().map(StorageClass::from))
            .set_acl(opts.acl.as_deref().map(ObjectCannedAcl::from))
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.kms_key_id.clone())
            .set_checksum_algorithm(declared.then_some(ChecksumAlgorithm::Crc64Nvme))
            .set_checksum_type(declared.then_some(ChecksumType::FullObject))
            .send()
            .await
            .map_err(|e| self.err(Some(key), e))?;
        let taken = out.checksum_algorithm() == Some(&ChecksumAlgorithm::Crc64Nvme);
        let id = out
            .upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Rejected {
                bucket: self.describe.clone(),
                status: 200,
                code: "NoUploadId".into(),
                message: "CreateMultipartUpload answered without an upload id".into(),
            })?;
        Ok((id, taken))
    }

    fn open_local(&self, path: &std::path::Path) -> Result<std::fs::File, StoreError> {
        std::fs::File::open(path).map_err(|e| StoreError::LocalIo {
            bucket: self.describe.clone(),
            source: std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
        })
    }

    pub(super) async fn body(&self, body: PutBody) -> Result<(ByteStream, i64), StoreError> {
        match body {
            PutBody::Bytes(b) => {
                let n = b.len() as i64;
                Ok((ByteStream::from(b), n))
            }
            PutBody::File { path, offset, len } => {
                let s = ByteStream::read_from()
                    .path(&path)
                    .offset(offset)
                    .length(Length::Exact(len))
                    .buffer_size(FILE_READ)
                    .build()
                    .await
                    .map_err(|e| StoreError::LocalIo {
                        bucket: self.describe.clone(),
                        source: std::io::Error::other(format!("{}: {e}", path.display())),
                    })?;
                Ok((s, len as i64))
            }
            PutBody::StableFile {
                path,
                len,
                unchanged,
            } => {
                let file = self.open_local(&path)?;
                Ok((
                    super::super::stable::body(file, path, len, unchanged),
                    len as i64,
                ))
            }
            PutBody::HashedFile {
                path,
                offset,
                len,
                digest,
            } => {
                let file = self.open_local(&path)?;
                let body = super::super::stable::hashed_body(file, path, offset, len, digest);
                Ok((body, len as i64))
            }
            PutBody::Stream { body, len } => Ok((body, len as i64)),
        }
    }
}
