//! Fault injection on the mount-free core: a journal whose disk writes fail
//! after N commits, and a store that fails uploads. Nothing acknowledged may be
//! lost; nothing unacknowledged may be reported uploaded.

use std::sync::Arc;
use std::time::Duration;

use regionfs::config::Config;
use regionfs::fs::inode::ROOT;
use regionfs::fs::Caller;
use regionfs::service::{start_with_store, Service};
use regionfs::store::{FaultyStore, MemoryStore, ObjectStore};

const WHO: Caller = Caller { uid: 0, gid: 0 };

fn config(cache: &std::path::Path) -> Config {
    Config::parse(&format!(
        r#"
[source]
name = "src"
region = "us-east-1"
bucket = "b"
[cache]
dir = "{}"
max_size = "64MiB"
[durability]
fsync = "local"
"#,
        cache.display()
    ))
    .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn write_file(svc: &Service, name: &str, body: &[u8]) -> Result<(), regionfs::fs::FsError> {
    let (_, opened) = svc
        .core
        .create(
            ROOT,
            name.as_bytes(),
            0o644,
            libc::O_WRONLY | libc::O_CREAT,
            WHO,
        )
        .await?;
    let fh = opened.fh;
    svc.core.write(fh, 0, body).await?;
    let flushed = svc.core.flush(fh).await;
    let _ = svc.core.release(fh).await;
    flushed
}

#[test]
fn a_journal_that_stops_committing_loses_no_acknowledged_write() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(cache.path());
    let mem = Arc::new(MemoryStore::new("b"));
    let faulty = Arc::new(FaultyStore::new(mem.clone()));
    // Uploads are held back so the journal failure hits mid-stream.
    faulty.fail_permanently(true);
    let (acked, refused) = {
        let rt = runtime();
        rt.block_on(async {
            let svc = start_with_store(&cfg, faulty.clone(), WHO).await.unwrap();
            svc.journal.fail_commits_after(5);
            let (mut acked, mut refused) = (Vec::new(), Vec::new());
            for i in 0..12 {
                let name = format!("f{i}");
                match write_file(&svc, &name, name.as_bytes()).await {
                    Ok(()) => acked.push(name),
                    Err(e) => {
                        assert_eq!(e.errno(), libc::EIO, "a failed journal commit is EIO: {e}");
                        refused.push(name)
                    }
                }
            }
            (acked, refused)
        })
        // Dropping the runtime is the crash: every task and handle goes away.
    };
    assert!(
        !acked.is_empty() && !refused.is_empty(),
        "acked {acked:?} refused {refused:?}"
    );
    faulty.fail_permanently(false);
    let rt = runtime();
    rt.block_on(async {
        let svc = start_with_store(&cfg, faulty.clone(), WHO).await.unwrap();
        assert_eq!(svc.drain(Duration::from_secs(20), &|_| {}).await, 0);
        for name in &acked {
            let body = mem
                .get(name, Default::default())
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(&body[..], name.as_bytes(), "acknowledged {name}");
        }
        for name in &refused {
            assert!(
                mem.history(name).is_empty(),
                "{name} was never acknowledged, yet uploaded"
            );
            assert!(
                svc.journal.latest(name.clone()).await.unwrap().is_none(),
                "{name} is in the journal"
            );
        }
        assert!(
            !svc.quarantined.is_empty(),
            "the refused writes' cache files are kept in quarantine"
        );
    });
}

#[test]
fn uploads_that_fail_transiently_then_permanently_all_land_once_fixed() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(cache.path());
    let mem = Arc::new(MemoryStore::new("b"));
    let faulty = Arc::new(FaultyStore::new(mem.clone()));
    let rt = runtime();
    rt.block_on(async {
        let svc = start_with_store(&cfg, faulty.clone(), WHO).await.unwrap();
        faulty.fail_next(7);
        for i in 0..5 {
            write_file(&svc, &format!("t{i}"), b"transient")
                .await
                .unwrap();
        }
        assert_eq!(
            svc.drain(Duration::from_secs(30), &|_| {}).await,
            0,
            "transient failures retry until done"
        );
        faulty.fail_permanently(true);
        write_file(&svc, "p", b"permanent").await.unwrap();
        // The failure is visible in the journal, and nothing is dropped.
        for _ in 0..200 {
            if svc.journal.upload_summary().await.unwrap().failed == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let s = svc.journal.upload_summary().await.unwrap();
        assert_eq!((s.pending, s.failed), (1, 1));
        assert!(mem.history("p").is_empty());
    });
    drop(rt);
    faulty.fail_permanently(false);
    let rt = runtime();
    rt.block_on(async {
        let svc = start_with_store(&cfg, faulty.clone(), WHO).await.unwrap();
        assert_eq!(svc.drain(Duration::from_secs(20), &|_| {}).await, 0);
        for i in 0..5 {
            assert_eq!(
                mem.history(&format!("t{i}")).len(),
                1,
                "exactly one version of t{i}"
            );
        }
        assert_eq!(mem.history("p")[0].1.as_deref(), Some(&b"permanent"[..]));
    });
}

/// A write bigger than what the journal takes inline, so its close fsyncs
/// the cache file.
const BIG: usize = 256 * 1024;

#[test]
fn a_failed_cache_fsync_stops_every_write_until_a_restart_rechecks_the_disk() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(cache.path());
    let mem = Arc::new(MemoryStore::new("b"));
    let faulty = Arc::new(FaultyStore::new(mem.clone()));
    let rt = runtime();
    rt.block_on(async {
        let svc = start_with_store(&cfg, faulty.clone(), WHO).await.unwrap();
        // The first upload attempts fail (transiently, retried with backoff):
        // what was acknowledged before the disk failed lands after it.
        faulty.fail_next(4);
        write_file(&svc, "before", &vec![1u8; BIG]).await.unwrap();
        // A descriptor open across the failure.
        let (_, open) = svc
            .core
            .create(
                ROOT,
                b"open-across",
                0o644,
                libc::O_WRONLY | libc::O_CREAT,
                WHO,
            )
            .await
            .unwrap();
        svc.cache.fence().fail_io_after(0);
        let e = write_file(&svc, "during", &vec![2u8; BIG])
            .await
            .unwrap_err();
        assert_eq!(e.errno(), libc::EIO, "{e}");
        // The disk answers again, but nothing it is given can be trusted now.
        svc.cache.fence().fail_io_after(-1);
        let e = write_file(&svc, "after", b"small").await.unwrap_err();
        assert_eq!(e.errno(), libc::EIO, "a create after the failure: {e}");
        let e = svc.core.mkdir(ROOT, b"dir", 0o755, WHO).await.unwrap_err();
        assert_eq!(e.errno(), libc::EIO, "a mkdir after the failure: {e}");
        let e = svc.core.write(open.fh, 0, b"late").await.unwrap_err();
        assert_eq!(e.errno(), libc::EIO, "a write on an older descriptor: {e}");
        let _ = svc.core.release(open.fh).await;
        // Reads go on.
        let attr = svc.core.lookup(ROOT, b"before").await.unwrap();
        assert_eq!(attr.size, BIG as u64);
        // Status says why, and counts as failed.
        let status = regionfs::status::status(&svc.journal, &cfg).await.unwrap();
        let cause = status
            .local_disk_failed
            .clone()
            .expect("status names the failure");
        assert!(cause.contains("Input/output error"), "{cause}");
        assert_eq!(
            status.health(Duration::from_secs(900)),
            regionfs::status::Health::Failed
        );
        // What was acknowledged before still goes up.
        assert!(mem.history("before").is_empty(), "not uploaded yet");
        assert_eq!(svc.drain(Duration::from_secs(20), &|_| {}).await, 0);
    });
    drop(rt);
    assert_eq!(
        mem.history("before").len(),
        1,
        "acknowledged before the failure"
    );
    assert!(
        mem.history("during").is_empty(),
        "its close failed: never acknowledged"
    );
    assert!(mem.history("after").is_empty());
    // The next start re-checks the cache and takes writes again.
    let rt = runtime();
    rt.block_on(async {
        let svc = start_with_store(&cfg, faulty.clone(), WHO).await.unwrap();
        let status = regionfs::status::status(&svc.journal, &cfg).await.unwrap();
        assert_eq!(status.local_disk_failed, None, "re-checked at start");
        write_file(&svc, "later", &vec![3u8; BIG]).await.unwrap();
        assert_eq!(svc.drain(Duration::from_secs(20), &|_| {}).await, 0);
    });
    assert_eq!(mem.history("later").len(), 1);
}

#[test]
fn a_journal_commit_failing_on_its_disk_stops_the_mounts_writes() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(cache.path());
    let mem = Arc::new(MemoryStore::new("b"));
    let rt = runtime();
    rt.block_on(async {
        let svc = start_with_store(&cfg, mem.clone(), WHO).await.unwrap();
        write_file(&svc, "before", b"acknowledged").await.unwrap();
        svc.journal.fail_commits_after(0);
        let e = write_file(&svc, "refused", b"x").await.unwrap_err();
        assert_eq!(e.errno(), libc::EIO, "{e}");
        assert!(
            svc.cache
                .fence()
                .cause()
                .is_some_and(|c| c.contains("injected")),
            "{:?}",
            svc.cache.fence().cause()
        );
        // The journal commits again, yet the mount stays stopped.
        svc.journal.fail_commits_after(-1);
        let e = svc.core.mkdir(ROOT, b"dir", 0o755, WHO).await.unwrap_err();
        assert_eq!(e.errno(), libc::EIO, "{e}");
    });
}

/// With a `[[destination]]` "eu" and a rule sending everything there.
fn config_replicated(cache: &std::path::Path) -> Config {
    Config::parse(&format!(
        r#"
[source]
name = "src"
region = "us-east-1"
bucket = "b"
[[destination]]
name = "eu"
region = "eu-west-1"
bucket = "d"
[[rule]]
id = "all"
destination = "eu"
[cache]
dir = "{}"
max_size = "64MiB"
[durability]
fsync = "local"
"#,
        cache.display()
    ))
    .unwrap()
}

/// `key` written with `body` through a first host (no replication there),
/// everything uploaded; the host then stops.
fn written_by_another_host(store: &Arc<FaultyStore>, key: &str, body: &[u8]) {
    let first = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let svc = start_with_store(&config(first.path()), store.clone(), WHO)
            .await
            .unwrap();
        write_file(&svc, key, body).await.unwrap();
        assert_eq!(svc.drain(Duration::from_secs(60), &|_| {}).await, 0);
    });
}

#[test]
fn bodies_cut_short_never_become_a_cached_file_or_a_replica() {
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let mem = Arc::new(MemoryStore::new("b"));
    let faulty = Arc::new(FaultyStore::new(mem.clone()));
    let dest = Arc::new(MemoryStore::new("d"));
    let dests = || {
        std::collections::HashMap::from([("eu".to_string(), dest.clone() as Arc<dyn ObjectStore>)])
    };
    // Written by a first host, then every GET body from the source is cut short.
    written_by_another_host(&faulty, "f", &body);
    faulty.cut_bodies(true);
    // A second host reads it (nothing cached) and replicates it.
    let second = tempfile::tempdir().unwrap();
    let cfg = config_replicated(second.path());
    let rt = runtime();
    rt.block_on(async {
        let svc = regionfs::service::start_with_stores(&cfg, faulty.clone(), dests(), WHO)
            .await
            .unwrap();
        let version = mem.history("f")[0].0.clone();
        let tasks = svc
            .journal
            .add_resync_tasks(vec![(
                "f".to_string(),
                version,
                body.len() as u64,
                regionfs::journal::NewTask {
                    destination: "eu".into(),
                    rule_id: "all".into(),
                    kind: regionfs::journal::TaskKind::Version,
                    storage_class: None,
                    checksum: None,
                },
            )])
            .await
            .unwrap();
        svc.replicator.enqueue(tasks);
        let read = async {
            let attr = svc.core.lookup(ROOT, b"f").await?;
            let opened = svc.core.open(attr.ino, libc::O_RDONLY).await?;
            let got = svc.core.read(opened.fh, 0, body.len() as u32).await;
            let _ = svc.core.release(opened.fh).await;
            got
        };
        match tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("a read of a cut body answers")
        {
            // A short read would tell the reader the file ends there.
            Ok(got) => panic!(
                "a read of {} bytes answered while the body was cut",
                got.len()
            ),
            Err(e) => assert_eq!(e.errno(), libc::EIO, "{e}"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(dest.history("f").is_empty(), "no replica of half the bytes");
        // The connection behaves again: the whole file, read and replicated.
        faulty.cut_bodies(false);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let got = loop {
            let attr = svc.core.lookup(ROOT, b"f").await.unwrap();
            let opened = svc.core.open(attr.ino, libc::O_RDONLY).await.unwrap();
            let got = svc.core.read(opened.fh, 0, body.len() as u32).await;
            let _ = svc.core.release(opened.fh).await;
            match got {
                Ok(g) if g.len() == body.len() => break g,
                _ if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                other => panic!("the read after the cut: {other:?}"),
            }
        };
        assert!(got == body, "the whole file, not the cached half");
        assert_eq!(svc.drain(Duration::from_secs(60), &|_| {}).await, 0);
        let replicas = dest.history("f");
        assert_eq!(replicas.len(), 1, "one replica");
        assert_eq!(replicas[0].1.as_deref(), Some(&body[..]), "of every byte");
    });
}

/// A large file is read in parallel ranges, which carry no checksum: their
/// CRCs, combined, must be the version's, or the copy is not kept. A proxy
/// that garbles bytes in ranged answers leaves no wrong copy in the cache:
/// once it behaves, the next read fetches again and gets every byte right.
#[test]
fn ranges_that_do_not_combine_to_the_version_checksum_are_never_kept() {
    let body: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 239) as u8).collect();
    let mem = Arc::new(MemoryStore::new("b"));
    let faulty = Arc::new(FaultyStore::new(mem.clone()));
    written_by_another_host(&faulty, "big", &body);
    faulty.flip_ranges(true);
    let second = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let svc = start_with_store(&config(second.path()), faulty.clone(), WHO)
            .await
            .unwrap();
        let read_all = || async {
            let attr = svc.core.lookup(ROOT, b"big").await?;
            let opened = svc.core.open(attr.ino, libc::O_RDONLY).await?;
            let mut got = Vec::new();
            let mut result = Ok(());
            while got.len() < body.len() {
                match svc.core.read(opened.fh, got.len() as u64, 1 << 20).await {
                    Ok(b) if b.is_empty() => break,
                    Ok(b) => got.extend_from_slice(&b),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            let _ = svc.core.release(opened.fh).await;
            result.map(|_| got)
        };
        let garbled = read_all().await;
        assert!(
            garbled.is_err(),
            "no byte of a copy that fails its check is read: {:?}",
            garbled.map(|g| g.len())
        );
        // The download ends with the check; its copy is dropped.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        faulty.flip_ranges(false);
        loop {
            match read_all().await {
                Ok(g) if g == body => break,
                other => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "a good copy after the proxy behaves: {:?}",
                        other.map(|g| g.len())
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
}
