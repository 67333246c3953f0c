//! Replication tasks: one per (version, destination), created in the same
//! commit as the version they copy (see `complete_with_tasks`), completed or
//! failed as the replicator works, and read back oldest first a window at a
//! time. A task completed is folded away with its version (`history`).

use super::*;

pub(super) const TASK_COLUMNS: &str = "id, seq, key, version_id, destination, rule_id, kind, size, storage_class, status, attempts, error, replica_version, created_at, checksum";

pub(super) fn task_from_row(r: &Row) -> rusqlite::Result<Task> {
    let kind: String = r.get(6)?;
    let status: String = r.get(9)?;
    Ok(Task {
        id: r.get(0)?,
        seq: r.get(1)?,
        key: r.get(2)?,
        version_id: r.get(3)?,
        destination: r.get(4)?,
        rule_id: r.get(5)?,
        kind: if kind == "delete" {
            TaskKind::Delete
        } else {
            TaskKind::Version
        },
        size: r.get::<_, i64>(7)? as u64,
        storage_class: r.get(8)?,
        status: match status.as_str() {
            "COMPLETED" => TaskStatus::Completed,
            "FAILED" => TaskStatus::Failed,
            _ => TaskStatus::Pending,
        },
        attempts: r.get::<_, i64>(10)? as u32,
        error: r.get(11)?,
        replica_version: r.get(12)?,
        created_at_ms: r.get(13)?,
        checksum: r.get(14)?,
    })
}

/// Inserts one replication task and returns it as stored.
pub(super) fn insert_task(
    c: &Connection,
    seq: i64,
    key: &str,
    version_id: &str,
    size: u64,
    created_at: i64,
    t: &NewTask,
) -> rusqlite::Result<Task> {
    exec_cached(
        c,
        "INSERT INTO tasks (seq, key, version_id, destination, rule_id, kind, size, storage_class, created_at, checksum)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            seq,
            key,
            version_id,
            t.destination,
            t.rule_id,
            if t.kind == TaskKind::Delete { "delete" } else { "version" },
            size as i64,
            t.storage_class,
            created_at,
            t.checksum
        ],
    )?;
    query_cached(
        c,
        &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"),
        params![c.last_insert_rowid()],
        task_from_row,
    )
}

impl Journal {
    /// Every replication task not completed, oldest first.
    pub async fn open_tasks(&self) -> Result<Vec<Task>, JournalError> {
        self.run(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE status != 'COMPLETED' ORDER BY id"
            ))?;
            let rows = st.query_map([], task_from_row)?;
            rows.collect()
        })
        .await
    }

    /// Tasks that failed permanently (retried periodically), oldest first.
    pub async fn failed_tasks(&self) -> Result<Vec<Task>, JournalError> {
        self.run(|c| {
            let mut st = c.prepare(&format!(
            // The first term lets SQLite use the partial index of open rows.
                "SELECT {TASK_COLUMNS} FROM tasks WHERE status != 'COMPLETED' AND status = 'FAILED' ORDER BY id"
            ))?;
            let rows = st.query_map([], task_from_row)?;
            rows.collect()
        })
        .await
    }

    /// Marks a task completed; counts it (and whether it missed the time
    /// target) in the destination's totals; prunes older completed tasks of the
    /// same key and destination.
    pub(crate) async fn task_completed(
        &self,
        id: i64,
        replica: Replica,
        target_ms: i64,
    ) -> Result<(), JournalError> {
        self.run_lazy(move |c| {
            let now = now_ms();
            exec_cached(
                c,
                "UPDATE tasks SET status = 'COMPLETED', replica_version = ?2, done_at = ?3, error = NULL, replica_etag = ?4 WHERE id = ?1",
                params![id, replica.version, now, replica.etag],
            )?;
            exec_cached(
                c,
                "INSERT INTO replication_stats (destination, completed, bytes, missed_target)
                 SELECT destination, 1, size, (?2 - created_at > ?3) FROM tasks WHERE id = ?1
                 ON CONFLICT(destination) DO UPDATE SET completed = completed + 1, bytes = bytes + excluded.bytes,
                     missed_target = missed_target + excluded.missed_target",
                params![id, now, target_ms],
            )?;
            exec_cached(
                c,
                "DELETE FROM tasks WHERE status = 'COMPLETED' AND id < ?1 AND (key, destination) =
                   (SELECT key, destination FROM tasks WHERE id = ?1)",
                params![id],
            )?;
            let seq: i64 = query_cached(c, "SELECT seq FROM tasks WHERE id = ?1", params![id], |r| r.get(0))?;
            if seq > 0 {
                history::fold(c, seq)?;
            }
            Ok(())
        })
        .await
    }

    /// Records a failed attempt: PENDING (transient) or FAILED (permanent).
    pub(crate) async fn task_failed(
        &self,
        id: i64,
        error: String,
        permanent: bool,
    ) -> Result<(), JournalError> {
        let status = if permanent {
            TaskStatus::Failed
        } else {
            TaskStatus::Pending
        };
        self.run_lazy(move |c| {
            exec_cached(
                c,
                "UPDATE tasks SET attempts = attempts + 1, error = ?2, status = ?3 WHERE id = ?1",
                params![id, error, status.as_str()],
            )?;
            Ok(())
        })
        .await
    }

    /// Queues replication of existing versions (resync): one task per (key,
    /// version, destination) unless an open one exists already, so a resync
    /// that is run again resumes instead of duplicating. Returns the new tasks.
    pub async fn add_resync_tasks(
        &self,
        items: Vec<(String, String, u64, NewTask)>,
    ) -> Result<Vec<Task>, JournalError> {
        self.run(move |c| {
            let mut out = Vec::new();
            for (key, version, size, t) in items {
                let exists: bool = query_cached(
                    c,
                    "SELECT EXISTS(SELECT 1 FROM tasks WHERE key = ?1 AND version_id = ?2 AND destination = ?3 AND status != 'COMPLETED')",
                    params![key, version, t.destination],
                    |r| r.get(0),
                )?;
                if exists {
                    continue;
                }
                out.push(insert_task(c, 0, &key, &version, size, now_ms(), &t)?);
            }
            Ok(out)
        })
        .await
    }

    /// The oldest `limit` open tasks of one destination (by id, hence in the
    /// order their versions were recorded), with how many are open there in
    /// all and the earliest staging time among them: what the replicator
    /// holds in memory of a long backlog, and what it knows of the rest.
    pub(crate) async fn open_tasks_window(
        &self,
        destination: String,
        limit: usize,
    ) -> Result<TaskWindow, JournalError> {
        self.run_lazy(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE destination = ?1 AND status != 'COMPLETED' ORDER BY id LIMIT ?2"
            ))?;
            let tasks = st
                .query_map(params![destination, limit as i64], task_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let (open, earliest_ms) = c.query_row(
                "SELECT COUNT(*), MIN(created_at) FROM tasks WHERE destination = ?1 AND status != 'COMPLETED'",
                params![destination],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Option<i64>>(1)?)),
            )?;
            Ok(TaskWindow {
                tasks,
                open,
                earliest_ms,
            })
        })
        .await
    }

    /// The destinations that have open tasks.
    pub(crate) async fn open_task_destinations(&self) -> Result<Vec<String>, JournalError> {
        self.run_lazy(|c| {
            let mut st = c.prepare(
                "SELECT DISTINCT destination FROM tasks WHERE status != 'COMPLETED' ORDER BY destination",
            )?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    /// Open tasks of the version produced by operation `seq`.
    pub(crate) async fn open_tasks_of(&self, seq: i64) -> Result<Vec<Task>, JournalError> {
        self.run(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE seq = ?1 AND status != 'COMPLETED'"
            ))?;
            let rows = st.query_map(params![seq], task_from_row)?;
            rows.collect()
        })
        .await
    }
}
