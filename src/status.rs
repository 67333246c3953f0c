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
    })
}
