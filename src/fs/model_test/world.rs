//! The system under test: a core over an in-memory source (behind fault
//! injection) and destination, restarted by dropping its runtime, and the
//! core driven as the kernel drives it (paths walked one lookup at a time).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::steps::ME;
use super::tree::Expect;
use crate::config::Config;
use crate::fs::Core;
use crate::fs::FsError;
use crate::meta::{S_IFDIR, S_IFMT};
use crate::service::{start_with_stores, Service};
use crate::store::{FaultyStore, MemoryStore, ObjectStore};

/// A source bucket (behind fault injection), a destination, a cache dir.
pub(super) struct World {
    pub(super) _dir: tempfile::TempDir,
    pub(super) src: Arc<MemoryStore>,
    pub(super) faulty: Arc<FaultyStore>,
    pub(super) dst: Arc<MemoryStore>,
    pub(super) config: Config,
}

/// One run of the daemon: dropping it stops everything at once, as kill -9.
pub(super) struct Up {
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) svc: Option<Service>,
    /// The source as another client sees it (no fault injection).
    pub(super) src: Arc<MemoryStore>,
}

impl Up {
    pub(super) fn core(&self) -> Arc<Core> {
        self.svc.as_ref().unwrap().core.clone()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let svc = self.svc.take();
        let _enter = self.rt.enter();
        drop(svc);
    }
}

impl World {
    /// `write_back_delay_ms`: `None` holds every upload until a step waits
    /// for it (`Settle`, `Fsync`, the final drain), which makes a sequence
    /// repeat exactly, so that it shrinks well. `foreign`: another client
    /// writes too, so a listing the mount took does not stand for the
    /// bucket (`dir_ttl` 0, else its names show up only after 10 s).
    /// `held`: uploads held in memory (`upload.held_in_memory`; a small
    /// window makes most of the queue spill to the journal).
    pub(super) fn new(write_back_delay_ms: Option<u64>, foreign: bool, held: usize) -> World {
        let delay = write_back_delay_ms.map_or("1h".to_string(), |ms| format!("{ms}ms"));
        let dir_ttl = if foreign { "0s" } else { "10s" };
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
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
delete_markers = true
[cache]
dir = "{}"
max_size = "256MiB"
write_back_delay = "{delay}"
[upload]
held_in_memory = {held}
[mount]
passthrough = false
dir_ttl = "{dir_ttl}"
"#,
            dir.path().join("cache").display()
        );
        let config = Config::parse(&text).unwrap();
        let src = Arc::new(MemoryStore::new("src"));
        let faulty = Arc::new(FaultyStore::new(src.clone()));
        World {
            _dir: dir,
            src,
            faulty,
            dst: Arc::new(MemoryStore::new("dst")),
            config,
        }
    }

    pub(super) fn start(&self) -> Up {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store: Arc<dyn ObjectStore> = self.faulty.clone();
        let mut dests: HashMap<String, Arc<dyn ObjectStore>> = HashMap::new();
        dests.insert("eu".into(), self.dst.clone());
        let svc = rt
            .block_on(start_with_stores(&self.config, store, dests, ME))
            .unwrap();
        svc.core.set_kernel_caching(false, false);
        Up {
            rt,
            svc: Some(svc),
            src: self.src.clone(),
        }
    }
}

thread_local! {
    /// The last error [`errno`] mapped, for a failure message.
    pub(super) static LAST_ERROR: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

pub(super) fn errno_of<T>(r: &Result<T, FsError>) -> Expect {
    match r {
        Ok(_) => Ok(()),
        Err(e) => {
            LAST_ERROR.with(|l| *l.borrow_mut() = format!("{e:?}"));
            Err(e.errno())
        }
    }
}

pub(super) fn errno(r: Result<(), FsError>) -> Expect {
    r.map_err(|e| {
        LAST_ERROR.with(|l| *l.borrow_mut() = format!("{e:?}"));
        e.errno()
    })
}

/// The core as the kernel drives it: paths walked one lookup at a time.
pub(super) struct Driver<'a> {
    pub core: &'a Core,
    /// The actor's subtree: "" or "p1/".
    pub root: &'a str,
}

impl Driver<'_> {
    pub(super) async fn ino(&self, path: &str) -> Result<u64, FsError> {
        let mut ino = crate::fs::inode::ROOT;
        let full = format!("{}{path}", self.root);
        for part in full.split('/').filter(|s| !s.is_empty()) {
            ino = self.core.lookup(ino, part.as_bytes()).await?.ino;
        }
        Ok(ino)
    }

    /// [`Driver::ino`] of a path that must not be a directory (EISDIR).
    pub(super) async fn file_ino(&self, path: &str) -> Result<u64, FsError> {
        let ino = self.ino(path).await?;
        if self.core.getattr(ino)?.mode & S_IFMT == S_IFDIR {
            return Err(FsError::IsDir);
        }
        Ok(ino)
    }

    pub(super) async fn parent(&self, path: &str) -> Result<(u64, String), FsError> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        Ok((self.ino(dir).await?, name.to_string()))
    }

    pub(super) async fn read_all(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let size = self.core.getattr(ino)?.size;
        let o = self.core.open(ino, libc::O_RDONLY).await?;
        let mut out = Vec::new();
        while (out.len() as u64) < size {
            let chunk = self.core.read(o.fh, out.len() as u64, 128 * 1024).await;
            match chunk {
                Ok(c) if c.is_empty() => break,
                Ok(c) => out.extend(c),
                Err(e) => {
                    let _ = self.core.release(o.fh).await;
                    return Err(e);
                }
            }
        }
        self.core.release(o.fh).await?;
        Ok(out)
    }

    pub(super) async fn write_file(&self, fh: u64, off: u64, data: &[u8]) -> Result<(), FsError> {
        self.core.write(fh, off, data).await.map(|_| ())
    }

    /// `rm -rf`: children first, as the tool walks it.
    pub(super) async fn rm_rf(&self, path: &str) -> Result<(), FsError> {
        let ino = self.ino(path).await?;
        let attr = self.core.getattr(ino)?;
        let (pino, name) = self.parent(path).await?;
        if attr.mode & S_IFMT != S_IFDIR {
            return self.core.unlink(pino, name.as_bytes()).await;
        }
        for e in self.core.readdir(ino).await? {
            Box::pin(self.rm_rf(&format!("{path}/{}", e.name))).await?;
        }
        self.core.rmdir(pino, name.as_bytes()).await
    }
}

/// Which step wrote the first bytes (see [`content`]).
pub(super) fn tag(b: &[u8]) -> String {
    match b.get(..8) {
        Some(t) => format!(
            "written by step {:#x}",
            u64::from_le_bytes(t.try_into().unwrap())
        ),
        None => "short".into(),
    }
}

/// Runs one operation on the core; one that does not answer within 20 s
/// fails the sequence (nothing here should wait that long).
pub(super) fn block<T>(up: &Up, f: impl std::future::Future<Output = T>) -> Result<T, String> {
    match up
        .rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), f).await })
    {
        Ok(t) => Ok(t),
        Err(_) => {
            let open = up.rt.block_on(up.svc.as_ref().unwrap().journal.open_ops());
            Err(format!(
                "no answer after 20 s; queued: {:#?}",
                open.unwrap_or_default()
            ))
        }
    }
}
