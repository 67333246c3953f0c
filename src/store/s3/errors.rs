//! What an S3 answer means as a [`StoreError`]: by error code and HTTP
//! status, with the bucket named, so the callers' retries can tell permanent
//! (access denied, no such bucket) from transient (throttling, 5xx, network).

use super::*;

/// Turns an SDK error into a [`StoreError`], keeping the S3 code and message
/// (the SDK's own Display says only "service error").
pub(super) fn classify<E>(
    bucket: &str,
    key: Option<&str>,
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let bucket = bucket.to_string();
    let context = DisplayErrorContext(&e).to_string();
    // An SSO profile needs an interactive login a daemon cannot renew: say
    // what works instead of the SDK's "requires cargo feature" message.
    if context.contains("feature(s) enabled: sso") {
        return StoreError::AccessDenied {
            bucket,
            code: "SsoNotSupported".into(),
            message: "the profile signs in through AWS SSO (IAM Identity Center), which regionfs does not support: its session needs an interactive `aws sso login` that a daemon cannot renew. Use a role (`role_arn` with `source_profile` or `credential_source`), `credential_process`, or access keys".into(),
        };
    }
    // No credentials at all is not a network problem: say so, and do not retry.
    if context.contains("credentials") && e.raw_response().is_none() {
        return StoreError::AccessDenied {
            bucket,
            code: "NoCredentials".into(),
            message: format!(
                "no credentials could be loaded (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a `profile`, or access_key_id/secret_access_key): {context}"
            ),
        };
    }
    if matches!(e, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)) {
        return StoreError::Unreachable {
            bucket,
            message: DisplayErrorContext(&e).to_string(),
        };
    }
    // A success whose body could not be read as S3's answer (malformed XML,
    // a cut body): not the request's fault, so retried.
    if matches!(e, SdkError::ResponseError(_)) {
        return StoreError::Malformed {
            bucket,
            message: DisplayErrorContext(&e).to_string(),
        };
    }
    let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
    let code = e.code().unwrap_or_default().to_string();
    let message = e
        .message()
        .map(str::to_string)
        .unwrap_or_else(|| DisplayErrorContext(&e).to_string());
    let key = key.unwrap_or_default().to_string();
    match (code.as_str(), status) {
        ("NoSuchBucket", _) => StoreError::NoSuchBucket { bucket },
        ("AccessControlListNotSupported", _) => StoreError::AclNotSupported {
            bucket,
            code,
            message,
        },
        ("NoSuchKey" | "NoSuchVersion" | "NotFound", _) | ("", 404) => {
            StoreError::NotFound { bucket, key }
        }
        (
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken",
            _,
        )
        | (_, 403) => StoreError::AccessDenied {
            bucket,
            code: if code.is_empty() {
                "AccessDenied".into()
            } else {
                code
            },
            message,
        },
        ("BadDigest" | "XAmzContentChecksumMismatch" | "InvalidDigest", _) => {
            StoreError::BadDigest {
                bucket,
                key,
                message,
            }
        }
        ("PreconditionFailed", _) | (_, 412) => StoreError::PreconditionFailed { bucket, key },
        ("SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded", _)
        | (_, 429) => StoreError::Throttled { bucket, code },
        ("InternalError" | "ServiceUnavailable", _) | (_, 500..=599) => StoreError::Server {
            bucket,
            status,
            code,
            message,
        },
        (_, 0) => StoreError::Unreachable {
            bucket,
            message: DisplayErrorContext(&e).to_string(),
        },
        _ => StoreError::Rejected {
            bucket,
            status,
            code,
            message,
        },
    }
}

impl S3Store {
    pub(super) fn err<E>(
        &self,
        key: Option<&str>,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let mut e = classify(&self.describe, key, e);
        // A KMS key the store refuses (missing, disabled, not allowed): name
        // the key the configuration gave, which the store's message may not.
        if let (
            StoreError::Rejected { code, message, .. }
            | StoreError::AccessDenied { code, message, .. },
            Some(id),
        ) = (&mut e, &self.kms_key_id)
        {
            if code.to_ascii_uppercase().contains("KMS") {
                message.push_str(&format!(" (this bucket's kms_key_id is `{id}`)"));
            }
        }
        e
    }
}
