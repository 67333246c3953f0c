//! `regionfs status --failed`: what failed and why, read from the journal.

mod common;

use regionfs::journal::{Journal, NewOp, OpKind};

#[tokio::test]
async fn status_failed_lists_each_lost_upload_with_its_cause_in_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let journal = Journal::open(&cache.join("journal.db")).unwrap();
    let copy = |key: &str| NewOp {
        key: key.into(),
        kind: OpKind::Copy,
        file: None,
        size: 3,
        meta: "{}".into(),
        src_key: Some("gone".into()),
        src_version: Some("v1".into()),
        inline: None,
        base: None,
    };
    let lost = journal.stage(copy("team/lost.txt")).await.unwrap();
    let fine = journal.stage(copy("team/fine.txt")).await.unwrap();
    journal
        .drop_ops(
            vec![lost],
            "not run: no such key `gone`; nothing queued since sets the name".into(),
            false,
        )
        .await
        .unwrap();
    journal.complete(fine, Some("v2".into())).await.unwrap();
    drop(journal);
    let config = dir.path().join("regionfs.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nname = \"src\"\nregion = \"us-east-1\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9\"\n[cache]\ndir = \"{}\"\n",
            cache.display()
        ),
    )
    .unwrap();

    let out = common::regionfs_cli(&["status", "--failed"], &config);
    assert_eq!(
        out.status.code(),
        Some(2),
        "something failed: exit 2; {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("failed uploads: 1"), "{text}");
    assert!(
        text.contains("team/lost.txt (Copy, lost (never run)): not run: no such key `gone`"),
        "{text}"
    );
    assert!(!text.contains("fine.txt"), "{text}");

    let out = common::regionfs_cli(&["status", "--failed", "--json"], &config);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let uploads = v["uploads"].as_array().unwrap();
    assert_eq!(uploads.len(), 1, "{v}");
    assert_eq!(uploads[0]["key"], "team/lost.txt");
    assert_eq!(uploads[0]["state"], "lost");
    assert_eq!(uploads[0]["operation"], "copy");
    assert!(uploads[0]["error"]
        .as_str()
        .unwrap()
        .contains("no such key"));
    assert_eq!(v["replication"].as_array().map(Vec::len), Some(0));

    // The summary counts it as failed, not pending.
    let out = common::regionfs_cli(&["status", "--json"], &config);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["uploads"]["failed"], 1, "{v}");
    assert_eq!(v["uploads"]["pending"], 0, "{v}");
    let out = common::regionfs_cli(&["status", "team/lost.txt"], &config);
    assert_eq!(out.status.code(), Some(2));
    let out = common::regionfs_cli(&["status", "team/fine.txt"], &config);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[tokio::test]
async fn status_exits_0_when_nothing_failed_and_quietly_into_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let journal = Journal::open(&cache.join("journal.db")).unwrap();
    for i in 0..3 {
        let seq = journal
            .stage(NewOp::delete(format!("ok{i}.txt")))
            .await
            .unwrap();
        journal.complete(seq, Some(format!("v{i}"))).await.unwrap();
    }
    drop(journal);
    let config = config_with_a_destination(dir.path(), &cache);
    let out = common::regionfs_cli(&["status"], &config);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().count() >= 2, "{text}");

    // `regionfs status | head -0`: the reader is gone before the first
    // line, so the first write meets a closed pipe.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(common::regionfs_bin())
        .args(["status", "--config"])
        .arg(&config)
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "ended by SIGPIPE, as Unix tools are: {:?}",
        out.status
    );
}

#[tokio::test]
async fn status_watch_redraws_on_a_terminal_with_rates() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    drop(Journal::open(&cache.join("journal.db")).unwrap());
    let config = config_with_a_destination(dir.path(), &cache);
    // A pseudo-terminal: script(1) runs the command on one.
    let cmd = format!(
        "{} status --watch --interval 200ms --config {}",
        common::regionfs_bin(),
        config.display()
    );
    let child = std::process::Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = common::ProcessGuard::new(child, "script");
    let mut stdout = guard.child.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text = common::wait_for("three views", std::time::Duration::from_secs(30), || {
        let t = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
        (t.matches("\x1b[H\x1b[2J").count() >= 3).then_some(t)
    });
    guard.kill();
    let last = text.rsplit("\x1b[H\x1b[2J").next().unwrap();
    assert!(
        last.contains("uploads") && last.contains("queued"),
        "{last}"
    );
    assert!(last.contains("to eu"), "{last}");
    assert!(
        last.contains("copied 0.0/s"),
        "rates from the second view on: {last}"
    );
    assert!(last.contains("health         ok"), "{last}");
}

/// A config at `dir` for a cache dir `cache` (its stores are never reached:
/// status reads the journal), with one destination.
fn config_with_a_destination(dir: &std::path::Path, cache: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("regionfs.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nname = \"src\"\nregion = \"us-east-1\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9\"\n[[destination]]\nname = \"eu\"\nregion = \"eu-west-1\"\nbucket = \"e\"\nendpoint = \"http://127.0.0.1:9\"\n[[rule]]\nid = \"all\"\ndestination = \"eu\"\n[cache]\ndir = \"{}\"\n",
            cache.display()
        ),
    )
    .unwrap();
    config
}
