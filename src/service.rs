//! Wiring: check the source bucket, open the cache and the journal, recover,
//! start the uploader, mount, and on unmount drain what is pending.
//!
//! Start-up order matters for durability: recovery (journal → cache files →
//! uploader queue) completes before the mount accepts a single request, so an
//! operation acknowledged before a crash is always ahead of new ones on its key.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cache::Cache;
use crate::config::Config;
use crate::fs::{Backends, Caller, Core};
use crate::journal::Journal;
use crate::regions::{Prefer, Regions};
use crate::replicator::discover::{Discovery, Shard};
use crate::replicator::Replicator;
use crate::store::probe::versioning_problem;
use crate::store::{ObjectStore, S3Store};
use crate::uploader::{Event, Uploader};

pub mod mount;

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("source bucket: {0}")]
    Source(String),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("mountpoint {path}: {message}")]
    Mountpoint { path: PathBuf, message: String },
}

/// A running filesystem core with its background work.
pub struct Service {
    pub core: Arc<Core>,
    pub uploader: Uploader,
    pub replicator: Replicator,
    pub journal: Journal,
    pub cache: Arc<Cache>,
    pub regions: Arc<Regions>,
    pub quarantined: Vec<String>,
    /// Discovery of versions others write (see [`Service::watch`]).
    discovery: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Opens everything the mount needs. Fails, with a message that says what to
/// fix, when the source bucket is missing, unreachable, refuses the
/// credentials or has versioning off.
pub async fn start(config: &Config, owner: Caller) -> Result<Service, ServiceError> {
    // A replica mount reads a destination bucket in place of the source.
    let bucket = match &config.read.from {
        Some(name) => config
            .destination(name)
            .ok_or_else(|| ServiceError::Source(format!("no destination `{name}`")))?,
        None => &config.source,
    };
    let store = S3Store::connect(bucket).await;
    match store.versioning().await {
        Ok(v) => {
            if let Some(p) = versioning_problem(bucket, v) {
                return Err(ServiceError::Source(p));
            }
        }
        // Unreachable at start: the cache still takes writes; uploads wait.
        Err(e) if !e.is_permanent() => {
            tracing::warn!(error = %e, "source bucket unreachable at start; writes stay in the cache until it returns");
        }
        Err(e) => return Err(ServiceError::Source(e.to_string())),
    }
    let mut store: Arc<dyn ObjectStore> = Arc::new(store);
    let mut bounded = None;
    if let Some(max) = config.read.max_staleness {
        let b = crate::regions::bounded::BoundedStaleness::new(
            store,
            Arc::new(S3Store::connect(&config.source).await),
            max.0,
            &config.source.prefix,
        );
        b.check().await;
        b.start_watch();
        bounded = Some(b.clone());
        store = b;
    }
    if let Some(at) = config.mount.as_of {
        store = Arc::new(crate::regions::asof::AsOfStore::new(store, at));
    }
    let mut destinations: HashMap<String, Arc<dyn ObjectStore>> = HashMap::new();
    if !config.read_only() {
        for d in &config.destinations {
            destinations.insert(d.name.clone(), Arc::new(S3Store::connect(d).await));
        }
    }
    start_wired(config, store, destinations, bounded, owner).await
}

/// As [`start`], with a given source store (tests wrap it with fault injection)
/// and no destinations.
pub async fn start_with_store(
    config: &Config,
    store: Arc<dyn ObjectStore>,
    owner: Caller,
) -> Result<Service, ServiceError> {
    start_with_stores(config, store, HashMap::new(), owner).await
}

/// As [`start`], with given stores.
pub async fn start_with_stores(
    config: &Config,
    store: Arc<dyn ObjectStore>,
    destinations: HashMap<String, Arc<dyn ObjectStore>>,
    owner: Caller,
) -> Result<Service, ServiceError> {
    start_wired(config, store, destinations, None, owner).await
}

/// Everything after the stores: cache, journal, recovery, then each part
/// built after what it needs.
async fn start_wired(
    config: &Config,
    store: Arc<dyn ObjectStore>,
    destinations: HashMap<String, Arc<dyn ObjectStore>>,
    staleness: Option<Arc<crate::regions::bounded::BoundedStaleness>>,
    owner: Caller,
) -> Result<Service, ServiceError> {
    let cache = Cache::open(
        &config.cache.dir,
        config.cache.max_size.0,
        config.cache.space_wait.0,
    )?;
    cache.limit_clean_files(config.cache.max_clean_files);
    // A local disk that failed in an earlier run is re-checked before this
    // one accepts writes (`cache::failure`): a file written and read back,
    // and the journal's own check.
    let rechecked = crate::cache::failure::recheck(cache.root())?;
    let journal = Journal::open(&cache.journal_path())?;
    if rechecked.is_some() {
        journal.quick_check().await?;
    }
    // The oldest open ops are queued in memory, the rest stay in the
    // journal (see `uploader`, "Spill"): a start costs O(held), plus a
    // seq and a cache file name per open op while it reads them.
    let held = config.upload.held_in_memory.max(1);
    let ops = journal.open_ops_after(0, held).await?;
    let spilled = match ops.last() {
        Some(last) if ops.len() == held => journal.open_seqs_after(last.seq).await?,
        _ => Vec::new(),
    };
    if config.read_only() && (!ops.is_empty() || !journal.open_tasks().await?.is_empty()) {
        // They belong to the read-write mount of this cache dir, and would go
        // to the wrong bucket (or nowhere) from here.
        return Err(ServiceError::Source(format!(
            "cache dir {} holds {} pending upload(s) and replication(s) of a read-write mount: mount that first to finish them, or give this read-only mount its own cache.dir",
            config.cache.dir.display(),
            ops.len() + spilled.len()
        )));
    }
    // Small staged files live in the journal; their cache copies were never
    // synced, so after a restart of the machine they are rewritten from it
    // before anything reads them (after a crash of the process alone they
    // are whole in the page cache: see `cache::boot`).
    if !crate::cache::boot::unchanged(cache.root()) {
        let c = cache.clone();
        let restored = journal
            .restore_inline(move |file, bytes| std::fs::write(c.data_path(file), bytes))
            .await?;
        if restored > 0 {
            tracing::info!(
                count = restored,
                "small staged files restored from the journal"
            );
        }
    }
    crate::cache::boot::note(cache.root())
        .map_err(|e| crate::cache::CacheError::io(&cache.root().join("boot"), e))?;
    let needed: HashSet<String> = journal.open_files().await?.into_iter().collect();
    let quarantined = cache.recover(&needed)?;
    if !quarantined.is_empty() {
        tracing::warn!(
            count = quarantined.len(),
            dir = %cache.root().join("quarantine").display(),
            "cache files with writes never acknowledged (the daemon stopped before close/fsync returned) were moved to quarantine"
        );
    }
    if !ops.is_empty() {
        tracing::info!(
            count = ops.len() + spilled.len(),
            "resuming operations from the journal"
        );
    }
    let mut replica_stores: Vec<(String, Arc<dyn ObjectStore>)> = destinations
        .iter()
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    replica_stores.sort_by(|a, b| a.0.cmp(&b.0));
    // A replica or point-in-time mount reads its one bucket only.
    let single = config.read.from.is_some() || config.mount.as_of.is_some();
    let regions = Regions::new(
        (
            config
                .read
                .from
                .clone()
                .unwrap_or_else(|| config.source.name.clone()),
            store.clone(),
        ),
        if single { Vec::new() } else { replica_stores },
        if single {
            Prefer::Source
        } else {
            Prefer::parse(&config.read.prefer)
        },
        Some(journal.clone()),
        staleness,
    );
    regions.start_probes();
    let replicator = Replicator::start(
        config,
        store.clone(),
        destinations,
        journal.clone(),
        cache.clone(),
    )
    .await?;
    let (uploader, mut done) = Uploader::start(
        store.clone(),
        journal.clone(),
        cache.clone(),
        config.upload.clone(),
        config.cache.write_back_delay.0,
        crate::uploader::Recovered { held: ops, spilled },
        crate::uploader::EachVersion {
            acl: config.source.acl.map(|a| crate::uploader::SourceAcl {
                bucket: config.source.name.clone(),
                canned: a.as_str().to_string(),
            }),
            replicator: Some(replicator.clone()),
        },
    );
    uploader.abort_stale_early().await;
    // Probing writes a marker: a read-only mount reads sidecars if present.
    let dir_sidecar = config.read_only()
        || dir_attrs_need_sidecar(&cache, store.as_ref(), &config.source.prefix).await;
    let core = Core::new(
        config,
        Backends {
            store,
            regions: Some(regions.clone()),
            uploader: uploader.clone(),
            replicator: Some(replicator.clone()),
            cache: cache.clone(),
            journal: journal.clone(),
        },
        owner,
        dir_sidecar,
    );
    core.allow_passthrough(passthrough_allowed(config, &cache));
    if let Some(ix) = core.indexer() {
        tokio::spawn(ix.run());
    }
    let c = core.clone();
    tokio::spawn(async move {
        while let Some(landed) = done.recv().await {
            match &landed.event {
                Event::Uploaded(completion) => c.on_uploaded(completion),
                Event::Lost { .. } => c.requeue_lost(landed),
            }
        }
    });
    Ok(Service {
        core,
        uploader,
        replicator,
        journal,
        cache,
        regions,
        quarantined,
        discovery: std::sync::Mutex::new(None),
    })
}

/// Whether the mount may ask the kernel for passthrough (see
/// `fs::passthrough`): configured, run by root (registering a backing file
/// takes CAP_SYS_ADMIN), and the cache's filesystem gives every write a new
/// change time (`cache::stamp`). Whether the kernel has it is asked at init.
fn passthrough_allowed(config: &Config, cache: &Cache) -> bool {
    if !config.mount.passthrough() {
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        tracing::info!("passthrough off: registering backing files needs root (CAP_SYS_ADMIN)");
        return false;
    }
    if !crate::cache::stamp::fine_grained(cache.root()) {
        tracing::warn!(dir = %cache.root().display(), "passthrough off: the cache's filesystem has coarse change times, so writes made by the kernel directly could go unseen");
        return false;
    }
    true
}

/// Detects once per cache dir (the answer is remembered there) whether directory
/// attributes need their own object. Unknown (store unreachable) means yes: the
/// extra object is harmless, lost attributes are not.
async fn dir_attrs_need_sidecar(cache: &Cache, store: &dyn ObjectStore, prefix: &str) -> bool {
    let remembered = cache.root().join("dir-attrs");
    match std::fs::read_to_string(&remembered).as_deref() {
        Ok("marker") => return false,
        Ok("sidecar") => return true,
        _ => {}
    }
    match crate::store::probe::markers_keep_metadata(store, prefix).await {
        Ok(kept) => {
            let _ = std::fs::write(&remembered, if kept { "marker" } else { "sidecar" });
            if !kept {
                tracing::info!("this store drops metadata on directory markers: directory attributes go to `.regionfs-dir` objects");
            }
            !kept
        }
        Err(_) => true,
    }
}

impl Service {
    /// Waits up to `timeout` for queued uploads, then replication, printing
    /// progress; returns how many are left (they stay in the journal and resume
    /// at the next start).
    /// Replicates what anyone writes to the source, not only this
    /// process's uploads: lists the source for new versions every
    /// `replication.watch_interval`, keeping to `shard` of the keys.
    pub async fn watch(&self, config: &Config, shard: Shard) {
        let source: Arc<dyn ObjectStore> = Arc::new(S3Store::connect(&config.source).await);
        let d = Discovery::new(
            config,
            source,
            self.journal.clone(),
            self.replicator.clone(),
            shard,
        );
        let interval = config.replication.watch_interval.0;
        let handle = tokio::spawn(d.run(interval));
        if let Some(old) = self.discovery.lock().unwrap().replace(handle) {
            old.abort();
        }
    }

    /// `report` gets each line saying what is still waited for (the mount
    /// prints it, and tells systemd).
    pub async fn drain(&self, timeout: Duration, report: &(dyn Fn(&str) + Sync)) -> usize {
        // Nothing new is queued while draining (a pass cut short is redone
        // from the journal at the next start).
        if let Some(d) = self.discovery.lock().unwrap().take() {
            d.abort();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let uploads = self.drain_uploads(timeout, report).await;
        if let Some(ix) = self.core.indexer() {
            // Attribute indexes of what was just uploaded (a cache: a few
            // seconds at most, whatever is left is not written).
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            ix.flush(tokio::time::Instant::now() + left.min(Duration::from_secs(5)))
                .await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut last = usize::MAX;
        let replication = self
            .replicator
            .drain(left, |n| {
                if n != last && n > 0 {
                    report(&format!("waiting for {n} pending replication(s)…"));
                }
                last = n;
            })
            .await;
        if replication > 0 {
            report(&format!(
                "{replication} replication(s) still pending; they resume at the next start"
            ));
        }
        uploads + replication
    }

    async fn drain_uploads(&self, timeout: Duration, report: &(dyn Fn(&str) + Sync)) -> usize {
        let mut last = usize::MAX;
        let left = self
            .uploader
            .drain(timeout, |n| {
                if n != last && n > 0 {
                    report(&format!("waiting for {n} pending upload(s)…"));
                }
                last = n;
            })
            .await;
        if left > 0 {
            report(&format!(
                "{left} upload(s) still pending after {timeout:?}; they stay in the journal and resume at the next start"
            ));
        }
        left
    }
}

/// A mountpoint left by a crashed daemon answers ENOTCONN: detach it. (Its
/// attributes may still be cached, so ask for something only a live daemon
/// answers: the directory's entries.)
pub(crate) fn clear_stale_mount(path: &Path) -> Result<(), ServiceError> {
    let err = |message: String| ServiceError::Mountpoint {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::read_dir(path) {
        Ok(_) if !path.is_dir() => Err(err("is not a directory".into())),
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
            ) =>
        {
            tracing::warn!(path = %path.display(), "clearing a stale mount left by a stopped daemon");
            detach(path);
            Ok(())
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Lazy unmount (fuser 0.18's own unmount can hang).
pub fn detach(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: a NUL-terminated path that outlives the call.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}
