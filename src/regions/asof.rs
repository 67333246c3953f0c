//! A read-only view of a versioned bucket as it was at one instant
//! (`regionfs mount --as-of`): every key shows its newest version written at
//! or before that time, and keys whose newest such entry is a delete marker
//! (or that did not exist yet) are absent.
//!
//! Listing reads every version under the listed prefix (ListObjectVersions has
//! no "as of"), so a listing costs in proportion to the history below it.
//! Writes are refused: the mount is read-only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::StoreError;
use crate::store::{
    Acl, AclBody, AclSupport, CompletedPart, DeleteResult, GetObject, GetRequest, ListEntry,
    ListPage, ObjectInfo, ObjectStore, PutBody, PutOptions, PutResult, VersionEntry, VersionPage,
    Versioning,
};

pub(crate) struct AsOfStore {
    inner: Arc<dyn ObjectStore>,
    at: SystemTime,
}

impl AsOfStore {
    pub fn new(inner: Arc<dyn ObjectStore>, at: SystemTime) -> AsOfStore {
        AsOfStore { inner, at }
    }

    fn refused(&self) -> StoreError {
        StoreError::Rejected {
            bucket: self.inner.describe(),
            status: 0,
            code: "ReadOnlyView".into(),
            message: "a point-in-time view is read-only".into(),
        }
    }

    /// Every entry under `prefix` (all pages), newest first within a key.
    async fn history(&self, prefix: &str) -> Result<Vec<VersionEntry>, StoreError> {
        let mut out = Vec::new();
        let mut from = None;
        loop {
            let page = self.inner.list_versions(prefix, from, None).await?;
            out.extend(page.versions);
            match page.next {
                Some(n) => from = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// The version of each key under `prefix` current at the instant (delete
    /// markers excluded), by key.
    async fn state(&self, prefix: &str) -> Result<BTreeMap<String, VersionEntry>, StoreError> {
        let mut seen = BTreeSet::new();
        let mut out = BTreeMap::new();
        for v in self.history(prefix).await? {
            let written = v.last_modified.unwrap_or(SystemTime::UNIX_EPOCH);
            if written > self.at || seen.contains(&v.key) {
                continue;
            }
            // Newest first within a key: the first one at or before the
            // instant decides.
            seen.insert(v.key.clone());
            if !v.is_delete_marker {
                out.insert(v.key.clone(), v);
            }
        }
        Ok(out)
    }

    async fn version_of(&self, key: &str) -> Result<String, StoreError> {
        self.state(key)
            .await?
            .remove(key)
            .map(|v| v.version_id)
            .ok_or_else(|| StoreError::NotFound {
                bucket: self.inner.describe(),
                key: key.to_string(),
            })
    }
}

crate::store::read_only_store! {
    impl ObjectStore for AsOfStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn versioning(&self) -> Result<Versioning, StoreError> {
        self.inner.versioning().await
    }

    async fn head(&self, key: &str, version_id: Option<&str>) -> Result<ObjectInfo, StoreError> {
        match version_id {
            Some(v) => self.inner.head(key, Some(v)).await,
            None => {
                let v = self.version_of(key).await?;
                self.inner.head(key, Some(&v)).await
            }
        }
    }

    async fn get(&self, key: &str, mut req: GetRequest) -> Result<GetObject, StoreError> {
        if req.version_id.is_none() {
            req.version_id = Some(self.version_of(key).await?);
        }
        self.inner.get(key, req).await
    }


    /// The whole listing in one page (the state is computed from the full
    /// history under the prefix anyway).
    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        _token: Option<String>,
        _max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        let mut page = ListPage::default();
        let mut dirs = BTreeSet::new();
        for (key, v) in self.state(prefix).await? {
            let rest = &key[prefix.len()..];
            if let Some(d) = delimiter.and_then(|d| rest.find(d).map(|i| (i, d))) {
                dirs.insert(format!("{prefix}{}", &rest[..d.0 + d.1.len()]));
                continue;
            }
            page.objects.push(ListEntry {
                key,
                size: v.size,
                etag: v.etag,
                last_modified: v.last_modified,
            });
        }
        page.common_prefixes = dirs.into_iter().collect();
        Ok(page)
    }

    async fn list_versions(
        &self,
        prefix: &str,
        from: Option<(String, Option<String>)>,
        max_keys: Option<i32>,
    ) -> Result<VersionPage, StoreError> {
        self.inner.list_versions(prefix, from, max_keys).await
    }

    async fn get_tags(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        match version_id {
            Some(v) => self.inner.get_tags(key, Some(v)).await,
            None => {
                let v = self.version_of(key).await?;
                self.inner.get_tags(key, Some(&v)).await
            }
        }
    }

    async fn acl_support(&self) -> Result<AclSupport, StoreError> {
        self.inner.acl_support().await
    }

    async fn get_acl(&self, key: &str, version_id: Option<&str>) -> Result<Acl, StoreError> {
        self.inner.get_acl(key, version_id).await
    }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn the_view_shows_each_key_as_it_was_at_the_instant() {
        let m = Arc::new(MemoryStore::new("b"));
        let put = |k: &'static str, b: &'static str| {
            let m = m.clone();
            async move {
                m.put(k, PutBody::Bytes(b.into()), &PutOptions::default())
                    .await
                    .unwrap();
            }
        };
        put("d/a", "a1").await;
        put("d/gone", "g").await;
        put("top", "t").await;
        // Memory versions are stamped with the wall clock: wait for it to move.
        let at = SystemTime::now();
        while SystemTime::now() <= at {}
        put("d/a", "a2").await;
        m.delete("d/gone").await.unwrap();
        put("d/new", "n").await;
        put("d/sub/x", "x").await;
        let view = AsOfStore::new(m.clone(), at);
        let page = view.list("d/", Some("/"), None, None).await.unwrap();
        let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec!["d/a", "d/gone"]);
        assert!(page.common_prefixes.is_empty(), "d/sub/ did not exist yet");
        let a = view.get("d/a", GetRequest::default()).await.unwrap();
        assert_eq!(a.bytes().await.unwrap(), "a1");
        assert!(view.head("d/new", None).await.unwrap_err().is_not_found());
        assert!(view
            .put("x", PutBody::Bytes("y".into()), &PutOptions::default())
            .await
            .is_err());
        let now = AsOfStore::new(m, SystemTime::now());
        let page = now.list("d/", Some("/"), None, None).await.unwrap();
        assert_eq!(page.common_prefixes, vec!["d/sub/"]);
    }
}
