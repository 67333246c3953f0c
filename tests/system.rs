//! How regionfs fits a system: the mount's type, mount(8) and /etc/fstab
//! through the mount helper, systemd's readiness protocol, and what
//! `scripts/install.sh` puts where.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The filesystem type mountinfo gives the mount at `dir`.
fn mount_type(dir: &Path) -> Option<String> {
    let p = dir.to_string_lossy();
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(&*p))
        .filter_map(|l| l.split(" - ").nth(1)?.split(' ').next().map(str::to_string))
        .next_back()
}

fn findmnt_finds(dir: &Path) -> bool {
    let out = Command::new("findmnt")
        .args(["-n", "-t", "fuse.regionfs", "-o", "TARGET"])
        .arg(dir)
        .output()
        .unwrap();
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == dir.to_string_lossy()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mount_is_fuse_regionfs_and_tells_systemd_when_ready_stopping_and_draining() {
    quiet_aws_env();
    let r = Regions::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("notify");
    let sock = UnixDatagram::bind(&socket).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let config = tmp.path().join("regionfs.toml");
    let port = free_port();
    std::fs::write(
        &config,
        r.config(
            &tmp.path().join("cache"),
            &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        ),
    )
    .unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let log = std::fs::File::create(tmp.path().join("mount.log")).unwrap();
    let child = Command::new(regionfs_bin())
        .args(["mount", "--config"])
        .arg(&config)
        .arg(&mnt)
        .env("NOTIFY_SOCKET", &socket)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut daemon = ProcessGuard::new(child, "regionfs");
    let mut said: Vec<String> = Vec::new();
    let listen = |said: &mut Vec<String>| {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    wait_for("READY=1", Duration::from_secs(60), || {
        listen(&mut said);
        said.iter()
            .any(|m| m.lines().any(|l| l == "READY=1"))
            .then_some(())
    });
    // Ready means mounted, with its type.
    assert_eq!(
        mount_type(&mnt).as_deref(),
        Some("fuse.regionfs"),
        "{said:?}"
    );
    assert!(findmnt_finds(&mnt), "findmnt -t fuse.regionfs");
    std::fs::write(mnt.join("a.txt"), b"ready").unwrap();
    // Replicated, so every family has a series (the lag histogram too).
    wait_for("the replica", Duration::from_secs(60), || {
        let text = scrape(port);
        (metric(&text, "regionfs_replication_completed{destination=\"eu\"}") == Some(1.0))
            .then_some(())
    });
    every_metric_the_dashboard_queries_is_served(&scrape(port));

    daemon.signal(libc::SIGTERM);
    let status = wait_for("the daemon to exit", Duration::from_secs(60), || {
        listen(&mut said);
        daemon.child.try_wait().unwrap()
    });
    listen(&mut said);
    assert!(status.success(), "{status}");
    let stopping = said
        .iter()
        .position(|m| m.lines().any(|l| l == "STOPPING=1"))
        .unwrap_or_else(|| panic!("no STOPPING=1: {said:?}"));
    assert!(
        said[stopping..].iter().any(|m| m.contains("STATUS=")),
        "status lines while draining: {said:?}"
    );
    // The drain it reported finished the upload.
    assert_eq!(get_bytes(&r.src, "a.txt").await, b"ready");
}

/// The Grafana dashboard shipped in contrib/ queries only series the
/// daemon serves (`scraped`: its /metrics).
fn every_metric_the_dashboard_queries_is_served(scraped: &str) {
    let path = repo_root().join("contrib/grafana/regionfs.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let served: std::collections::BTreeSet<&str> = scraped
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("regionfs_"));
            for name in names {
                queried += 1;
                assert!(
                    served.contains(name),
                    "panel {:?} queries {name}, which the daemon does not serve; it serves {served:?}",
                    panel["title"]
                );
            }
        }
    }
    assert!(queried >= 15, "{queried} metrics queried");
}

/// Puts `/sbin/mount.fuse.regionfs` (a link to the binary under test) in
/// place for the test's life, unless one is installed already.
struct Helper(PathBuf);

impl Helper {
    fn install() -> Option<Helper> {
        let link = PathBuf::from("/sbin/mount.fuse.regionfs");
        if std::fs::symlink_metadata(&link).is_ok() {
            return None;
        }
        std::os::unix::fs::symlink(regionfs_bin(), &link).ok()?;
        Some(Helper(link))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_fstab_line_mounts_through_mount_8_with_its_options() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mount(8) of an fstab line needs root");
        return;
    }
    let Some(_helper) = Helper::install() else {
        eprintln!("skipped: /sbin/mount.fuse.regionfs is installed already (not replaced)");
        return;
    };
    quiet_aws_env();
    let r = Regions::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("regionfs.toml");
    std::fs::write(&config, r.config(&tmp.path().join("cache"), "")).unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let fstab = tmp.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# a line as an operator writes it\n{} {} fuse.regionfs _netdev,nofail,allow_other,x-systemd.automount,x-systemd.mount-timeout=30 0 0\n",
            config.display(),
            mnt.display()
        ),
    )
    .unwrap();
    let out = Command::new("mount")
        .arg("--fstab")
        .arg(&fstab)
        .arg(&mnt)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    // The helper's daemon: stopped by PID if the test fails before umount.
    let pid: Option<i32> = said
        .split("(pid ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok());
    struct Stop(Option<i32>, PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            detach(&self.1);
            if let Some(p) = self.0 {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }
    let _stop = Stop(pid, mnt.clone());
    assert!(
        out.status.success(),
        "mount --fstab: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(pid.is_some(), "{said}");
    assert_eq!(mount_type(&mnt).as_deref(), Some("fuse.regionfs"));
    // allow_other reached the kernel.
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(&*mnt.to_string_lossy()))
        .unwrap()
        .to_string();
    assert!(line.contains("allow_other"), "{line}");
    std::fs::write(mnt.join("from-fstab.txt"), b"fstab").unwrap();

    let out = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let pid = pid.unwrap();
    wait_for(
        "the daemon to drain and exit",
        Duration::from_secs(60),
        || (unsafe { libc::kill(pid, 0) } != 0).then_some(()),
    );
    assert_eq!(get_bytes(&r.src, "from-fstab.txt").await, b"fstab");
}

#[test]
fn an_unknown_mount_option_is_refused_by_name_before_anything_mounts() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("regionfs.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nname = \"a\"\nregion = \"us-east-1\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9\"\n[cache]\ndir = \"{}\"\n",
            tmp.path().join("cache").display()
        ),
    )
    .unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = Command::new(regionfs_bin())
        .args(["mount", "-o", "nofail,max_read=4096", "--config"])
        .arg(&config)
        .arg(&mnt)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`max_read=4096`"), "{err}");
    assert_eq!(mount_type(&mnt), None);
}

#[test]
fn install_puts_the_binary_helper_unit_completions_and_man_page_in_place() {
    let stage = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/install.sh"))
        .args(["--prefix", "/usr/local", "--bin", regionfs_bin()])
        .env("DESTDIR", stage.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let at = |p: &str| stage.path().join(p.trim_start_matches('/'));
    assert!(at("/usr/local/bin/regionfs").is_file());
    assert_eq!(
        std::fs::read_link(at("/sbin/mount.fuse.regionfs")).unwrap(),
        Path::new("/usr/local/bin/regionfs")
    );
    let unit = std::fs::read_to_string(at("/etc/systemd/system/regionfs@.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/regionfs mount --config /etc/regionfs/%i.toml %f")
    );
    assert!(unit.contains("Type=notify"));
    let bash = std::fs::read_to_string(at("/usr/local/share/bash-completion/completions/regionfs"))
        .unwrap();
    for sub in [
        "mount",
        "status",
        "versions",
        "restore",
        "verify",
        "replicate",
    ] {
        assert!(bash.contains(sub), "bash completion of {sub}");
    }
    assert!(
        std::fs::read_to_string(at("/usr/local/share/zsh/site-functions/_regionfs"))
            .unwrap()
            .starts_with("#compdef regionfs")
    );
    assert!(std::fs::read_to_string(at(
        "/usr/local/share/fish/vendor_completions.d/regionfs.fish"
    ))
    .unwrap()
    .contains("complete -c regionfs"));
    let man = std::fs::read_to_string(at("/usr/local/share/man/man1/regionfs.1")).unwrap();
    assert!(
        man.contains(".TH regionfs 1"),
        "{}",
        &man[..man.len().min(200)]
    );
    assert!(man.contains("status"));

    // The unit as systemd reads it, where systemd-analyze is installed
    // (ExecStart pointed at the staged binary: verify checks it exists).
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: unit not verified");
        return;
    }
    let units = tempfile::tempdir().unwrap();
    let instance = units.path().join("regionfs@srv-backup.service");
    std::fs::write(
        &instance,
        unit.replace(
            "/usr/local/bin/regionfs",
            &at("/usr/local/bin/regionfs").to_string_lossy(),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&instance)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
