//! The attribute index: for each directory, one object outside the tree
//! (`<prefix>.regionfs-index/<dir>/index.json`) holding what a HEAD of each of
//! its files says (user metadata, content type), tagged with the version it
//! describes. A mount that lists a directory reads its index, and every file
//! whose listing (ETag, size, Last-Modified) matches its entry gets its mode,
//! owner and times without a HEAD. Mounts write the index in the background
//! for the versions they uploaded or asked about.
//!
//! Why an entry can be trusted without a HEAD: it is written only for a version
//! this mount knows exactly — the version id its upload returned or a HEAD
//! reported, found current by a version listing — and only when that listing
//! was sent at least `1 + CLOCK_SKEW_S` seconds after the version's
//! Last-Modified. Any later version of the key (another client's rewrite, a
//! metadata-only copy) was then written later still, so its Last-Modified
//! second differs: (ETag, size, second) names one version, and a stale entry
//! never matches a listing.
//!
//! The index is a cache, never the truth: missing, stale, overwritten by
//! another mount, or unreadable, it costs HEADs, never attributes. It is
//! written outside the journal (losing a write loses nothing), is not
//! replicated, and each rewrite deletes the version it replaces so the
//! versioned bucket keeps one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::meta::unix_secs;
use crate::store::{GetRequest, ObjectInfo, ObjectStore, PutBody, PutOptions, VersionEntry};

use super::names::{child_path, dir_key, listed_entry, name_of, parent_of, INDEX_DIR};

/// How far this host's clock may run ahead of the bucket's (see the module
/// comment and [`super::inode::Node::listed_as`]).
pub(crate) const CLOCK_SKEW_S: i64 = 2;

/// A directory is indexed once nothing new was learned about it for this long,
/// or at the latest [`MAX_DELAY`] after the first thing learned.
const QUIET: Duration = Duration::from_secs(2);
const MAX_DELAY: Duration = Duration::from_secs(30);
/// Versions listed at most per directory: larger directories are not indexed
/// (their files are asked about one HEAD each, as without an index).
const MAX_LISTED: usize = 10_000;
/// Versions learned and not yet indexed, over all directories: beyond, new
/// ones are not remembered (memory stays bounded; those files cost HEADs).
const MAX_FACTS: usize = 8192;
/// Directories indexed at once: a tar writes a directory's files in a burst
/// and moves on, and one at a time (a version listing, a GET and a PUT each)
/// fell behind a 100,000-file extraction, so the versions waiting piled up to
/// [`MAX_FACTS`]. Each directory has its own index object, so the ones of a
/// batch never write the same object.
const AT_ONCE: usize = 4;

/// The index object of directory `dir` ("" is the root).
pub(crate) fn index_key(prefix: &str, dir: &str) -> String {
    if dir.is_empty() {
        format!("{prefix}{INDEX_DIR}/index.json")
    } else {
        format!("{prefix}{INDEX_DIR}/{dir}/index.json")
    }
}

/// One directory's index: file name → entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Index {
    #[serde(default)]
    pub files: BTreeMap<String, Entry>,
}

/// What a HEAD of one version says, and which version that is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub etag: String,
    pub size: u64,
    /// Last-Modified, whole seconds since the epoch.
    pub modified: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Entry {
    /// Whether a listed object is the version this entry describes.
    pub(crate) fn describes(&self, size: u64, etag: &str, modified: Option<SystemTime>) -> bool {
        !etag.is_empty()
            && self.etag == etag
            && self.size == size
            && modified.map(unix_secs) == Some(self.modified)
    }

    /// The entry as the HEAD it stands for.
    pub fn info(&self, key: &str) -> ObjectInfo {
        ObjectInfo {
            key: key.to_string(),
            size: self.size,
            etag: self.etag.clone(),
            version_id: self.version.clone(),
            last_modified: u64::try_from(self.modified)
                .ok()
                .map(|s| UNIX_EPOCH + Duration::from_secs(s)),
            content_type: self.content_type.clone(),
            metadata: self.metadata.clone(),
            storage_class: None,
            crc64nvme: None,
            other_checksum: false,
        }
    }
}

/// A version whose HEAD this mount knows exactly (it uploaded it, or asked).
/// Kept compact (one string for the metadata, ~250 bytes in all): a burst of
/// writes holds thousands until their directories are indexed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fact {
    version: Box<str>,
    content_type: Option<Box<str>>,
    metadata: Box<str>,
}

impl Fact {
    pub fn new(
        version: &str,
        content_type: Option<&str>,
        metadata: &BTreeMap<String, String>,
    ) -> Fact {
        Fact {
            version: version.into(),
            content_type: content_type.map(Into::into),
            metadata: serde_json::to_string(metadata)
                .unwrap_or_default()
                .into_boxed_str(),
        }
    }
}

/// The index to write for a directory, from its old index, the current
/// version of each file in it (`(name, version)`, delete markers included) as
/// listed at `asked_s`, and what this mount learned. Also returns the facts
/// that cannot be used yet (their version is too recent to be named by its
/// Last-Modified second), to try again later.
pub(crate) fn rebuild(
    old: &Index,
    current: &[(String, VersionEntry)],
    mut facts: HashMap<String, Fact>,
    asked_s: i64,
) -> (Index, HashMap<String, Fact>) {
    let mut new = Index::default();
    let mut later = HashMap::new();
    for (name, v) in current {
        if v.is_delete_marker {
            continue;
        }
        let Some(modified) = v.last_modified.map(unix_secs) else {
            continue;
        };
        let kept = old
            .files
            .get(name)
            .filter(|e| e.describes(v.size, &v.etag, v.last_modified));
        match facts.remove(name) {
            Some(f) if *f.version == v.version_id && !v.etag.is_empty() => {
                if asked_s >= modified + 1 + CLOCK_SKEW_S {
                    new.files.insert(
                        name.clone(),
                        Entry {
                            etag: v.etag.clone(),
                            size: v.size,
                            modified,
                            version: Some(f.version.into()),
                            content_type: f.content_type.map(Into::into),
                            metadata: serde_json::from_str(&f.metadata).unwrap_or_default(),
                        },
                    );
                    continue;
                }
                later.insert(name.clone(), f);
            }
            // A fact about an older version is of no use any more.
            _ => {}
        }
        if let Some(e) = kept {
            new.files.insert(name.clone(), e.clone());
        }
    }
    (new, later)
}

/// What was learned about one directory since it was last indexed.
struct Pending {
    first: Instant,
    last: Instant,
    facts: HashMap<String, Fact>,
}

/// Learns versions, and writes each directory's index once it is quiet.
pub(crate) struct Indexer {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// Read-only and point-in-time mounts read indexes but never write them.
    writes: bool,
    state: Mutex<(HashMap<String, Pending>, usize)>,
    /// Directories too large to index, not tried again for a while.
    too_large: Mutex<HashMap<String, Instant>>,
    /// One pass of indexing at a time (its directories distinct): the
    /// background pass and the flush at unmount would otherwise rewrite the
    /// same index from the same old one, each dropping the other's entries.
    writing: tokio::sync::Mutex<()>,
    /// Removals of indexes of removed directories, awaited by the flush.
    forgetting: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Indexer {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: String, writes: bool) -> Arc<Indexer> {
        Arc::new(Indexer {
            store,
            prefix,
            writes,
            state: Mutex::new((HashMap::new(), 0)),
            too_large: Mutex::new(HashMap::new()),
            writing: tokio::sync::Mutex::new(()),
            forgetting: Mutex::new(Vec::new()),
        })
    }

    /// Remembers what a HEAD of `path`'s version `fact.version` says.
    pub(crate) fn learn(&self, path: &str, fact: Fact) {
        if !self.writes {
            return;
        }
        let (dir, name) = (parent_of(path), name_of(path));
        if self.too_large.lock().unwrap().contains_key(dir) {
            return;
        }
        let mut s = self.state.lock().unwrap();
        let (dirs, count) = &mut *s;
        let now = Instant::now();
        let p = dirs.entry(dir.to_string()).or_insert_with(|| Pending {
            first: now,
            last: now,
            facts: HashMap::new(),
        });
        p.last = now;
        if !p.facts.contains_key(name) {
            if *count >= MAX_FACTS {
                return;
            }
            *count += 1;
        }
        p.facts.insert(name.to_string(), fact);
    }

    /// Directories with something learned, ready to be indexed at `now`
    /// (all of them with `all`).
    fn due(&self, now: Instant, all: bool) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.0.iter()
            .filter(|(_, p)| {
                all || now.duration_since(p.last) >= QUIET
                    || now.duration_since(p.first) >= MAX_DELAY
            })
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// The directory's index and the version it is stored as (None: none
    /// readable; a damaged or foreign object counts as none).
    pub async fn read(&self, dir: &str) -> Option<(Index, Option<String>)> {
        let key = index_key(&self.prefix, dir);
        let got = match self.store.get(&key, GetRequest::default()).await {
            Ok(g) => g,
            Err(StoreError::NotFound { .. }) => return None,
            Err(e) => {
                tracing::debug!(key, error = %e, "attribute index unreadable");
                return None;
            }
        };
        let version = got.info.version_id.clone();
        let bytes = got.bytes().await.ok()?;
        match serde_json::from_slice::<Index>(&bytes) {
            Ok(i) => Some((i, version)),
            Err(e) => {
                tracing::warn!(key, error = %e, "attribute index is not regionfs's: ignored (files are asked about one by one)");
                Some((Index::default(), version))
            }
        }
    }

    /// Indexes the directories that are due, forever (every second).
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.index_dirs(self.due(Instant::now(), false)).await;
            self.too_large
                .lock()
                .unwrap()
                .retain(|_, at| at.elapsed() < Duration::from_secs(600));
        }
    }

    /// Indexes everything learned, waiting (until `deadline`) for versions too
    /// recent to be indexed yet. Called at unmount; what is left is dropped.
    pub async fn flush(&self, deadline: tokio::time::Instant) {
        let forgetting = std::mem::take(&mut *self.forgetting.lock().unwrap());
        for h in forgetting {
            let _ = tokio::time::timeout_at(deadline, h).await;
        }
        loop {
            self.index_dirs(self.due(Instant::now(), true)).await;
            if self.state.lock().unwrap().0.is_empty()
                || tokio::time::Instant::now() + Duration::from_millis(250) > deadline
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A directory removed (or renamed away): its index goes too, so the
    /// bucket keeps none for directories that are gone. Best effort, in the
    /// background; a new directory of that name writes its own.
    pub(crate) fn forget_dir(self: &Arc<Self>, dir: &str) {
        if !self.writes {
            return;
        }
        self.take(dir);
        let me = self.clone();
        let key = index_key(&self.prefix, dir);
        let mut forgetting = self.forgetting.lock().unwrap();
        forgetting.retain(|h| !h.is_finished());
        forgetting.push(tokio::spawn(async move {
            let _one = me.writing.lock().await;
            if let Ok(ObjectInfo {
                version_id: Some(v),
                ..
            }) = me.store.head(&key, None).await
            {
                let _ = me.store.delete_version(&key, &v).await;
            }
        }));
    }

    /// What was learned about `dir`, no longer counted as pending.
    fn take(&self, dir: &str) -> HashMap<String, Fact> {
        let mut s = self.state.lock().unwrap();
        let (dirs, count) = &mut *s;
        let facts = dirs.remove(dir).map(|p| p.facts).unwrap_or_default();
        *count = count.saturating_sub(facts.len());
        facts
    }

    /// Indexes `dirs` (distinct), [`AT_ONCE`] at a time.
    async fn index_dirs(&self, dirs: Vec<String>) {
        if dirs.is_empty() {
            return;
        }
        let _one = self.writing.lock().await;
        futures_util::stream::iter(dirs)
            .for_each_concurrent(AT_ONCE, |dir| async move { self.index_dir(&dir).await })
            .await;
    }

    /// Indexes `dir`; the caller holds `writing`.
    async fn index_dir(&self, dir: &str) {
        let facts = self.take(dir);
        match self.write_index(dir, facts).await {
            Ok(later) => {
                for (name, f) in later {
                    self.learn(&child_path(dir, &name), f);
                }
            }
            Err(e) => tracing::debug!(dir, error = %e, "attribute index not written"),
        }
    }

    async fn write_index(
        &self,
        dir: &str,
        facts: HashMap<String, Fact>,
    ) -> Result<HashMap<String, Fact>, StoreError> {
        let dkey = dir_key(&self.prefix, dir);
        let asked_s = unix_secs(SystemTime::now());
        let mut current: Vec<(String, VersionEntry)> = Vec::new();
        let mut listed = 0;
        let mut from = None;
        loop {
            let page = self.store.list_versions(&dkey, from, None).await?;
            listed += page.versions.len();
            for v in page.versions {
                // Files directly in the directory, current versions only.
                let Some((name, false)) = listed_entry(&dkey, &v.key) else {
                    continue;
                };
                if v.is_latest {
                    current.push((name.to_string(), v));
                }
            }
            match page.next {
                Some(n) if listed < MAX_LISTED => from = Some(n),
                Some(_) => {
                    self.too_large
                        .lock()
                        .unwrap()
                        .insert(dir.to_string(), Instant::now());
                    return Ok(HashMap::new());
                }
                None => break,
            }
        }
        let (old, old_version) = self.read(dir).await.unwrap_or_default();
        let (new, later) = rebuild(&old, &current, facts, asked_s);
        if new == old && old_version.is_some() || new.files.is_empty() && old_version.is_none() {
            return Ok(later);
        }
        let key = index_key(&self.prefix, dir);
        if !new.files.is_empty() {
            let body = serde_json::to_vec(&new).unwrap_or_default();
            let opts = PutOptions {
                content_type: Some("application/json".into()),
                ..Default::default()
            };
            self.store
                .put(&key, PutBody::Bytes(Bytes::from(body)), &opts)
                .await?;
        }
        if let Some(v) = old_version {
            // The replaced version: the bucket keeps one index per directory.
            let _ = self.store.delete_version(&key, &v).await;
        }
        Ok(later)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_secs(s as u64) + Duration::from_millis(400))
    }

    fn current(name: &str, version: &str, etag: &str, modified: i64) -> (String, VersionEntry) {
        (
            name.to_string(),
            VersionEntry {
                key: format!("d/{name}"),
                version_id: version.to_string(),
                is_latest: true,
                is_delete_marker: false,
                size: 5,
                etag: etag.to_string(),
                last_modified: at(modified),
            },
        )
    }

    fn fact(version: &str, mode: &str) -> Fact {
        Fact::new(
            version,
            None,
            &[("mode".to_string(), mode.to_string())].into(),
        )
    }

    #[test]
    fn an_entry_is_written_only_for_the_current_version_once_its_second_is_unambiguous() {
        let listing = vec![
            current("old-enough", "v1", "e1", 100),
            current("too-recent", "v2", "e2", 100),
            current("rewritten", "v9", "e3", 90),
        ];
        let facts: HashMap<String, Fact> = [
            ("old-enough".to_string(), fact("v1", "33152")),
            ("too-recent".to_string(), fact("v2", "33152")),
            ("rewritten".to_string(), fact("v8", "33152")),
        ]
        .into();
        // Listed 3 s after the first one's Last-Modified second: 100 + 1 + skew.
        let (new, later) = rebuild(&Index::default(), &listing[..1], facts.clone(), 103);
        assert_eq!(new.files["old-enough"].metadata["mode"], "33152");
        assert_eq!(new.files["old-enough"].version.as_deref(), Some("v1"));
        assert!(later.is_empty());

        let (new, later) = rebuild(&Index::default(), &listing, facts, 102);
        assert!(new.files.is_empty(), "{new:?}");
        assert!(later.contains_key("old-enough") && later.contains_key("too-recent"));
        assert!(
            !later.contains_key("rewritten"),
            "a fact about an older version is dropped"
        );
    }

    #[test]
    fn old_entries_are_kept_only_while_they_describe_the_listed_version() {
        let entry = |etag: &str, modified: i64| Entry {
            etag: etag.to_string(),
            size: 5,
            modified,
            version: None,
            content_type: None,
            metadata: BTreeMap::new(),
        };
        let mut old = Index::default();
        old.files.insert("same".into(), entry("e1", 100));
        old.files.insert("recopied".into(), entry("e2", 100));
        old.files.insert("removed".into(), entry("e3", 100));
        old.files.insert("deleted".into(), entry("e4", 100));
        let mut marker = current("deleted", "v5", "", 120);
        marker.1.is_delete_marker = true;
        let listing = vec![
            current("same", "v1", "e1", 100),
            // A metadata-only copy keeps the ETag, not the second.
            current("recopied", "v2", "e2", 130),
            marker,
        ];
        let (new, _) = rebuild(&old, &listing, HashMap::new(), 200);
        assert_eq!(new.files.keys().collect::<Vec<_>>(), vec!["same"]);
        assert!(new.files["same"].describes(5, "e1", at(100)));
        assert!(!new.files["same"].describes(5, "e1", at(101)));
        assert!(!new.files["same"].describes(6, "e1", at(100)));
        assert!(!new.files["same"].describes(5, "", at(100)));
    }

    #[test]
    fn index_keys_are_outside_the_tree_and_distinct_per_directory() {
        assert_eq!(index_key("p/", ""), "p/.regionfs-index/index.json");
        assert_eq!(index_key("p/", "a/b"), "p/.regionfs-index/a/b/index.json");
        assert_ne!(index_key("", "a"), index_key("", "a/index.json"));
        assert!(super::super::names::is_index_key(&index_key("p/", "a")));
        assert!(!super::super::names::is_index_key("p/a/index.json"));
    }
}
