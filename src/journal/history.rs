//! What the journal remembers of finished work: per key, the last version
//! this host made and where it was replicated.
//!
//! Work in flight lives in `ops` and `tasks` rows (about 400 bytes per
//! version with their indexes). Once an operation is done and every
//! replication task of its version has completed, the two are *folded* into
//! one `landed` row per key (about 200 bytes, keyed by the key itself): the
//! op's sequence number, kind and version id, and per destination the task
//! id, kind, replica version and replica ETag. Its ops and tasks rows are
//! deleted in the same transaction, so the journal grows with the keys a
//! mount has written, not with the work it has done.
//!
//! # Consistency
//! A fold commits with the change that made the work finished (the op's
//! completion, or its last task's), so after any crash either the rows or
//! the landed row say the same thing. A fold lost to a power loss (a lazy
//! commit) leaves the rows, which fold again at the next start
//! ([`fold_finished`]). A landed row never overwrites a newer one (`seq`
//! orders them), and every lookup takes the newest of the rows still open
//! and the landed row, by `seq` for operations and by task id for replicas.

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    exec_cached, query_cached, task_from_row, Journal, JournalError, Op, OpKind, OpState,
    PreviousReplica, Task, TaskKind, TaskStatus, OP_COLUMNS, TASK_COLUMNS,
};

/// One destination's replica in a landed row: (task id, destination, kind
/// `v`/`d`, replica version, replica ETag).
type Landed = (i64, String, String, Option<String>, Option<String>);

/// A key's landed row.
struct Row {
    seq: i64,
    kind: String,
    version: Option<String>,
    done_at: i64,
    replicas: Vec<Landed>,
}

/// The landed row of `key`.
fn landed_of(c: &Connection, key: &str) -> rusqlite::Result<Option<Row>> {
    let row = c
        .prepare_cached(
            "SELECT seq, kind, version_id, done_at, replicas FROM landed WHERE key = ?1",
        )?
        .query_row(params![key], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })
        .optional()?;
    Ok(row.map(|(seq, kind, version, done_at, replicas)| {
        // Written by `fold` below; a row that does not parse lists no replicas
        // (status then asks the destination, as for a key it never saw).
        let replicas = serde_json::from_str(&replicas).unwrap_or_default();
        Row {
            seq,
            kind,
            version,
            done_at,
            replicas,
        }
    }))
}

/// A landed row as the op it was.
fn landed_op(key: &str, seq: i64, kind: &str, version: Option<String>, done_at: i64) -> Op {
    Op {
        seq,
        key: key.to_string(),
        kind: OpKind::parse(kind),
        file: None,
        size: 0,
        meta: "{}".into(),
        src_key: None,
        src_version: None,
        state: OpState::Done,
        attempts: 0,
        error: None,
        multipart_id: None,
        version_id: version,
        // Not kept: the time it was done stands for it.
        staged_at_ms: done_at,
        inline: false,
        base: None,
    }
}

/// A landed replica as the completed task it was (its rule id and size are
/// not kept).
fn landed_task(key: &str, seq: i64, version: &str, done_at: i64, l: Landed) -> Task {
    let (id, destination, kind, replica_version, _etag) = l;
    Task {
        id,
        seq,
        key: key.to_string(),
        version_id: version.to_string(),
        destination,
        rule_id: String::new(),
        kind: if kind == "d" {
            TaskKind::Delete
        } else {
            TaskKind::Version
        },
        size: 0,
        storage_class: None,
        status: TaskStatus::Completed,
        attempts: 0,
        error: None,
        replica_version,
        created_at_ms: done_at,
        checksum: None,
    }
}

/// Folds operation `seq` into its key's landed row if it is done and none
/// of its tasks is open; returns whether it did.
pub(super) fn fold(c: &Connection, seq: i64) -> rusqlite::Result<bool> {
    let op: Option<(String, String, Option<String>, i64)> = c
        .prepare_cached(
            "SELECT key, kind, version_id, done_at FROM ops WHERE seq = ?1 AND state = 'done'",
        )?
        .query_row(params![seq], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((key, kind, version, done_at)) = op else {
        return Ok(false);
    };
    let open: bool = query_cached(
        c,
        "SELECT EXISTS(SELECT 1 FROM tasks WHERE seq = ?1 AND status != 'COMPLETED')",
        params![seq],
        |r| r.get(0),
    )?;
    if open {
        return Ok(false);
    }
    let mut replicas: Vec<Landed> = c
        .prepare_cached(
            "SELECT id, destination, kind, replica_version, replica_etag FROM tasks WHERE key = ?1 AND seq = ?2",
        )?
        .query_map(params![key, seq], |r| {
            let kind: String = r.get(2)?;
            Ok((
                r.get(0)?,
                r.get(1)?,
                if kind == "delete" { "d" } else { "v" }.to_string(),
                r.get(3)?,
                r.get(4)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    if let Some(old) = landed_of(c, &key)? {
        if old.seq > seq {
            // A newer version landed already (its tasks finished first).
            exec_cached(
                c,
                "DELETE FROM tasks WHERE key = ?1 AND seq = ?2",
                params![key, seq],
            )?;
            exec_cached(c, "DELETE FROM ops WHERE seq = ?1", params![seq])?;
            return Ok(true);
        }
        // Destinations this version does not go to keep their last replica.
        for l in old.replicas {
            if !replicas.iter().any(|r| r.1 == l.1) {
                replicas.push(l);
            }
        }
    }
    replicas.sort_by(|a, b| a.1.cmp(&b.1));
    let text = serde_json::to_string(&replicas).unwrap_or_else(|_| "[]".into());
    exec_cached(
        c,
        "INSERT INTO landed (key, seq, kind, version_id, done_at, replicas) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(key) DO UPDATE SET seq = excluded.seq, kind = excluded.kind, version_id = excluded.version_id,
             done_at = excluded.done_at, replicas = excluded.replicas",
        params![key, seq, kind, version, done_at, text],
    )?;
    exec_cached(
        c,
        "DELETE FROM tasks WHERE key = ?1 AND seq = ?2",
        params![key, seq],
    )?;
    exec_cached(c, "DELETE FROM ops WHERE seq = ?1", params![seq])?;
    Ok(true)
}

/// Folds every finished operation still in rows (a journal written before
/// folding existed, or a fold lost to a power loss); returns how many.
/// Reads only done rows, which folding keeps to those with open tasks.
pub(super) fn fold_finished(c: &Connection) -> rusqlite::Result<usize> {
    let seqs: Vec<i64> = c
        .prepare("SELECT seq FROM ops WHERE state = 'done' ORDER BY seq")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut n = 0;
    for seq in seqs {
        if fold(c, seq)? {
            n += 1;
        }
    }
    Ok(n)
}

impl Journal {
    /// The newest operation on `key`, done or not.
    pub async fn latest(&self, key: String) -> Result<Option<Op>, JournalError> {
        self.newest(key, "").await
    }

    /// The newest finished operation on `key` (its version id is the one in the bucket).
    pub async fn latest_done(&self, key: String) -> Result<Option<Op>, JournalError> {
        self.newest(key, "AND state = 'done'").await
    }

    /// The newest of `key`'s op rows matching `and` and its landed row.
    async fn newest(&self, key: String, and: &'static str) -> Result<Option<Op>, JournalError> {
        self.run(move |c| {
            let row = query_cached(
                c,
                &format!(
                    "SELECT {OP_COLUMNS} FROM ops WHERE key = ?1 {and} ORDER BY seq DESC LIMIT 1"
                ),
                params![key],
                super::op_from_row,
            )
            .optional()?;
            let landed =
                landed_of(c, &key)?.map(|l| landed_op(&key, l.seq, &l.kind, l.version, l.done_at));
            Ok(match (row, landed) {
                (Some(a), Some(b)) => Some(if a.seq > b.seq { a } else { b }),
                (a, b) => a.or(b),
            })
        })
        .await
    }

    /// The version this journal last made at `key` (an upload, copy or
    /// delete that reached the bucket; superseded operations made none).
    pub(crate) async fn own_last_version(
        &self,
        key: String,
    ) -> Result<Option<String>, JournalError> {
        self.run(move |c| {
            let row: Option<(i64, String)> = c
                .prepare_cached(
                    "SELECT seq, version_id FROM ops WHERE key = ?1 AND state = 'done' AND version_id IS NOT NULL
                     ORDER BY seq DESC LIMIT 1",
                )?
                .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let landed = landed_of(c, &key)?.and_then(|l| l.version.map(|v| (l.seq, v)));
            Ok(match (row, landed) {
                (Some(a), Some(b)) => Some(if a.0 > b.0 { a.1 } else { b.1 }),
                (a, b) => a.or(b).map(|(_, v)| v),
            })
        })
        .await
    }

    /// The newest task of `key` for each destination.
    pub async fn latest_tasks(&self, key: String) -> Result<Vec<Task>, JournalError> {
        self.run(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE id IN (SELECT MAX(id) FROM tasks WHERE key = ?1 GROUP BY destination) ORDER BY destination"
            ))?;
            let mut tasks: Vec<Task> = st
                .query_map(params![key], task_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            if let Some(Row {
                seq,
                version,
                done_at,
                replicas,
                ..
            }) = landed_of(c, &key)?
            {
                let version = version.unwrap_or_default();
                for l in replicas {
                    match tasks.iter_mut().find(|t| t.destination == l.1) {
                        Some(t) if t.id > l.0 => {}
                        Some(t) => *t = landed_task(&key, seq, &version, done_at, l),
                        None => tasks.push(landed_task(&key, seq, &version, done_at, l)),
                    }
                }
                tasks.sort_by(|a, b| a.destination.cmp(&b.destination));
            }
            Ok(tasks)
        })
        .await
    }

    /// The last completed task of `key` at `destination` before task
    /// `before`: what this journal last put there, if it is still known.
    pub(crate) async fn previous_replica(
        &self,
        key: String,
        destination: String,
        before: i64,
    ) -> Result<Option<PreviousReplica>, JournalError> {
        self.run_lazy(move |c| {
            let row: Option<(i64, PreviousReplica)> = c
                .prepare_cached(
                    "SELECT id, version_id, replica_etag, seq FROM tasks WHERE key = ?1 AND destination = ?2 AND id < ?3
                     AND status = 'COMPLETED' ORDER BY id DESC LIMIT 1",
                )?
                .query_row(params![key, destination, before], |r| {
                    Ok((
                        r.get(0)?,
                        PreviousReplica {
                            version_id: r.get(1)?,
                            replica_etag: r.get(2)?,
                            own: r.get::<_, i64>(3)? > 0,
                        },
                    ))
                })
                .optional()?;
            let landed = landed_of(c, &key)?.and_then(|Row { version, replicas, .. }| {
                let l = replicas
                    .into_iter()
                    .find(|l| l.1 == destination && l.0 < before)?;
                Some((
                    l.0,
                    PreviousReplica {
                        version_id: version.unwrap_or_default(),
                        replica_etag: l.4,
                        own: true,
                    },
                ))
            });
            Ok(match (row, landed) {
                (Some(a), Some(b)) => Some(if a.0 > b.0 { a.1 } else { b.1 }),
                (a, b) => a.or(b).map(|(_, p)| p),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{NewOp, NewTask, Replica};

    fn journal() -> (tempfile::TempDir, Journal) {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(&d.path().join("journal.db")).unwrap();
        (d, j)
    }

    fn task(dest: &str) -> NewTask {
        NewTask {
            checksum: None,
            destination: dest.into(),
            rule_id: "r".into(),
            kind: TaskKind::Version,
            storage_class: None,
        }
    }

    async fn rows(j: &Journal) -> (i64, i64, i64) {
        j.run(|c| {
            let n = |t: &str| c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0));
            Ok((n("ops")?, n("tasks")?, n("landed")?))
        })
        .await
        .unwrap()
    }

    async fn put(j: &Journal, key: &str) -> i64 {
        j.stage(NewOp::put(
            key.into(),
            format!("f-{key}"),
            1,
            "{}".into(),
            None,
        ))
        .await
        .unwrap()
    }

    /// Stages a put of `key` and records it done as `version` with one
    /// task per destination; returns its seq and tasks.
    async fn landed_as(j: &Journal, key: &str, version: &str, dests: &[&str]) -> (i64, Vec<Task>) {
        let seq = put(j, key).await;
        let tasks = j
            .complete_with_tasks(
                seq,
                Some(version.into()),
                dests.iter().map(|d| task(d)).collect(),
                super::super::Durability::Synced,
            )
            .await
            .unwrap();
        (seq, tasks)
    }

    fn replica(v: &str) -> Replica {
        Replica {
            version: Some(v.into()),
            etag: Some(format!("etag-{v}")),
        }
    }

    #[tokio::test]
    async fn a_version_replicated_everywhere_leaves_one_landed_row_and_status_still_shows_it() {
        let (_d, j) = journal();
        let (seq, tasks) = landed_as(&j, "k", "v1", &["eu", "us"]).await;
        assert_eq!(rows(&j).await, (1, 2, 0));
        j.task_completed(tasks[0].id, replica("r-eu"), 60_000)
            .await
            .unwrap();
        assert_eq!(rows(&j).await, (1, 2, 0), "one task is still open");
        j.task_completed(tasks[1].id, replica("r-us"), 60_000)
            .await
            .unwrap();
        assert_eq!(rows(&j).await, (0, 0, 1));

        let done = j.latest_done("k".into()).await.unwrap().unwrap();
        assert_eq!((done.seq, done.version_id.as_deref()), (seq, Some("v1")));
        assert_eq!(j.latest("k".into()).await.unwrap().unwrap().seq, seq);
        assert_eq!(
            j.own_last_version("k".into()).await.unwrap().as_deref(),
            Some("v1")
        );
        let latest = j.latest_tasks("k".into()).await.unwrap();
        let seen: Vec<_> = latest
            .iter()
            .map(|t| {
                (
                    t.destination.as_str(),
                    t.status,
                    t.version_id.as_str(),
                    t.replica_version.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("eu", TaskStatus::Completed, "v1", Some("r-eu")),
                ("us", TaskStatus::Completed, "v1", Some("r-us"))
            ]
        );
        let prev = j
            .previous_replica("k".into(), "eu".into(), i64::MAX)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            prev,
            PreviousReplica {
                version_id: "v1".into(),
                replica_etag: Some("etag-r-eu".into()),
                own: true
            }
        );
        assert_eq!(
            j.previous_replica("k".into(), "eu".into(), tasks[0].id)
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_newer_version_in_flight_wins_over_the_landed_one_until_it_lands_too() {
        let (_d, j) = journal();
        let (s1, t1) = landed_as(&j, "k", "v1", &["eu"]).await;
        j.task_completed(t1[0].id, replica("r1"), 60_000)
            .await
            .unwrap();
        let s2 = put(&j, "k").await;
        assert_eq!(
            j.latest("k".into()).await.unwrap().unwrap().state,
            OpState::Pending
        );
        assert_eq!(j.latest_done("k".into()).await.unwrap().unwrap().seq, s1);
        let t2 = j
            .complete_with_tasks(
                s2,
                Some("v2".into()),
                vec![task("eu")],
                super::super::Durability::Synced,
            )
            .await
            .unwrap();
        let open = j.latest_tasks("k".into()).await.unwrap();
        assert_eq!(
            (open[0].status, open[0].version_id.as_str()),
            (TaskStatus::Pending, "v2")
        );
        let prev = j
            .previous_replica("k".into(), "eu".into(), t2[0].id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(prev.version_id, "v1");
        assert_eq!(
            j.own_last_version("k".into()).await.unwrap().as_deref(),
            Some("v2")
        );
        j.task_completed(t2[0].id, replica("r2"), 60_000)
            .await
            .unwrap();
        assert_eq!(rows(&j).await, (0, 0, 1));
        let done = j.latest_tasks("k".into()).await.unwrap();
        assert_eq!(
            (
                done[0].version_id.as_str(),
                done[0].replica_version.as_deref()
            ),
            ("v2", Some("r2"))
        );
    }

    #[tokio::test]
    async fn an_older_version_finishing_last_does_not_replace_the_newer_landed_row() {
        let (_d, j) = journal();
        let (_, t1) = landed_as(&j, "k", "v1", &["eu"]).await;
        let (_, t2) = landed_as(&j, "k", "v2", &["eu"]).await;
        j.task_completed(t2[0].id, replica("r2"), 60_000)
            .await
            .unwrap();
        j.task_completed(t1[0].id, replica("r1"), 60_000)
            .await
            .unwrap();
        let latest = j.latest_tasks("k".into()).await.unwrap();
        assert_eq!(latest.len(), 1);
        assert_eq!(
            (
                latest[0].version_id.as_str(),
                latest[0].replica_version.as_deref()
            ),
            ("v2", Some("r2"))
        );
        assert_eq!(
            j.latest_done("k".into())
                .await
                .unwrap()
                .unwrap()
                .version_id
                .as_deref(),
            Some("v2")
        );
    }

    #[tokio::test]
    async fn an_operation_without_replication_lands_at_once_and_a_destination_it_skips_keeps_its_replica(
    ) {
        let (_d, j) = journal();
        let (_, t1) = landed_as(&j, "k", "v1", &["eu", "us"]).await;
        for t in &t1 {
            j.task_completed(t.id, replica(&format!("{}1", t.destination)), 60_000)
                .await
                .unwrap();
        }
        // A later version that goes to `eu` only (say its tags no longer match
        // the rule to `us`), then one that goes nowhere.
        let (_, t2) = landed_as(&j, "k", "v2", &["eu"]).await;
        j.task_completed(t2[0].id, replica("eu2"), 60_000)
            .await
            .unwrap();
        let s3 = put(&j, "k").await;
        j.complete(s3, Some("v3".into())).await.unwrap();
        assert_eq!(rows(&j).await, (0, 0, 1));
        assert_eq!(
            j.latest_done("k".into())
                .await
                .unwrap()
                .unwrap()
                .version_id
                .as_deref(),
            Some("v3")
        );
        let latest: Vec<_> = j
            .latest_tasks("k".into())
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.destination, t.version_id, t.replica_version.unwrap()))
            .collect();
        assert_eq!(
            latest,
            vec![
                ("eu".to_string(), "v3".to_string(), "eu2".to_string()),
                ("us".to_string(), "v3".to_string(), "us1".to_string())
            ],
            "each destination keeps the replica it holds"
        );
    }

    #[tokio::test]
    async fn finished_rows_left_by_an_older_journal_fold_when_it_opens() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("journal.db");
        {
            let j = Journal::open(&path).unwrap();
            let (seq, t) = landed_as(&j, "k", "v1", &["eu"]).await;
            j.task_completed(t[0].id, replica("r1"), 60_000)
                .await
                .unwrap();
            // As a journal from before folding (or one whose fold a power
            // loss undid) holds it: the finished rows, no landed row.
            j.run(move |c| {
                c.execute_batch("DELETE FROM landed")?;
                c.execute(
                    "INSERT INTO ops (seq, key, kind, meta, state, version_id, staged_at, done_at) VALUES (?1, 'k', 'put', '{}', 'done', 'v1', 1, 2)",
                    params![seq],
                )?;
                c.execute(
                    "INSERT INTO tasks (seq, key, version_id, destination, rule_id, kind, status, replica_version, created_at)
                     VALUES (?1, 'k', 'v1', 'eu', 'r', 'version', 'COMPLETED', 'r1', 1)",
                    params![seq],
                )?;
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(rows(&j).await, (1, 1, 0));
        }
        let j = Journal::open(&path).unwrap();
        assert_eq!(rows(&j).await, (0, 0, 1));
        let t = j.latest_tasks("k".into()).await.unwrap();
        assert_eq!(
            (t[0].status, t[0].replica_version.as_deref()),
            (TaskStatus::Completed, Some("r1"))
        );
    }
}
