//! An in-process versioned bucket: the reference model for unit and model tests.
//! Never used by the product. Version ids are increasing counters, so a test can
//! also check ordering.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::checksum::Crc64;
use super::{
    Acl, AclBody, AclSupport, CompletedPart, DeleteResult, GetObject, GetRequest, Grantee,
    ListEntry, ListPage, ObjectInfo, ObjectStore, PartDigest, PutBody, PutOptions, PutResult,
    VersionEntry, VersionPage, Versioning,
};
use crate::error::StoreError;

#[derive(Clone)]
struct StoredVersion {
    id: String,
    /// `None` for a delete marker.
    data: Option<Bytes>,
    /// What the PUT returned, and HEAD and GET say again.
    etag: String,
    opts: PutOptions,
    at: SystemTime,
    acl: Acl,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Vec<StoredVersion>>,
    uploads: HashMap<String, (String, PutOptions, BTreeMap<i32, Bytes>)>,
    next_id: u64,
}

/// A versioned bucket held in memory.
pub struct MemoryStore {
    name: String,
    state: Mutex<State>,
    /// Off: the bucket answers like S3 with `BucketOwnerEnforced`.
    acls: AtomicBool,
    /// Off: conditional PUTs are answered NotImplemented (older stores).
    conditions: AtomicBool,
}

/// The one account every memory bucket belongs to.
pub(crate) const MEMORY_OWNER: &str = "memory-owner";

const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";
const AUTHENTICATED: &str = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers";

/// The grants S3 gives a canned ACL (bucket owner = object owner here).
fn canned(name: Option<&str>) -> Acl {
    let owner = |p: &str| (Grantee::User(MEMORY_OWNER.into()), p.to_string());
    let group = |g: &str, p: &str| (Grantee::Group(g.into()), p.to_string());
    let mut grants = vec![owner("FULL_CONTROL")];
    match name.unwrap_or("private") {
        "public-read" => grants.push(group(ALL_USERS, "READ")),
        "public-read-write" => {
            grants.push(group(ALL_USERS, "READ"));
            grants.push(group(ALL_USERS, "WRITE"));
        }
        "authenticated-read" => grants.push(group(AUTHENTICATED, "READ")),
        _ => {}
    }
    Acl {
        owner: MEMORY_OWNER.into(),
        grants,
    }
}

impl MemoryStore {
    pub fn new(name: &str) -> MemoryStore {
        MemoryStore {
            name: name.to_string(),
            state: Mutex::new(State::default()),
            acls: AtomicBool::new(true),
            conditions: AtomicBool::new(true),
        }
    }

    #[cfg(test)]
    /// Answers every conditional PUT with NotImplemented, as a store that
    /// does not know `If-Match` / `If-None-Match` does.
    pub(crate) fn refuse_conditions(&self) {
        self.conditions.store(false, Ordering::SeqCst);
    }

    fn check_acl(&self, canned: Option<&str>) -> Result<(), StoreError> {
        match canned {
            Some(c) if c != "bucket-owner-full-control" && !self.acls.load(Ordering::SeqCst) => {
                Err(StoreError::AclNotSupported {
                    bucket: self.name.clone(),
                    code: "AccessControlListNotSupported".into(),
                    message: "The bucket does not allow ACLs".into(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Every version of `key`, oldest first, as (version id, bytes or None for a marker).
    pub fn history(&self, key: &str) -> Vec<(String, Option<Bytes>)> {
        let s = self.state.lock().unwrap();
        s.objects
            .get(key)
            .map(|v| v.iter().map(|x| (x.id.clone(), x.data.clone())).collect())
            .unwrap_or_default()
    }

    #[cfg(test)]
    /// Multipart uploads neither completed nor aborted: (key, parts uploaded).
    pub(crate) fn open_uploads(&self) -> Vec<(String, usize)> {
        let s = self.state.lock().unwrap();
        s.uploads
            .values()
            .map(|(key, _, parts)| (key.clone(), parts.len()))
            .collect()
    }

    /// S3's conditional PUT: checked against the current version, as the
    /// write would replace it (the same lock is not held across both, which
    /// a test store can afford).
    fn check_condition(&self, key: &str, c: Option<&super::Condition>) -> Result<(), StoreError> {
        let Some(c) = c else { return Ok(()) };
        if !self.conditions.load(Ordering::SeqCst) {
            return Err(StoreError::Rejected {
                bucket: self.name.clone(),
                status: 501,
                code: "NotImplemented".into(),
                message: "A header you provided implies functionality that is not implemented"
                    .into(),
            });
        }
        let s = self.state.lock().unwrap();
        let current = s
            .objects
            .get(key)
            .and_then(|v| v.last())
            .filter(|v| v.data.is_some());
        let holds = match c {
            super::Condition::IfNoneMatch => current.is_none(),
            super::Condition::IfMatch(e) => current.is_some_and(|v| &v.etag == e),
        };
        if holds {
            Ok(())
        } else {
            Err(StoreError::PreconditionFailed {
                bucket: self.name.clone(),
                key: key.to_string(),
            })
        }
    }

    fn not_found(&self, key: &str) -> StoreError {
        StoreError::NotFound {
            bucket: self.name.clone(),
            key: key.to_string(),
        }
    }

    fn add_version(&self, key: &str, data: Option<Bytes>, opts: PutOptions) -> (String, String) {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let id = format!("{:016}", s.next_id);
        let etag = data
            .as_ref()
            .map(|d| format!("{:x}", d.len() as u64 ^ s.next_id))
            .unwrap_or_default();
        s.objects
            .entry(key.to_string())
            .or_default()
            .push(StoredVersion {
                id: id.clone(),
                data,
                etag: etag.clone(),
                acl: canned(opts.acl.as_deref()),
                opts,
                at: SystemTime::now(),
            });
        (id, etag)
    }

    fn find(&self, key: &str, version_id: Option<&str>) -> Result<StoredVersion, StoreError> {
        let s = self.state.lock().unwrap();
        let versions = s.objects.get(key).ok_or_else(|| self.not_found(key))?;
        let v = match version_id {
            Some(id) => versions.iter().find(|v| v.id == id),
            None => versions.last(),
        }
        .ok_or_else(|| self.not_found(key))?;
        if v.data.is_none() {
            return Err(self.not_found(key));
        }
        Ok(v.clone())
    }

    fn info(key: &str, v: &StoredVersion) -> ObjectInfo {
        let data = v.data.as_ref().map(|d| d.len()).unwrap_or(0);
        ObjectInfo {
            key: key.to_string(),
            size: data as u64,
            etag: v.etag.clone(),
            version_id: Some(v.id.clone()),
            last_modified: Some(v.at),
            content_type: v.opts.content_type.clone(),
            metadata: v.opts.metadata.clone(),
            storage_class: v.opts.storage_class.clone(),
            // Like S3 since 2025: every version has a full-object CRC-64/NVME.
            crc64nvme: v.data.as_ref().map(|d| Crc64::of(d).to_base64()),
            other_checksum: false,
        }
    }

    /// Refuses bytes that do not match the checksum they were sent with.
    fn check_digest(
        &self,
        key: &str,
        data: &[u8],
        opts: &PutOptions,
    ) -> Result<String, StoreError> {
        let have = Crc64::of(data).to_base64();
        match &opts.checksum {
            Some(want) if *want != have => Err(StoreError::BadDigest {
                bucket: self.describe(),
                key: key.to_string(),
                message: format!("the CRC-64/NVME sent was {want}, the bytes' is {have}"),
            }),
            _ => Ok(have),
        }
    }

    /// Bytes `[offset, offset + len)` of a local file, as a PUT sends them.
    fn read_range(
        &self,
        path: &std::path::Path,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StoreError> {
        let mut buf = vec![0; len as usize];
        std::fs::File::open(path)
            .and_then(|f| f.read_exact_at(&mut buf, offset))
            .map_err(|source| StoreError::LocalIo {
                bucket: self.name.clone(),
                source,
            })?;
        Ok(Bytes::from(buf))
    }

    async fn read_body(&self, body: PutBody) -> Result<Bytes, StoreError> {
        match body {
            PutBody::Bytes(b) => Ok(b),
            PutBody::File { path, offset, len } => self.read_range(&path, offset, len),
            PutBody::StableFile {
                path,
                len,
                unchanged,
            } => {
                let buf = self.read_range(&path, 0, len)?;
                if !unchanged() {
                    return Err(StoreError::LocalIo {
                        bucket: self.name.clone(),
                        source: std::io::Error::other("the file changed while it was sent"),
                    });
                }
                Ok(buf)
            }
            PutBody::HashedFile {
                path,
                offset,
                len,
                digest,
            } => {
                let buf = self.read_range(&path, offset, len)?;
                digest.set(PartDigest::of_bytes(&buf));
                Ok(buf)
            }
            PutBody::Stream { body, .. } => {
                body.collect()
                    .await
                    .map(|d| d.into_bytes())
                    .map_err(|e| StoreError::Unreachable {
                        bucket: self.name.clone(),
                        message: e.to_string(),
                    })
            }
        }
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    fn describe(&self) -> String {
        format!("`{}` (memory)", self.name)
    }

    async fn versioning(&self) -> Result<Versioning, StoreError> {
        Ok(Versioning::Enabled)
    }

    async fn head(&self, key: &str, version_id: Option<&str>) -> Result<ObjectInfo, StoreError> {
        let v = self.find(key, version_id)?;
        Ok(Self::info(key, &v))
    }

    async fn get(&self, key: &str, req: GetRequest) -> Result<GetObject, StoreError> {
        let v = self.find(key, req.version_id.as_deref())?;
        let mut info = Self::info(key, &v);
        let data = v.data.unwrap_or_default();
        let data = match req.range {
            Some((a, b)) => {
                let end = (b as usize + 1).min(data.len());
                data.slice((a as usize).min(end)..end)
            }
            None => data,
        };
        info.size = data.len() as u64;
        Ok(GetObject {
            info,
            body: ByteStream::from(data),
        })
    }

    async fn put(
        &self,
        key: &str,
        body: PutBody,
        opts: &PutOptions,
    ) -> Result<PutResult, StoreError> {
        self.check_acl(opts.acl.as_deref())?;
        let data = self.read_body(body).await?;
        let crc = self.check_digest(key, &data, opts)?;
        self.check_condition(key, opts.condition.as_ref())?;
        let (id, etag) = self.add_version(key, Some(data), opts.clone());
        Ok(PutResult {
            version_id: Some(id),
            etag,
            crc64nvme: Some(crc),
        })
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String, StoreError> {
        self.check_acl(opts.acl.as_deref())?;
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let id = format!("upload-{}", s.next_id);
        s.uploads
            .insert(id.clone(), (key.to_string(), opts.clone(), BTreeMap::new()));
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: PutBody,
    ) -> Result<CompletedPart, StoreError> {
        let data = self.read_body(body).await?;
        let mut s = self.state.lock().unwrap();
        let up = s
            .uploads
            .get_mut(upload_id)
            .ok_or_else(|| self.not_found(key))?;
        let crc = (Crc64::of(&data), data.len() as u64);
        up.2.insert(number, data);
        Ok(CompletedPart {
            number,
            etag: format!("part-{number}"),
            crc64nvme: Some(crc),
        })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<PutResult, StoreError> {
        let (_, opts, stored) = self
            .state
            .lock()
            .unwrap()
            .uploads
            .remove(upload_id)
            .ok_or_else(|| self.not_found(key))?;
        let mut all = Vec::new();
        for p in parts {
            all.extend_from_slice(stored.get(&p.number).ok_or_else(|| self.not_found(key))?);
        }
        let crc = Crc64::of(&all).to_base64();
        let (id, etag) = self.add_version(key, Some(Bytes::from(all)), opts);
        Ok(PutResult {
            version_id: Some(id),
            etag,
            crc64nvme: Some(crc),
        })
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.state.lock().unwrap().uploads.remove(upload_id);
        Ok(())
    }

    async fn copy(
        &self,
        src_key: &str,
        src_version: Option<&str>,
        dst_key: &str,
        opts: &PutOptions,
    ) -> Result<PutResult, StoreError> {
        self.check_acl(opts.acl.as_deref())?;
        let v = self.find(src_key, src_version)?;
        let crc = v.data.as_ref().map(|d| Crc64::of(d).to_base64());
        let (id, etag) = self.add_version(dst_key, v.data, opts.clone());
        Ok(PutResult {
            version_id: Some(id),
            etag,
            crc64nvme: crc,
        })
    }

    async fn delete(&self, key: &str) -> Result<DeleteResult, StoreError> {
        let (id, _) = self.add_version(key, None, PutOptions::default());
        Ok(DeleteResult {
            version_id: Some(id),
            delete_marker: true,
        })
    }

    async fn delete_version(&self, key: &str, version_id: &str) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        if let Some(v) = s.objects.get_mut(key) {
            v.retain(|x| x.id != version_id);
        }
        Ok(())
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        let s = self.state.lock().unwrap();
        let max = max_keys.unwrap_or(1000).max(1) as usize;
        let mut page = ListPage::default();
        let mut count = 0;
        for (key, versions) in s.objects.range(prefix.to_string()..) {
            if !key.starts_with(prefix) {
                break;
            }
            if token.as_deref().is_some_and(|t| key.as_str() <= t) {
                continue;
            }
            let Some(last) = versions.last().filter(|v| v.data.is_some()) else {
                continue;
            };
            let rest = &key[prefix.len()..];
            if let Some(d) =
                delimiter.and_then(|d| rest.find(d).map(|i| &key[..prefix.len() + i + d.len()]))
            {
                if page.common_prefixes.last().map(String::as_str) != Some(d) {
                    if count == max {
                        page.next_token =
                            Some(page.common_prefixes.last().cloned().unwrap_or_default());
                        break;
                    }
                    page.common_prefixes.push(d.to_string());
                    count += 1;
                }
                continue;
            }
            if count == max {
                page.next_token = page.objects.last().map(|o| o.key.clone());
                break;
            }
            page.objects.push(ListEntry {
                key: key.clone(),
                size: last.data.as_ref().map(|d| d.len()).unwrap_or(0) as u64,
                etag: last.etag.clone(),
                last_modified: Some(last.at),
            });
            count += 1;
        }
        Ok(page)
    }

    async fn list_versions(
        &self,
        prefix: &str,
        from: Option<(String, Option<String>)>,
        max_keys: Option<i32>,
    ) -> Result<VersionPage, StoreError> {
        let s = self.state.lock().unwrap();
        let max = max_keys.unwrap_or(1000).max(1) as usize;
        let mut all = Vec::new();
        for (key, versions) in s.objects.range(prefix.to_string()..) {
            if !key.starts_with(prefix) {
                break;
            }
            let n = versions.len();
            for (i, v) in versions.iter().enumerate().rev() {
                all.push(VersionEntry {
                    key: key.clone(),
                    version_id: v.id.clone(),
                    is_latest: i + 1 == n,
                    is_delete_marker: v.data.is_none(),
                    size: v.data.as_ref().map(|d| d.len()).unwrap_or(0) as u64,
                    etag: v.etag.clone(),
                    last_modified: Some(v.at),
                });
            }
        }
        // S3's markers: after that version of the key, or, with no version,
        // after every version of the key.
        let start = match &from {
            Some((k, Some(v))) => all
                .iter()
                .position(|e| &e.key == k && &e.version_id == v)
                .map(|i| i + 1)
                .unwrap_or(0),
            Some((k, None)) => all.iter().position(|e| &e.key > k).unwrap_or(all.len()),
            None => 0,
        };
        let versions: Vec<VersionEntry> = all.iter().skip(start).take(max).cloned().collect();
        let next = (start + max < all.len())
            .then(|| {
                versions
                    .last()
                    .map(|l| (l.key.clone(), Some(l.version_id.clone())))
            })
            .flatten();
        Ok(VersionPage { versions, next })
    }

    async fn get_tags(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        Ok(self.find(key, version_id)?.opts.tags)
    }

    async fn acl_support(&self) -> Result<AclSupport, StoreError> {
        Ok(if self.acls.load(Ordering::SeqCst) {
            AclSupport::Enabled
        } else {
            AclSupport::Disabled("Object Ownership is BucketOwnerEnforced (ACLs disabled)".into())
        })
    }

    async fn get_acl(&self, key: &str, version_id: Option<&str>) -> Result<Acl, StoreError> {
        Ok(self.find(key, version_id)?.acl)
    }

    async fn put_acl(
        &self,
        key: &str,
        version_id: Option<&str>,
        acl: &AclBody,
    ) -> Result<(), StoreError> {
        let new = match acl {
            AclBody::Canned(c) => {
                self.check_acl(Some(c))?;
                canned(Some(c))
            }
            AclBody::Grants(a) => {
                self.check_acl(Some("grants"))?;
                a.clone()
            }
        };
        let mut s = self.state.lock().unwrap();
        let versions = s.objects.get_mut(key).ok_or_else(|| self.not_found(key))?;
        let v = match version_id {
            Some(id) => versions.iter_mut().find(|v| v.id == id),
            None => versions.last_mut(),
        };
        v.ok_or_else(|| self.not_found(key))?.acl = new;
        Ok(())
    }

    async fn put_tags(
        &self,
        key: &str,
        version_id: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        let versions = s.objects.get_mut(key).ok_or_else(|| self.not_found(key))?;
        let v = match version_id {
            Some(id) => versions.iter_mut().find(|v| v.id == id),
            None => versions.last_mut(),
        };
        v.ok_or_else(|| self.not_found(key))?.opts.tags = tags.clone();
        Ok(())
    }
}
