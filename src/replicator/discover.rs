//! Discovery: every new version and delete marker in the source under the
//! rules' prefixes, whoever wrote it (another host, an SDK client, the AWS
//! CLI), is found and its replication queued, as S3 replication does for a
//! bucket. `regionfs replicate` runs it; a mount runs it with
//! `[replication] watch = true`.
//!
//! # A pass
//! A pass lists the current objects (ListObjectsV2, 1,000 a page) and compares
//! each with what the journal has seen of its key (`seen`: its newest version
//! id, ETag, LastModified). Only the keys that changed (new, another ETag or
//! LastModified, gone from the listing, or written so recently that a newer
//! version in the same second could look the same: not yet settled) have
//! their versions listed (ListObjectVersions), back to the one seen; a page
//! with many changed keys lists the versions of its whole key range at once.
//! So a pass costs ceil(objects / 1000) requests plus about one per changed
//! key, at most ceil(versions in changed pages / 1000) — an idle pass over
//! 100,000 objects is 100 requests.
//!
//! A key written and deleted between two passes never shows among the
//! current objects; so the first pass and every [`SWEEP_EVERY`]th are sweeps,
//! which list every version and delete marker (ceil(versions / 1000)
//! requests) and compare each key's newest with the one seen. Such a key is
//! replicated within `SWEEP_EVERY` intervals, every other one within one.
//!
//! # Crash consistency
//! The tasks of a key's new versions and its new `seen` row are committed in
//! one transaction (`Journal::record_discovered`), after the tasks' versions
//! were listed: a crash before it leaves the key as it was, and the next pass
//! finds the same versions again; a crash after it has the tasks in the
//! journal, replicated like any other. Nothing is copied twice (a version
//! whose task exists, or that this journal uploaded itself, is not queued
//! again) and nothing is missed (a key leaves the changed set only through a
//! recorded row).
//!
//! # Shares
//! `--shard I/N` keeps to the keys whose stable hash (FNV-1a, 64 bits) is
//! I-1 modulo N: N processes with the same N and their own journals together
//! cover every key exactly once. A share moved to another host lists afresh
//! there; the versions its replicas already carry complete without a write
//! (see `copy`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, RuleConfig};
use crate::error::StoreError;
use crate::journal::{DiscoveryStats, Journal, JournalError, NewTask, Seen, TaskKind};
use crate::store::{ListEntry, ObjectStore, VersionEntry};

use super::rules::{Change, Rules};
use super::Replicator;

/// A key written this recently (by the source's clock, against ours) is
/// looked at again in the next pass: LastModified has whole seconds, so a
/// second version with the same bytes in the same second would look the same.
pub(crate) const SETTLE: Duration = Duration::from_secs(3);

/// A page with more changed keys than this lists the versions of its whole
/// key range in one go instead of one listing per key.
pub(crate) const RANGE_AT: usize = 16;

/// Every this many passes one is a sweep, which lists every version: it
/// finds the keys written and deleted between two passes, which the listing
/// of current objects never shows.
pub(crate) const SWEEP_EVERY: u64 = 6;

/// One process's share of the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based.
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub(crate) const ALL: Shard = Shard { index: 0, count: 1 };

    /// `I/N` with 1 ≤ I ≤ N.
    pub fn parse(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: expected I/N, e.g. 2/4"))?;
        let (i, n): (u32, u32) = match (i.trim().parse(), n.trim().parse()) {
            (Ok(i), Ok(n)) => (i, n),
            _ => return Err(format!("`{s}`: expected I/N with whole numbers, e.g. 2/4")),
        };
        if n == 0 || i == 0 || i > n {
            return Err(format!("`{s}`: I must be between 1 and N"));
        }
        Ok(Shard {
            index: i - 1,
            count: n,
        })
    }

    pub(crate) fn owns(&self, key: &str) -> bool {
        self.count <= 1 || fnv1a(key.as_bytes()) % self.count as u64 == self.index as u64
    }

    /// `all`, or `I/N`.
    pub fn label(&self) -> String {
        if self.count <= 1 {
            "all".into()
        } else {
            format!("{}/{}", self.index + 1, self.count)
        }
    }
}

/// FNV-1a: stable across versions and hosts (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The prefixes to list (pure): each rule's prefix within the source prefix,
/// without those another one covers.
pub(crate) fn listing_prefixes(rules: &[RuleConfig], source_prefix: &str) -> Vec<String> {
    let mut p: Vec<String> = rules
        .iter()
        .filter_map(|r| {
            if r.prefix.starts_with(source_prefix) {
                Some(r.prefix.clone())
            } else if source_prefix.starts_with(&r.prefix) {
                Some(source_prefix.to_string())
            } else {
                None
            }
        })
        .collect();
    p.sort();
    p.dedup();
    let mut out: Vec<String> = Vec::new();
    for x in p {
        if !out.iter().any(|o| x.starts_with(o.as_str())) {
            out.push(x);
        }
    }
    out
}

fn ms(t: Option<std::time::SystemTime>) -> Option<i64> {
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
}

/// Which keys of a listed page changed since they were seen (pure). `listed`
/// are the page's current objects, `seen` the journal's rows for the same
/// key range: a seen key missing from the listing was deleted (or is now a
/// delete marker) unless it is known so.
pub(crate) fn changed_keys(listed: &[ListEntry], seen: &[Seen]) -> Vec<String> {
    let by_key: HashMap<&str, &Seen> = seen.iter().map(|s| (s.key.as_str(), s)).collect();
    let mut out: Vec<String> = Vec::new();
    let mut present = HashSet::new();
    for o in listed {
        present.insert(o.key.as_str());
        let same = by_key.get(o.key.as_str()).is_some_and(|s| {
            !s.deleted && s.settled && s.etag == o.etag && s.modified_ms == ms(o.last_modified)
        });
        if !same {
            out.push(o.key.clone());
        }
    }
    for s in seen {
        if !s.deleted && !present.contains(s.key.as_str()) {
            out.push(s.key.clone());
        }
    }
    out.sort();
    out
}

/// The versions of one key newer than the one seen, oldest first (pure).
/// `versions` are the key's, newest first. When the one seen is no longer
/// listed (removed by lifecycle), those modified after it count as new.
pub(crate) fn new_versions<'a>(
    versions: &'a [VersionEntry],
    seen: Option<&Seen>,
) -> Vec<&'a VersionEntry> {
    let mut out: Vec<&VersionEntry> = match seen {
        None => versions.iter().collect(),
        Some(s) if versions.iter().any(|v| v.version_id == s.version_id) => versions
            .iter()
            .take_while(|v| v.version_id != s.version_id)
            .collect(),
        Some(s) => versions
            .iter()
            .filter(|v| ms(v.last_modified) > s.modified_ms)
            .collect(),
    };
    out.reverse();
    out
}

/// What to remember of a key whose versions are `versions` (newest first),
/// listed at `now_ms` (pure).
pub(crate) fn seen_after(key: &str, versions: &[VersionEntry], now_ms: i64) -> Option<Seen> {
    let newest = versions.first()?;
    let modified_ms = ms(newest.last_modified);
    Some(Seen {
        key: key.to_string(),
        version_id: newest.version_id.clone(),
        etag: newest.etag.clone(),
        modified_ms,
        deleted: newest.is_delete_marker,
        settled: modified_ms.is_some_and(|m| m < now_ms - SETTLE.as_millis() as i64),
    })
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DiscoverError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Pass {
    pub keys: usize,
    pub changed: usize,
    pub queued: usize,
    pub requests: usize,
}

/// Finds new source versions and queues them on a replicator.
pub(crate) struct Discovery {
    source: Arc<dyn ObjectStore>,
    rules: Rules,
    /// Rules with tag filters: their keys need each version's tags.
    tagged: Vec<RuleConfig>,
    destinations: HashSet<String>,
    prefixes: Vec<String>,
    journal: Journal,
    replicator: Replicator,
    shard: Shard,
    /// Keys or versions a listing asks for at once (S3's most: 1,000).
    page: i32,
    /// See [`RANGE_AT`].
    range_at: usize,
}

impl Discovery {
    pub fn new(
        config: &Config,
        source: Arc<dyn ObjectStore>,
        journal: Journal,
        replicator: Replicator,
        shard: Shard,
    ) -> Discovery {
        Discovery {
            source,
            rules: Rules::from_config(config),
            tagged: config
                .rules
                .iter()
                .filter(|r| !r.tags.is_empty())
                .cloned()
                .collect(),
            destinations: config.destinations.iter().map(|d| d.name.clone()).collect(),
            prefixes: listing_prefixes(&config.rules, &config.source.prefix),
            journal,
            replicator,
            shard,
            page: 1000,
            range_at: RANGE_AT,
        }
    }

    /// Passes every `interval`, for good (the caller drops the task to stop:
    /// a pass cut short leaves the journal as a crash would). The first pass
    /// and every [`SWEEP_EVERY`]th are sweeps.
    pub async fn run(self, interval: Duration) {
        for n in 0u64.. {
            let started = Instant::now();
            match self.pass(n % SWEEP_EVERY == 0).await {
                Ok(p) => {
                    tracing::debug!(keys = p.keys, changed = p.changed, queued = p.queued, requests = p.requests, took = ?started.elapsed(), "discovery pass");
                    let stats = DiscoveryStats {
                        shard: self.shard.label(),
                        last_pass_ms: crate::clock::now_ms(),
                        last_took_ms: started.elapsed().as_millis() as i64,
                        keys: p.keys as i64,
                        changed: p.changed as i64,
                        queued: p.queued as i64,
                        requests: p.requests as i64,
                        ..Default::default()
                    };
                    if let Err(e) = self.journal.note_discovery(stats).await {
                        tracing::warn!(error = %e, "cannot count a discovery pass in the journal");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "discovery pass failed; trying again next interval")
                }
            }
            tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
        }
    }

    /// One pass over every listing prefix: a sweep lists every version, a
    /// quick pass the current objects (see "A pass").
    pub async fn pass(&self, sweep: bool) -> Result<Pass, DiscoverError> {
        let mut total = Pass::default();
        for prefix in &self.prefixes {
            if sweep {
                self.sweep_prefix(prefix, &mut total).await?;
            } else {
                self.pass_prefix(prefix, &mut total).await?;
            }
        }
        Ok(total)
    }

    async fn sweep_prefix(&self, prefix: &str, total: &mut Pass) -> Result<(), DiscoverError> {
        let mut from = None;
        let mut after: Option<String> = None;
        // The last key of a page may go on in the next: held back until then.
        let mut carry: Vec<VersionEntry> = Vec::new();
        loop {
            let page = self
                .source
                .list_versions(prefix, from, Some(self.page))
                .await?;
            total.requests += 1;
            let mut entries = std::mem::take(&mut carry);
            entries.extend(
                page.versions
                    .into_iter()
                    .filter(|v| self.shard.owns(&v.key) && !ignored(&v.key)),
            );
            if page.next.is_some() {
                if let Some(last) = entries.last().map(|v| v.key.clone()) {
                    let at = entries.partition_point(|v| v.key < last);
                    carry = entries.split_off(at);
                }
            }
            let mut groups: BTreeMap<String, Vec<VersionEntry>> = BTreeMap::new();
            for v in entries {
                groups.entry(v.key.clone()).or_default().push(v);
            }
            let upto = match &page.next {
                Some(_) => groups.keys().next_back().cloned(),
                None => None,
            };
            if !groups.is_empty() || page.next.is_none() {
                let seen = self
                    .journal
                    .seen_range(prefix.to_string(), after.clone(), upto.clone())
                    .await?;
                let seen: HashMap<&str, &Seen> = seen.iter().map(|s| (s.key.as_str(), s)).collect();
                total.keys += groups
                    .values()
                    .filter(|g| g.first().is_some_and(|v| !v.is_delete_marker))
                    .count();
                let changed: Vec<String> = groups
                    .iter()
                    .filter(|(k, g)| {
                        seen.get(k.as_str()).map(|s| s.version_id.as_str())
                            != g.first().map(|v| v.version_id.as_str())
                            || seen.get(k.as_str()).is_some_and(|s| !s.settled)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                total.changed += changed.len();
                total.queued += self.record(&changed, &groups, &seen, total).await?;
            }
            match page.next {
                Some(n) => {
                    from = Some(n);
                    if upto.is_some() {
                        after = upto;
                    }
                }
                None => return Ok(()),
            }
        }
    }

    async fn pass_prefix(&self, prefix: &str, total: &mut Pass) -> Result<(), DiscoverError> {
        let mut token = None;
        let mut after: Option<String> = None;
        loop {
            let page = self
                .source
                .list(prefix, None, token, Some(self.page))
                .await?;
            total.requests += 1;
            // The key range this page covers: to its last key, or to the end.
            let upto = match (&page.next_token, page.objects.last()) {
                (Some(_), Some(last)) => Some(last.key.clone()),
                _ => None,
            };
            let listed: Vec<ListEntry> = page
                .objects
                .into_iter()
                .filter(|o| self.shard.owns(&o.key) && !ignored(&o.key))
                .collect();
            total.keys += listed.len();
            let seen: Vec<Seen> = self
                .journal
                .seen_range(prefix.to_string(), after.clone(), upto.clone())
                .await?
                .into_iter()
                .filter(|s| self.shard.owns(&s.key))
                .collect();
            let changed = changed_keys(&listed, &seen);
            if !changed.is_empty() {
                total.changed += changed.len();
                let versions = self
                    .versions_of(prefix, &changed, after.as_deref(), total)
                    .await?;
                let seen: HashMap<&str, &Seen> = seen.iter().map(|s| (s.key.as_str(), s)).collect();
                total.queued += self.record(&changed, &versions, &seen, total).await?;
            }
            match (page.next_token, upto) {
                (Some(t), Some(u)) => {
                    token = Some(t);
                    after = Some(u);
                }
                _ => return Ok(()),
            }
        }
    }

    /// The versions (newest first) of each changed key: one listing per key,
    /// or, for many, one of the whole range after `after`.
    async fn versions_of(
        &self,
        prefix: &str,
        changed: &[String],
        after: Option<&str>,
        total: &mut Pass,
    ) -> Result<BTreeMap<String, Vec<VersionEntry>>, DiscoverError> {
        let wanted: HashSet<&str> = changed.iter().map(String::as_str).collect();
        let mut out = BTreeMap::new();
        if changed.len() > self.range_at {
            let (from, last) = (
                after.map(|a| (a.to_string(), None)),
                &changed[changed.len() - 1],
            );
            self.list_until(prefix, from, last, &wanted, &mut out, total)
                .await?;
        } else {
            for key in changed {
                self.list_until(key, None, key, &wanted, &mut out, total)
                    .await?;
            }
        }
        Ok(out)
    }

    /// Lists versions under `prefix` from `from` until past the key `end`,
    /// keeping those of the `wanted` keys.
    async fn list_until(
        &self,
        prefix: &str,
        mut from: Option<(String, Option<String>)>,
        end: &str,
        wanted: &HashSet<&str>,
        out: &mut BTreeMap<String, Vec<VersionEntry>>,
        total: &mut Pass,
    ) -> Result<(), DiscoverError> {
        loop {
            let page = self
                .source
                .list_versions(prefix, from, Some(self.page))
                .await?;
            total.requests += 1;
            let past = page.versions.last().is_some_and(|v| v.key.as_str() > end);
            for v in page.versions {
                if v.key.as_str() <= end && wanted.contains(v.key.as_str()) {
                    out.entry(v.key.clone()).or_default().push(v);
                }
            }
            match page.next {
                Some(n) if !past => from = Some(n),
                _ => return Ok(()),
            }
        }
    }

    /// Queues the new versions of the changed keys and records them seen, in
    /// one transaction; returns how many tasks were queued.
    async fn record(
        &self,
        changed: &[String],
        versions: &BTreeMap<String, Vec<VersionEntry>>,
        seen: &HashMap<&str, &Seen>,
        total: &mut Pass,
    ) -> Result<usize, DiscoverError> {
        let now = crate::clock::now_ms();
        let mut rows = Vec::new();
        let mut items = Vec::new();
        for key in changed {
            let list = versions.get(key).map(Vec::as_slice).unwrap_or_default();
            let before = seen.get(key.as_str()).copied();
            for v in new_versions(list, before) {
                for t in self.targets(v, total).await? {
                    items.push((v.key.clone(), v.version_id.clone(), v.size, t));
                }
            }
            match seen_after(key, list, now) {
                Some(row) => rows.push(row),
                // Listed as current yet without versions (gone in between):
                // looked at again next pass.
                None => continue,
            }
        }
        let tasks = self.journal.record_discovered(rows, items).await?;
        let n = tasks.len();
        self.replicator.enqueue(tasks);
        Ok(n)
    }

    /// Where one version goes. The rules see its tags and metadata only where
    /// a tag rule covers the key (one HEAD and one GetObjectTagging); other
    /// versions are matched by key, and a replica among them (two-way
    /// replication) is left alone when its task reads it (see `copy`).
    async fn targets(
        &self,
        v: &VersionEntry,
        total: &mut Pass,
    ) -> Result<Vec<NewTask>, DiscoverError> {
        let (change, kind) = if v.is_delete_marker {
            (Change::DeleteMarker, TaskKind::Delete)
        } else {
            (Change::Version, TaskKind::Version)
        };
        let (mut tags, mut metadata) = (BTreeMap::new(), BTreeMap::new());
        if !v.is_delete_marker && self.tagged.iter().any(|r| v.key.starts_with(&r.prefix)) {
            match self.source.head(&v.key, Some(&v.version_id)).await {
                Ok(h) => metadata = h.metadata,
                // Removed since the listing: nothing to copy.
                Err(StoreError::NotFound { .. }) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            }
            tags = self
                .source
                .get_tags(&v.key, Some(&v.version_id))
                .await
                .unwrap_or_default();
            total.requests += 2;
        }
        Ok(self
            .rules
            .targets(&v.key, &tags, &metadata, change)
            .into_iter()
            .filter(|t| self.destinations.contains(&t.destination))
            .map(|t| NewTask {
                checksum: None,
                destination: t.destination,
                rule_id: t.rule_id,
                kind,
                storage_class: t.storage_class,
            })
            .collect())
    }
}

/// Keys regionfs keeps for itself: each mount's attribute indexes, the
/// replication heartbeat (written into destinations, so seen by a reverse
/// rule's discovery), and the marker a starting mount probes with.
fn ignored(key: &str) -> bool {
    crate::names::is_index_key(key)
        || key.rsplit('/').next() == Some(crate::names::HEARTBEAT)
        || crate::store::probe::is_probe_key(key)
}

#[cfg(test)]
mod tests;
