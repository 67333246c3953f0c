//! The journal's tables: operations (`ops`), replication tasks (`tasks`),
//! what landed per key once its work is done (`landed`), and the small
//! tables beside them; and the columns older journals lack, added at open.

/// Columns journals made by earlier versions lack, with what adds each:
/// inline staging, replicas written conditionally (their ETag), uploads
/// that know what they were written over, versions' CRC-64/NVME.
pub(super) const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("ops", "inline", "ALTER TABLE ops ADD COLUMN inline BLOB"),
    (
        "tasks",
        "replica_etag",
        "ALTER TABLE tasks ADD COLUMN replica_etag TEXT",
    ),
    (
        "ops",
        "base_etag",
        "ALTER TABLE ops ADD COLUMN base_etag TEXT; ALTER TABLE ops ADD COLUMN base_version TEXT",
    ),
    (
        "tasks",
        "checksum",
        "ALTER TABLE tasks ADD COLUMN checksum TEXT",
    ),
];

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ops (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    file TEXT,
    size INTEGER NOT NULL DEFAULT 0,
    meta TEXT NOT NULL DEFAULT '{}',
    src_key TEXT,
    src_version TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    multipart_id TEXT,
    version_id TEXT,
    staged_at INTEGER NOT NULL,
    done_at INTEGER,
    inline BLOB,
    base_etag TEXT,
    base_version TEXT
);
CREATE INDEX IF NOT EXISTS ops_open ON ops(state) WHERE state != 'done';
CREATE INDEX IF NOT EXISTS ops_key ON ops(key, seq);
CREATE INDEX IF NOT EXISTS ops_open_file ON ops(file) WHERE state != 'done';
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    version_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    storage_class TEXT,
    status TEXT NOT NULL DEFAULT 'PENDING',
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    replica_version TEXT,
    created_at INTEGER NOT NULL,
    done_at INTEGER,
    replica_etag TEXT,
    checksum TEXT
);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks(status) WHERE status != 'COMPLETED';
CREATE INDEX IF NOT EXISTS tasks_key ON tasks(key, destination, id);
CREATE INDEX IF NOT EXISTS tasks_open_dest ON tasks(destination, id, created_at) WHERE status != 'COMPLETED';
CREATE INDEX IF NOT EXISTS tasks_open_seq ON tasks(seq) WHERE status != 'COMPLETED';
CREATE TABLE IF NOT EXISTS landed (
    key TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    version_id TEXT,
    done_at INTEGER NOT NULL,
    replicas TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS early_uploads (
    upload_id TEXT PRIMARY KEY,
    key TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS regions (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bucket_acls (
    bucket TEXT PRIMARY KEY,
    support TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    key TEXT PRIMARY KEY,
    version_id TEXT NOT NULL,
    etag TEXT NOT NULL,
    modified_ms INTEGER,
    deleted INTEGER NOT NULL,
    settled INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS discovery (
    shard TEXT PRIMARY KEY,
    passes INTEGER NOT NULL,
    last_pass_ms INTEGER NOT NULL,
    last_took_ms INTEGER NOT NULL,
    keys INTEGER NOT NULL,
    changed INTEGER NOT NULL,
    queued INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    total_queued INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS conflicts (
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    replaced_version TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (seq, replaced_version)
);
CREATE TABLE IF NOT EXISTS replication_stats (
    destination TEXT PRIMARY KEY,
    completed INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    missed_target INTEGER NOT NULL DEFAULT 0
);
";

/// The bytes of small files staged inline, one row per op, beside `ops`
/// rather than in it. A lookup reads the op columns stored after a blob by
/// walking the blob's overflow pages, so bytes kept in the op row made every
/// lookup of a small file read the whole file (up to 64 KiB) again. The op
/// row keeps an empty `inline` as the mark that its bytes are here (rows of
/// older journals keep the bytes themselves, which recovery also reads).
/// Clearing `inline` or deleting the op deletes its bytes.
/// Run after [`ADDED_COLUMNS`]: the triggers name `ops.inline`.
pub(super) const BODIES: &str = "
CREATE TABLE IF NOT EXISTS op_bodies (
    seq INTEGER PRIMARY KEY,
    bytes BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS op_bodies_forgotten AFTER UPDATE OF inline ON ops
    WHEN NEW.inline IS NULL
    BEGIN DELETE FROM op_bodies WHERE seq = NEW.seq; END;
CREATE TRIGGER IF NOT EXISTS op_bodies_deleted AFTER DELETE ON ops
    BEGIN DELETE FROM op_bodies WHERE seq = OLD.seq; END;
";
