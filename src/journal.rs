//! Crash-safe state: the operations waiting to reach the source bucket, and what
//! the last finished one per key produced (its version id).
//!
//! # Overview
//! Every change the mount makes to the bucket is an *operation* row (`ops`): put a
//! staged cache file, delete, copy (metadata change or rename of a clean object),
//! or a directory marker. Operations on one key run in `seq` order; operations
//! on different keys are independent (a copy names its source version).
//!
//! # Consistency
//! One SQLite database in WAL mode. A single actor thread owns the connection
//! and commits the requests that queued up meanwhile in one transaction (group
//! commit); each request runs under its own savepoint, so one failing request
//! does not fail the others. Callers are answered only after the commit.
//!
//! A commit is synced to disk (`synchronous=FULL`) before it is answered,
//! so nothing is acknowledged that is not durable — except the bookkeeping of
//! background progress that can be redone ([`Durability::Lazy`]): a replica
//! done, a failed attempt, the upload of an op whose bytes are in its row or
//! that has no cache file. Those commits are written to the WAL without their
//! own sync; they survive a crash of the process (the WAL is in the page
//! cache) and become durable with the next synced commit or checkpoint (the
//! WAL is one append-only file: a later sync covers every earlier commit, so a
//! power loss keeps a prefix of the commits). After a power loss such a
//! commit may be lost: the op uploads again (a duplicate version with the
//! same bytes; its inline bytes are still in the row) or the replica is
//! checked again (it is found and not written twice).
//!
//! # Crash consistency
//! The steps of a write, in order, and what recovery does after a crash at each:
//! 1. Data written to `data/<file>` in the cache: not acknowledged; after a crash
//!    the file is unknown to the journal and is quarantined, never uploaded.
//! 2. `fsync(data/<file>)`, `fsync(data/)`, then `stage()` commits a `pending` put:
//!    only now does close()/fsync() return. After a crash the row is re-queued.
//!    A file of at most [`INLINE_MAX`] bytes is instead committed with its bytes
//!    (in `op_bodies`, beside its row), without those fsyncs: one commit makes
//!    it durable.
//!    Recovery rewrites its cache file from the row before anything reads it (a
//!    staged file is never written again, so the row and the file agree).
//! 3. Upload (PUT, or multipart with its upload id recorded first): a crash leaves
//!    the row pending; recovery aborts a recorded multipart upload and uploads
//!    again. A PUT that landed but was not recorded is uploaded again: at worst a
//!    duplicate version with identical bytes, never a lost one.
//! 4. `complete()` records the version id and marks the row done, in one commit.
//!    After that the cache file is no longer needed by the journal.
//!
//! Parts of a large file may be uploaded *before* its close (`uploader::early`):
//! that multipart upload id is recorded in `early_uploads` before its first
//! part, and recovery aborts every one left there. Nothing of it is
//! acknowledged; once its file is staged the upload id also goes into the op
//! row (step 3), so the usual recovery applies.
//!
//! Recovery reads only rows that are not done: its cost is O(pending work).
//! Done rows are pruned to the latest per key (status needs its version id),
//! and a version done everywhere is folded into one row per key (`history`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc};

use rusqlite::{params, Connection, Row};

use crate::clock::now_ms;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

mod conflicts;
mod discovery;
mod history;
mod ops;
mod schema;
mod spill;
mod summary;
mod tasks;

pub(crate) use conflicts::Conflicts;
pub(crate) use discovery::DiscoveryStats;
pub use discovery::Seen;
use ops::{op_from_row, OP_COLUMNS};
use schema::{ADDED_COLUMNS, BODIES, SCHEMA};
pub(crate) use spill::SpillReader;
use tasks::{insert_task, task_from_row, TASK_COLUMNS};

/// Why the journal could not do what was asked. Any of these on a write means
/// the write was NOT made durable and must not be acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("journal {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("journal {0} is closed")]
    Closed(String),
    #[error("journal {0}: injected disk failure")]
    Injected(String),
}

impl JournalError {
    /// Whether the journal's disk failed under it (an I/O error, a read-only
    /// or corrupt file, an injected failure), as opposed to a full disk or a
    /// closed journal: see `cache::failure`.
    pub(crate) fn is_disk_failure(&self) -> bool {
        use rusqlite::ErrorCode::*;
        match self {
            JournalError::Injected(_) => true,
            JournalError::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::EIO) | Some(libc::EROFS))
            }
            JournalError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(SystemIoFailure | ReadOnly | DatabaseCorrupt | NotADatabase)
            ),
            JournalError::Closed(_) => false,
        }
    }
}

/// What an operation does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Upload the staged cache file as a new version.
    Put,
    /// Write a delete marker.
    Delete,
    /// Copy `src_key` (at `src_version`, else current) onto the key with new metadata.
    Copy,
}

impl OpKind {
    fn as_str(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Delete => "delete",
            OpKind::Copy => "copy",
        }
    }
    fn parse(s: &str) -> OpKind {
        match s {
            "put" => OpKind::Put,
            "delete" => OpKind::Delete,
            _ => OpKind::Copy,
        }
    }
}

/// An operation to stage.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOp {
    pub key: String,
    pub kind: OpKind,
    /// Put: the cache file name under `data/`.
    pub file: Option<String>,
    pub size: u64,
    /// JSON of the object's metadata (see `fs::meta`).
    pub meta: String,
    pub src_key: Option<String>,
    pub src_version: Option<String>,
    /// Put of a small file: its bytes, kept in the journal until uploaded. The
    /// commit then makes the data durable by itself (no fsync of the cache file
    /// or its directory), and recovery rewrites the cache file from it.
    pub inline: Option<Vec<u8>>,
    /// Put: the object the writer last saw at the key (see [`Base`]); `None`
    /// for writes that replace whatever is there (renames, metadata).
    pub base: Option<Base>,
}

/// The source object a put was written over, as the writing host last saw
/// it: the uploader reports an upload that replaces anything else (another
/// writer's version this host never read; see `uploader::guard`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Base {
    /// Empty: no object at the key (a new file).
    pub etag: String,
    /// Its version id, where the host learned one (a listing gives none).
    pub version: Option<String>,
}

impl NewOp {
    /// A delete marker for `key`.
    pub fn delete(key: String) -> NewOp {
        NewOp {
            key,
            kind: OpKind::Delete,
            file: None,
            size: 0,
            meta: "{}".into(),
            src_key: None,
            src_version: None,
            inline: None,
            base: None,
        }
    }

    /// A put of cache file `file` (`inline`: its bytes, for a small file).
    pub fn put(
        key: String,
        file: String,
        size: u64,
        meta: String,
        inline: Option<Vec<u8>>,
    ) -> NewOp {
        NewOp {
            key,
            kind: OpKind::Put,
            file: Some(file),
            size,
            meta,
            src_key: None,
            src_version: None,
            inline,
            base: None,
        }
    }
}

/// Files up to this size are staged inline in the journal.
pub(crate) const INLINE_MAX: u64 = 64 * 1024;

/// A staged operation as the journal holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub seq: i64,
    pub key: String,
    pub kind: OpKind,
    pub file: Option<String>,
    pub size: u64,
    pub meta: String,
    pub src_key: Option<String>,
    pub src_version: Option<String>,
    pub state: OpState,
    pub attempts: u32,
    pub error: Option<String>,
    pub(crate) multipart_id: Option<String>,
    pub version_id: Option<String>,
    pub(crate) staged_at_ms: i64,
    /// Its bytes are in the row (a small put): a power loss after its upload
    /// can be redone from the row alone.
    pub inline: bool,
    pub base: Option<Base>,
}

#[cfg(test)]
impl Op {
    /// A pending operation on `key` with nothing else set (tests).
    pub(crate) fn pending(seq: i64, key: &str, kind: OpKind) -> Op {
        Op {
            seq,
            key: key.to_string(),
            kind,
            file: None,
            size: 0,
            meta: String::new(),
            src_key: None,
            src_version: None,
            state: OpState::Pending,
            attempts: 0,
            error: None,
            multipart_id: None,
            version_id: None,
            staged_at_ms: 0,
            inline: false,
            base: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpState {
    Pending,
    Failed,
    Done,
    /// Never run: its input was gone and nothing queued after it set its
    /// key (see `uploader::replan`). Counted as failed, never retried;
    /// cleared once a newer operation on the key is done.
    Lost,
}

/// Totals for `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UploadSummary {
    pub pending: u64,
    pub pending_bytes: u64,
    pub failed: u64,
    pub oldest_pending_s: f64,
}

/// A replication task to create with the upload that produced its version.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub destination: String,
    pub rule_id: String,
    /// `version` (copy the object version) or `delete` (a delete marker).
    pub kind: TaskKind,
    pub storage_class: Option<String>,
    /// The version's CRC-64/NVME (base64) where the upload learned it: the
    /// replica is written with it, so the destination checks the bytes
    /// against what left the cache at close.
    pub checksum: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Version,
    Delete,
}

/// Replication state of one version at one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TaskStatus {
    #[serde(rename = "PENDING")]
    Pending,
    #[serde(rename = "COMPLETED")]
    Completed,
    #[serde(rename = "FAILED")]
    Failed,
}

impl TaskStatus {
    fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "PENDING",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::Failed => "FAILED",
        }
    }
}

/// One version to replicate to one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: i64,
    /// The operation that produced the version: orders versions of one key.
    pub seq: i64,
    pub key: String,
    pub version_id: String,
    pub destination: String,
    pub rule_id: String,
    pub kind: TaskKind,
    pub size: u64,
    pub storage_class: Option<String>,
    pub status: TaskStatus,
    pub attempts: u32,
    pub error: Option<String>,
    pub replica_version: Option<String>,
    /// When the version was staged (its close/fsync): lag and the time
    /// target count from here.
    pub created_at_ms: i64,
    /// See [`NewTask::checksum`].
    pub checksum: Option<String>,
}

/// What a completed task left at its destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Replica {
    /// The replica's (or delete marker's) version id; `None` when nothing
    /// was written (already there, superseded, or unversioned).
    pub version: Option<String>,
    /// The replica's ETag, when this task wrote it.
    pub etag: Option<String>,
}

/// A key's last completed task at a destination ([`Journal::previous_replica`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PreviousReplica {
    pub version_id: String,
    /// The replica's ETag, when that task wrote one.
    pub(crate) replica_etag: Option<String>,
    /// Made from this journal's own upload (not resync or discovery): such
    /// versions of one key were uploaded one after another, in task order.
    pub own: bool,
}

/// The oldest open tasks of a destination and a summary of all of them
/// ([`Journal::open_tasks_window`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskWindow {
    pub tasks: Vec<Task>,
    /// Open tasks of the destination, those in `tasks` included.
    pub open: u64,
    /// The earliest `created_at_ms` among them.
    pub(crate) earliest_ms: Option<i64>,
}

/// Per-destination totals for `status` and metrics (exact: from the journal).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DestinationSummary {
    pub pending: u64,
    pub pending_bytes: u64,
    pub failed: u64,
    pub oldest_pending_s: f64,
    pub missed_target: u64,
    pub completed: u64,
    pub bytes_replicated: u64,
}

/// Runs one statement through the connection's statement cache: the
/// statements of every commit are parsed once, not at each.
fn exec_cached<P: rusqlite::Params>(c: &Connection, sql: &str, p: P) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// `query_row` through the statement cache.
fn query_cached<T, P: rusqlite::Params>(
    c: &Connection,
    sql: &str,
    p: P,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(p, f)
}

type Completer = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A job runs inside a group commit; given no connection (the transaction
/// could not begin) it does not run at all and only reports the failure.
type Job = (
    Durability,
    Box<dyn FnOnce(Option<&Connection>) -> (bool, Completer) + Send>,
);

/// Whether a change must be on disk before its caller is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Synced before the answer: everything that acknowledges a write, and
    /// everything whose loss could not be redone (see the module docs).
    Synced,
    /// Progress that a power loss may undo and the next start redoes safely.
    Lazy,
    /// Run by itself, outside any transaction (VACUUM cannot run in one).
    Alone,
}

/// Handle to the journal actor. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Job>,
    path: Arc<String>,
    fail_after: Arc<AtomicI64>,
    /// Jobs sent so far: what an operation costs the journal, counted.
    jobs: Arc<std::sync::atomic::AtomicU64>,
}

/// How long a commit waits for another process's lock on the journal.
#[cfg(not(test))]
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// In tests: short, so a test of a lock held by another connection is
/// quick, yet long enough that a service restarted within a test is not
/// refused while the stopped one's last checkpoint waits for a busy disk
/// (200 ms was not, with a large copy running beside the tests).
#[cfg(test)]
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Makes the journal at `path` (created empty if missing, which SQLite takes
/// as a new database) and its `-wal` and `-shm` files readable by their owner
/// only: they hold keys, metadata and small files' bytes. SQLite gives the
/// `-wal` and `-shm` files it creates the database file's mode.
fn owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        match std::fs::metadata(&file) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Settings every connection to the journal gets.
///
/// The query planner stability guarantee: a statement's plan never depends
/// on the values bound to it. Without it SQLite marks a parameter compared
/// with `=` as one that may change the plan, and `sqlite3_clear_bindings`,
/// which rusqlite calls whenever a cached statement goes back to its cache,
/// then expires the statement: every later use parsed and planned it again
/// (about three times per file created, and more once lookups reach the
/// spilled operations). Our statements are written for their indexes, so the
/// value-specific plans this gives up are never needed.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// A read-only connection to the journal at `path`, and the path as text.
fn read_only_connection(path: &Path) -> Result<(Connection, String), JournalError> {
    let p = path.display().to_string();
    let sq = |source| JournalError::Sqlite {
        path: p.clone(),
        source,
    };
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sq)?;
    configure(&conn).map_err(sq)?;
    Ok((conn, p))
}

impl Journal {
    /// Opens (creating if needed) the journal at `path` and starts its actor thread.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let p = path.display().to_string();
        let sq = |source| JournalError::Sqlite {
            path: p.clone(),
            source,
        };
        owner_only(path).map_err(|source| JournalError::Io {
            path: p.clone(),
            source,
        })?;
        let conn = Connection::open(path).map_err(sq)?;
        configure(&conn).map_err(sq)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sq)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sq)?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.execute_batch(SCHEMA).map_err(sq)?;
        for (table, column, add) in ADDED_COLUMNS {
            let has = conn
                .prepare(&format!(
                    "SELECT 1 FROM pragma_table_info('{table}') WHERE name = '{column}'"
                ))
                .and_then(|mut st| st.exists([]))
                .map_err(sq)?;
            if !has {
                conn.execute_batch(add).map_err(sq)?;
            }
        }
        conn.execute_batch(BODIES).map_err(sq)?;
        let folded = history::fold_finished(&conn).map_err(sq)?;
        if folded > 0 {
            tracing::info!(journal = %p, folded, "finished operations folded into one row per key");
        }
        Ok(Self::spawn(conn, p))
    }

    /// Opens an existing journal for reading (another process may own it).
    pub fn open_readonly(path: &Path) -> Result<Journal, JournalError> {
        let (conn, p) = read_only_connection(path)?;
        Ok(Self::spawn(conn, p))
    }

    fn spawn(conn: Connection, path: String) -> Journal {
        let (tx, rx) = mpsc::channel::<Job>();
        let fail_after = Arc::new(AtomicI64::new(-1));
        let fa = fail_after.clone();
        std::thread::Builder::new()
            .name("regionfs-journal".into())
            .spawn(move || actor(conn, rx, fa))
            .expect("spawn journal thread");
        Journal {
            tx,
            path: Arc::new(path),
            fail_after,
            jobs: Default::default(),
        }
    }

    /// Gives back what completed work left behind, at a clean stop: the
    /// write-ahead log is checkpointed and truncated, and the file is
    /// rewritten packed (the rows of completed uploads and replications are
    /// deleted as work goes on; their space stays in the file until then).
    pub(crate) async fn compact(&self) -> Result<(), JournalError> {
        self.send(Durability::Alone, |c| {
            let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let page: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            // Pruned rows also leave pages a third full: past 1 MiB the
            // rewrite (tens of milliseconds per MiB) is worth it.
            if free * 4 > pages || pages * page > 1 << 20 {
                c.execute_batch("VACUUM")?;
            }
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    #[cfg(test)]
    /// How many jobs (statements or transactions) were sent to the journal.
    pub(crate) fn jobs_sent(&self) -> u64 {
        self.jobs.load(Ordering::Relaxed)
    }

    /// SQLite's `quick_check` of the whole file: `Err` naming what it found
    /// unless the journal is intact.
    pub(crate) async fn quick_check(&self) -> Result<(), JournalError> {
        let found: String = self
            .run(|conn| conn.query_row("PRAGMA quick_check", [], |r| r.get(0)))
            .await?;
        if found == "ok" {
            Ok(())
        } else {
            Err(JournalError::Sqlite {
                path: self.path.to_string(),
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                    Some(format!("quick_check: {found}")),
                ),
            })
        }
    }

    /// Fault injection for tests: the next `n` commits succeed, every later one fails.
    pub fn fail_commits_after(&self, n: i64) {
        self.fail_after.store(n, Ordering::SeqCst);
    }

    /// Runs `f` inside the next group commit and returns its result once committed.
    async fn run<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.send(Durability::Synced, f).await
    }

    /// [`Journal::run`] for progress that may be redone ([`Durability::Lazy`]).
    async fn run_lazy<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.send(Durability::Lazy, f).await
    }

    /// Queues `f` for the next group commit *now* (jobs commit in the order they
    /// were sent) and returns a future for its committed result.
    fn send<T, F>(
        &self,
        durability: Durability,
        f: F,
    ) -> impl std::future::Future<Output = Result<T, JournalError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, JournalError>>();
        self.jobs.fetch_add(1, Ordering::Relaxed);
        let path = self.path.clone();
        let job: Job = (
            durability,
            Box::new(move |conn| {
                let r = conn.map(f);
                let ok = matches!(r, Some(Ok(_)));
                let done: Completer = Box::new(move |commit| {
                    let out = match (r, commit) {
                        (Some(Ok(v)), Ok(())) => Ok(v),
                        (Some(Err(source)), _) => Err(JournalError::Sqlite {
                            path: path.to_string(),
                            source,
                        }),
                        (_, Err(msg)) if msg == "injected" => {
                            Err(JournalError::Injected(path.to_string()))
                        }
                        (_, Err(msg)) => Err(JournalError::Sqlite {
                            path: path.to_string(),
                            source: rusqlite::Error::InvalidParameterName(msg),
                        }),
                        (None, Ok(())) => Err(JournalError::Sqlite {
                            path: path.to_string(),
                            source: rusqlite::Error::InvalidParameterName("job not run".into()),
                        }),
                    };
                    let _ = tx.send(out);
                });
                (ok, done)
            }),
        );
        let sent = self.tx.send(job);
        let path = self.path.clone();
        async move {
            sent.map_err(|_| JournalError::Closed(path.to_string()))?;
            rx.await
                .map_err(|_| JournalError::Closed(path.to_string()))?
        }
    }

    /// Runs one statement that changes the journal.
    async fn exec(
        &self,
        sql: &'static str,
        values: Vec<rusqlite::types::Value>,
    ) -> Result<(), JournalError> {
        self.run(move |c| {
            exec_cached(c, sql, rusqlite::params_from_iter(values))?;
            Ok(())
        })
        .await
    }

    /// [`Journal::exec`] for a note that may be lost ([`Durability::Lazy`]).
    async fn exec_lazy(
        &self,
        sql: &'static str,
        values: Vec<rusqlite::types::Value>,
    ) -> Result<(), JournalError> {
        self.run_lazy(move |c| {
            exec_cached(c, sql, rusqlite::params_from_iter(values))?;
            Ok(())
        })
        .await
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(self.path.as_str())
    }
}

/// The actor: takes every job that is waiting, runs each under a savepoint in one
/// transaction, commits once, then answers them all.
fn actor(conn: Connection, rx: mpsc::Receiver<Job>, fail_after: Arc<AtomicI64>) {
    // The connection opens with synchronous=FULL.
    let mut synced = true;
    let mut next: Option<Job> = None;
    while let Some(first) = next.take().or_else(|| rx.recv().ok()) {
        if first.0 == Durability::Alone {
            let (_, complete) = (first.1)(Some(&conn));
            complete(Ok(()));
            continue;
        }
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(j) if j.0 == Durability::Alone => {
                    next = Some(j);
                    break;
                }
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut done = Vec::with_capacity(batch.len());
        // The level can only change between transactions; a batch is synced
        // if any of its jobs must be.
        let sync = batch.iter().any(|(d, _)| *d == Durability::Synced);
        if sync != synced {
            let level = if sync { "FULL" } else { "NORMAL" };
            match conn.pragma_update(None, "synchronous", level) {
                Ok(()) => synced = sync,
                Err(e) => {
                    for (_, job) in batch {
                        let (_, complete) = job(None);
                        complete(Err(e.to_string()));
                    }
                    continue;
                }
            }
        }
        let began = exec_cached(&conn, "BEGIN IMMEDIATE", []).map(|_| ());
        if let Err(e) = began {
            // Not run: outside a transaction each statement would commit on
            // its own, and a job reported failed must have changed nothing.
            for (_, job) in batch {
                let (_, complete) = job(None);
                complete(Err(e.to_string()));
            }
            continue;
        }
        for (_, job) in batch {
            let _ = exec_cached(&conn, "SAVEPOINT job", []).map(|_| ());
            let (ok, complete) = job(Some(&conn));
            if ok {
                let _ = exec_cached(&conn, "RELEASE job", []).map(|_| ());
            } else {
                let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            }
            done.push(complete);
        }
        let left = fail_after.load(Ordering::SeqCst);
        let commit = if left == 0 {
            let _ = conn.execute_batch("ROLLBACK");
            Err("injected".to_string())
        } else {
            if left > 0 {
                fail_after.store(left - 1, Ordering::SeqCst);
            }
            exec_cached(&conn, "COMMIT", []).map(|_| ()).map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                e.to_string()
            })
        };
        for complete in done {
            complete(commit.clone());
        }
    }
}

#[cfg(test)]
mod tests;
