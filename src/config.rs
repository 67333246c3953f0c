//! The TOML configuration: schema, defaults, validation and derived limits.
//!
//! Invariants a loaded [`Config`] guarantees to the rest of the crate:
//! - no unknown keys anywhere (a typo is an error, never a silently ignored setting);
//! - every rule names an existing destination, rule ids are unique, and priorities
//!   are unique among the rules that share a destination (so "highest priority
//!   wins" is always decidable);
//! - no destination is the source bucket itself, and none sits in the source's
//!   region and endpoint unless it says `allow_same_region = true`;
//! - sizes and durations are parsed ("10GiB", "5m") and within their bounds.
//!
//! Every error names the field (`rule[1].destination`) and, where the TOML parser
//! knows it, the line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ConfigError;

mod units;
mod validate;

pub use units::{parse_instant, HumanDuration};
pub(crate) use units::{ByteSize, Mode};

/// S3 limits that shape multipart uploads.
pub(crate) const MIN_PART_SIZE: u64 = 5 * MIB;
pub(crate) const MAX_PART_SIZE: u64 = 5 * GIB;
pub(crate) const MAX_PARTS: u64 = 10_000;
/// Largest object S3 accepts (5 TiB).
pub(crate) const MAX_OBJECT_SIZE: u64 = 5 * 1024 * GIB;

pub(crate) const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: BucketConfig,
    #[serde(default, rename = "destination")]
    pub destinations: Vec<BucketConfig>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub upload: UploadConfig,
    #[serde(default)]
    pub durability: DurabilityConfig,
    #[serde(default)]
    pub replication: ReplicationConfig,
    #[serde(default)]
    pub read: ReadConfig,
    #[serde(default)]
    pub mount: MountConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

/// One bucket in one region at one endpoint: the source or a destination.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Label used in status, metrics and xattrs.
    pub name: String,
    pub region: String,
    pub bucket: String,
    /// Only meaningful for the source: mount a subtree of the bucket.
    #[serde(default)]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Defaults to true when `endpoint` is set (IP and localhost endpoints need it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// Static credentials, for stores outside the aws-config chain. Never printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redact"
    )]
    pub secret_access_key: Option<String>,
    /// `when_supported` (default, a CRC-64/NVME trailer on every upload) or
    /// `when_required` for stores that reject aws-chunked trailing checksums.
    #[serde(default)]
    pub checksums: ChecksumMode,
    /// Lets a destination share the source's region and endpoint (S3 itself
    /// refuses that for cross-region replication).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_same_region: bool,
    /// Only on the source: the canned ACL every version regionfs writes gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<CannedAcl>,
    /// Server-side encryption of every version regionfs writes to this bucket
    /// (on a destination: of its replicas, with its own key, as S3's
    /// `ReplicaKmsKeyID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<Sse>,
    /// With `sse = "aws:kms"`: the key (id, ARN or alias); the bucket's
    /// default KMS key when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

/// S3's server-side encryption (`x-amz-server-side-encryption`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Sse {
    /// Keys the store manages (SSE-S3).
    #[serde(rename = "AES256")]
    Aes256,
    /// A KMS key (SSE-KMS).
    #[serde(rename = "aws:kms")]
    Kms,
}

impl Sse {
    pub fn as_str(self) -> &'static str {
        match self {
            Sse::Aes256 => "AES256",
            Sse::Kms => "aws:kms",
        }
    }
}

/// S3's canned ACLs (`x-amz-acl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CannedAcl {
    Private,
    PublicRead,
    PublicReadWrite,
    AuthenticatedRead,
    AwsExecRead,
    BucketOwnerRead,
    BucketOwnerFullControl,
}

impl CannedAcl {
    pub fn as_str(self) -> &'static str {
        match self {
            CannedAcl::Private => "private",
            CannedAcl::PublicRead => "public-read",
            CannedAcl::PublicReadWrite => "public-read-write",
            CannedAcl::AuthenticatedRead => "authenticated-read",
            CannedAcl::AwsExecRead => "aws-exec-read",
            CannedAcl::BucketOwnerRead => "bucket-owner-read",
            CannedAcl::BucketOwnerFullControl => "bucket-owner-full-control",
        }
    }
}

/// Who owns a rule's replicas (S3's AccessControlTranslation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerOverride {
    /// The destination bucket's owner: replicas get `bucket-owner-full-control`
    /// instead of a copy of the source ACL.
    Destination,
}

impl BucketConfig {
    pub fn path_style(&self) -> bool {
        self.path_style.unwrap_or(self.endpoint.is_some())
    }

    /// Where this bucket lives, for messages: `app-data (us-east-1 at http://…)`.
    pub fn describe(&self) -> String {
        let profile = match &self.profile {
            Some(p) => format!(", profile {p}"),
            None => String::new(),
        };
        match &self.endpoint {
            Some(e) => format!("`{}` ({} at {e}{profile})", self.bucket, self.region),
            None => format!("`{}` ({}{profile})", self.bucket, self.region),
        }
    }
}

fn redact<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumMode {
    #[default]
    WhenSupported,
    WhenRequired,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub id: String,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    pub destination: String,
    #[serde(default)]
    pub delete_markers: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_override: Option<OwnerOverride>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default = "default_cache_dir")]
    pub dir: PathBuf,
    #[serde(default = "default_cache_size")]
    pub max_size: ByteSize,
    #[serde(default)]
    pub write_back_delay: HumanDuration,
    /// How long a writer waits for space (with no upload progress) before ENOSPC.
    #[serde(default = "default_space_wait")]
    pub(crate) space_wait: HumanDuration,
    /// Clean copies kept at most (each costs memory besides its bytes).
    #[serde(default = "default_max_clean_files")]
    pub(crate) max_clean_files: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: default_cache_dir(),
            max_size: default_cache_size(),
            write_back_delay: HumanDuration::default(),
            space_wait: default_space_wait(),
            max_clean_files: default_max_clean_files(),
        }
    }
}

fn default_max_clean_files() -> usize {
    4096
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from("/var/cache/regionfs")
}
fn default_cache_size() -> ByteSize {
    ByteSize(10 * GIB)
}
fn default_space_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// Files at least this large are uploaded in parts.
    #[serde(default = "default_multipart_threshold")]
    pub(crate) multipart_threshold: ByteSize,
    /// Smallest part; grown per file so that no upload needs more than 10,000 parts.
    #[serde(default = "default_part_size")]
    pub part_size: ByteSize,
    /// Files uploaded at once, and parts in flight per file.
    #[serde(default = "default_concurrency")]
    pub(crate) concurrency: usize,
    /// While files keep being closed, uploads wait for a pause in the writes,
    /// each at most this long after its close (default `0s`: upload at once).
    /// Off by default: under a steady load it adds up to this much to the
    /// replication lag, which counts from the close.
    #[serde(default = "default_defer_while_writing")]
    pub(crate) defer_while_writing: HumanDuration,
    /// Upload a file written sequentially from empty part by part while it is
    /// written, instead of whole after its close. Such objects store no
    /// `mtime` (it is fixed before the last write): their mtime is the
    /// object's LastModified.
    #[serde(default = "default_early_parts")]
    pub(crate) early_parts: bool,
    /// Uploads held in memory; a longer queue waits in the journal only and
    /// is read back, oldest first, as the held ones finish (about 750 bytes
    /// each in memory).
    #[serde(default = "default_held_uploads")]
    pub(crate) held_in_memory: usize,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            multipart_threshold: default_multipart_threshold(),
            part_size: default_part_size(),
            concurrency: default_concurrency(),
            defer_while_writing: default_defer_while_writing(),
            early_parts: default_early_parts(),
            held_in_memory: default_held_uploads(),
        }
    }
}

/// Fewest uploads held in memory `upload.held_in_memory` takes.
pub(crate) const MIN_HELD_UPLOADS: usize = 2;

fn default_held_uploads() -> usize {
    1024
}

fn default_early_parts() -> bool {
    true
}

fn default_defer_while_writing() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}

fn default_multipart_threshold() -> ByteSize {
    ByteSize(16 * MIB)
}
fn default_part_size() -> ByteSize {
    ByteSize(8 * MIB)
}
fn default_concurrency() -> usize {
    16
}

impl UploadConfig {
    /// The part size for an object of `size` bytes: the configured part size, grown
    /// to the next MiB when the object would otherwise need more than 10,000 parts.
    pub(crate) fn part_size_for(&self, size: u64) -> u64 {
        plan_part_size(self.part_size.0, size)
    }
}

/// Part size for `size` bytes starting from `preferred`: at least 5 MiB, at most
/// 10,000 parts, rounded up to whole MiB.
pub fn plan_part_size(preferred: u64, size: u64) -> u64 {
    let needed = size.div_ceil(MAX_PARTS);
    let part = preferred.max(needed).max(MIN_PART_SIZE);
    part.div_ceil(MIB) * MIB
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncDurability {
    Local,
    #[default]
    Source,
    AllRegions,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DurabilityConfig {
    #[serde(default)]
    pub fsync: FsyncDurability,
    #[serde(default = "default_drain")]
    pub drain_on_unmount: HumanDuration,
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        DurabilityConfig {
            fsync: FsyncDurability::default(),
            drain_on_unmount: default_drain(),
        }
    }
}

fn default_drain() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    #[serde(default = "default_time_target")]
    pub time_target: HumanDuration,
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// The mount also replicates versions others write to the source
    /// (`regionfs replicate` always does): see `replicator::discover`.
    #[serde(default)]
    pub watch: bool,
    /// How often the source is listed for new versions.
    #[serde(default = "default_watch_interval")]
    pub watch_interval: HumanDuration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            time_target: default_time_target(),
            workers: default_workers(),
            watch: false,
            watch_interval: default_watch_interval(),
        }
    }
}

fn default_time_target() -> HumanDuration {
    HumanDuration(Duration::from_secs(15 * 60))
}
fn default_watch_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_workers() -> usize {
    16
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReadConfig {
    /// `nearest`, `source` or the name of a destination.
    #[serde(default = "default_prefer")]
    pub prefer: String,
    /// With `mount.read_only`: mount this destination bucket instead of the
    /// source (a reader in that region, needing no access to the source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// With `read.from`: read the source instead while the replica is known
    /// to be further behind than this (needs access to the source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_staleness: Option<HumanDuration>,
    /// Readers of a file being downloaded take each range as it arrives,
    /// before the copy's checksum is checked (the first byte sooner; bytes
    /// that turn out wrong cannot be taken back). Off: a read waits for the
    /// whole copy and its check.
    #[serde(default)]
    pub(crate) stream_unverified: bool,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            prefer: default_prefer(),
            from: None,
            max_staleness: None,
            stream_unverified: false,
        }
    }
}

fn default_prefer() -> String {
    "nearest".to_string()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    #[serde(default)]
    pub allow_other: bool,
    /// Mode for objects and directories that carry no `mode` metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) default_file_mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) default_dir_mode: Option<Mode>,
    /// Seconds the kernel may cache attributes and names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attr_ttl: Option<HumanDuration>,
    /// How long a directory listing taken (or a directory created) by this
    /// mount answers "no such name" without asking the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dir_ttl: Option<HumanDuration>,
    /// Refuse every change (EROFS); with `read.from`, mount a replica.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// `regionfs mount --as-of`: show the tree as it was then (read-only).
    #[serde(skip)]
    pub as_of: Option<std::time::SystemTime>,
    /// The kernel's writeback cache: writes gather in the page cache and
    /// reach regionfs in large requests at close/fsync. Default on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) writeback_cache: Option<bool>,
    /// FUSE passthrough: the kernel reads and writes cache files directly
    /// (see `fs::passthrough`). Default on, used where the kernel, the
    /// privileges and the cache's filesystem allow; it replaces the
    /// writeback cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<bool>,
    /// Inodes kept in memory: beyond this, idle clean files are let go (the
    /// kernel is asked to drop their entries) and looked up again when used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inodes: Option<usize>,
    /// Read and write per-directory attribute indexes (objects under
    /// `<prefix>.regionfs-index/`): a listing then gives every file's mode,
    /// owner and times without a HEAD per file. Default on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) attribute_index: Option<bool>,
}

impl MountConfig {
    pub(crate) fn writeback_cache(&self) -> bool {
        self.writeback_cache.unwrap_or(true)
    }
    pub fn passthrough(&self) -> bool {
        self.passthrough.unwrap_or(true)
    }
    pub(crate) fn file_mode(&self) -> u32 {
        self.default_file_mode.map(|m| m.0).unwrap_or(0o644)
    }
    pub(crate) fn dir_mode(&self) -> u32 {
        self.default_dir_mode.map(|m| m.0).unwrap_or(0o755)
    }
    pub fn attr_ttl(&self) -> Duration {
        self.attr_ttl.map(|d| d.0).unwrap_or(Duration::from_secs(1))
    }
    pub(crate) fn dir_ttl(&self) -> Duration {
        self.dir_ttl.map(|d| d.0).unwrap_or(Duration::from_secs(10))
    }
    pub fn max_inodes(&self) -> usize {
        self.max_inodes.unwrap_or(DEFAULT_MAX_INODES)
    }
    pub(crate) fn attribute_index(&self) -> bool {
        self.attribute_index.unwrap_or(true)
    }
}

/// About 1 KiB of memory each (path, metadata, ETag, version and the kernel's
/// page-cache tag), so at most ~8 MiB for inodes.
pub(crate) const DEFAULT_MAX_INODES: usize = 8192;

/// Fewer than this would let go of files between two steps of one `ls -l`.
pub(crate) const MIN_MAX_INODES: usize = 256;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Loopback unless told otherwise: the counters name buckets and keys'
    /// prefixes, which are not for every host on the network.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9464".into()
}

/// `[source] prefix` as a directory of the bucket: `team-b` and `team-b/`
/// both mean the keys under `team-b/` (a prefix without the slash would
/// put the mount's files beside it, as `team-bfile.txt`, and show another
/// team's `team-bob/`). Empty: the whole bucket.
pub(crate) fn source_prefix(p: &str) -> Result<String, String> {
    if p.is_empty() {
        return Ok(String::new());
    }
    if p.starts_with('/') {
        return Err("must not start with `/` (keys have no leading slash)".into());
    }
    let dir = p.strip_suffix('/').unwrap_or(p);
    if let Some(bad) = dir
        .split('/')
        .find(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err(format!(
            "`{p}` has an empty, `.` or `..` component (`{bad}`): each part of a prefix is a directory name"
        ));
    }
    Ok(format!("{dir}/"))
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text)
    }

    /// A warning when the file at `path` holds a secret key and others may
    /// read it (as ssh says of a private key): the daemon still starts, since
    /// refusing would stop a backup over a mode, but the operator is told the
    /// fix.
    pub fn exposed_secret(&self, path: &Path) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let has_secret = std::iter::once(&self.source)
            .chain(&self.destinations)
            .any(|b| b.secret_access_key.is_some());
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (has_secret && mode & 0o077 != 0).then(|| {
            format!(
                "{} holds a secret_access_key and others may read it (mode {mode:04o}): chmod 600 {0}",
                path.display()
            )
        })
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| syntax_error(text, e))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.span().map(|s| line_of(text, s.start));
            ConfigError::Field {
                field: display_path(&field),
                line,
                message: inner.message().to_string(),
            }
        })?;
        let mut config = config;
        config.source.prefix =
            source_prefix(&config.source.prefix).map_err(|message| ConfigError::Field {
                field: "source.prefix".into(),
                line: None,
                message,
            })?;
        config.validate()?;
        Ok(config)
    }

    /// The bucket a rule's destination names.
    /// No change reaches any bucket from this mount.
    pub fn read_only(&self) -> bool {
        self.mount.read_only || self.mount.as_of.is_some()
    }

    pub fn destination(&self, name: &str) -> Option<&BucketConfig> {
        self.destinations.iter().find(|d| d.name == name)
    }

    /// The effective configuration (defaults filled in, secrets redacted) as TOML.
    pub fn to_effective_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Limits that follow from the settings, one `name = value` line each.
    pub fn derived_limits(&self) -> Vec<(String, String)> {
        let up = &self.upload;
        let max_object = (up.part_size_for(MAX_OBJECT_SIZE) * MAX_PARTS).min(MAX_OBJECT_SIZE);
        let mut v = vec![
            (
                "upload.single_put_below".into(),
                up.multipart_threshold.to_string(),
            ),
            (
                "upload.part_size(1GiB file)".into(),
                ByteSize(up.part_size_for(GIB)).to_string(),
            ),
            (
                "upload.part_size(100GiB file)".into(),
                ByteSize(up.part_size_for(100 * GIB)).to_string(),
            ),
            (
                "upload.max_object_size".into(),
                ByteSize(max_object).to_string(),
            ),
            (
                "cache.max_dirty_bytes".into(),
                self.cache.max_size.to_string(),
            ),
        ];
        for r in &self.rules {
            v.push((
                format!("rule.{}", r.id),
                format!(
                    "prefix={:?} tags={:?} -> {} (priority {}, delete markers {})",
                    r.prefix,
                    r.tags,
                    r.destination,
                    r.priority,
                    if r.delete_markers {
                        "replicated"
                    } else {
                        "not replicated"
                    }
                ),
            ));
        }
        v
    }
}

fn syntax_error(text: &str, e: toml::de::Error) -> ConfigError {
    ConfigError::Syntax {
        line: e.span().map(|s| line_of(text, s.start)),
        message: e.message().to_string(),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// serde_path_to_error writes `destination[0].name` as `destination[0].name` already,
/// and the root as `.`: keep it readable.
fn display_path(p: &str) -> String {
    if p == "." || p.is_empty() {
        "(top level)".to_string()
    } else {
        p.to_string()
    }
}

/// Tests: a source "us" (bucket `src`) and one destination "eu" (bucket
/// `dst`) at endpoints nothing listens on, with `rules` (TOML `[[rule]]`
/// sections) appended.
#[cfg(test)]
pub(crate) fn two_region_test_config(rules: &str) -> Config {
    Config::parse(&format!(
        r#"
[source]
name = "us"
region = "us-east-1"
bucket = "src"
endpoint = "http://127.0.0.1:1"
[[destination]]
name = "eu"
region = "eu-west-1"
bucket = "dst"
endpoint = "http://127.0.0.1:2"
{rules}"#
    ))
    .unwrap()
}

#[cfg(test)]
mod tests;
