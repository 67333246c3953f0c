//! The `regionfs` command line: parse, load the configuration, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use regionfs::config::Config;
use regionfs::store::probe::probe_bucket;

#[derive(Parser)]
#[command(name = "regionfs", version, about = "A FUSE filesystem backed by versioned S3 buckets, replicated across regions")]
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REGIONFS_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file, probe } => check_config(&file, probe),
    }
}

fn check_config(file: &std::path::Path, probe: bool) -> ExitCode {
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("regionfs: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    println!("# effective configuration of {} (defaults filled in, secrets redacted)", file.display());
    print!("{}", config.to_effective_toml());
    println!("\n# derived limits");
    for (k, v) in config.derived_limits() {
        println!("# {k} = {v}");
    }
    if !probe {
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("regionfs: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    println!("\n# probe");
    let buckets: Vec<_> = std::iter::once(&config.source).chain(&config.destinations).collect();
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
