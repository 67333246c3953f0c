//! Micro-benchmarks of the hot pure parts and the journal's group commit:
//! `cargo bench --bench hot_paths`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use regionfs::config::{plan_part_size, RuleConfig, GIB, MIB};
use regionfs::journal::{Journal, NewOp, OpKind};
use regionfs::replicator::ordering::{runnable, Queued};
use regionfs::replicator::rules::{Change, Rules};

fn rules(c: &mut Criterion) {
    let rules = Rules::new(
        (0..100)
            .map(|i| RuleConfig {
                id: format!("r{i}"),
                priority: i,
                prefix: format!("p{}/", i % 10),
                tags: if i % 3 == 0 {
                    [("class".to_string(), "critical".to_string())].into()
                } else {
                    BTreeMap::new()
                },
                destination: ["eu", "ap", "us"][i as usize % 3].to_string(),
                delete_markers: i % 2 == 0,
                storage_class: None,
                owner_override: None,
            })
            .collect(),
    );
    let tags: BTreeMap<String, String> = [("class".to_string(), "critical".to_string())].into();
    let md = BTreeMap::new();
    c.bench_function("rules: 100 rules, one key", |b| {
        b.iter(|| {
            black_box(rules.targets(black_box("p3/some/key.bin"), &tags, &md, Change::Version))
        })
    });
}

fn part_planning(c: &mut Criterion) {
    c.bench_function("part size for 1 GiB and 5 TiB", |b| {
        b.iter(|| {
            (
                black_box(plan_part_size(8 * MIB, GIB)),
                black_box(plan_part_size(8 * MIB, 5 * 1024 * GIB)),
            )
        })
    });
}

/// Queued tasks in id order, one per key, sent to `dest(i)`.
fn queued<'a>(keys: &'a [String], dest: fn(usize) -> &'static str, due: bool) -> Vec<Queued<'a>> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| Queued {
            id: i as i64,
            key: k,
            destination: dest(i),
            due,
        })
        .collect()
}

fn ordering(c: &mut Criterion) {
    let keys: Vec<String> = (0..2000).map(|i| format!("k{}", i % 500)).collect();
    let ready = queued(&keys, |i| if i % 2 == 0 { "eu" } else { "ap" }, true);
    let free: HashMap<String, usize> = [("eu".to_string(), 16), ("ap".to_string(), 16)].into();
    let running = HashSet::new();
    c.bench_function("ordering: 2000 queued tasks", |b| {
        b.iter(|| black_box(runnable(&ready, &running, &free)))
    });
    // A destination down for a while under load: every task waits for its
    // retry, so the whole queue is looked at and nothing starts.
    let keys: Vec<String> = (0..100_000).map(|i| format!("dir/file-{i}")).collect();
    let waiting = queued(&keys, |_| "eu", false);
    c.bench_function("ordering: 100000 queued tasks waiting for retry", |b| {
        b.iter(|| black_box(runnable(&waiting, &running, &free)))
    });
}

fn group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let journal = Journal::open(&dir.path().join("journal.db")).unwrap();
    let op = |i: usize| NewOp {
        key: format!("k{i}"),
        kind: OpKind::Put,
        file: Some(format!("f{i}")),
        size: 4096,
        meta: "{}".into(),
        src_key: None,
        src_version: None,
        inline: None,
        base: None,
    };
    c.bench_function("journal: 64 concurrent stages (one group commit)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut tasks = Vec::new();
                for i in 0..64 {
                    let j = journal.clone();
                    tasks.push(tokio::spawn(async move { j.stage(op(i)).await.unwrap() }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            })
        })
    });
    c.bench_function("journal: one stage (fsync'd commit)", |b| {
        b.iter(|| rt.block_on(journal.stage(op(0))).unwrap())
    });
}

criterion_group!(benches, rules, part_planning, ordering, group_commit);
criterion_main!(benches);
