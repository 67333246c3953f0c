//! kill -9 of the real binary, again and again, while a writer works: every file
//! whose close() or fsync() returned must end up in the source bucket with
//! exactly the bytes acknowledged, never torn.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bucket_contents, source_history, wait_for, Mount, Regions};

#[derive(Default)]
struct Ledger {
    /// key → bytes of the last write whose close()/fsync() returned.
    acked: HashMap<String, Vec<u8>>,
    /// key → bytes of a write in flight when the daemon died (may or may not land).
    in_flight: HashMap<String, Vec<Vec<u8>>>,
    /// Every content ever written per key (a torn body matches none of them).
    written: HashMap<String, Vec<Vec<u8>>>,
}

fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes files until the mount dies; records what was acknowledged.
fn writer(
    dir: std::path::PathBuf,
    round: u64,
    ledger: Arc<Mutex<Ledger>>,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> String {
    for i in 0u64.. {
        if stop.load(Ordering::SeqCst) {
            return "stopped".into();
        }
        // A few keys are overwritten across rounds; most are new.
        let key = if i % 4 == 0 {
            format!("hot/k{}", i % 8)
        } else {
            format!("r{round}/f{i}")
        };
        let len = match i % 13 {
            0 => 16 * 1024 * 1024 + 12345, // multipart, parts uploaded before close
            // One write-back request: its aligned middle goes direct, its tail buffered.
            6 => 700_001,
            n => (n as usize) * 3001,
        };
        let body = content(round * 1_000_003 + i, len);
        {
            let mut l = ledger.lock().unwrap();
            l.written.entry(key.clone()).or_default().push(body.clone());
            l.in_flight
                .entry(key.clone())
                .or_default()
                .push(body.clone());
        }
        let path = dir.join(&key);
        let result = (|| -> std::io::Result<()> {
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p)?;
            }
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&body)?;
            if i % 3 == 0 {
                f.sync_all()?; // acknowledged by fsync
            }
            // close() itself, not drop (which ignores its error): its success is the ack.
            let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
            if unsafe { libc::close(fd) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })();
        if let Err(e) = result {
            return format!("{key}: {e}"); // the daemon died: this write stays "in flight"
        }
        let mut l = ledger.lock().unwrap();
        l.in_flight.remove(&key);
        l.acked.insert(key, body);
        acked.fetch_add(1, Ordering::SeqCst);
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_acknowledged_write_survives_repeated_kill_9() {
    let r = Regions::start().await;
    let cache = tempfile::tempdir().unwrap();
    let mut m = Mount::start(&r.config(
        cache.path(),
        "[upload]\nmultipart_threshold = \"5MiB\"\npart_size = \"5MiB\"\n[durability]\nfsync = \"local\"\n",
    ));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let rounds = 20u64;
    let mut kills = 0;
    for round in 0..rounds {
        let acked = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let t = {
            let (dir, ledger, acked, stop) =
                (m.dir.clone(), ledger.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || writer(dir, round, ledger, acked, stop))
        };
        // Kill at a different point each round: after 1..=12 acknowledged files.
        let target = 1 + (round as usize * 7) % 12;
        wait_for(
            "the writer to make progress",
            Duration::from_secs(120),
            || {
                if t.is_finished() && acked.load(Ordering::SeqCst) < target {
                    return Some(());
                }
                (acked.load(Ordering::SeqCst) >= target).then_some(())
            },
        );
        if t.is_finished() {
            let why = t.join().unwrap();
            panic!(
                "round {round}: the writer stopped early at {why}\n{}",
                m.log_text()
            );
        }
        m.kill9();
        kills += 1;
        stop.store(true, Ordering::SeqCst);
        let why = t.join().unwrap();
        eprintln!("round {round}: writer stopped at: {why}");
        m.remount();
    }
    m.wait_uploaded(Duration::from_secs(300));
    let bucket: BTreeMap<String, Vec<u8>> = bucket_contents(&r.src, "").await;
    let l = ledger.lock().unwrap();
    assert!(
        l.acked.len() > 50,
        "only {} files acknowledged",
        l.acked.len()
    );
    for (key, want) in &l.acked {
        let got = bucket
            .get(key)
            .unwrap_or_else(|| panic!("acknowledged {key} is missing from the bucket"));
        let newer_in_flight = l
            .in_flight
            .get(key)
            .is_some_and(|v| v.iter().any(|b| b == got));
        assert!(
            got == want || newer_in_flight,
            "{key}: bucket holds {} bytes that are not the acknowledged {} bytes",
            got.len(),
            want.len()
        );
    }
    for (key, got) in &bucket {
        if key.ends_with('/') || key.contains(".regionfs") {
            continue;
        }
        let known = l
            .written
            .get(key)
            .is_some_and(|v| v.iter().any(|b| b == got));
        assert!(
            known,
            "{key}: torn or foreign content ({} bytes)",
            got.len()
        );
    }
    eprintln!(
        "kill -9 rounds: {kills}; acknowledged files checked: {}; objects in bucket: {}",
        l.acked.len(),
        bucket.len()
    );
}

/// Twenty small files staged with their uploads held, then kill -9: the
/// mount (to remount) and the bodies it must deliver.
fn twenty_staged_then_killed(r: &Regions, c: &std::path::Path, seed: u64) -> (Mount, Vec<Vec<u8>>) {
    let held = "[cache]\nwrite_back_delay = \"1h\"\n[durability]\nfsync = \"local\"\n";
    let mut m = Mount::start(&r.config(c, held));
    let bodies: Vec<Vec<u8>> = (0..20)
        .map(|i| content(seed + i, 1 + (i as usize) * 3000))
        .collect();
    for (i, b) in bodies.iter().enumerate() {
        std::fs::write(m.path(&format!("s{i}.bin")), b).unwrap();
    }
    assert_eq!(m.status(None)["uploads"]["pending"], 20);
    m.kill9();
    (m, bodies)
}

/// Remounts with uploads released and checks every body landed; returns the
/// daemon's log.
async fn remount_and_check_landed(
    r: &Regions,
    c: &std::path::Path,
    m: &mut Mount,
    bodies: &[Vec<u8>],
) -> String {
    std::fs::write(&m.config, r.config(c, "")).unwrap();
    m.remount();
    m.wait_uploaded(Duration::from_secs(120));
    let bucket = bucket_contents(&r.src, "").await;
    for (i, b) in bodies.iter().enumerate() {
        assert_eq!(bucket.get(&format!("s{i}.bin")), Some(b), "s{i}.bin");
    }
    m.log_text()
}

/// Small files are made durable by the journal commit alone (their cache
/// files are never synced). Simulate what a power loss may do to such files —
/// lose them — after kill -9: every acknowledged small file still lands whole.
#[tokio::test(flavor = "multi_thread")]
async fn small_files_staged_in_the_journal_survive_losing_their_cache_files() {
    let r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    let (mut m, bodies) = twenty_staged_then_killed(&r, c.path(), 0);
    // A power loss: the machine boots again (its boot id changes) and the
    // unsynced cache copies are gone or torn.
    std::fs::write(c.path().join("boot"), "a-boot-before-the-power-loss\n").unwrap();
    let data = c.path().join("data");
    let mut lost = 0;
    for e in std::fs::read_dir(&data).unwrap() {
        let p = e.unwrap().path();
        if lost % 2 == 0 {
            std::fs::remove_file(&p).unwrap();
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(0)
                .unwrap();
        }
        lost += 1;
    }
    assert_eq!(lost, 20, "every staged file had a cache file");
    let log = remount_and_check_landed(&r, c.path(), &mut m, &bodies).await;
    assert!(log.contains("restored from the journal"), "{log}");
}

/// After a crash of the daemon alone the page cache still holds every staged
/// file whole: the remount trusts them instead of rewriting each from the
/// journal (it then reads the journal only).
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_9_without_a_reboot_remounts_without_rewriting_the_staged_files() {
    let r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    let (mut m, bodies) = twenty_staged_then_killed(&r, c.path(), 100);
    let log = remount_and_check_landed(&r, c.path(), &mut m, &bodies).await;
    assert!(!log.contains("restored from the journal"), "{log}");
}

/// A backlog longer than the uploads held in memory: most of it waits in
/// the journal only. The mount still lists and reads every file, a chmod
/// after a close still makes one version, and after kill -9 and a remount
/// every acknowledged file lands with its latest bytes and mode.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_spilled_past_memory_lists_reads_and_lands_after_kill_9() {
    use std::os::unix::fs::PermissionsExt as _;
    let r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    let held = "[cache]\nwrite_back_delay = \"1h\"\n[upload]\nheld_in_memory = 4\n[durability]\nfsync = \"local\"\n";
    let mut m = Mount::start(&r.config(c.path(), held));
    std::fs::create_dir(m.path("d")).unwrap();
    let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..40u64 {
        let name = format!("d/f{i:02}.bin");
        let body = content(900 + i, 1 + (i as usize) * 2500);
        std::fs::write(m.path(&name), &body).unwrap();
        want.insert(name, body);
    }
    // Rewrites of early files: their new versions queue behind the spill.
    for i in [0u64, 7, 21] {
        let name = format!("d/f{i:02}.bin");
        let body = content(1900 + i, 4000);
        std::fs::write(m.path(&name), &body).unwrap();
        want.insert(name, body);
    }
    std::fs::set_permissions(m.path("d/f39.bin"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let pending = m.status(None)["uploads"]["pending"].as_u64().unwrap();
    assert!(pending >= 44, "{pending} uploads pending");
    let mut listed: Vec<String> = std::fs::read_dir(m.path("d"))
        .unwrap()
        .map(|e| format!("d/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    listed.sort();
    assert_eq!(listed, want.keys().cloned().collect::<Vec<_>>());
    for (name, body) in &want {
        assert_eq!(&std::fs::read(m.path(name)).unwrap(), body, "{name}");
    }
    m.kill9();

    std::fs::write(
        &m.config,
        r.config(c.path(), "[upload]\nheld_in_memory = 4\n"),
    )
    .unwrap();
    m.remount();
    m.wait_uploaded(Duration::from_secs(120));
    let bucket = bucket_contents(&r.src, "d/").await;
    for (name, body) in &want {
        assert_eq!(bucket.get(name), Some(body), "{name}");
    }
    let mode = std::fs::metadata(m.path("d/f39.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let versions = source_history(&r.src, "d/f39.bin").await;
    assert_eq!(
        versions.len(),
        1,
        "the chmod joined the queued put: {versions:?}"
    );
}
