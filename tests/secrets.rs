//! Secrets and permissions: what a mount writes to its log and its cache
//! directory, and what it says of a config file others can read.

mod common;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::{quiet_aws_env, wait_for_async, Mount, Regions, SECRET_KEY};

/// Every file and directory under `dir` whose mode lets group or others in.
fn open_to_others(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode();
        if mode & 0o077 != 0 {
            found.push(format!("{} {:o}", d.display(), mode & 0o777));
        }
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
                found.push(format!(
                    "{} {:o}",
                    path.display(),
                    meta.permissions().mode() & 0o777
                ));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_debug_log_holds_no_secret_and_the_cache_is_its_owners_alone() {
    quiet_aws_env();
    let r = Regions::start().await;
    let tmp = tempfile::tempdir().unwrap();
    // A cache directory made beforehand, open to everyone to read.
    let cache = tmp.path().join("cache");
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&cache)
        .unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The config (static keys in it) is written 0644 by the harness.
    let mut m = Mount::start_with_env(&r.config(&cache, ""), &[], &[("REGIONFS_LOG", "debug")]);
    let body = vec![7u8; 300_000];
    std::fs::write(m.path("big.bin"), &body).unwrap();
    std::fs::create_dir(m.path("dir")).unwrap();
    std::fs::write(m.path("dir/small.txt"), b"small").unwrap();
    m.wait_uploaded(Duration::from_secs(60));
    let (dst, len) = (&r.dst, body.len());
    wait_for_async("both replicas", Duration::from_secs(60), || async move {
        let have = common::bucket_contents(dst, "").await;
        (have.get("big.bin").map(Vec::len) == Some(len)
            && have.get("dir/small.txt").map(Vec::as_slice) == Some(b"small".as_slice()))
        .then_some(())
    })
    .await;
    assert_eq!(std::fs::read(m.path("dir/small.txt")).unwrap(), b"small");
    let open = open_to_others(&cache);
    let log = m.log_text();
    assert!(m.unmount().success(), "{log}");
    let log = m.log_text();

    assert!(
        log.lines().count() > 50,
        "the log is at debug level: {} lines",
        log.lines().count()
    );
    assert!(!log.contains(SECRET_KEY), "the secret key is in the log");
    assert!(
        log.contains("holds a secret_access_key and others may read it (mode 0644): chmod 600"),
        "the readable config is pointed out: {log}"
    );
    assert!(
        open.is_empty(),
        "cache entries others may read while mounted: {open:?}"
    );
    assert!(
        open_to_others(&cache).is_empty(),
        "after the unmount: {:?}",
        open_to_others(&cache)
    );
    std::fs::set_permissions(&m.config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = common::regionfs_cli(&["status"], &m.config);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("others may read"),
        "a 0600 config is not warned about"
    );
}
