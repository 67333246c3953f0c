//! FUSE passthrough on a real mount: the kernel reads and writes cache files
//! itself, and regionfs still uploads exactly what each close acknowledged.
//! Every test checks `regionfs_passthrough_opens_total` moved, so none passes
//! by falling back to reads and writes through the daemon.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{bucket_contents, Mount, Regions};
use regionfs::store::{GetRequest, ObjectStore};

const DRAIN: Duration = Duration::from_secs(120);

struct Rig {
    r: Regions,
    m: Mount,
    port: u16,
    _cache: tempfile::TempDir,
}

impl Rig {
    async fn start(extra: &str) -> Rig {
        let r = Regions::start().await;
        let cache = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let m = Mount::start(&r.config(
            cache.path(),
            &format!("{extra}[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        ));
        Rig {
            r,
            m,
            port,
            _cache: cache,
        }
    }

    fn metric(&self, name: &str) -> f64 {
        common::metric(&common::scrape(self.port), name).unwrap_or(0.0)
    }

    fn passthrough_opens(&self) -> f64 {
        self.metric("regionfs_passthrough_opens_total")
    }

    fn served(&self) -> f64 {
        self.metric("regionfs_fuse_read_bytes_total")
    }

    /// The bodies of every version of `key`, oldest first.
    async fn versions(&self, key: &str) -> Vec<Vec<u8>> {
        let mut vs: Vec<_> = self
            .r
            .src
            .list_versions(key, None, None)
            .await
            .unwrap()
            .versions
            .into_iter()
            .filter(|v| v.key == key && !v.is_delete_marker)
            .collect();
        vs.reverse();
        let mut out = Vec::new();
        for v in vs {
            let req = GetRequest {
                version_id: Some(v.version_id.clone()),
                range: None,
            };
            let obj = self.r.src.get(key, req).await.unwrap();
            out.push(obj.bytes().await.unwrap().to_vec());
        }
        out
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn files_written_and_read_again_by_passthrough_land_exact_and_never_reach_the_daemon() {
    let rig = Rig::start("").await;
    let big = pattern(3 << 20, 7);
    std::fs::write(rig.m.path("big.bin"), &big).unwrap();
    std::fs::write(rig.m.path("small.txt"), b"small").unwrap();
    assert!(
        rig.passthrough_opens() >= 2.0,
        "the writes went by passthrough"
    );
    rig.m.wait_uploaded(DRAIN);
    let objects = bucket_contents(&rig.r.src, "").await;
    assert!(objects["big.bin"] == big, "big.bin's bytes in the bucket");
    assert_eq!(objects["small.txt"], b"small");
    assert_eq!(
        rig.versions("big.bin").await.len(),
        1,
        "one close, one version"
    );

    // Read again (the uploaded file is now a clean copy): served from it by
    // the kernel, none of it through the daemon's read().
    let before = rig.passthrough_opens();
    assert!(std::fs::read(rig.m.path("big.bin")).unwrap() == big);
    assert_eq!(
        std::fs::metadata(rig.m.path("big.bin")).unwrap().len(),
        big.len() as u64
    );
    assert!(rig.passthrough_opens() > before);
    assert_eq!(rig.served(), 0.0, "no byte was read through the daemon");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_close_followed_by_writes_through_a_still_open_descriptor_uploads_the_later_bytes() {
    let rig = Rig::start("").await;
    let path = rig.m.path("dup.txt");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(b"first").unwrap();
    let mut dup = f.try_clone().unwrap();
    // close() of one descriptor stages "first" while `dup` can still write.
    drop(f);
    dup.write_all(b" and second").unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        16,
        "stat sees the passthrough writes"
    );
    drop(dup);
    assert!(rig.passthrough_opens() >= 1.0);
    rig.m.wait_uploaded(DRAIN);
    let versions = rig.versions("dup.txt").await;
    assert_eq!(
        versions.last().unwrap(),
        b"first and second",
        "{versions:?}"
    );
    for v in &versions {
        // Never a mix: the first close's bytes, or (its upload having met
        // the later writes) the later ones (SEMANTICS.md, "Passthrough").
        assert!(v == b"first" || v == b"first and second", "{versions:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fsync_then_more_writes_then_close_ends_on_the_final_bytes() {
    let rig = Rig::start("[durability]\nfsync = \"local\"\n").await;
    let path = rig.m.path("log.txt");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .unwrap();
    let mut want = Vec::new();
    for i in 0..5 {
        let line = format!("record {i}\n");
        f.write_all(line.as_bytes()).unwrap();
        want.extend_from_slice(line.as_bytes());
        f.sync_data().unwrap();
    }
    drop(f);
    rig.m.wait_uploaded(DRAIN);
    let versions = rig.versions("log.txt").await;
    assert_eq!(versions.last().unwrap(), &want);
    assert!(
        versions.iter().all(|v| want.starts_with(v)),
        "every version is a prefix the file really had: {versions:?}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), want);
}

#[tokio::test(flavor = "multi_thread")]
async fn fsync_with_durability_source_uploads_while_the_writer_keeps_the_file_open() {
    let rig = Rig::start("").await;
    let path = rig.m.path("open.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    let body = pattern(200 << 10, 3);
    f.write_all(&body).unwrap();
    f.sync_all().unwrap();
    // fsync returned: the version is in the bucket although `f` is open.
    let got = rig
        .r
        .src
        .get("open.bin", GetRequest::default())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got == body, "fsync's bytes in the bucket");
    f.write_all(b"tail").unwrap();
    drop(f);
    rig.m.wait_uploaded(DRAIN);
    let mut full = body.clone();
    full.extend_from_slice(b"tail");
    let versions = rig.versions("open.bin").await;
    assert_eq!(versions.len(), 2);
    assert!(versions[0] == body && versions[1] == full);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_joining_readers_of_a_clean_copy_writes_where_they_read() {
    let rig = Rig::start("").await;
    let path = rig.m.path("shared.log");
    std::fs::write(&path, b"head\n").unwrap();
    rig.m.wait_uploaded(DRAIN);
    let opens = rig.passthrough_opens();
    // A reader of the clean copy, by passthrough ...
    let reader = std::fs::File::open(&path).unwrap();
    // ... joined by an appender: both are served by the one backing file.
    let mut w = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    w.write_all(b"tail\n").unwrap();
    let mut seen = vec![0u8; 10];
    reader.read_exact_at(&mut seen, 0).unwrap();
    assert_eq!(seen, b"head\ntail\n", "the reader sees the write at once");
    drop(w);
    drop(reader);
    assert!(rig.passthrough_opens() >= opens + 2.0);
    rig.m.wait_uploaded(DRAIN);
    assert_eq!(
        rig.versions("shared.log").await,
        vec![b"head\n".to_vec(), b"head\ntail\n".to_vec()]
    );
    // The clean copy it had been was never left to stand for the old version.
    let mut again = String::new();
    std::fs::File::open(&path)
        .unwrap()
        .read_to_string(&mut again)
        .unwrap();
    assert_eq!(again, "head\ntail\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_joining_while_an_upload_of_the_file_waits_gives_that_upload_a_copy() {
    // The first close's upload waits 3 s: the second writer opens meanwhile.
    let rig = Rig::start("[cache]\nwrite_back_delay = \"3s\"\n").await;
    let path = rig.m.path("doc.bin");
    let first = pattern(100 << 10, 1);
    let mut w1 = std::fs::File::create(&path).unwrap();
    w1.write_all(&first).unwrap();
    // A reader joins while the writer is open: the inode stays passthrough
    // to the working file after the writer closes.
    let reader = std::fs::File::open(&path).unwrap();
    drop(w1);
    let w2 = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    w2.write_all_at(b"SECOND", 0).unwrap();
    drop(w2);
    let mut second = first.clone();
    second[..6].copy_from_slice(b"SECOND");
    let mut seen = vec![0u8; second.len()];
    reader.read_exact_at(&mut seen, 0).unwrap();
    assert!(seen == second, "the reader sees the second writer's bytes");
    drop(reader);
    rig.m.wait_uploaded(DRAIN);
    let versions = rig.versions("doc.bin").await;
    assert_eq!(versions.len(), 2);
    assert!(versions[0] == first, "the first close's bytes, exactly");
    assert!(versions[1] == second);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_write_open_goes_through_the_daemon_so_its_mapped_writes_are_uploaded() {
    let rig = Rig::start("").await;
    let path = rig.m.path("mapped.bin");
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    rig.m.wait_uploaded(DRAIN);
    let before = rig.passthrough_opens();
    {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // SAFETY: a fresh shared mapping of 8 KiB of an open file, written
        // within its bounds and unmapped before the file is dropped.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            std::ptr::copy_nonoverlapping(b"mapped!".as_ptr(), p.cast::<u8>().add(100), 7);
            assert_eq!(libc::msync(p, 8192, libc::MS_SYNC), 0);
            assert_eq!(libc::munmap(p, 8192), 0);
        }
    }
    assert_eq!(
        rig.passthrough_opens(),
        before,
        "read-write opens are not passthrough"
    );
    rig.m.wait_uploaded(DRAIN);
    let mut want = vec![0u8; 8192];
    want[100..107].copy_from_slice(b"mapped!");
    assert!(bucket_contents(&rig.r.src, "").await["mapped.bin"] == want);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_passthrough_off_files_go_through_the_daemon_as_before() {
    let rig = Rig::start("[mount]\npassthrough = false\n").await;
    let body = pattern(1 << 20, 9);
    std::fs::write(rig.m.path("f.bin"), &body).unwrap();
    rig.m.wait_uploaded(DRAIN);
    assert!(std::fs::read(rig.m.path("f.bin")).unwrap() == body);
    assert_eq!(rig.passthrough_opens(), 0.0);
    assert!(bucket_contents(&rig.r.src, "").await["f.bin"] == body);
}

/// Linux clears a file's set-user-ID bit, and its set-group-ID bit when
/// group-executable, on a write or truncate by a caller without CAP_FSETID
/// and on any chown. regionfs asks the kernel to leave that to it (so the
/// kernel stops asking for security.capability before every write) and
/// must then do it itself, for writes through passthrough and through it.
#[tokio::test(flavor = "multi_thread")]
async fn an_unprivileged_write_or_truncate_and_any_chown_clear_set_id_bits_as_linux_does() {
    use std::os::unix::fs::PermissionsExt;
    let rig = Rig::start("[mount]\nallow_other = true\n").await;
    // The unprivileged writer must reach the mountpoint.
    let parent = rig.m.dir.parent().unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = rig.m.path("tool");
    std::fs::write(&f, b"v1").unwrap();
    let chmod = |m: u32| std::fs::set_permissions(&f, std::fs::Permissions::from_mode(m)).unwrap();
    let mode = || std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
    let nobody = |script: &str| {
        let status = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
            ])
            .arg(script.replace("F", &format!("'{}'", f.display())))
            .status()
            .unwrap();
        assert!(status.success(), "as nobody: {script}");
    };

    for (from, script, to) in [
        (0o6777, "echo more >> F", 0o777),
        (0o6777, "truncate -s 1 F", 0o777),
        (0o6777, "echo x > F", 0o777),
        // Set-group-ID without group execute is not set-group-ID: it stays.
        (0o2767, "echo y >> F", 0o2767),
    ] {
        chmod(from);
        nobody(script);
        assert_eq!(mode(), to, "{from:o}, then as nobody: {script}");
    }
    chmod(0o6777);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(b"root\n")
        .unwrap();
    assert_eq!(mode(), 0o6777, "root (CAP_FSETID) keeps them");
    chmod(0o6755);
    std::os::unix::fs::chown(&f, None, None).unwrap();
    assert_eq!(mode(), 0o755, "a chown to the same owner, even by root");
    chmod(0o4755);
    std::os::unix::fs::chown(&f, Some(1000), None).unwrap();
    assert_eq!(mode(), 0o755, "a chown, even by root");

    rig.m.wait_uploaded(DRAIN);
    let head = rig.r.src.head("tool", None).await.unwrap();
    assert_eq!(head.metadata["mode"], (libc::S_IFREG | 0o755).to_string());
    assert_eq!(head.metadata["uid"], "1000");
    assert_eq!(
        bucket_contents(&rig.r.src, "").await["tool"],
        b"x\ny\nroot\n"
    );
}

/// A passthrough writer is not seen writing, yet its parts go up before its
/// close, found by the file's growing size; each part's bytes are checked
/// against the staged file, so the object is exactly what close staged.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_file_written_by_passthrough_goes_up_in_parts_before_its_close() {
    let rig = Rig::start("[upload]\npart_size = \"5MiB\"\nmultipart_threshold = \"5MiB\"\n").await;
    let big = pattern(26 << 20, 3);
    let before = rig.passthrough_opens();
    {
        let mut f = std::fs::File::create(rig.m.path("big.bin")).unwrap();
        for chunk in big.chunks(1 << 20) {
            f.write_all(chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    assert!(rig.passthrough_opens() > before, "written by passthrough");
    rig.m.wait_uploaded(DRAIN);
    let head = rig.r.src.head("big.bin", None).await.unwrap();
    assert!(
        !head.metadata.contains_key("mtime"),
        "completed from parts sent before the close (they carry no mtime): {:?}",
        head.metadata
    );
    assert!(bucket_contents(&rig.r.src, "").await["big.bin"] == big);
    assert_eq!(rig.versions("big.bin").await.len(), 1);
}
