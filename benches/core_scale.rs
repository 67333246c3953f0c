//! What a file costs the mount-free core as the mount grows: extracts a
//! tar-like tree (10 files of 1 KiB per directory; mkdir, create, write,
//! close, chown, chmod, utimens, as `tar -xpf` does) into a core over the
//! in-memory store, uploads running in the background, and prints the time
//! per file of each slice of the run. Flat is the target: a cost that grows
//! with the files seen makes the whole run quadratic.
//!
//! `cargo bench --bench core_scale -- [FILES] [--held]` (default 20000):
//! `--held` keeps every upload queued (a write-back delay of an hour), as
//! when the store falls behind the writer: costs that grow with the
//! pending uploads show.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use regionfs::config::Config;
use regionfs::fs::{inode::ROOT, Caller, SetAttr};
use regionfs::service::start_with_stores;
use regionfs::store::{MemoryStore, ObjectStore};

const ME: Caller = Caller { uid: 0, gid: 0 };

fn main() {
    let files: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let held = std::env::args().any(|a| a == "--held");
    let delay = if held { "1h" } else { "5s" };
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&format!(
        r#"
[source]
name = "src"
region = "us-east-1"
bucket = "src"
[[destination]]
name = "eu"
region = "eu-west-1"
bucket = "dst"
[[rule]]
id = "all"
destination = "eu"
[cache]
dir = "{}"
write_back_delay = "{delay}"
[mount]
passthrough = false
"#,
        dir.path().join("cache").display()
    ))
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let src: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new("src"));
    let mut dests: HashMap<String, Arc<dyn ObjectStore>> = HashMap::new();
    dests.insert("eu".into(), Arc::new(MemoryStore::new("dst")));
    let svc = rt
        .block_on(start_with_stores(&config, src, dests, ME))
        .unwrap();
    let core = svc.core.clone();
    let body = vec![b'x'; 1024];
    let slice = (files / 10).max(1);
    println!("files\tµs per file (this slice)\tpending uploads");
    let first = Instant::now();
    let mut t = Instant::now();
    rt.block_on(async {
        let mut dir_ino = ROOT;
        for i in 0..files {
            if i % 10 == 0 {
                let name = format!("d{:06}", i / 10);
                dir_ino = core
                    .mkdir(ROOT, name.as_bytes(), 0o755, ME)
                    .await
                    .unwrap()
                    .ino;
            }
            let name = format!("f{i:06}.c");
            let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL;
            let (attr, opened) = core
                .create(dir_ino, name.as_bytes(), 0o644 | libc::S_IFREG, flags, ME)
                .await
                .unwrap();
            core.write(opened.fh, 0, &body).await.unwrap();
            core.flush(opened.fh).await.unwrap();
            core.release(opened.fh).await.unwrap();
            for set in [
                SetAttr {
                    uid: Some(1000),
                    gid: Some(1000),
                    ..Default::default()
                },
                SetAttr {
                    mode: Some(0o640),
                    ..Default::default()
                },
                SetAttr {
                    atime: Some(SystemTime::UNIX_EPOCH),
                    mtime: Some(SystemTime::UNIX_EPOCH),
                    ..Default::default()
                },
            ] {
                core.setattr(attr.ino, set).await.unwrap();
            }
            if (i + 1) % slice == 0 {
                let per = t.elapsed().as_micros() as f64 / slice as f64;
                println!("{}\t{per:.0}\t{}", i + 1, svc.uploader.pending_count());
                t = Instant::now();
            }
        }
    });
    println!(
        "all {files}: {:.2} s, {:.0} µs per file",
        first.elapsed().as_secs_f64(),
        first.elapsed().as_micros() as f64 / files as f64
    );
    let _enter = rt.enter();
    drop(core);
    drop(svc);
}
