//! What a filesystem operation answers, and the one table that turns every
//! error of every layer into the errno the kernel gets ([`FsError::errno`]):
//! only the FUSE adapter calls it.

use crate::error::StoreError;

/// What a filesystem operation answers. [`FsError::errno`] is the one table that
/// turns every error of every layer into the errno the kernel gets.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("name too long")]
    NameTooLong,
    #[error("file too large: over the largest object S3 stores (5 TiB)")]
    TooLarge,
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("no such attribute")]
    NoAttribute,
    #[error("buffer too small")]
    Range,
    #[error("bad file handle")]
    BadHandle,
    #[error("read-only filesystem")]
    ReadOnly,
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("upload failed: {0}")]
    Upload(String),
}

impl FsError {
    /// Whether this error says the local disk (cache files or journal) failed:
    /// see `cache::failure`.
    pub(crate) fn is_disk_failure(&self) -> bool {
        match self {
            FsError::Journal(e) => e.is_disk_failure(),
            FsError::Cache(crate::cache::CacheError::Io { source, .. }) | FsError::Io(source) => {
                crate::cache::failure::is_fatal(source)
            }
            FsError::Cache(crate::cache::CacheError::DiskFailed { .. }) => true,
            _ => false,
        }
    }

    /// The errno table. Arguable choices carry a comment.
    pub fn errno(&self) -> i32 {
        use crate::cache::CacheError;
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::TooLarge => libc::EFBIG,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NoAttribute => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::BadHandle => libc::EBADF,
            FsError::ReadOnly => libc::EROFS,
            // cp -a and friends skip attributes that answer ENOTSUP.
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            // The object vanished from the bucket behind our back.
            FsError::Store(StoreError::NotFound { .. }) => libc::ENOENT,
            FsError::Store(StoreError::TooLarge { .. }) => libc::EFBIG,
            FsError::Store(StoreError::AccessDenied { .. }) => libc::EACCES,
            // Remote failures surface as I/O errors; nothing local is lost.
            FsError::Store(_) => libc::EIO,
            // A journal that cannot commit means the write is not durable.
            FsError::Journal(_) => libc::EIO,
            FsError::Cache(CacheError::NoSpace { .. }) => libc::ENOSPC,
            FsError::Cache(CacheError::Io { source, .. }) | FsError::Io(source) => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            FsError::Cache(CacheError::Locked { .. }) => libc::EBUSY,
            // The disk failed earlier: nothing written now could be trusted.
            FsError::Cache(CacheError::DiskFailed { .. }) => libc::EIO,
            FsError::Upload(_) => libc::EIO,
        }
    }
}

impl From<super::names::NameError> for FsError {
    fn from(e: super::names::NameError) -> FsError {
        match e {
            super::names::NameError::TooLong => FsError::NameTooLong,
            super::names::NameError::Invalid => FsError::Invalid("not a usable file name"),
        }
    }
}
