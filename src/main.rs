//! The `regionfs` command line: parse, load the configuration, run.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use regionfs::config::Config;
use regionfs::fs::fuse::FuseFs;
use regionfs::fs::Caller;
use regionfs::journal::{Journal, OpState};
use regionfs::replicator::discover::Shard;
use regionfs::service;
use regionfs::store::probe::probe_bucket;

#[derive(Parser)]
#[command(
    name = "regionfs",
    version,
    about = "A FUSE filesystem backed by versioned S3 buckets, replicated across regions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and print it with every default filled in.
    CheckConfig {
        file: PathBuf,
        /// Also connect to every bucket: reachable, credentials accepted, versioning Enabled.
        #[arg(long)]
        probe: bool,
    },
    /// Mount the source bucket at MOUNTPOINT (foreground unless --daemon).
    Mount {
        #[arg(long, default_value = "/etc/regionfs/regionfs.toml")]
        config: PathBuf,
        /// Detach from the terminal once mounted; logs go to <cache.dir>/regionfs.log.
        #[arg(long)]
        daemon: bool,
        /// Mount read-only the tree as it was at this instant
        /// (`2026-11-24T10:00:00Z`, or `@<unix seconds>`), from the versions
        /// in the source (or in `read.from`).
        #[arg(long)]
        as_of: Option<String>,
        mountpoint: PathBuf,
    },
    /// List every version of a file (newest first) in the source bucket.
    Versions {
        #[arg(long, default_value = "/etc/regionfs/regionfs.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
        /// A path in the mount, or relative to the mount root.
        path: PathBuf,
    },
    /// Write an old version of a file back as its newest version, through the
    /// running mount (so it is journaled, uploaded and replicated like any write).
    Restore {
        #[arg(long, default_value = "/etc/regionfs/regionfs.toml")]
        config: PathBuf,
        /// The version id, as `regionfs versions` lists it.
        #[arg(long)]
        version: String,
        path: PathBuf,
    },
    /// Queue replication of objects the rules did not cover yet (e.g. written
    /// before a rule existed) and replicate them now; resumable.
    Resync {
        #[arg(long, default_value = "/etc/regionfs/regionfs.toml")]
        config: PathBuf,
        /// Only keys under this prefix (of the bucket, after the source prefix).
        #[arg(long, default_value = "")]
        prefix: String,
        /// Every version, oldest first, instead of the latest of each key.
        #[arg(long)]
        all_versions: bool,
        /// Only retry tasks that are FAILED.
        #[arg(long)]
        failed: bool,
    },
    /// Compare the source with every destination its rules name; exit 0 only
    /// when every replica matches.
    Verify {
        #[arg(long, default_value = "/etc/regionfs/regionfs.toml")]
        config: PathBuf,
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Replicate the source bucket without a mount: every new version and
    /// delete marker, whoever wrote it (listed every
    /// `replication.watch_interval`), plus the journal's own pending work;
    /// stops on SIGINT/SIGTERM after draining.
    Replicate {
        #[arg(long, default_value = "/etc/regionfs/regionfs.toml")]
        config: PathBuf,
        /// Only this share of the keys, `I/N` (1 ≤ I ≤ N), by a stable hash
        /// of the key: N processes with their own cache dirs cover the bucket.
        #[arg(long, default_value = "1/1", value_parser = Shard::parse)]
        shard: Shard,
    },
    /// What is pending, failed or done, read from the journal (mounted or not).
    Status {
        #[arg(long, default_value = "/etc/regionfs/regionfs.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
        /// List every upload and replication that failed, with its cause.
        #[arg(long, conflicts_with = "path")]
        failed: bool,
        /// A file under the mountpoint, or a path relative to the mount root.
        path: Option<PathBuf>,
    },
}

/// Every file being written or waiting for its upload holds a descriptor
/// (two while large writes go direct, see `cache::direct`), so the soft limit
/// of 1024 open files that many shells give could refuse a busy mount's
/// opens. The hard limit is what the administrator allows; use all of it.
fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit read and write only the struct we own.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn main() -> ExitCode {
    // Request buffers (up to 1 MiB each) are allocated and freed all the time.
    // With glibc's defaults they spread over up to 16 per-thread heaps and
    // the daemon's memory grows with them (73 MiB peak during a 1 GiB write);
    // two arenas and a fixed mmap threshold above the largest request keep it
    // at about 43 MiB without an mmap/munmap per request.
    // SAFETY: called first thing in main, before any other thread allocates.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    raise_open_file_limit();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REGIONFS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file, probe } => return check_config(&file, probe),
        Command::Mount {
            config,
            daemon,
            as_of,
            mountpoint,
        } => load(&config).and_then(|mut c| {
            if let Some(t) = &as_of {
                c.mount.as_of = Some(parse_instant(t)?);
            }
            if daemon {
                daemonize(&config, &c, &mountpoint, as_of.as_deref())
            } else {
                mount(c, &mountpoint)
            }
        }),
        Command::Versions { config, json, path } => {
            load(&config).and_then(|c| versions(&c, json, &path))
        }
        Command::Restore {
            config,
            version,
            path,
        } => load(&config).and_then(|c| restore(&c, &version, &path)),
        Command::Status {
            config,
            json,
            failed: true,
            ..
        } => load(&config).and_then(|c| status_failed(&c, json)),
        Command::Status {
            config, json, path, ..
        } => load(&config).and_then(|c| status(&c, json, path.as_deref())),
        Command::Resync {
            config,
            prefix,
            all_versions,
            failed,
        } => load(&config).and_then(|c| resync(&c, &prefix, all_versions, failed)),
        Command::Verify { config, prefix } => load(&config).and_then(|c| verify(&c, &prefix)),
        Command::Replicate { config, shard } => load(&config).and_then(|c| replicate(&c, shard)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("regionfs: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Serves `[metrics] listen`, when configured, on the current runtime.
fn serve_metrics(config: &Config, svc: &service::Service) {
    let Some(m) = &config.metrics else { return };
    let metrics = regionfs::metrics::Metrics::new();
    svc.replicator.set_metrics(metrics.clone());
    metrics.set_regions(svc.regions.clone());
    metrics.set_fs_counters(
        svc.core.served_bytes.clone(),
        svc.core.attribute_heads.clone(),
        svc.core.inode_count.clone(),
        svc.core.passthrough_opens.clone(),
    );
    let (listen, journal, cfg) = (m.listen.clone(), svc.journal.clone(), config.clone());
    tokio::spawn(async move {
        if let Err(e) = regionfs::metrics::serve(listen.clone(), metrics, journal, cfg).await {
            tracing::error!(%listen, error = %e, "metrics endpoint stopped");
        }
    });
}

/// The user running the command: owner of what the bucket does not say.
fn caller() -> Caller {
    // SAFETY: getuid and getgid cannot fail and touch no memory.
    unsafe {
        Caller {
            uid: libc::getuid(),
            gid: libc::getgid(),
        }
    }
}

fn mount(config: Config, mountpoint: &std::path::Path) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let owner = caller();
    service::clear_stale_mount(mountpoint)?;
    regionfs::background::install().context("starting the background runtime")?;
    regionfs::heap::start();
    let svc = rt.block_on(service::start(&config, owner))?;
    {
        let _in_runtime = rt.enter();
        serve_metrics(&config, &svc);
    }
    if config.replication.watch && !config.read_only() {
        rt.block_on(svc.watch(&config, Shard::ALL));
    }
    let mountpoint = std::fs::canonicalize(mountpoint)?;
    let _ = std::fs::write(
        config.cache.dir.join("mountpoint"),
        mountpoint.as_os_str().as_encoded_bytes(),
    );
    let mut opts = fuser::Config::default();
    opts.mount_options = vec![
        fuser::MountOption::FSName("regionfs".into()),
        fuser::MountOption::Subtype("regionfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    if config.read_only() {
        opts.mount_options.push(fuser::MountOption::RO);
    }
    if config.mount.allow_other {
        opts.acl = fuser::SessionACL::All;
    }
    opts.n_threads = Some(2);
    // Before the mount exists: a SIGTERM or SIGINT that arrives once it does
    // must unmount and drain, never take the default action and leave a dead
    // mount (the handlers were once installed after it, and a test's SIGTERM
    // right after "mounted" killed the daemon with the mount still there).
    let stop = {
        use tokio::signal::unix::{signal, SignalKind};
        let _rt = rt.enter();
        (
            signal(SignalKind::terminate()).context("handling SIGTERM")?,
            signal(SignalKind::interrupt()).context("handling SIGINT")?,
        )
    };
    let session = fuser::spawn_mount(
        FuseFs::new(svc.core.clone(), rt.handle().clone()),
        &mountpoint,
        &opts,
    )
    .with_context(|| format!("mounting at {}", mountpoint.display()))?;
    regionfs::fs::fuse::spawn_trimmer(svc.core.clone(), session.notifier());
    eprintln!(
        "regionfs: mounted {} at {} (cache {})",
        config.source.describe(),
        mountpoint.display(),
        config.cache.dir.display()
    );
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let joined = tx.clone();
    let joiner = std::thread::spawn(move || {
        let r = session.join();
        let _ = joined.send("unmounted");
        r
    });
    rt.spawn(async move {
        let (mut term, mut int) = stop;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = tx.send("signal");
    });
    if rx.recv() == Ok("signal") {
        eprintln!("regionfs: unmounting {}", mountpoint.display());
        service::detach(&mountpoint);
    }
    let _ = joiner.join();
    let left = rt.block_on(svc.drain(config.durability.drain_on_unmount.0));
    if left == 0 {
        eprintln!("regionfs: unmounted; everything is uploaded");
    }
    if let Err(e) = rt.block_on(svc.journal.compact()) {
        // Only space: the journal is as consistent as before.
        tracing::warn!(error = %e, "cannot compact the journal");
    }
    drop(svc);
    // What is left is in the journal: a task stuck in a request must not keep
    // the process from exiting (dropping a runtime waits for its tasks).
    rt.shutdown_timeout(std::time::Duration::from_secs(10));
    Ok(ExitCode::SUCCESS)
}

/// Starts the mount in a new session with output to a log file and returns once
/// it is mounted (or says why it failed).
fn daemonize(
    config_path: &std::path::Path,
    config: &Config,
    mountpoint: &std::path::Path,
    as_of: Option<&str>,
) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(&config.cache.dir)?;
    let log_path = config.cache.dir.join("regionfs.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("mount")
        .arg("--config")
        .arg(config_path)
        .args(as_of.map(|t| format!("--as-of={t}")))
        .arg(mountpoint)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    let target = std::fs::canonicalize(mountpoint)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if is_mounted(&target) {
            println!(
                "regionfs: mounted at {} (pid {}, log {})",
                target.display(),
                child.id(),
                log_path.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            bail!("the mount exited ({status}); see {}", log_path.display());
        }
        if std::time::Instant::now() > deadline {
            bail!("not mounted after 60 s; see {}", log_path.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn is_mounted(path: &std::path::Path) -> bool {
    let p = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4) == Some(&p) && l.contains("regionfs"))
        })
        .unwrap_or(false)
}

/// The journal of `config`'s cache dir, read-only, and a runtime to ask it.
fn open_journal(config: &Config) -> anyhow::Result<(tokio::runtime::Runtime, Journal)> {
    let db = config.cache.dir.join("journal.db");
    if !db.exists() {
        bail!(
            "no journal at {}: nothing was mounted with this cache dir yet",
            db.display()
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let journal = Journal::open_readonly(&db)?;
    Ok((rt, journal))
}

/// `status --failed`: every failed upload (retried every minute, or lost:
/// never run, see SEMANTICS.md) and replication, with its cause.
fn status_failed(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let (rt, journal) = open_journal(config)?;
    rt.block_on(async {
        let ops = journal.failed_ops().await?;
        let tasks = journal.failed_tasks().await?;
        let path_of = |key: &str| key.strip_prefix(&config.source.prefix).unwrap_or(key).to_string();
        if json {
            let uploads: Vec<serde_json::Value> = ops
                .iter()
                .map(|o| {
                    serde_json::json!({"path": path_of(&o.key), "key": o.key, "operation": o.kind,
                        "state": if o.state == OpState::Lost { "lost" } else { "failed" },
                        "attempts": o.attempts, "error": o.error})
                })
                .collect();
            let replication: Vec<serde_json::Value> = tasks
                .iter()
                .map(|t| {
                    serde_json::json!({"path": path_of(&t.key), "key": t.key, "destination": t.destination,
                        "version": t.version_id, "attempts": t.attempts, "error": t.error})
                })
                .collect();
            println!("{}", serde_json::json!({"uploads": uploads, "replication": replication}));
        } else {
            println!("failed uploads: {}", ops.len());
            for o in &ops {
                let what = match o.state {
                    OpState::Lost => "lost (never run)".to_string(),
                    _ => format!("retried every minute, {} attempts", o.attempts),
                };
                println!(
                    "  {} ({:?}, {what}): {}",
                    path_of(&o.key),
                    o.kind,
                    o.error.as_deref().unwrap_or("-")
                );
            }
            println!("failed replications: {}", tasks.len());
            for t in &tasks {
                println!(
                    "  {} to {} (version {}, {} attempts): {}",
                    path_of(&t.key),
                    t.destination,
                    t.version_id,
                    t.attempts,
                    t.error.as_deref().unwrap_or("-")
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn status(config: &Config, json: bool, path: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let (rt, journal) = open_journal(config)?;
    rt.block_on(async {
        match path {
            None => {
                let s = service::status(&journal, config).await?;
                if json {
                    println!("{}", serde_json::to_string(&s)?);
                } else {
                    let u = &s.uploads;
                    println!(
                        "uploads: {} pending ({} bytes), {} failed, oldest pending {:.1}s",
                        u.pending, u.pending_bytes, u.failed, u.oldest_pending_s
                    );
                    for (d, r) in &s.replication {
                        println!(
                            "replication to {d}: {} pending ({} bytes), {} failed, oldest pending {:.1}s, {} missed the {} target, {} completed",
                            r.pending, r.pending_bytes, r.failed, r.oldest_pending_s, r.missed_target, config.replication.time_target, r.completed
                        );
                    }
                    for d in &s.discovery {
                        println!(
                            "discovery (keys: {}): {} passes, the last {:.0}s ago took {:.1}s: {} keys, {} changed, {} queued, {} requests; {} queued in all",
                            d.shard,
                            d.passes,
                            (regionfs::journal::now_ms() - d.last_pass_ms).max(0) as f64 / 1000.0,
                            d.last_took_ms as f64 / 1000.0,
                            d.keys,
                            d.changed,
                            d.queued,
                            d.requests,
                            d.total_queued
                        );
                    }
                    if s.replaced.count > 0 {
                        println!(
                            "uploads that replaced another client's version: {} (each stays in the source's history; `regionfs restore` brings one back)",
                            s.replaced.count
                        );
                        for c in &s.replaced.recent {
                            println!(
                                "  {} replaced version {} at {}",
                                c.key,
                                c.replaced_version,
                                format_epoch((c.at_ms / 1000).max(0) as u64)
                            );
                        }
                    }
                    for (bucket, support) in &s.acls {
                        println!("object ACLs at {bucket}: {support}");
                    }
                    if let Some(r) = &s.reads {
                        let order: Vec<String> = r
                            .order
                            .iter()
                            .map(|n| match r.regions.get(n).and_then(|x| x.rtt_ms) {
                                Some(ms) => format!("{n} ({ms:.1} ms)"),
                                None => format!("{n} (not measured)"),
                            })
                            .collect();
                        println!(
                            "reads: prefer {}; regions best first: {} (noted {:.0}s ago)",
                            r.prefer,
                            order.join(", "),
                            s.reads_age_s.unwrap_or_default()
                        );
                        if let Some(lag) = r.replica_lag_s {
                            println!(
                                "replica lag: {lag:.1}s{}",
                                if r.reading_source_for_staleness {
                                    " — over read.max_staleness: reading the source"
                                } else {
                                    ""
                                }
                            );
                        }
                        for (name, st) in &r.regions {
                            if let Some(since) = st.unreachable_since {
                                let what = if st.is_source { "source" } else { "destination" };
                                println!(
                                    "{what} {name} unreachable since {} ({}); {} upload(s) waiting in the cache",
                                    format_epoch(since),
                                    st.last_error.as_deref().unwrap_or("no answer"),
                                    if st.is_source { s.uploads.pending } else { 0 }
                                );
                            }
                        }
                    }
                }
            }
            Some(p) => {
                let rel = relative_path(config, p);
                let key = format!("{}{}", config.source.prefix, rel);
                let latest = journal.latest(key.clone()).await?;
                let done = journal.latest_done(key.clone()).await?;
                let (local, error) = match &latest {
                    Some(op) if matches!(op.state, OpState::Failed | OpState::Lost) => {
                        ("failed", op.error.clone())
                    }
                    Some(op) if op.state == OpState::Pending => ("uploading", op.error.clone()),
                    _ => ("clean", None),
                };
                let version = done.and_then(|o| o.version_id);
                let tasks = journal.latest_tasks(key.clone()).await?;
                let replication: serde_json::Map<String, serde_json::Value> = tasks
                    .iter()
                    .map(|t| {
                        (
                            t.destination.clone(),
                            serde_json::json!({"status": t.status, "version": t.version_id, "error": t.error}),
                        )
                    })
                    .collect();
                if json {
                    let v = serde_json::json!({"path": rel, "key": key, "local": local, "version": version, "error": error, "replication": replication});
                    println!("{v}");
                } else {
                    println!("{rel}: {local}, source version {}", version.as_deref().unwrap_or("-"));
                    if let Some(e) = error {
                        println!("  last error: {e}");
                    }
                    for t in &tasks {
                        println!(
                            "  {}: {:?} (version {}){}",
                            t.destination,
                            t.status,
                            t.version_id,
                            t.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
                        );
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `2026-11-24T10:00:00Z` (fractional seconds and `+HH:MM` offsets allowed)
/// or `@<unix seconds>`.
fn parse_instant(text: &str) -> anyhow::Result<std::time::SystemTime> {
    use std::time::{Duration, UNIX_EPOCH};
    let bad =
        || anyhow::anyhow!("--as-of `{text}`: expected e.g. 2026-11-24T10:00:00Z or @1764000000");
    if let Some(secs) = text.strip_prefix('@') {
        let s: u64 = secs.parse().map_err(|_| bad())?;
        return Ok(UNIX_EPOCH + Duration::from_secs(s));
    }
    let (date, time) = text.split_once(['T', ' ']).ok_or_else(bad)?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = match (d.next(), d.next(), d.next(), d.next()) {
        (Some(Ok(y)), Some(Ok(m)), Some(Ok(day)), None) => (y, m, day),
        _ => return Err(bad()),
    };
    let (clock, offset_s) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0i64)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (c, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (h, mi) = off[1..].split_once(':').ok_or_else(bad)?;
        let h: i64 = h.parse().map_err(|_| bad())?;
        let mi: i64 = mi.parse().map_err(|_| bad())?;
        (c, sign * (h * 3600 + mi * 60))
    } else {
        return Err(bad());
    };
    let mut t = clock.split(':');
    let (h, mi, sec) = match (t.next(), t.next(), t.next(), t.next()) {
        (Some(h), Some(mi), Some(sec), None) => (h, mi, sec),
        _ => return Err(bad()),
    };
    let h: i64 = h.parse().map_err(|_| bad())?;
    let mi: i64 = mi.parse().map_err(|_| bad())?;
    let sec: f64 = sec.parse().map_err(|_| bad())?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec >= 61.0 {
        return Err(bad());
    }
    // Days since the epoch from a civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let whole = days * 86400 + h * 3600 + mi * 60 - offset_s;
    if whole < 0 {
        return Err(bad());
    }
    Ok(UNIX_EPOCH + Duration::from_secs(whole as u64) + Duration::from_secs_f64(sec))
}

/// Seconds since the epoch as `2026-11-25T10:00:00Z`.
fn format_epoch(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A path under the recorded mountpoint, or already relative to the mount root.
fn relative_path(config: &Config, p: &std::path::Path) -> String {
    let recorded = std::fs::read_to_string(config.cache.dir.join("mountpoint")).ok();
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if let Some(mp) = recorded {
        if let Ok(rel) = abs.strip_prefix(mp.trim()) {
            return rel.to_string_lossy().into_owned();
        }
    }
    p.to_string_lossy().trim_start_matches('/').to_string()
}

fn check_config(file: &std::path::Path, probe: bool) -> ExitCode {
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("regionfs: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    println!(
        "# effective configuration of {} (defaults filled in, secrets redacted)",
        file.display()
    );
    print!("{}", config.to_effective_toml());
    println!("\n# derived limits");
    for (k, v) in config.derived_limits() {
        println!("# {k} = {v}");
    }
    if !probe {
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("regionfs: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    println!("\n# probe");
    let buckets: Vec<_> = std::iter::once(&config.source)
        .chain(&config.destinations)
        .collect();
    let reports = rt.block_on(async {
        let mut out = Vec::new();
        for b in buckets {
            out.push(probe_bucket(b).await);
        }
        out
    });
    let mut ok = true;
    for r in &reports {
        println!("{r}");
        ok &= r.outcome.is_ok();
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

/// Ids of the rules whose replicas belong to the destination's owner.
fn owner_overrides(config: &Config) -> std::collections::HashSet<String> {
    config
        .rules
        .iter()
        .filter(|r| r.owner_override.is_some())
        .map(|r| r.id.clone())
        .collect()
}

/// The source and destination stores of a configuration.
async fn stores(
    config: &Config,
) -> (
    std::sync::Arc<dyn regionfs::store::ObjectStore>,
    std::collections::BTreeMap<String, std::sync::Arc<dyn regionfs::store::ObjectStore>>,
) {
    let source: std::sync::Arc<dyn regionfs::store::ObjectStore> =
        std::sync::Arc::new(regionfs::store::S3Store::connect(&config.source).await);
    let mut dests = std::collections::BTreeMap::new();
    for d in &config.destinations {
        let s: std::sync::Arc<dyn regionfs::store::ObjectStore> =
            std::sync::Arc::new(regionfs::store::S3Store::connect(d).await);
        dests.insert(d.name.clone(), s);
    }
    (source, dests)
}

fn resync(
    config: &Config,
    prefix: &str,
    all_versions: bool,
    failed: bool,
) -> anyhow::Result<ExitCode> {
    use regionfs::replicator::{resync::candidates, rules::Rules, Replicator};
    use std::io::IsTerminal;
    let rt = runtime()?;
    rt.block_on(async {
        std::fs::create_dir_all(&config.cache.dir)?;
        let journal = Journal::open(&config.cache.dir.join("journal.db"))?;
        let (source, dests) = stores(config).await;
        let full_prefix = format!("{}{}", config.source.prefix, prefix);
        let tasks = if failed {
            journal
                .open_tasks()
                .await?
                .into_iter()
                .filter(|t| {
                    t.status == regionfs::journal::TaskStatus::Failed
                        && t.key.starts_with(&full_prefix)
                })
                .collect()
        } else {
            let rules = Rules::from_config(config);
            let tty = std::io::stderr().is_terminal();
            let bar = indicatif::ProgressBar::new_spinner();
            if !tty {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let found = candidates(source.as_ref(), &rules, &full_prefix, all_versions, |n| {
                bar.set_message(format!("listing: {n} versions in scope"));
                bar.tick();
            })
            .await?;
            bar.finish_and_clear();
            let mut items = Vec::new();
            let mut checker = regionfs::replicator::resync::Checker::new(owner_overrides(config));
            for c in found {
                for t in c.targets {
                    let Some(dest) = dests.get(&t.destination) else {
                        continue;
                    };
                    // Already there with the same ACL: skip.
                    let src = source.head(&c.key, Some(&c.version_id)).await?;
                    let found = checker
                        .check(
                            source.as_ref(),
                            &src,
                            &c.version_id,
                            &t.destination,
                            dest.as_ref(),
                            &t.rule_id,
                        )
                        .await?;
                    if found.is_none() {
                        continue;
                    }
                    items.push((c.key.clone(), c.version_id.clone(), c.size, t));
                }
            }
            journal.add_resync_tasks(items).await?
        };
        let total = tasks.len();
        eprintln!("resync: {total} version(s) to replicate");
        let dest_map = dests.into_iter().collect();
        let replicator = Replicator::start_with(config, source, dest_map, journal.clone(), tasks);
        let tty = std::io::stderr().is_terminal();
        let bar = indicatif::ProgressBar::new(total as u64);
        if !tty {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let mut last_line = std::time::Instant::now();
        let left = replicator
            .drain(std::time::Duration::from_secs(u64::MAX / 4), |n| {
                bar.set_position((total - n.min(total)) as u64);
                if !tty && (last_line.elapsed().as_secs() >= 5 || n == 0) {
                    eprintln!("resync: {} of {total} replicated", total - n.min(total));
                    last_line = std::time::Instant::now();
                }
            })
            .await;
        bar.finish_and_clear();
        eprintln!("resync: done, {} replicated, {left} left", total - left);
        Ok(ExitCode::SUCCESS)
    })
}

fn verify(config: &Config, prefix: &str) -> anyhow::Result<ExitCode> {
    use regionfs::replicator::resync::{verify, Checker};
    use regionfs::replicator::rules::Rules;
    let rt = runtime()?;
    rt.block_on(async {
        let (source, dests) = stores(config).await;
        let full_prefix = format!("{}{}", config.source.prefix, prefix);
        let (checked, findings) = verify(
            source.as_ref(),
            &dests,
            &Rules::from_config(config),
            &mut Checker::new(owner_overrides(config)),
            &full_prefix,
        )
        .await?;
        for f in &findings {
            println!(
                "{:?}\t{}\t{}\t(source version {})",
                f.difference, f.destination, f.key, f.source_version
            );
        }
        println!(
            "verify: {checked} replica(s) checked, {} difference(s)",
            findings.len()
        );
        Ok(if findings.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

fn replicate(config: &Config, shard: Shard) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let owner = caller();
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        // Before saying it runs: a signal from then on drains (as in `mount`).
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let svc = service::start(config, owner).await?;
        serve_metrics(config, &svc);
        svc.watch(config, shard).await;
        eprintln!(
            "regionfs: replicating {} (keys: {}) every {}, journal in {} (no mount)",
            config.source.bucket,
            shard.label(),
            config.replication.watch_interval,
            config.cache.dir.display()
        );
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        svc.drain(config.durability.drain_on_unmount.0).await;
        Ok(ExitCode::SUCCESS)
    })
}

fn versions(config: &Config, json: bool, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let rel = relative_path(config, path);
    let key = format!("{}{}", config.source.prefix, rel);
    let rt = runtime()?;
    rt.block_on(async {
        let (source, _) = stores(config).await;
        let mut list = Vec::new();
        let mut from = None;
        loop {
            let page = source.list_versions(&key, from, None).await?;
            list.extend(page.versions.into_iter().filter(|v| v.key == key));
            match page.next {
                Some(n) => from = Some(n),
                None => break,
            }
        }
        if list.is_empty() {
            bail!("no versions of `{key}` in {}", source.describe());
        }
        let when = |v: &regionfs::store::VersionEntry| {
            v.last_modified
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| format_epoch(d.as_secs()))
                .unwrap_or_default()
        };
        if json {
            let rows: Vec<serde_json::Value> = list
                .iter()
                .map(|v| {
                    serde_json::json!({
                        "version": v.version_id, "last_modified": when(v), "size": v.size,
                        "delete_marker": v.is_delete_marker, "latest": v.is_latest,
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(rows));
        } else {
            for v in &list {
                let what = if v.is_delete_marker {
                    "deleted".to_string()
                } else {
                    format!("{} bytes", v.size)
                };
                let latest = if v.is_latest { "  (latest)" } else { "" };
                println!("{}  {}  {what}{latest}", v.version_id, when(v));
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn restore(config: &Config, version: &str, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let rel = relative_path(config, path);
    let key = format!("{}{}", config.source.prefix, rel);
    let mountpoint = std::fs::read_to_string(config.cache.dir.join("mountpoint"))
        .map(|m| PathBuf::from(m.trim()))
        .ok()
        .filter(|m| is_mounted(m))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no running mount for {}: restore writes through the mount so the version is journaled and replicated; mount it first",
                config.cache.dir.display()
            )
        })?;
    let target = mountpoint.join(&rel);
    let rt = runtime()?;
    rt.block_on(async {
        let (source, _) = stores(config).await;
        let obj = source
            .get(
                &key,
                regionfs::store::GetRequest {
                    version_id: Some(version.to_string()),
                    range: None,
                },
            )
            .await
            .with_context(|| format!("version {version} of `{key}`"))?;
        let mode = obj
            .info
            .metadata
            .get("mode")
            .and_then(|m| m.parse::<u32>().ok());
        let mut file = std::fs::File::create(&target)
            .with_context(|| format!("opening {} for writing", target.display()))?;
        let mut body = obj.body;
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("reading the version")?;
            file.write_all(&chunk)?;
            n += chunk.len() as u64;
        }
        // Before the close: folded into the one upload, not a second version.
        if let Some(m) = mode {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(m & 0o7777))?;
        }
        file.sync_all()?;
        drop(file);
        println!(
            "restored {} ({n} bytes) from version {version}: it is now the newest version",
            target.display()
        );
        Ok(ExitCode::SUCCESS)
    })
}
