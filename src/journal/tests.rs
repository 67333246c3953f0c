use super::*;

fn put(key: &str, file: &str) -> NewOp {
    NewOp {
        key: key.into(),
        kind: OpKind::Put,
        file: Some(file.into()),
        size: 10,
        meta: "{}".into(),
        src_key: None,
        src_version: None,
        inline: None,
        base: None,
    }
}

fn eu_task() -> NewTask {
    NewTask {
        checksum: None,
        destination: "eu".into(),
        rule_id: "r".into(),
        kind: TaskKind::Version,
        storage_class: None,
    }
}

#[tokio::test]
async fn staged_ops_survive_reopen_in_order_until_completed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    {
        let j = Journal::open(&path).unwrap();
        let a = j.stage(put("a", "f1")).await.unwrap();
        let b = j.stage(put("b", "f2")).await.unwrap();
        j.stage(put("a", "f3")).await.unwrap();
        j.complete(a, Some("v1".into())).await.unwrap();
        j.record_failure(b, "AccessDenied".into(), true)
            .await
            .unwrap();
    }
    let j = Journal::open(&path).unwrap();
    let open = j.open_ops().await.unwrap();
    let files: Vec<_> = open.iter().map(|o| o.file.clone().unwrap()).collect();
    assert_eq!(files, vec!["f2", "f3"]);
    assert_eq!(open[0].state, OpState::Failed);
    assert_eq!(open[0].error.as_deref(), Some("AccessDenied"));
    assert_eq!(
        j.latest_done("a".into())
            .await
            .unwrap()
            .unwrap()
            .version_id
            .as_deref(),
        Some("v1")
    );
    let s = j.upload_summary().await.unwrap();
    assert_eq!((s.pending, s.pending_bytes, s.failed), (2, 20, 1));
}

#[tokio::test]
async fn compacting_at_a_clean_stop_gives_back_the_space_of_completed_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let wal = dir.path().join("j.db-wal");
    let j = Journal::open(&path).unwrap();
    // Each key rewritten 20 times: its older rows are pruned as it goes.
    for round in 0..20 {
        let seqs: Vec<i64> = futures_util::future::join_all(
            (0..300).map(|k| j.stage(put(&format!("dir/key-{k:04}"), &format!("f{round}")))),
        )
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
        for s in seqs {
            j.complete(s, Some(format!("v{round}"))).await.unwrap();
        }
    }
    let before = size(&path) + size(&wal);
    j.compact().await.unwrap();
    let after = size(&path) + size(&wal);
    assert_eq!(size(&wal), 0, "the log is checkpointed and truncated");
    assert!(after < before / 2, "{before} bytes, then {after}");
    // And it goes on working, one landed row per key kept (no replication
    // here: each op lands as it completes).
    let s = j.stage(put("dir/key-0000", "f-last")).await.unwrap();
    j.complete(s, Some("v-last".into())).await.unwrap();
    assert_eq!((rows(&j, "ops").await, rows(&j, "landed").await), (0, 300));
}

#[tokio::test]
async fn completing_prunes_older_done_rows_of_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("j.db")).unwrap();
    for i in 0..5 {
        let s = j.stage(put("k", &format!("f{i}"))).await.unwrap();
        j.complete(s, Some(format!("v{i}"))).await.unwrap();
    }
    assert_eq!((rows(&j, "ops").await, rows(&j, "landed").await), (0, 1));
    assert_eq!(
        j.latest("k".into())
            .await
            .unwrap()
            .unwrap()
            .version_id
            .as_deref(),
        Some("v4")
    );
}

#[tokio::test]
async fn concurrent_stages_are_group_committed_and_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let j = Journal::open(&path).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            j.stage(put(&format!("k{i}"), "f")).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    drop(j);
    let j = Journal::open(&path).unwrap();
    assert_eq!(j.open_ops().await.unwrap().len(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_backlog_counts_a_version_as_an_upload_or_a_replication_never_neither() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("j.db")).unwrap();
    let task = eu_task();
    for i in 0..100u64 {
        let seq = j.stage(put(&format!("k{i}"), "f")).await.unwrap();
        let (j2, t) = (j.clone(), task.clone());
        let done = tokio::spawn(async move {
            j2.complete_with_tasks(seq, Some(format!("v{i}")), vec![t], Durability::Lazy)
                .await
        });
        loop {
            let (u, r) = j.backlog(0).await.unwrap();
            let replicating = r.get("eu").map(|d| d.pending).unwrap_or(0);
            assert_eq!(u.pending + replicating, i + 1, "round {i}");
            if u.pending == 0 {
                break;
            }
        }
        done.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_commit_that_cannot_begin_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let j = Journal::open(&path).unwrap();
    let s = j.stage(put("a", "1")).await.unwrap();
    // Another process holds the write lock past the busy timeout.
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let tasks = vec![eu_task()];
    assert!(j
        .complete_with_tasks(s, Some("v1".into()), tasks.clone(), Durability::Synced)
        .await
        .is_err());
    assert!(j.stage(put("b", "2")).await.is_err());
    other.execute_batch("ROLLBACK").unwrap();
    assert!(
        j.open_tasks().await.unwrap().is_empty(),
        "no task from the failed commit"
    );
    let open: Vec<String> = j
        .open_ops()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        open,
        ["a"],
        "the failed stage left no op, the failed completion left `a` open"
    );
    // Retried once the lock is gone, the completion records exactly one task.
    j.complete_with_tasks(s, Some("v1".into()), tasks, Durability::Synced)
        .await
        .unwrap();
    assert_eq!(j.open_tasks().await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_injected_commit_failure_acknowledges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let j = Journal::open(&path).unwrap();
    j.fail_commits_after(2);
    assert!(j.stage(put("a", "1")).await.is_ok());
    assert!(j.stage(put("b", "2")).await.is_ok());
    let e = j.stage(put("c", "3")).await.unwrap_err();
    assert!(matches!(e, JournalError::Injected(_)), "{e}");
    drop(j);
    let keys: Vec<_> = Journal::open(&path)
        .unwrap()
        .open_ops()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, vec!["a", "b"], "the failed stage left no row");
}

#[tokio::test]
async fn writes_commit_synced_and_redoable_progress_lazily() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("j.db")).unwrap();
    // The level each job's transaction commits with (1 NORMAL, 2 FULL).
    let level = |d| {
        j.send(d, |c| {
            query_cached(c, "PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
        })
    };
    assert_eq!(level(Durability::Synced).await.unwrap(), 2);
    assert_eq!(level(Durability::Lazy).await.unwrap(), 1);
    assert_eq!(level(Durability::Lazy).await.unwrap(), 1);
    // A write after lazy progress is synced again.
    assert_eq!(level(Durability::Synced).await.unwrap(), 2);
    let s = j.stage(put("a", "1")).await.unwrap();
    j.complete_with_tasks(s, Some("v1".into()), vec![eu_task()], Durability::Lazy)
        .await
        .unwrap();
    assert_eq!(level(Durability::Synced).await.unwrap(), 2);
    // What a lazy commit wrote is there for the next reader.
    assert_eq!(j.open_tasks().await.unwrap().len(), 1);
}

/// Rows in journal table `t`.
async fn rows(j: &Journal, t: &'static str) -> i64 {
    j.run(move |c| query_cached(c, &format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0)))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_journal_and_its_wal_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let mode = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        std::fs::metadata(std::path::PathBuf::from(p))
            .map(|m| m.permissions().mode() & 0o777)
            .ok()
    };
    {
        let j = Journal::open(&path).unwrap();
        j.stage(put("a", "f1")).await.unwrap();
        assert_eq!(mode(""), Some(0o600));
        assert_eq!(mode("-wal"), Some(0o600));
        assert_eq!(mode("-shm"), Some(0o600));
    }
    // A journal left readable by others (an older version, a copy) is
    // tightened when opened.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _j = Journal::open(&path).unwrap();
    assert_eq!(mode(""), Some(0o600));
}
