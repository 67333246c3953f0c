//! The `regionfs` command line: parse, load the configuration, run.

#![warn(clippy::undocumented_unsafe_blocks)]

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser, Subcommand};
use regionfs::config::Config;
use regionfs::fs::Caller;
use regionfs::journal::{Journal, OpState};
use regionfs::replicator::discover::Shard;
use regionfs::service;
use regionfs::store::probe::probe_bucket;

use cmd::check::check_config;
use cmd::history::{restore, versions};
use cmd::mount::{daemonize, is_mounted, mount, serve_metrics};
use cmd::repair::{replicate, resync, stores, verify};
use cmd::status::{format_epoch, relative_path, status, status_failed};

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
        /// Mount options, comma-separated, as in /etc/fstab: `ro`,
        /// `allow_other`, `as_of=TIME`; generic ones (`_netdev`, `nofail`,
        /// `x-systemd.*`, …) are accepted and ignored.
        #[arg(short = 'o', long = "options")]
        options: Option<String>,
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
        /// One JSON object: `checked` and `differences` (each with `key`,
        /// `destination`, `source_version`, `replica_version`, `difference`).
        #[arg(long)]
        json: bool,
        /// Also read every object and its replicas whole and compare their
        /// CRC-64/NVME (finds bytes changed at the same size; reads everything).
        #[arg(long)]
        deep: bool,
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
    /// Print shell completions for SHELL (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff; `regionfs man | man -l -`).
    Man,
    /// What is pending, failed or done, read from the journal (mounted or
    /// not). Exits 0 when all is well, 2 when something failed, 3 when a
    /// pending replica is past `replication.time_target` (1: status could
    /// not be read).
    Status {
        #[arg(long, default_value = "/etc/regionfs/regionfs.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
        /// List every upload and replication that failed, with its cause.
        #[arg(long, conflicts_with = "path")]
        failed: bool,
        /// Show the whole mount's view again every second (or every
        /// --interval), with upload and replication rates, until Ctrl-C.
        #[arg(long, conflicts_with_all = ["path", "failed", "json"])]
        watch: bool,
        /// How often --watch looks (`1s`, `500ms`).
        #[arg(long, default_value = "1s", requires = "watch")]
        interval: regionfs::config::HumanDuration,
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
    let argv0 = std::env::args_os().next().unwrap_or_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REGIONFS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = if cmd::options::is_helper(&argv0) {
        cmd::options::helper(&std::env::args_os().skip(1).collect::<Vec<_>>())
    } else {
        run(Cli::parse())
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("regionfs: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A closed pipe ends a command that prints (`regionfs status | head -2`) as
/// it ends `cat`: by SIGPIPE, quietly. Rust starts programs with SIGPIPE
/// ignored, so without this the next print panics. The daemons (`mount`,
/// `replicate`) keep ignoring it: a peer closing a socket is an error to
/// handle there, not a reason to stop.
fn die_on_closed_pipe() {
    // SAFETY: resets one signal's disposition; no handler runs our code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if !matches!(
        cli.command,
        Command::Mount { daemon: false, .. } | Command::Replicate { .. }
    ) {
        die_on_closed_pipe();
    }
    match cli.command {
        Command::CheckConfig { file, probe } => Ok(check_config(&file, probe)),
        Command::Mount {
            config,
            daemon,
            as_of,
            options,
            mountpoint,
        } => load(&config).and_then(|mut c| {
            let extra = cmd::options::apply(options.as_deref().unwrap_or(""), &mut c)?;
            let as_of = as_of.or(extra.as_of);
            if let Some(t) = &as_of {
                c.mount.as_of = Some(parse_instant(t)?);
            }
            if daemon {
                daemonize(
                    &config,
                    &c,
                    &mountpoint,
                    as_of.as_deref(),
                    options.as_deref(),
                )
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
            watch: true,
            interval,
            ..
        } => load(&config).and_then(|c| cmd::status::watch(&c, interval.0)),
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
        Command::Verify {
            config,
            prefix,
            json,
            deep,
        } => load(&config).and_then(|c| verify(&c, &prefix, json, deep)),
        Command::Replicate { config, shard } => load(&config).and_then(|c| replicate(&c, shard)),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "regionfs",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map(|()| ExitCode::SUCCESS)
            .context("writing the man page"),
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if let Some(warning) = config.exposed_secret(path) {
        eprintln!("regionfs: warning: {warning}");
    }
    Ok(config)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .context("starting the async runtime")
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

/// `--as-of`'s instant (see [`regionfs::config::parse_instant`]).
fn parse_instant(text: &str) -> anyhow::Result<std::time::SystemTime> {
    regionfs::config::parse_instant(text).map_err(|e| anyhow::anyhow!("--as-of {e}"))
}
