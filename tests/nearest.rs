//! Reads from the nearest replica: the source sits behind a proxy that adds
//! 40 ms each way (a far region); the destination is near. Which region served
//! the bytes is read from the per-region byte counters in metrics.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{bucket_contents, free_port, metric, scrape, wait_for, LatencyProxy, Mount, Regions};
use regionfs::store::ObjectStore;

const DRAIN: Duration = Duration::from_secs(180);
const FAR: Duration = Duration::from_millis(40);

fn wait_replicated(m: &Mount) {
    wait_for("replication to drain", DRAIN, || {
        let s = m.status(None);
        (s["uploads"]["pending"] == 0 && s["replication"]["eu"]["pending"] == 0).then_some(())
    });
}

/// The test regions' config with the source reached through `proxy`.
fn far_source_config(
    r: &Regions,
    proxy: &LatencyProxy,
    cache: &std::path::Path,
    extra: &str,
) -> String {
    r.config(cache, extra).replacen(
        &format!("endpoint = \"{}\"", r.a.endpoint),
        &format!("endpoint = \"{}\"", proxy.endpoint()),
        1,
    )
}

/// A mount that reads from the source first, reached through `proxy`,
/// with its metrics on `port`.
fn source_first_mount(
    r: &Regions,
    proxy: &LatencyProxy,
    cache: &std::path::Path,
    port: u16,
) -> Mount {
    Mount::start(&far_source_config(
        r,
        proxy,
        cache,
        &format!("[read]\nprefer = \"source\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    ))
}

fn read_bytes(port: u16, region: &str) -> f64 {
    metric(
        &scrape(port),
        &format!("regionfs_read_bytes{{region=\"{region}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Waits until the mount's probes rank `region` first for reads.
fn wait_first(m: &Mount, region: &str) {
    wait_for(
        "the probes to rank the regions",
        Duration::from_secs(30),
        || (m.status(None)["reads"]["order"][0] == region).then_some(()),
    );
}

/// (first byte, whole file) read times of `path`.
fn timed_read(path: &std::path::Path) -> (Duration, Duration, Vec<u8>) {
    let start = Instant::now();
    let mut f = std::fs::File::open(path).unwrap();
    let mut first = [0u8; 1];
    f.read_exact(&mut first).unwrap();
    let first_byte = start.elapsed();
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    let mut all = first.to_vec();
    all.extend(rest);
    (first_byte, start.elapsed(), all)
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_come_from_the_near_replica_and_never_serve_an_older_version() {
    let r = Regions::start().await;
    let proxy = LatencyProxy::start(r.a.port, FAR);
    let wc = tempfile::tempdir().unwrap();
    let writer = Mount::start(&far_source_config(&r, &proxy, wc.path(), ""));
    let big: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(writer.path("big.bin"), &big).unwrap();
    std::fs::write(writer.path("note.txt"), b"version one").unwrap();
    wait_replicated(&writer);

    // A reader elsewhere: fresh cache, nearest region preferred (the default).
    let (rc, port) = (tempfile::tempdir().unwrap(), free_port());
    let reader = Mount::start(&far_source_config(
        &r,
        &proxy,
        rc.path(),
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    ));
    wait_first(&reader, "eu");
    let (near_first, near_all, got) = timed_read(&reader.path("big.bin"));
    assert!(got == big, "the bytes read equal the bytes written");
    assert_eq!(
        read_bytes(port, "eu"),
        big.len() as f64,
        "served by the near replica"
    );
    assert_eq!(read_bytes(port, "us-east"), 0.0);
    let text = scrape(port);
    let rtt = |r: &str| {
        metric(
            &text,
            &format!("regionfs_region_rtt_seconds{{region=\"{r}\"}}"),
        )
    };
    assert!(rtt("us-east").unwrap() > rtt("eu").unwrap(), "{text}");
    assert_eq!(
        metric(&text, "regionfs_region_reachable{region=\"eu\"}"),
        Some(1.0)
    );
    let st = reader.status(None);
    assert!(
        st["reads"]["regions"]["us-east"]["rtt_ms"]
            .as_f64()
            .unwrap()
            >= 80.0,
        "{st}"
    );

    // Another client writes a newer version straight to the source: the
    // replica now lags (it holds version one). The reader must see the new one.
    let newer = b"version two, not replicated yet".to_vec();
    common::put_bytes(&r.src, "note.txt", newer.clone()).await;
    let read = wait_for("the new version", Duration::from_secs(20), || {
        let got = std::fs::read(reader.path("note.txt")).ok()?;
        (got != b"version one").then_some(got)
    });
    assert_eq!(read, newer, "never the replica's older version");
    assert_eq!(read_bytes(port, "us-east"), newer.len() as f64);

    // The same file through a mount that reads from the source, for the note.
    let (sc, sport) = (tempfile::tempdir().unwrap(), free_port());
    let far = Mount::start(&far_source_config(
        &r,
        &proxy,
        sc.path(),
        &format!("[read]\nprefer = \"source\"\n[metrics]\nlisten = \"127.0.0.1:{sport}\"\n"),
    ));
    wait_for("probes", Duration::from_secs(30), || {
        far.status(None)["reads"]["order"][0].as_str().map(|_| ())
    });
    let (far_first, far_all, got) = timed_read(&far.path("big.bin"));
    assert!(got == big);
    assert_eq!(
        read_bytes(sport, "us-east"),
        big.len() as f64,
        "prefer = source reads the source"
    );
    let mib = big.len() as f64 / (1 << 20) as f64;
    eprintln!(
        "MEASURE nearest 32 MiB read, source {} ms away each way: near replica first byte {:.1} ms, {:.1} MiB/s; far source first byte {:.1} ms, {:.1} MiB/s",
        FAR.as_millis(),
        near_first.as_secs_f64() * 1000.0,
        mib / near_all.as_secs_f64(),
        far_first.as_secs_f64() * 1000.0,
        mib / far_all.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_source_cut_off_writes_land_in_the_cache_and_replicated_files_read_from_the_replica(
) {
    let r = Regions::start().await;
    let proxy = LatencyProxy::start(r.a.port, FAR);
    let c = tempfile::tempdir().unwrap();
    let port = free_port();
    let m = Mount::start(&far_source_config(
        &r,
        &proxy,
        c.path(),
        &format!("[read]\nprefer = \"source\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n[cache]\nmax_size = \"64MiB\"\n"),
    ));
    let files: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                format!("old{i}.txt"),
                format!("replicated before the outage {i}").into_bytes(),
            )
        })
        .collect();
    for (name, body) in &files {
        std::fs::write(m.path(name), body).unwrap();
    }
    wait_replicated(&m);
    // A fresh mount (nothing in its cache) that has seen the names.
    let mut m = m;
    assert!(m.unmount().success());
    std::fs::remove_dir_all(c.path().join("cache/clean")).ok();
    m.remount();
    for (name, body) in &files {
        assert_eq!(
            std::fs::metadata(m.path(name)).unwrap().len(),
            body.len() as u64
        );
    }

    proxy.set_cut(true);
    wait_for(
        "the source to be seen down",
        Duration::from_secs(30),
        || {
            m.status(None)["reads"]["regions"]["us-east"]["reachable"]
                .as_bool()
                .is_some_and(|up| !up)
                .then_some(())
        },
    );
    // Writes keep landing in the cache.
    for i in 0..20 {
        std::fs::write(
            m.path(&format!("new{i}.txt")),
            format!("written during the outage {i}"),
        )
        .unwrap();
    }
    // Replicated files are read from the replica.
    for (name, body) in &files {
        assert_eq!(&std::fs::read(m.path(name)).unwrap(), body);
    }
    let total: usize = files.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(read_bytes(port, "eu"), total as f64);
    let st = m.status(None);
    assert!(st["uploads"]["pending"].as_u64().unwrap() >= 20, "{st}");
    assert!(
        st["reads"]["regions"]["us-east"]["unreachable_since"].is_u64(),
        "{st}"
    );
    let text = common::regionfs_cli(&["status"], &m.config);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("source us-east unreachable since"), "{text}");

    proxy.set_cut(false);
    wait_replicated(&m);
    for i in 0..20 {
        let key = format!("new{i}.txt");
        let want = format!("written during the outage {i}").into_bytes();
        let got = r
            .src
            .get(&key, Default::default())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got, want);
        // Status said replication is done; under full-suite load a replica
        // was once not readable yet at this point (not reproduced alone):
        // wait with a deadline and say so (a replica never written still fails).
        let read = || async {
            r.dst
                .get(&key, Default::default())
                .await
                .ok()?
                .bytes()
                .await
                .ok()
        };
        let replica = match read().await {
            Some(b) => b,
            None => {
                eprintln!("{key} not readable at eu right after status said done; waiting");
                common::wait_for_async("the replica to be readable", Duration::from_secs(30), read)
                    .await
            }
        };
        assert_eq!(replica, want);
    }
}

/// Runs `op`, which asks a hung source, and checks that it returned within
/// 40 s: it gives up after 5 s and the probes' verdict, where the S3
/// client's timeouts (60 s read timeout, 3 attempts) would take minutes.
fn within_hung_bound<T>(what: &str, m: &Mount, op: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = op();
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(40),
        "{what} took {took:?}: {}",
        m.log_text()
    );
    out
}

fn eio<T>(r: &std::io::Result<T>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::EIO))
}

/// With the source hanging (connections open, nothing answered), creating a
/// file the mount has not seen waits only until its lookup has waited 5 s
/// and the probes find the source unreachable, not for the S3 client's
/// timeouts (60 s read timeout, 3 attempts: it took minutes); the file is
/// uploaded once the source answers again.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_source_hanging_a_new_file_is_created_in_seconds_and_uploaded_once_it_answers() {
    let r = Regions::start().await;
    let proxy = LatencyProxy::start(r.a.port, Duration::ZERO);
    let c = tempfile::tempdir().unwrap();
    let mut m = Mount::start(&far_source_config(&r, &proxy, c.path(), ""));
    proxy.set_stalled(true);
    let body = b"created while the source hangs";
    within_hung_bound("the create", &m, || std::fs::write(m.path("new.txt"), body)).unwrap();
    assert_eq!(std::fs::read(m.path("new.txt")).unwrap(), body);
    assert!(
        r.src.head("new.txt", None).await.is_err(),
        "nothing reached the source yet"
    );

    proxy.set_stalled(false);
    m.wait_uploaded(DRAIN);
    assert_eq!(
        bucket_contents(&r.src, "new.txt").await.get("new.txt"),
        Some(&body.to_vec())
    );
    assert!(m.unmount().success());
}

/// With the source hanging, a listing only it can answer and a read that
/// no cached copy or replica can serve fail with EIO once they have waited
/// 5 s and the probes find the source unreachable, not after the S3
/// client's timeouts (60 s read timeout, 3 attempts: minutes); both work
/// again once the source answers.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_source_hanging_a_listing_and_an_unreplicated_read_fail_in_seconds_and_work_once_it_answers(
) {
    let r = Regions::start().await;
    let body = b"put by another client, never replicated".to_vec();
    common::put_bytes(&r.src, "elsewhere.txt", body.clone()).await;
    let proxy = LatencyProxy::start(r.a.port, Duration::ZERO);
    let c = tempfile::tempdir().unwrap();
    let m = Mount::start(&far_source_config(&r, &proxy, c.path(), ""));
    // Seen (looked up) but neither listed nor read before the source hangs.
    assert_eq!(
        std::fs::metadata(m.path("elsewhere.txt")).unwrap().len(),
        body.len() as u64
    );

    proxy.set_stalled(true);
    let listing = within_hung_bound("the listing", &m, || {
        std::fs::read_dir(m.path("")).and_then(|d| d.collect::<std::io::Result<Vec<_>>>())
    });
    assert!(eio(&listing), "the listing failed with EIO: {listing:?}");
    let read = within_hung_bound("the read", &m, || std::fs::read(m.path("elsewhere.txt")));
    assert!(eio(&read), "the read failed with EIO: {read:?}");

    proxy.set_stalled(false);
    let names = wait_for("a listing once the source answers", DRAIN, || {
        let d = std::fs::read_dir(m.path("")).ok()?;
        d.map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<Vec<_>>>()
            .ok()
    });
    assert_eq!(names, vec![std::ffi::OsString::from("elsewhere.txt")]);
    assert_eq!(std::fs::read(m.path("elsewhere.txt")).unwrap(), body);
}

/// With the source hanging, a file it replicated is read from the replica:
/// the read gives up on the source once it has waited 5 s and the probes
/// find it unreachable, then asks the replicas (the read began while the
/// source still answered its probes, so none was in its list).
#[tokio::test(flavor = "multi_thread")]
async fn with_the_source_hanging_a_replicated_file_is_read_from_the_replica_in_seconds() {
    let r = Regions::start().await;
    let proxy = LatencyProxy::start(r.a.port, Duration::ZERO);
    let c = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut m = source_first_mount(&r, &proxy, c.path(), port);
    let body = b"replicated before the source hung".to_vec();
    std::fs::write(m.path("kept.txt"), &body).unwrap();
    wait_replicated(&m);
    // A fresh mount with no clean copy, that has seen the name.
    assert!(m.unmount().success());
    std::fs::remove_dir_all(c.path().join("cache/clean")).ok();
    m.remount();
    assert_eq!(
        std::fs::metadata(m.path("kept.txt")).unwrap().len(),
        body.len() as u64
    );

    proxy.set_stalled(true);
    let read = within_hung_bound("the read", &m, || std::fs::read(m.path("kept.txt")));
    assert_eq!(read.unwrap(), body);
    assert_eq!(read_bytes(port, "eu"), body.len() as f64);
    proxy.set_stalled(false);
    assert!(m.unmount().success());
}

/// Bytes that fail their checksum are read again from another region: the
/// source, read first, garbles what it serves on the way (every `GOOD` in a
/// body arrives as `EVIL`, lengths intact). A 2 KiB file (one GET, checked by
/// the SDK against the CRC the store keeps) and a 20 MiB one (ranged GETs,
/// their CRCs combined and compared) both read back exact, from the replica,
/// and the log says why.
#[tokio::test(flavor = "multi_thread")]
async fn bytes_that_fail_their_checksum_are_read_again_from_another_region() {
    let r = Regions::start().await;
    let proxy = LatencyProxy::start(r.a.port, Duration::ZERO);
    let c = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut m = source_first_mount(&r, &proxy, c.path(), port);
    let small = b"GOOD bytes only\n".repeat(128);
    let big: Vec<u8> = b"GOOD bytes, numbered: "
        .iter()
        .copied()
        .cycle()
        .take(20 << 20)
        .enumerate()
        .map(|(i, b)| if i % 4099 == 0 { (i / 4099) as u8 } else { b })
        .collect();
    std::fs::write(m.path("small.txt"), &small).unwrap();
    std::fs::write(m.path("big.bin"), &big).unwrap();
    wait_replicated(&m);
    assert!(m.unmount().success());
    std::fs::remove_dir_all(c.path().join("cache/clean")).ok();
    m.remount();
    proxy.set_rewrite(b"GOOD", b"EVIL");

    wait_first(&m, "us-east");
    assert!(std::fs::read(m.path("small.txt")).unwrap() == small);
    assert_eq!(read_bytes(port, "eu"), small.len() as f64);
    // The source is ranked last after the mismatch, until a probe answers.
    wait_for(
        "a probe of the source to answer again",
        Duration::from_secs(30),
        || {
            m.log_text()
                .contains("region reachable again")
                .then_some(())
        },
    );
    assert!(std::fs::read(m.path("big.bin")).unwrap() == big);
    assert_eq!(read_bytes(port, "eu"), (small.len() + big.len()) as f64);
    assert!(
        read_bytes(port, "us-east") > 0.0,
        "the source was read first"
    );
    let log = m.log_text();
    assert_eq!(
        log.matches("do not match the version's checksum").count(),
        2,
        "{log}"
    );
    assert!(m.unmount().success());
}

/// An unmount while the source hangs (connections open, nothing answered)
/// ends: the daemon waits `durability.drain_on_unmount` (4 s, past the 2 s
/// `write_back_delay`, so the upload's request is out and hanging), says
/// what is left, and exits within 10 s more, long before
/// the SDK's 60 s read timeout would end it. The upload stays in the journal
/// and lands at the next mount. (The file is created before the source
/// hangs, so the upload is the only request waiting on it.)
#[tokio::test(flavor = "multi_thread")]
async fn an_unmount_while_the_source_hangs_exits_and_the_upload_lands_at_the_next_mount() {
    let r = Regions::start().await;
    let proxy = LatencyProxy::start(r.a.port, Duration::ZERO);
    let c = tempfile::tempdir().unwrap();
    let mut m = Mount::start(&far_source_config(
        &r,
        &proxy,
        c.path(),
        "[durability]\ndrain_on_unmount = \"4s\"\n[cache]\nwrite_back_delay = \"2s\"\n",
    ));
    let body = b"uploaded while the source hangs";
    std::fs::write(m.path("hung.txt"), body).unwrap();
    proxy.set_stalled(true);
    assert_eq!(m.status(None)["uploads"]["pending"], 1);
    let start = Instant::now();
    let status = m.unmount();
    let took = start.elapsed();
    assert!(status.success(), "{status}: {}", m.log_text());
    assert!(
        took < Duration::from_secs(45),
        "the daemon took {took:?} to exit: {}",
        m.log_text()
    );
    assert!(
        proxy.holds(body),
        "the upload's request was sent and is hanging"
    );
    assert!(
        m.log_text().contains("1 upload(s) still pending"),
        "{}",
        m.log_text()
    );
    assert!(
        r.src.head("hung.txt", None).await.is_err(),
        "nothing reached the source"
    );

    proxy.set_stalled(false);
    m.remount();
    m.wait_uploaded(DRAIN);
    assert_eq!(
        bucket_contents(&r.src, "hung.txt").await.get("hung.txt"),
        Some(&body.to_vec())
    );
    assert!(m.unmount().success());
}

fn erofs(r: std::io::Result<impl Sized>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::EROFS))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_replica_mount_shows_the_replicated_tree_without_the_source_and_refuses_writes()
{
    use std::os::unix::fs::PermissionsExt;
    let r = Regions::start().await;
    let wc = tempfile::tempdir().unwrap();
    let writer = Mount::start(&r.config(wc.path(), ""));
    std::fs::create_dir(writer.path("docs")).unwrap();
    std::fs::write(writer.path("docs/a.txt"), b"alpha").unwrap();
    std::fs::write(writer.path("secret.txt"), b"shh").unwrap();
    std::fs::set_permissions(
        writer.path("secret.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    wait_replicated(&writer);

    // The source is unreachable from here (nothing listens on port 1): the
    // replica mount must not need it.
    let rc = tempfile::tempdir().unwrap();
    let text = r
        .config(
            rc.path(),
            "[mount]\nread_only = true\n[read]\nfrom = \"eu\"\n",
        )
        .replacen(
            &format!("endpoint = \"{}\"", r.a.endpoint),
            "endpoint = \"http://127.0.0.1:1\"",
            1,
        );
    let replica = Mount::start(&text);
    let mut names: Vec<String> = std::fs::read_dir(replica.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["docs", "secret.txt"]);
    assert_eq!(std::fs::read(replica.path("docs/a.txt")).unwrap(), b"alpha");
    let mode = std::fs::metadata(replica.path("secret.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "attributes come with the replica");
    assert!(erofs(std::fs::write(replica.path("new.txt"), b"x")));
    assert!(erofs(std::fs::write(replica.path("docs/a.txt"), b"x")));
    assert!(erofs(std::fs::create_dir(replica.path("d"))));
    assert!(erofs(std::fs::remove_file(replica.path("docs/a.txt"))));
    assert_eq!(std::fs::read(replica.path("docs/a.txt")).unwrap(), b"alpha");
}

#[tokio::test(flavor = "multi_thread")]
async fn as_of_shows_each_file_as_it_was_and_restore_brings_a_version_back() {
    use std::time::{SystemTime, UNIX_EPOCH};
    let r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    let m = Mount::start(&r.config(c.path(), ""));
    std::fs::write(m.path("a.txt"), b"first").unwrap();
    std::fs::write(m.path("b.txt"), b"deleted later").unwrap();
    wait_replicated(&m);
    // The instant: a whole second after the first versions landed (stores
    // keep whole seconds), and the next writes a whole second after it.
    let landed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = landed + 1;
    wait_for(
        "the clock to pass the instant",
        Duration::from_secs(5),
        || {
            (SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                > at)
                .then_some(())
        },
    );
    std::fs::write(m.path("a.txt"), b"second, longer").unwrap();
    std::fs::remove_file(m.path("b.txt")).unwrap();
    std::fs::write(m.path("c.txt"), b"created later").unwrap();
    wait_replicated(&m);

    let vc = tempfile::tempdir().unwrap();
    let view = Mount::start_with_args(&r.config(vc.path(), ""), &[&format!("--as-of=@{at}")]);
    let mut names: Vec<String> = std::fs::read_dir(view.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["a.txt", "b.txt"], "c.txt did not exist yet");
    assert_eq!(std::fs::read(view.path("a.txt")).unwrap(), b"first");
    assert_eq!(std::fs::read(view.path("b.txt")).unwrap(), b"deleted later");
    assert!(!view.path("c.txt").exists());
    assert!(erofs(std::fs::write(view.path("a.txt"), b"x")));

    let out = common::regionfs_cli(&["versions", "--json", "a.txt"], &m.config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["size"], 14);
    assert_eq!(list[0]["latest"], true);
    let first = list[1]["version"].as_str().unwrap().to_string();
    let gone = common::regionfs_cli(&["versions", "b.txt"], &m.config);
    assert!(String::from_utf8_lossy(&gone.stdout).contains("deleted"));

    let out = common::regionfs_cli(&["restore", "--version", &first, "a.txt"], &m.config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(m.path("a.txt")).unwrap(), b"first");
    wait_replicated(&m);
    let page = r.src.list_versions("a.txt", None, None).await.unwrap();
    assert_eq!(page.versions.iter().filter(|v| v.key == "a.txt").count(), 3);
    let now = r
        .src
        .get("a.txt", Default::default())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(now, &b"first"[..]);
    let replica = r
        .dst
        .get("a.txt", Default::default())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        replica,
        &b"first"[..],
        "the restore is replicated like any write"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_mount_reads_the_source_while_replication_is_behind_max_staleness() {
    let r = Regions::start().await;
    // The writer reaches the destination through a link the test can cut,
    // which holds replication back while the reader still sees the replica.
    let link = LatencyProxy::start(r.b.port, Duration::ZERO);
    let wc = tempfile::tempdir().unwrap();
    let writer = Mount::start(&r.config(wc.path(), "").replacen(
        &format!("endpoint = \"{}\"", r.b.endpoint),
        &format!("endpoint = \"{}\"", link.endpoint()),
        1,
    ));
    std::fs::write(writer.path("a.txt"), b"one").unwrap();
    wait_replicated(&writer);

    let bounded = "[mount]\nread_only = true\n[read]\nfrom = \"eu\"\nmax_staleness = \"3s\"\n";
    let (bc, uc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let reader = Mount::start(&r.config(bc.path(), bounded));
    let unbounded = Mount::start(&r.config(
        uc.path(),
        "[mount]\nread_only = true\n[read]\nfrom = \"eu\"\n",
    ));
    assert_eq!(std::fs::read(reader.path("a.txt")).unwrap(), b"one");
    assert_eq!(std::fs::read(unbounded.path("a.txt")).unwrap(), b"one");

    // The writer's replicator says how far it got; the bounded reader knows
    // its lag from that.
    common::wait_for_async(
        "the replication heartbeat",
        Duration::from_secs(30),
        || async {
            r.dst
                .head(".regionfs-replicated", None)
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    wait_for(
        "the reader to know the lag",
        Duration::from_secs(30),
        || {
            reader.status(None)["reads"]["replica_lag_s"]
                .as_f64()
                .map(|_| ())
        },
    );
    link.set_cut(true);
    std::fs::write(
        writer.path("a.txt"),
        b"two, written while replication is held back",
    )
    .unwrap();
    writer.wait_uploaded(DRAIN);
    let got = wait_for(
        "the bounded reader to see the new version",
        Duration::from_secs(60),
        || {
            let got = std::fs::read(reader.path("a.txt")).ok()?;
            (got != b"one").then_some(got)
        },
    );
    assert_eq!(got, b"two, written while replication is held back");
    // Status is the view the mount last published (every probe round, 2 s;
    // `reads_age_s` says how old): wait for one published after the switch.
    wait_for(
        "status to show the lag and the switch to the source",
        Duration::from_secs(30),
        || {
            let st = reader.status(None);
            (st["reads"]["replica_lag_s"].as_f64()? > 3.0
                && st["reads"]["reading_source_for_staleness"] == true)
                .then_some(())
        },
    );
    // Without the bound the replica mount shows what is replicated: the old one.
    assert_eq!(std::fs::read(unbounded.path("a.txt")).unwrap(), b"one");

    link.set_cut(false);
    wait_replicated(&writer);
    wait_for(
        "the reader to go back to the replica",
        Duration::from_secs(60),
        || (reader.status(None)["reads"]["reading_source_for_staleness"] != true).then_some(()),
    );
    // Its kernel may still hold the old version's attributes for their TTL,
    // so the new bytes are waited for.
    wait_for(
        "the unbounded replica mount to read the replicated version",
        Duration::from_secs(30),
        || {
            let got = std::fs::read(unbounded.path("a.txt"));
            if let Err(e) = &got {
                // Seen once in CI (ENOENT) right after replication resumed.
                eprintln!("reading a.txt on the unbounded mount: {e}");
            }
            (got.ok()? == b"two, written while replication is held back").then_some(())
        },
    );
    // The heartbeat replaces itself: the destination keeps one version of it.
    let beats = r
        .dst
        .list_versions(".regionfs-replicated", None, None)
        .await
        .unwrap();
    assert!(beats.versions.len() <= 2, "{:?}", beats.versions);
}
