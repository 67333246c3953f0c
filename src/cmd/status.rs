//! `regionfs status`: the whole mount's backlog, regions and discovery, one
//! path's upload and replication state, or the failed work.

use crate::*;
use regionfs::status::Health;

/// The journal of `config`'s cache dir, read-only, and a runtime to ask it.
pub(crate) fn open_journal(config: &Config) -> anyhow::Result<(tokio::runtime::Runtime, Journal)> {
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
pub(crate) fn status_failed(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
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
        let failed = !ops.is_empty() || !tasks.is_empty();
        Ok(ExitCode::from(if failed { Health::Failed } else { Health::Ok }.exit_code()))
    })
}

/// Whole mount: exit 0, 2 when something failed, 3 when a pending replica
/// is past `replication.time_target` (see [`Health`]); one path: 2 when its
/// upload or one of its replications failed.
pub(crate) fn status(
    config: &Config,
    json: bool,
    path: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let (rt, journal) = open_journal(config)?;
    rt.block_on(async {
        let health = match path {
            None => {
                let s = regionfs::status::status(&journal, config).await?;
                if json {
                    println!("{}", serde_json::to_string(&s)?);
                } else {
                    if let Some(cause) = &s.local_disk_failed {
                        println!(
                            "LOCAL DISK FAILED: {cause}. The mount accepts no writes (EIO); what was acknowledged before is still uploaded. Check the disk, then remount: the start re-checks the cache."
                        );
                    }
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
                            (regionfs::clock::now_ms() - d.last_pass_ms).max(0) as f64 / 1000.0,
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
                s.health(config.replication.time_target.0)
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
                let failed = local == "failed"
                    || tasks
                        .iter()
                        .any(|t| t.status == regionfs::journal::TaskStatus::Failed);
                if failed {
                    Health::Failed
                } else {
                    Health::Ok
                }
            }
        };
        Ok(ExitCode::from(health.exit_code()))
    })
}

/// Seconds since the epoch as `2026-11-25T10:00:00Z`.
pub(crate) fn format_epoch(secs: u64) -> String {
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
pub(crate) fn relative_path(config: &Config, p: &std::path::Path) -> String {
    let recorded = std::fs::read_to_string(config.cache.dir.join("mountpoint")).ok();
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if let Some(mp) = recorded {
        if let Ok(rel) = abs.strip_prefix(mp.trim()) {
            return rel.to_string_lossy().into_owned();
        }
    }
    p.to_string_lossy().trim_start_matches('/').to_string()
}

/// `status --watch`: the whole mount's view again every `every`, with the
/// rates between two looks, until interrupted. On a terminal each view
/// replaces the last; into a pipe or a file they follow one another.
pub(crate) fn watch(config: &Config, every: std::time::Duration) -> anyhow::Result<ExitCode> {
    use std::io::{IsTerminal as _, Write as _};
    let (rt, journal) = open_journal(config)?;
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<(regionfs::status::Status, std::time::Instant)> = None;
    loop {
        let s = rt.block_on(regionfs::status::status(&journal, config))?;
        let now = std::time::Instant::now();
        let since = prev
            .as_ref()
            .map(|(p, at)| (p, now.duration_since(*at).as_secs_f64()));
        let frame = watch_frame(since, &s, config, &format_epoch(unix_now()));
        let mut out = std::io::stdout().lock();
        if tty {
            // Cursor home, clear the screen.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        write!(out, "{frame}")?;
        out.flush()?;
        drop(out);
        prev = Some((s, now));
        std::thread::sleep(every);
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Bytes as `12.3 MiB`.
fn human_bytes(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", units[i])
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// One view of `status --watch`: `prev` is the view before and the seconds
/// since it (rates need two looks; the first view shows none).
pub(crate) fn watch_frame(
    prev: Option<(&regionfs::status::Status, f64)>,
    s: &regionfs::status::Status,
    config: &Config,
    at: &str,
) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let rate = |now: u64, before: Option<u64>, dt: f64| -> Option<f64> {
        before
            .filter(|_| dt > 0.0)
            .map(|b| (now as f64 - b as f64) / dt)
    };
    let dt = prev.map_or(0.0, |(_, dt)| dt);
    let _ = writeln!(o, "regionfs {}  {at}", config.source.describe());
    let u = &s.uploads;
    let queued_rate = rate(u.pending, prev.map(|(p, _)| p.uploads.pending), dt)
        .map(|r| format!(", {r:+.1}/s"))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "uploads        queued {:>8} {:>11}{queued_rate}   failed {}   oldest {:.1} s",
        u.pending,
        human_bytes(u.pending_bytes as f64),
        u.failed,
        u.oldest_pending_s
    );
    for (d, r) in &s.replication {
        let before = prev.and_then(|(p, _)| p.replication.get(d));
        let copied = rate(r.completed, before.map(|b| b.completed), dt)
            .map(|v| format!("{v:.1}/s"))
            .unwrap_or_else(|| "-".into());
        let bytes = rate(r.bytes_replicated, before.map(|b| b.bytes_replicated), dt)
            .map(|v| format!("{}/s", human_bytes(v.max(0.0))))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            o,
            "to {d:<11} pending {:>8} {:>11}   copied {copied} ({bytes})   lag {:.1} s   failed {}   missed {} target {}",
            r.pending,
            human_bytes(r.pending_bytes as f64),
            r.oldest_pending_s,
            r.failed,
            r.missed_target,
            config.replication.time_target
        );
    }
    if let Some(reads) = &s.reads {
        let regions: Vec<String> = reads
            .regions
            .iter()
            .map(|(n, st)| match (st.reachable, st.rtt_ms) {
                (false, _) => format!("{n} unreachable"),
                (true, Some(ms)) => format!("{n} {ms:.1} ms"),
                (true, None) => format!("{n} -"),
            })
            .collect();
        let _ = writeln!(o, "regions        {}", regions.join("   "));
    }
    let health = match s.health(config.replication.time_target.0) {
        Health::Ok => "ok".to_string(),
        Health::Failed => "FAILED: regionfs status --failed says what".to_string(),
        Health::Overdue => format!(
            "OVERDUE: a replica pending longer than {}",
            config.replication.time_target
        ),
    };
    let _ = writeln!(o, "health         {health}");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use regionfs::journal::{DestinationSummary, UploadSummary};

    fn config() -> Config {
        Config::parse(
            "[source]\nname = \"us\"\nregion = \"us-east-1\"\nbucket = \"b\"\n\
             endpoint = \"http://127.0.0.1:9\"\n[[destination]]\nname = \"eu\"\n\
             region = \"eu-west-1\"\nbucket = \"e\"\nendpoint = \"http://127.0.0.1:9\"\n\
             [[rule]]\nid = \"all\"\ndestination = \"eu\"\n[cache]\ndir = \"/tmp/x\"\n",
        )
        .unwrap()
    }

    fn status(pending: u64, completed: u64, bytes: u64) -> regionfs::status::Status {
        regionfs::status::Status {
            uploads: UploadSummary {
                pending,
                pending_bytes: pending * 1024,
                ..Default::default()
            },
            replication: [(
                "eu".to_string(),
                DestinationSummary {
                    pending: 7,
                    completed,
                    bytes_replicated: bytes,
                    oldest_pending_s: 1.5,
                    ..Default::default()
                },
            )]
            .into(),
            acls: Default::default(),
            reads: None,
            reads_age_s: None,
            discovery: Vec::new(),
            replaced: Default::default(),
            local_disk_failed: None,
        }
    }

    #[test]
    fn the_watch_view_shows_rates_between_two_looks_and_none_in_the_first() {
        let c = config();
        let first = watch_frame(None, &status(100, 10, 0), &c, "T");
        assert!(first.contains("queued      100"), "{first}");
        assert!(first.contains("copied - (-)"), "{first}");
        assert!(first.contains("health         ok"), "{first}");
        let before = status(100, 10, 0);
        let now = status(80, 30, 4 << 20);
        let second = watch_frame(Some((&before, 2.0)), &now, &c, "T");
        assert!(second.contains("queued       80"), "{second}");
        assert!(second.contains("-10.0/s"), "{second}");
        assert!(second.contains("copied 10.0/s (2.0 MiB/s)"), "{second}");
        assert!(second.contains("lag 1.5 s"), "{second}");
    }
}
