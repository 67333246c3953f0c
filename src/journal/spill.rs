//! The open operations the upload queue keeps out of memory (see
//! `uploader`, "Spill"): read back oldest first as the queue drains, and
//! looked up meanwhile by key, by prefix and by the cache file they read.
//!
//! The lookups come from callers holding the mount's locks, so they are
//! answered synchronously by a [`SpillReader`]: a read-only connection of
//! its own beside the journal's writer (WAL lets it read while the writer
//! commits). Each lookup is its own read transaction and sees every commit
//! made before it: an operation is visible here from the moment its
//! submit is answered, which is before the queue counts it as spilled.

use std::sync::Mutex;

use super::*;

/// Rows still to run: not done, not dropped as lost.
const OPEN: &str = "state != 'done' AND state != 'lost'";

/// Synchronous lookups of open operations past a seq.
pub(crate) struct SpillReader {
    conn: Mutex<Connection>,
    path: String,
}

impl SpillReader {
    /// A reader of the journal at `path` (which [`Journal::open`] created).
    pub fn open(path: &Path) -> Result<SpillReader, JournalError> {
        let (conn, p) = read_only_connection(path)?;
        // Lookups touch a few index pages: a small page cache is enough,
        // and this connection lives as long as the mount.
        conn.pragma_update(None, "cache_size", -256)
            .map_err(|source| JournalError::Sqlite {
                path: p.clone(),
                source,
            })?;
        Ok(SpillReader {
            conn: Mutex::new(conn),
            path: p,
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, JournalError> {
        f(&self.conn.lock().unwrap()).map_err(|source| JournalError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// The open operations of `key` after seq `after`, oldest first.
    pub(crate) fn of_key(&self, key: &str, after: i64) -> Result<Vec<Op>, JournalError> {
        self.with(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {OP_COLUMNS} FROM ops WHERE key = ?1 AND seq > ?2 AND {OPEN} ORDER BY seq"
            ))?;
            let rows = st.query_map(params![key, after], op_from_row)?;
            rows.collect()
        })
    }

    /// The newest open operation after seq `after` of every key under
    /// `prefix`, by key.
    pub fn under(&self, prefix: &str, after: i64) -> Result<Vec<Op>, JournalError> {
        // The key range is bounded above: with only `key >= prefix`, SQLite
        // walks the index past the prefix to the end of the table looking
        // for a row that passes the other terms (a few milliseconds a
        // lookup in a 100,000-file journal). No valid UTF-8 key starting
        // with `prefix` sorts at or above prefix + the bytes F4 90 80 80
        // (above the largest code point, U+10FFFF).
        self.with(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {OP_COLUMNS} FROM ops WHERE key >= ?1 AND key < (?1 || CAST(X'F4908080' AS TEXT)) AND seq > ?2 AND {OPEN} ORDER BY key, seq"
            ))?;
            let mut rows = st.query(params![prefix, after])?;
            let mut out: Vec<Op> = Vec::new();
            while let Some(row) = rows.next()? {
                let op = op_from_row(row)?;
                if !op.key.starts_with(prefix) {
                    break;
                }
                match out.last_mut() {
                    Some(last) if last.key == op.key => *last = op,
                    _ => out.push(op),
                }
            }
            Ok(out)
        })
    }

    /// The open operations after seq `after` that read cache file `file`.
    pub fn reading(&self, file: &str, after: i64) -> Result<Vec<i64>, JournalError> {
        self.with(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT seq FROM ops WHERE file = ?1 AND seq > ?2 AND {OPEN} ORDER BY seq"
            ))?;
            let rows = st.query_map(params![file, after], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Whether operation `seq` is still to run.
    pub(crate) fn is_open(&self, seq: i64) -> Result<bool, JournalError> {
        self.with(|c| {
            c.prepare_cached(&format!("SELECT 1 FROM ops WHERE seq = ?1 AND {OPEN}"))?
                .exists(params![seq])
        })
    }
}

impl Journal {
    /// At most `limit` open operations after seq `after`, oldest first.
    pub(crate) async fn open_ops_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Op>, JournalError> {
        self.run(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {OP_COLUMNS} FROM ops WHERE seq > ?1 AND {OPEN} ORDER BY seq LIMIT ?2"
            ))?;
            let rows = st.query_map(params![after, limit as i64], op_from_row)?;
            rows.collect()
        })
        .await
    }

    /// The seqs of every open operation after `after`, ascending.
    pub(crate) async fn open_seqs_after(&self, after: i64) -> Result<Vec<i64>, JournalError> {
        self.run(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT seq FROM ops WHERE seq > ?1 AND {OPEN} ORDER BY seq"
            ))?;
            let rows = st.query_map(params![after], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    /// The cache files open operations read (each once).
    pub(crate) async fn open_files(&self) -> Result<Vec<String>, JournalError> {
        self.run(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT DISTINCT file FROM ops WHERE file IS NOT NULL AND {OPEN}"
            ))?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    #[cfg(test)]
    /// How many operations are open.
    pub(crate) async fn open_count(&self) -> Result<usize, JournalError> {
        self.run(move |c| {
            c.query_row(&format!("SELECT COUNT(*) FROM ops WHERE {OPEN}"), [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .await
        .map(|n| n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, file: &str) -> NewOp {
        NewOp::put(key.into(), file.into(), 1, "{}".into(), None)
    }

    #[tokio::test]
    async fn lookups_see_open_ops_past_a_seq_as_soon_as_they_are_staged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let j = Journal::open(&path).unwrap();
        let r = SpillReader::open(&path).unwrap();
        let a1 = j.stage(put("d/a", "f1")).await.unwrap();
        let b1 = j.stage(put("d/b", "f2")).await.unwrap();
        let a2 = j.stage(put("d/a", "f3")).await.unwrap();
        let c1 = j.stage(put("e/c", "f3")).await.unwrap();
        let seqs = |ops: Vec<Op>| ops.iter().map(|o| o.seq).collect::<Vec<_>>();
        assert_eq!(seqs(r.of_key("d/a", 0).unwrap()), vec![a1, a2]);
        assert_eq!(seqs(r.of_key("d/a", a1).unwrap()), vec![a2]);
        assert_eq!(
            seqs(r.under("d/", 0).unwrap()),
            vec![a2, b1],
            "newest per key"
        );
        assert_eq!(seqs(r.under("d/", b1).unwrap()), vec![a2]);
        assert_eq!(seqs(r.under("", 0).unwrap()), vec![a2, b1, c1], "every key");

        assert_eq!(r.reading("f3", 0).unwrap(), vec![a2, c1]);
        assert_eq!(r.reading("f3", a2).unwrap(), vec![c1]);
        assert!(r.is_open(b1).unwrap());

        j.complete(a1, Some("v".into())).await.unwrap();
        j.drop_ops(vec![b1], "gone".into(), false).await.unwrap();
        assert_eq!(seqs(r.of_key("d/a", 0).unwrap()), vec![a2]);
        assert!(!r.is_open(b1).unwrap(), "lost is not open");
        assert_eq!(seqs(j.open_ops_after(0, 10).await.unwrap()), vec![a2, c1]);
        assert_eq!(seqs(j.open_ops_after(a2, 10).await.unwrap()), vec![c1]);
        assert_eq!(seqs(j.open_ops_after(0, 1).await.unwrap()), vec![a2]);
        assert_eq!(j.open_seqs_after(0).await.unwrap(), vec![a2, c1]);
        let mut files = j.open_files().await.unwrap();
        files.sort();
        assert_eq!(files, vec!["f3".to_string()]);
        assert_eq!(j.open_count().await.unwrap(), 2);
        // Keys with the highest code points are still under their prefix.
        let last = j.stage(put("d/\u{10FFFD}z", "f4")).await.unwrap();
        assert_eq!(seqs(r.under("d/", a2).unwrap()), vec![last]);
    }
}
