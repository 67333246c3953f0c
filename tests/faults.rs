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
