use super::*;
use crate::store::{MemoryStore, PutBody, PutOptions};

fn config(tag_rule: bool) -> Config {
    let tags = if tag_rule {
        "[[rule]]\nid = \"tagged\"\npriority = 1\nprefix = \"t/\"\ndestination = \"eu\"\ntags = { keep = \"yes\" }\n"
    } else {
        ""
    };
    crate::config::two_region_test_config(&format!(
            "[[rule]]\nid = \"all\"\nprefix = \"a/\"\ndestination = \"eu\"\ndelete_markers = true\n{tags}"
        ))
}

async fn put(s: &MemoryStore, key: &str, body: &str) {
    s.put(
        key,
        PutBody::Bytes(body.to_string().into()),
        &PutOptions::default(),
    )
    .await
    .unwrap();
}

struct Rig {
    _dir: tempfile::TempDir,
    src: Arc<MemoryStore>,
    dst: Arc<MemoryStore>,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            _dir: tempfile::tempdir().unwrap(),
            src: Arc::new(MemoryStore::new("src")),
            dst: Arc::new(MemoryStore::new("dst")),
        }
    }

    /// A discovery with its own journal (a host, or a share).
    fn discovery(&self, name: &str, shard: Shard) -> (Discovery, Replicator) {
        let c = config(true);
        let journal = Journal::open(&self._dir.path().join(format!("{name}.db"))).unwrap();
        let rep = Replicator::start_with(
            &c,
            self.src.clone(),
            HashMap::from([("eu".to_string(), self.dst.clone() as Arc<dyn ObjectStore>)]),
            journal.clone(),
            vec![],
        );
        (
            Discovery::new(&c, self.src.clone(), journal, rep.clone(), shard),
            rep,
        )
    }

    fn replica_count(&self) -> usize {
        (0..40)
            .map(|i| self.dst.history(&format!("a/{i}")).len())
            .sum()
    }
}

#[test]
fn shares_split_every_key_exactly_once_and_parse_as_i_of_n() {
    let shards: Vec<Shard> = (1..=4)
        .map(|i| Shard::parse(&format!("{i}/4")).unwrap())
        .collect();
    for k in 0..2000 {
        let key = format!("dir/{k}.dat");
        assert_eq!(shards.iter().filter(|s| s.owns(&key)).count(), 1, "{key}");
    }
    // Stable across releases and hosts: the hash is FNV-1a, not std's.
    assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    assert!(Shard::ALL.owns("anything"));
    for bad in ["0/4", "5/4", "1/0", "2", "a/b"] {
        assert!(Shard::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_listing_covers_the_rules_within_the_source_prefix_once() {
    let c = config(true);
    assert_eq!(listing_prefixes(&c.rules, ""), vec!["a/", "t/"]);
    assert_eq!(listing_prefixes(&c.rules, "a/b/"), vec!["a/b/"]);
    assert_eq!(listing_prefixes(&c.rules, "z/"), Vec::<String>::new());
    let mut all = c.rules.clone();
    all[0].prefix = String::new();
    assert_eq!(listing_prefixes(&all, ""), vec![""]);
}

#[test]
fn a_key_is_looked_at_when_new_changed_gone_or_not_yet_settled() {
    let at = |s: u64| Some(std::time::UNIX_EPOCH + Duration::from_secs(s));
    let entry = |k: &str, e: &str, t: u64| ListEntry {
        key: k.into(),
        size: 1,
        etag: e.into(),
        last_modified: at(t),
    };
    let seen = |k: &str, e: &str, t: i64, deleted: bool, settled: bool| Seen {
        key: k.into(),
        version_id: "v".into(),
        etag: e.into(),
        modified_ms: Some(t * 1000),
        deleted,
        settled,
    };
    let listed = [
        entry("same", "e", 5),
        entry("new", "e", 5),
        entry("etag", "e2", 5),
        entry("time", "e", 6),
        entry("fresh", "e", 5),
        entry("back", "e", 5),
    ];
    let rows = [
        seen("same", "e", 5, false, true),
        seen("etag", "e", 5, false, true),
        seen("time", "e", 5, false, true),
        seen("fresh", "e", 5, false, false),
        seen("back", "e", 5, true, true),
        seen("gone", "e", 5, false, true),
        seen("was-gone", "", 5, true, true),
    ];
    assert_eq!(
        changed_keys(&listed, &rows),
        vec!["back", "etag", "fresh", "gone", "new", "time"]
    );
}

#[test]
fn new_versions_are_those_above_the_one_seen_oldest_first() {
    let v = |id: &str, t: u64| VersionEntry {
        key: "k".into(),
        version_id: id.into(),
        is_latest: false,
        is_delete_marker: false,
        size: 1,
        etag: "e".into(),
        last_modified: Some(std::time::UNIX_EPOCH + Duration::from_secs(t)),
    };
    let list = [v("v4", 4), v("v3", 3), v("v2", 2), v("v1", 1)];
    let ids = |x: Vec<&VersionEntry>| x.iter().map(|v| v.version_id.clone()).collect::<Vec<_>>();
    let seen = |id: &str, t: i64| Seen {
        key: "k".into(),
        version_id: id.into(),
        etag: "e".into(),
        modified_ms: Some(t * 1000),
        deleted: false,
        settled: true,
    };
    assert_eq!(ids(new_versions(&list, None)), ["v1", "v2", "v3", "v4"]);
    assert_eq!(ids(new_versions(&list, Some(&seen("v2", 2)))), ["v3", "v4"]);
    assert!(new_versions(&list, Some(&seen("v4", 4))).is_empty());
    // The one seen was removed (lifecycle): what is newer than it.
    assert_eq!(
        ids(new_versions(&list, Some(&seen("gone", 2)))),
        ["v3", "v4"]
    );
    let row = seen_after("k", &list, 4_000 + SETTLE.as_millis() as i64 + 1).unwrap();
    assert_eq!((row.version_id.as_str(), row.settled), ("v4", true));
    assert!(!seen_after("k", &list, 4_000).unwrap().settled);
}

/// Writes by anyone are found and replicated; the next pass queues
/// nothing; a fresh journal (a share moved to another host) queues them
/// again and writes no duplicate replica.
#[tokio::test]
async fn foreign_writes_are_replicated_once_and_a_moved_share_copies_nothing_twice() {
    let r = Rig::new();
    for i in 0..30 {
        put(&r.src, &format!("a/{i}"), "one").await;
    }
    put(&r.src, "a/5", "two").await;
    r.src.delete("a/6").await.unwrap();
    put(&r.src, "outside/x", "not in a rule").await;
    let (d, rep) = r.discovery("host1", Shard::ALL);
    let quick = d.pass(false).await.unwrap();
    assert_eq!(quick.queued, 30, "every version of the listed keys");
    let first = d.pass(true).await.unwrap();
    assert_eq!(first.keys, 29, "a/6 is deleted");
    assert_eq!(
        first.queued, 2,
        "a deleted key: its version and delete marker"
    );
    assert_eq!(rep.drain(Duration::from_secs(10), |_| {}).await, 0);
    assert_eq!(r.dst.history("a/5").len(), 2, "both versions, in order");
    let h6 = r.dst.history("a/6");
    assert_eq!(h6.len(), 2);
    assert!(h6[1].1.is_none(), "a/6 deleted at the destination");
    assert!(r.dst.history("outside/x").is_empty());
    let copies = r.replica_count();

    assert_eq!(d.pass(false).await.unwrap().queued, 0, "nothing new");
    put(&r.src, "a/7", "changed").await;
    put(&r.src, "a/31", "new").await;
    let next = d.pass(false).await.unwrap();
    assert_eq!(next.queued, 2);
    assert_eq!(rep.drain(Duration::from_secs(10), |_| {}).await, 0);
    assert_eq!(r.replica_count(), copies + 2);

    let (moved, rep2) = r.discovery("host2", Shard::ALL);
    assert!(moved.pass(false).await.unwrap().queued > 30);
    assert_eq!(rep2.drain(Duration::from_secs(10), |_| {}).await, 0);
    assert_eq!(r.replica_count(), copies + 2, "no duplicate replica");
}

/// Keys and versions spread over many pages (seven entries a page here)
/// are each found once, by quick passes and by sweeps.
#[tokio::test]
async fn listings_over_many_pages_find_every_version_once() {
    let r = Rig::new();
    for i in 0..23 {
        for n in 0..(i % 4) + 1 {
            put(&r.src, &format!("a/{i}"), &format!("{n}")).await;
        }
    }
    for i in [3, 9, 10] {
        r.src.delete(&format!("a/{i}")).await.unwrap();
    }
    let (mut d, rep) = r.discovery("h", Shard::ALL);
    d.page = 7;
    let sweep = d.pass(true).await.unwrap();
    let mut want = 0;
    for i in 0..23 {
        want += r.src.history(&format!("a/{i}")).len();
    }
    assert_eq!(sweep.queued, want);
    assert_eq!(d.pass(true).await.unwrap().queued, 0);
    assert_eq!(d.pass(false).await.unwrap().queued, 0);
    for i in 0..23 {
        put(&r.src, &format!("a/{i}"), "again").await;
    }
    assert_eq!(d.pass(false).await.unwrap().queued, 23);
    assert_eq!(d.pass(true).await.unwrap().queued, 0);
    // Pages with many changes list their whole range at once.
    d.range_at = 2;
    for i in 0..23 {
        put(&r.src, &format!("a/{i}"), "first").await;
        put(&r.src, &format!("a/{i}"), "again").await;
    }
    assert_eq!(d.pass(false).await.unwrap().queued, 46);
    assert_eq!(d.pass(true).await.unwrap().queued, 0);
    rep.drain(Duration::from_secs(10), |_| {}).await;
    for i in 0..23 {
        let h = r.dst.history(&format!("a/{i}"));
        assert_eq!(h.last().unwrap().1.as_deref(), Some(&b"again"[..]), "a/{i}");
    }
}

/// A version this journal uploaded itself, or has queued already, is
/// not queued again when a pass lists it.
#[tokio::test]
async fn own_uploads_and_queued_versions_are_not_queued_twice() {
    let r = Rig::new();
    for i in 0..3 {
        put(&r.src, &format!("a/{i}"), "x").await;
    }
    let version = |k: &str| r.src.history(k)[0].0.clone();
    let (d, _rep) = r.discovery("h", Shard::ALL);
    let seq = d
        .journal
        .stage(crate::journal::NewOp {
            key: "a/0".into(),
            kind: crate::journal::OpKind::Put,
            file: None,
            size: 1,
            meta: "{}".into(),
            src_key: None,
            src_version: None,
            inline: None,
            base: None,
        })
        .await
        .unwrap();
    d.journal.complete(seq, Some(version("a/0"))).await.unwrap();
    let task = NewTask {
        checksum: None,
        destination: "eu".into(),
        rule_id: "all".into(),
        kind: TaskKind::Version,
        storage_class: None,
    };
    d.journal
        .add_resync_tasks(vec![("a/1".into(), version("a/1"), 1, task)])
        .await
        .unwrap();
    assert_eq!(d.pass(true).await.unwrap().queued, 1, "a/2 only");
}

#[tokio::test]
async fn two_shares_replicate_every_key_exactly_once() {
    let r = Rig::new();
    for i in 0..40 {
        put(&r.src, &format!("a/{i}"), "x").await;
    }
    let (one, rep1) = r.discovery("s1", Shard::parse("1/2").unwrap());
    let (two, rep2) = r.discovery("s2", Shard::parse("2/2").unwrap());
    let (p1, p2) = (one.pass(true).await.unwrap(), two.pass(true).await.unwrap());
    assert_eq!(p1.queued + p2.queued, 40);
    assert!(p1.queued > 0 && p2.queued > 0);
    rep1.drain(Duration::from_secs(10), |_| {}).await;
    rep2.drain(Duration::from_secs(10), |_| {}).await;
    for i in 0..40 {
        assert_eq!(r.dst.history(&format!("a/{i}")).len(), 1, "a/{i}");
    }
}

#[tokio::test]
async fn a_tag_rule_sees_each_versions_tags() {
    let r = Rig::new();
    let tagged = PutOptions {
        tags: [("keep".to_string(), "yes".to_string())].into(),
        ..Default::default()
    };
    r.src
        .put("t/kept", PutBody::Bytes("k".into()), &tagged)
        .await
        .unwrap();
    put(&r.src, "t/untagged", "u").await;
    let (d, rep) = r.discovery("h", Shard::ALL);
    assert_eq!(d.pass(false).await.unwrap().queued, 1);
    rep.drain(Duration::from_secs(10), |_| {}).await;
    assert_eq!(r.dst.history("t/kept").len(), 1);
    assert!(r.dst.history("t/untagged").is_empty());
}
