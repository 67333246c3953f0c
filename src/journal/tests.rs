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

#[tokio::test]
async fn cached_statements_are_not_planned_again_for_each_new_binding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let j = Journal::open(&path).unwrap();
    for i in 0..4 {
        j.stage(put(&format!("d/{i}"), &format!("f{i}")))
            .await
            .unwrap();
    }
    // The shape of the spill's lookups: `=` on a parameter, ordered.
    let sql = "SELECT seq FROM ops WHERE key = ?1 AND seq > ?2 AND state != 'done' ORDER BY seq";
    let reprepared = |conn: &Connection| {
        for i in 0..4i64 {
            let mut st = conn.prepare_cached(sql).unwrap();
            let n = st
                .query_map(params![format!("d/{i}"), 0], |r| r.get::<_, i64>(0))
                .unwrap()
                .count();
            assert_eq!(n, 1);
        }
        let st = conn.prepare_cached(sql).unwrap();
        st.get_status(rusqlite::StatementStatus::RePrepare)
    };
    let bare = Connection::open(&path).unwrap();
    assert!(
        reprepared(&bare) > 0,
        "without the setting SQLite plans such a statement again on each use \
         (if this no longer holds, `configure` may no longer be needed)"
    );
    let (conn, _) = read_only_connection(&path).unwrap();
    assert_eq!(reprepared(&conn), 0);
}

#[tokio::test]
async fn inline_bytes_live_beside_their_row_and_go_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let j = Journal::open(&path).unwrap();
    let small = |key: &str, file: &str, bytes: &[u8]| NewOp {
        inline: Some(bytes.to_vec()),
        size: bytes.len() as u64,
        ..put(key, file)
    };
    let a = j.stage(small("d/a", "fa", &[7u8; 5000])).await.unwrap();
    let b = j.stage(small("d/b", "fb", b"")).await.unwrap();
    let c = j.stage(small("d/c", "fc", b"c")).await.unwrap();
    // A row of a journal from before `op_bodies`: its bytes in the row.
    j.run(move |conn| {
        conn.execute("DELETE FROM op_bodies WHERE seq = ?1", params![c])?;
        conn.execute(
            "UPDATE ops SET inline = X'6f6c64' WHERE seq = ?1",
            params![c],
        )
    })
    .await
    .unwrap();
    async fn bodies(j: &Journal) -> Result<i64, JournalError> {
        j.run(|conn| conn.query_row("SELECT COUNT(*) FROM op_bodies", [], |r| r.get(0)))
            .await
    }
    assert_eq!(bodies(&j).await.unwrap(), 2);
    let op_row_bytes: i64 = j
        .run(|conn| conn.query_row("SELECT SUM(LENGTH(inline)) FROM ops", [], |r| r.get(0)))
        .await
        .unwrap();
    assert_eq!(op_row_bytes, 3, "only the old row holds bytes itself");
    drop(j);

    let j = Journal::open(&path).unwrap();
    let restored = Arc::new(std::sync::Mutex::new(Vec::new()));
    let r = restored.clone();
    let n = j
        .restore_inline(move |file, bytes| {
            r.lock().unwrap().push((file.to_string(), bytes.to_vec()));
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(
        *restored.lock().unwrap(),
        vec![
            ("fa".to_string(), vec![7u8; 5000]),
            ("fb".to_string(), vec![]),
            ("fc".to_string(), b"old".to_vec()),
        ]
    );
    let ops = j.open_ops_after(0, 10).await.unwrap();
    assert!(ops.iter().all(|o| o.inline), "each still says it is inline");

    j.complete(a, Some("v1".into())).await.unwrap();
    j.forget_inline(vec![b]).await.unwrap();
    assert_eq!(
        bodies(&j).await.unwrap(),
        0,
        "completed and forgotten bytes are gone"
    );
    let after = j.open_ops_after(0, 10).await.unwrap();
    assert_eq!(
        after.iter().map(|o| (o.seq, o.inline)).collect::<Vec<_>>(),
        vec![(b, false), (c, true)]
    );
}
