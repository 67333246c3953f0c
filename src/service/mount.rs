//! The life of a mount: the service started, mounted through FUSE, kept until
//! `umount` or SIGTERM/SIGINT, then unmounted, drained for up to
//! `durability.drain_on_unmount`, and its journal compacted.
//!
//! The signal handlers go in before the mount exists: a SIGTERM or SIGINT
//! that arrives once it does must unmount and drain, never take the default
//! action and leave a dead mount behind.

use std::path::Path;

use tokio::runtime::Runtime;

use super::{clear_stale_mount, detach, start, Service, ServiceError};
use crate::config::Config;
use crate::fs::fuse::FuseFs;
use crate::fs::Caller;
use crate::replicator::discover::Shard;

/// What a mount tells whoever runs it (the CLI prints it and tells systemd).
pub enum Progress<'a> {
    /// Mounted and serving.
    Mounted { mountpoint: &'a Path },
    /// A signal asked for the unmount.
    Unmounting { mountpoint: &'a Path },
    /// Unmounted; now draining what is pending.
    Draining,
    /// A line saying what the drain still waits for.
    Waiting(&'a str),
    /// Everything was uploaded.
    Drained,
}

/// Runs a mount of `config` at `mountpoint` on `rt` until it is unmounted and
/// drained. `serve` is called with the started service before the mount
/// exists (the CLI starts the metrics endpoint there), inside `rt`.
pub fn run(
    rt: &Runtime,
    config: &Config,
    owner: Caller,
    mountpoint: &Path,
    serve: impl FnOnce(&Service),
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), ServiceError> {
    let failed = |what: &str, e: std::io::Error| ServiceError::Mountpoint {
        path: mountpoint.to_path_buf(),
        message: format!("{what}: {e}"),
    };
    clear_stale_mount(mountpoint)?;
    let svc = rt.block_on(start(config, owner))?;
    {
        let _in_runtime = rt.enter();
        serve(&svc);
    }
    if config.replication.watch && !config.read_only() {
        rt.block_on(svc.watch(config, Shard::ALL));
    }
    let mountpoint = std::fs::canonicalize(mountpoint).map_err(|e| failed("resolving", e))?;
    // Where status finds the mount; only a convenience, so not fatal.
    let _ = std::fs::write(
        config.cache.dir.join("mountpoint"),
        mountpoint.as_os_str().as_encoded_bytes(),
    );
    let stop = {
        use tokio::signal::unix::{signal, SignalKind};
        let _rt = rt.enter();
        (
            signal(SignalKind::terminate()).map_err(|e| failed("handling SIGTERM", e))?,
            signal(SignalKind::interrupt()).map_err(|e| failed("handling SIGINT", e))?,
        )
    };
    let session = fuser::spawn_mount(
        FuseFs::new(svc.core.clone(), rt.handle().clone()),
        &mountpoint,
        &options(config),
    )
    .map_err(|e| failed("mounting", e))?;
    crate::fs::fuse::spawn_trimmer(svc.core.clone(), session.notifier());
    progress(Progress::Mounted {
        mountpoint: &mountpoint,
    });
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
        progress(Progress::Unmounting {
            mountpoint: &mountpoint,
        });
        detach(&mountpoint);
    }
    progress(Progress::Draining);
    let _ = joiner.join();
    let report = |line: &str| progress(Progress::Waiting(line));
    let left = rt.block_on(svc.drain(config.durability.drain_on_unmount.0, &report));
    if left == 0 {
        progress(Progress::Drained);
    }
    if let Err(e) = rt.block_on(svc.journal.compact()) {
        // Only space: the journal is as consistent as before.
        tracing::warn!(error = %e, "cannot compact the journal");
    }
    Ok(())
}

/// The FUSE mount options `config` asks for.
fn options(config: &Config) -> fuser::Config {
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
    opts
}
