//! Uploads in parts that start before the close.

use super::*;

/// Writes `content` into cache file `name` in 1 MiB writes from `from`,
/// telling `early` about each; a blind one learns only the file's size,
/// as the size poll of a passthrough writer's file tells it.
fn write_through(r: &Rig, early: &Arc<EarlyUpload>, name: &str, content: &[u8], from: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(r.cache.data_path(name))
        .unwrap();
    for off in (from..content.len()).step_by(MIB as usize) {
        let end = (off + MIB as usize).min(content.len());
        f.write_all_at(&content[off..end], off as u64).unwrap();
        if early.is_blind() {
            early.grown(f.metadata().unwrap().len());
        } else {
            early.written(name, off as u64, end as u64);
        }
    }
}

async fn wait_parts(r: &Rig, key: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !r
        .mem
        .open_uploads()
        .iter()
        .any(|(k, p)| k == key && *p >= n)
    {
        assert!(
            Instant::now() < deadline,
            "{n} early parts of {key}: {:?}",
            r.mem.open_uploads()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn early_rig() -> (Rig, Uploader) {
    let r = rig();
    let cfg = UploadConfig {
        multipart_threshold: crate::config::ByteSize(5 * MIB),
        part_size: crate::config::ByteSize(5 * MIB),
        ..Default::default()
    };
    let up = start_with(&r, cfg, QUIET, vec![]);
    (r, up)
}

fn meta() -> ObjectMeta {
    ObjectMeta::new(crate::meta::S_IFREG | 0o644, 0, 0)
}

/// 18 MiB written in order to a new cache file for key "big", with its
/// first two 5 MiB parts (each sent once the next is written) uploaded.
async fn big_file_with_early_parts(r: &Rig, up: &Uploader) -> (Vec<u8>, String, Arc<EarlyUpload>) {
    let body: Vec<u8> = (0..18 * MIB).map(|i| (i % 251) as u8).collect();
    let name = r.cache.create_data_file().unwrap();
    let early = up.early("big", &name, &meta(), false).unwrap();
    write_through(r, &early, &name, &body, 0);
    wait_parts(r, "big", 2).await;
    (body, name, early)
}

/// Stages "big" with its early upload; returns its only version's bytes.
async fn stage_big(
    r: &Rig,
    up: &Uploader,
    name: &str,
    len: usize,
    early: Arc<EarlyUpload>,
) -> bytes::Bytes {
    up.submit_with(put("big", name, len as u64), Some(early))
        .await
        .unwrap();
    assert_eq!(up.drain(Duration::from_secs(10), |_| {}).await, 0);
    let h = r.mem.history("big");
    assert_eq!(h.len(), 1);
    h[0].1.clone().unwrap()
}

/// "big"'s early parts were aborted and the file went up whole.
async fn assert_uploaded_whole(r: &Rig) {
    assert!(
        r.mem.open_uploads().is_empty(),
        "the early parts were aborted"
    );
    let head = r.mem.head("big", None).await.unwrap();
    assert!(
        head.metadata.contains_key("mtime"),
        "uploaded whole, with its mtime"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_written_in_order_is_uploaded_in_parts_before_it_is_staged() {
    let (r, up) = early_rig();
    let (body, name, early) = big_file_with_early_parts(&r, &up).await;
    assert_eq!(r.journal.early_uploads().await.unwrap().len(), 1);
    let got = stage_big(&r, &up, &name, body.len(), early).await;
    assert!(got[..] == body[..], "the object is the staged file");
    assert!(r.mem.open_uploads().is_empty());
    assert!(r.journal.early_uploads().await.unwrap().is_empty());
    let head = r.mem.head("big", None).await.unwrap();
    assert_eq!(head.metadata.get("mode").map(String::as_str), Some("33188"));
    assert!(
        !head.metadata.contains_key("mtime"),
        "mtime is the LastModified"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn at_a_close_every_whole_part_written_goes_up_before_staging() {
    let (r, up) = early_rig();
    let (body, name, early) = big_file_with_early_parts(&r, &up).await;
    // While written, the part just behind the written end waits (the
    // kernel may still write it again); once the close stages, it goes.
    early.flushing();
    wait_parts(&r, "big", 3).await;
    let got = stage_big(&r, &up, &name, body.len(), early).await;
    assert!(got[..] == body[..], "the object is the staged file");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_below_the_uploaded_parts_makes_the_file_upload_whole() {
    let (r, up) = early_rig();
    let (mut body, name, early) = big_file_with_early_parts(&r, &up).await;
    // A header rewritten at the end, as many formats do.
    body[..MIB as usize].fill(7);
    write_through(&r, &early, &name, &body[..MIB as usize], 0);
    let got = stage_big(&r, &up, &name, body.len(), early).await;
    assert!(got[..] == body[..], "the rewritten header is uploaded");
    assert_uploaded_whole(&r).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blind_upload_of_a_file_written_in_order_completes_from_its_early_parts() {
    let (r, up) = early_rig();
    let body: Vec<u8> = (0..18 * MIB).map(|i| (i % 251) as u8).collect();
    let name = r.cache.create_data_file().unwrap();
    let early = up.early("big", &name, &meta(), true).unwrap();
    write_through(&r, &early, &name, &body, 0);
    wait_parts(&r, "big", 2).await;
    early.flushing();
    let got = stage_big(&r, &up, &name, body.len(), early).await;
    assert!(got[..] == body[..], "the object is the staged file");
    let head = r.mem.head("big", None).await.unwrap();
    assert!(
        !head.metadata.contains_key("mtime"),
        "completed from the early parts (which carry no mtime)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blind_upload_whose_sent_bytes_changed_is_aborted_and_the_file_uploaded_whole() {
    let (r, up) = early_rig();
    let mut body: Vec<u8> = (0..18 * MIB).map(|i| (i % 251) as u8).collect();
    let name = r.cache.create_data_file().unwrap();
    let early = up.early("big", &name, &meta(), true).unwrap();
    write_through(&r, &early, &name, &body, 0);
    wait_parts(&r, "big", 2).await;
    // A header rewritten at the end: regionfs sees no write, the size
    // does not change, only the digests can tell.
    body[..MIB as usize].fill(7);
    write_through(&r, &early, &name, &body[..MIB as usize], 0);
    let got = stage_big(&r, &up, &name, body.len(), early).await;
    assert!(got[..] == body[..], "the rewritten header is uploaded");
    assert_uploaded_whole(&r).await;
}

#[tokio::test]
async fn early_parts_are_off_when_configured_off_or_an_acl_is_set() {
    let (r, up) = early_rig();
    assert!(up.early("k", "f", &meta(), false).is_some());
    let (with_acl, _) = Uploader::start(
        r.faulty.clone(),
        r.journal.clone(),
        r.cache.clone(),
        UploadConfig::default(),
        Duration::ZERO,
        Recovered::default(),
        EachVersion {
            acl: Some(SourceAcl {
                bucket: "src".into(),
                canned: "private".into(),
            }),
            ..Default::default()
        },
    );
    assert!(
        with_acl.early("k", "f", &meta(), false).is_none(),
        "the ACL is decided per upload"
    );
    let off = start_with(
        &r,
        UploadConfig {
            early_parts: false,
            ..Default::default()
        },
        QUIET,
        vec![],
    );
    assert!(off.early("k", "f", &meta(), false).is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_early_upload_never_staged_is_aborted_and_recovery_aborts_what_a_crash_left() {
    let (r, up) = early_rig();
    let body = vec![1u8; 12 * MIB as usize];
    let name = r.cache.create_data_file().unwrap();
    let early = up.early("gone", &name, &meta(), false).unwrap();
    write_through(&r, &early, &name, &body, 0);
    wait_parts(&r, "gone", 1).await;
    drop(early);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !r.mem.open_uploads().is_empty() || !r.journal.early_uploads().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the abandoned upload is aborted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(r.mem.history("gone").is_empty());

    // What kill -9 leaves: a journaled upload id nobody will finish.
    let id = r
        .mem
        .create_multipart("crashed", &PutOptions::default())
        .await
        .unwrap();
    r.journal.note_early("crashed".into(), id).await.unwrap();
    // The source refuses: the upload stays recorded for the next start.
    r.faulty.fail_permanently(true);
    up.abort_stale_early().await;
    assert_eq!(r.mem.open_uploads().len(), 1);
    assert_eq!(r.journal.early_uploads().await.unwrap().len(), 1);
    r.faulty.fail_permanently(false);
    up.abort_stale_early().await;
    assert!(r.mem.open_uploads().is_empty());
    assert!(r.journal.early_uploads().await.unwrap().is_empty());
}
