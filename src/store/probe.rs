//! `check-config --probe`: is a configured bucket reachable, are the credentials
//! accepted, and is versioning enabled? Each failure says how to fix it.

use super::{ObjectStore, S3Store, Versioning};
use crate::config::BucketConfig;
use crate::error::StoreError;

/// What probing one bucket found.
#[derive(Debug)]
pub struct ProbeReport {
    pub name: String,
    pub bucket: String,
    pub(crate) outcome: Result<(), String>,
    /// Whether the bucket takes object ACLs (informational: never a failure).
    pub acls: Option<String>,
    /// With `sse` set: whether a write under it was taken (see [`encryption`]).
    pub encryption: Option<Result<String, String>>,
    /// Whether the store checks and keeps CRC-64/NVME (see [`checksums`]).
    pub checksums: Option<String>,
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            Ok(()) => write!(
                f,
                "ok    {}: {} reachable, credentials accepted, versioning Enabled",
                self.name, self.bucket
            ),
            Err(e) => write!(f, "FAIL  {}: {}", self.name, e),
        }?;
        match &self.acls {
            Some(a) => write!(f, "; object ACLs: {a}"),
            None => Ok(()),
        }?;
        match &self.checksums {
            Some(c) => write!(f, "; checksums: {c}"),
            None => Ok(()),
        }?;
        match &self.encryption {
            Some(Ok(e)) => write!(f, "; encryption: {e}"),
            Some(Err(e)) => write!(f, "\nFAIL  {}: encryption: {e}", self.name),
            None => Ok(()),
        }
    }
}

/// The command that turns versioning on, for messages.
pub(crate) fn enable_versioning_hint(cfg: &BucketConfig) -> String {
    let endpoint = cfg
        .endpoint
        .as_ref()
        .map(|e| format!(" --endpoint-url {e}"))
        .unwrap_or_default();
    format!(
        "aws s3api put-bucket-versioning --bucket {} --versioning-configuration Status=Enabled --region {}{}",
        cfg.bucket, cfg.region, endpoint
    )
}

/// Why a bucket's versioning state makes it unusable, or `None` when Enabled.
pub(crate) fn versioning_problem(cfg: &BucketConfig, v: Versioning) -> Option<String> {
    let state = match v {
        Versioning::Enabled => return None,
        Versioning::Suspended => "Suspended",
        Versioning::Off => "never enabled",
    };
    Some(format!(
        "bucket {} has versioning {state}: regionfs needs it Enabled (every write is a version). Enable it: {}",
        cfg.describe(),
        enable_versioning_hint(cfg)
    ))
}

pub async fn probe_bucket(cfg: &BucketConfig) -> ProbeReport {
    let store = S3Store::connect(cfg).await;
    let outcome = match store.versioning().await {
        Ok(v) => match versioning_problem(cfg, v) {
            None => Ok(()),
            Some(p) => Err(p),
        },
        Err(e @ StoreError::NoSuchBucket { .. }) => Err(format!("{e}")),
        Err(e @ StoreError::AccessDenied { .. }) => Err(format!("credentials not accepted: {e}")),
        Err(e) => Err(format!("{e}")),
    };
    let acls = match (&outcome, store.acl_support().await) {
        (Err(_), _) => None,
        (Ok(()), Ok(super::AclSupport::Enabled)) => Some("supported".to_string()),
        (Ok(()), Ok(super::AclSupport::Disabled(why))) => Some(format!(
            "not supported ({why}): ACLs are skipped for this bucket{}",
            if cfg.acl.is_some() {
                ", so `acl` has no effect"
            } else {
                ""
            }
        )),
        (Ok(()), Err(e)) => Some(format!("unknown ({e})")),
    };
    let encryption = match (&outcome, cfg.sse) {
        (Ok(()), Some(_)) => Some(encryption(&store, cfg).await),
        _ => None,
    };
    let checksums = match &outcome {
        Ok(()) => Some(checksums(&store).await),
        Err(_) => None,
    };
    ProbeReport {
        name: cfg.name.clone(),
        bucket: cfg.describe(),
        outcome,
        acls,
        encryption,
        checksums,
    }
}

impl ProbeReport {
    /// Whether everything probed was fine.
    pub fn ok(&self) -> bool {
        self.outcome.is_ok() && !matches!(self.encryption, Some(Err(_)))
    }
}

/// Writes and removes one probe object sent with its CRC-64/NVME and a
/// wrong one: a store that refuses the wrong one and keeps the right one
/// checks every byte regionfs writes and keeps the checksum `verify` compares.
async fn checksums(store: &S3Store) -> String {
    use super::checksum::Crc64;
    let key = format!("{PROBE_MARKER}checksum");
    let body = bytes::Bytes::from_static(b"regionfs checksum probe");
    let put = |crc: Crc64| {
        let (key, body) = (key.clone(), body.clone());
        async move {
            let opts = super::PutOptions {
                checksum: Some(crc.to_base64()),
                ..Default::default()
            };
            store.put(&key, super::PutBody::Bytes(body), &opts).await
        }
    };
    let wrong = put(Crc64::of(b"other bytes")).await;
    if let Ok(p) = &wrong {
        if let Some(v) = &p.version_id {
            let _ = store.delete_version(&key, v).await;
        }
    }
    let right = match put(Crc64::of(&body)).await {
        Ok(p) => p,
        Err(e) => return format!("unknown (a write with its CRC-64/NVME failed: {e})"),
    };
    let kept = match &right.version_id {
        Some(v) => store
            .head(&key, Some(v))
            .await
            .ok()
            .and_then(|i| i.crc64nvme),
        None => None,
    };
    if let Some(v) = &right.version_id {
        let _ = store.delete_version(&key, v).await;
    }
    match (wrong.is_err(), kept == Some(Crc64::of(&body).to_base64())) {
        (true, true) => "CRC-64/NVME checked and kept".into(),
        (true, false) => "CRC-64/NVME checked, not kept (replicas carry it as metadata; verify compares these replicas by size and ETag, --deep by bytes)".into(),
        (false, _) => "CRC-64/NVME neither checked nor kept (bytes are checked by the CRC regionfs computes; verify compares these replicas by size and ETag, --deep by bytes)".into(),
    }
}

/// Writes and removes one probe object under the bucket's `sse` settings: a
/// store without the KMS (SeaweedFS without one answers 500 InternalError,
/// which an upload would retry for ever) or a key it refuses shows here, not
/// at the first upload.
async fn encryption(store: &S3Store, cfg: &BucketConfig) -> Result<String, String> {
    let key = format!("{PROBE_MARKER}sse");
    let wanted = match (&cfg.sse, &cfg.kms_key_id) {
        (Some(s), Some(k)) => format!("{} with key {k}", s.as_str()),
        (Some(s), None) => s.as_str().to_string(),
        (None, _) => return Ok("none".into()),
    };
    let put = store
        .put(
            &key,
            super::PutBody::Bytes(bytes::Bytes::from_static(b"regionfs")),
            &super::PutOptions::default(),
        )
        .await
        .map_err(|e| format!("a write with sse = {wanted} was refused: {e}"))?;
    if let Some(v) = &put.version_id {
        let _ = store.delete_version(&key, v).await;
    }
    Ok(format!("{wanted} accepted"))
}

/// The marker [`markers_keep_metadata`] writes (under a prefix) and removes.
const PROBE_MARKER: &str = ".regionfs-probe/";

/// Whether `key` is that probe marker (never user data).
pub(crate) fn is_probe_key(key: &str) -> bool {
    key.strip_suffix(PROBE_MARKER)
        .is_some_and(|p| p.is_empty() || p.ends_with('/'))
}

/// Whether the store keeps user metadata on `dir/` marker objects (S3 and moto
/// do; SeaweedFS turns such keys into directories and drops it). Writes and
/// deletes one probe marker under `prefix`.
pub(crate) async fn markers_keep_metadata(
    store: &dyn ObjectStore,
    prefix: &str,
) -> Result<bool, StoreError> {
    let key = format!("{prefix}{PROBE_MARKER}");
    let mut opts = super::PutOptions::default();
    opts.metadata.insert("mode".into(), "16877".into());
    let put = store
        .put(&key, super::PutBody::Bytes(bytes::Bytes::new()), &opts)
        .await?;
    let kept = store
        .head(&key, None)
        .await
        .map(|i| i.metadata.contains_key("mode"))
        .unwrap_or(false);
    // Its one version removed for good: a delete marker would be one more
    // object version, and some stores list the prefix of a deleted marker.
    let removed = match &put.version_id {
        Some(v) => store.delete_version(&key, v).await.is_ok(),
        None => false,
    };
    if !removed {
        let _ = store.delete(&key).await;
    }
    Ok(kept)
}
