//! Fault injection for tests: wraps a store and fails calls on command, either
//! the next N writes with a transient error, or every write with a permanent
//! one; or cuts every body it serves short (the connection dropped midway).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::{
    CompletedPart, DeleteResult, GetObject, GetRequest, ListPage, ObjectInfo, ObjectStore, PutBody,
    PutOptions, PutResult, VersionPage, Versioning,
};
use crate::error::StoreError;

pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    transient_left: AtomicU64,
    permanent: AtomicBool,
    /// PUTs of keys under this prefix fail with AccessDenied.
    refused_prefix: std::sync::Mutex<Option<String>>,
    /// Writes attempted (failed or not).
    pub attempts: AtomicU64,
    /// Reads of objects (HEAD, GET, tags, ACL): never failed.
    pub reads: AtomicU64,
    /// Keys whose bytes were read (GET), in order.
    pub got: std::sync::Mutex<Vec<String>>,
    /// Run at the start of the next write (a PUT, part or multipart step),
    /// before it reaches the store: what a concurrent writer would do.
    before_write: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// GET bodies end with an error after half their bytes.
    cut: AtomicBool,
    /// Ranged GET bodies arrive with their first byte changed.
    flip: AtomicBool,
}

/// Half a body, then the error of a connection that dropped.
struct CutBody {
    first: Option<bytes::Bytes>,
    failed: bool,
}

impl http_body::Body for CutBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if let Some(b) = self.first.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(b))));
        }
        if self.failed {
            return std::task::Poll::Ready(None);
        }
        self.failed = true;
        std::task::Poll::Ready(Some(Err(
            "connection closed before the body was complete (injected)".into(),
        )))
    }
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> FaultyStore {
        FaultyStore {
            inner,
            transient_left: AtomicU64::new(0),
            permanent: AtomicBool::new(false),
            refused_prefix: std::sync::Mutex::new(None),
            attempts: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            got: std::sync::Mutex::new(Vec::new()),
            before_write: std::sync::Mutex::new(None),
            cut: AtomicBool::new(false),
            flip: AtomicBool::new(false),
        }
    }

    /// Every ranged GET body arrives with its first byte inverted (a proxy
    /// that garbles bytes), until off.
    pub fn flip_ranges(&self, on: bool) {
        self.flip.store(on, Ordering::SeqCst);
    }

    /// Every GET body ends with an error after half its bytes, until off.
    pub fn cut_bodies(&self, on: bool) {
        self.cut.store(on, Ordering::SeqCst);
    }

    #[cfg(test)]
    /// Runs `f` at the start of the next write.
    pub(crate) fn before_next_write(&self, f: impl FnOnce() + Send + 'static) {
        *self.before_write.lock().unwrap() = Some(Box::new(f));
    }

    /// The next `n` writes fail with a 503.
    pub fn fail_next(&self, n: u64) {
        self.transient_left.store(n, Ordering::SeqCst);
    }

    /// Every write fails with AccessDenied until switched off.
    pub fn fail_permanently(&self, on: bool) {
        self.permanent.store(on, Ordering::SeqCst);
    }

    #[cfg(test)]
    /// PUTs of keys under `prefix` fail with AccessDenied (a bucket policy
    /// refusing them), until set to `None`.
    pub(crate) fn refuse_prefix(&self, prefix: Option<&str>) {
        *self.refused_prefix.lock().unwrap() = prefix.map(str::to_string);
    }

    fn check(&self) -> Result<(), StoreError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if let Some(f) = self.before_write.lock().unwrap().take() {
            f();
        }
        if self.permanent.load(Ordering::SeqCst) {
            return Err(StoreError::AccessDenied {
                bucket: self.inner.describe(),
                code: "AccessDenied".into(),
                message: "injected".into(),
            });
        }
        let left = self.transient_left.load(Ordering::SeqCst);
        if left > 0 {
            self.transient_left.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::Server {
                bucket: self.inner.describe(),
                status: 503,
                code: "ServiceUnavailable".into(),
                message: "injected".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn versioning(&self) -> Result<Versioning, StoreError> {
        self.inner.versioning().await
    }
    async fn head(&self, key: &str, v: Option<&str>) -> Result<ObjectInfo, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.head(key, v).await
    }
    async fn get(&self, key: &str, req: GetRequest) -> Result<GetObject, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.got.lock().unwrap().push(key.to_string());
        let ranged = req.range.is_some();
        let mut obj = self.inner.get(key, req).await?;
        if ranged && self.flip.load(Ordering::SeqCst) {
            let mut all = obj
                .body
                .collect()
                .await
                .map(|d| d.into_bytes().to_vec())
                .unwrap_or_default();
            if let Some(b) = all.first_mut() {
                *b = !*b;
            }
            obj.body = aws_sdk_s3::primitives::ByteStream::from(all);
        }
        if self.cut.load(Ordering::SeqCst) {
            let all = obj
                .body
                .collect()
                .await
                .map(|d| d.into_bytes())
                .unwrap_or_default();
            let half = all.slice(..all.len() / 2);
            obj.body = aws_sdk_s3::primitives::ByteStream::new(
                aws_sdk_s3::primitives::SdkBody::from_body_1_x(CutBody {
                    first: Some(half),
                    failed: false,
                }),
            );
        }
        Ok(obj)
    }
    async fn put(
        &self,
        key: &str,
        body: PutBody,
        opts: &PutOptions,
    ) -> Result<PutResult, StoreError> {
        self.check()?;
        let refused = self.refused_prefix.lock().unwrap().clone();
        if refused.is_some_and(|p| key.starts_with(&p)) {
            return Err(StoreError::AccessDenied {
                bucket: self.inner.describe(),
                code: "AccessDenied".into(),
                message: "injected: prefix refused".into(),
            });
        }
        self.inner.put(key, body, opts).await
    }
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String, StoreError> {
        self.check()?;
        self.inner.create_multipart(key, opts).await
    }
    async fn upload_part(
        &self,
        key: &str,
        id: &str,
        n: i32,
        body: PutBody,
    ) -> Result<CompletedPart, StoreError> {
        self.check()?;
        self.inner.upload_part(key, id, n, body).await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<PutResult, StoreError> {
        self.check()?;
        self.inner.complete_multipart(key, id, parts).await
    }
    async fn abort_multipart(&self, key: &str, id: &str) -> Result<(), StoreError> {
        self.check()?;
        self.inner.abort_multipart(key, id).await
    }
    async fn copy(
        &self,
        s: &str,
        v: Option<&str>,
        d: &str,
        o: &PutOptions,
    ) -> Result<PutResult, StoreError> {
        self.check()?;
        self.inner.copy(s, v, d, o).await
    }
    async fn delete(&self, key: &str) -> Result<DeleteResult, StoreError> {
        self.check()?;
        self.inner.delete(key).await
    }
    async fn delete_version(&self, key: &str, v: &str) -> Result<(), StoreError> {
        self.check()?;
        self.inner.delete_version(key, v).await
    }
    async fn list(
        &self,
        p: &str,
        d: Option<&str>,
        t: Option<String>,
        m: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        self.inner.list(p, d, t, m).await
    }
    async fn list_versions(
        &self,
        p: &str,
        f: Option<(String, Option<String>)>,
        m: Option<i32>,
    ) -> Result<VersionPage, StoreError> {
        self.inner.list_versions(p, f, m).await
    }
    async fn get_tags(
        &self,
        key: &str,
        v: Option<&str>,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get_tags(key, v).await
    }
    async fn acl_support(&self) -> Result<super::AclSupport, StoreError> {
        self.inner.acl_support().await
    }
    async fn get_acl(&self, key: &str, v: Option<&str>) -> Result<super::Acl, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get_acl(key, v).await
    }
    async fn put_acl(
        &self,
        key: &str,
        v: Option<&str>,
        acl: &super::AclBody,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put_acl(key, v, acl).await
    }
    async fn put_tags(
        &self,
        key: &str,
        v: Option<&str>,
        t: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put_tags(key, v, t).await
    }
}
