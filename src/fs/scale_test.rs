//! What one file costs the core must not grow with the files the mount has
//! seen: the journal jobs, store calls and scheduler steps of a file's
//! create, write, close, chown, chmod and utimens (as `tar -xpf` does) are
//! counted after 300 files and again after 3,000, with every upload still
//! queued (the store behind the writer), and must be the same. Counts, not
//! times: a scan of what is queued or known shows as a growing count only
//! where it costs a call, so the queue's own work is counted too.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Config;
use crate::fs::{inode::ROOT, Caller, SetAttr};
use crate::service::{start_with_stores, Service};
use crate::store::{FaultyStore, MemoryStore, ObjectStore};

const ME: Caller = Caller { uid: 0, gid: 0 };

/// Journal jobs, store calls, scheduler steps.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    journal: u64,
    store: u64,
    scheduler: u64,
}

fn counts(svc: &Service, faulty: &FaultyStore) -> Counts {
    Counts {
        journal: svc.journal.jobs_sent(),
        store: faulty.attempts.load(Ordering::SeqCst),
        scheduler: svc.uploader.examined(),
    }
}

/// Extracts files `from..to` as tar does, 10 per directory.
async fn extract(svc: &Service, from: usize, to: usize) {
    let core = &svc.core;
    let body = vec![b'x'; 1500];
    let mut dir = ROOT;
    for i in from..to {
        if i % 10 == 0 || i == from {
            let name = format!("d{:05}", i / 10);
            dir = match core.mkdir(ROOT, name.as_bytes(), 0o755, ME).await {
                Ok(a) => a.ino,
                Err(_) => core.lookup(ROOT, name.as_bytes()).await.unwrap().ino,
            };
        }
        let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL;
        let name = format!("f{i:06}.c");
        let (attr, opened) = core
            .create(dir, name.as_bytes(), 0o644 | libc::S_IFREG, flags, ME)
            .await
            .unwrap();
        core.write(opened.fh, 0, &body).await.unwrap();
        core.flush(opened.fh).await.unwrap();
        core.release(opened.fh).await.unwrap();
        for set in [
            SetAttr {
                uid: Some(1000),
                gid: Some(1000),
                ..Default::default()
            },
            SetAttr {
                mode: Some(0o640),
                ..Default::default()
            },
            SetAttr {
                atime: Some(SystemTime::UNIX_EPOCH),
                mtime: Some(SystemTime::UNIX_EPOCH),
                ..Default::default()
            },
        ] {
            core.setattr(attr.ino, set).await.unwrap();
        }
    }
}

#[test]
fn a_files_journal_store_and_scheduler_work_does_not_grow_with_the_files_seen() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&format!(
        "[source]\nname = \"src\"\nregion = \"us-east-1\"\nbucket = \"src\"\n\
         [[destination]]\nname = \"eu\"\nregion = \"eu-west-1\"\nbucket = \"dst\"\n\
         [[rule]]\nid = \"all\"\ndestination = \"eu\"\n\
         [cache]\ndir = \"{}\"\nwrite_back_delay = \"1h\"\n[mount]\npassthrough = false\n",
        dir.path().join("cache").display()
    ))
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let faulty = Arc::new(FaultyStore::new(Arc::new(MemoryStore::new("src"))));
    let mut dests: HashMap<String, Arc<dyn ObjectStore>> = HashMap::new();
    dests.insert("eu".into(), Arc::new(MemoryStore::new("dst")));
    let svc = rt
        .block_on(start_with_stores(&config, faulty.clone(), dests, ME))
        .unwrap();
    svc.core.set_kernel_caching(false, false);
    let per_file = |from: usize, to: usize| {
        let before = counts(&svc, &faulty);
        rt.block_on(extract(&svc, from, to));
        let after = counts(&svc, &faulty);
        Counts {
            journal: after.journal - before.journal,
            store: after.store - before.store,
            scheduler: after.scheduler - before.scheduler,
        }
    };
    rt.block_on(extract(&svc, 0, 200));
    let early = per_file(200, 300);
    rt.block_on(extract(&svc, 300, 3000));
    let late = per_file(3000, 3100);
    assert_eq!(
        svc.uploader.pending_count(),
        3100 + 310,
        "every file is one queued upload (its metadata changes go with it), every directory its marker"
    );
    // The journal and the store: exactly the same work. The scheduler wakes
    // on each submit and on its timers, which run beside the writer: a slower
    // batch (a loaded machine) sees a few more timer wakes. A pass that
    // scanned the queue would examine thousands of heads per batch here.
    assert_eq!(
        (early.journal, early.store),
        (late.journal, late.store),
        "journal jobs and store calls for 100 files after 200 ({early:?}) and after 3,000 ({late:?})"
    );
    assert!(
        late.scheduler <= 2 * early.scheduler + 10,
        "scheduler steps for 100 files after 200 ({early:?}) and after 3,000 ({late:?})"
    );
    let _enter = rt.enter();
    drop(svc);
}
