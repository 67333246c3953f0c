//! Checking a parsed config as a whole: every error names its field (and the
//! rule or bucket it belongs to), and is found before anything starts.

use super::*;

pub(super) fn check_bucket(at: &str, b: &BucketConfig) -> Result<(), ConfigError> {
    let empty = |f: &str| ConfigError::Field {
        field: format!("{at}.{f}"),
        line: None,
        message: "must not be empty".into(),
    };
    if b.name.is_empty() {
        return Err(empty("name"));
    }
    if b.region.is_empty() {
        return Err(empty("region"));
    }
    if b.bucket.is_empty() {
        return Err(empty("bucket"));
    }
    if let Some(e) = &b.endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(ConfigError::Field {
                field: format!("{at}.endpoint"),
                line: None,
                message: format!("`{e}` must start with http:// or https://"),
            });
        }
    }
    if b.kms_key_id.is_some() && b.sse != Some(crate::config::Sse::Kms) {
        return Err(ConfigError::Field {
            field: format!("{at}.kms_key_id"),
            line: None,
            message: "a KMS key is used only with sse = \"aws:kms\"".into(),
        });
    }
    if b.access_key_id.is_some() != b.secret_access_key.is_some() {
        return Err(ConfigError::Field {
            field: format!("{at}.secret_access_key"),
            line: None,
            message: "access_key_id and secret_access_key go together".into(),
        });
    }
    Ok(())
}

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Field {
            field,
            line: None,
            message,
        };
        check_bucket("source", &self.source)?;
        let mut names = vec![self.source.name.as_str()];
        for (i, d) in self.destinations.iter().enumerate() {
            let at = format!("destination[{i}]");
            check_bucket(&at, d)?;
            if names.contains(&d.name.as_str()) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!(
                        "`{}` is already used by the source or another destination",
                        d.name
                    ),
                ));
            }
            names.push(&d.name);
            if d.acl.is_some() {
                return Err(invalid(
                    format!("{at}.acl"),
                    "replicas copy the source's ACL; to hand them to the destination's owner set `owner_override = \"destination\"` in the [[rule]]".into(),
                ));
            }
            if !d.prefix.is_empty() {
                return Err(invalid(
                    format!("{at}.prefix"),
                    "destinations keep the source's keys; a prefix is only valid on [source]"
                        .into(),
                ));
            }
            let same_endpoint = d.endpoint == self.source.endpoint;
            if same_endpoint && d.bucket == self.source.bucket {
                return Err(invalid(
                    format!("{at}.bucket"),
                    format!(
                        "`{}` is the source bucket itself: a destination must be another bucket",
                        d.bucket
                    ),
                ));
            }
            if same_endpoint && d.region == self.source.region && !d.allow_same_region {
                return Err(invalid(
                    format!("{at}.region"),
                    format!(
                        "`{}` is the source's region at the same endpoint; replication goes to another region. Set `allow_same_region = true` in this [[destination]] to allow it",
                        d.region
                    ),
                ));
            }
        }
        let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
        let mut priorities: BTreeMap<(&str, i64), &str> = BTreeMap::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("rule[{i}]");
            if r.id.is_empty() {
                return Err(invalid(format!("{at}.id"), "must not be empty".into()));
            }
            if let Some(first) = ids.insert(&r.id, i) {
                return Err(invalid(
                    format!("{at}.id"),
                    format!(
                        "`{}` is also the id of rule[{first}]: rule ids must be unique",
                        r.id
                    ),
                ));
            }
            if !self.destinations.iter().any(|d| d.name == r.destination) {
                let known: Vec<&str> = self.destinations.iter().map(|d| d.name.as_str()).collect();
                return Err(invalid(
                    format!("{at}.destination"),
                    format!(
                        "no [[destination]] is named `{}` (known: {})",
                        r.destination,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            if let Some(other) = priorities.insert((&r.destination, r.priority), &r.id) {
                return Err(invalid(
                    format!("{at}.priority"),
                    format!(
                        "rules `{other}` and `{}` both send to `{}` with priority {}: priorities must differ among rules that share a destination",
                        r.id, r.destination, r.priority
                    ),
                ));
            }
        }
        let prefer = self.read.prefer.as_str();
        if prefer != "nearest"
            && prefer != "source"
            && !self.destinations.iter().any(|d| d.name == prefer)
        {
            return Err(invalid(
                "read.prefer".into(),
                format!("`{prefer}` is not `nearest`, `source` or the name of a destination"),
            ));
        }
        if let Some(from) = &self.read.from {
            if !self.destinations.iter().any(|d| &d.name == from) {
                return Err(invalid(
                    "read.from".into(),
                    format!("no [[destination]] is named `{from}`"),
                ));
            }
            if !self.mount.read_only {
                return Err(invalid(
                    "read.from".into(),
                    "a replica can only be mounted read-only: set `read_only = true` in [mount]"
                        .into(),
                ));
            }
        }
        if self.read.max_staleness.is_some() && self.read.from.is_none() {
            return Err(invalid(
                "read.max_staleness".into(),
                "bounds how stale a replica mount may be: it needs `read.from`".into(),
            ));
        }
        if self.cache.max_clean_files == 0 {
            return Err(invalid(
                "cache.max_clean_files".into(),
                "must be at least 1".into(),
            ));
        }
        if self.mount.max_inodes() < MIN_MAX_INODES {
            return Err(invalid(
                "mount.max_inodes".into(),
                format!(
                    "{} is too small: at least {MIN_MAX_INODES}",
                    self.mount.max_inodes()
                ),
            ));
        }
        if self.cache.max_size.0 < 64 * MIB {
            return Err(invalid(
                "cache.max_size".into(),
                format!("{} is too small: at least 64MiB", self.cache.max_size),
            ));
        }
        let part = self.upload.part_size.0;
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part) {
            return Err(invalid(
                "upload.part_size".into(),
                format!(
                    "{} is outside S3's part sizes (5MiB to 5GiB)",
                    self.upload.part_size
                ),
            ));
        }
        if self.upload.multipart_threshold.0 < MIN_PART_SIZE {
            return Err(invalid(
                "upload.multipart_threshold".into(),
                "must be at least 5MiB (S3's smallest part)".into(),
            ));
        }
        if self.upload.concurrency == 0 {
            return Err(invalid(
                "upload.concurrency".into(),
                "must be at least 1".into(),
            ));
        }
        if self.upload.held_in_memory < MIN_HELD_UPLOADS {
            return Err(invalid(
                "upload.held_in_memory".into(),
                format!("must be at least {MIN_HELD_UPLOADS}"),
            ));
        }
        if self.replication.workers == 0 {
            return Err(invalid(
                "replication.workers".into(),
                "must be at least 1".into(),
            ));
        }
        if self.replication.watch_interval.0 < Duration::from_secs(1) {
            return Err(invalid(
                "replication.watch_interval".into(),
                "must be at least 1s (each pass lists the source)".into(),
            ));
        }
        if let Some(m) = &self.metrics {
            if m.listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    "metrics.listen".into(),
                    format!("`{}` is not an address such as 127.0.0.1:9464", m.listen),
                ));
            }
        }
        Ok(())
    }
}
