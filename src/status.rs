//! What `regionfs status` and the metrics endpoint report for a whole cache
//! dir, assembled from its journal alone (so it works with the mount running
//! or not, from another process): the upload and replication backlogs in one
//! snapshot, the buckets' ACL support, the mount's read choice, discovery and
//! the uploads that replaced another writer's version.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::journal::{DestinationSummary, Journal, JournalError, UploadSummary};
use crate::regions::ReadView;

/// What `status` prints for the whole mount.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub uploads: UploadSummary,
    pub replication: BTreeMap<String, DestinationSummary>,
    /// Per bucket (config name): whether it takes object ACLs, as last found.
    pub acls: BTreeMap<String, String>,
    /// The mount's read choice and region probes, as last noted.
    pub reads: Option<ReadView>,
    /// How old that note is, seconds.
    pub reads_age_s: Option<f64>,
    /// Discovery of versions written by others, per share (empty when off).
    pub discovery: Vec<crate::journal::DiscoveryStats>,
    /// Uploads that replaced a version another client wrote since this host
    /// last read the key (see `uploader::guard`): the newest few.
    pub replaced: crate::journal::Conflicts,
    /// Why the mount stopped accepting writes, if its local disk failed
    /// (`cache::failure`); cleared by the re-check of the next start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_disk_failed: Option<String>,
}

pub async fn status(journal: &Journal, config: &Config) -> Result<Status, JournalError> {
    // One snapshot: "0 uploads and 0 replications pending" is never seen
    // while a version moves from the one to the other.
    let (uploads, mut replication) = journal
        .backlog(config.replication.time_target.0.as_millis() as i64)
        .await?;
    for d in &config.destinations {
        replication.entry(d.name.clone()).or_default();
    }
    let noted = journal.regions().await?;
    Ok(Status {
        uploads,
        replication,
        acls: journal.acl_support().await?,
        reads: noted
            .as_ref()
            .and_then(|(text, _)| serde_json::from_str(text).ok()),
        reads_age_s: noted.map(|(_, at)| (crate::clock::now_ms() - at).max(0) as f64 / 1000.0),
        discovery: journal.discovery_stats().await?,
        replaced: journal.conflicts(10).await?,
        local_disk_failed: crate::cache::failure::recorded(&config.cache.dir),
    })
}

/// What a monitor reads from `status`'s exit code (README, "Monitoring").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Nothing failed; every pending replica is within the time target.
    Ok,
    /// An upload or a replication failed (retried, but it needs a look:
    /// `status --failed` says why).
    Failed,
    /// Nothing failed, but a replica pending now is older than
    /// `replication.time_target`.
    Overdue,
}

impl Health {
    /// The exit code: 0, 2 (failed) or 3 (overdue); 1 stays for a command
    /// that could not run at all.
    pub fn exit_code(self) -> u8 {
        match self {
            Health::Ok => 0,
            Health::Failed => 2,
            Health::Overdue => 3,
        }
    }
}

impl Status {
    /// Failures first: an overdue replica is often a failing one.
    /// Replicas that missed the target and landed since count only in the
    /// totals, not here: the exit code says what is wrong now.
    pub fn health(&self, time_target: std::time::Duration) -> Health {
        let failed = self.uploads.failed > 0
            || self.replication.values().any(|r| r.failed > 0)
            || self.local_disk_failed.is_some();
        let overdue = self
            .replication
            .values()
            .any(|r| r.pending > 0 && r.oldest_pending_s > time_target.as_secs_f64());
        if failed {
            Health::Failed
        } else if overdue {
            Health::Overdue
        } else {
            Health::Ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn status(upload_failed: u64, dests: &[(u64, u64, f64)]) -> Status {
        Status {
            uploads: UploadSummary {
                failed: upload_failed,
                ..Default::default()
            },
            replication: dests
                .iter()
                .enumerate()
                .map(|(i, &(pending, failed, oldest))| {
                    (
                        format!("d{i}"),
                        DestinationSummary {
                            pending,
                            failed,
                            oldest_pending_s: oldest,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            acls: BTreeMap::new(),
            reads: None,
            reads_age_s: None,
            discovery: Vec::new(),
            replaced: Default::default(),
            local_disk_failed: None,
        }
    }

    #[test]
    fn exit_code_says_failed_before_overdue_and_ok_only_when_neither() {
        let target = Duration::from_secs(900);
        let cases = [
            (status(0, &[]), Health::Ok),
            (status(0, &[(5, 0, 10.0)]), Health::Ok),
            (status(0, &[(5, 0, 901.0)]), Health::Overdue),
            (status(0, &[(0, 0, 901.0)]), Health::Ok),
            (status(1, &[]), Health::Failed),
            (status(0, &[(5, 0, 1.0), (3, 1, 2.0)]), Health::Failed),
            (status(1, &[(5, 0, 5000.0)]), Health::Failed),
        ];
        for (s, want) in cases {
            assert_eq!(s.health(target), want, "{:?}", s.replication);
        }
        assert_eq!(
            [Health::Ok, Health::Failed, Health::Overdue].map(Health::exit_code),
            [0, 2, 3]
        );
    }
}
