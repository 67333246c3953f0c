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
    assert!(
        out.status.success(),
        "{}",
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
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["uploads"]["failed"], 1, "{v}");
    assert_eq!(v["uploads"]["pending"], 0, "{v}");
}
