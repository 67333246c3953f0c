//! Upload bodies go unsigned, with their CRC32: in memory as
//! `UNSIGNED-PAYLOAD` (the CRC32 in a header), streamed from a file to a
//! plain-`http:` endpoint as `STREAMING-UNSIGNED-PAYLOAD-TRAILER` instead of
//! signed aws-chunked.
//!
//! Over `http:` the SDK signs every 64 KiB chunk of a streamed body, a
//! SHA-256 of every byte uploaded: a fifth of the daemon's CPU while a large
//! file goes up, and the store hashes it all again to check. The body's CRC
//! trailer (`checksums = "when_supported"`, the default) already lets the
//! store reject damaged bytes, which is all the chunk signatures add on a
//! loopback or private link; the request itself stays signed. Over `https:`
//! the SDK already sends unsigned chunks. Without checksums
//! (`when_required`) nothing is changed: the signature is then the body's
//! only check.

use aws_runtime::auth::PayloadSigningOverride;
use aws_runtime::content_encoding::AwsChunkedBodyOptions;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;
use aws_smithy_checksums::ChecksumAlgorithm;

/// For one PutObject or UploadPart; does nothing when its flag is false
/// (the bucket sends no checksums).
#[derive(Debug)]
pub(crate) struct UnsignedBodies(pub bool);

impl Intercept for UnsignedBodies {
    fn name(&self) -> &'static str {
        "UnsignedBodies"
    }

    /// Runs after the SDK's checksum and aws-chunked interceptors (operation
    /// interceptors come first), and before the request is signed.
    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if !self.0 {
            return Ok(());
        }
        if context.request().body().bytes().is_some() {
            cfg.interceptor_state()
                .store_put(PayloadSigningOverride::UnsignedPayload);
            return Ok(());
        }
        let signed = matches!(
            cfg.load::<PayloadSigningOverride>(),
            Some(PayloadSigningOverride::StreamingSignedPayloadTrailer)
        );
        if !signed {
            return Ok(());
        }
        let h = context.request().headers();
        let decoded = h.get("x-amz-decoded-content-length");
        let Some(unsigned) = unsigned_options(decoded, h.get("x-amz-trailer")) else {
            return Ok(());
        };
        let Some(opts) = cfg.get_mut_from_interceptor_state::<AwsChunkedBodyOptions>() else {
            return Ok(());
        };
        // The encoded length the SDK set counted a signature per chunk and
        // one for the trailer.
        let len = unsigned.encoded_length();
        *opts = unsigned;
        context
            .request_mut()
            .headers_mut()
            .insert("content-length", len.to_string());
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::StreamingUnsignedPayloadTrailer);
        Ok(())
    }
}

/// Unsigned aws-chunked options for a request from the headers the SDK set:
/// `x-amz-decoded-content-length` and `x-amz-trailer` (None when they are
/// not a length and one known checksum: the request then stays as it is).
fn unsigned_options(decoded: Option<&str>, trailer: Option<&str>) -> Option<AwsChunkedBodyOptions> {
    let decoded: u64 = decoded?.parse().ok()?;
    let algorithm: ChecksumAlgorithm = trailer?.strip_prefix("x-amz-checksum-")?.parse().ok()?;
    let trailer_len =
        aws_smithy_checksums::http::HttpChecksum::size(algorithm.into_impl().as_ref());
    Some(AwsChunkedBodyOptions::new(decoded, vec![trailer_len]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crc32_trailer_makes_unsigned_options_of_the_decoded_length() {
        let o = unsigned_options(Some("1048576"), Some("x-amz-checksum-crc32")).unwrap();
        // 16 chunks of 64 KiB ("10000\r\n" + data + "\r\n"), "0\r\n", the
        // trailer "x-amz-checksum-crc32:" + 8 base64 bytes + "\r\n", "\r\n".
        assert_eq!(
            o.encoded_length(),
            16 * (7 + 65536 + 2) + 3 + (21 + 8 + 2) + 2
        );
    }

    #[test]
    fn requests_without_exactly_one_known_trailer_are_left_alone() {
        assert!(unsigned_options(Some("10"), None).is_none());
        assert!(unsigned_options(Some("10"), Some("x-amz-checksum-md6")).is_none());
        assert!(unsigned_options(Some("x"), Some("x-amz-checksum-crc32")).is_none());
    }
}
