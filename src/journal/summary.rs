//! What `status` reads: the upload and replication backlogs in one snapshot,
//! and the notes the mount leaves for it (buckets' ACL support, its regions).

use super::*;

/// Exact per-destination totals; a pending task older than `target_ms` counts
/// as having missed the target already.
pub(super) fn replication_summary_in(
    c: &Connection,
    target_ms: i64,
) -> rusqlite::Result<BTreeMap<String, DestinationSummary>> {
    let mut out: BTreeMap<String, DestinationSummary> = BTreeMap::new();
    let now = now_ms();
    let mut st = c.prepare(
        "SELECT destination, COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(status = 'FAILED'), 0), MIN(created_at),
                COALESCE(SUM(?1 - created_at > ?2), 0)
         FROM tasks WHERE status != 'COMPLETED' GROUP BY destination",
    )?;
    let rows = st.query_map(params![now, target_ms], |r| {
        let oldest: Option<i64> = r.get(4)?;
        Ok((
            r.get::<_, String>(0)?,
            DestinationSummary {
                pending: r.get::<_, i64>(1)? as u64,
                pending_bytes: r.get::<_, i64>(2)? as u64,
                failed: r.get::<_, i64>(3)? as u64,
                oldest_pending_s: oldest
                    .map(|t| (now - t).max(0) as f64 / 1000.0)
                    .unwrap_or(0.0),
                missed_target: r.get::<_, i64>(5)? as u64,
                ..Default::default()
            },
        ))
    })?;
    for row in rows {
        let (d, s) = row?;
        out.insert(d, s);
    }
    let mut st =
        c.prepare("SELECT destination, completed, bytes, missed_target FROM replication_stats")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    for row in rows {
        let (d, completed, bytes, missed) = row?;
        let e = out.entry(d).or_default();
        e.completed = completed as u64;
        e.bytes_replicated = bytes as u64;
        e.missed_target += missed as u64;
    }
    Ok(out)
}

pub(super) fn upload_summary_in(c: &Connection) -> rusqlite::Result<UploadSummary> {
    query_cached(
        c,
        // A lost op counts as failed until an op queued after it for its
        // key (what the name holds now) supersedes it; that op's completion
        // then prunes it.
        "SELECT COALESCE(SUM(state != 'lost'), 0), COALESCE(SUM(CASE WHEN state != 'lost' THEN size END), 0), \
         COALESCE(SUM(state = 'failed' OR (state = 'lost' AND NOT EXISTS (SELECT 1 FROM ops later WHERE later.key = ops.key AND later.seq > ops.seq AND later.state != 'lost'))), 0), \
         MIN(CASE WHEN state != 'lost' THEN staged_at END) FROM ops WHERE state != 'done'",
        [],
        |r| {
            let oldest: Option<i64> = r.get(3)?;
            Ok(UploadSummary {
                pending: r.get::<_, i64>(0)? as u64,
                pending_bytes: r.get::<_, i64>(1)? as u64,
                failed: r.get::<_, i64>(2)? as u64,
                oldest_pending_s: oldest.map(|t| (now_ms() - t).max(0) as f64 / 1000.0).unwrap_or(0.0),
            })
        },
    )
}

impl Journal {
    /// Where an [`AclState`](crate::store::AclState) notes what it found:
    /// here, in the background (status reads it; nothing waits on it).
    pub(crate) fn acl_noter(&self) -> crate::store::acl::NoteAcl {
        let journal = self.clone();
        Arc::new(move |bucket, support| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let _ = journal.note_acl_support(bucket, support).await;
            });
        })
    }

    /// Records whether a bucket (by its config name) takes object ACLs, for status.
    pub(crate) async fn note_acl_support(
        &self,
        bucket: String,
        support: String,
    ) -> Result<(), JournalError> {
        self.exec(
            "INSERT INTO bucket_acls (bucket, support) VALUES (?1, ?2)
             ON CONFLICT(bucket) DO UPDATE SET support = excluded.support",
            vec![bucket.into(), support.into()],
        )
        .await
    }

    /// The mount's latest view of its regions (JSON), for status.
    pub(crate) async fn note_regions(&self, state: String) -> Result<(), JournalError> {
        self.exec_lazy(
            "INSERT INTO regions (id, state, updated_at) VALUES (1, ?1, ?2)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            vec![state.into(), now_ms().into()],
        )
        .await
    }

    /// (state JSON, when it was written in ms since the epoch).
    pub async fn regions(&self) -> Result<Option<(String, i64)>, JournalError> {
        self.run(move |c| {
            let mut st = c.prepare("SELECT state, updated_at FROM regions WHERE id = 1")?;
            let mut rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.next().transpose()
        })
        .await
    }

    pub async fn acl_support(&self) -> Result<BTreeMap<String, String>, JournalError> {
        self.run(move |c| {
            let mut st = c.prepare("SELECT bucket, support FROM bucket_acls")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<BTreeMap<String, String>>>()
        })
        .await
    }

    /// The upload and replication backlogs read in one transaction: a version
    /// whose upload completes meanwhile counts in exactly one of them (as an
    /// upload, or as the replication tasks recorded with it), never in neither.
    pub async fn backlog(
        &self,
        target_ms: i64,
    ) -> Result<(UploadSummary, BTreeMap<String, DestinationSummary>), JournalError> {
        self.run(move |c| Ok((upload_summary_in(c)?, replication_summary_in(c, target_ms)?)))
            .await
    }

    pub async fn upload_summary(&self) -> Result<UploadSummary, JournalError> {
        self.run(upload_summary_in).await
    }
}
