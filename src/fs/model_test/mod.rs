//! The reference model (STYLE.md, "Tests in layers", 2): random sequences of
//! namespace and data operations applied to the mount-free core over the
//! in-memory store, and to a plain in-memory tree. Each operation must answer
//! as the tree says (the same errno); after a drain the queue is empty,
//! nothing failed, the bucket's live keys, bytes and modes are the tree's,
//! every destination holds the source's files, and a fresh core (a remount)
//! shows the tree again.
//!
//! Between operations the uploads run in the background, so every operation
//! meets queued work: renames of directories holding files whose uploads are
//! queued, deletes of names whose copies are queued, restarts (dropping the
//! core and its runtime, as kill -9 does, then reopening the journal) with
//! anything queued, and writes failing transiently.
//!
//! `model_random_sequences` runs proptest cases, shrunk on failure; a failure
//! it finds becomes a named test in `regressions`. `model_concurrent_actors`
//! runs several actors at once, each in its own subtree, on one core.
//! Half the cases keep only three uploads in memory, so most of the queue
//! spills to the journal and is looked up and read back from there.
//! `REGIONFS_MODEL_CASES=N` runs more cases (a soak), `REGIONFS_MODEL_HOLD=1`
//! only held uploads (sequences that repeat exactly, so shrink best).

mod harness;
mod oracle;
mod regressions;
mod steps;
mod tree;
mod world;

use proptest::prelude::*;

use harness::Run;
use steps::{step, Step};

fn run_steps(steps: &[Step], write_back_delay_ms: Option<u64>, held: usize) {
    let foreign = steps.iter().any(|s| matches!(s, Step::Foreign(..)));
    let mut run = Run::with_window(write_back_delay_ms, foreign, held);
    for s in steps {
        run.apply(s);
    }
    run.finish();
}

fn cases() -> u32 {
    std::env::var("REGIONFS_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

/// Write-back delays: held (repeatable: see [`World::new`]), none, short.
/// `REGIONFS_MODEL_HOLD=1`: held only, for a sequence that shrinks best.
fn delays() -> BoxedStrategy<Option<u64>> {
    if std::env::var("REGIONFS_MODEL_HOLD").is_ok_and(|v| v == "1") {
        return Just(None).boxed();
    }
    prop_oneof![Just(None), Just(Some(0u64)), Just(Some(20u64))].boxed()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 300,
        max_shrink_time: 180_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn model_random_sequences(
        steps in proptest::collection::vec(step(), 1..80),
        delay in delays(),
        small_window in any::<bool>(),
    ) {
        run_steps(&steps, delay, if small_window { harness::SMALL_WINDOW } else { harness::HELD });
    }
}

/// Runs a sequence as a failure message prints it.
fn replay(write_back_delay_ms: Option<u64>, steps: &str) {
    run_steps(
        &steps::parse_steps(steps),
        write_back_delay_ms,
        harness::HELD,
    );
}

/// Rounds of concurrent actors (see [`model_concurrent_actors`]).
const ROUNDS: usize = 6;
const ACTORS: usize = 3;
const STEPS_PER_ROUND: usize = 12;

fn seeds() -> u64 {
    std::env::var("REGIONFS_MODEL_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

/// Several actors at once on one core, each in a directory of its own:
/// each round, every actor runs its random steps at the same time as the
/// others (threads driving the one runtime), sharing the uploader, the
/// journal and the cache; between rounds, a settle, an outage or a
/// restart. Seeded: a failure names its seed. `REGIONFS_MODEL_SEEDS=N`
/// runs more.
#[test]
fn model_concurrent_actors() {
    for seed in 0..seeds() {
        let outcome = std::panic::catch_unwind(|| concurrent_run(seed));
        if let Err(e) = outcome {
            eprintln!("model_concurrent_actors: seed {seed} failed");
            std::panic::resume_unwind(e);
        }
    }
}

fn concurrent_run(seed: u64) {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    let mut draw = |s: &BoxedStrategy<Step>| s.new_tree(&mut runner).unwrap().current();
    let strategy = step().boxed();
    let delay = [Some(0), Some(20)][seed as usize % 2];
    // Every third seed, another client writes too.
    let foreign = seed % 3 == 2;
    // Seeds 2 and 3 (of every four) keep few uploads in memory.
    let held = if seed / 2 % 2 == 1 {
        harness::SMALL_WINDOW
    } else {
        harness::HELD
    };
    let mut run = Run::with_actors(delay, foreign, held, ACTORS);
    for _ in 0..ROUNDS {
        let rounds: Vec<Vec<Step>> = (0..ACTORS)
            .map(|_| {
                (0..STEPS_PER_ROUND)
                    .map(|_| draw(&strategy))
                    .filter(|s| !matches!(s, Step::Settle | Step::Outage(_) | Step::Restart))
                    .filter(|s| foreign || !matches!(s, Step::Foreign(..)))
                    .collect()
            })
            .collect();
        {
            let (up, actors) = run.split();
            std::thread::scope(|scope| {
                for (actor, steps) in actors.iter_mut().zip(&rounds) {
                    scope.spawn(move || {
                        let mut at = harness::At {
                            a: actor,
                            up,
                            delay,
                        };
                        for s in steps {
                            at.apply(s);
                        }
                    });
                }
            });
        }
        match draw(&strategy) {
            Step::Restart => run.apply(&Step::Restart),
            Step::Outage(n) => run.apply(&Step::Outage(n)),
            _ => run.apply(&Step::Settle),
        }
    }
    run.finish();
}
