//! Replicating the bucket, not just a mount's writes, between two real
//! SeaweedFS regions: `regionfs replicate` finds versions and delete markers
//! written by any client, survives kill -9 without copying twice or missing
//! anything, splits a bucket into shares, and several writers of one key
//! leave every destination on the source's current version.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    put_bytes, regionfs_bin, regionfs_cli, replica_history, source_history, wait_for, ProcessGuard,
    Regions,
};
use regionfs::store::{ObjectStore, S3Store};

const DRAIN: Duration = Duration::from_secs(120);

/// Fast passes for tests; every sixth is a sweep.
const WATCH: &str = "[replication]\nwatch = true\nwatch_interval = \"1s\"\n";

/// A `regionfs replicate` process with its own cache dir.
struct Replicate {
    config: PathBuf,
    log: PathBuf,
    shard: String,
    process: Option<ProcessGuard>,
    _dir: tempfile::TempDir,
}

impl Replicate {
    fn start(r: &Regions, shard: &str) -> Replicate {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("regionfs.toml");
        std::fs::write(&config, r.config(&dir.path().join("cache"), WATCH)).unwrap();
        let mut p = Replicate {
            log: dir.path().join("replicate.log"),
            config,
            shard: shard.into(),
            process: None,
            _dir: dir,
        };
        p.restart();
        p
    }

    fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(regionfs_bin())
            .args(["replicate", "--shard", &self.shard, "--config"])
            .arg(&self.config)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.process = Some(ProcessGuard::new(child, "regionfs replicate"));
    }

    fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// `None` until the process has made its journal.
    fn status(&self) -> Option<serde_json::Value> {
        let out = regionfs_cli(&["status", "--json"], &self.config);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Waits until two more discovery passes have run and nothing is
    /// pending: a late duplicate has had every chance to be queued and copied.
    fn wait_quiet(&self) {
        let passes = |s: &serde_json::Value| s["discovery"][0]["passes"].as_u64().unwrap_or(0);
        let start = self.status().map(|s| passes(&s)).unwrap_or(0);
        wait_for("two more passes with nothing pending", DRAIN, || {
            let s = self.status()?;
            (passes(&s) >= start + 2 && s["replication"]["eu"]["pending"] == 0).then_some(())
        });
    }

    fn completed(&self) -> u64 {
        self.status()
            .and_then(|s| s["replication"]["eu"]["completed"].as_u64())
            .unwrap_or(0)
    }
}

impl Drop for Replicate {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- regionfs replicate log ({}):", self.log.display());
            eprintln!("{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

/// `regionfs verify` passes: every destination carries the source's current
/// version of every key.
fn verify_clean(config: &Path) -> bool {
    common::verify(config).0 == Some(0)
}

/// Every source version of each key, in order, and each exactly once, at
/// the destination.
async fn assert_replicated_exactly_once(r: &Regions, keys: &[String]) {
    for key in keys {
        let source = source_history(&r.src, key).await;
        let replicas: Vec<String> = replica_history(&r.dst, key)
            .await
            .into_iter()
            .filter_map(|(_, s)| s)
            .collect();
        assert_eq!(replicas, source, "{key}: every version once, in order");
    }
}

/// Waits until every key's replica history matches the source's.
async fn wait_histories(r: &Regions, keys: &[String]) {
    let deadline = std::time::Instant::now() + DRAIN;
    loop {
        let mut behind = None;
        for key in keys {
            let source = source_history(&r.src, key).await;
            let replicas = replica_history(&r.dst, key).await.len();
            if replicas < source.len() {
                behind = Some(key.clone());
                break;
            }
        }
        match behind {
            None => return,
            Some(k) => assert!(
                std::time::Instant::now() < deadline,
                "{k} not replicated within {DRAIN:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn current_is_deleted(s: &S3Store, key: &str) -> bool {
    s.head(key, None).await.is_err_and(|e| e.is_not_found())
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_and_deletes_written_by_any_client_are_replicated() {
    let r = Regions::start().await;
    let rep = Replicate::start(&r, "1/1");
    let keys: Vec<String> = (0..20).map(|i| format!("sdk/{i}.bin")).collect();
    for (i, k) in keys.iter().enumerate() {
        put_bytes(&r.src, k, format!("first {i}")).await;
    }
    for k in &keys[..5] {
        put_bytes(&r.src, k, "second").await;
    }
    for k in &keys[15..] {
        r.src.delete(k).await.unwrap();
    }
    // A key written and deleted between two passes: found by a sweep.
    put_bytes(&r.src, "sdk/brief", "here and gone").await;
    r.src.delete("sdk/brief").await.unwrap();
    let mut all = keys.clone();
    all.push("sdk/brief".into());
    wait_histories(&r, &all).await;
    assert_replicated_exactly_once(&r, &all).await;
    for k in keys[15..].iter().chain(["sdk/brief".to_string()].iter()) {
        let r2 = &r;
        common::wait_for_async(
            &format!("{k} deleted at the destination"),
            DRAIN,
            || async move { current_is_deleted(&r2.dst, k).await.then_some(()) },
        )
        .await;
    }
    wait_for("verify: no difference", DRAIN, || {
        verify_clean(&rep.config).then_some(())
    });
    let status = rep.status().unwrap();
    let d = &status["discovery"][0];
    assert_eq!(d["shard"], "all");
    assert!(d["total_queued"].as_u64().unwrap() >= 20 + 5 + 5 + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn replicate_killed_with_9_and_restarted_copies_nothing_twice_and_misses_nothing() {
    let r = Regions::start().await;
    let keys: Vec<String> = (0..60).map(|i| format!("k/{i:02}")).collect();
    for k in &keys[..40] {
        put_bytes(&r.src, k, vec![7u8; 50_000]).await;
    }
    let mut rep = Replicate::start(&r, "1/1");
    wait_for("some replicas", DRAIN, || {
        (rep.completed() >= 5).then_some(())
    });
    rep.kill9();
    // Written while it is down, some over keys it had queued.
    for k in keys[30..].iter() {
        put_bytes(&r.src, k, vec![8u8; 20_000]).await;
    }
    rep.restart();
    wait_histories(&r, &keys).await;
    rep.wait_quiet();
    assert_replicated_exactly_once(&r, &keys).await;
    assert!(verify_clean(&rep.config));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_shares_replicate_a_bucket_exactly_once_and_a_moved_share_copies_nothing_again() {
    let r = Regions::start().await;
    let keys: Vec<String> = (0..60).map(|i| format!("s/{i}")).collect();
    for k in &keys {
        put_bytes(&r.src, k, k.clone()).await;
    }
    let one = Replicate::start(&r, "1/2");
    let two = Replicate::start(&r, "2/2");
    wait_histories(&r, &keys).await;
    one.wait_quiet();
    two.wait_quiet();
    assert_replicated_exactly_once(&r, &keys).await;
    let (a, b) = (one.completed(), two.completed());
    assert_eq!(a + b, 60, "each key by one share: {a} + {b}");
    assert!(a > 0 && b > 0, "both shares worked: {a} + {b}");

    // Share 1 moves to another host: a fresh cache dir lists the bucket
    // afresh, finds every version at the destination, and copies none again.
    drop(one);
    let moved = Replicate::start(&r, "1/2");
    moved.wait_quiet();
    assert_replicated_exactly_once(&r, &keys).await;
    // And it goes on with new versions.
    for k in &keys[..10] {
        put_bytes(&r.src, k, "after the move").await;
    }
    wait_histories(&r, &keys).await;
    moved.wait_quiet();
    two.wait_quiet();
    assert_replicated_exactly_once(&r, &keys).await;
}

/// Two mounts (two cache dirs) and a raw client write the same keys in turn;
/// the first mount also watches the bucket. Every destination ends on the
/// source's current version.
#[tokio::test(flavor = "multi_thread")]
async fn two_mounts_and_a_raw_client_writing_the_same_keys_leave_the_destination_current() {
    let r = Regions::start().await;
    let (ca, cb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = common::Mount::start(&r.config(ca.path(), WATCH));
    let b = common::Mount::start(&r.config(cb.path(), ""));
    let keys: Vec<String> = (0..20).map(|i| format!("shared-{i}")).collect();
    for round in 0..3 {
        for (i, k) in keys.iter().enumerate() {
            let body = format!("round {round} key {i} by");
            match (round + i) % 3 {
                0 => std::fs::write(a.path(k), format!("{body} a")).unwrap(),
                1 => std::fs::write(b.path(k), format!("{body} b")).unwrap(),
                _ => put_bytes(&r.src, k, format!("{body} sdk")).await,
            }
        }
    }
    a.wait_uploaded(DRAIN);
    b.wait_uploaded(DRAIN);
    wait_for("verify: every destination current", DRAIN, || {
        let pending = |m: &common::Mount| m.status(None)["replication"]["eu"]["pending"] == 0;
        (pending(&a) && pending(&b) && verify_clean(&a.config)).then_some(())
    });
    for k in &keys {
        let src = r.src.head(k, None).await.unwrap();
        let dst = r.dst.head(k, None).await.unwrap();
        assert_eq!(
            dst.metadata.get(regionfs::store::SOURCE_VERSION_META),
            src.version_id.as_ref(),
            "{k}: the destination carries the source's current version"
        );
    }
}

/// Everything in the tree replicates: a replica mount of the destination
/// shows the empty directory with its mode, the symlink and the FIFO.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_mount_shows_empty_directories_symlinks_and_fifos_with_their_modes() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    let m = common::Mount::start(&r.config(c.path(), ""));
    std::fs::create_dir(m.path("empty")).unwrap();
    std::fs::set_permissions(m.path("empty"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("target/file", m.path("link")).unwrap();
    common::sh(&format!("mkfifo -m 0640 {}", m.path("pipe").display()));
    m.wait_uploaded(DRAIN);
    wait_for("replication", DRAIN, || {
        (m.status(None)["replication"]["eu"]["pending"] == 0).then_some(())
    });
    let rc = tempfile::tempdir().unwrap();
    let replica = common::Mount::start(&r.config(
        rc.path(),
        "[mount]\nread_only = true\n[read]\nfrom = \"eu\"\n",
    ));
    let dir = std::fs::metadata(replica.path("empty")).unwrap();
    assert!(dir.is_dir());
    assert_eq!(dir.permissions().mode() & 0o7777, 0o750);
    assert_eq!(std::fs::read_dir(replica.path("empty")).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_link(replica.path("link")).unwrap(),
        PathBuf::from("target/file")
    );
    let pipe = std::fs::symlink_metadata(replica.path("pipe")).unwrap();
    assert!(pipe.file_type().is_fifo());
    assert_eq!(pipe.permissions().mode() & 0o7777, 0o640);
}

/// A host that overwrites a key another client wrote since the host last
/// saw it reports the version it replaced (whole PUTs and uploads in parts);
/// its own rewrites, and versions it did see, are not reported.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_replacing_a_version_this_host_never_read_is_reported() {
    let r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    // Attributes cached for an hour: the mount does not look again on its own.
    let m = common::Mount::start(&r.config(
        c.path(),
        "[mount]\nattr_ttl = \"1h\"\ndir_ttl = \"1h\"\n[upload]\nmultipart_threshold = \"5MiB\"\n",
    ));
    let big = |tag: u8| vec![tag; 6 << 20];
    for i in 0..5 {
        std::fs::write(m.path("mine"), format!("rewrite {i}")).unwrap();
    }
    std::fs::write(m.path("doc"), "host 1").unwrap();
    std::fs::write(m.path("big"), big(1)).unwrap();
    m.wait_uploaded(DRAIN);
    // Written by someone else after the host last saw the keys...
    put_bytes(&r.src, "doc", "sdk 2").await;
    put_bytes(&r.src, "big", "sdk 2").await;
    // ... and one the host first sees after it was written.
    put_bytes(&r.src, "seen", "sdk 1").await;
    let theirs = |k: &'static str| {
        let src = &r.src;
        async move { src.head(k, None).await.unwrap().version_id.unwrap() }
    };
    let (doc2, big2) = (theirs("doc").await, theirs("big").await);
    assert_eq!(std::fs::read_to_string(m.path("seen")).unwrap(), "sdk 1");
    std::fs::write(m.path("doc"), "host 3").unwrap();
    std::fs::write(m.path("big"), big(3)).unwrap();
    std::fs::write(m.path("seen"), "host 2").unwrap();
    std::fs::write(m.path("mine"), "rewrite 5").unwrap();
    m.wait_uploaded(DRAIN);

    // Last close wins; the replaced versions stay in the history.
    let body = |k: &'static str| {
        let src = &r.src;
        async move { common::get_bytes(src, k).await }
    };
    assert_eq!(body("doc").await, b"host 3");
    assert_eq!(body("big").await, big(3));
    assert_eq!(body("seen").await, b"host 2");
    assert!(source_history(&r.src, "doc").await.contains(&doc2));
    let status = m.status(None);
    let replaced = &status["replaced"];
    let mut named: Vec<(String, String)> = replaced["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["key"].as_str().unwrap().to_string(),
                c["replaced_version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    named.sort();
    assert_eq!(
        named,
        [("big".to_string(), big2), ("doc".to_string(), doc2)],
        "exactly the two versions the host never read: {status}"
    );
    assert_eq!(replaced["count"], 2);
    assert!(m
        .log_text()
        .contains("replaces a version another client wrote"));
}
