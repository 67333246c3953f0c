//! The real binary mounted through /dev/fuse over a real SeaweedFS region:
//! ordinary tools on the mount, checked against the bucket.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::{bucket_contents, sh, wait_for_async, Mount, Regions};
use regionfs::store::ObjectStore;

const DRAIN: Duration = Duration::from_secs(120);

async fn setup(extra: &str) -> (Regions, Mount, tempfile::TempDir) {
    let r = Regions::start().await;
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::start(&r.config(cache.path(), extra));
    (r, m, cache)
}

#[tokio::test(flavor = "multi_thread")]
async fn ordinary_tools_write_the_exact_bytes_modes_and_links_to_the_bucket() {
    let (r, mut m, _c) = setup("").await;
    let src = tempfile::tempdir().unwrap();
    let s = src.path().display();
    sh(&format!(
        "mkdir -p {s}/tree/sub && echo hello > {s}/tree/a.txt && head -c 300000 /dev/urandom > {s}/tree/sub/blob \
         && chmod 640 {s}/tree/a.txt && chmod 711 {s}/tree/sub && ln -s a.txt {s}/tree/link"
    ));
    let mnt = m.dir.display().to_string();
    sh(&format!("cp -a {s}/tree {mnt}/cp"));
    sh(&format!(
        "tar -C {s} -cf {s}/t.tar tree && mkdir {mnt}/tar && tar -C {mnt}/tar -xf {s}/t.tar"
    ));
    sh(&format!("rsync -a {s}/tree/ {mnt}/rsync/"));
    // An editor's save: write a temp file, fsync, rename over the original.
    sh(&format!(
        "echo v1 > {mnt}/doc.txt && echo v2 > {mnt}/.doc.tmp && sync {mnt}/.doc.tmp && mv {mnt}/.doc.tmp {mnt}/doc.txt"
    ));
    for i in 0..20 {
        sh(&format!("echo line{i} >> {mnt}/append.log"));
    }
    sh(&format!(
        "head -c 5000 /dev/zero > {mnt}/trunc && truncate -s 1234 {mnt}/trunc"
    ));
    sh(&format!("mkdir -p {mnt}/scratch/d && for i in $(seq 50); do head -c 2000 /dev/urandom > {mnt}/scratch/d/f$i; done && rm -rf {mnt}/scratch"));

    // What the mount shows right away.
    assert_eq!(
        std::fs::read_to_string(m.path("cp/a.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        std::fs::metadata(m.path("cp/a.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    assert_eq!(
        std::fs::metadata(m.path("cp/sub"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o711
    );
    assert_eq!(
        std::fs::read_link(m.path("rsync/link")).unwrap().to_str(),
        Some("a.txt")
    );
    assert_eq!(std::fs::read_to_string(m.path("doc.txt")).unwrap(), "v2\n");
    assert_eq!(std::fs::metadata(m.path("trunc")).unwrap().len(), 1234);
    assert!(!m.path("scratch").exists(), "rm -rf right after writes");

    assert!(m.unmount().success());
    let objects = bucket_contents(&r.src, "").await;
    let blob = std::fs::read(src.path().join("tree/sub/blob")).unwrap();
    for tool in ["cp", "tar/tree", "rsync"] {
        assert_eq!(objects[&format!("{tool}/a.txt")], b"hello\n", "{tool}");
        assert!(
            objects[&format!("{tool}/sub/blob")] == blob,
            "{tool} blob bytes"
        );
        assert_eq!(
            objects[&format!("{tool}/link")],
            b"a.txt",
            "{tool} symlink body"
        );
        let head = r.src.head(&format!("{tool}/a.txt"), None).await.unwrap();
        assert_eq!(
            head.metadata["mode"],
            (libc::S_IFREG | 0o640).to_string(),
            "{tool} mode"
        );
        let link = r.src.head(&format!("{tool}/link"), None).await.unwrap();
        assert_eq!(
            link.metadata["mode"].parse::<u32>().unwrap() & libc::S_IFMT,
            libc::S_IFLNK
        );
    }
    assert_eq!(objects["doc.txt"], b"v2\n");
    assert!(!objects.contains_key(".doc.tmp"));
    let expected: String = (0..20).map(|i| format!("line{i}\n")).collect();
    assert_eq!(objects["append.log"], expected.as_bytes());
    assert_eq!(objects["trunc"], vec![0u8; 1234]);
    assert!(
        objects.keys().all(|k| !k.starts_with("scratch/")),
        "deleted files stay deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_close_is_a_version_and_status_reports_the_source_version() {
    let (r, m, _c) = setup("").await;
    for i in 0..5 {
        std::fs::write(m.path("v.txt"), format!("version {i}")).unwrap();
    }
    m.wait_uploaded(DRAIN);
    let page = r.src.list_versions("v.txt", None, None).await.unwrap();
    assert_eq!(
        page.versions.len(),
        5,
        "one version per close: {:?}",
        page.versions
    );
    let st = m.status(Some(&m.path("v.txt").display().to_string()));
    assert_eq!(st["local"], "clean");
    assert_eq!(
        st["version"].as_str(),
        page.versions
            .iter()
            .find(|v| v.is_latest)
            .map(|v| v.version_id.as_str())
    );
    let x = sh(&format!(
        "getfattr --only-values -n user.regionfs.version {}",
        m.path("v.txt").display()
    ));
    assert_eq!(Some(x.as_str()), st["version"].as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn fsync_returns_only_when_the_version_is_in_the_source_bucket() {
    let (r, m, _c) = setup("[durability]\nfsync = \"source\"\n").await;
    let mut f = std::fs::File::create(m.path("synced.bin")).unwrap();
    f.write_all(b"durable bytes").unwrap();
    f.sync_all().unwrap();
    let body = r
        .src
        .get("synced.bin", Default::default())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], b"durable bytes");
    drop(f);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_creates_and_updates_a_database_on_the_mount() {
    let (r, mut m, _c) = setup("").await;
    let db = m.path("app.db").display().to_string();
    sh(&format!(
        "sqlite3 {db} 'CREATE TABLE t(x); INSERT INTO t VALUES (1),(2),(3);' && sqlite3 {db} 'UPDATE t SET x = x * 10; INSERT INTO t VALUES (4);'"
    ));
    assert_eq!(
        sh(&format!("sqlite3 {db} 'SELECT sum(x) FROM t'")).trim(),
        "64"
    );
    assert!(m.unmount().success());
    let bytes = bucket_contents(&r.src, "app.db")
        .await
        .remove("app.db")
        .expect("database uploaded");
    let local = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(local.path(), bytes).unwrap();
    assert_eq!(
        sh(&format!(
            "sqlite3 {} 'SELECT sum(x) FROM t'",
            local.path().display()
        ))
        .trim(),
        "64"
    );
}

async fn remount_shows_the_tree_with_its_attributes(r: Regions) {
    let c = tempfile::tempdir().unwrap();
    let mut m = Mount::start(&r.config(c.path(), ""));
    sh(&format!(
        "mkdir {0}/d && echo x > {0}/d/f && chmod 604 {0}/d/f && chown 1234:5678 {0}/d/f && touch -d @1700000000 {0}/d/f \
         && mkdir -m 750 {0}/d/sub && chown 42:43 {0}/d/sub && mkdir {0}/e && chmod 701 {0}/e",
        m.dir.display()
    ));
    assert!(m.unmount().success());
    m.remount();
    for (dir, mode, owner) in [("d/sub", 0o750, (42, 43)), ("e", 0o701, (0, 0))] {
        let md = std::fs::metadata(m.path(dir)).unwrap();
        assert!(md.is_dir());
        assert_eq!(md.mode() & 0o7777, mode, "{dir} mode after remount");
        assert_eq!((md.uid(), md.gid()), owner, "{dir} owner after remount");
    }
    let names: Vec<String> = std::fs::read_dir(m.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with(".regionfs")),
        "{names:?}"
    );
    let md = std::fs::metadata(m.path("d/f")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o604);
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert_eq!(md.mtime(), 1_700_000_000);
    assert_eq!(std::fs::read_to_string(m.path("d/f")).unwrap(), "x\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn remount_keeps_file_and_directory_attributes_on_seaweedfs() {
    remount_shows_the_tree_with_its_attributes(Regions::start().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn remount_keeps_file_and_directory_attributes_on_moto() {
    let r = Regions::start_moto_source().await;
    remount_shows_the_tree_with_its_attributes(r).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn names_over_255_bytes_and_hard_links_are_refused_with_exact_errnos() {
    let (_r, m, _c) = setup("").await;
    let long = m.path(&"n".repeat(256));
    let e = std::fs::write(&long, b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
    std::fs::write(m.path("f"), b"x").unwrap();
    let e = std::fs::hard_link(m.path("f"), m.path("g")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::write(m.path("d/x"), b"x").unwrap();
    let e = std::fs::remove_dir(m.path("d")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_created_file_exists_at_once_even_opened_read_only() {
    let (r, m, _c) = setup("").await;
    let p = std::ffi::CString::new(m.path("empty").display().to_string()).unwrap();
    let fd = unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDONLY,
            0o644,
        )
    };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    assert!(m.path("empty").exists());
    unsafe { libc::close(fd) };
    // Never written, so it is staged at release, which the kernel sends an
    // instant after close() returns: until then no upload is pending, so the
    // wait is on the object itself.
    let size = wait_for_async("the empty object in the source", DRAIN, || async {
        r.src.head("empty", None).await.ok().map(|o| o.size)
    })
    .await;
    assert_eq!(size, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_written_by_others_are_listed_and_read_and_bad_keys_hidden() {
    // SeaweedFS refuses such keys itself; moto, like S3, stores them.
    let r = Regions::start_moto_source().await;
    let c = tempfile::tempdir().unwrap();
    let m = Mount::start(&r.config(c.path(), ""));
    let long = format!("ext/{}", "l".repeat(300));
    for k in [
        "ext/one.txt",
        "ext/two/three.txt",
        "ext//bad",
        "ext/./dot",
        "ext/../up",
        long.as_str(),
    ] {
        common::put_bytes(&r.src, k, k.to_string()).await;
    }
    let mut names: Vec<String> = std::fs::read_dir(m.path("ext"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["one.txt", "two"]);
    assert_eq!(
        std::fs::read_to_string(m.path("ext/two/three.txt")).unwrap(),
        "ext/two/three.txt"
    );
    assert!(
        m.log_text().contains("cannot be a path"),
        "{}",
        m.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_mount_on_the_same_cache_dir_is_refused() {
    let (r, _m, c) = setup("").await;
    let other = tempfile::tempdir().unwrap();
    let cfg = other.path().join("c.toml");
    std::fs::write(&cfg, r.config(c.path(), "")).unwrap();
    std::fs::create_dir(other.path().join("mnt")).unwrap();
    let out = std::process::Command::new(common::regionfs_bin())
        .args(["mount", "--config"])
        .arg(&cfg)
        .arg(other.path().join("mnt"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another regionfs mount"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mounting_a_bucket_with_versioning_off_is_refused_with_the_fix() {
    let r = Regions::start().await;
    r.src.set_versioning(false).await.unwrap();
    let c = tempfile::tempdir().unwrap();
    let cfg = c.path().join("c.toml");
    std::fs::write(&cfg, r.config(&c.path().join("cache"), "")).unwrap();
    std::fs::create_dir(c.path().join("mnt")).unwrap();
    let out = std::process::Command::new(common::regionfs_bin())
        .args(["mount", "--config"])
        .arg(&cfg)
        .arg(c.path().join("mnt"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("versioning Suspended") && err.contains("put-bucket-versioning"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_source_down_writers_fill_the_cache_then_get_enospc_and_nothing_closed_is_lost() {
    let (mut r, mut m, _c) = setup("[cache]\nmax_size = \"64MiB\"\nspace_wait = \"3s\"\n").await;
    std::fs::create_dir(m.path("fill")).unwrap();
    m.wait_uploaded(DRAIN);
    r.a.stop();
    let chunk = vec![7u8; 1 << 20];
    let mut closed = Vec::new();
    let mut enospc = false;
    for i in 0..100 {
        let path = m.path(&format!("fill/f{i}"));
        let res = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&path)?;
            for _ in 0..8 {
                f.write_all(&chunk)?;
            }
            let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
            if unsafe { libc::close(fd) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })();
        match res {
            Ok(()) => closed.push(format!("fill/f{i}")),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                enospc = true;
                break;
            }
        }
    }
    assert!(enospc, "the cache never filled");
    assert!(closed.len() >= 5, "closed {}", closed.len());
    let st = m.status(None);
    assert!(
        st["uploads"]["pending"].as_u64().unwrap() >= closed.len() as u64,
        "{st}"
    );
    r.a.restart();
    m.wait_uploaded(DRAIN);
    let objects = bucket_contents(&r.src, "fill/").await;
    for k in &closed {
        assert_eq!(
            objects.get(k).map(Vec::len),
            Some(8 << 20),
            "{k} closed before the outage ended"
        );
    }
    assert!(m.unmount().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn dd_of_1_gib_lands_as_one_multipart_version_with_the_same_bytes() {
    let (r, m, _c) = setup("").await;
    let src = tempfile::tempdir().unwrap();
    let local = src.path().join("big");
    sh(&format!(
        "head -c 1073741824 /dev/urandom > {}",
        local.display()
    ));
    let t = std::time::Instant::now();
    sh(&format!(
        "dd if={} of={} bs=1M conv=fsync status=none",
        local.display(),
        m.path("big").display()
    ));
    let closed = t.elapsed();
    m.wait_uploaded(Duration::from_secs(600));
    eprintln!(
        "dd 1 GiB: close {closed:?}, durable in the bucket {:?}",
        t.elapsed()
    );
    let head = r.src.head("big", None).await.unwrap();
    assert_eq!(head.size, 1 << 30);
    assert!(head.etag.contains('-'), "multipart ETag: {}", head.etag);
    let want = sh(&format!("md5sum < {}", local.display()));
    let got = sh(&format!("md5sum < {}", m.path("big").display()));
    assert_eq!(want, got, "read back through the mount");
    // The bucket's bytes, not the kernel's pages: most of the file went to
    // the cache disk with O_DIRECT and was uploaded from there.
    let body = r
        .src
        .get("big", regionfs::store::GetRequest::default())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let fetched = src.path().join("fetched");
    std::fs::write(&fetched, &body).unwrap();
    drop(body);
    let in_bucket = sh(&format!("md5sum < {}", fetched.display()));
    assert_eq!(want, in_bucket, "the object in the bucket");
    let versions = r.src.list_versions("big", None, None).await.unwrap();
    assert_eq!(versions.versions.len(), 1, "one close, one version");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_may_open_as_many_files_as_the_hard_limit_allows() {
    let r = Regions::start().await;
    let cache = tempfile::tempdir().unwrap();
    // A low soft limit, as many shells set, inherited by the daemon only (the
    // regions run already; nextest runs each test in a process of its own).
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        assert!(l.rlim_max > 256, "hard limit {}", l.rlim_max);
        l.rlim_cur = 256;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
    let mut m = Mount::start(&r.config(cache.path(), ""));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", m.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    // "Max open files  <soft>  <hard>  files"
    assert_eq!(f[3], f[4], "soft limit raised to the hard one: {line}");
    assert!(m.unmount().success());
}

/// The trim itself is pinned in `heap`'s unit test; this pins that the
/// mounted daemon runs it.
#[tokio::test(flavor = "multi_thread")]
async fn the_mounted_daemon_runs_the_heap_trimming_thread() {
    let (_r, mut m, _c) = setup("").await;
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", m.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n == "regionfs-heap"),
        "threads: {names:?}"
    );
    assert!(m.unmount().success());
}

/// A SIGTERM sent as soon as the daemon says it mounted unmounts, drains and
/// exits 0: the signal handlers exist before the mount does. (They were once
/// installed after it, and such a SIGTERM killed the daemon and left a dead
/// mount; the window was short, so each round here only may catch it.)
#[tokio::test(flavor = "multi_thread")]
async fn a_sigterm_right_after_the_mount_unmounts_and_exits_cleanly() {
    let (_r, mut m, _c) = setup("").await;
    for round in 0..5 {
        let status = m.unmount();
        assert!(
            status.success(),
            "round {round}: {status}: {}",
            m.log_text()
        );
        m.remount();
    }
    assert!(m.unmount().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn umount_waits_for_pending_uploads_then_the_daemon_exits() {
    let (r, mut m, _c) = setup("[cache]\nwrite_back_delay = \"2s\"\n").await;
    std::fs::write(m.path("late.txt"), b"uploaded during the drain").unwrap();
    assert_eq!(m.status(None)["uploads"]["pending"], 1);
    sh(&format!("umount {}", m.dir.display()));
    let status = m.wait_exit(Duration::from_secs(60));
    assert!(status.success());
    assert!(
        m.log_text().contains("waiting for 1 pending upload"),
        "{}",
        m.log_text()
    );
    let body = r
        .src
        .get("late.txt", Default::default())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], b"uploaded during the drain");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renamed_file_reads_its_bytes_before_the_copy_lands() {
    let (r, mut m, _c) = setup("[cache]\nwrite_back_delay = \"3s\"\n").await;
    std::fs::write(m.path("a.txt"), b"moved bytes").unwrap();
    std::os::unix::fs::symlink("a-target", m.path("link")).unwrap();
    m.wait_uploaded(DRAIN);
    // A fresh mount: no local copy, only the bucket.
    assert!(m.unmount().success());
    m.remount();
    std::fs::rename(m.path("a.txt"), m.path("b.txt")).unwrap();
    std::fs::rename(m.path("link"), m.path("link2")).unwrap();
    assert_eq!(
        m.status(None)["uploads"]["pending"],
        4,
        "copies and deletes still queued"
    );
    assert_eq!(std::fs::read(m.path("b.txt")).unwrap(), b"moved bytes");
    assert_eq!(
        std::fs::read_link(m.path("link2")).unwrap().to_str(),
        Some("a-target")
    );
    assert!(!m.path("a.txt").exists());
    m.wait_uploaded(DRAIN);
    let objects = bucket_contents(&r.src, "").await;
    assert_eq!(objects["b.txt"], b"moved bytes");
    assert!(!objects.contains_key("a.txt"));
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_mode_returns_once_mounted_and_logs_to_the_cache_dir() {
    let r = Regions::start().await;
    let c = tempfile::tempdir().unwrap();
    let cfg = c.path().join("c.toml");
    std::fs::write(&cfg, r.config(&c.path().join("cache"), "")).unwrap();
    let mnt = c.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = std::process::Command::new(common::regionfs_bin())
        .args(["mount", "--daemon", "--config"])
        .arg(&cfg)
        .arg(&mnt)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    // Whatever happens next, leave neither the mount nor the daemon behind.
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let pid: i32 = stdout
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no pid in {stdout:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    struct Cleanup(std::path::PathBuf, i32);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            common::detach(&self.0);
            unsafe { libc::kill(self.1, libc::SIGKILL) };
        }
    }
    let _guard = Cleanup(mnt.clone(), pid);
    assert!(out.status.success());
    std::fs::write(mnt.join("d.txt"), b"daemon").unwrap();
    sh(&format!("umount {}", mnt.display()));
    // The daemon drains uploads and replication, then exits by itself.
    wait_for_exit(pid, Duration::from_secs(60));
    assert_eq!(
        &r.src
            .get("d.txt", Default::default())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()[..],
        b"daemon"
    );
    assert_eq!(
        &r.dst
            .get("d.txt", Default::default())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()[..],
        b"daemon"
    );
    let log = std::fs::read_to_string(c.path().join("cache/regionfs.log")).unwrap();
    assert!(log.contains("everything is uploaded"), "{log}");
}

/// Waits until process `pid` (not our child) is gone.
fn wait_for_exit(pid: i32, timeout: Duration) {
    common::wait_for("the daemon to exit", timeout, || {
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        (!alive).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_rename_moves_every_key_with_its_attributes() {
    let (r, mut m, _c) = setup("").await;
    sh(&format!(
        "mkdir -p {0}/old/sub && echo a > {0}/old/a && echo b > {0}/old/sub/b && chmod 600 {0}/old/a && chmod 750 {0}/old/sub",
        m.dir.display()
    ));
    m.wait_uploaded(DRAIN);
    std::fs::rename(m.path("old"), m.path("new")).unwrap();
    assert!(!m.path("old").exists());
    assert_eq!(std::fs::read_to_string(m.path("new/sub/b")).unwrap(), "b\n");
    assert!(m.unmount().success());
    let keys: Vec<String> = bucket_contents(&r.src, "")
        .await
        .into_keys()
        .filter(|k| !k.ends_with('/') && !k.contains(".regionfs"))
        .collect();
    assert_eq!(keys, vec!["new/a", "new/sub/b"]);
    m.remount();
    assert_eq!(
        std::fs::metadata(m.path("new/a"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(m.path("new/sub"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o750
    );
    assert!(!m.path("old").exists());
}

/// Uploads and deletes finish while a directory is listed: the listing still
/// counts each of them once, so rmdir, `rm -r` and rename see every file.
#[tokio::test(flavor = "multi_thread")]
async fn listings_racing_finishing_uploads_and_deletes_miss_no_file() {
    let (r, mut m, _c) = setup("[upload]\ndefer_while_writing = \"0s\"\n").await;
    for i in 0..40 {
        let d = format!("d{i}");
        std::fs::create_dir(m.path(&d)).unwrap();
        std::fs::write(m.path(&format!("{d}/x")), b"x").unwrap();
        let e = std::fs::remove_dir(m.path(&d)).expect_err("a directory with a file");
        assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY), "{d}");
        std::fs::remove_file(m.path(&format!("{d}/x"))).unwrap();
        std::fs::remove_dir(m.path(&d)).unwrap_or_else(|e| panic!("rmdir {d}: {e}"));

        let (from, to) = (format!("r{i}"), format!("s{i}"));
        std::fs::create_dir(m.path(&from)).unwrap();
        std::fs::write(m.path(&format!("{from}/x")), format!("{i}")).unwrap();
        std::fs::rename(m.path(&from), m.path(&to)).unwrap();
    }
    assert!(m.unmount().success());
    let files: std::collections::BTreeMap<String, Vec<u8>> = bucket_contents(&r.src, "")
        .await
        .into_iter()
        .filter(|(k, _)| !k.ends_with('/') && !k.contains(".regionfs"))
        .collect();
    let want: std::collections::BTreeMap<String, Vec<u8>> = (0..40)
        .map(|i| (format!("s{i}/x"), format!("{i}").into_bytes()))
        .collect();
    assert_eq!(files, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_file_stays_readable_after_unlink_and_the_bucket_gets_a_delete_marker() {
    use std::io::{Read, Seek};
    let (r, m, _c) = setup("").await;
    std::fs::write(m.path("gone.txt"), b"still here").unwrap();
    m.wait_uploaded(DRAIN);
    let mut f = std::fs::File::open(m.path("gone.txt")).unwrap();
    std::fs::remove_file(m.path("gone.txt")).unwrap();
    assert!(!m.path("gone.txt").exists());
    let mut body = String::new();
    f.read_to_string(&mut body).unwrap();
    assert_eq!(body, "still here");
    f.rewind().unwrap();
    m.wait_uploaded(DRAIN);
    let versions = r
        .src
        .list_versions("gone.txt", None, None)
        .await
        .unwrap()
        .versions;
    assert!(
        versions[0].is_delete_marker && versions[0].is_latest,
        "{versions:?}"
    );
    assert_eq!(versions.len(), 2, "the old version stays behind the marker");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_writeback_cache_another_clients_longer_version_is_read_whole() {
    another_clients_longer_version_is_read_whole("[mount]\npassthrough = false\n").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_passthrough_another_clients_longer_version_is_read_whole() {
    another_clients_longer_version_is_read_whole("").await;
}

async fn another_clients_longer_version_is_read_whole(extra: &str) {
    let (r, m, _c) = setup(extra).await;
    {
        // fsync waits for the upload (durability "source"): the upload
        // finishes while the file is still open for writing.
        let mut f = std::fs::File::create(m.path("shared.txt")).unwrap();
        f.write_all(b"v1").unwrap();
        f.sync_all().unwrap();
    }
    m.wait_uploaded(DRAIN);
    assert_eq!(std::fs::read(m.path("shared.txt")).unwrap(), b"v1");
    let newer = b"version two, written by another host".to_vec();
    common::put_bytes(&r.src, "shared.txt", newer.clone()).await;
    // The kernel caches the old size with the writeback cache on; the new
    // version must still be read in full once the attribute TTL has passed.
    common::wait_for(
        "the new version to be visible",
        Duration::from_secs(20),
        || (std::fs::read(m.path("shared.txt")).ok()? == newer).then_some(()),
    );
    assert_eq!(
        std::fs::metadata(m.path("shared.txt")).unwrap().len(),
        newer.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kernel_time_updates_make_no_versions_but_touch_does() {
    let (r, m, _c) = setup("").await;
    std::fs::write(m.path("t.txt"), b"data").unwrap();
    std::fs::rename(m.path("t.txt"), m.path("u.txt")).unwrap();
    std::fs::write(m.path("u2.txt"), b"x").unwrap();
    std::fs::remove_file(m.path("u2.txt")).unwrap();
    m.wait_uploaded(DRAIN);
    let count = |key: &'static str| {
        let src = r.src.clone();
        async move {
            src.list_versions(key, None, None)
                .await
                .unwrap()
                .versions
                .into_iter()
                .filter(|v| v.key == key)
                .count()
        }
    };
    // One upload, one copy for the rename, nothing for the kernel's mtime.
    assert_eq!(count("u.txt").await, 1);
    assert_eq!(count("t.txt").await, 2, "the upload and its delete marker");
    assert_eq!(count("u2.txt").await, 2, "the upload and its delete marker");
    sh(&format!(
        "touch -m -d @1600000000 {}",
        m.path("u.txt").display()
    ));
    m.wait_uploaded(DRAIN);
    assert_eq!(count("u.txt").await, 2, "touch -m is a real change");
    let head = r.src.head("u.txt", None).await.unwrap();
    assert_eq!(
        head.metadata.get("mtime").map(String::as_str),
        Some("1600000000")
    );
}

/// Evicts a file's clean pages from the kernel's page cache.
fn drop_pages(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "posix_fadvise(DONTNEED)");
}

/// Reads a file twice, then has another client replace it with a version of
/// the same length: the second read costs the daemon nothing (the kernel kept
/// its pages), and the other client's bytes are still what is read next.
async fn kernel_keeps_pages_only_while_the_content_is_the_same(mount_extra: &str) {
    let port = common::free_port();
    let (r, m, _c) = setup(&format!(
        "{mount_extra}[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    ))
    .await;
    let served =
        || common::metric(&common::scrape(port), "regionfs_fuse_read_bytes_total").unwrap_or(0.0);
    let v1: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(m.path("page.bin"), &v1).unwrap();
    m.wait_uploaded(DRAIN);
    // This file's pages only: a system-wide drop_caches would also empty the
    // pages of tests running alongside, between their two reads.
    drop_pages(&m.path("page.bin"));
    assert_eq!(std::fs::read(m.path("page.bin")).unwrap(), v1);
    let after_first = served();
    assert!(
        after_first >= v1.len() as f64,
        "the first read reached the daemon: {after_first}"
    );
    assert_eq!(std::fs::read(m.path("page.bin")).unwrap(), v1);
    assert_eq!(
        served(),
        after_first,
        "the second read came from the kernel's pages"
    );

    let v2: Vec<u8> = v1.iter().map(|b| b ^ 0xff).collect();
    common::put_bytes(&r.src, "page.bin", v2.clone()).await;
    common::wait_for(
        "the other client's version to be read",
        Duration::from_secs(20),
        || (std::fs::read(m.path("page.bin")).ok()? == v2).then_some(()),
    );
    assert!(served() >= after_first + v2.len() as f64);
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_files_are_read_again_from_the_kernel_cache_with_writeback() {
    // Reads through the daemon: passthrough would serve them from the cache
    // file, and the daemon's byte count is what this test reads.
    kernel_keeps_pages_only_while_the_content_is_the_same("[mount]\npassthrough = false\n").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_files_are_read_again_from_the_kernel_cache_without_writeback() {
    kernel_keeps_pages_only_while_the_content_is_the_same(
        "[mount]\nwriteback_cache = false\npassthrough = false\n",
    )
    .await;
}

/// `ls -l` again after `attr_ttl`: the listing vouches for the attributes the
/// first `ls -l` HEADed, so no HEAD goes out per file; yet another client's
/// metadata-only copy (same ETag, later LastModified) is still seen.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_listing_needs_no_head_and_still_sees_another_clients_metadata_change() {
    use bytes::Bytes;
    use regionfs::store::{PutBody, PutOptions};
    use std::time::SystemTime;
    let port = common::free_port();
    let (r, m, _c) = setup(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")).await;
    let heads =
        || common::metric(&common::scrape(port), "regionfs_attribute_heads_total").unwrap_or(0.0);
    let mode = |m: u32| PutOptions {
        metadata: [("mode".to_string(), format!("{}", 0o100000 | m))].into(),
        ..Default::default()
    };
    let files = 20;
    for i in 0..files {
        r.src
            .put(
                &format!("d/f{i}"),
                PutBody::Bytes(Bytes::from(format!("body {i}"))),
                &mode(0o600),
            )
            .await
            .unwrap();
    }
    // A listing vouches only for versions older than the HEAD by 3 s.
    let newest = r
        .src
        .head(&format!("d/f{}", files - 1), None)
        .await
        .unwrap();
    let settled = newest.last_modified.unwrap() + Duration::from_secs(4);
    common::wait_for(
        "the versions to be 4 s old",
        Duration::from_secs(10),
        || (SystemTime::now() >= settled).then_some(()),
    );
    let ls_l = || -> Vec<u32> {
        let mut modes: Vec<(String, u32)> = std::fs::read_dir(m.path("d"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let md = std::fs::symlink_metadata(e.path()).unwrap();
                (e.file_name().into_string().unwrap(), md.mode() & 0o7777)
            })
            .collect();
        modes.sort();
        modes.into_iter().map(|(_, m)| m).collect()
    };
    assert_eq!(ls_l(), vec![0o600; files]);
    let cold = heads();
    assert!(
        cold >= files as f64,
        "the first ls -l HEADed every file: {cold}"
    );

    // Past attr_ttl every attribute needs revalidating; that is the point.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ls_l(), vec![0o600; files]);
    let warm = heads() - cold;
    assert!(
        warm <= 1.0,
        "the second ls -l sent {warm} HEADs (at most the directory's own lookup)"
    );

    let before = r.src.head("d/f0", None).await.unwrap();
    r.src
        .copy("d/f0", None, "d/f0", &mode(0o640))
        .await
        .unwrap();
    let after = r.src.head("d/f0", None).await.unwrap();
    assert_eq!(
        after.etag, before.etag,
        "a metadata-only copy keeps the ETag"
    );
    common::wait_for(
        "the other client's mode to show after a listing",
        Duration::from_secs(15),
        || (ls_l()[0] == 0o640).then_some(()),
    );
}

/// Files written through one mount are listed with their modes and mtimes by
/// a fresh mount elsewhere (its own, empty cache) without a HEAD per file:
/// the first mount left the directory's attribute index in the bucket. A
/// metadata-only change by another client afterwards (same ETag) makes that
/// entry stale, and the next fresh mount asks for that file again.
#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_mount_lists_attributes_from_the_index_without_a_head_per_file() {
    fresh_mounts_list_attributes_from_the_index(Regions::start().await).await;
}

/// The same on moto: the index leans on version listings, LastModified and
/// deletes of one version behaving as S3 says, not as SeaweedFS happens to.
#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_mount_lists_attributes_from_the_index_on_moto() {
    let r = Regions::start_moto_source().await;
    fresh_mounts_list_attributes_from_the_index(r).await;
}

async fn fresh_mounts_list_attributes_from_the_index(r: Regions) {
    use regionfs::store::PutOptions;
    let files = 40;
    let c = tempfile::tempdir().unwrap();
    let mut m = Mount::start(&r.config(c.path(), ""));
    sh(&format!("mkdir {0}/d && for i in $(seq 0 {1}); do echo body $i > {0}/d/f$i; done && chmod 600 {0}/d/f1 && touch -d @1700000000 {0}/d/f2",
        m.dir.display(), files - 1));
    m.unmount();
    // The index's versions: (key, version id, current).
    let index_versions = || async {
        let page = r
            .src
            .list_versions(".regionfs-index/", None, None)
            .await
            .unwrap();
        page.versions
            .into_iter()
            .map(|v| (v.key, v.version_id, v.is_latest))
            .collect::<Vec<_>>()
    };
    let written = index_versions().await;
    assert_eq!(
        written.iter().map(|v| v.0.as_str()).collect::<Vec<_>>(),
        vec![".regionfs-index/d/index.json"],
        "one index, in one version: {written:?}"
    );

    // `ls -l` of d on a fresh mount (its own, empty cache), with `extra` config.
    let fresh_ls = |extra: &str, expect_heads_at_most: f64| -> Vec<(String, u32, i64)> {
        let port = common::free_port();
        let cache = tempfile::tempdir().unwrap();
        let mut other = Mount::start(&r.config(
            cache.path(),
            &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n{extra}"),
        ));
        let root: Vec<String> = std::fs::read_dir(&other.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(root, vec!["d"], "the index folder is not listed");
        let mut got: Vec<(String, u32, i64)> = std::fs::read_dir(other.path("d"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let md = std::fs::symlink_metadata(e.path()).unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    md.mode() & 0o7777,
                    md.mtime(),
                )
            })
            .collect();
        got.sort();
        let heads =
            common::metric(&common::scrape(port), "regionfs_attribute_heads_total").unwrap_or(0.0);
        assert!(
            heads <= expect_heads_at_most,
            "ls -l on a fresh mount sent {heads} HEADs"
        );
        other.unmount();
        got
    };
    let mode_of =
        |got: &[(String, u32, i64)], name: &str| got.iter().find(|(n, _, _)| n == name).unwrap().1;
    let got = fresh_ls("", 2.0);
    assert_eq!(got.len(), files);
    let of = |name: &str| got.iter().find(|(n, _, _)| n == name).unwrap().clone();
    assert_eq!(of("f1").1, 0o600);
    assert_eq!(of("f0").1, 0o644);
    assert_eq!(of("f2").2, 1_700_000_000);
    assert_ne!(of("f0").2, 1_700_000_000);

    let meta = r.src.head("d/f0", None).await.unwrap().metadata;
    let mut changed = meta.clone();
    changed.insert("mode".into(), format!("{}", 0o100000 | 0o640));
    r.src
        .copy(
            "d/f0",
            None,
            "d/f0",
            &PutOptions {
                metadata: changed,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // A read-only mount sees the change (a HEAD) and leaves the index alone.
    let got = fresh_ls("[mount]\nread_only = true\n", files as f64);
    assert_eq!(
        mode_of(&got, "f0"),
        0o640,
        "another client's metadata change is seen, not the index's entry"
    );
    assert_eq!(mode_of(&got, "f1"), 0o600);
    assert_eq!(
        index_versions().await,
        written,
        "a read-only mount writes no index"
    );
    // A writable one rewrites it with what its HEAD said, and the replaced
    // version is deleted.
    let got = fresh_ls("", files as f64);
    assert_eq!(mode_of(&got, "f0"), 0o640);
    let rewritten = index_versions().await;
    assert_eq!(
        rewritten.len(),
        1,
        "one version after a rewrite: {rewritten:?}"
    );
    assert_ne!(rewritten[0].1, written[0].1, "rewritten: {rewritten:?}");
    assert_eq!(
        mode_of(&fresh_ls("", 2.0), "f0"),
        0o640,
        "from the rewritten index"
    );

    // A directory renamed or removed takes its index with it.
    m.remount();
    sh(&format!("mv {0}/d {0}/e", m.dir.display()));
    m.unmount();
    let keys: Vec<String> = index_versions().await.into_iter().map(|v| v.0).collect();
    assert!(
        !keys.iter().any(|k| k == ".regionfs-index/d/index.json"),
        "{keys:?}"
    );
    m.remount();
    sh(&format!("rm -r {}/e", m.dir.display()));
    m.unmount();
    let left = r
        .src
        .list(".regionfs-index/", None, None, None)
        .await
        .unwrap();
    assert!(left.objects.is_empty(), "{:?}", left.objects);
}

/// A subdirectory a listing just showed is looked up from its marker alone
/// (no HEAD of a file of that name, no listing of its prefix), with the
/// attributes it was made with; once the listing is older than `attr_ttl`, a
/// directory another client removed is gone.
#[tokio::test(flavor = "multi_thread")]
async fn listed_subdirectories_are_looked_up_from_their_marker_alone() {
    let (r, mut m, _c) = setup("").await;
    sh(&format!(
        "for i in 0 1 2 3 4; do mkdir -m 750 {0}/sub$i && echo x > {0}/sub$i/f; done",
        m.dir.display()
    ));
    m.unmount();
    let port = common::free_port();
    let cache = tempfile::tempdir().unwrap();
    let other = Mount::start(&r.config(
        cache.path(),
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    ));
    let heads =
        || common::metric(&common::scrape(port), "regionfs_attribute_heads_total").unwrap_or(0.0);
    assert_eq!(std::fs::read_dir(&other.dir).unwrap().count(), 5);
    for i in 0..5 {
        let md = std::fs::metadata(other.path(&format!("sub{i}"))).unwrap();
        assert!(md.is_dir());
        assert_eq!(md.mode() & 0o7777, 0o750, "sub{i}");
    }
    assert_eq!(
        heads(),
        0.0,
        "no HEAD of a file named like a listed directory"
    );

    for o in r.src.list("sub0/", None, None, None).await.unwrap().objects {
        r.src.delete(&o.key).await.unwrap();
    }
    common::wait_for(
        "the directory another client removed to be gone",
        Duration::from_secs(15),
        || (!other.path("sub0").exists()).then_some(()),
    );
    assert!(other.path("sub1").is_dir());
}

/// A large file written in order is uploaded part by part while it is still
/// open; at close only the rest goes up. Its bytes are exact, and since its
/// metadata was fixed before the last write it stores no mtime: the source's
/// LastModified is its mtime, here and (copied) on the replica.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_file_goes_up_in_parts_while_written_and_its_mtime_is_the_last_modified() {
    // Without the kernel's writeback cache every write reaches regionfs at
    // once, so the parts can be seen going up before the close.
    let (r, mut m, c) =
        // Parts go up as writes arrive: writes regionfs sees (no passthrough).
        setup("[upload]\npart_size = \"5MiB\"\n[mount]\nwriteback_cache = false\npassthrough = false\n")
            .await;
    let body: Vec<u8> = (0..40u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let journal = c.path().join("journal.db");
    let early_uploads = || {
        let j = rusqlite::Connection::open_with_flags(
            &journal,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        j.query_row("SELECT COUNT(*) FROM early_uploads", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
    };
    let mut f = std::fs::File::create(m.path("big.bin")).unwrap();
    f.write_all(&body).unwrap();
    common::wait_for(
        "parts to go up while the file is open",
        Duration::from_secs(30),
        || (early_uploads() == 1).then_some(()),
    );
    drop(f);
    m.wait_uploaded(DRAIN);
    assert_eq!(early_uploads(), 0, "handed over at close, then completed");
    let got = bucket_contents(&r.src, "").await;
    assert!(
        got.get("big.bin") == Some(&body),
        "exact bytes in the source"
    );
    let head = r.src.head("big.bin", None).await.unwrap();
    assert!(head.metadata.contains_key("mode"));
    assert!(
        !head.metadata.contains_key("mtime"),
        "uploaded in parts before its close: {:?}",
        head.metadata
    );
    let last_modified = head
        .last_modified
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(m.unmount().success());
    m.remount();
    let md = std::fs::metadata(m.path("big.bin")).unwrap();
    assert_eq!(md.mtime(), last_modified, "mtime is the LastModified");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let replica = loop {
        if let Ok(h) = r.dst.head("big.bin", None).await {
            break h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no replica after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        replica.metadata.get("mtime"),
        Some(&last_modified.to_string()),
        "the replica keeps the source's mtime"
    );
}

/// More files than `mount.max_inodes`: the idle clean ones are let go (the
/// kernel forgets them and the node count falls back under the limit), an
/// open file with unflushed writes is kept, and every file let go still
/// reads, renames, unlinks and appends as before.
/// Files waiting for their uploads are let go beyond `max_inodes` too: a
/// long upload backlog (a source outage, a burst of small files) holds
/// neither a node nor a descriptor per file, and each file is still read,
/// written and renamed from its queued upload.
#[tokio::test(flavor = "multi_thread")]
async fn files_waiting_for_their_uploads_beyond_max_inodes_hold_no_descriptors() {
    use std::io::Write;
    let port = common::free_port();
    let (r, mut m, c) = setup(&format!(
        "[cache]\nwrite_back_delay = \"1h\"\n[mount]\nmax_inodes = 256\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    ))
    .await;
    let inodes = || common::metric(&common::scrape(port), "regionfs_inodes").unwrap_or(-1.0);
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    std::fs::create_dir(m.path("d")).unwrap();
    let files = 1500;
    // Over 64 KiB: staged as cache files, not in the journal rows.
    let body = |i: usize| format!("file {i} ").repeat(9000).into_bytes();
    for i in 0..files {
        std::fs::write(m.path(&format!("d/f{i}")), body(i)).unwrap();
    }
    let pending = m.status(None)["uploads"]["pending"].as_u64().unwrap();
    assert!(pending >= files as u64, "{pending} uploads pending");
    let seen = common::wait_for("the node count to fall under the limit", DRAIN, || {
        let n = inodes();
        (0.0..=256.0).contains(&n).then_some(n)
    });
    assert!(
        seen < files as f64,
        "{seen} nodes for {files} files waiting"
    );
    let open = fds(m.pid());
    assert!(
        open < 600,
        "{open} descriptors open for {files} files waiting"
    );

    // Read back, appended to, renamed: each from its queued upload.
    for i in (0..files).step_by(97) {
        assert_eq!(
            std::fs::read(m.path(&format!("d/f{i}"))).unwrap(),
            body(i),
            "f{i}"
        );
    }
    let mut f2 = std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("d/f2"))
        .unwrap();
    f2.write_all(b"and more").unwrap();
    drop(f2);
    std::fs::rename(m.path("d/f3"), m.path("d/g3")).unwrap();

    // The uploads go (after a kill -9 here): every file lands with its bytes.
    m.kill9();
    std::fs::write(&m.config, r.config(c.path(), "")).unwrap();
    m.remount();
    m.wait_uploaded(DRAIN);
    let got = common::bucket_contents(&r.src, "d/").await;
    let mut f2_body = body(2);
    f2_body.extend_from_slice(b"and more");
    assert_eq!(got["d/f2"], f2_body);
    assert_eq!(got["d/g3"], body(3));
    assert!(!got.contains_key("d/f3"));
    for i in (4..files).step_by(13) {
        assert_eq!(got[&format!("d/f{i}")], body(i), "f{i}");
    }
    let landed = got
        .keys()
        .filter(|k| k.starts_with("d/f") || k.starts_with("d/g"));
    assert_eq!(landed.count(), files);
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_max_inodes_idle_files_are_let_go_and_still_work() {
    use std::io::Write;
    let port = common::free_port();
    let (r, m, _c) = setup(&format!(
        "[mount]\nmax_inodes = 256\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    ))
    .await;
    let inodes = || common::metric(&common::scrape(port), "regionfs_inodes").unwrap_or(-1.0);
    let mut open = std::fs::File::create(m.path("open.txt")).unwrap();
    open.write_all(b"written before, ").unwrap();
    std::fs::create_dir(m.path("d")).unwrap();
    let files = 600;
    for i in 0..files {
        std::fs::write(m.path(&format!("d/f{i}")), format!("file {i}")).unwrap();
    }
    m.wait_uploaded(DRAIN);
    let seen = common::wait_for("the node count to fall under the limit", DRAIN, || {
        let n = inodes();
        (0.0..=256.0).contains(&n).then_some(n)
    });
    assert!(seen < files as f64, "{seen} nodes for {files} files");

    let listed = std::fs::read_dir(m.path("d")).unwrap().count();
    assert_eq!(listed, files);
    for i in 0..files {
        let p = m.path(&format!("d/f{i}"));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("file {i}"));
    }
    std::fs::rename(m.path("d/f0"), m.path("d/g0")).unwrap();
    std::fs::remove_file(m.path("d/f1")).unwrap();
    let mut f2 = std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("d/f2"))
        .unwrap();
    f2.write_all(b" and more").unwrap();
    drop(f2);
    open.write_all(b"and after").unwrap();
    drop(open);
    m.wait_uploaded(DRAIN);

    let got = common::bucket_contents(&r.src, "").await;
    assert_eq!(got["open.txt"], b"written before, and after");
    assert_eq!(got["d/g0"], b"file 0");
    assert!(!got.contains_key("d/f0") && !got.contains_key("d/f1"));
    assert_eq!(got["d/f2"], b"file 2 and more");
    assert_eq!(got["d/f599"], b"file 599");
    assert_eq!(
        got.keys()
            .filter(|k| k.starts_with("d/f") || k.starts_with("d/g"))
            .count(),
        files - 1
    );
}
