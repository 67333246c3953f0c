//! `regionfs versions` and `restore`: a file's version history in the
//! source, and making an older version current again.

use crate::*;

pub(crate) fn versions(
    config: &Config,
    json: bool,
    path: &std::path::Path,
) -> anyhow::Result<ExitCode> {
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

pub(crate) fn restore(
    config: &Config,
    version: &str,
    path: &std::path::Path,
) -> anyhow::Result<ExitCode> {
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
