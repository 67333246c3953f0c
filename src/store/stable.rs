//! Bodies of PUTs from local files that may change while they are sent.
//!
//! - [`PutBody::StableFile`](super::PutBody::StableFile): the whole file must
//!   not change. Before its last chunk goes the caller's check runs; a failed
//!   check ends the body with an error, so the store never receives the
//!   whole object and makes no version of it.
//! - [`PutBody::HashedFile`](super::PutBody::HashedFile): a part read while
//!   the file may still be written. Its bytes are hashed as they are sent,
//!   and the digest of what went is kept ([`PartDigest`]) for the caller to
//!   compare with the file once it is complete ([`digest_of`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use aws_sdk_s3::primitives::{ByteStream, SdkBody};
use aws_smithy_checksums::http::HttpChecksum;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

// A 64-bit CRC: a changed part goes unnoticed with odds of 2^-64.
use super::checksum::hasher;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Read from the page cache a chunk at a time, on the uploading task: a
/// chunk takes tens of microseconds, the same size the SDK's file body uses.
const CHUNK: u64 = 256 << 10;

/// The digest of the bytes a [`PutBody::HashedFile`](super::PutBody::HashedFile)
/// body sent: set when its last byte is read, by each attempt the SDK makes,
/// so after a successful request it is that of the attempt that succeeded.
#[derive(Default, Debug)]
pub struct PartDigest(Mutex<Option<Bytes>>);

impl PartDigest {
    pub fn get(&self) -> Option<Bytes> {
        self.0.lock().unwrap().clone()
    }

    pub(super) fn set(&self, d: Bytes) {
        *self.0.lock().unwrap() = Some(d);
    }

    /// The digest of `data`, as a body sending it would record (the test
    /// doubles' bodies are all in memory).
    #[cfg(any(test, feature = "test-doubles"))]
    pub(crate) fn of_bytes(data: &[u8]) -> Bytes {
        let mut h = hasher();
        h.update(data);
        h.finalize()
    }
}

/// The digest of bytes `[offset, offset + len)` of `file` as it is now.
pub(crate) fn digest_of(file: &File, offset: u64, len: u64) -> std::io::Result<Bytes> {
    let mut h = hasher();
    let mut buf = vec![0u8; CHUNK.min(len) as usize];
    let mut at = 0;
    while at < len {
        let n = CHUNK.min(len - at) as usize;
        file.read_exact_at(&mut buf[..n], offset + at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(h.finalize())
}

type Unchanged = Arc<dyn Fn() -> bool + Send + Sync>;

struct Checked {
    file: Option<File>,
    path: PathBuf,
    at: u64,
    end: u64,
    unchanged: Option<Unchanged>,
    hash: Option<(Box<dyn HttpChecksum>, Arc<PartDigest>)>,
}

impl Body for Checked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.at >= this.end {
            return Poll::Ready(None);
        }
        let Some(file) = &this.file else {
            let e = format!("{}: cannot open a second descriptor", this.path.display());
            return Poll::Ready(Some(Err(e.into())));
        };
        let n = CHUNK.min(this.end - this.at) as usize;
        let mut buf = vec![0u8; n];
        if let Err(e) = file.read_exact_at(&mut buf, this.at) {
            let e = format!("{}: {e}", this.path.display());
            return Poll::Ready(Some(Err(e.into())));
        }
        this.at += n as u64;
        if let Some((h, _)) = &mut this.hash {
            h.update(&buf);
        }
        if this.at == this.end {
            if let Some(unchanged) = &this.unchanged {
                if !unchanged() {
                    let e = format!("{}: written while it was sent", this.path.display());
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            if let Some((h, digest)) = this.hash.take() {
                digest.set(h.finalize());
            }
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.at >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end - self.at)
    }
}

/// A rewindable body of `len` bytes of `file` (the SDK may send it again).
pub fn body(file: File, path: PathBuf, len: u64, unchanged: Unchanged) -> ByteStream {
    ByteStream::new(SdkBody::retryable(move || {
        SdkBody::from_body_1_x(Checked {
            file: file.try_clone().ok(),
            path: path.clone(),
            at: 0,
            end: len,
            unchanged: Some(unchanged.clone()),
            hash: None,
        })
    }))
}

/// A rewindable body of bytes `[offset, offset + len)` of `file`, recording
/// the digest of what each attempt sent in `digest`.
pub(crate) fn hashed_body(
    file: File,
    path: PathBuf,
    offset: u64,
    len: u64,
    digest: Arc<PartDigest>,
) -> ByteStream {
    ByteStream::new(SdkBody::retryable(move || {
        SdkBody::from_body_1_x(Checked {
            file: file.try_clone().ok(),
            path: path.clone(),
            at: offset,
            end: offset + len,
            unchanged: None,
            hash: Some((hasher(), digest.clone())),
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_of_the_file_matches_the_digest_of_the_same_bytes_only() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        std::io::Write::write_all(&mut f, &data).unwrap();
        let d = digest_of(&f, 1000, 600_000).unwrap();
        assert_eq!(d, PartDigest::of_bytes(&data[1000..601_000]));
        assert_ne!(d, PartDigest::of_bytes(&data[1001..601_001]));
        assert_eq!(d.len(), 8);
    }
}
