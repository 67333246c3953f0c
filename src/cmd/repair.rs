//! `regionfs resync`, `verify` and `replicate`: queue existing versions
//! again, compare the destinations with the source, or run the replicator
//! (with discovery) without a mount.

use crate::*;

/// Ids of the rules whose replicas belong to the destination's owner.
pub(crate) fn owner_overrides(config: &Config) -> std::collections::HashSet<String> {
    config
        .rules
        .iter()
        .filter(|r| r.owner_override.is_some())
        .map(|r| r.id.clone())
        .collect()
}

/// The checker `verify` and `resync` compare with: the rules that hand
/// replicas over, and the destinations whose ETags do not name the bytes
/// (SSE-KMS on either side: S3's ETag of an SSE-KMS object is no MD5).
fn checker(config: &Config) -> regionfs::replicator::resync::Checker {
    use regionfs::config::Sse;
    let kms = |s: Option<Sse>| s == Some(Sse::Kms);
    let opaque = config
        .destinations
        .iter()
        .filter(|d| kms(config.source.sse) || kms(d.sse))
        .map(|d| d.name.clone())
        .collect();
    regionfs::replicator::resync::Checker::new(owner_overrides(config)).opaque_etags(opaque)
}

/// The source and destination stores of a configuration.
pub(crate) async fn stores(
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

pub(crate) fn resync(
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
            let mut checker = checker(config);
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

pub(crate) fn verify(
    config: &Config,
    prefix: &str,
    json: bool,
    deep: bool,
) -> anyhow::Result<ExitCode> {
    use regionfs::replicator::resync::verify;
    use regionfs::replicator::rules::Rules;
    let rt = runtime()?;
    rt.block_on(async {
        let (source, dests) = stores(config).await;
        let full_prefix = format!("{}{}", config.source.prefix, prefix);
        let (checked, findings) = verify(
            source.as_ref(),
            &dests,
            &Rules::from_config(config),
            &mut checker(config).deep(deep),
            &full_prefix,
        )
        .await?;
        if json {
            println!(
                "{}",
                serde_json::json!({ "checked": checked, "differences": findings })
            );
        } else {
            for f in &findings {
                println!("{f}");
            }
            println!(
                "verify: {checked} replica(s) checked, {} difference(s)",
                findings.len()
            );
        }
        Ok(if findings.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

pub(crate) fn replicate(config: &Config, shard: Shard) -> anyhow::Result<ExitCode> {
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
        svc.drain(config.durability.drain_on_unmount.0, &|l| {
            eprintln!("regionfs: {l}")
        })
        .await;
        Ok(ExitCode::SUCCESS)
    })
}
