//! How far replication has got, written where replica readers can see it: every
//! [`INTERVAL`] each destination gets the object `<source prefix>.regionfs-replicated`
//! saying "every version uploaded before `until_ms` is here" (the creation time of
//! its oldest open task, or now when none is open). A replica mount with
//! `read.max_staleness` reads it to know its lag.
//!
//! Each write replaces the previous heartbeat version (deleted by id), so the
//! versioned destination keeps one. A destination that cannot be reached keeps
//! its last heartbeat, which then ages: exactly the lag a reader must see.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Inner;
use crate::store::{ObjectStore, PutBody, PutOptions};

pub(crate) const INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Every version uploaded to the source before this instant (ms since the
    /// epoch) has its replica here.
    pub(crate) until_ms: i64,
    /// When the heartbeat was written.
    pub(crate) written_ms: i64,
    pub source: String,
}

/// The heartbeat's key for a source prefix.
pub fn key(prefix: &str) -> String {
    format!("{prefix}{}", crate::names::HEARTBEAT)
}

/// Reads a destination's heartbeat (None: none written yet, or unreadable).
pub async fn read(store: &dyn ObjectStore, prefix: &str) -> Option<Heartbeat> {
    let obj = store.get(&key(prefix), Default::default()).await.ok()?;
    serde_json::from_slice(&obj.bytes().await.ok()?).ok()
}

pub(super) async fn run(inner: Arc<Inner>, prefix: String) {
    let mut last: std::collections::HashMap<String, String> = Default::default();
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(INTERVAL).await;
        }
        first = false;
        let now = crate::clock::now_ms();
        let oldest = inner.queue.lock().unwrap().oldest_open_ms();
        for (name, d) in &inner.destinations {
            let hb = Heartbeat {
                until_ms: oldest.get(name).copied().unwrap_or(now),
                written_ms: now,
                source: inner.source.describe(),
            };
            let Ok(body) = serde_json::to_vec(&hb) else {
                continue;
            };
            let put = d
                .store
                .put(
                    &key(&prefix),
                    PutBody::Bytes(body.into()),
                    &PutOptions {
                        content_type: Some("application/json".into()),
                        ..Default::default()
                    },
                )
                .await;
            match put {
                Ok(r) => {
                    let Some(v) = r.version_id else { continue };
                    match last.insert(name.clone(), v.clone()) {
                        Some(old) => {
                            let _ = d.store.delete_version(&key(&prefix), &old).await;
                        }
                        // First one since start: drop what earlier runs left.
                        None => drop_older(d.store.as_ref(), &key(&prefix), &v).await,
                    }
                }
                Err(e) => tracing::debug!(destination = %name, error = %e, "heartbeat not written"),
            }
        }
    }
}

async fn drop_older(store: &dyn ObjectStore, key: &str, keep: &str) {
    let Ok(page) = store.list_versions(key, None, None).await else {
        return;
    };
    for v in page
        .versions
        .iter()
        .filter(|v| v.key == key && v.version_id != keep)
    {
        let _ = store.delete_version(key, &v.version_id).await;
    }
}
