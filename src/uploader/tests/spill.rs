//! A queue longer than the window: held ops in memory, the rest in the
//! journal only (see "Spill").

use super::*;

/// Uploads held (a long write-back delay) in a window of `held`.
fn start_held(r: &Rig, held: usize) -> Uploader {
    start_window(r, held, Duration::from_secs(3600), Recovered::default())
}

/// An uploader with a window of `held`, a write-back `delay`, and what a
/// start found in the journal.
fn start_window(r: &Rig, held: usize, delay: Duration, recovered: Recovered) -> Uploader {
    let cfg = UploadConfig {
        held_in_memory: held,
        ..Default::default()
    };
    Uploader::start(
        r.faulty.clone(),
        r.journal.clone(),
        r.cache.clone(),
        cfg,
        delay,
        recovered,
        EachVersion::default(),
    )
    .0
}

/// The bytes of every version of `key` in the source, oldest first.
fn bodies(r: &Rig, key: &str) -> Vec<Vec<u8>> {
    r.mem
        .history(key)
        .into_iter()
        .map(|(_, b)| b.unwrap().to_vec())
        .collect()
}

fn held(up: &Uploader) -> usize {
    up.inner.queue.lock().unwrap().count
}

#[tokio::test]
async fn a_queue_longer_than_the_window_waits_in_the_journal_and_lands_in_order() {
    let r = rig();
    let up = start_held(&r, 3);
    let mut seqs = Vec::new();
    let mut files = Vec::new();
    // Twelve versions: four keys, three each, interleaved.
    for round in 0..3 {
        for k in 0..4 {
            let body = format!("k{k} v{round}");
            let f = staged_file(&r, body.as_bytes());
            seqs.push(
                up.submit(put(&format!("d/k{k}"), &f, body.len() as u64))
                    .await
                    .unwrap(),
            );
            files.push(f);
        }
    }
    assert_eq!(up.pending_count(), 12, "spilled ops count as pending");
    assert_eq!(held(&up), 3, "three in memory");
    // Lookups see the spilled ops.
    let k1: Vec<i64> = up.pending_for("d/k1").iter().map(|o| o.seq).collect();
    assert_eq!(k1, vec![seqs[1], seqs[5], seqs[9]]);
    let under: Vec<(String, i64)> = up
        .pending_under("d/")
        .into_iter()
        .map(|o| (o.key, o.seq))
        .collect();
    assert_eq!(
        under,
        (0..4)
            .map(|k| (format!("d/k{k}"), seqs[8 + k]))
            .collect::<Vec<_>>(),
        "the newest of each key"
    );
    assert_eq!(up.users(&files[10]), vec![seqs[10]]);
    assert!(up.reads(&files[10]) && up.references(&files[10]));
    assert!(!up.reads("nothing-reads-this"));

    // Waiting for a spilled op makes it and everything before it due.
    up.wait(seqs[6]).await.unwrap();
    for k in 0..4 {
        let history = r.mem.history(&format!("d/k{k}"));
        let waited_for = if k < 3 { 2 } else { 1 };
        assert!(history.len() >= waited_for, "k{k}: {history:?}");
    }
    up.hurry();
    assert_eq!(up.drain(Duration::from_secs(10), |_| {}).await, 0);
    for k in 0..4 {
        let want: Vec<Vec<u8>> = (0..3).map(|v| format!("k{k} v{v}").into_bytes()).collect();
        assert_eq!(
            bodies(&r, &format!("d/k{k}")),
            want,
            "k{k}: every version, in staging order"
        );
    }
    let q = up.inner.queue.lock().unwrap();
    assert!(q.spill.is_none() && q.preloaded.is_empty(), "{:?}", q.spill);
}

#[tokio::test]
async fn metadata_amended_on_a_spilled_op_is_the_metadata_it_uploads() {
    let r = rig();
    let up = start_held(&r, 2);
    for i in 0..5 {
        let f = staged_file(&r, b"x");
        up.submit(put(&format!("k{i}"), &f, 1)).await.unwrap();
    }
    assert_eq!(held(&up), 2);
    let meta = ObjectMeta::new(crate::meta::S_IFREG | 0o600, 7, 8).to_json();
    let amended = up.amend_meta("k4", meta).await.unwrap();
    assert!(amended.is_some(), "the spilled put takes the metadata");
    up.hurry();
    assert_eq!(up.drain(Duration::from_secs(10), |_| {}).await, 0);
    let head = r.mem.head("k4", None).await.unwrap();
    let got = ObjectMeta::from_object(&head, &ObjectMeta::new(0, 0, 0));
    assert_eq!((got.mode & 0o777, got.uid, got.gid), (0o600, 7, 8));
    assert_eq!(
        r.mem.history("k4").len(),
        1,
        "one version, not a copy after it"
    );
}

#[tokio::test]
async fn a_restart_queues_the_window_and_reads_the_rest_back_from_the_journal() {
    let r = rig();
    for i in 0..10 {
        let f = staged_file(&r, format!("v{i}").as_bytes());
        r.journal
            .stage(put(&format!("k{}", i % 4), &f, 2))
            .await
            .unwrap();
    }
    // As `service::start` does: the oldest `held`, the seqs of the rest.
    let recovered = r.journal.open_ops_after(0, 3).await.unwrap();
    let spilled = r
        .journal
        .open_seqs_after(recovered.last().unwrap().seq)
        .await
        .unwrap();
    assert_eq!(spilled.len(), 7);
    let up = start_window(
        &r,
        3,
        Duration::ZERO,
        Recovered {
            held: recovered,
            spilled,
        },
    );
    assert_eq!(up.pending_count(), 10);
    assert_eq!(up.drain(Duration::from_secs(10), |_| {}).await, 0);
    for k in 0..4 {
        let want: Vec<Vec<u8>> = (0..10)
            .filter(|i| i % 4 == k)
            .map(|i| format!("v{i}").into_bytes())
            .collect();
        assert_eq!(bodies(&r, &format!("k{k}")), want, "k{k}");
    }
    assert!(r.journal.open_ops().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_gone_put_is_superseded_by_a_spilled_put_of_its_key() {
    let r = rig();
    let up = start_held(&r, 1);
    let gone = staged_file(&r, b"old");
    up.submit(put("k", &gone, 3)).await.unwrap();
    let other = staged_file(&r, b"o");
    up.submit(put("other", &other, 1)).await.unwrap();
    let newer = staged_file(&r, b"new");
    let last = up.submit(put("k", &newer, 3)).await.unwrap();
    assert_eq!(held(&up), 1, "only the first is in memory");
    std::fs::remove_file(r.cache.data_path(&gone)).unwrap();
    up.wait(last).await.unwrap();
    assert_eq!(
        bodies(&r, "k"),
        vec![b"new".to_vec()],
        "the gone put dropped, the spilled one landed"
    );
    assert_eq!(up.drain(Duration::from_secs(10), |_| {}).await, 0);
}

/// The spill's count against a set of seqs, under random adds and removes.
#[test]
fn the_spill_counts_exactly_what_was_added_and_not_removed() {
    use proptest::prelude::*;
    proptest!(|(steps in proptest::collection::vec((any::<bool>(), 0i64..40), 0..200))| {
        let mut s = queue::Spill::new(0);
        let mut model = std::collections::BTreeSet::new();
        for (add, seq) in steps {
            if add {
                s.add(seq);
                model.insert(seq);
            } else {
                prop_assert_eq!(s.remove(seq), model.remove(&seq));
            }
            prop_assert_eq!(s.count(), model.len());
            prop_assert_eq!(s.last(), model.last().copied());
            for q in 0..40 {
                prop_assert_eq!(s.contains(q), model.contains(&q));
            }
        }
    });
}
