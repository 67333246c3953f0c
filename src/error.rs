//! The errors of the lowest layers: a configuration that cannot be used, and
//! what a bucket answered ([`StoreError`], classified permanent or
//! transient for retries). Each layer above has its own enum next to it
//! (`CacheError`, `JournalError`, …); the filesystem's, with the one table that
//! turns every error into an errno, is `fs::FsError`. The binary wraps
//! everything in `anyhow` for the user.

use std::path::PathBuf;

/// Why a configuration cannot be used. Every variant names the field or the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config syntax error{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Syntax {
        line: Option<usize>,
        message: String,
    },
    #[error("config field `{field}`{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Field {
        field: String,
        line: Option<usize>,
        message: String,
    },
}

/// What went wrong talking to one bucket. [`StoreError::is_permanent`] decides
/// retry (with backoff) versus a visible failed state.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bucket {bucket} does not exist: create it and enable versioning")]
    NoSuchBucket { bucket: String },
    #[error("no such key `{key}` in {bucket}")]
    NotFound { bucket: String, key: String },
    #[error("access to {bucket} denied ({code}): {message}. Check the credentials (aws-config chain, `profile` or access_key_id) and the bucket policy")]
    AccessDenied {
        bucket: String,
        code: String,
        message: String,
    },
    #[error("precondition failed on `{key}` in {bucket}")]
    PreconditionFailed { bucket: String, key: String },
    #[error("{bucket} is throttling requests ({code})")]
    Throttled { bucket: String, code: String },
    #[error("{bucket} answered a server error (HTTP {status}, {code}): {message}")]
    Server {
        bucket: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach {bucket}: {message}")]
    Unreachable { bucket: String, message: String },
    /// An answer that is not S3's: XML that does not parse, a body shorter
    /// than its Content-Length, bytes that do not match their checksum.
    /// Retried: a proxy or a store under strain may answer right next time.
    #[error("{bucket} answered something that is not a valid S3 response: {message}")]
    Malformed { bucket: String, message: String },
    /// Bytes that do not match the CRC-64/NVME they were sent or read with:
    /// changed on the way, or read from a source that changed. Retried (from
    /// another region where it is a read); never kept.
    #[error("bytes of `{key}` do not match their checksum at {bucket}: {message}")]
    BadDigest {
        bucket: String,
        key: String,
        message: String,
    },
    #[error("{bucket} rejected the request (HTTP {status}, {code}): {message}")]
    Rejected {
        bucket: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("local file for an upload to {bucket}: {source}")]
    LocalIo {
        bucket: String,
        source: std::io::Error,
    },
    #[error("{bucket} does not take object ACLs ({code}): {message}")]
    AclNotSupported {
        bucket: String,
        code: String,
        message: String,
    },
    #[error("object too large for {bucket}: {size} bytes (limit {limit})")]
    TooLarge {
        bucket: String,
        size: u64,
        limit: u64,
    },
}

impl StoreError {
    /// Permanent errors will not clear by retrying the same request; they go to a
    /// visible failed state (and are retried when the condition is fixed).
    /// Transient ones (throttling, 5xx, network) are retried with backoff.
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::NoSuchBucket { .. }
            | StoreError::NotFound { .. }
            | StoreError::AccessDenied { .. }
            | StoreError::PreconditionFailed { .. }
            | StoreError::Rejected { .. }
            | StoreError::AclNotSupported { .. }
            | StoreError::TooLarge { .. } => true,
            StoreError::Throttled { .. }
            | StoreError::Server { .. }
            | StoreError::Unreachable { .. }
            | StoreError::Malformed { .. }
            | StoreError::BadDigest { .. } => false,
            // A vanished or unreadable cache file will not come back by itself.
            StoreError::LocalIo { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// The S3 error code where there is one, for status output.
    pub fn code(&self) -> &str {
        match self {
            StoreError::NoSuchBucket { .. } => "NoSuchBucket",
            StoreError::NotFound { .. } => "NoSuchKey",
            StoreError::AccessDenied { code, .. }
            | StoreError::Throttled { code, .. }
            | StoreError::Server { code, .. }
            | StoreError::Rejected { code, .. }
            | StoreError::AclNotSupported { code, .. } => code,
            StoreError::PreconditionFailed { .. } => "PreconditionFailed",
            StoreError::Unreachable { .. } => "Unreachable",
            StoreError::Malformed { .. } => "MalformedResponse",
            StoreError::BadDigest { .. } => "BadDigest",
            StoreError::LocalIo { .. } => "LocalIo",
            StoreError::TooLarge { .. } => "EntityTooLarge",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_and_transient_store_errors_are_classified() {
        let b = || "`b`".to_string();
        assert!(StoreError::NoSuchBucket { bucket: b() }.is_permanent());
        assert!(StoreError::AccessDenied {
            bucket: b(),
            code: "AccessDenied".into(),
            message: String::new()
        }
        .is_permanent());
        assert!(!StoreError::Throttled {
            bucket: b(),
            code: "SlowDown".into()
        }
        .is_permanent());
        assert!(!StoreError::Server {
            bucket: b(),
            status: 503,
            code: "ServiceUnavailable".into(),
            message: String::new()
        }
        .is_permanent());
        assert!(!StoreError::Unreachable {
            bucket: b(),
            message: "refused".into()
        }
        .is_permanent());
    }
}
