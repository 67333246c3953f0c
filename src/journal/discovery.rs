//! What discovery (`replicator::discover`) keeps in the journal: the keys it
//! has seen and its passes. Its tasks and seen rows are committed together,
//! so a crash leaves both or neither.

use rusqlite::params;
use serde::Serialize;

use super::{
    exec_cached, insert_task, now_ms, query_cached, Durability, Journal, JournalError, NewTask,
    Task,
};

/// What discovery has seen of one source key: its newest version (or delete
/// marker) as the listing of current objects shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub key: String,
    pub version_id: String,
    /// Empty for a delete marker.
    pub etag: String,
    pub(crate) modified_ms: Option<i64>,
    /// The newest is a delete marker (the key is not listed).
    pub deleted: bool,
    /// Old enough that a newer version would show in the listing as another
    /// ETag or LastModified (see `replicator::discover`).
    pub settled: bool,
}

/// One discovery pass, as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiscoveryStats {
    /// `all`, or `2/4` for a share of the keys.
    pub shard: String,
    pub passes: i64,
    pub last_pass_ms: i64,
    pub last_took_ms: i64,
    /// Keys the last pass listed, changed, and tasks it queued.
    pub keys: i64,
    pub changed: i64,
    pub queued: i64,
    /// Requests to the source the last pass made.
    pub requests: i64,
    /// Tasks queued by every pass.
    pub total_queued: i64,
}

impl Journal {
    /// What discovery has seen of the keys under `prefix` after `after` and
    /// up to `upto` (both bounds optional), in key order.
    pub(crate) async fn seen_range(
        &self,
        prefix: String,
        after: Option<String>,
        upto: Option<String>,
    ) -> Result<Vec<Seen>, JournalError> {
        self.run_lazy(move |c| {
            let mut st = c.prepare_cached(
                "SELECT key, version_id, etag, modified_ms, deleted, settled FROM seen
                 WHERE key >= ?1 AND (?2 IS NULL OR key > ?2) AND (?3 IS NULL OR key <= ?3) ORDER BY key",
            )?;
            let rows = st.query_map(params![prefix, after, upto], |r| {
                Ok(Seen {
                    key: r.get(0)?,
                    version_id: r.get(1)?,
                    etag: r.get(2)?,
                    modified_ms: r.get(3)?,
                    deleted: r.get::<_, i64>(4)? != 0,
                    settled: r.get::<_, i64>(5)? != 0,
                })
            })?;
            Ok(rows
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .filter(|s| s.key.starts_with(&prefix))
                .collect())
        })
        .await
    }

    /// Records what a discovery pass found in one transaction: the tasks of
    /// the new versions (seq 0; skipped for a version this journal uploaded
    /// or queued for that destination already) and the keys' new `seen`
    /// rows. A crash before the commit leaves both to the next pass.
    pub(crate) async fn record_discovered(
        &self,
        seen: Vec<Seen>,
        items: Vec<(String, String, u64, NewTask)>,
    ) -> Result<Vec<Task>, JournalError> {
        self.send(Durability::Synced, move |c| {
            let mut out = Vec::new();
            for (key, version, size, t) in items {
                let known: bool = query_cached(
                    c,
                    "SELECT EXISTS(SELECT 1 FROM tasks WHERE key = ?1 AND version_id = ?2 AND destination = ?3)
                         OR EXISTS(SELECT 1 FROM ops WHERE key = ?1 AND version_id = ?2)
                         OR EXISTS(SELECT 1 FROM landed WHERE key = ?1 AND version_id = ?2)",
                    params![key, version, t.destination],
                    |r| r.get(0),
                )?;
                if !known {
                    out.push(insert_task(c, 0, &key, &version, size, now_ms(), &t)?);
                }
            }
            for s in seen {
                exec_cached(
                    c,
                    "INSERT INTO seen (key, version_id, etag, modified_ms, deleted, settled) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(key) DO UPDATE SET version_id = excluded.version_id, etag = excluded.etag,
                         modified_ms = excluded.modified_ms, deleted = excluded.deleted, settled = excluded.settled",
                    params![s.key, s.version_id, s.etag, s.modified_ms, s.deleted, s.settled],
                )?;
            }
            Ok(out)
        })
        .await
    }

    /// Counts one finished discovery pass.
    pub(crate) async fn note_discovery(&self, d: DiscoveryStats) -> Result<(), JournalError> {
        self.run_lazy(move |c| {
            exec_cached(
                c,
                "INSERT INTO discovery (shard, passes, last_pass_ms, last_took_ms, keys, changed, queued, requests, total_queued)
                 VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6, ?7, ?6)
                 ON CONFLICT(shard) DO UPDATE SET passes = passes + 1, last_pass_ms = excluded.last_pass_ms,
                     last_took_ms = excluded.last_took_ms, keys = excluded.keys, changed = excluded.changed,
                     queued = excluded.queued, requests = excluded.requests, total_queued = total_queued + excluded.queued",
                params![d.shard, d.last_pass_ms, d.last_took_ms, d.keys, d.changed, d.queued, d.requests],
            )?;
            Ok(())
        })
        .await
    }

    /// Every shard's discovery counts (empty when nothing discovers).
    pub(crate) async fn discovery_stats(&self) -> Result<Vec<DiscoveryStats>, JournalError> {
        self.run(|c| {
            let mut st = c.prepare(
                "SELECT shard, passes, last_pass_ms, last_took_ms, keys, changed, queued, requests, total_queued FROM discovery ORDER BY shard",
            )?;
            let rows = st.query_map([], |r| {
                Ok(DiscoveryStats {
                    shard: r.get(0)?,
                    passes: r.get(1)?,
                    last_pass_ms: r.get(2)?,
                    last_took_ms: r.get(3)?,
                    keys: r.get(4)?,
                    changed: r.get(5)?,
                    queued: r.get(6)?,
                    requests: r.get(7)?,
                    total_queued: r.get(8)?,
                })
            })?;
            rows.collect()
        })
        .await
    }
}
