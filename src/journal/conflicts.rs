//! Uploads that replaced a version this host never read (another writer's,
//! see `uploader::guard`): kept so `status` can name each key and replaced
//! version, which stays in the source's history for `regionfs restore`.
//! A row is keyed by the operation and the version it replaced, so an
//! upload retried after a failure is not counted twice. The newest
//! [`KEPT`] rows are kept.

use rusqlite::params;
use serde::Serialize;

use super::{exec_cached, Journal, JournalError};
use crate::clock::now_ms;

/// Rows kept; older ones go as new ones come (the count shown is of these).
pub(crate) const KEPT: i64 = 10_000;

/// One upload that replaced another writer's version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub key: String,
    /// The version the upload replaced (in the source's history).
    pub replaced_version: String,
    /// Unix milliseconds.
    pub at_ms: i64,
}

/// What `status` shows of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Conflicts {
    pub count: i64,
    /// The newest first, at most the number asked for.
    pub recent: Vec<Conflict>,
}

impl Journal {
    /// Notes that operation `seq` on `key` is replacing `replaced_version`.
    pub(crate) async fn note_conflict(
        &self,
        seq: i64,
        key: String,
        replaced_version: String,
    ) -> Result<(), JournalError> {
        self.run(move |c| {
            exec_cached(
                c,
                "INSERT OR IGNORE INTO conflicts (seq, key, replaced_version, at) VALUES (?1, ?2, ?3, ?4)",
                params![seq, key, replaced_version, now_ms()],
            )?;
            exec_cached(
                c,
                "DELETE FROM conflicts WHERE rowid <= (SELECT max(rowid) FROM conflicts) - ?1",
                params![KEPT],
            )?;
            Ok(())
        })
        .await
    }

    /// How many are kept, and the newest `recent` of them.
    pub(crate) async fn conflicts(&self, recent: usize) -> Result<Conflicts, JournalError> {
        self.run(move |c| {
            let count: i64 = c.query_row("SELECT count(*) FROM conflicts", [], |r| r.get(0))?;
            let mut st = c.prepare_cached(
                "SELECT key, replaced_version, at FROM conflicts ORDER BY rowid DESC LIMIT ?1",
            )?;
            let recent = st
                .query_map(params![recent as i64], |r| {
                    Ok(Conflict {
                        key: r.get(0)?,
                        replaced_version: r.get(1)?,
                        at_ms: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Conflicts { count, recent })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_conflict_noted_again_by_a_retried_upload_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.db")).unwrap();
        j.note_conflict(7, "k".into(), "v1".into()).await.unwrap();
        j.note_conflict(7, "k".into(), "v1".into()).await.unwrap();
        j.note_conflict(9, "k".into(), "v2".into()).await.unwrap();
        let c = j.conflicts(10).await.unwrap();
        assert_eq!(c.count, 2);
        let replaced: Vec<_> = c
            .recent
            .iter()
            .map(|c| c.replaced_version.as_str())
            .collect();
        assert_eq!(replaced, ["v2", "v1"], "newest first");
    }

    #[tokio::test]
    async fn the_own_last_version_is_the_newest_that_reached_the_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.db")).unwrap();
        let put =
            |file: &str| crate::journal::NewOp::put("k".into(), file.into(), 1, "{}".into(), None);
        assert_eq!(j.own_last_version("k".into()).await.unwrap(), None);
        let first = j.stage(put("f1")).await.unwrap();
        j.complete(first, Some("v1".into())).await.unwrap();
        // Superseded (its file was gone): done, but it made no version.
        let second = j.stage(put("f2")).await.unwrap();
        j.drop_ops(vec![second], "gone".into(), true).await.unwrap();
        assert_eq!(
            j.own_last_version("k".into()).await.unwrap().as_deref(),
            Some("v1")
        );
    }
}
