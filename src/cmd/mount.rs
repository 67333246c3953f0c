//! `regionfs mount`: in the foreground (the mount's life is
//! `service::mount`; this prints its progress and tells systemd), or as a
//! daemon that returns once the mount is ready; the metrics endpoint beside it.

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
    use service::mount::Progress;
    owner_only_files();
    let rt = runtime()?;
    regionfs::background::install().context("starting the background runtime")?;
    regionfs::heap::start();
    let progress = |p: Progress| match p {
        Progress::Mounted { mountpoint } => {
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
        }
        Progress::Unmounting { mountpoint } => {
            eprintln!("regionfs: unmounting {}", mountpoint.display());
        }
        Progress::Draining => notify("STOPPING=1\nSTATUS=unmounted; draining"),
        Progress::Waiting(line) => {
            eprintln!("regionfs: {line}");
            notify(&format!("STATUS={line}"));
        }
        Progress::Drained => eprintln!("regionfs: unmounted; everything is uploaded"),
    };
    service::mount::run(
        &rt,
        &config,
        caller(),
        mountpoint,
        |svc| serve_metrics(&config, svc),
        &progress,
    )?;
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
