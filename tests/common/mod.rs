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

/// A block of ports reserved for one server of one test: a file created
/// exclusively in a directory shared by every test process, so two tests
/// running at once never pick the same block. Removed on drop.
pub struct PortLease(PathBuf);

impl Drop for PortLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A base port whose `width` (at most 10) ports and their +10000 gRPC twins
/// are all free, leased to the caller.
fn free_port_block(width: u16) -> (u16, PortLease) {
    let dir = std::env::temp_dir().join("regionfs-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    loop {
        // Bases 20000-22750: the blocks and their gRPC twins (30000-32758)
        // stay below the kernel's ephemeral ports (32768+), which outgoing
        // connections of other tests take at random.
        let base = 20000 + (rand::random::<u16>() % 2760) / 10 * 10;
        let lease = dir.join(base.to_string());
        if let Ok(meta) = std::fs::metadata(&lease) {
            // A lease left by a test process that was killed: old enough to reuse.
            let stale = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3600));
            if !stale {
                continue;
            }
            let _ = std::fs::remove_file(&lease);
        }
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lease)
            .is_err()
        {
            continue;
        }
        let lease = PortLease(lease);
        if (0..width).all(|i| port_free(base + i) && port_free(base + i + 10000)) {
            return (base, lease);
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
    pub fn new(child: Child, name: &str) -> ProcessGuard {
        CHILDREN.lock().unwrap().push(child.id());
        ProcessGuard {
            child,
            name: name.to_string(),
        }
    }
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
        // Reaped: its pid may be reused, so the hang report must not touch it.
        let pid = self.pid();
        LIVE_DAEMONS.lock().unwrap().retain(|(p, _, _)| *p != pid);
        CHILDREN.lock().unwrap().retain(|p| *p != pid);
    }
}

/// Starts a server process on a data dir and port.
type Starter = dyn Fn(&Path, u16) -> Child + Send;

/// One S3 server (a "region") for one test.
pub struct Region {
    pub port: u16,
    pub endpoint: String,
    pub region: String,
    pub kind: &'static str,
    process: Option<ProcessGuard>,
    start: Box<Starter>,
    pub dir: tempfile::TempDir,
    _lease: PortLease,
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
                .stderr(Stdio::from(
                    std::fs::File::create(dir.join("weed.err")).unwrap(),
                ))
                .spawn()
                .expect("cannot start weed: run scripts/test.sh once to install it")
        })
    }

    /// moto's S3 server: a second S3 implementation for conformance.
    pub fn moto(region: &str) -> Region {
        Self::moto_with_env(region, &[])
    }

    /// moto checking every request's signature and IAM policy after the first
    /// `free` requests (its `INITIAL_NO_AUTH_ACTION_COUNT`), which set IAM up.
    pub fn moto_enforcing_auth(region: &str, free: u32) -> Region {
        Self::moto_with_env(
            region,
            &[("INITIAL_NO_AUTH_ACTION_COUNT", &free.to_string())],
        )
    }

    fn moto_with_env(region: &str, envs: &[(&str, &str)]) -> Region {
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::start_with(region, "moto", 1, move |dir, port| {
            Command::new(venv().join("bin/moto_server"))
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .envs(envs.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("moto.log")).unwrap())
                .stderr(Stdio::from(
                    std::fs::File::create(dir.join("moto.err")).unwrap(),
                ))
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
        let dir = tempfile::Builder::new()
            .prefix("regionfs-region-")
            .tempdir()
            .unwrap();
        HANG_CLEANUP_DIRS
            .lock()
            .unwrap()
            .push(dir.path().to_path_buf());
        let (port, lease) = free_port_block(width);
        let mut r = Region {
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            region: region.to_string(),
            kind,
            process: None,
            start: Box::new(start),
            dir,
            _lease: lease,
        };
        // A port taken between the check and the server's bind (by a process
        // outside the leases) makes the server exit: start on other ports.
        for _ in 0..3 {
            match r.try_start() {
                Ok(()) => return r,
                Err(e) => {
                    eprintln!("{e}; starting on other ports");
                    let (port, lease) = free_port_block(width);
                    r.port = port;
                    r.endpoint = format!("http://127.0.0.1:{port}");
                    r._lease = lease;
                }
            }
        }
        r.restart();
        r
    }

    /// Starts the server again (after [`Region::stop`]) on the same port and data.
    pub fn restart(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    fn try_start(&mut self) -> Result<(), String> {
        let child = (self.start)(self.dir.path(), self.port);
        let mut guard = ProcessGuard::new(child, self.kind);
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !port_open(port) {
            if let Ok(Some(status)) = guard.child.try_wait() {
                return Err(format!(
                    "{} on port {port} exited at start ({status}); see {}",
                    self.kind,
                    self.dir.path().display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} not listening on port {port} after 60 s",
                    self.kind
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.process = Some(guard);
        Ok(())
    }

    /// Kills the server (the region becomes unreachable); data stays.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
            if self.kind == "seaweedfs" {
                remove_weed_sockets(self.port);
            }
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
            acl: None,
            sse: None,
            kms_key_id: None,
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

/// `weed mini` leaves a unix socket per gRPC port in /tmp (not in TMPDIR):
/// those of the server on `port` and the ports after it go with it.
fn remove_weed_sockets(port: u16) {
    for k in 0..9 {
        let grpc = port as u32 + 10_000 + k;
        for part in ["s3", "master", "volume", "filer", "admin"] {
            let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{part}-grpc-{grpc}.sock"));
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

/// Two regions (SeaweedFS), a source and a destination bucket, and a config.
pub struct Regions {
    pub a: Region,
    pub b: Region,
    pub src_bucket: String,
    pub dst_bucket: String,
    pub src: S3Store,
    pub dst: S3Store,
}

impl Regions {
    pub async fn start() -> Regions {
        Self::with(Region::seaweed("us-east-1"), Region::seaweed("eu-west-1")).await
    }

    /// moto as the source (S3's semantics, not SeaweedFS's), SeaweedFS as
    /// the destination.
    pub async fn start_moto_source() -> Regions {
        Self::with(Region::moto("us-east-1"), Region::seaweed("eu-west-1")).await
    }

    pub async fn with(a: Region, b: Region) -> Regions {
        let (src_bucket, dst_bucket) = (bucket_name("src"), bucket_name("dst"));
        let src = a.versioned_bucket(&src_bucket).await;
        let dst = b.versioned_bucket(&dst_bucket).await;
        Regions {
            a,
            b,
            src_bucket,
            dst_bucket,
            src,
            dst,
        }
    }

    /// A config for these regions with `extra` TOML appended (sections only).
    pub fn config(&self, cache_dir: &Path, extra: &str) -> String {
        // Keys of a `[cache]` section in `extra` join the one written here.
        let (mut cache_keys, mut rest, mut in_cache) = (String::new(), String::new(), false);
        for line in extra.lines() {
            if line.starts_with('[') {
                in_cache = line.trim() == "[cache]";
                if in_cache {
                    continue;
                }
            }
            let target = if in_cache { &mut cache_keys } else { &mut rest };
            target.push_str(line);
            target.push('\n');
        }
        let extra = rest;
        format!(
            r#"[source]
name = "us-east"
region = "us-east-1"
bucket = "{}"
endpoint = "{}"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"

[[destination]]
name = "eu"
region = "eu-west-1"
bucket = "{}"
endpoint = "{}"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"

[[rule]]
id = "all"
destination = "eu"
delete_markers = true

[cache]
dir = "{}"
{cache_keys}
{extra}
"#,
            self.src_bucket,
            self.a.endpoint,
            self.dst_bucket,
            self.b.endpoint,
            cache_dir.display()
        )
    }
}

fn mounted(path: &Path) -> bool {
    let p = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&*p)))
        .unwrap_or(false)
}

pub fn detach(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    unsafe {
        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
    }
}

/// How long a test may run before the harness reports where it hangs: under
/// nextest's 300 s kill, so the report reaches the CI log
/// (`REGIONFS_TEST_HANG_REPORT_S` sets it, to see the report).
fn hang_report_after() -> Duration {
    let s = std::env::var("REGIONFS_TEST_HANG_REPORT_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(240);
    Duration::from_secs(s)
}

/// Every server and daemon this test process runs, for the hang report to stop.
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// The servers' and mounts' temp dirs, for the hang report to remove (no
/// TempDir guard runs after abort). Ones already removed are skipped.
static HANG_CLEANUP_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// The daemons this test process runs (pid, log, mountpoint), for the report.
static LIVE_DAEMONS: std::sync::Mutex<Vec<(u32, PathBuf, PathBuf)>> =
    std::sync::Mutex::new(Vec::new());

/// Starts (once per test process) a thread that, if the test is still running
/// after [`hang_report_after`], prints where every thread of this process and
/// of its daemons waits, and each daemon's log tail; then detaches the mounts,
/// kills and reaps what the test started, removes the servers' and mounts'
/// dirs and aborts, so a hang fails with its cause on record.
fn watch_for_hangs() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::spawn(|| {
            let after = hang_report_after();
            std::thread::sleep(after);
            eprintln!("=== hang report: the test is still running after {after:?}");
            // The daemons first: gdb takes seconds, the test may move on.
            let live = LIVE_DAEMONS.lock().unwrap().clone();
            for (pid, log, dir) in &live {
                eprintln!("--- daemon {pid} mounted at {}:", dir.display());
                eprintln!("{}", thread_stacks(*pid));
                eprintln!("{}", gdb_stacks(*pid));
                eprintln!("--- last lines of its log ({}):", log.display());
                eprintln!("{}", log_tail(log, 80));
            }
            eprintln!("--- the test process ({}):", std::process::id());
            eprintln!("{}", thread_stacks(std::process::id()));
            eprintln!("{}", gdb_stacks(std::process::id()));
            // abort() runs no Drop guard: unmount and stop what they would.
            for (_, _, dir) in &live {
                detach(dir);
            }
            let children = CHILDREN.lock().unwrap().clone();
            for pid in &children {
                unsafe {
                    libc::kill(*pid as i32, libc::SIGKILL);
                }
            }
            // Reaped, they have let go of their files (ECHILD: the test's own
            // wait got there first).
            for pid in &children {
                unsafe {
                    libc::waitpid(*pid as i32, std::ptr::null_mut(), 0);
                }
            }
            for d in HANG_CLEANUP_DIRS.lock().unwrap().iter() {
                let _ = std::fs::remove_dir_all(d);
            }
            eprintln!("=== end of hang report");
            std::process::abort();
        });
    });
}

/// The last `n` lines of a daemon's log.
fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut tail: Vec<&str> = text.lines().rev().take(n).collect();
    tail.reverse();
    tail.join("\n")
}

/// Each thread's user-space stack, where gdb is installed (scripts/test.sh
/// installs it).
fn gdb_stacks(pid: u32) -> String {
    let pid = pid.to_string();
    match Command::new("gdb")
        .args(["-batch", "-nx", "-p", &pid, "-ex", "thread apply all bt 30"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => format!("(gdb: {e})"),
    }
}

/// Each thread of `pid`: its name, what it waits in (wchan) and its kernel stack.
fn thread_stacks(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("(no /proc/{pid}/task)");
    };
    for t in tasks.flatten() {
        let p = t.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        out.push_str(&format!(
            "thread {} {} wchan={}\n{}",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan").trim(),
            read("stack")
        ));
    }
    out
}

pub fn regionfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_regionfs")
}

/// `regionfs ARGS --config CONFIG`, run to completion.
pub fn regionfs_cli(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(regionfs_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap()
}

/// The real `regionfs mount` binary on a temp mountpoint. Drop detaches the
/// mount and kills the process (by PID), also when a test fails.
/// `regionfs verify`: its exit code and what it printed.
pub fn verify(config: &Path) -> (Option<i32>, String) {
    let out = regionfs_cli(&["verify"], config);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), text)
}

pub struct Mount {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    process: Option<ProcessGuard>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    _tmp: tempfile::TempDir,
}

impl Mount {
    /// Writes `config_text` and mounts; the cache dir named in it is kept across
    /// remounts of this guard.
    pub fn start(config_text: &str) -> Mount {
        Self::start_with_args(config_text, &[])
    }

    /// As [`Mount::start`], with more `regionfs mount` arguments (e.g. `--as-of`).
    pub fn start_with_args(config_text: &str, args: &[&str]) -> Mount {
        Self::start_with_env(config_text, args, &[])
    }

    /// As [`Mount::start_with_args`], with environment variables for the daemon
    /// (e.g. where its credentials come from).
    pub fn start_with_env(config_text: &str, args: &[&str], envs: &[(&str, &str)]) -> Mount {
        let tmp = tempfile::Builder::new()
            .prefix("regionfs-mnt-")
            .tempdir()
            .unwrap();
        HANG_CLEANUP_DIRS
            .lock()
            .unwrap()
            .push(tmp.path().to_path_buf());
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        let config = tmp.path().join("regionfs.toml");
        std::fs::write(&config, config_text).unwrap();
        let log = tmp.path().join("mount.log");
        let mut m = Mount {
            dir,
            config,
            log,
            process: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _tmp: tmp,
        };
        m.remount();
        m
    }

    /// Starts the daemon again (after a kill or an unmount).
    pub fn remount(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(regionfs_bin())
            .args(["mount", "--config"])
            .arg(&self.config)
            .args(&self.args)
            .arg(&self.dir)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("REGIONFS_LOG", "info")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut guard = ProcessGuard::new(child, "regionfs");
        watch_for_hangs();
        LIVE_DAEMONS
            .lock()
            .unwrap()
            .push((guard.pid(), self.log.clone(), self.dir.clone()));
        let dir = self.dir.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        // A dead mount left by kill -9 is still listed until the new daemon
        // clears it: wait for the new daemon to say it mounted.
        let said = |log: &str| log.matches("regionfs: mounted").count();
        let before = said(&self.log_text());
        while !(mounted(&dir) && said(&self.log_text()) > before) {
            if let Ok(Some(status)) = guard.child.try_wait() {
                panic!("regionfs mount exited with {status}: {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "not mounted after 60 s: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.process = Some(guard);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("mounted").pid()
    }

    /// kill -9 of the daemon: the mount is left dead ("transport endpoint is
    /// not connected") as after a crash.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// A clean unmount (SIGTERM), waiting for the daemon to drain and exit.
    pub fn unmount(&mut self) -> std::process::ExitStatus {
        let mut p = self.process.take().expect("mounted");
        p.signal(libc::SIGTERM);
        let status = p.child.wait().unwrap();
        assert!(!mounted(&self.dir), "still mounted after the daemon exited");
        status
    }

    /// Waits for the daemon to exit by itself (after an external umount).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut p = self.process.take().expect("mounted");
        let status = wait_for("the daemon to exit", timeout, || {
            p.child.try_wait().unwrap()
        });
        assert!(!mounted(&self.dir));
        status
    }

    /// `regionfs status --json [PATH]` as parsed JSON.
    pub fn status(&self, path: Option<&str>) -> serde_json::Value {
        let mut cmd = Command::new(regionfs_bin());
        cmd.args(["status", "--json", "--config"]).arg(&self.config);
        if let Some(p) = path {
            cmd.arg(p);
        }
        let out = cmd.output().unwrap();
        // 2 and 3 say something failed or is overdue; 1 that status could not run.
        assert!(
            matches!(out.status.code(), Some(0 | 2 | 3)),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until the journal shows no pending upload.
    pub fn wait_uploaded(&self, timeout: Duration) {
        wait_for("uploads to drain", timeout, || {
            let s = self.status(None);
            (s["uploads"]["pending"] == 0).then_some(())
        });
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed test: the daemon's own account, for the CI log.
            eprintln!(
                "--- last lines of the regionfs log ({}):",
                self.log.display()
            );
            eprintln!("{}", log_tail(&self.log, 60));
        }
        detach(&self.dir);
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }
}

/// Writes `body` as a new version of `key`, as another client would.
pub async fn put_bytes(s: &S3Store, key: &str, body: impl Into<bytes::Bytes>) {
    use regionfs::store::{ObjectStore, PutBody, PutOptions};
    s.put(key, PutBody::Bytes(body.into()), &PutOptions::default())
        .await
        .unwrap();
}

/// Versions of `key` in a bucket, oldest first: (version id, source version it replicates).
pub async fn replica_history(s: &S3Store, key: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut from = None;
    loop {
        let page = regionfs::store::ObjectStore::list_versions(s, key, from, None)
            .await
            .unwrap();
        for v in page
            .versions
            .iter()
            .filter(|v| v.key == key && !v.is_delete_marker)
        {
            let head = regionfs::store::ObjectStore::head(s, key, Some(&v.version_id))
                .await
                .unwrap();
            out.push((
                v.version_id.clone(),
                head.metadata
                    .get(regionfs::store::SOURCE_VERSION_META)
                    .cloned(),
            ));
        }
        match page.next {
            Some(n) => from = Some(n),
            None => break,
        }
    }
    out.reverse();
    out
}

/// Source versions of `key`, oldest first.
pub async fn source_history(s: &S3Store, key: &str) -> Vec<String> {
    let page = regionfs::store::ObjectStore::list_versions(s, key, None, None)
        .await
        .unwrap();
    let mut v: Vec<String> = page
        .versions
        .into_iter()
        .filter(|v| v.key == key && !v.is_delete_marker)
        .map(|v| v.version_id)
        .collect();
    v.reverse();
    v
}

/// Every object under `prefix` with its bytes (regionfs's own
/// `.regionfs-replicated` progress note left out).
/// The current object's bytes at `key`.
pub async fn get_bytes(s: &S3Store, key: &str) -> Vec<u8> {
    use regionfs::store::ObjectStore;
    let got = s.get(key, Default::default()).await.unwrap();
    got.bytes().await.unwrap().to_vec()
}

pub async fn bucket_contents(
    s: &S3Store,
    prefix: &str,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    use regionfs::store::{GetRequest, ObjectStore};
    let mut out = std::collections::BTreeMap::new();
    let mut token = None;
    loop {
        let page = s.list(prefix, None, token, None).await.unwrap();
        // The replicator's progress note in destinations is not user data.
        for o in page
            .objects
            .into_iter()
            .filter(|o| !o.key.ends_with(".regionfs-replicated"))
        {
            let body = s
                .get(&o.key, GetRequest::default())
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            out.insert(o.key, body.to_vec());
        }
        match page.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    out
}

/// Runs a shell command, panicking with its output when it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /metrics` from a mount's `[metrics] listen` port.
pub fn scrape(port: u16) -> String {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The value of one metric line (`name{labels}`) in a scrape, if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// A TCP proxy that adds `delay` to every byte in each direction (a far-away
/// region: this kernel has no netem) and can cut the link or stall it. It
/// runs on its own thread and runtime; dropping it stops it and closes every
/// connection.
pub struct LatencyProxy {
    pub port: u16,
    cut: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    stall: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    /// What clients sent while the link was stalled (held, not yet passed on).
    held: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    rewrite: Rewrite,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LatencyProxy {
    pub fn start(target_port: u16, delay: Duration) -> LatencyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(tokio::sync::watch::channel(false).0);
        let stall = std::sync::Arc::new(tokio::sync::watch::channel(false).0);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let cut2 = cut.clone();
        let stall2 = stall.clone();
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held2 = held.clone();
        let rewrite = Rewrite::default();
        let rewrite2 = rewrite.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let accept = async {
                    loop {
                        let Ok((client, _)) = listener.accept().await else { continue };
                        if *cut2.borrow() {
                            drop(client);
                            continue;
                        }
                        let cut = cut2.subscribe();
                        let (up, down) = (stall2.subscribe(), stall2.subscribe());
                        let held = held2.clone();
                        let rewrite = rewrite2.clone();
                        tokio::spawn(async move {
                            let Ok(server) =
                                tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                            else {
                                return;
                            };
                            let _ = client.set_nodelay(true);
                            let _ = server.set_nodelay(true);
                            let (cr, cw) = client.into_split();
                            let (sr, sw) = server.into_split();
                            tokio::select! {
                                _ = async { tokio::join!(delayed_pipe(cr, sw, delay, up, Some(held), None), delayed_pipe(sr, cw, delay, down, None, Some(rewrite))) } => {}
                                _ = wait_cut(cut) => {}
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
            rt.shutdown_background();
        });
        LatencyProxy {
            port,
            cut,
            stall,
            held,
            rewrite,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts (true) or restores (false) the link: open connections are closed
    /// and new ones refused while cut.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    /// Stalls (true) or resumes (false) the link: connections, open and new,
    /// stay open but no byte goes through in either direction (a region
    /// that hangs); on resume what was held goes on.
    pub fn set_stalled(&self, stalled: bool) {
        if stalled {
            self.held.lock().unwrap().clear();
        }
        self.stall.send_replace(stalled);
    }

    /// From now on every `from` in what the server sends back (within one
    /// read of the socket) reaches the client as `to`, of the same length: a
    /// region whose bodies are garbled on the way, lengths intact.
    pub fn set_rewrite(&self, from: &[u8], to: &[u8]) {
        assert_eq!(from.len(), to.len());
        *self.rewrite.lock().unwrap() = Some((from.to_vec(), to.to_vec()));
    }

    /// Whether `needle` is among the bytes clients sent since the link was
    /// stalled: a request that is hanging there.
    pub fn holds(&self, needle: &[u8]) -> bool {
        self.held
            .lock()
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn wait_cut(mut rx: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *rx.borrow() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Bytes a [`LatencyProxy`] replaces in what servers send back.
type Rewrite = std::sync::Arc<std::sync::Mutex<Option<(Vec<u8>, Vec<u8>)>>>;

/// Copies `from` to `to`, each chunk delivered `delay` after it was read,
/// without limiting throughput (chunks in flight overlap), and none while
/// `stalled` says so (what is read meanwhile is also copied to `held`);
/// with `rewrite`, as [`LatencyProxy::set_rewrite`] says.
async fn delayed_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    mut stalled: tokio::sync::watch::Receiver<bool>,
    held: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>,
    rewrite: Option<Rewrite>,
) {
    let is_stalled = stalled.clone();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(h) = held.as_ref().filter(|_| *is_stalled.borrow()) {
                        h.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    if let Some((a, b)) = rewrite.as_ref().and_then(|r| r.lock().unwrap().clone()) {
                        let mut i = 0;
                        while i + a.len() <= n {
                            if buf[i..i + a.len()] == a[..] {
                                buf[i..i + a.len()].copy_from_slice(&b);
                                i += a.len();
                            } else {
                                i += 1;
                            }
                        }
                    }
                    if tx
                        .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, data)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if stalled.wait_for(|s| !*s).await.is_err() {
                return;
            }
            if to.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// What `tests/moto_iam.py ARGS` prints (IAM, STS and KMS set up on a moto
/// server), trimmed; panics with its error output when it fails.
pub fn moto_iam(args: &[&str]) -> String {
    let venv = std::env::var_os("REGIONFS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"));
    let o = std::process::Command::new(venv.join("bin/python"))
        .arg(repo_root().join("tests/moto_iam.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "moto_iam.py {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}
