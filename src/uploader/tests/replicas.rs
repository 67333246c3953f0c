//! The uploader with a replicator behind it: backlogs, giving way, fresh bytes.

use super::*;

/// An uploader from the rig's source that replicates everything to a
/// memory bucket "eu".
fn replicating(r: &Rig) -> (Uploader, crate::replicator::Replicator, Arc<MemoryStore>) {
    let dest = Arc::new(MemoryStore::new("dst"));
    let rep = crate::replicator::Replicator::start_with(
        &replicating_config(),
        r.faulty.clone(),
        HashMap::from([("eu".to_string(), dest.clone() as Arc<dyn ObjectStore>)]),
        r.journal.clone(),
        vec![],
    );
    (replicating_uploader(r, &rep), rep, dest)
}

/// [`replicating`] with a replicator that holds at most `held` open tasks
/// in memory and reads the rest from the rig's journal.
async fn replicating_held(
    r: &Rig,
    dest: Arc<dyn ObjectStore>,
    held: usize,
) -> (Uploader, crate::replicator::Replicator) {
    replicating_from_journal(r, dest, held, None).await
}

/// [`replicating_held`] whose fresh tasks beyond the memory budget read
/// their bytes from `clean` (the mount's cache) when given.
async fn replicating_from_journal(
    r: &Rig,
    dest: Arc<dyn ObjectStore>,
    held: usize,
    clean: Option<Arc<Cache>>,
) -> (Uploader, crate::replicator::Replicator) {
    let rep = crate::replicator::Replicator::start_from_journal(
        &replicating_config(),
        r.faulty.clone(),
        HashMap::from([("eu".to_string(), dest)]),
        r.journal.clone(),
        held,
        clean,
    )
    .await
    .unwrap();
    (replicating_uploader(r, &rep), rep)
}

fn replicating_uploader(r: &Rig, rep: &crate::replicator::Replicator) -> Uploader {
    let cfg = UploadConfig {
        multipart_threshold: crate::config::ByteSize(5 * MIB),
        ..Default::default()
    };
    Uploader::start(
        r.faulty.clone(),
        r.journal.clone(),
        r.cache.clone(),
        cfg,
        Duration::ZERO,
        Recovered::default(),
        EachVersion {
            replicator: Some(rep.clone()),
            ..Default::default()
        },
    )
    .0
}

fn replicating_config() -> crate::config::Config {
    crate::config::two_region_test_config("[[rule]]\nid = \"all\"\ndestination = \"eu\"\n")
}

/// Holds every small replica back (the uploads look backed up) until the
/// returned flag is cleared.
fn hold_replicas(rep: &crate::replicator::Replicator) -> Arc<std::sync::atomic::AtomicBool> {
    let hold = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h = hold.clone();
    rep.give_way_to(
        Arc::new(move || crate::replicator::SourceLoad {
            queued: if h.load(std::sync::atomic::Ordering::SeqCst) {
                1000
            } else {
                0
            },
            submitting: false,
        }),
        Duration::from_secs(60),
    );
    hold
}

/// Waits until every task is done, checking all along that at most
/// `held` are in memory.
async fn drained_holding_at_most(
    rep: &crate::replicator::Replicator,
    held: usize,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    while rep.pending_count() > 0 {
        assert!(rep.held_count() <= held, "held {}", rep.held_count());
        assert!(Instant::now() < deadline, "replicated within {within:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_backlog_longer_than_memory_holds_replicates_every_version_in_order() {
    let r = rig();
    let dest = Arc::new(MemoryStore::new("dst"));
    let (up, rep) = replicating_held(&r, dest.clone(), 4).await;
    let hold = hold_replicas(&rep);
    // 10 keys, 4 versions each, round robin: 40 tasks, 4 held in memory.
    let body = |k: usize, v: usize| format!("key {k} version {v}").into_bytes();
    for v in 0..4 {
        for k in 0..10 {
            uploaded(&r, &up, &format!("k{k}"), &body(k, v)).await;
        }
    }
    assert_eq!(rep.held_count(), 4, "the rest wait in the journal");
    assert_eq!(rep.pending_count(), 40, "all of them count as pending");
    // Memory never holds more than the share while the backlog drains.
    hold.store(false, std::sync::atomic::Ordering::SeqCst);
    drained_holding_at_most(&rep, 4, Duration::from_secs(30)).await;
    for k in 0..10 {
        let bodies: Vec<Vec<u8>> = dest
            .history(&format!("k{k}"))
            .into_iter()
            .map(|(_, b)| b.unwrap().to_vec())
            .collect();
        assert_eq!(
            bodies,
            (0..4).map(|v| body(k, v)).collect::<Vec<_>>(),
            "k{k}: every version once, in source order"
        );
    }
    assert!(r.journal.open_tasks().await.unwrap().is_empty());
}

#[tokio::test]
async fn failed_tasks_do_not_hold_back_the_rest_of_a_long_backlog() {
    let r = rig();
    let mem = Arc::new(MemoryStore::new("dst"));
    let dest = Arc::new(FaultyStore::new(mem.clone()));
    dest.refuse_prefix(Some("refused/"));
    let (up, rep) = replicating_held(&r, dest.clone(), 4).await;
    // More refused files than the share, then files it takes.
    for i in 0..10 {
        uploaded(&r, &up, &format!("refused/f{i}"), b"refused").await;
    }
    for i in 0..10 {
        uploaded(&r, &up, &format!("ok/f{i}"), b"taken").await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while (0..10).any(|i| mem.history(&format!("ok/f{i}")).is_empty()) {
        assert!(
            Instant::now() < deadline,
            "the others replicated past the refused ones"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rep.pending_count(), 10, "the refused ones stay pending");
    let failed = r.journal.open_tasks().await.unwrap();
    assert_eq!(failed.len(), 10);
    assert!(failed
        .iter()
        .all(|t| t.key.starts_with("refused/") && t.status == crate::journal::TaskStatus::Failed));
    // Fixed: they complete at the next retry.
    dest.refuse_prefix(None);
    rep.retry_failed();
    let deadline = Instant::now() + Duration::from_secs(20);
    while rep.pending_count() > 0 {
        assert!(
            Instant::now() < deadline,
            "the refused ones replicated once fixed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!((0..10).all(|i| mem.history(&format!("refused/f{i}")).len() == 1));
}

#[tokio::test]
async fn a_restart_reads_a_long_backlog_from_the_journal_a_share_at_a_time() {
    let r = rig();
    // A first process uploads 30 versions and dies before replicating any.
    {
        let dest = Arc::new(MemoryStore::new("dst"));
        let (up, rep) = replicating_held(&r, dest, 1000).await;
        let _hold = hold_replicas(&rep);
        for i in 0..30 {
            uploaded(&r, &up, &format!("f{i}"), format!("file {i}").as_bytes()).await;
        }
        assert_eq!(r.journal.open_tasks().await.unwrap().len(), 30);
    }
    // The next one holds 8 of them at a time and replicates them all.
    let dest = Arc::new(MemoryStore::new("dst2"));
    let (_up, rep) = replicating_held(&r, dest.clone(), 8).await;
    assert_eq!(rep.held_count(), 8);
    assert_eq!(rep.pending_count(), 30);
    drained_holding_at_most(&rep, 8, Duration::from_secs(30)).await;
    for i in 0..30 {
        assert_eq!(
            dest.history(&format!("f{i}"))[0].1.as_deref(),
            Some(format!("file {i}").as_bytes()),
            "f{i}"
        );
    }
    assert!(r.journal.open_tasks().await.unwrap().is_empty());
}

/// Submits `body` as `key` and waits until it is in the source.
async fn uploaded(r: &Rig, up: &Uploader, key: &str, body: &[u8]) {
    let f = staged_file(r, body);
    up.submit(put(key, &f, body.len() as u64)).await.unwrap();
    all_uploaded(up, Duration::from_secs(10)).await;
}

async fn all_uploaded(up: &Uploader, within: Duration) {
    let deadline = Instant::now() + within;
    while up.pending_count() > 0 {
        assert!(Instant::now() < deadline, "uploaded within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn replicated(rep: &crate::replicator::Replicator, within: Duration) {
    let deadline = Instant::now() + within;
    while rep.pending_count() > 0 {
        assert!(Instant::now() < deadline, "replicated within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_large_replica_waits_while_the_source_takes_new_writes_then_copies_every_part() {
    let r = rig();
    let (up, rep, dest) = replicating(&r);
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = busy.clone();
    rep.give_way_to(
        Arc::new(move || crate::replicator::SourceLoad {
            queued: 0,
            submitting: flag.load(std::sync::atomic::Ordering::SeqCst),
        }),
        Duration::from_secs(60),
    );
    // Three parts of 8, 8 and 4 MiB, all in flight at once.
    let body: Vec<u8> = (0..20 * MIB as usize).map(|i| (i % 251) as u8).collect();
    uploaded(&r, &up, "big", &body).await;
    // While the source is busy no part is copied (watched for 300 ms).
    let watch_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < watch_until {
        assert_eq!(rep.pending_count(), 1, "the replica waits");
        assert!(
            dest.open_uploads().iter().all(|(_, parts)| *parts == 0),
            "no part copied while the source is busy: {:?}",
            dest.open_uploads()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    busy.store(false, std::sync::atomic::Ordering::SeqCst);
    replicated(&rep, Duration::from_secs(10)).await;
    let history = dest.history("big");
    assert_eq!(history.len(), 1, "one replica version");
    assert!(
        history[0].1.as_deref() == Some(&body[..]),
        "the replica has the source's bytes, parts in order"
    );
    assert!(dest.open_uploads().is_empty(), "no upload left open");
}

#[tokio::test]
async fn a_small_replica_waits_only_while_the_uploads_are_backed_up() {
    let r = rig();
    let (up, rep, dest) = replicating(&r);
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let q = queued.clone();
    rep.give_way_to(
        Arc::new(move || crate::replicator::SourceLoad {
            queued: q.load(std::sync::atomic::Ordering::SeqCst),
            submitting: true,
        }),
        Duration::from_secs(60),
    );
    // A source that keeps up (one upload queued): replicated at once, not
    // after the 60 s bound.
    uploaded(&r, &up, "steady", b"one of a steady stream").await;
    replicated(&rep, Duration::from_secs(10)).await;
    assert_eq!(dest.history("steady").len(), 1);
    // Backed up (more than twice the uploader's 16 at a time): it waits.
    queued.store(33, std::sync::atomic::Ordering::SeqCst);
    uploaded(&r, &up, "burst", b"one of a burst").await;
    let watch_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < watch_until {
        assert_eq!(rep.pending_count(), 1, "the replica waits");
        assert!(dest.history("burst").is_empty());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    queued.store(32, std::sync::atomic::Ordering::SeqCst);
    replicated(&rep, Duration::from_secs(10)).await;
    assert_eq!(
        dest.history("burst")[0].1.as_deref(),
        Some(&b"one of a burst"[..])
    );
}

#[tokio::test]
async fn a_source_that_is_never_idle_slows_a_large_replica_but_does_not_stop_it() {
    let r = rig();
    let (up, rep, dest) = replicating(&r);
    let at_most = Duration::from_millis(300);
    rep.give_way_to(
        Arc::new(|| crate::replicator::SourceLoad {
            queued: 1,
            submitting: true,
        }),
        at_most,
    );
    let body = vec![9u8; 20 * MIB as usize]; // over the 16 MiB multipart threshold
                                             // Its replica starts the moment the version is in the source.
    let t = Instant::now();
    uploaded(&r, &up, "big", &body).await;
    replicated(&rep, Duration::from_secs(10)).await;
    assert!(t.elapsed() >= at_most, "each part waited its bound first");
    assert!(dest.history("big")[0].1.as_deref() == Some(&body[..]));
}

#[tokio::test]
async fn the_source_counts_as_busy_while_an_upload_is_queued_and_just_after_a_submit() {
    let r = rig();
    let cfg = UploadConfig {
        multipart_threshold: crate::config::ByteSize(5 * MIB),
        ..Default::default()
    };
    let quiet = Duration::from_millis(100);
    let up = start_with(&r, cfg, quiet, vec![]);
    let busy = || up.source_load().busy();
    assert!(!busy(), "idle before any write");
    // An upload retrying after two refusals (backoffs of at least 125 and
    // 250 ms) keeps the source busy past the pause.
    r.faulty.fail_next(2);
    let f = staged_file(&r, b"refused for now");
    up.submit(put("k", &f, 15)).await.unwrap();
    assert!(busy(), "busy right after a submit");
    let t = Instant::now();
    while t.elapsed() < quiet * 3 {
        assert!(busy(), "busy while the upload is queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    idle_once_uploaded(&r, &up, busy).await;
}

/// Waits (10 s at most) until `busy` says the source is idle, then checks
/// the upload of `k` is done and in the source.
async fn idle_once_uploaded(r: &Rig, up: &Uploader, busy: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while busy() {
        assert!(Instant::now() < deadline, "idle once uploaded and quiet");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.pending_count(), 0);
    assert!(
        r.mem.head("k", None).await.is_ok(),
        "the write is in the source"
    );
}

#[tokio::test]
async fn a_replicator_reads_the_load_of_the_uploader_it_is_handed_to() {
    let r = rig();
    let (up, rep, _dest) = replicating(&r);
    let gauge = rep.source_gauge();
    let busy = || gauge.load().busy();
    assert!(!busy(), "idle before any write");
    // Refused twice: queued for at least the first two backoffs.
    r.faulty.fail_next(2);
    let f = staged_file(&r, b"refused for now");
    up.submit(put("k", &f, 15)).await.unwrap();
    assert!(busy(), "the replicator sees the submit at once");
    assert_eq!(gauge.load().queued, 1, "and the queued upload");
    idle_once_uploaded(&r, &up, busy).await;
}

#[tokio::test]
async fn a_small_file_is_replicated_from_its_uploaded_bytes_without_reading_the_source() {
    let r = rig();
    let (up, rep, dest) = replicating(&r);
    let mut meta = ObjectMeta::new(crate::meta::S_IFREG | 0o640, 7, 8);
    meta.xattrs.insert("user.tag.team".into(), b"blue".to_vec());
    meta.xattrs.insert("user.note".into(), b"kept".to_vec());
    let submit = |key: &'static str, body: Vec<u8>| {
        let f = staged_file(&r, &body);
        let mut op = put(key, &f, body.len() as u64);
        op.meta = meta.to_json();
        up.submit(op)
    };
    let small = b"four KiB at most".repeat(256);
    let larger = vec![7u8; 100 * 1024];
    submit("small", small.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.pending_count() > 0 || rep.pending_count() > 0 {
        assert!(Instant::now() < deadline, "replicated in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        r.faulty.reads.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no HEAD, tagging request or GET at the source"
    );
    // Over the size kept in memory: the replica is read from the source.
    submit("larger", larger.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.pending_count() > 0 || rep.pending_count() > 0 {
        assert!(Instant::now() < deadline, "replicated in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(r.faulty.reads.load(std::sync::atomic::Ordering::SeqCst) >= 2);

    for (key, body) in [("small", small), ("larger", larger)] {
        let src = r.mem.head(key, None).await.unwrap();
        let got = dest.head(key, None).await.unwrap();
        let mut want = src.metadata.clone();
        want.insert(
            crate::store::SOURCE_VERSION_META.into(),
            src.version_id.clone().unwrap(),
        );
        // ... and the CRC the destination checked the bytes against.
        want.insert(
            crate::store::CHECKSUM_META.into(),
            crate::store::checksum::Crc64::of(&body).to_base64(),
        );
        assert_eq!(got.metadata, want, "{key}: the source's metadata");
        assert_eq!(got.crc64nvme, src.crc64nvme, "{key}: the same checksum");
        assert_eq!(got.content_type, src.content_type, "{key}");
        assert_eq!(
            dest.get_tags(key, None).await.unwrap(),
            BTreeMap::from([("team".to_string(), "blue".to_string())]),
            "{key}: the source's tags"
        );
        let history = dest.history(key);
        assert_eq!(history.len(), 1, "{key}: one replica version");
        assert_eq!(history[0].1.as_deref(), Some(&body[..]), "{key}: its bytes");
    }
}

#[tokio::test]
async fn small_replicas_beyond_the_memory_budget_are_written_from_their_clean_copies() {
    let r = rig();
    let dest = Arc::new(MemoryStore::new("dst"));
    let (up, rep) = replicating_from_journal(&r, dest.clone(), 10_000, Some(r.cache.clone())).await;
    let hold = hold_replicas(&rep);
    let size = 60 * 1024;
    let n = crate::replicator::FRESH_BUDGET / size + 4;
    let mut files = Vec::new();
    for i in 0..n {
        let key = format!("burst/{i:03}");
        let body = vec![i as u8; size];
        let f = staged_file(&r, &body);
        up.submit(put(&key, &f, size as u64)).await.unwrap();
        files.push((key, f, body));
    }
    all_uploaded(&up, Duration::from_secs(20)).await;
    assert_eq!(rep.pending_count(), n, "the replicas wait");
    // What the mount does once a file is uploaded: its staged file becomes
    // the clean copy of that version. But the last one's copy was evicted,
    // the one before now holds another version (written since), and the
    // one before that was opened for writing (its copy is a working file).
    let (evicted, rewritten, reopened) = (&files[n - 1].0, &files[n - 2].0, &files[n - 3].0);
    for (key, f, _) in &files {
        let etag = r.mem.head(key, None).await.unwrap().etag;
        if key == rewritten {
            let newer = staged_file(&r, &vec![0xee; size]);
            r.cache
                .make_clean(&newer, key, "\"etag-of-a-newer-version\"");
        } else if key != evicted {
            r.cache.make_clean(f, key, &etag);
        }
        if key == reopened {
            let working = r.cache.adopt_clean(key, &etag).unwrap().unwrap();
            std::fs::write(r.cache.data_path(&working), vec![0xdd; size]).unwrap();
        }
    }
    hold.store(false, std::sync::atomic::Ordering::SeqCst);
    replicated(&rep, Duration::from_secs(20)).await;
    for (key, _, body) in &files {
        let history = dest.history(key);
        assert_eq!(history.len(), 1, "{key}: one replica version");
        assert_eq!(history[0].1.as_deref(), Some(&body[..]), "{key}: its bytes");
    }
    let mut got = r.faulty.got.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        [reopened.clone(), rewritten.clone(), evicted.clone()],
        "only the replicas without a clean copy of their version read the source"
    );
}
