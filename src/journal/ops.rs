//! Operations on the source bucket: staged (the durable step a close or fsync
//! waits for), amended while queued (metadata, the cache file they read),
//! completed with their replication tasks, failed, or dropped; and what
//! recovery reads back (open ops, inline bytes, early multipart uploads).

use super::*;

pub(super) const OP_COLUMNS: &str = "seq, key, kind, file, size, meta, src_key, src_version, state, attempts, error, multipart_id, version_id, staged_at, inline IS NOT NULL, base_etag, base_version";

pub(super) fn op_from_row(r: &Row) -> rusqlite::Result<Op> {
    let state: String = r.get(8)?;
    Ok(Op {
        seq: r.get(0)?,
        key: r.get(1)?,
        kind: OpKind::parse(&r.get::<_, String>(2)?),
        file: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        meta: r.get(5)?,
        src_key: r.get(6)?,
        src_version: r.get(7)?,
        state: match state.as_str() {
            "done" => OpState::Done,
            "failed" => OpState::Failed,
            "lost" => OpState::Lost,
            _ => OpState::Pending,
        },
        attempts: r.get::<_, i64>(9)? as u32,
        error: r.get(10)?,
        multipart_id: r.get(11)?,
        version_id: r.get(12)?,
        staged_at_ms: r.get(13)?,
        inline: r.get(14)?,
        base: r.get::<_, Option<String>>(15)?.map(|etag| Base {
            etag,
            version: r.get(16).ok().flatten(),
        }),
    })
}

impl Journal {
    /// Recovery: hands `restore` the bytes of every pending inline put, one at a
    /// time, oldest first (their cache files may be torn or missing after a
    /// crash, since only the journal was synced; where several name one file,
    /// the newest is what it holds). Returns how many.
    pub(crate) async fn restore_inline(
        &self,
        mut restore: impl FnMut(&str, &[u8]) -> std::io::Result<()> + Send + 'static,
    ) -> Result<usize, JournalError> {
        let path = self.path.clone();
        self.run(move |c| {
            let mut st = c.prepare(
                "SELECT o.file, COALESCE(b.bytes, o.inline) FROM ops o LEFT JOIN op_bodies b ON b.seq = o.seq \
                 WHERE o.state != 'done' AND o.inline IS NOT NULL AND o.file IS NOT NULL ORDER BY o.seq",
            )?;
            let mut rows = st.query([])?;
            let mut n = 0;
            while let Some(r) = rows.next()? {
                let file: String = r.get(0)?;
                let bytes: Vec<u8> = r.get(1)?;
                restore(&file, &bytes).map_err(|e| {
                    rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::new(
                        e.kind(),
                        format!("{path}: restoring cache file {file}: {e}"),
                    )))
                })?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    /// Stages an operation, queued for commit before this returns, so operations
    /// staged one after the other get increasing sequence numbers.
    pub(crate) fn stage_in_order(
        &self,
        op: NewOp,
    ) -> impl std::future::Future<Output = Result<i64, JournalError>> + Send + 'static {
        self.send(Durability::Synced, move |c| {
            exec_cached(
                c,
                "INSERT INTO ops (key, kind, file, size, meta, src_key, src_version, staged_at, inline, base_etag, base_version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, CASE WHEN ?9 THEN X'' END, ?10, ?11)",
                params![op.key, op.kind.as_str(), op.file, op.size as i64, op.meta, op.src_key, op.src_version, now_ms(), op.inline.is_some(),
                    op.base.as_ref().map(|b| &b.etag), op.base.as_ref().and_then(|b| b.version.as_ref())],
            )?;
            let seq = c.last_insert_rowid();
            if let Some(bytes) = &op.inline {
                exec_cached(
                    c,
                    "INSERT INTO op_bodies (seq, bytes) VALUES (?1, ?2)",
                    params![seq, bytes],
                )?;
            }
            Ok(seq)
        })
    }

    /// Makes an operation durable; returns its sequence number.
    pub async fn stage(&self, op: NewOp) -> Result<i64, JournalError> {
        self.stage_in_order(op).await
    }

    /// Records that operation `seq` reached the bucket as `version_id`, and prunes
    /// older finished rows of the same key.
    pub async fn complete(&self, seq: i64, version_id: Option<String>) -> Result<(), JournalError> {
        self.complete_with_tasks(seq, version_id, Vec::new(), Durability::Synced)
            .await
            .map(|_| ())
    }

    /// Records the version an operation produced AND the replication tasks for
    /// it, in one transaction: no crash can leave an uploaded version without
    /// its replication queued. Returns the tasks as stored. `Lazy` only for an
    /// op that can be uploaded again after a power loss: its bytes are in its
    /// row, or it has no cache file (the caller may drop the cache file once
    /// this returns).
    pub(crate) async fn complete_with_tasks(
        &self,
        seq: i64,
        version_id: Option<String>,
        tasks: Vec<NewTask>,
        durability: Durability,
    ) -> Result<Vec<Task>, JournalError> {
        self.send(durability, move |c| {
            let mut stored = Vec::new();
            if let Some(v) = &version_id {
                let (key, size, staged_at): (String, i64, i64) = query_cached(
                    c,
                    "SELECT key, size, staged_at FROM ops WHERE seq = ?1",
                    params![seq],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                for t in &tasks {
                    stored.push(insert_task(c, seq, &key, v, size as u64, staged_at, t)?);
                }
            }
            exec_cached(
                c,
                "UPDATE ops SET state = 'done', version_id = ?2, done_at = ?3, error = NULL, multipart_id = NULL, inline = NULL WHERE seq = ?1",
                params![seq, version_id, now_ms()],
            )?;
            exec_cached(
                c,
                "DELETE FROM ops WHERE state IN ('done', 'lost') AND seq < ?1 AND key = (SELECT key FROM ops WHERE seq = ?1)",
                params![seq],
            )?;
            if stored.is_empty() {
                history::fold(c, seq)?;
            }
            Ok(stored)
        })
        .await
    }

    /// Records a failed attempt. `permanent` marks the row failed (visible in
    /// status) until a later attempt succeeds.
    pub(crate) async fn record_failure(
        &self,
        seq: i64,
        error: String,
        permanent: bool,
    ) -> Result<(), JournalError> {
        self.run_lazy(move |c| {
            exec_cached(
                c,
                "UPDATE ops SET attempts = attempts + 1, error = ?2, state = CASE WHEN ?3 THEN 'failed' ELSE 'pending' END WHERE seq = ?1",
                params![seq, error, permanent],
            )?;
            Ok(())
        })
        .await
    }

    /// Drops the bytes kept in the rows of puts `seqs` (held puts of a file
    /// that passthrough writers went on writing): they read the file, which
    /// the caller synced, from now on, and recovery does not rewrite it with
    /// their older bytes. Synced.
    pub(crate) async fn forget_inline(&self, seqs: Vec<i64>) -> Result<(), JournalError> {
        self.run(move |c| {
            for seq in seqs {
                exec_cached(
                    c,
                    "UPDATE ops SET inline = NULL WHERE seq = ?1",
                    params![seq],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Points operation `seq` at another cache file holding the same bytes
    /// (a copy made so its file can be written in place). Synced: the old
    /// file may change once this returns.
    pub(crate) async fn repoint(&self, seq: i64, file: String) -> Result<(), JournalError> {
        self.exec(
            "UPDATE ops SET file = ?2 WHERE seq = ?1",
            vec![seq.into(), file.into()],
        )
        .await
    }

    /// A queued operation's metadata, changed before it ran (see
    /// `Uploader::amend_meta`).
    pub(crate) async fn amend_meta(&self, seq: i64, meta: String) -> Result<(), JournalError> {
        self.exec(
            "UPDATE ops SET meta = ?2 WHERE seq = ?1",
            vec![seq.into(), meta.into()],
        )
        .await
    }

    /// Remembers (or forgets, with None) the multipart upload of an operation so
    /// that recovery can abort it.
    pub(crate) async fn set_multipart(
        &self,
        seq: i64,
        upload_id: Option<String>,
    ) -> Result<(), JournalError> {
        self.exec(
            "UPDATE ops SET multipart_id = ?2 WHERE seq = ?1",
            vec![seq.into(), upload_id.into()],
        )
        .await
    }

    /// Records a multipart upload started before its file was staged.
    pub(crate) async fn note_early(
        &self,
        key: String,
        upload_id: String,
    ) -> Result<(), JournalError> {
        self.exec(
            "INSERT OR REPLACE INTO early_uploads (upload_id, key) VALUES (?1, ?2)",
            vec![upload_id.into(), key.into()],
        )
        .await
    }

    /// Forgets an early upload (completed, aborted, or handed to its op row).
    pub(crate) async fn forget_early(&self, upload_id: String) -> Result<(), JournalError> {
        self.exec(
            "DELETE FROM early_uploads WHERE upload_id = ?1",
            vec![upload_id.into()],
        )
        .await
    }

    /// Early uploads a previous process left behind: (key, upload id).
    pub async fn early_uploads(&self) -> Result<Vec<(String, String)>, JournalError> {
        self.run(|c| {
            let mut st = c.prepare("SELECT key, upload_id FROM early_uploads")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    #[cfg(test)]
    /// Every operation not yet done, in sequence order.
    pub(crate) async fn open_ops(&self) -> Result<Vec<Op>, JournalError> {
        self.run(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {OP_COLUMNS} FROM ops WHERE state != 'done' AND state != 'lost' ORDER BY seq"
            ))?;
            let rows = st.query_map([], op_from_row)?;
            rows.collect()
        })
        .await
    }

    /// Operations that will not run: dropped because their input was gone
    /// (`superseded_by` another that sets the key, or lost when none
    /// does). Superseded ones are done, with `reason` as their error and no
    /// version; lost ones stay visible (`failed_ops`).
    pub async fn drop_ops(
        &self,
        seqs: Vec<i64>,
        reason: String,
        superseded: bool,
    ) -> Result<(), JournalError> {
        self.run(move |c| {
            for seq in seqs {
                exec_cached(
                    c,
                    "UPDATE ops SET state = CASE WHEN ?3 THEN 'done' ELSE 'lost' END, error = ?2, done_at = ?4, multipart_id = NULL, inline = NULL WHERE seq = ?1",
                    params![seq, reason, superseded, now_ms()],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Operations that failed permanently or were lost, oldest first.
    pub async fn failed_ops(&self) -> Result<Vec<Op>, JournalError> {
        self.run(|c| {
            let mut st = c.prepare(&format!(
            // The first term lets SQLite use the partial index of open rows.
                "SELECT {OP_COLUMNS} FROM ops WHERE state != 'done' AND state IN ('failed', 'lost') ORDER BY seq"
            ))?;
            let rows = st.query_map([], op_from_row)?;
            rows.collect()
        })
        .await
    }
}
