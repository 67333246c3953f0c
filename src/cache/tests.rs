use super::spares::SPARES;
use super::*;
use crate::config::MIB;

#[test]
fn a_second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _a = Cache::open(dir.path(), 64 * MIB, Duration::from_secs(1)).unwrap();
    let e = Cache::open(dir.path(), 64 * MIB, Duration::from_secs(1))
        .err()
        .unwrap();
    assert!(matches!(e, CacheError::Locked { pid: Some(_), .. }), "{e}");
}

#[test]
fn clean_copies_beyond_the_count_limit_go_oldest_first_unless_open() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cache::open(dir.path(), 64 * MIB, Duration::from_secs(1)).unwrap();
    c.limit_clean_files(3);
    for i in 0..5 {
        let key = format!("k{i}");
        let (path, _) = c.begin_clean(&key, "t", 1).unwrap();
        c.clean_complete(&key, &path);
        if i != 0 {
            c.close_clean(&key, &path); // k0 stays open (a reader)
        }
    }
    let kept: Vec<bool> = (0..5).map(|i| c.has_clean(&format!("k{i}"), "t")).collect();
    assert_eq!(kept, [true, false, false, true, true]);
    assert_eq!(c.clean_files(), 3);
    assert_eq!(
        std::fs::read_dir(dir.path().join("clean")).unwrap().count(),
        3
    );
}

#[test]
fn a_clean_copy_is_read_whole_or_not_at_all_and_its_readers_pins_are_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cache::open(dir.path(), 64 * MIB, Duration::from_secs(1)).unwrap();
    // Under way: registered, but not read as a whole version.
    let (old, mut w) = c.begin_clean("k", "v1", 5).unwrap();
    std::io::Write::write_all(&mut w, b"ab").unwrap();
    assert_eq!(c.read_clean("k", "v1", 5), None, "still downloading");
    assert!(c.open_clean("k", "v1").is_none());
    std::io::Write::write_all(&mut w, b"cde").unwrap();
    c.clean_complete("k", &old);
    assert_eq!(c.read_clean("k", "v1", 5).as_deref(), Some(&b"abcde"[..]));
    assert_eq!(c.read_clean("k", "v2", 5), None, "another version");
    assert_eq!(c.read_clean("k", "v1", 4), None, "another size");
    let (untagged, mut w2) = c.begin_clean("e", "", 1).unwrap();
    std::io::Write::write_all(&mut w2, b"x").unwrap();
    c.clean_complete("e", &untagged);
    assert_eq!(c.read_clean("e", "", 1), None, "a copy naming no version");
    // A newer version takes the key while the old copy is still pinned by
    // its download (whose reader keeps reading it); then a reader pins
    // the newer one.
    let old_reader = std::fs::File::open(&old).unwrap();
    let f = c.create_data_file().unwrap();
    std::fs::write(c.data_path(&f), b"fghij").unwrap();
    c.make_clean(&f, "k", "v2");
    let (new, _) = c.open_clean("k", "v2").unwrap();
    // The old copy's last pin goes: the newer copy stays pinned, so it is
    // neither evicted nor emptied under its reader.
    c.close_clean("k", &old);
    c.limit_clean_files(0);
    let mut still = Vec::new();
    std::io::Read::read_to_end(&mut &old_reader, &mut still).unwrap();
    assert_eq!(
        still, b"abcde",
        "the old copy is not emptied under its reader"
    );
    assert!(c.has_clean("k", "v2"), "still pinned by its reader");
    assert_eq!(std::fs::read(&new).unwrap(), b"fghij");
    c.close_clean("k", &new);
    c.limit_clean_files(0);
    assert!(!c.has_clean("k", "v2"), "evicted once its reader is gone");
}

#[tokio::test]
async fn small_files_no_longer_needed_are_emptied_and_reused_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cache::open(dir.path(), 64 * MIB, Duration::from_secs(1)).unwrap();
    use std::os::unix::fs::MetadataExt;
    let spares = || spare_files(dir.path()).len();
    wait_for_spares(dir.path(), SPARES);
    let a = c.create_data_file().unwrap();
    c.resize_data(&a, 18).await.unwrap();
    std::fs::write(c.data_path(&a), b"acknowledged bytes").unwrap();
    let ino = std::fs::metadata(c.data_path(&a)).unwrap().ino();
    c.remove_data(&a);
    assert!(!c.data_path(&a).exists());
    let recycled: Vec<_> = std::fs::read_dir(dir.path().join("spare"))
        .unwrap()
        .flatten()
        .filter(|e| e.metadata().unwrap().ino() == ino)
        .collect();
    assert_eq!(recycled.len(), 1, "the same inode is now a spare");
    assert_eq!(
        recycled[0].metadata().unwrap().len(),
        0,
        "and holds nothing"
    );
    // The most recently recycled spare is the next one handed out.
    let b = c.create_data_file().unwrap();
    assert_eq!(std::fs::metadata(c.data_path(&b)).unwrap().ino(), ino);
    assert_eq!(std::fs::read(c.data_path(&b)).unwrap(), b"");
    // A large file is deleted as before.
    let big = c.create_data_file().unwrap();
    c.resize_data(&big, RECYCLE_MAX + 1).await.unwrap();
    std::fs::File::options()
        .write(true)
        .open(c.data_path(&big))
        .unwrap()
        .set_len(RECYCLE_MAX + 1)
        .unwrap();
    let before = spares();
    c.remove_data(&big);
    assert!(!c.data_path(&big).exists());
    assert_eq!(spares(), before);
}

#[tokio::test]
async fn dirty_data_beyond_max_waits_then_fails_with_no_space() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cache::open(dir.path(), 10, Duration::from_millis(300)).unwrap();
    let a = c.create_data_file().unwrap();
    c.resize_data(&a, 8).await.unwrap();
    let b = c.create_data_file().unwrap();
    let t = Instant::now();
    let e = c.resize_data(&b, 5).await.unwrap_err();
    assert!(matches!(e, CacheError::NoSpace { .. }), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(200));
    c.remove_data(&a);
    c.resize_data(&b, 5).await.unwrap();
}

#[test]
fn a_growth_that_does_not_fit_is_refused_at_once_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cache::open(dir.path(), 10, Duration::from_secs(30)).unwrap();
    let a = c.create_data_file().unwrap();
    assert!(c.try_resize_data(&a, 8));
    let b = c.create_data_file().unwrap();
    assert!(!c.try_resize_data(&b, 5), "8 + 5 bytes do not fit in 10");
    assert_eq!(c.usage().0, 8, "the refused growth is not counted");
    assert!(c.try_resize_data(&b, 2), "what fits is recorded");
    assert_eq!(c.usage().0, 10);
    c.remove_data(&a);
    assert!(c.try_resize_data(&b, 5));
    assert_eq!(c.usage().0, 5);
}

#[tokio::test]
async fn a_waiting_writer_proceeds_when_an_upload_frees_space() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cache::open(dir.path(), 10, Duration::from_secs(30)).unwrap();
    let a = c.create_data_file().unwrap();
    c.resize_data(&a, 10).await.unwrap();
    let b = c.create_data_file().unwrap();
    let c2 = c.clone();
    let waiter = tokio::spawn(async move { c2.resize_data(&b, 4).await });
    tokio::task::yield_now().await;
    c.make_clean(&a, "k", "v1");
    waiter.await.unwrap().unwrap();
    assert_eq!(c.usage().0, 4);
    assert!(
        c.open_clean("k", "v1").is_none() || c.usage().1 <= 6,
        "clean copies are evicted to fit"
    );
}

#[test]
fn unknown_data_files_are_quarantined_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = Cache::open(dir.path(), 64 * MIB, Duration::from_secs(1)).unwrap();
        let keep = c.create_data_file().unwrap();
        let lost = c.create_data_file().unwrap();
        std::fs::write(c.data_path(&keep), b"acked").unwrap();
        std::fs::write(c.data_path(&lost), b"never acked").unwrap();
        std::fs::write(dir.path().join("needed"), &keep).unwrap();
    }
    let c = Cache::open(dir.path(), 64 * MIB, Duration::from_secs(1)).unwrap();
    let keep = std::fs::read_to_string(dir.path().join("needed")).unwrap();
    let q = c.recover(&HashSet::from([keep.clone()])).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(
        std::fs::read(dir.path().join("quarantine").join(&q[0])).unwrap(),
        b"never acked"
    );
    assert_eq!(std::fs::read(c.data_path(&keep)).unwrap(), b"acked");
}

fn spare_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("spare"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn wait_for_spares(dir: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = spare_files(dir);
        if s.len() == n {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{} spare files, not {n}",
            s.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn creates_take_files_made_ahead_and_the_spares_refill() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let c = Cache::open(dir.path(), 64 * MIB, Duration::from_secs(1)).unwrap();
        let ready = wait_for_spares(dir.path(), SPARES);
        let made: Vec<String> = (0..SPARES / 2 + 1)
            .map(|_| c.create_data_file().unwrap())
            .collect();
        for name in &made {
            assert!(ready.contains(name), "{name} was a spare file");
            assert_eq!(std::fs::metadata(c.data_path(name)).unwrap().len(), 0);
        }
        // Below half: the thread makes new ones up to the full count.
        let now = wait_for_spares(dir.path(), SPARES);
        assert!(now.iter().all(|n| !made.contains(n)));
        now
    };
    // Spare files hold nothing: a new start deletes them and makes its own.
    let _c = Cache::open(dir.path(), 64 * MIB, Duration::from_secs(1)).unwrap();
    let again = wait_for_spares(dir.path(), SPARES);
    assert!(again.iter().all(|n| !first.contains(n)));
}
