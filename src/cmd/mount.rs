//! `regionfs mount`: in the foreground, or as a daemon that returns once the
//! mount is ready; the metrics endpoint beside it.

use crate::*;
use cmd::notify::notify;

/// Serves `[metrics] listen`, when configured, on the current runtime.
pub(crate) fn serve_metrics(config: &Config, svc: &service::Service) {
    let Some(m) = &config.metrics else { return };
    let metrics =
        regionfs::metrics::Metrics::new(svc.replicator.observed(), Some(svc.regions.clone()));
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

/// What the daemon creates (journal, cache files, log) is its user's alone:
/// the cache holds the data and the journal keys and small files' bytes.
fn owner_only_files() {
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

pub(crate) fn mount(config: Config, mountpoint: &std::path::Path) -> anyhow::Result<ExitCode> {
    owner_only_files();
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
        fuser::MountOption::DefaultPermissions,
    ];
    // The mount's type is `fuse.regionfs` (`findmnt -t fuse.regionfs`, `df
    // -t`). fuser hands `Subtype` only to fusermount3; a mount(2) of its
    // own (as root) needs it among the kernel's options.
    // SAFETY: geteuid cannot fail and touches no memory.
    opts.mount_options.push(if unsafe { libc::geteuid() } == 0 {
        fuser::MountOption::CUSTOM("subtype=regionfs".into())
    } else {
        fuser::MountOption::Subtype("regionfs".into())
    });
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
    notify(&format!(
        "READY=1\nSTATUS=mounted {} at {}",
        config.source.describe(),
        mountpoint.display()
    ));
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
    notify("STOPPING=1\nSTATUS=unmounted; draining");
    let _ = joiner.join();
    let report = |line: &str| {
        eprintln!("regionfs: {line}");
        notify(&format!("STATUS={line}"));
    };
    let left = rt.block_on(svc.drain(config.durability.drain_on_unmount.0, &report));
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
pub(crate) fn daemonize(
    config_path: &std::path::Path,
    config: &Config,
    mountpoint: &std::path::Path,
    as_of: Option<&str>,
    options: Option<&str>,
) -> anyhow::Result<ExitCode> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    owner_only_files();
    std::fs::create_dir_all(&config.cache.dir)?;
    let log_path = config.cache.dir.join("regionfs.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("mount")
        .arg("--config")
        .arg(config_path)
        .args(as_of.map(|t| format!("--as-of={t}")))
        .args(options.map(|o| format!("--options={o}")))
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

pub(crate) fn is_mounted(path: &std::path::Path) -> bool {
    let p = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4) == Some(&p) && l.contains("regionfs"))
        })
        .unwrap_or(false)
}
