use super::worker::pause_after_pass;
use super::*;

#[test]
fn the_oldest_open_task_counts_the_ones_in_the_journal_only() {
    let task = |id: i64, created_at_ms: i64| Task {
        checksum: None,
        id,
        seq: id,
        key: format!("k{id}"),
        version_id: "v".into(),
        destination: "eu".into(),
        rule_id: "all".into(),
        kind: TaskKind::Version,
        size: 1,
        storage_class: None,
        status: TaskStatus::Pending,
        attempts: 0,
        error: None,
        replica_version: None,
        created_at_ms,
    };
    let mut q = Queue {
        open: BTreeMap::new(),
        running: HashSet::new(),
        retry_at: HashMap::new(),
        held: HashMap::new(),
        failed: HashMap::new(),
        spilled: HashMap::new(),
        refilling: HashSet::new(),
        done_while_refilling: HashSet::new(),
    };
    q.insert(task(1, 100));
    assert_eq!(q.oldest_open_ms()["eu"], 100);
    // Staged earlier, recorded later (a large upload), left to the journal.
    q.spill(&task(2, 50));
    assert_eq!(q.oldest_open_ms()["eu"], 50);
    assert_eq!(q.pending(), 2);
}

#[test]
fn scheduling_passes_take_at_most_a_tenth_of_a_core() {
    assert_eq!(pause_after_pass(Duration::from_micros(300)), None);
    let took = Duration::from_millis(8);
    let pause = pause_after_pass(took).unwrap();
    assert!(
        took + pause >= took * 10,
        "{pause:?} after a pass of {took:?}"
    );
}
