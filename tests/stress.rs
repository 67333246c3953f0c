//! Random namespace operations from several processes on a real mount, then
//! `rm -rf` of their tree: the queue drains, nothing fails, no name under
//! the tree is left live in either region, the files kept elsewhere hold
//! what their last close wrote in both, and unmount exits at once.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bucket_contents, regionfs_cli, repo_root, wait_for, Mount, Regions};

/// How long each worker runs its random operations.
const WORK_S: u64 = 40;
const WORKERS: u64 = 4;

fn sha256(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new("sha256sum").arg(&path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn random_namespace_operations_then_rm_rf_leave_nothing_queued_failed_or_live() {
    let r = Regions::start().await;
    let cache = tempfile::tempdir().unwrap();
    let mut m = Mount::start(&r.config(cache.path(), ""));
    let script = repo_root().join("tests/stress_ops.py");
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| {
            Command::new("python3")
                .arg(&script)
                .arg(m.path(&format!("t/p{i}")))
                .arg(m.path(&format!("keep/p{i}")))
                .arg(format!("{}", 1000 + i))
                .arg(WORK_S.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut kept: BTreeMap<String, String> = BTreeMap::new();
    let mut problems = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        let out = w.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("worker {i}: {}", stderr.trim());
        if !out.status.success() {
            problems.push(format!("worker {i}: {stderr}"));
        }
        let last = String::from_utf8_lossy(&out.stdout);
        let map: BTreeMap<String, String> =
            serde_json::from_str(last.lines().last().unwrap_or("{}")).unwrap();
        for (name, sum) in map {
            kept.insert(format!("keep/p{i}/{name}"), sum);
        }
    }
    assert!(problems.is_empty(), "unexpected errors: {problems:?}");
    let rm = Command::new("rm")
        .arg("-rf")
        .arg(m.path("t"))
        .output()
        .unwrap();
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    assert!(!m.path("t").exists());

    // The queue drains within a minute, with nothing failed.
    wait_for(
        "uploads and replication to drain",
        Duration::from_secs(60),
        || {
            let s = m.status(None);
            let idle = s["uploads"]["pending"] == 0 && s["replication"]["eu"]["pending"] == 0;
            idle.then_some(s)
        },
    );
    let s = m.status(None);
    assert_eq!(s["uploads"]["failed"], 0, "{s}");
    assert_eq!(s["replication"]["eu"]["failed"], 0, "{s}");
    // One writer: none of its uploads replaced a version it did not know.
    assert_eq!(s["replaced"]["count"], 0, "{s}");
    let failed = regionfs_cli(&["status", "--failed", "--json"], &m.config);
    let failed: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(
        failed["uploads"].as_array().map(Vec::len),
        Some(0),
        "{failed}"
    );

    // Unmount exits at once: nothing is left to drain.
    let status = m.unmount();
    assert!(status.success());
    let log = m.log_text();
    assert!(
        !log.contains("pending upload(s)") && !log.contains("pending replication(s)"),
        "the unmount waited for queued work: {log}"
    );

    for (region, store) in [("source", &r.src), ("destination", &r.dst)] {
        let under_tree = bucket_contents(store, "t/").await;
        let live: Vec<&String> = under_tree.keys().collect();
        assert!(live.is_empty(), "live under t/ in the {region}: {live:?}");
        let keep = bucket_contents(store, "keep/").await;
        for (path, sum) in &kept {
            let body = keep
                .get(path)
                .unwrap_or_else(|| panic!("{path} is not in the {region}"));
            assert_eq!(&sha256(body), sum, "{path} in the {region}");
        }
    }
}
