//! Test harness: real S3 servers on loopback, each on its own ports and temp dir,
//! stopped (kill by PID) and cleaned by Drop guards even when a test fails.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regionfs::config::{BucketConfig, ChecksumMode};
use regionfs::store::S3Store;

pub const ACCESS_KEY: &str = "regionfs";
pub const SECRET_KEY: &str = "regionfs-secret";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn venv() -> PathBuf {
    std::env::var_os("REGIONFS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"))
}

/// Keeps the SDK away from the EC2 metadata endpoint (non-loopback).
pub fn quiet_aws_env() {
    // SAFETY-free in edition 2021; set once, before any client is built.
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
}

/// Polls `cond` until it returns Some or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Async flavour of [`wait_for`].
pub async fn wait_for_async<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn port_free(p: u16) -> bool {
    TcpListener::bind(("127.0.0.1", p)).is_ok()
}

/// A base port whose nine ports and their +10000 gRPC twins are all free.
fn free_port_block(width: u16) -> u16 {
    loop {
        let base = 20000 + (rand::random::<u16>() % 9000) / 10 * 10;
        if (0..width).all(|i| port_free(base + i) && port_free(base + i + 10000)) {
            return base;
        }
    }
}

fn port_open(p: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], p).into(), Duration::from_millis(200)).is_ok()
}

/// A child process killed (SIGKILL, by PID) when dropped.
pub struct ProcessGuard {
    pub child: Child,
    pub name: String,
}

impl ProcessGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One S3 server (a "region") for one test.
pub struct Region {
    pub port: u16,
    pub endpoint: String,
    pub region: String,
    pub kind: &'static str,
    process: Option<ProcessGuard>,
    start: Box<dyn Fn(&Path, u16) -> Child + Send>,
    pub dir: tempfile::TempDir,
}

impl Region {
    /// A SeaweedFS `weed mini` on its own ports and temp dir.
    pub fn seaweed(region: &str) -> Region {
        Self::start_with(region, "seaweedfs", 9, |dir, port| {
            Command::new("bash")
                .arg(repo_root().join("scripts/regions.sh"))
                .args(["exec-one", dir.to_str().unwrap(), &port.to_string(), ""])
                .env("REGIONFS_VENV", venv())
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("weed.log")).unwrap())
                .stderr(Stdio::from(std::fs::File::create(dir.join("weed.err")).unwrap()))
                .spawn()
                .expect("cannot start weed: run scripts/test.sh once to install it")
        })
    }

    /// moto's S3 server: a second S3 implementation for conformance.
    pub fn moto(region: &str) -> Region {
        Self::start_with(region, "moto", 1, |dir, port| {
            Command::new(venv().join("bin/moto_server"))
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("moto.log")).unwrap())
                .stderr(Stdio::from(std::fs::File::create(dir.join("moto.err")).unwrap()))
                .spawn()
                .expect("cannot start moto_server: run scripts/test.sh once to install it")
        })
    }

    fn start_with(
        region: &str,
        kind: &'static str,
        width: u16,
        start: impl Fn(&Path, u16) -> Child + Send + 'static,
    ) -> Region {
        quiet_aws_env();
        let dir = tempfile::Builder::new().prefix("regionfs-region-").tempdir().unwrap();
        let port = free_port_block(width);
        let mut r = Region {
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            region: region.to_string(),
            kind,
            process: None,
            start: Box::new(start),
            dir,
        };
        r.restart();
        r
    }

    /// Starts the server again (after [`Region::stop`]) on the same port and data.
    pub fn restart(&mut self) {
        let child = (self.start)(self.dir.path(), self.port);
        self.process = Some(ProcessGuard {
            child,
            name: self.kind.to_string(),
        });
        let port = self.port;
        wait_for(&format!("{} on port {port}", self.kind), Duration::from_secs(60), || {
            port_open(port).then_some(())
        });
    }

    /// Kills the server (the region becomes unreachable); data stays.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid())
    }

    pub fn bucket_config(&self, name: &str, bucket: &str) -> BucketConfig {
        BucketConfig {
            name: name.to_string(),
            region: self.region.clone(),
            bucket: bucket.to_string(),
            prefix: String::new(),
            endpoint: Some(self.endpoint.clone()),
            profile: None,
            path_style: Some(true),
            access_key_id: Some(ACCESS_KEY.to_string()),
            secret_access_key: Some(SECRET_KEY.to_string()),
            checksums: ChecksumMode::WhenSupported,
            allow_same_region: false,
        }
    }

    /// A store for `bucket`, created with versioning enabled (retrying while the
    /// server finishes starting).
    pub async fn versioned_bucket(&self, bucket: &str) -> S3Store {
        let store = S3Store::connect(&self.bucket_config("t", bucket)).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match store.create_versioned_bucket().await {
                Ok(()) => return store,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot create bucket {bucket} on {}: {e}", self.kind),
            }
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A unique bucket name for one test.
pub fn bucket_name(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}
