//! Where a read's bytes come from. Each region (the source and every
//! destination) is probed in the background with a cheap request; its
//! round-trip time is smoothed, and a failed probe marks it unreachable.
//!
//! Invariants:
//! - Truth (names, attributes, the current version id) comes from the source;
//!   this module only chooses where to fetch the bytes of a version already
//!   known.
//! - A replica is read only when it provably holds that exact source version:
//!   the journal says this host's task for it COMPLETED, or the replica's
//!   current object carries `regionfs-source-version` = that version. Else the
//!   source is read. So a lagging replica never serves old bytes.
//! - When the source is unreachable, a replica holding the version still
//!   serves it; nothing else changes (writes stay in the cache).
//!
//! The read policies that wrap the source store live here too:
//! [`bounded`] (`read.max_staleness`: read a replica whose replication
//! heartbeat is recent enough) and [`asof`] (`--as-of`: the bucket as it was
//! at an instant).

pub(crate) mod asof;
pub mod bounded;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::journal::{Journal, TaskStatus};
use crate::store::{ObjectStore, SOURCE_VERSION_META};

/// How reads pick a region (`read.prefer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prefer {
    /// The region with the lowest measured round trip that holds the version.
    Nearest,
    /// Always the source (replicas only while it is unreachable).
    Source,
    /// This destination when it holds the version, else the source.
    Named(String),
}

impl Prefer {
    pub fn parse(s: &str) -> Prefer {
        match s {
            "nearest" => Prefer::Nearest,
            "source" => Prefer::Source,
            other => Prefer::Named(other.to_string()),
        }
    }
}

/// A mount's read choice as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadView {
    pub prefer: String,
    /// Regions best first for the next read.
    pub order: Vec<String>,
    pub regions: BTreeMap<String, RegionState>,
    /// Replica mounts with `read.max_staleness`: the replica's known lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_lag_s: Option<f64>,
    /// ... and whether reads go to the source because of it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reading_source_for_staleness: bool,
}

/// What the probes know of one region, as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionState {
    /// Smoothed round trip of the probe request, milliseconds.
    pub rtt_ms: Option<f64>,
    pub reachable: bool,
    /// Seconds since the epoch when it stopped answering (while unreachable).
    pub unreachable_since: Option<u64>,
    pub last_error: Option<String>,
    /// Bytes this process read from it.
    pub read_bytes: u64,
    pub is_source: bool,
}

struct Region {
    name: String,
    store: Arc<dyn ObjectStore>,
    is_source: bool,
    rtt_ms: Mutex<Option<f64>>,
    down_since: Mutex<Option<SystemTime>>,
    /// Woken when `down_since` is set.
    went_down: tokio::sync::Notify,
    last_error: Mutex<Option<String>>,
    read_bytes: AtomicU64,
}

/// One place to fetch a version's bytes from.
#[derive(Clone)]
pub(crate) struct Fetch {
    pub region: String,
    pub store: Arc<dyn ObjectStore>,
    /// The version id at that store (the replica's own id for a replica).
    pub version: Option<String>,
    /// The bytes are the source's own object: its ETag must match (a replica
    /// may have another ETag for the same bytes when parts differ).
    pub is_source: bool,
    counter: Option<Arc<Regions>>,
}

impl Fetch {
    /// Straight from `store` (a mount without region choice).
    pub fn direct(store: Arc<dyn ObjectStore>, version: Option<String>) -> Fetch {
        Fetch {
            region: "source".into(),
            store,
            version,
            is_source: true,
            counter: None,
        }
    }

    pub fn count(&self, bytes: u64) {
        if let Some(r) = self.counter.as_ref().and_then(|c| c.find(&self.region)) {
            r.read_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// `request` to this fetch's region, bounded as
    /// [`Regions::patiently_watching`]; a mount without region choice waits
    /// as long as the S3 client does.
    pub(crate) async fn patiently<T, E: From<StoreError>>(
        &self,
        what: &str,
        progress: impl Fn() -> u64,
        request: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        match &self.counter {
            Some(c) => {
                c.patiently_watching(&self.region, what, progress, request)
                    .await
            }
            None => request.await,
        }
    }

    /// Where to read `key` from now that this fetch, from the source, has
    /// failed: while the source answered, the list held no replica
    /// ([`Regions::sources_for`] stops at a reachable source); made afresh,
    /// it names the replicas that hold this version. Empty for a replica or
    /// a mount without region choice.
    pub(crate) async fn after_source_failed(&self, key: &str) -> Vec<Fetch> {
        match (&self.counter, self.is_source) {
            (Some(c), true) => c
                .sources_for(key, self.version.as_deref())
                .await
                .into_iter()
                .filter(|f| f.region != self.region)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The read from this region failed in transit: rank it last until a probe
    /// answers again.
    pub fn failed(&self, error: &str) {
        if let Some(c) = &self.counter {
            c.failed(&self.region, error);
        }
    }
}

/// The regions a mount reads from, with their probes.
pub struct Regions {
    regions: Vec<Region>,
    prefer: Prefer,
    journal: Option<Journal>,
    /// Smoothing of the probe RTT (weight of the newest sample).
    alpha: f64,
    staleness: Option<Arc<crate::regions::bounded::BoundedStaleness>>,
}

/// How often every region is probed.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// How long a request the file system waits on (a lookup, a listing, a
/// read's bytes) waits for a region before it may give up on one the probes
/// find unreachable (see [`Regions::patiently`]). Long enough that a probe
/// timing out on a busy machine does not fail a request a slow region still
/// answers.
pub(crate) const PATIENCE: Duration = Duration::from_secs(5);

impl Regions {
    /// `source` first, then the destinations by name. `journal` tells which
    /// replicas this host's replicator completed; `staleness` is a replica
    /// mount's bound (`read.max_staleness`), which status reports.
    pub fn new(
        source: (String, Arc<dyn ObjectStore>),
        destinations: Vec<(String, Arc<dyn ObjectStore>)>,
        prefer: Prefer,
        journal: Option<Journal>,
        staleness: Option<Arc<crate::regions::bounded::BoundedStaleness>>,
    ) -> Arc<Regions> {
        let region = |name: String, store, is_source| Region {
            name,
            store,
            is_source,
            rtt_ms: Mutex::new(None),
            down_since: Mutex::new(None),
            went_down: tokio::sync::Notify::new(),
            last_error: Mutex::new(None),
            read_bytes: AtomicU64::new(0),
        };
        let mut regions = vec![region(source.0, source.1, true)];
        regions.extend(destinations.into_iter().map(|(n, s)| region(n, s, false)));
        Arc::new(Regions {
            regions,
            prefer,
            journal,
            alpha: 0.3,
            staleness,
        })
    }

    fn find(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// Probes every region every [`PROBE_INTERVAL`] until the process ends,
    /// noting the view in the journal for `status` (when reachability changes,
    /// else every 10 s).
    pub(crate) fn start_probes(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut noted: Option<(Instant, Vec<bool>)> = None;
            loop {
                me.probe_all().await;
                let mut up: Vec<bool> = me.regions.iter().map(Self::reachable).collect();
                if let Some(b) = &me.staleness {
                    up.push(b.state().0);
                }
                let due = match &noted {
                    Some((at, was)) => *was != up || at.elapsed() >= Duration::from_secs(10),
                    None => true,
                };
                if let (true, Some(j)) = (due, &me.journal) {
                    let (stale, lag) = me
                        .staleness
                        .as_ref()
                        .map(|b| b.state())
                        .unwrap_or((false, None));
                    let view = ReadView {
                        prefer: me.prefer_text(),
                        order: me.order(),
                        regions: me.snapshot(),
                        replica_lag_s: lag,
                        reading_source_for_staleness: stale,
                    };
                    if let Ok(text) = serde_json::to_string(&view) {
                        let _ = j.note_regions(text).await;
                    }
                    noted = Some((Instant::now(), up));
                }
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        });
    }

    fn prefer_text(&self) -> String {
        match &self.prefer {
            Prefer::Nearest => "nearest".into(),
            Prefer::Source => "source".into(),
            Prefer::Named(n) => n.clone(),
        }
    }

    /// One round of probes (concurrently), recording RTTs and reachability.
    pub(crate) async fn probe_all(self: &Arc<Self>) {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..self.regions.len() {
            let me = self.clone();
            set.spawn(async move {
                let r = &me.regions[i];
                let start = Instant::now();
                let res = tokio::time::timeout(Duration::from_secs(5), r.store.versioning()).await;
                let ms = start.elapsed().as_secs_f64() * 1000.0;
                let err = match res {
                    Ok(Ok(_)) => None,
                    // Any answer from the server proves it is there and times
                    // the round trip; only transport failures mean unreachable.
                    Ok(Err(e)) if e.is_permanent() => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("probe timed out after 5 s".to_string()),
                };
                me.record(r, ms, err);
            });
        }
        while set.join_next().await.is_some() {}
    }

    fn record(&self, r: &Region, ms: f64, err: Option<String>) {
        match err {
            None => {
                let mut rtt = r.rtt_ms.lock().unwrap();
                *rtt = Some(match *rtt {
                    Some(old) => old * (1.0 - self.alpha) + ms * self.alpha,
                    None => ms,
                });
                if r.down_since.lock().unwrap().take().is_some() {
                    tracing::info!(region = %r.name, "region reachable again");
                }
                *r.last_error.lock().unwrap() = None;
            }
            Some(e) => {
                let mut down = r.down_since.lock().unwrap();
                if down.is_none() {
                    tracing::warn!(region = %r.name, error = %e, "region unreachable");
                    *down = Some(SystemTime::now());
                    r.went_down.notify_waiters();
                }
                *r.last_error.lock().unwrap() = Some(e);
            }
        }
    }

    /// Marks a region unreachable after a failed read (before the next probe).
    pub fn failed(&self, name: &str, error: &str) {
        if let Some(r) = self.find(name) {
            self.record(r, 0.0, Some(error.to_string()));
        }
    }

    /// The bucket this mount looks names up in: the source, or a replica
    /// mount's one bucket.
    pub fn first(&self) -> &str {
        &self.regions[0].name
    }

    /// Resolves once region `name` is found unreachable, by a probe or a
    /// failed read; at once if it already is; never for a name it does not
    /// know.
    pub(crate) async fn until_unreachable(&self, name: &str) {
        let Some(r) = self.find(name) else {
            return std::future::pending().await;
        };
        loop {
            // Registered before the check, so a change in between still wakes it.
            let went_down = r.went_down.notified();
            if !Self::reachable(r) {
                return;
            }
            went_down.await;
        }
    }

    /// `request` (`what`, for the error) to region `name`, given up once it
    /// has waited [`PATIENCE`] and the region is found unreachable. A region
    /// that accepts connections and never answers would otherwise hold it
    /// for the S3 client's timeouts (60 s read timeout, 3 attempts); given
    /// up, it fails as a refused connection does: `Unreachable`, transient.
    /// A slow region that still answers its probes is waited for.
    pub(crate) async fn patiently<T, E: From<StoreError>>(
        &self,
        name: &str,
        what: &str,
        request: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        self.patiently_watching(name, what, || 0, request).await
    }

    /// [`Regions::patiently`] for a request that streams: given up only once
    /// `progress` (its bytes so far) has stood still for [`PATIENCE`] and
    /// the region is found unreachable, so a long transfer that keeps
    /// moving survives a probe that failed meanwhile.
    pub(crate) async fn patiently_watching<T, E: From<StoreError>>(
        &self,
        name: &str,
        what: &str,
        progress: impl Fn() -> u64,
        request: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let silent_and_down = async {
            loop {
                let before = progress();
                tokio::time::sleep(PATIENCE).await;
                self.until_unreachable(name).await;
                if progress() == before {
                    return;
                }
            }
        };
        tokio::select! {
            r = request => r,
            _ = silent_and_down => Err(E::from(StoreError::Unreachable {
                bucket: self.find(name).map_or_else(|| name.to_string(), |r| r.store.describe()),
                message: format!("no answer to {what} in {PATIENCE:?}, and the probes find {name} unreachable"),
            })),
        }
    }

    fn reachable(r: &Region) -> bool {
        r.down_since.lock().unwrap().is_none()
    }

    /// Regions to try for bytes, best first: reachable before unreachable;
    /// then by `read.prefer` (nearest: lowest RTT, unmeasured last; source: the
    /// source first; a name: that region first, then the source).
    pub fn order(&self) -> Vec<String> {
        let rtt = |r: &Region| r.rtt_ms.lock().unwrap().unwrap_or(f64::MAX);
        let rank = |r: &Region| -> (bool, u8, f64) {
            let preferred = match &self.prefer {
                Prefer::Nearest => 0,
                Prefer::Source => u8::from(!r.is_source),
                Prefer::Named(n) if *n == r.name => 0,
                Prefer::Named(_) => 1 + u8::from(!r.is_source),
            };
            let by_rtt = if self.prefer == Prefer::Nearest {
                rtt(r)
            } else {
                0.0
            };
            (!Self::reachable(r), preferred, by_rtt)
        };
        let mut all: Vec<&Region> = self.regions.iter().collect();
        all.sort_by(|a, b| {
            rank(a)
                .partial_cmp(&rank(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        all.into_iter().map(|r| r.name.clone()).collect()
    }

    /// Where to read `key` at source version `version` from, best first. The
    /// source is always in the list (it holds every version); a replica only
    /// when it holds this one. Without a known version only the source can be
    /// trusted.
    pub(crate) async fn sources_for(
        self: &Arc<Self>,
        key: &str,
        version: Option<&str>,
    ) -> Vec<Fetch> {
        let mut out = Vec::new();
        for name in self.order() {
            let Some(r) = self.find(&name) else { continue };
            if r.is_source {
                out.push(self.fetch(r, version.map(str::to_string)));
                // Regions ranked after a reachable source are not needed.
                if Self::reachable(r) {
                    break;
                }
                continue;
            }
            let Some(v) = version else { continue };
            if let Some(replica) = self.replica_holding(r, key, v).await {
                out.push(self.fetch(r, replica));
            }
        }
        out
    }

    fn fetch(self: &Arc<Self>, r: &Region, version: Option<String>) -> Fetch {
        Fetch {
            region: r.name.clone(),
            store: r.store.clone(),
            version,
            is_source: r.is_source,
            counter: Some(self.clone()),
        }
    }

    /// `Some(replica version)` when region `r` holds source version `v` of `key`.
    async fn replica_holding(&self, r: &Region, key: &str, v: &str) -> Option<Option<String>> {
        if let Some(j) = &self.journal {
            if let Ok(tasks) = j.latest_tasks(key.to_string()).await {
                let done = tasks.iter().find(|t| {
                    t.destination == r.name
                        && t.version_id == v
                        && t.status == TaskStatus::Completed
                });
                if let Some(t) = done {
                    if t.replica_version.is_some() {
                        return Some(t.replica_version.clone());
                    }
                }
            }
        }
        if !Self::reachable(r) {
            return None;
        }
        let what = format!("a HEAD of `{key}`");
        match self
            .patiently(&r.name, &what, r.store.head(key, None))
            .await
        {
            Ok(info) if info.metadata.get(SOURCE_VERSION_META).map(String::as_str) == Some(v) => {
                Some(info.version_id)
            }
            Ok(_) => None,
            Err(e) => {
                if !e.is_permanent() {
                    self.failed(&r.name, &e.to_string());
                }
                None
            }
        }
    }

    /// Every region's state, by name.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, RegionState> {
        self.regions
            .iter()
            .map(|r| {
                let down = *r.down_since.lock().unwrap();
                (
                    r.name.clone(),
                    RegionState {
                        rtt_ms: *r.rtt_ms.lock().unwrap(),
                        reachable: down.is_none(),
                        unreachable_since: down.and_then(|d| {
                            d.duration_since(SystemTime::UNIX_EPOCH)
                                .ok()
                                .map(|d| d.as_secs())
                        }),
                        last_error: r.last_error.lock().unwrap().clone(),
                        read_bytes: r.read_bytes.load(Ordering::Relaxed),
                        is_source: r.is_source,
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn regions(prefer: Prefer) -> Arc<Regions> {
        Regions::new(
            ("us".into(), Arc::new(MemoryStore::new("us"))),
            vec![
                ("eu".into(), Arc::new(MemoryStore::new("eu"))),
                ("ap".into(), Arc::new(MemoryStore::new("ap"))),
            ],
            prefer,
            None,
            None,
        )
    }

    #[tokio::test]
    async fn waiting_for_the_source_to_go_down_ends_when_it_does_and_at_once_after() {
        let r = regions(Prefer::Source);
        let waiting = tokio::spawn({
            let r = r.clone();
            async move { r.until_unreachable("us").await }
        });
        tokio::task::yield_now().await;
        r.failed("eu", "a replica going down is not the source");
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        r.failed("us", "connection reset");
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken when the source went down")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), r.until_unreachable("us"))
            .await
            .expect("already down: at once");
    }

    /// Three cases at once (real time, about 10 s): a hung request to a
    /// reachable region is waited for; to a region that is down it is given
    /// up once it has waited the patience; and one whose bytes keep moving
    /// is given up only a patience after they stopped.
    #[tokio::test]
    async fn a_hung_request_is_given_up_only_once_silent_for_the_patience_with_its_region_down() {
        let r = regions(Prefer::Source);
        let hung = || std::future::pending::<Result<(), StoreError>>();
        let reachable = async {
            let waited = PATIENCE + Duration::from_secs(2);
            tokio::time::timeout(waited, r.patiently("eu", "a lookup", hung())).await
        };
        r.failed("us", "probe timed out");
        let down = async {
            let start = Instant::now();
            let e = r.patiently("us", "a lookup", hung()).await.unwrap_err();
            (start.elapsed(), e)
        };
        let moved = Arc::new(AtomicU64::new(0));
        let streaming = async {
            let start = Instant::now();
            let e = r
                .patiently_watching("us", "a read", || moved.load(Ordering::SeqCst), hung())
                .await
                .unwrap_err();
            (start.elapsed(), e)
        };
        let bytes = async {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                moved.fetch_add(4096, Ordering::SeqCst);
            }
        };
        let (reachable, (down_after, down_err), (streaming_after, _), ()) =
            tokio::join!(reachable, down, streaming, bytes);
        assert!(reachable.is_err(), "still waiting on a reachable region");
        assert!(
            down_after >= PATIENCE && down_after < PATIENCE * 2,
            "{down_after:?}"
        );
        assert!(
            matches!(&down_err, StoreError::Unreachable { message, .. } if message.contains("a lookup")),
            "{down_err}"
        );
        assert!(!down_err.is_permanent());
        // The bytes moved through the first patience: given up at the second.
        assert!(
            streaming_after >= PATIENCE * 2 - Duration::from_millis(100),
            "{streaming_after:?}"
        );
    }

    fn set(r: &Regions, name: &str, ms: f64) {
        r.record(r.find(name).unwrap(), ms, None);
    }

    #[test]
    fn nearest_orders_by_smoothed_rtt_and_puts_unreachable_last() {
        let r = regions(Prefer::Nearest);
        set(&r, "us", 80.0);
        set(&r, "eu", 2.0);
        set(&r, "ap", 40.0);
        assert_eq!(r.order(), vec!["eu", "ap", "us"]);
        // One slow sample does not flip the order: the RTT is smoothed.
        set(&r, "eu", 60.0);
        assert_eq!(r.order()[0], "eu");
        r.failed("eu", "connection refused");
        assert_eq!(r.order(), vec!["ap", "us", "eu"]);
        assert!(r.snapshot()["eu"].unreachable_since.is_some());
        set(&r, "eu", 2.0);
        assert_eq!(r.order()[0], "eu");
    }

    #[test]
    fn source_and_named_preferences_ignore_rtt_until_a_region_is_down() {
        let r = regions(Prefer::Source);
        set(&r, "us", 80.0);
        set(&r, "eu", 2.0);
        assert_eq!(r.order()[0], "us");
        r.failed("us", "timeout");
        assert_eq!(r.order().last().unwrap(), "us");
        let n = regions(Prefer::Named("ap".into()));
        assert_eq!(n.order(), vec!["ap", "us", "eu"]);
    }

    #[tokio::test]
    async fn a_replica_is_read_only_when_it_holds_the_exact_source_version() {
        use crate::store::{PutBody, PutOptions};
        let src = Arc::new(MemoryStore::new("us"));
        let eu = Arc::new(MemoryStore::new("eu"));
        let r = Regions::new(
            ("us".into(), src.clone()),
            vec![("eu".into(), eu.clone())],
            Prefer::Nearest,
            None,
            None,
        );
        set(&r, "us", 80.0);
        set(&r, "eu", 2.0);
        let put = |s: Arc<MemoryStore>, body: &'static str, of: Option<String>| async move {
            let mut o = PutOptions::default();
            if let Some(v) = of {
                o.metadata.insert(SOURCE_VERSION_META.into(), v);
            }
            s.put("k", PutBody::Bytes(body.into()), &o)
                .await
                .unwrap()
                .version_id
                .unwrap()
        };
        let v1 = put(src.clone(), "one", None).await;
        let r1 = put(eu.clone(), "one", Some(v1.clone())).await;
        let v2 = put(src.clone(), "two", None).await;
        // The replica still has v1: reading v2 must go to the source.
        let for_v2: Vec<String> = r
            .sources_for("k", Some(&v2))
            .await
            .into_iter()
            .map(|f| f.region)
            .collect();
        assert_eq!(for_v2, vec!["us"]);
        let for_v1 = r.sources_for("k", Some(&v1)).await;
        assert_eq!(for_v1[0].region, "eu");
        assert_eq!(for_v1[0].version.as_deref(), Some(r1.as_str()));
        assert!(!for_v1[0].is_source);
        // No known version: only the source can be trusted.
        assert_eq!(r.sources_for("k", None).await.len(), 1);
    }
}
