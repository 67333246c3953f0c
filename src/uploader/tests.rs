use super::*;
use crate::config::MIB;
use crate::store::{FaultyStore, MemoryStore};
use std::os::unix::fs::FileExt as _;

struct Rig {
    _dir: tempfile::TempDir,
    mem: Arc<MemoryStore>,
    faulty: Arc<FaultyStore>,
    cache: Arc<Cache>,
    journal: Journal,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path(), 256 * MIB, Duration::from_secs(5)).unwrap();
    let journal = Journal::open(&cache.journal_path()).unwrap();
    let mem = Arc::new(MemoryStore::new("src"));
    let faulty = Arc::new(FaultyStore::new(mem.clone()));
    Rig {
        _dir: dir,
        mem,
        faulty,
        cache,
        journal,
    }
}

fn start(r: &Rig, recovered: Vec<Op>) -> Uploader {
    let cfg = UploadConfig {
        multipart_threshold: crate::config::ByteSize(5 * MIB),
        ..Default::default()
    };
    start_with(r, cfg, QUIET, recovered)
}

fn start_with(r: &Rig, cfg: UploadConfig, quiet: Duration, recovered: Vec<Op>) -> Uploader {
    let (up, _) = Uploader::start(
        r.faulty.clone(),
        r.journal.clone(),
        r.cache.clone(),
        cfg,
        Duration::ZERO,
        recovered.into(),
        EachVersion::default(),
    );
    up.set_quiet(quiet);
    up
}

fn staged_file(r: &Rig, content: &[u8]) -> String {
    let name = r.cache.create_data_file().unwrap();
    std::fs::write(r.cache.data_path(&name), content).unwrap();
    name
}

fn put(key: &str, file: &str, size: u64) -> NewOp {
    NewOp {
        key: key.into(),
        kind: OpKind::Put,
        file: Some(file.into()),
        size,
        meta: ObjectMeta::new(crate::meta::S_IFREG | 0o644, 0, 0).to_json(),
        src_key: None,
        src_version: None,
        inline: None,
        base: None,
    }
}

fn start_deferring(r: &Rig, defer: Duration) -> Uploader {
    let cfg = UploadConfig {
        defer_while_writing: crate::config::HumanDuration(defer),
        ..Default::default()
    };
    // A burst ends after 2 s without a submission: a test thread paused
    // by a loaded machine does not end it.
    start_with(r, cfg, Duration::from_secs(2), vec![])
}

async fn landed(r: &Rig, key: &str) -> bool {
    r.mem.head(key, None).await.is_ok()
}

fn copy_of(key: &str, src: &str, version: Option<&str>) -> NewOp {
    NewOp {
        key: key.into(),
        kind: OpKind::Copy,
        file: None,
        size: 1,
        meta: ObjectMeta::new(crate::meta::S_IFREG | 0o600, 0, 0).to_json(),
        src_key: Some(src.into()),
        src_version: version.map(str::to_string),
        inline: None,
        base: None,
    }
}

fn delete_of(key: &str) -> NewOp {
    NewOp::delete(key.into())
}

async fn put_bytes_into(mem: &MemoryStore, key: &str, body: &'static [u8]) {
    mem.put(
        key,
        PutBody::Bytes(Bytes::from_static(body)),
        &PutOptions::default(),
    )
    .await
    .unwrap();
}

/// Uploads wait 300 ms after staging (unless waited for): a test
/// queues what follows an operation before it runs.
fn start_delayed(r: &Rig) -> Uploader {
    start_delayed_owned(r).0
}

/// [`start_delayed`] with the channel an owner of local state reads.
fn start_delayed_owned(r: &Rig) -> (Uploader, mpsc::UnboundedReceiver<Landed>) {
    Uploader::start(
        r.faulty.clone(),
        r.journal.clone(),
        r.cache.clone(),
        UploadConfig::default(),
        Duration::from_millis(300),
        Recovered::default(),
        EachVersion::default(),
    )
}

async fn drained(up: &Uploader) {
    let left = wait_for_zero(
        up.inner.pending.subscribe(),
        Duration::from_secs(10),
        |_| {},
    )
    .await;
    assert_eq!(left, 0, "the queue drained");
}

#[tokio::test]
async fn a_copy_from_a_vanished_source_followed_by_a_delete_is_dropped_and_never_brings_the_name_back(
) {
    let r = rig();
    let up = start_delayed(&r);
    // `gone` never existed at this version; the name is deleted after.
    let copy = up.submit(copy_of("k", "gone", Some("v9"))).await.unwrap();
    up.submit(delete_of("k")).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(10), up.wait(copy)).await;
    assert_eq!(waited.unwrap(), Ok(()), "its waiter follows the delete");
    drained(&up).await;
    assert!(!landed(&r, "k").await);
    assert!(
        r.mem.history("k").iter().all(|(_, b)| b.is_none()),
        "nothing but a delete marker: {:?}",
        r.mem.history("k")
    );
    let summary = r.journal.upload_summary().await.unwrap();
    assert_eq!((summary.pending, summary.failed), (0, 0));
    // The source appearing later changes nothing.
    put_bytes_into(&r.mem, "gone", b"late").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!landed(&r, "k").await, "the deleted name stays deleted");
}

/// A put of `body` at `key` written over `base` (`None`: a new file).
async fn put_over(r: &Rig, up: &Uploader, key: &str, body: &[u8], base: Option<&str>) {
    let file = staged_file(r, body);
    let op = NewOp {
        base: Some(crate::journal::Base {
            etag: base.unwrap_or_default().to_string(),
            version: None,
        }),
        ..put(key, &file, body.len() as u64)
    };
    let seq = up.submit(op).await.unwrap();
    assert_eq!(up.wait(seq).await, Ok(()));
}

async fn etag_of(r: &Rig, key: &str) -> String {
    r.mem.head(key, None).await.unwrap().etag
}

/// (key, replaced version) of every reported upload, sorted.
async fn reported(r: &Rig) -> Vec<(String, String)> {
    let c = r.journal.conflicts(100).await.unwrap();
    let mut v: Vec<_> = c
        .recent
        .into_iter()
        .map(|c| (c.key, c.replaced_version))
        .collect();
    v.sort();
    v
}

/// Another writer's version, over which the host writes (seen or not),
/// with or without conditional PUTs at the store.
async fn writers_of_one_key(conditions: bool) {
    let r = rig();
    if !conditions {
        r.mem.refuse_conditions();
    }
    let up = start(&r, vec![]);
    put_bytes_into(&r.mem, "k", b"theirs 1").await;
    let seen = etag_of(&r, "k").await;
    put_over(&r, &up, "k", b"mine 1", Some(&seen)).await;
    // Still naming what it saw before its own upload: not reported.
    put_over(&r, &up, "k", b"mine 2", Some(&seen)).await;
    put_bytes_into(&r.mem, "k", b"theirs 2").await;
    let unread = r.mem.head("k", None).await.unwrap().version_id.unwrap();
    let mine = etag_of(&r, "k").await;
    assert_ne!(mine, seen);
    put_over(&r, &up, "k", b"mine 3", Some(&seen)).await;
    // A new file here, where another client made one meanwhile.
    put_bytes_into(&r.mem, "new", b"theirs").await;
    let theirs_new = r.mem.head("new", None).await.unwrap().version_id.unwrap();
    put_over(&r, &up, "new", b"mine", None).await;
    drained(&up).await;
    assert_eq!(
        reported(&r).await,
        [("k".to_string(), unread), ("new".to_string(), theirs_new)]
    );
    let bodies: Vec<_> = r
        .mem
        .history("k")
        .into_iter()
        .map(|(_, b)| b.unwrap())
        .collect();
    assert_eq!(
        bodies,
        ["theirs 1", "mine 1", "mine 2", "theirs 2", "mine 3"].map(Bytes::from),
        "the last close wins and every version stays"
    );
}

#[tokio::test]
async fn an_upload_over_a_version_this_host_never_read_is_reported_and_over_its_own_not() {
    writers_of_one_key(true).await;
}

#[tokio::test]
async fn a_store_without_conditional_puts_still_gets_every_upload_and_the_report() {
    writers_of_one_key(false).await;
}

#[tokio::test]
async fn a_put_whose_staged_file_vanished_is_superseded_by_the_next_put_of_its_key() {
    let r = rig();
    let up = start_delayed(&r);
    let missing = staged_file(&r, b"first");
    std::fs::remove_file(r.cache.data_path(&missing)).unwrap();
    let second = staged_file(&r, b"second");
    let seq = up.submit(put("k", &missing, 5)).await.unwrap();
    up.submit(put("k", &second, 6)).await.unwrap();
    assert_eq!(up.wait(seq).await, Ok(()));
    drained(&up).await;
    let history = r.mem.history("k");
    assert_eq!(history.len(), 1, "one version: the second put's");
    assert_eq!(history[0].1.as_deref(), Some(&b"second"[..]));
    let summary = r.journal.upload_summary().await.unwrap();
    assert_eq!((summary.pending, summary.failed), (0, 0));
}

#[tokio::test]
async fn metadata_set_before_a_put_starts_goes_with_it_as_one_version() {
    let r = rig();
    let up = start_delayed(&r);
    let f = staged_file(&r, b"body");
    let seq = up.submit(put("k", &f, 4)).await.unwrap();
    let mode = |m: u32| ObjectMeta::new(crate::meta::S_IFREG | m, 1000, 1000).to_json();
    assert_eq!(up.amend_meta("k", mode(0o600)).await.unwrap(), Some(seq));
    let m640 = mode(0o640);
    assert_eq!(up.amend_meta("k", m640.clone()).await.unwrap(), Some(seq));
    // What a restart would run carries it too.
    let row = r.journal.open_ops().await.unwrap();
    assert_eq!(row[0].meta, m640);
    up.wait(seq).await.unwrap();
    assert_eq!(r.mem.history("k").len(), 1, "one version");
    let head = r.mem.head("k", None).await.unwrap();
    assert_eq!(
        head.metadata["mode"],
        (crate::meta::S_IFREG | 0o640).to_string()
    );
    assert_eq!(head.metadata["uid"], "1000");
    // Nothing queued: the caller copies.
    assert_eq!(up.amend_meta("k", mode(0o600)).await.unwrap(), None);
    // A delete is not amended.
    let del = up.submit(delete_of("k")).await.unwrap();
    assert_eq!(up.amend_meta("k", mode(0o600)).await.unwrap(), None);
    up.wait(del).await.unwrap();
}

#[tokio::test]
async fn a_gone_copy_with_nothing_after_it_is_lost_not_retried_and_listed_with_its_cause() {
    let r = rig();
    let (up, mut owner) = start_delayed_owned(&r);
    let copy = up.submit(copy_of("k", "gone", None)).await.unwrap();
    // A metadata change after it reads what it would have made.
    let chmod = up.submit(copy_of("k", "k", None)).await.unwrap();
    let waiting = tokio::spawn({
        let up = up.clone();
        async move { up.wait(chmod).await }
    });
    let told = tokio::time::timeout(Duration::from_secs(10), owner.recv())
        .await
        .unwrap()
        .unwrap();
    match &told.event {
        Event::Lost { op, error } => {
            assert_eq!(op.seq, copy);
            assert!(error.contains("gone"), "{error}");
        }
        Event::Uploaded(c) => panic!("uploaded {c:?}"),
    }
    drop(told);
    // No owner from here on: completions are not waited for.
    drop(owner);
    let told = waiting.await.unwrap();
    assert!(
        told.unwrap_err().contains("nothing queued since"),
        "its waiters are told"
    );
    drained(&up).await;
    let attempts = r.faulty.attempts.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        r.faulty.attempts.load(std::sync::atomic::Ordering::SeqCst),
        attempts,
        "never retried"
    );
    let summary = r.journal.upload_summary().await.unwrap();
    assert_eq!((summary.pending, summary.failed), (0, 2));
    let failed = r.journal.failed_ops().await.unwrap();
    assert_eq!(
        failed.iter().map(|o| o.seq).collect::<Vec<_>>(),
        vec![copy, chmod]
    );
    assert!(
        failed[0].error.as_deref().unwrap().contains("no such key"),
        "{failed:?}"
    );
    assert!(!landed(&r, "k").await);
    // A restart does not run them again.
    assert!(r.journal.open_ops().await.unwrap().is_empty());
    // A newer version of the name clears them.
    let file = staged_file(&r, b"new");
    let seq = up.submit(put("k", &file, 3)).await.unwrap();
    assert_eq!(up.wait(seq).await, Ok(()));
    assert!(r.journal.failed_ops().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_claimed_file_stays_referenced_after_its_uploads_finish_until_the_claim_drops() {
    let r = rig();
    let up = start(&r, vec![]);
    let f = staged_file(&r, b"body");
    let seq = up.submit(put("old", &f, 4)).await.unwrap();
    // Taken before the upload finishes, as a rename reading the node does.
    let claim = up.claim(&f);
    up.wait(seq).await.unwrap();
    assert!(landed(&r, "old").await);
    assert!(up.pending_for("old").is_empty());
    assert!(up.references(&f), "the claim keeps the file needed");
    let seq = up.submit(put("new", &f, 4)).await.unwrap();
    drop(claim);
    assert!(up.references(&f), "the queued put still needs it");
    up.wait(seq).await.unwrap();
    assert!(!up.references(&f), "nothing needs the file any more");
    let body = r.mem.get("new", Default::default()).await.unwrap();
    assert_eq!(&body.bytes().await.unwrap()[..], b"body");
}

/// Submits a small put every 50 ms for `n` rounds (a writer closing files).
async fn burst(r: &Rig, up: &Uploader, tag: &str, n: usize) {
    for i in 0..n {
        let f = staged_file(r, b"x");
        up.submit(put(&format!("{tag}{i}"), &f, 1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An uploader deferring up to `defer`, given "first" and then a burst of
/// `n` more ("a0".."a{n-1}").
async fn first_then_burst(r: &Rig, defer: Duration, n: usize) -> Uploader {
    let up = start_deferring(r, defer);
    let f = staged_file(r, b"first");
    up.submit(put("first", &f, 5)).await.unwrap();
    burst(r, &up, "a", n).await;
    up
}

#[tokio::test]
async fn uploads_wait_for_a_pause_in_the_writes_and_go_at_once_when_waited_for() {
    let r = rig();
    let up = first_then_burst(&r, Duration::from_secs(30), 20).await;
    assert!(
        !landed(&r, "first").await,
        "nothing is uploaded while files keep being closed"
    );
    assert_eq!(up.pending_count(), 21);

    // fsync (durability "source") waits for its operation: it and every
    // operation staged before it go now, writes going on or not.
    let f = staged_file(&r, b"synced");
    let synced = up.submit(put("synced", &f, 6)).await.unwrap();
    let (waited, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(10), up.wait(synced)),
        burst(&r, &up, "b", 10)
    );
    waited.expect("fsync's upload was not deferred").unwrap();
    assert!(landed(&r, "first").await && landed(&r, "a19").await);

    // Once the writes pause (2 s here), the rest follows unasked.
    let deadline = Instant::now() + Duration::from_secs(20);
    while up.pending_count() > 0 {
        assert!(
            Instant::now() < deadline,
            "uploads did not follow the pause"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(landed(&r, "b9").await);

    // Unmount drains at once, mid-burst: sooner than the 2 s pause.
    burst(&r, &up, "c", 5).await;
    let left = up.drain(Duration::from_millis(1500), |_| {}).await;
    assert_eq!(left, 0);
    assert!(landed(&r, "c4").await);
}

#[tokio::test]
async fn a_deferred_upload_starts_at_its_limit_even_if_writes_never_pause() {
    let r = rig();
    let _up = first_then_burst(&r, Duration::from_millis(500), 30).await;
    assert!(
        landed(&r, "first").await,
        "uploaded 0.5 s after its close, mid-burst"
    );
    assert!(!landed(&r, "a29").await, "the last ones still wait");
}

#[tokio::test]
async fn with_deferral_off_uploads_start_during_the_writes() {
    let r = rig();
    let _up = first_then_burst(&r, Duration::ZERO, 10).await;
    assert!(landed(&r, "first").await);
}

/// Held back by a deferral, then let go by a drain with one upload at a
/// time: keys go oldest first, not in key order.
#[tokio::test]
async fn held_back_uploads_start_oldest_first_across_keys() {
    let r = rig();
    let cfg = UploadConfig {
        defer_while_writing: crate::config::HumanDuration(Duration::from_secs(30)),
        concurrency: 1,
        ..Default::default()
    };
    let up = start_with(&r, cfg, Duration::from_secs(30), vec![]);
    let keys = ["z", "a", "m", "b", "y"];
    for k in keys {
        let f = staged_file(&r, k.as_bytes());
        up.submit(put(k, &f, 1)).await.unwrap();
    }
    assert!(!landed(&r, "z").await, "held back");
    assert_eq!(up.drain(Duration::from_secs(10), |_| {}).await, 0);
    let mut landed_in: Vec<(String, &str)> = Vec::new();
    for k in keys {
        let v = r.mem.head(k, None).await.unwrap().version_id.unwrap();
        landed_in.push((v, k));
    }
    landed_in.sort();
    let order: Vec<&str> = landed_in.into_iter().map(|(_, k)| k).collect();
    assert_eq!(order, keys);
}

/// A burst of closes held back by the deferral: each submission wakes the
/// scheduler, which looks at the oldest head only, not at every queued op
/// (a pass per submission was quadratic in the burst).
#[tokio::test]
async fn a_burst_of_held_back_uploads_costs_the_scheduler_no_pass_per_submission() {
    let r = rig();
    let up = start_deferring(&r, Duration::from_secs(30));
    let n = 1000u64;
    // The scheduler runs its wakes while each submission awaits the
    // journal.
    for i in 0..n {
        let f = staged_file(&r, b"x");
        up.submit(put(&format!("k{i:04}"), &f, 1)).await.unwrap();
    }
    let examined = up.inner.queue.lock().unwrap().examined;
    assert!(
        examined <= 2 * n,
        "{examined} heads examined for {n} submissions"
    );
    assert_eq!(up.pending_count(), n as usize, "all still held back");
    assert_eq!(up.drain(Duration::from_secs(30), |_| {}).await, 0);
    assert!(landed(&r, "k0999").await);
}

#[tokio::test]
async fn a_file_written_while_it_uploads_makes_no_version_and_a_copy_goes_up_instead() {
    let r = rig();
    if !crate::cache::stamp::fine_grained(r.cache.root()) {
        eprintln!("skipped: coarse change times here");
        return;
    }
    let up = start(&r, vec![]);
    for (key, len) in [("single", 70_000usize), ("parts", 6 * MIB as usize)] {
        let f = staged_file(&r, &vec![1u8; len]);
        let path = r.cache.data_path(&f);
        // A writer the file system cannot see changes the file as its
        // upload begins (after the upload took its stamp).
        r.faulty.before_next_write(move || {
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            file.write_all_at(&[2u8; 10], 0).unwrap();
        });
        let seq = up.submit(put(key, &f, len as u64)).await.unwrap();
        up.wait(seq).await.unwrap();
        let history = r.mem.history(key);
        assert_eq!(history.len(), 1, "{key}: no version of the changing file");
        let body = history[0].1.as_ref().unwrap();
        assert_eq!(
            &body[..10],
            &[2u8; 10],
            "{key}: the copy holds the later bytes"
        );
        assert!(body[10..].iter().all(|b| *b == 1), "{key}");
        assert!(!up.references(&f), "{key}: the op moved to the copy");
    }
    let ops = r.journal.open_ops().await.unwrap();
    assert!(ops.is_empty(), "both recorded: {ops:?}");
}

#[tokio::test]
async fn a_repointed_put_uploads_the_copy_and_its_original_may_change() {
    let r = rig();
    let up = start(&r, vec![]);
    // The first attempt fails: the retry runs after the repoint.
    r.faulty.fail_next(1);
    let f = staged_file(&r, b"original");
    let seq = up.submit(put("k", &f, 8)).await.unwrap();
    assert_eq!(up.users(&f), vec![seq]);
    let copy = r.cache.copy_data_file(&f).unwrap();
    up.repoint(&[seq], &f, &copy).await.unwrap();
    assert!(up.references(&copy) && !up.references(&f));
    assert_eq!(
        r.journal.open_ops().await.unwrap()[0].file.as_deref(),
        Some(copy.as_str())
    );
    std::fs::write(r.cache.data_path(&f), b"rewritten in place").unwrap();
    up.wait(seq).await.unwrap();
    let body = r.mem.get("k", Default::default()).await.unwrap();
    assert_eq!(&body.bytes().await.unwrap()[..], b"original");
    assert!(!up.references(&copy));
    assert!(r.journal.open_ops().await.unwrap().is_empty());
}

/// A put running on a file when a writer repoints it to a copy (to
/// write the file in place) lands as the op it ran as: the file it ran
/// on belongs to the writer's next put, which must keep it.
#[tokio::test]
async fn a_put_repointed_while_it_ran_leaves_its_old_file_to_the_next_put() {
    let r = rig();
    let up = start_delayed(&r);
    let f = staged_file(&r, b"first");
    let first = up.submit(put("k", &f, 5)).await.unwrap();
    let ran = up.pending_for("k").remove(0);
    let copy = r.cache.copy_data_file(&f).unwrap();
    up.repoint(&[first], &f, &copy).await.unwrap();
    std::fs::write(r.cache.data_path(&f), b"second").unwrap();
    up.submit(put("k", &f, 6)).await.unwrap();
    assert_eq!(ran.file.as_deref(), Some(f.as_str()));
    assert!(up.references_besides(&f, &ran), "the second put's file");
    assert!(
        !up.references_besides(&copy, &ran),
        "the first's copy is its own"
    );
    drained(&up).await;
}

#[tokio::test]
async fn versions_of_one_key_land_in_staging_order_despite_transient_failures() {
    let r = rig();
    let up = start(&r, vec![]);
    r.faulty.fail_next(3);
    let mut last = 0;
    for i in 0..10u8 {
        let f = staged_file(&r, &[i; 100]);
        last = up.submit(put("k", &f, 100)).await.unwrap();
    }
    up.wait(last).await.unwrap();
    let history: Vec<u8> = r
        .mem
        .history("k")
        .iter()
        .map(|(_, b)| b.as_ref().unwrap()[0])
        .collect();
    assert_eq!(history, (0..10).collect::<Vec<u8>>());
    assert_eq!(up.drain(Duration::from_secs(5), |_| {}).await, 0);
    assert!(r.journal.open_ops().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_permanent_failure_keeps_the_upload_visible_and_resumes_when_fixed() {
    let r = rig();
    let up = start(&r, vec![]);
    r.faulty.fail_permanently(true);
    let f = staged_file(&r, b"precious");
    let seq = up.submit(put("p", &f, 8)).await.unwrap();
    let e = up.wait(seq).await.unwrap_err();
    assert!(e.contains("AccessDenied") || e.contains("denied"), "{e}");
    let s = r.journal.upload_summary().await.unwrap();
    assert_eq!((s.pending, s.failed), (1, 1));
    assert!(r.mem.history("p").is_empty());
    r.faulty.fail_permanently(false);
    // The retry comes a minute later; in the test, nudge by restarting from the journal.
    drop(up);
    let up = start(&r, r.journal.open_ops().await.unwrap());
    assert_eq!(up.drain(Duration::from_secs(10), |_| {}).await, 0);
    assert_eq!(r.mem.history("p")[0].1.as_deref(), Some(&b"precious"[..]));
}

#[tokio::test]
async fn recovered_operations_run_and_a_recorded_multipart_is_aborted_and_redone() {
    let r = rig();
    let big: Vec<u8> = (0..6 * MIB).map(|i| (i % 253) as u8).collect();
    let f = staged_file(&r, &big);
    let seq = r
        .journal
        .stage(put("big", &f, big.len() as u64))
        .await
        .unwrap();
    let stale = r
        .mem
        .create_multipart("big", &PutOptions::default())
        .await
        .unwrap();
    r.journal.set_multipart(seq, Some(stale)).await.unwrap();
    let up = start(&r, r.journal.open_ops().await.unwrap());
    assert_eq!(up.drain(Duration::from_secs(10), |_| {}).await, 0);
    let h = r.mem.history("big");
    assert_eq!(h.len(), 1);
    assert!(h[0].1.as_deref() == Some(&big[..]));
}

mod early;
mod replicas;
mod spill;

/// Memory per queued operation, counted by the allocator (glibc): a copy-in
/// that outruns the store queues every file it writes, and each costs this
/// much until uploaded (SEMANTICS.md, "Memory").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_queued_op_costs_under_a_kilobyte() {
    fn used() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        unsafe { libc::mallinfo2() }.uordblks
    }
    let meta = ObjectMeta::new(crate::meta::S_IFREG | 0o644, 1000, 1000).to_json();
    let n = 20_000;
    let mut q = Queue::new(QUIET);
    let before = used();
    for i in 0..n {
        // As `tar -xf` of a source tree queues them: a put per file, keys
        // of about 30 bytes, ten files a directory.
        let key = format!("tree/d{:04}/d{}/file{:04}.c", i / 100, i % 10, i);
        q.insert(Op {
            file: Some(format!("c5eed-{i}")),
            size: 1000,
            meta: meta.clone(),
            inline: true,
            base: Some(crate::journal::Base {
                etag: String::new(),
                version: None,
            }),
            ..Op::pending(i, &key, OpKind::Put)
        });
    }
    let per_op = (used() - before) / n as usize;
    assert_eq!(q.count, n as usize);
    assert!(per_op < 1024, "{per_op} bytes a queued op");
    eprintln!("{per_op} bytes a queued op");
}
