//! The replicator between real SeaweedFS regions (and moto), through the real
//! mounted binary: what lands where, in which order, and what survives outages
//! and kill -9.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::{
    bucket_name, replica_history, sh, source_history, wait_for, Mount, Region, Regions, ACCESS_KEY,
    SECRET_KEY,
};
use regionfs::store::{ObjectStore, S3Store, SOURCE_VERSION_META};

const DRAIN: Duration = Duration::from_secs(180);

fn wait_replicated(m: &Mount, dest: &str) {
    wait_for("replication to drain", DRAIN, || {
        let s = m.status(None);
        (s["uploads"]["pending"] == 0 && s["replication"][dest]["pending"] == 0).then_some(())
    });
}

fn write_with_tags(path: &std::path::Path, body: &[u8], tags: &[(&str, &str)]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(body).unwrap();
    for (k, v) in tags {
        let name = std::ffi::CString::new(format!("user.tag.{k}")).unwrap();
        let rc =
            unsafe { libc::fsetxattr(f.as_raw_fd(), name.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_carry_bytes_metadata_tags_content_and_the_source_version() {
    let r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    let m = Mount::start(&r.config(c.path(), ""));
    write_with_tags(
        &m.path("doc.txt"),
        b"replicate me",
        &[("class", "critical")],
    );
    sh(&format!(
        "chmod 640 {} && chown 7:8 {}",
        m.path("doc.txt").display(),
        m.path("doc.txt").display()
    ));
    wait_replicated(&m, "eu");
    let src = r.src.head("doc.txt", None).await.unwrap();
    let dst = r.dst.head("doc.txt", None).await.unwrap();
    assert_eq!(
        dst.metadata.get(SOURCE_VERSION_META),
        src.version_id.as_ref()
    );
    // The CRC the destination checked the bytes against, the one the source keeps.
    assert_eq!(
        dst.metadata.get(regionfs::store::CHECKSUM_META),
        src.crc64nvme.as_ref()
    );
    assert_eq!(dst.crc64nvme, src.crc64nvme);
    let mut without = dst.metadata.clone();
    without.remove(SOURCE_VERSION_META);
    without.remove(regionfs::store::CHECKSUM_META);
    assert_eq!(without, src.metadata, "user metadata equal");
    // From the file name, as s3fs sets it; the replica carries the same.
    assert_eq!(src.content_type.as_deref(), Some("text/plain"));
    assert_eq!(dst.content_type, src.content_type);
    assert_eq!(
        r.dst.get_tags("doc.txt", None).await.unwrap(),
        r.src.get_tags("doc.txt", None).await.unwrap()
    );
    assert_eq!(
        r.dst
            .get_tags("doc.txt", None)
            .await
            .unwrap()
            .get("class")
            .map(String::as_str),
        Some("critical")
    );
    let body = r
        .dst
        .get("doc.txt", Default::default())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], b"replicate me");
    let st = m.status(Some("doc.txt"));
    assert_eq!(st["replication"]["eu"]["status"], "COMPLETED");
    let x = sh(&format!(
        "getfattr --only-values -n user.regionfs.replication {}",
        m.path("doc.txt").display()
    ));
    assert!(x.contains("COMPLETED"), "{x}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_rapid_overwrites_reach_the_destination_in_source_order() {
    let r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    let m = Mount::start(&r.config(c.path(), "[durability]\nfsync = \"local\"\n"));
    for i in 0..200 {
        std::fs::write(m.path("hot.txt"), format!("version {i}")).unwrap();
    }
    wait_replicated(&m, "eu");
    let source = source_history(&r.src, "hot.txt").await;
    assert_eq!(source.len(), 200);
    let replicas: Vec<String> = replica_history(&r.dst, "hot.txt")
        .await
        .into_iter()
        .filter_map(|(_, s)| s)
        .collect();
    assert_eq!(replicas, source, "every version, once, in source order");
    let last = r
        .dst
        .get("hot.txt", Default::default())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&last[..], b"version 199");
}

#[tokio::test(flavor = "multi_thread")]
async fn fsync_all_regions_returns_when_every_destination_has_the_version() {
    let r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    let m = Mount::start(&r.config(c.path(), "[durability]\nfsync = \"all-regions\"\n"));
    let mut f = std::fs::File::create(m.path("everywhere.bin")).unwrap();
    f.write_all(b"in both regions").unwrap();
    f.sync_all().unwrap();
    let body = r
        .dst
        .get("everywhere.bin", Default::default())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], b"in both regions");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_destination_bucket_fails_visibly_then_completes_once_created() {
    let r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    let missing = bucket_name("later");
    let text = r.config(c.path(), "").replace(&r.dst_bucket, &missing);
    let m = Mount::start(&text);
    std::fs::write(m.path("waiting.txt"), b"patience").unwrap();
    let st = wait_for("the task to fail", DRAIN, || {
        let st = m.status(Some("waiting.txt"));
        (st["replication"]["eu"]["status"] == "FAILED").then_some(st)
    });
    let err = st["replication"]["eu"]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    assert_eq!(m.status(None)["replication"]["eu"]["failed"], 1);
    r.b.versioned_bucket(&missing).await;
    wait_replicated(&m, "eu");
    assert_eq!(
        m.status(Some("waiting.txt"))["replication"]["eu"]["status"],
        "COMPLETED"
    );
    let dst = S3Store::connect(&r.b.bucket_config("eu", &missing)).await;
    let body = dst
        .get("waiting.txt", Default::default())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], b"patience");
}

/// Prints the open tasks that are not exactly one per written `load/f{i}`,
/// with the source's versions of their keys: what a wrong backlog consists of.
async fn explain_backlog(cache: &std::path::Path, r: &Regions, written: usize) {
    let journal = regionfs::journal::Journal::open_readonly(&cache.join("journal.db")).unwrap();
    let open = journal.open_tasks().await.unwrap();
    let mut per_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in &open {
        per_key.entry(t.key.clone()).or_default().push(format!(
            "task {} seq {} version {} {:?} {:?} created {}",
            t.id, t.seq, t.version_id, t.kind, t.status, t.created_at_ms
        ));
    }
    let expected: HashSet<String> = (0..written).map(|i| format!("load/f{i}")).collect();
    for (key, tasks) in &per_key {
        if tasks.len() != 1 || !expected.contains(key) {
            eprintln!("backlog: {key}: {tasks:#?}");
            eprintln!("  source versions: {:?}", source_history(&r.src, key).await);
        }
    }
    for key in expected.iter().filter(|k| !per_key.contains_key(*k)) {
        eprintln!("backlog: no open task for {key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_down_for_a_minute_under_load_loses_nothing_and_status_tracks_the_backlog() {
    let mut r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    let m = Mount::start(&r.config(c.path(), "[durability]\nfsync = \"local\"\n"));
    std::fs::create_dir(m.path("load")).unwrap();
    wait_replicated(&m, "eu");
    r.b.stop();
    let outage = std::time::Instant::now();
    let mut written = 0;
    let mut peak = 0;
    while outage.elapsed() < Duration::from_secs(60) {
        std::fs::write(
            m.path(&format!("load/f{written}")),
            format!("body {written}"),
        )
        .unwrap();
        written += 1;
        if written % 20 == 0 {
            peak = peak.max(
                m.status(None)["replication"]["eu"]["pending"]
                    .as_u64()
                    .unwrap(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every version written during the outage is in the backlog, exactly.
    m.wait_uploaded(DRAIN);
    let backlog = m.status(None)["replication"]["eu"]["pending"]
        .as_u64()
        .unwrap();
    if backlog != written as u64 {
        explain_backlog(c.path(), &r, written).await;
    }
    assert_eq!(
        backlog, written as u64,
        "status counts exactly the versions not yet replicated"
    );
    assert!(peak > 0);
    r.b.restart();
    wait_replicated(&m, "eu");
    let s = m.status(None);
    assert_eq!(s["replication"]["eu"]["pending"], 0);
    assert_eq!(s["replication"]["eu"]["failed"], 0);
    let objects = common::bucket_contents(&r.dst, "load/").await;
    for i in 0..written {
        assert_eq!(
            objects.get(&format!("load/f{i}")).map(Vec::as_slice),
            Some(format!("body {i}").as_bytes()),
            "f{i}"
        );
    }
    eprintln!("destination outage: 60 s, {written} versions queued and replicated after it");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_replication_replicates_every_version_exactly_once() {
    let r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    let mut m = Mount::start(&r.config(
        c.path(),
        "[durability]\nfsync = \"local\"\n[replication]\nworkers = 2\n",
    ));
    let rounds = 10;
    for round in 0..rounds {
        for i in 0..15 {
            // Some keys get a new version every round.
            let key = if i < 5 {
                format!("k{i}")
            } else {
                format!("r{round}-{i}")
            };
            std::fs::write(m.path(&key), vec![round as u8; 20_000 + i * 1000]).unwrap();
        }
        m.wait_uploaded(DRAIN);
        m.kill9();
        m.remount();
    }
    wait_replicated(&m, "eu");
    let objects = common::bucket_contents(&r.src, "").await;
    let mut checked = 0;
    for key in objects.keys().filter(|k| !k.contains(".regionfs")) {
        let source = source_history(&r.src, key).await;
        let replicas: Vec<String> = replica_history(&r.dst, key)
            .await
            .into_iter()
            .filter_map(|(_, s)| s)
            .collect();
        let unique: HashSet<&String> = replicas.iter().collect();
        assert_eq!(
            unique.len(),
            replicas.len(),
            "{key}: a version was replicated twice: {replicas:?}"
        );
        assert_eq!(replicas, source, "{key}: every source version, in order");
        checked += source.len();
    }
    eprintln!(
        "kill -9 during replication: {rounds} rounds, {checked} versions replicated exactly once"
    );
}

/// Two one-way rule sets in opposite directions (two mounts, each watching
/// its source, so each sees the replicas the other writes into it) make
/// two-way replication without loops: replicas are never replicated again.
#[tokio::test(flavor = "multi_thread")]
async fn two_way_replication_does_not_loop() {
    let r = Regions::start().await;
    let (ca, cb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let watch = "[replication]\nwatch = true\nwatch_interval = \"1s\"\n";
    let ma = Mount::start(&r.config(ca.path(), watch));
    // The mirror image: source is B's bucket, destination A's.
    let text_b = format!(
        r#"[source]
name = "eu"
region = "eu-west-1"
bucket = "{}"
endpoint = "{}"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"

[[destination]]
name = "us-east"
region = "us-east-1"
bucket = "{}"
endpoint = "{}"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"

[[rule]]
id = "back"
destination = "us-east"
delete_markers = true

[cache]
dir = "{}"

{watch}"#,
        r.dst_bucket,
        r.b.endpoint,
        r.src_bucket,
        r.a.endpoint,
        cb.path().display()
    );
    let mb = Mount::start(&text_b);
    std::fs::write(ma.path("from-a.txt"), b"a").unwrap();
    std::fs::write(mb.path("from-b.txt"), b"b").unwrap();
    wait_replicated(&ma, "eu");
    wait_replicated(&mb, "us-east");
    // Each side's discovery has listed the replica the other wrote into its
    // source (a sweep, then quick passes) and left it alone.
    let swept = |m: &Mount| {
        let s = m.status(None);
        (s["discovery"][0]["passes"].as_u64().unwrap_or(0) >= 3).then_some(())
    };
    wait_for("discovery passes on both sides", DRAIN, || {
        swept(&ma).and(swept(&mb))
    });
    wait_replicated(&ma, "eu");
    wait_replicated(&mb, "us-east");
    for (store, key) in [
        (&r.src, "from-a.txt"),
        (&r.src, "from-b.txt"),
        (&r.dst, "from-a.txt"),
        (&r.dst, "from-b.txt"),
    ] {
        assert_eq!(
            store
                .list_versions(key, None, None)
                .await
                .unwrap()
                .versions
                .len(),
            1,
            "{key}: exactly one version"
        );
    }
}

/// Rule semantics across two destinations: prefix, tags, AND, priority,
/// delete markers on/off, storage class.
#[tokio::test(flavor = "multi_thread")]
async fn the_rule_matrix_sends_each_version_where_its_rules_say() {
    let (a, b, ap) = (
        Region::seaweed("us-east-1"),
        Region::seaweed("eu-west-1"),
        Region::moto("ap-south-1"),
    );
    let (sb, eb, pb) = (bucket_name("src"), bucket_name("eu"), bucket_name("ap"));
    let src = a.versioned_bucket(&sb).await;
    let eu = b.versioned_bucket(&eb).await;
    let apb = ap.versioned_bucket(&pb).await;
    let c = tempfile::tempdir().unwrap();
    let creds = format!("access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"");
    let text = format!(
        r#"[source]
name = "us"
region = "us-east-1"
bucket = "{sb}"
endpoint = "{}"
{creds}

[[destination]]
name = "eu"
region = "eu-west-1"
bucket = "{eb}"
endpoint = "{}"
{creds}

[[destination]]
name = "ap"
region = "ap-south-1"
bucket = "{pb}"
endpoint = "{}"
{creds}

# eu: everything under logs/, delete markers replicated...
[[rule]]
id = "logs-eu"
priority = 1
prefix = "logs/"
destination = "eu"
delete_markers = true

# ...except logs/tmp/, where a higher-priority rule says no delete markers.
[[rule]]
id = "tmp-eu"
priority = 2
prefix = "logs/tmp/"
destination = "eu"
delete_markers = false

# ap: only critical data/ objects (prefix AND tag), stored STANDARD_IA.
[[rule]]
id = "critical-ap"
prefix = "data/"
tags = {{ class = "critical" }}
destination = "ap"
storage_class = "STANDARD_IA"

[cache]
dir = "{}"
"#,
        a.endpoint,
        b.endpoint,
        ap.endpoint,
        c.path().display()
    );
    let m = Mount::start(&text);
    sh(&format!(
        "mkdir -p {0}/logs/tmp {0}/data {0}/other",
        m.dir.display()
    ));
    std::fs::write(m.path("logs/app.log"), b"log").unwrap();
    std::fs::write(m.path("logs/tmp/t.log"), b"tmp").unwrap();
    write_with_tags(
        &m.path("data/crit.bin"),
        b"critical",
        &[("class", "critical")],
    );
    write_with_tags(&m.path("data/plain.bin"), b"plain", &[("class", "routine")]);
    std::fs::write(m.path("other/x"), b"x").unwrap();
    wait_for("replication", DRAIN, || {
        let s = m.status(None);
        (s["uploads"]["pending"] == 0
            && s["replication"]["eu"]["pending"] == 0
            && s["replication"]["ap"]["pending"] == 0)
            .then_some(())
    });
    let keys = |m: BTreeMap<String, Vec<u8>>| {
        m.into_keys()
            .filter(|k| !k.ends_with('/') && !k.contains(".regionfs"))
            .collect::<Vec<_>>()
    };
    // Status said every task completed. Under full-suite load the listing
    // once lacked a replica at this point (not reproduced alone); wait for it
    // with a deadline and say so, so a late appearance is told apart from a
    // replica never written (which still fails here).
    let want_eu = vec!["logs/app.log".to_string(), "logs/tmp/t.log".to_string()];
    let first = keys(common::bucket_contents(&eu, "").await);
    if first != want_eu {
        eprintln!("eu listed {first:?} right after status said done; waiting");
        common::wait_for_async(
            "the eu replicas to be listed",
            Duration::from_secs(30),
            || async { (keys(common::bucket_contents(&eu, "").await) == want_eu).then_some(()) },
        )
        .await;
        eprintln!("eu lists every replica now");
    }
    assert_eq!(
        keys(common::bucket_contents(&apb, "").await),
        vec!["data/crit.bin"]
    );
    assert_eq!(
        apb.head("data/crit.bin", None)
            .await
            .unwrap()
            .storage_class
            .as_deref(),
        Some("STANDARD_IA")
    );

    std::fs::remove_file(m.path("logs/app.log")).unwrap();
    std::fs::remove_file(m.path("logs/tmp/t.log")).unwrap();
    std::fs::remove_file(m.path("data/crit.bin")).unwrap();
    wait_for("replication of deletes", DRAIN, || {
        let s = m.status(None);
        (s["uploads"]["pending"] == 0 && s["replication"]["eu"]["pending"] == 0).then_some(())
    });
    assert!(
        eu.head("logs/app.log", None)
            .await
            .unwrap_err()
            .is_not_found(),
        "delete marker replicated"
    );
    assert_eq!(
        eu.head("logs/tmp/t.log", None).await.unwrap().size,
        3,
        "tmp rule keeps deletes local"
    );
    assert!(
        apb.head("data/crit.bin", None).await.is_ok(),
        "tag rules never replicate delete markers"
    );
    let _ = src;
}

#[tokio::test(flavor = "multi_thread")]
async fn resync_backfills_existing_objects_and_verify_reports_differences() {
    let r = Regions::start().await;
    for i in 0..12 {
        common::put_bytes(&r.src, &format!("old/o{i}"), format!("old {i}")).await;
    }
    let c = tempfile::tempdir().unwrap();
    let cfg = c.path().join("regionfs.toml");
    std::fs::write(&cfg, r.config(&c.path().join("cache"), "")).unwrap();

    let before = common::regionfs_cli(&["verify"], &cfg);
    assert_eq!(
        before.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&before.stdout)
    );
    assert!(String::from_utf8_lossy(&before.stdout).contains("12 difference(s)"));

    let out = common::regionfs_cli(&["resync"], &cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("12 replicated, 0 left"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects = common::bucket_contents(&r.dst, "old/").await;
    assert_eq!(objects.len(), 12);
    assert_eq!(objects["old/o3"], b"old 3");

    // Resync again: nothing to do (resumable, no duplicates).
    let again = common::regionfs_cli(&["resync"], &cfg);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("0 version(s) to replicate"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        r.dst
            .list_versions("old/o3", None, None)
            .await
            .unwrap()
            .versions
            .len(),
        1
    );

    let ok = common::regionfs_cli(&["verify"], &cfg);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("12 replica(s) checked, 0 difference(s)"));

    r.dst.delete("old/o5").await.unwrap();
    let bad = common::regionfs_cli(&["verify"], &cfg);
    assert_eq!(bad.status.code(), Some(1));
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(
        text.contains("old/o5 → eu: missing: no replica (source version "),
        "{text}"
    );
    assert!(text.contains("1 difference(s)"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_backlog_completions_and_replication_lag() {
    use std::io::Read;
    let r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let m = Mount::start(&r.config(
        c.path(),
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    ));
    for i in 0..3 {
        std::fs::write(m.path(&format!("m{i}")), b"measured").unwrap();
    }
    wait_replicated(&m, "eu");
    let scrape = || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    let text = wait_for("metrics", Duration::from_secs(10), || {
        let t = scrape();
        t.contains("regionfs_replication_completed{destination=\"eu\"} 3")
            .then_some(t)
    });
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("regionfs_replication_pending{destination=\"eu\"} 0"),
        "{text}"
    );
    assert!(text.contains("regionfs_uploads_pending 0"), "{text}");
    assert!(
        text.contains("regionfs_replication_lag_seconds_count{destination=\"eu\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("regionfs_replication_bytes_total{destination=\"eu\"} 24"),
        "{text}"
    );
}

/// Versions whose replicas land later than `replication.time_target` are
/// counted as missed, in `status` and in the metric (a destination held up
/// beyond the target by a stalled link).
#[tokio::test(flavor = "multi_thread")]
async fn replicas_landing_after_the_time_target_are_counted_as_missed() {
    let r = Regions::start().await;
    let proxy = common::LatencyProxy::start(r.b.port, Duration::ZERO);
    let (c, port) = (tempfile::tempdir().unwrap(), common::free_port());
    let text = r
        .config(
            c.path(),
            &format!(
                "[replication]\ntime_target = \"2s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
            ),
        )
        .replace(&r.b.endpoint, &proxy.endpoint());
    let m = Mount::start(&text);
    proxy.set_stalled(true);
    std::fs::write(m.path("late-1.txt"), b"held up").unwrap();
    std::fs::write(m.path("late-2.txt"), b"held up too").unwrap();
    wait_for("replication held beyond the target", DRAIN, || {
        let s = m.status(None);
        let held = s["replication"]["eu"]["oldest_pending_s"].as_f64()?;
        (s["uploads"]["pending"] == 0 && held > 3.0).then_some(())
    });
    proxy.set_stalled(false);
    wait_replicated(&m, "eu");
    let s = m.status(None);
    let eu = &s["replication"]["eu"];
    let (missed, completed) = (
        eu["missed_target"].as_u64().unwrap(),
        eu["completed"].as_u64().unwrap(),
    );
    assert!(missed >= 2, "both held-up files missed it: {s}");
    assert!(missed <= completed, "{s}");
    let text = common::scrape(port);
    assert_eq!(
        common::metric(
            &text,
            "regionfs_replication_missed_target{destination=\"eu\"}"
        ),
        Some(missed as f64),
        "{text}"
    );
}

/// Tags another client changes on a source version after it was copied:
/// `verify` names the difference and `resync` brings the replica's tags
/// over, without writing a new replica version.
#[tokio::test(flavor = "multi_thread")]
async fn tags_changed_on_the_source_after_the_copy_are_reported_by_verify_and_repaired_by_resync() {
    let r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    let m = Mount::start(&r.config(c.path(), ""));
    write_with_tags(&m.path("doc.txt"), b"tagged", &[("class", "open")]);
    wait_replicated(&m, "eu");
    let (code, out) = common::verify(&m.config);
    assert_eq!(code, Some(0), "{out}");
    let replicas = replica_history(&r.dst, "doc.txt").await.len();
    let secret = BTreeMap::from([("class".to_string(), "secret".to_string())]);
    r.src.put_tags("doc.txt", None, &secret).await.unwrap();

    let (code, out) = common::verify(&m.config);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("tags differ") && out.contains("class=secret") && out.contains("class=open"),
        "{out}"
    );
    let resync = common::regionfs_cli(&["resync"], &m.config);
    assert!(
        resync.status.success(),
        "{}",
        String::from_utf8_lossy(&resync.stderr)
    );
    assert_eq!(r.dst.get_tags("doc.txt", None).await.unwrap(), secret);
    assert_eq!(
        replica_history(&r.dst, "doc.txt").await.len(),
        replicas,
        "the tags were set on the replica, no version written"
    );
    let (code, out) = common::verify(&m.config);
    assert_eq!(code, Some(0), "{out}");
}

/// One CRC-64/NVME from the close to every replica: the uploaded source
/// (in parts), its replica (copied in parts) and the journal's record agree,
/// and `verify` finds a replica rewritten behind regionfs's back at the same
/// size and metadata from the checksums the stores keep, without reading a
/// byte (the ETags of multipart objects do not name their bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_rewritten_replica_by_the_checksums_the_stores_keep() {
    use regionfs::store::checksum::Crc64;
    use regionfs::store::CHECKSUM_META;
    let r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    let m = Mount::start(&r.config(c.path(), ""));
    let body: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    let small = b"one request".to_vec();
    std::fs::write(m.path("big.bin"), &body).unwrap();
    std::fs::write(m.path("small.txt"), &small).unwrap();
    wait_replicated(&m, "eu");
    for (key, bytes) in [("big.bin", &body), ("small.txt", &small)] {
        let want = Some(Crc64::of(bytes).to_base64());
        let src = r.src.head(key, None).await.unwrap();
        let dst = r.dst.head(key, None).await.unwrap();
        assert_eq!(
            src.crc64nvme, want,
            "{key}: the source keeps the CRC of the bytes closed"
        );
        assert_eq!(dst.crc64nvme, want, "{key}: so does the replica");
        assert_eq!(dst.metadata.get(CHECKSUM_META), want.as_ref(), "{key}");
    }
    let (code, out) = common::verify(&m.config);
    assert_eq!(code, Some(0), "{out}");

    rewrite_flipping_one_byte(&r.dst, "big.bin", &body).await;
    let json = common::regionfs_cli(&["verify", "--json"], &m.config);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["checked"], 2, "{v}");
    let d = &v["differences"][0];
    assert_eq!(d["key"], "big.bin", "{v}");
    assert_eq!(d["difference"]["kind"], "bytes_differ", "{v}");
    assert_eq!(
        d["difference"]["source_crc64nvme"],
        Crc64::of(&body).to_hex(),
        "{v}"
    );
    assert_eq!(v["differences"].as_array().unwrap().len(), 1, "{v}");
}

/// What another client does behind regionfs's back: the replica of `key`
/// written again with its size, content type and metadata (the source
/// version it claims included), one byte flipped.
async fn rewrite_flipping_one_byte(dst: &S3Store, key: &str, body: &[u8]) {
    use regionfs::store::{PutBody, PutOptions};
    let replica = dst.head(key, None).await.unwrap();
    let mut flipped = body.to_vec();
    flipped[body.len() / 2] ^= 0xff;
    dst.put(
        key,
        PutBody::Bytes(flipped.into()),
        &PutOptions {
            content_type: replica.content_type.clone(),
            metadata: replica.metadata.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_deep_finds_a_replica_whose_bytes_changed_at_the_same_size_and_metadata() {
    let r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    let m = Mount::start(&r.config(c.path(), ""));
    // 20 MB: uploaded in parts, so its ETag does not name its bytes.
    let body: Vec<u8> = (0..20_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(m.path("big.bin"), &body).unwrap();
    std::fs::write(m.path("small.txt"), b"left alone").unwrap();
    wait_replicated(&m, "eu");
    let (code, out) = common::verify(&m.config);
    assert_eq!(code, Some(0), "{out}");

    rewrite_flipping_one_byte(&r.dst, "big.bin", &body).await;

    let deep = common::regionfs_cli(&["verify", "--deep"], &m.config);
    let text = String::from_utf8_lossy(&deep.stdout);
    assert_eq!(deep.status.code(), Some(1), "{text}");
    assert!(
        text.contains("big.bin → eu: bytes differ at the same size: source CRC-64/NVME "),
        "{text}"
    );
    assert!(
        text.contains("2 replica(s) checked, 1 difference(s)"),
        "{text}"
    );
    let json = common::regionfs_cli(&["verify", "--deep", "--json"], &m.config);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["checked"], 2);
    let d = &v["differences"][0];
    assert_eq!(d["key"], "big.bin");
    assert_eq!(d["destination"], "eu");
    assert_eq!(d["difference"]["kind"], "bytes_differ");
    assert!(d["replica_version"].is_string(), "{d}");
    assert_ne!(
        d["difference"]["source_crc64nvme"],
        d["difference"]["replica_crc64nvme"]
    );
}
