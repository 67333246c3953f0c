//! `regionfs check-config`: the config's fields, and with `--probe` the
//! buckets themselves (reachable, versioned, writable).

use crate::*;

pub(crate) fn check_config(file: &std::path::Path, probe: bool) -> ExitCode {
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("regionfs: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    if let Some(warning) = config.exposed_secret(file) {
        eprintln!("regionfs: warning: {warning}");
    }
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
        ok &= r.ok();
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
