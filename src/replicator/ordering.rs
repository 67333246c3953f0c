//! Which replication tasks may run now (pure).
//!
//! Versions of one key reach a destination in source order: for each
//! (key, destination) only the oldest open task may run, and only while no task
//! of that pair is running. So a late copy of v1 can never land after v2.
//! Different keys, and one key's different destinations, run in parallel, up
//! to a per-destination limit.

use std::collections::{HashMap, HashSet};

/// A task as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued<'a> {
    pub id: i64,
    pub key: &'a str,
    pub destination: &'a str,
    /// Its retry backoff has passed.
    pub due: bool,
}

/// The ids to start now. `queued` is in id order (source order per key);
/// `running` holds the (key, destination) pairs with a task in flight;
/// `free` the free worker slots per destination.
pub fn runnable(
    queued: &[Queued<'_>],
    running: &HashSet<(String, String)>,
    free: &HashMap<String, usize>,
) -> Vec<i64> {
    let running: HashSet<(&str, &str)> = running
        .iter()
        .map(|(k, d)| (k.as_str(), d.as_str()))
        .collect();
    let mut blocked: HashSet<(&str, &str)> = HashSet::new();
    let mut slots: HashMap<&str, usize> = HashMap::new();
    // Once every slot is taken nothing else can start: the rest of a long
    // queue is not looked at.
    let mut open_slots: usize = free.values().sum();
    let mut out = Vec::new();
    for q in queued {
        if open_slots == 0 {
            break;
        }
        let pair = (q.key, q.destination);
        // The first task of a pair decides for every later one of that pair.
        if !blocked.insert(pair) {
            continue;
        }
        if !q.due || running.contains(&pair) {
            continue;
        }
        let left = slots
            .entry(q.destination)
            .or_insert_with(|| free.get(q.destination).copied().unwrap_or(0));
        if *left == 0 {
            continue;
        }
        *left -= 1;
        open_slots -= 1;
        out.push(q.id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: i64, key: &'static str, dest: &'static str, due: bool) -> Queued<'static> {
        Queued {
            id,
            key,
            destination: dest,
            due,
        }
    }

    fn free(n: usize) -> HashMap<String, usize> {
        [("eu".to_string(), n), ("ap".to_string(), n)]
            .into_iter()
            .collect()
    }

    #[test]
    fn only_the_oldest_task_of_a_key_and_destination_runs() {
        let tasks = [
            q(1, "k", "eu", true),
            q(2, "k", "eu", true),
            q(3, "k", "ap", true),
            q(4, "j", "eu", true),
        ];
        assert_eq!(runnable(&tasks, &HashSet::new(), &free(8)), vec![1, 3, 4]);
    }

    #[test]
    fn a_running_pair_blocks_its_later_versions() {
        let tasks = [q(2, "k", "eu", true), q(3, "k", "eu", true)];
        let running = [("k".to_string(), "eu".to_string())].into_iter().collect();
        assert!(runnable(&tasks, &running, &free(8)).is_empty());
    }

    #[test]
    fn a_task_waiting_for_backoff_holds_back_newer_versions() {
        let tasks = [q(1, "k", "eu", false), q(2, "k", "eu", true)];
        assert!(runnable(&tasks, &HashSet::new(), &free(8)).is_empty());
    }

    #[test]
    fn each_destination_has_its_own_worker_limit() {
        let tasks = [
            q(1, "a", "eu", true),
            q(2, "b", "eu", true),
            q(3, "c", "ap", true),
        ];
        assert_eq!(runnable(&tasks, &HashSet::new(), &free(1)), vec![1, 3]);
    }

    /// Exhaustive over small queues: whatever the due flags, running pairs and
    /// limits, a started task is the oldest open one of its pair, no pair starts
    /// twice, no running pair starts again, and no destination exceeds its slots.
    #[test]
    fn exhaustively_never_reorders_a_key_at_a_destination() {
        let keys = ["a", "b"];
        let dests = ["eu", "ap"];
        // 5 tasks, each one of 4 (key, dest) pairs, each due or not: 8^5 queues.
        for code in 0..8u32.pow(5) {
            let tasks: Vec<Queued> = (0..5)
                .map(|i| {
                    let c = (code / 8u32.pow(i)) % 8;
                    q(
                        i as i64,
                        keys[(c & 1) as usize],
                        dests[((c >> 1) & 1) as usize],
                        c & 4 != 0,
                    )
                })
                .collect();
            for run_mask in 0..4u32 {
                let running: HashSet<(String, String)> = (0..2)
                    .filter(|b| run_mask & (1 << b) != 0)
                    .map(|b| (keys[b].to_string(), "eu".to_string()))
                    .collect();
                for limit in 0..3 {
                    let started = runnable(&tasks, &running, &free(limit));
                    let mut pairs = HashSet::new();
                    let mut per_dest: HashMap<&str, usize> = HashMap::new();
                    for id in &started {
                        let t = &tasks[*id as usize];
                        assert!(t.due);
                        assert!(pairs.insert((t.key, t.destination)), "a pair started twice");
                        assert!(!running.contains(&(t.key.to_string(), t.destination.to_string())));
                        let oldest = tasks
                            .iter()
                            .find(|x| x.key == t.key && x.destination == t.destination)
                            .unwrap();
                        assert_eq!(oldest.id, t.id, "a newer version overtook an older one");
                        *per_dest.entry(t.destination).or_default() += 1;
                    }
                    assert!(per_dest.values().all(|n| *n <= limit));
                }
            }
        }
    }
}
