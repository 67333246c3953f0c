//! The body of a PUT from a local file that must not change while it is
//! sent ([`PutBody::StableFile`](super::PutBody::StableFile)): read in
//! chunks, and before the last chunk goes the caller's check runs; a failed
//! check ends the body with an error, so the store never receives the whole
//! object and makes no version of it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aws_sdk_s3::primitives::{ByteStream, SdkBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Read from the page cache a chunk at a time, on the uploading task: a
/// chunk takes tens of microseconds, the same size the SDK's file body uses.
const CHUNK: u64 = 256 << 10;

struct Checked {
    file: Option<File>,
    path: PathBuf,
    offset: u64,
    len: u64,
    unchanged: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Body for Checked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.offset >= this.len {
            return Poll::Ready(None);
        }
        let Some(file) = &this.file else {
            let e = format!("{}: cannot open a second descriptor", this.path.display());
            return Poll::Ready(Some(Err(e.into())));
        };
        let n = CHUNK.min(this.len - this.offset) as usize;
        let mut buf = vec![0u8; n];
        if let Err(e) = file.read_exact_at(&mut buf, this.offset) {
            let e = format!("{}: {e}", this.path.display());
            return Poll::Ready(Some(Err(e.into())));
        }
        this.offset += n as u64;
        if this.offset == this.len && !(this.unchanged)() {
            let e = format!("{}: written while it was sent", this.path.display());
            return Poll::Ready(Some(Err(e.into())));
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.offset)
    }
}

/// A rewindable body of `len` bytes of `file` (the SDK may send it again).
pub fn body(
    file: File,
    path: PathBuf,
    len: u64,
    unchanged: Arc<dyn Fn() -> bool + Send + Sync>,
) -> ByteStream {
    ByteStream::new(SdkBody::retryable(move || {
        SdkBody::from_body_1_x(Checked {
            file: file.try_clone().ok(),
            path: path.clone(),
            offset: 0,
            len,
            unchanged: unchanged.clone(),
        })
    }))
}
