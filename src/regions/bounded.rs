//! A replica mount with `read.max_staleness`: reads go to the replica while its
//! known lag is within the bound, and to the source while it is not.
//!
//! The lag is the age of the replicator's heartbeat in the replica
//! (`replicator::heartbeat`): "every version uploaded before T is here". With
//! no heartbeat the lag is unknown and the replica is read (the bound applies
//! to what is known); when the replica cannot be reached at all, the source is
//! read.
//!
//! Version ids differ between the two buckets, so the ids this store hands out
//! are tagged with the bucket they came from (`r:` or `s:`). An id from the
//! other bucket is not sent: that bucket's current object is read instead, and
//! the mount's ETag check on the download catches a difference (the next
//! lookup then takes the new attributes).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::StoreError;
use crate::store::{
    Acl, AclBody, AclSupport, CompletedPart, DeleteResult, GetObject, GetRequest, ListPage,
    ObjectInfo, ObjectStore, PutBody, PutOptions, PutResult, VersionPage, Versioning,
};

pub struct BoundedStaleness {
    replica: Arc<dyn ObjectStore>,
    source: Arc<dyn ObjectStore>,
    max: Duration,
    prefix: String,
    use_source: AtomicBool,
    /// Known lag in ms; -1 when unknown.
    lag_ms: AtomicI64,
}

impl BoundedStaleness {
    pub fn new(
        replica: Arc<dyn ObjectStore>,
        source: Arc<dyn ObjectStore>,
        max: Duration,
        prefix: &str,
    ) -> Arc<BoundedStaleness> {
        Arc::new(BoundedStaleness {
            replica,
            source,
            max,
            prefix: prefix.to_string(),
            use_source: AtomicBool::new(false),
            lag_ms: AtomicI64::new(-1),
        })
    }

    /// Reads the heartbeat every [`crate::replicator::heartbeat::INTERVAL`].
    pub(crate) fn start_watch(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.check().await;
                tokio::time::sleep(crate::replicator::heartbeat::INTERVAL).await;
            }
        });
    }

    /// One look at the replica's heartbeat; switches where reads go.
    pub async fn check(&self) {
        use crate::replicator::heartbeat;
        let key = heartbeat::key(&self.prefix);
        let (lag, reachable) = match self.replica.get(&key, GetRequest::default()).await {
            Ok(obj) => {
                let hb: Option<heartbeat::Heartbeat> = match obj.bytes().await {
                    Ok(b) => serde_json::from_slice(&b).ok(),
                    Err(_) => None,
                };
                (
                    hb.map(|h| (crate::clock::now_ms() - h.until_ms).max(0)),
                    true,
                )
            }
            Err(e) if e.is_not_found() => (None, true),
            Err(e) if e.is_permanent() => (None, true),
            Err(_) => (None, false),
        };
        self.lag_ms.store(lag.unwrap_or(-1), Ordering::SeqCst);
        let stale = !reachable || lag.is_some_and(|l| l as u128 > self.max.as_millis());
        let was = self.use_source.swap(stale, Ordering::SeqCst);
        if was != stale {
            if stale {
                tracing::warn!(lag_ms = ?lag, reachable, max = ?self.max, "replica is behind read.max_staleness (or unreachable): reading the source");
            } else {
                tracing::info!(lag_ms = ?lag, "replica within read.max_staleness again: reading the replica");
            }
        }
    }

    /// (reading the source now, the replica's known lag in seconds).
    pub fn state(&self) -> (bool, Option<f64>) {
        let lag = self.lag_ms.load(Ordering::SeqCst);
        (
            self.use_source.load(Ordering::SeqCst),
            (lag >= 0).then(|| lag as f64 / 1000.0),
        )
    }

    fn current(&self) -> (&dyn ObjectStore, &'static str) {
        if self.use_source.load(Ordering::SeqCst) {
            (self.source.as_ref(), "s:")
        } else {
            (self.replica.as_ref(), "r:")
        }
    }

    /// The version id to send to the current bucket: ours untagged, another
    /// bucket's dropped (read its current object).
    fn version_for(tag: &str, v: Option<&str>) -> Option<String> {
        v.and_then(|v| v.strip_prefix(tag)).map(str::to_string)
    }

    fn tagged(tag: &str, mut info: ObjectInfo) -> ObjectInfo {
        info.version_id = info.version_id.map(|v| format!("{tag}{v}"));
        info
    }

    fn refused(&self) -> StoreError {
        StoreError::Rejected {
            bucket: self.replica.describe(),
            status: 0,
            code: "ReadOnlyMount".into(),
            message: "a replica mount is read-only".into(),
        }
    }
}

crate::store::read_only_store! {
    impl ObjectStore for BoundedStaleness {
    fn describe(&self) -> String {
        self.current().0.describe()
    }

    async fn versioning(&self) -> Result<Versioning, StoreError> {
        self.current().0.versioning().await
    }

    async fn head(&self, key: &str, version_id: Option<&str>) -> Result<ObjectInfo, StoreError> {
        let (s, tag) = self.current();
        let v = Self::version_for(tag, version_id);
        Ok(Self::tagged(tag, s.head(key, v.as_deref()).await?))
    }

    async fn get(&self, key: &str, mut req: GetRequest) -> Result<GetObject, StoreError> {
        let (s, tag) = self.current();
        req.version_id = Self::version_for(tag, req.version_id.as_deref());
        let mut obj = s.get(key, req).await?;
        obj.info = Self::tagged(tag, obj.info);
        Ok(obj)
    }


    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        self.current()
            .0
            .list(prefix, delimiter, token, max_keys)
            .await
    }

    async fn list_versions(
        &self,
        prefix: &str,
        from: Option<(String, Option<String>)>,
        max_keys: Option<i32>,
    ) -> Result<VersionPage, StoreError> {
        let (s, tag) = self.current();
        let from = from.map(|(k, v)| (k, Self::version_for(tag, v.as_deref())));
        let mut page = s.list_versions(prefix, from, max_keys).await?;
        for v in &mut page.versions {
            v.version_id = format!("{tag}{}", v.version_id);
        }
        page.next = page.next.map(|(k, v)| (k, v.map(|v| format!("{tag}{v}"))));
        Ok(page)
    }

    async fn get_tags(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        let (s, tag) = self.current();
        s.get_tags(key, Self::version_for(tag, version_id).as_deref())
            .await
    }

    async fn acl_support(&self) -> Result<AclSupport, StoreError> {
        self.current().0.acl_support().await
    }

    async fn get_acl(&self, key: &str, version_id: Option<&str>) -> Result<Acl, StoreError> {
        let (s, tag) = self.current();
        s.get_acl(key, Self::version_for(tag, version_id).as_deref())
            .await
    }
    }
}
