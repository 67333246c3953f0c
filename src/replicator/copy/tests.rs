//! Tests of `copy`: which replicas are written, in which order, and never of wrong bytes.

use super::*;
use crate::journal::{Journal, NewTask, TaskStatus};
use crate::store::MemoryStore;
use std::collections::HashMap;
use std::time::Duration;

/// A replicator from `src` to `dst` (destination `eu`) over `journal`.
fn replicator(
    config: &crate::config::Config,
    src: Arc<dyn ObjectStore>,
    dst: &Arc<MemoryStore>,
    journal: &Journal,
) -> super::super::Replicator {
    super::super::Replicator::start_with(
        config,
        src,
        HashMap::from([("eu".to_string(), dst.clone() as Arc<dyn ObjectStore>)]),
        journal.clone(),
        vec![],
    )
}

/// A copy of a version to `eu` under rule `all`, with the CRC its upload
/// recorded.
fn to_eu(checksum: Option<String>) -> NewTask {
    NewTask {
        checksum,
        destination: "eu".into(),
        rule_id: "all".into(),
        kind: TaskKind::Version,
        storage_class: None,
    }
}

fn task(seq: i64, kind: TaskKind, key: &str, version: &str) -> Task {
    Task {
        checksum: None,
        id: 10,
        seq,
        key: key.into(),
        version_id: version.into(),
        destination: "eu".into(),
        rule_id: "all".into(),
        kind,
        size: 3,
        storage_class: None,
        status: TaskStatus::Pending,
        attempts: 0,
        error: None,
        replica_version: None,
        created_at_ms: 0,
    }
}

fn replica_of(version: &str, etag: &str) -> ObjectInfo {
    let mut i = ObjectInfo {
        etag: etag.into(),
        version_id: Some("r".into()),
        ..Default::default()
    };
    i.metadata
        .insert(SOURCE_VERSION_META.into(), version.into());
    i
}

fn prev(version: &str, own: bool) -> PreviousReplica {
    PreviousReplica {
        version_id: version.into(),
        replica_etag: Some("e".into()),
        own,
    }
}

#[test]
fn only_an_own_small_version_of_a_key_never_replicated_here_writes_without_looking() {
    use TaskKind::*;
    let own = task(5, Version, "k", "v2");
    assert_eq!(
        first_look(&own, None, false),
        Look::Blind(Condition::IfNoneMatch)
    );
    assert_eq!(first_look(&own, Some(&prev("v1", true)), false), Look::Head);
    assert_eq!(first_look(&own, None, true), Look::Head, "in parts");
    assert_eq!(
        first_look(&task(0, Version, "k", "v2"), None, false),
        Look::Head
    );
    assert_eq!(
        first_look(&task(5, Delete, "k", "d"), None, false),
        Look::Head
    );
    assert_eq!(
        first_look(&task(5, Version, "d/", "v"), None, false),
        Look::Head
    );
}

#[test]
fn the_destination_is_replaced_only_by_a_newer_version_and_only_as_seen() {
    use TaskKind::*;
    let t = task(5, Version, "k", "v2");
    assert_eq!(
        verdict(&t, Some(&replica_of("v2", "e2")), None, false),
        Verdict::There(Some("r".into()))
    );
    assert_eq!(
        verdict(&t, None, None, false),
        Verdict::Write(Some(Condition::IfNoneMatch))
    );
    // Another version there: the source decides, unless this journal
    // wrote it from an earlier upload of its own.
    assert_eq!(
        verdict(&t, Some(&replica_of("v9", "e9")), None, false),
        Verdict::AskOrder("v9".into())
    );
    assert_eq!(
        verdict(
            &t,
            Some(&replica_of("v1", "e1")),
            Some(&prev("v1", true)),
            false
        ),
        Verdict::Write(Some(Condition::IfMatch("e1".into())))
    );
    assert_eq!(
        verdict(
            &t,
            Some(&replica_of("v1", "e1")),
            Some(&prev("v1", false)),
            false
        ),
        Verdict::AskOrder("v1".into()),
        "a discovered version's order is the source's to say"
    );
    let foreign = task(0, Version, "k", "v2");
    assert_eq!(
        verdict(
            &foreign,
            Some(&replica_of("v1", "e1")),
            Some(&prev("v1", true)),
            false
        ),
        Verdict::AskOrder("v1".into())
    );
    // An object nobody replicated (no source version) is replaced as seen.
    let plain = ObjectInfo {
        etag: "x".into(),
        ..Default::default()
    };
    assert_eq!(
        verdict(&t, Some(&plain), None, false),
        Verdict::Write(Some(Condition::IfMatch("x".into())))
    );
    assert_eq!(verdict(&t, Some(&plain), None, true), Verdict::Write(None));
    let del = task(5, Delete, "k", "d1");
    assert_eq!(verdict(&del, None, None, false), Verdict::Absent);
    assert_eq!(
        verdict(&del, Some(&replica_of("v1", "e1")), None, false),
        Verdict::AskOrder("v1".into())
    );
    assert_eq!(
        verdict(&del, Some(&plain), None, false),
        Verdict::Write(None)
    );
    let marker = task(5, Version, "d/", "m1");
    assert_eq!(
        verdict(&marker, Some(&plain), None, false),
        Verdict::Write(None)
    );
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for at in 0..=p.len() {
            let mut q = p.clone();
            q.insert(at, n - 1);
            out.push(q);
        }
    }
    out
}

/// Versions queued in any order (as discovery, resync and other hosts
/// do) leave the destination on the source's newest, and never write an
/// older version over a newer one.
#[tokio::test]
async fn versions_replicated_in_any_order_leave_the_destination_on_the_newest() {
    in_any_order(true).await;
}

/// The same at a destination that answers NotImplemented to conditions:
/// replicas are written after a look, without one.
#[tokio::test]
async fn a_destination_without_conditional_puts_still_ends_on_the_newest() {
    in_any_order(false).await;
}

async fn in_any_order(conditions: bool) {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::config::two_region_test_config(
        "[[rule]]\nid = \"all\"\ndestination = \"eu\"\ndelete_markers = true\n",
    );
    for (case, order) in permutations(4).into_iter().enumerate() {
        let journal = Journal::open(&dir.path().join(format!("j{case}.db"))).unwrap();
        let src = Arc::new(MemoryStore::new("src"));
        let dst = Arc::new(MemoryStore::new("dst"));
        if !conditions {
            dst.refuse_conditions();
        }
        let mut versions = Vec::new();
        for i in 0..4 {
            let body = format!("body {i}");
            let r = src
                .put("k", PutBody::Bytes(body.into()), &PutOptions::default())
                .await
                .unwrap();
            versions.push(r.version_id.unwrap());
        }
        let rep = replicator(&config, src.clone(), &dst, &journal);
        for i in &order {
            let t = to_eu(None);
            let tasks = journal
                .add_resync_tasks(vec![("k".into(), versions[*i].clone(), 6, t)])
                .await
                .unwrap();
            rep.enqueue(tasks);
        }
        assert_eq!(rep.drain(Duration::from_secs(10), |_| {}).await, 0);
        let mut carried = Vec::new();
        for (id, _) in dst.history("k") {
            let info = dst.head("k", Some(&id)).await.unwrap();
            let v = &info.metadata[SOURCE_VERSION_META];
            carried.push(versions.iter().position(|x| x == v).unwrap());
        }
        assert_eq!(carried.last(), Some(&3), "order {order:?}: {carried:?}");
        assert!(
            carried.windows(2).all(|w| w[0] < w[1]),
            "order {order:?}: replicas {carried:?} go only forward"
        );
    }
}

/// A version deleted for good (DELETE naming it) before its replica was
/// written leaves nothing to copy: the task completes, it does not fail
/// forever.
#[tokio::test]
async fn a_version_deleted_for_good_before_its_copy_completes_without_a_replica() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        crate::config::two_region_test_config("[[rule]]\nid = \"all\"\ndestination = \"eu\"\n");
    let journal = Journal::open(&dir.path().join("j.db")).unwrap();
    let src = Arc::new(MemoryStore::new("src"));
    let dst = Arc::new(MemoryStore::new("dst"));
    let put = src
        .put("k", PutBody::Bytes("brief".into()), &PutOptions::default())
        .await
        .unwrap();
    let version = put.version_id.unwrap();
    src.delete_version("k", &version).await.unwrap();
    let rep = replicator(&config, src.clone(), &dst, &journal);
    let t = to_eu(None);
    let tasks = journal
        .add_resync_tasks(vec![("k".into(), version, 5, t)])
        .await
        .unwrap();
    rep.enqueue(tasks);
    assert_eq!(rep.drain(Duration::from_secs(10), |_| {}).await, 0);
    assert!(journal.failed_tasks().await.unwrap().is_empty());
    assert!(dst.history("k").is_empty(), "nothing written");
}

/// Bytes that are not the version's never become a replica, the task stays
/// pending and says why: a source holding other bytes than the upload sent
/// (its CRC, carried in the task; one PUT), and ranges garbled on the way
/// from an honest source (a copy in parts: the parts' CRCs, combined, are
/// compared before the upload is completed).
#[tokio::test]
async fn bytes_that_do_not_match_the_uploaded_checksum_never_become_a_replica() {
    for (size, garbled) in [(5usize, false), (20 << 20, true)] {
        let dir = tempfile::tempdir().unwrap();
        let config =
            crate::config::two_region_test_config("[[rule]]\nid = \"all\"\ndestination = \"eu\"\n");
        let journal = Journal::open(&dir.path().join("j.db")).unwrap();
        let src = Arc::new(MemoryStore::new("src"));
        let dst = Arc::new(MemoryStore::new("dst"));
        let put = src
            .put(
                "k",
                PutBody::Bytes(vec![1u8; size].into()),
                &PutOptions::default(),
            )
            .await
            .unwrap();
        let faulty = Arc::new(crate::store::FaultyStore::new(src.clone()));
        faulty.flip_ranges(garbled);
        let rep = replicator(&config, faulty, &dst, &journal);
        let uploaded = if garbled { 1u8 } else { 2u8 };
        let sent = Crc64::of(&vec![uploaded; size]).to_base64();
        let t = to_eu(Some(sent));
        let tasks = journal
            .add_resync_tasks(vec![("k".into(), put.version_id.unwrap(), size as u64, t)])
            .await
            .unwrap();
        rep.enqueue(tasks);
        assert_eq!(rep.drain(Duration::from_millis(1500), |_| {}).await, 1);
        assert!(dst.history("k").is_empty(), "{size} bytes: no replica");
        let open = journal.open_tasks().await.unwrap();
        let why = open[0].error.clone().unwrap_or_default();
        assert!(why.contains("CRC-64/NVME"), "{size} bytes: {why}");
    }
}
