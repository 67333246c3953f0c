//! Running uploads: the scheduling loop (what [`super::schedule::decide`]
//! starts, up to `upload.concurrency` at once), one attempt per operation
//! (PUT, multipart, copy or delete, guarded against replacing another
//! writer's version: see [`super::guard`]), and what its outcome records:
//! the version and its replication tasks in one journal commit, a retry with
//! jittered backoff for a transient error, a failed state (retried every
//! minute) for a permanent one.

use super::parts::{complete_early, multipart};
use super::*;
use crate::store::checksum::Crc64;

/// The scheduler: starts heads (see "Scheduling") whose write-back delay,
/// deferral and retry backoff have passed, oldest first, up to `concurrency`
/// at once.
pub(super) async fn run(inner: Arc<Inner>) {
    let slots = Arc::new(Semaphore::new(inner.cfg.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    loop {
        let mut next_wake = Duration::from_secs(1);
        let ready: Vec<Op> = {
            let mut guard = inner.queue.lock().unwrap();
            let q = &mut *guard;
            let now = Instant::now();
            if let Some((after, limit)) = q.refill_due(now) {
                q.refilling = true;
                crate::background::spawn(refill(inner.clone(), after, limit));
            }
            let now_ms = now_ms();
            while let Some(entry) = q.backoff.first_entry() {
                let (at, seq) = *entry.key();
                if at > now {
                    next_wake = next_wake.min(at - now);
                    break;
                }
                let key = entry.remove();
                if q.is_idle_front(&key, seq) {
                    q.heads.insert(seq, key);
                }
            }
            let timing = schedule::Timing {
                delay_ms: inner.delay.as_millis() as i64,
                defer_ms: inner.cfg.defer_while_writing.0.as_millis() as i64,
                quiet_left_ms: q.last_submit.map_or(0, |last| {
                    q.quiet.saturating_sub(now.duration_since(last)).as_millis() as i64
                }),
                urgent_upto: q.urgent_upto,
                draining: q.draining,
            };
            // Heads whose op is no longer its key's idle front are dropped
            // as the pass meets them.
            let mut stale: Vec<i64> = Vec::new();
            let examined = std::cell::Cell::new(0u64);
            let decision = {
                let q = &*q;
                let heads = q.heads.iter().filter_map(|(&seq, key)| {
                    examined.set(examined.get() + 1);
                    if !q.is_idle_front(key, seq) {
                        stale.push(seq);
                        return None;
                    }
                    let op = q.by_key[key].front().expect("an idle front");
                    Some(schedule::Head {
                        seq,
                        staged_at_ms: op.staged_at_ms,
                    })
                });
                schedule::decide(heads, slots.available_permits(), &timing, now_ms)
            };
            #[cfg(test)]
            {
                q.examined += examined.get();
            }
            #[cfg(not(test))]
            let _ = examined;
            if let Some(due) = decision.next_due_ms {
                next_wake = next_wake.min(Duration::from_millis((due - now_ms) as u64));
            }
            for seq in stale {
                q.heads.remove(&seq);
            }
            let ready: Vec<Op> = decision
                .start
                .iter()
                .map(|seq| {
                    let key = &q.heads[seq];
                    q.by_key[key].front().expect("an idle front").clone()
                })
                .collect();
            for op in &ready {
                if let Some(key) = q.heads.remove(&op.seq) {
                    q.running.insert(key);
                }
            }
            ready
        };
        for op in ready {
            let permit = slots.clone().acquire_owned().await.expect("semaphore open");
            let inner = inner.clone();
            tasks.spawn(async move {
                execute(&inner, op).await;
                drop(permit);
                inner.wake.notify_one();
            });
        }
        while tasks.try_join_next().is_some() {}
        let _ = tokio::time::timeout(next_wake, inner.wake.notified()).await;
    }
}

/// Reads the oldest `limit` spilled ops (after seq `after`) back into
/// memory (see "Spill").
async fn refill(inner: Arc<Inner>, after: i64, limit: usize) {
    let boundary = inner.spill_lock.lock().await;
    let read = inner.journal.open_ops_after(after, limit).await;
    let mut q = inner.queue.lock().unwrap();
    match read {
        Ok(ops) => q.refilled(ops, limit, Instant::now()),
        Err(e) => {
            tracing::error!(error = %e, "cannot read spilled uploads back from the journal; will retry");
            q.refilling = false;
            q.refill_after = Some(Instant::now() + Duration::from_secs(1));
        }
    }
    inner.publish_pending(&q);
    drop(q);
    drop(boundary);
    inner.wake.notify_one();
}

pub(super) fn backoff(attempts: u32, permanent: bool) -> Duration {
    if permanent {
        return Duration::from_secs(60);
    }
    jittered_backoff(attempts)
}

/// How a finished upload is recorded: lazily when a power loss that undoes the
/// record can be redone from the journal alone (the row holds the bytes, or
/// there is no cache file to lose once the record returns).
pub(super) fn redoable(op: &Op) -> Durability {
    if op.inline || op.file.is_none() {
        Durability::Lazy
    } else {
        Durability::Synced
    }
}

pub(super) async fn execute(inner: &Arc<Inner>, op: Op) {
    let changed = inner.queue.lock().unwrap().changed.contains(&op.seq);
    let op = if changed {
        match snapshot(inner, op.clone()).await {
            Ok(op) => op,
            Err(e) => return failed(inner, op, e).await,
        }
    } else {
        op
    };
    let (result, small) = match small_body(inner, &op) {
        Ok(small) => (perform_with_acl(inner, &op, small.as_ref()).await, small),
        Err(e) => (Err(e), None),
    };
    match result {
        Ok(res) => {
            // The version and its replication tasks are recorded together.
            // The version's CRC goes with its tasks: as the store answered it
            // (or of the bytes sent from memory, where it keeps none).
            let checksum = res.crc64nvme.clone();
            let mut plan = inner
                .replicator
                .as_ref()
                .map(|r| r.plan(&op))
                .unwrap_or_default();
            for t in &mut plan {
                if t.kind == crate::journal::TaskKind::Version {
                    t.checksum = checksum.clone();
                }
            }
            let recorded = inner
                .journal
                .complete_with_tasks(op.seq, res.version_id.clone(), plan, redoable(&op))
                .await;
            if let (Ok(tasks), Some(r)) = (&recorded, &inner.replicator) {
                let fresh = small.map(|body| crate::replicator::Fresh {
                    body: Some(body),
                    etag: res.etag.clone(),
                    opts: options(&op, &None),
                });
                r.enqueue_fresh(tasks.clone(), fresh);
            }
            if let Err(e) = recorded {
                // The version is in the bucket but not recorded: the op stays queued
                // and runs again (a duplicate version with the same bytes).
                tracing::error!(key = %op.key, error = %e, "cannot record an upload in the journal; will retry");
                let mut q = inner.queue.lock().unwrap();
                q.idle(&op.key, Some(Instant::now() + backoff(op.attempts, false)));
                return;
            }
            tell_owner(
                inner,
                Event::Uploaded(Completion {
                    op: op.clone(),
                    result: res.clone(),
                }),
            )
            .await;
            let (waiters, unused) = {
                let mut q = inner.queue.lock().unwrap();
                let unused = q.remove_front(&op.key, op.seq, op.file.as_deref());
                q.idle(&op.key, None);
                inner.publish_pending(&q);
                (q.waiters.remove(&op.seq).unwrap_or_default(), unused)
            };
            if let Some(f) = unused {
                inner.cache.remove_data(&f);
            }
            inner.cache.note_progress();
            for w in waiters {
                let _ = w.send(Ok(()));
            }
        }
        Err(e) => failed(inner, op, e).await,
    }
}

/// Hands `event` to the owner of local state and waits until it is applied
/// (see [`Landed`]); at once when there is no owner.
pub(super) async fn tell_owner(inner: &Inner, event: Event) {
    let (applied, landed) = oneshot::channel();
    let sent = inner.done_tx.send(Landed {
        event,
        _applied: applied,
    });
    if sent.is_ok() {
        // Resolves (with an error) when the receiver drops it.
        let _ = landed.await;
    }
}

/// Whether `e`, from running `op`, says its input is gone: the object a
/// copy names, or the staged file a put reads (see `replan`).
pub(super) fn input_gone(op: &Op, e: &StoreError) -> bool {
    match op.kind {
        OpKind::Copy => e.is_not_found(),
        OpKind::Put => matches!(
            e,
            StoreError::LocalIo { source, .. } if source.kind() == std::io::ErrorKind::NotFound
        ),
        OpKind::Delete => false,
    }
}

/// Drops an operation whose input is gone, never to retry it (see
/// `replan`). Its waiters, and those of the self-copies dropped with it,
/// wait for the operation that supersedes them; when none is queued, the
/// owner of local state is asked for one first, and without one they fail.
pub(super) async fn gone(inner: &Arc<Inner>, op: Op, why: String) {
    // The ops after it on its key: held, then spilled.
    let later = || -> Vec<Op> {
        let (mut ops, after): (Vec<Op>, _) = {
            let q = inner.queue.lock().unwrap();
            let held = q
                .by_key
                .get(op.key.as_str())
                .map(|l| l.iter().filter(|o| o.seq > op.seq).cloned().collect());
            (held.unwrap_or_default(), q.spilled_after())
        };
        if let Some(a) = after {
            match Uploader::spill_reader(inner).map(|r| r.of_key(&op.key, a)) {
                Some(Ok(spilled)) => ops.extend(spilled),
                Some(Err(e)) => {
                    tracing::warn!(key = %op.key, error = %e, "cannot read the spilled uploads")
                }
                None => {}
            }
        }
        ops
    };
    let plan = replan::replan(&op, &later());
    let (by, dropped) = match plan {
        replan::Replan::Superseded { by, dropped } => {
            tracing::info!(key = %op.key, seq = op.seq, superseded_by = by, error = %why, "a queued operation's input is gone; a later operation on the key supersedes it");
            (Some(by), dropped)
        }
        replan::Replan::Lost { dropped } => {
            tracing::warn!(key = %op.key, error = %why, "a queued operation's input is gone; queueing what the name holds now");
            tell_owner(
                inner,
                Event::Lost {
                    op: op.clone(),
                    error: why.clone(),
                },
            )
            .await;
            // What the owner queued meanwhile supersedes them.
            let last = *dropped.last().expect("the gone op");
            let by = later()
                .into_iter()
                .find(|o| o.seq > last && !replan::reads_current(o))
                .map(|o| o.seq);
            (by, dropped)
        }
    };
    let reason = match by {
        Some(b) => format!("not run: {why}; superseded by operation {b}"),
        None => format!("not run: {why}; nothing queued since sets the name"),
    };
    if by.is_none() {
        tracing::error!(key = %op.key, error = %why, "a queued operation's input is gone and the name's bytes are not here; listed by `regionfs status --failed`");
    }
    // A dropped op past the spill must not be read back meanwhile.
    let _boundary = inner.spill_lock.lock().await;
    if let Err(e) = inner
        .journal
        .drop_ops(dropped.clone(), reason.clone(), by.is_some())
        .await
    {
        // Stays queued: the next attempt decides again.
        tracing::error!(key = %op.key, error = %e, "cannot record a dropped operation in the journal; will retry");
        let mut q = inner.queue.lock().unwrap();
        q.idle(&op.key, Some(Instant::now() + backoff(op.attempts, false)));
        return;
    }
    let failed_waiters = {
        let mut q = inner.queue.lock().unwrap();
        q.remove_ops(&op.key, &dropped);
        let mut orphaned = Vec::new();
        for seq in &dropped {
            orphaned.extend(q.waiters.remove(seq).unwrap_or_default());
        }
        let failed = match by {
            Some(b) => {
                q.waiters.entry(b).or_default().extend(orphaned);
                q.urgent_upto = q.urgent_upto.max(b);
                Vec::new()
            }
            None => orphaned,
        };
        q.idle(&op.key, None);
        inner.publish_pending(&q);
        failed
    };
    inner.wake.notify_one();
    for w in failed_waiters {
        let _ = w.send(Err(reason.clone()));
    }
}

/// Records a failed attempt and schedules the retry (backoff by error class).
pub(super) async fn failed(inner: &Arc<Inner>, op: Op, e: StoreError) {
    if input_gone(&op, &e) {
        return gone(inner, op, e.to_string()).await;
    }
    let permanent = e.is_permanent();
    let msg = e.to_string();
    if permanent {
        tracing::error!(key = %op.key, error = %msg, "upload failed permanently; retrying every minute until the cause is fixed");
    } else {
        tracing::warn!(key = %op.key, error = %msg, "upload failed; retrying");
    }
    let _ = inner
        .journal
        .record_failure(op.seq, msg.clone(), permanent)
        .await;
    let waiters = {
        let mut q = inner.queue.lock().unwrap();
        let attempts = if let Some(o) = q
            .by_key
            .get_mut(op.key.as_str())
            .and_then(|l| l.front_mut())
        {
            o.attempts += 1;
            o.error = Some(msg.clone());
            o.state = if permanent {
                OpState::Failed
            } else {
                OpState::Pending
            };
            o.attempts
        } else {
            op.attempts + 1
        };
        if is_changed(&e) {
            q.changed.insert(op.seq);
        }
        q.idle(&op.key, Some(Instant::now() + backoff(attempts, permanent)));
        if permanent {
            q.waiters.remove(&op.seq).unwrap_or_default()
        } else {
            Vec::new()
        }
    };
    for w in waiters {
        let _ = w.send(Err(msg.clone()));
    }
}

pub(super) fn options(op: &Op, acl: &Option<String>) -> PutOptions {
    let mut o = ObjectMeta::from_json(&op.meta)
        .map(|m| m.to_put_options_for(&op.key))
        .unwrap_or_default();
    o.acl = acl.clone();
    o
}

/// Writes the operation with the source's ACL, if one is configured and the
/// bucket takes ACLs. Some stores accept `x-amz-acl` on a PUT and ignore it, so
/// the ACL is also set on the new version explicitly.
pub(super) async fn perform_with_acl(
    inner: &Arc<Inner>,
    op: &Op,
    small: Option<&Bytes>,
) -> Result<PutResult, StoreError> {
    let store = inner.store.as_ref();
    let configured = inner.acl.clone();
    let Some((canned, state)) = configured.filter(|_| op.kind != OpKind::Delete) else {
        return perform_guarded(inner, op, &None, small).await;
    };
    if !state.enabled(store).await {
        return perform_guarded(inner, op, &None, small).await;
    }
    let res = match perform_guarded(inner, op, &Some(canned.clone()), small).await {
        Err(StoreError::AclNotSupported { message, .. }) => {
            state.refused(store, &message);
            return perform_guarded(inner, op, &None, small).await;
        }
        other => other?,
    };
    if canned != "private" {
        let set = store
            .put_acl(&op.key, res.version_id.as_deref(), &AclBody::Canned(canned))
            .await;
        match set {
            Err(StoreError::AclNotSupported { message, .. }) => state.refused(store, &message),
            other => other?,
        }
    }
    Ok(res)
}

/// The bytes of a small put, read once when a replicator will want them: the
/// upload sends this very buffer and the replicas are written from it
/// (`replicator::Fresh`), so they need not read the source.
pub(super) fn small_body(inner: &Inner, op: &Op) -> Result<Option<Bytes>, StoreError> {
    let (OpKind::Put, Some(name), None, Some(_)) =
        (op.kind, &op.file, &op.multipart_id, &inner.replicator)
    else {
        return Ok(None);
    };
    if inner.acl.is_some() {
        // Its replicas copy the source version's ACL, read from the source.
        return Ok(None);
    }
    if op.size > crate::journal::INLINE_MAX || op.size >= inner.cfg.multipart_threshold.0 {
        return Ok(None);
    }
    let path = inner.cache.data_path(name);
    let local = |e: std::io::Error| local_io(inner.store.as_ref(), &path, e);
    let before = stamp::of_path(&path).map_err(local)?;
    let bytes = std::fs::read(&path).map_err(local)?;
    // The size in the row is what was staged. A file written since (see
    // "Files written after staging") is uploaded from the file, whose
    // upload checks it was not written meanwhile.
    let stable = stamp::of_path(&path).map_err(local)? == before;
    Ok((stable && bytes.len() as u64 == op.size).then(|| Bytes::from(bytes)))
}

/// Writes the operation over what its writer last saw, reporting any other
/// writer's version it replaces instead (see `guard`).
pub(super) async fn perform_guarded(
    inner: &Arc<Inner>,
    op: &Op,
    acl: &Option<String>,
    small: Option<&Bytes>,
) -> Result<PutResult, StoreError> {
    let mut cond = guard::first_condition(op.base.as_ref()).filter(|_| inner.conditions.on());
    if cond.is_none() && op.base.is_some() && !multipart_upload(inner, op) {
        guard::look(inner, op).await?;
    }
    for _ in 0..CONFLICT_ROUNDS {
        let Some(c) = cond.clone() else {
            return perform(inner, op, acl, small, None).await;
        };
        match perform(inner, op, acl, small, Some(c.clone())).await {
            Err(StoreError::PreconditionFailed { .. }) => {
                cond = guard::after_refusal(inner, op, &c).await?;
            }
            // S3 answers If-Match on a missing key with NoSuchKey.
            Err(StoreError::NotFound { .. }) if matches!(c, Condition::IfMatch(_)) => {
                cond = guard::after_refusal(inner, op, &c).await?;
            }
            Err(e) if ConditionSupport::refuses(&e) => {
                inner.conditions.refused(
                    inner.store.as_ref(),
                    &e,
                    "uploads look at the current object first instead",
                );
                guard::look(inner, op).await?;
                cond = None;
            }
            other => return other,
        }
    }
    // Other writers keep replacing the key: back off and try again.
    Err(StoreError::Throttled {
        bucket: inner.store.describe(),
        code: "ConcurrentWriters".into(),
    })
}

/// Conditional writes a put makes, and the looks between them, before it
/// backs off: other writers keep replacing the key.
pub(super) const CONFLICT_ROUNDS: usize = 4;

/// Whether the put's version is made by CompleteMultipartUpload (which
/// takes no condition on every store; `guard::look` runs before it).
pub(super) fn multipart_upload(inner: &Inner, op: &Op) -> bool {
    op.kind == OpKind::Put
        && op.file.is_some()
        && (op.size >= inner.cfg.multipart_threshold.0
            || inner.queue.lock().unwrap().early.contains_key(&op.seq))
}

pub(super) async fn perform(
    inner: &Arc<Inner>,
    op: &Op,
    acl: &Option<String>,
    small: Option<&Bytes>,
    cond: Option<Condition>,
) -> Result<PutResult, StoreError> {
    let store = &inner.store;
    // Only whole PUTs take the condition (see `guard`).
    let put_options = |op: &Op, acl: &Option<String>| PutOptions {
        condition: cond.clone(),
        ..options(op, acl)
    };
    match op.kind {
        OpKind::Delete => {
            let d = store.delete(&op.key).await?;
            Ok(PutResult {
                version_id: d.version_id,
                etag: String::new(),
                crc64nvme: None,
            })
        }
        OpKind::Copy => {
            let src = op.src_key.as_deref().unwrap_or(&op.key);
            store
                .copy(src, op.src_version.as_deref(), &op.key, &options(op, acl))
                .await
        }
        OpKind::Put => {
            let Some(name) = op.file.as_deref() else {
                // A directory marker (or an empty object with no cache file).
                return store
                    .put(
                        &op.key,
                        PutBody::Bytes(bytes::Bytes::new()),
                        &put_options(op, acl),
                    )
                    .await;
            };
            let path = inner.cache.data_path(name);
            // Taken before any byte is read: unchanged at the end, it proves
            // the bytes sent are one state of the file (see `cache::stamp`).
            let before = stamp::of_path(&path).map_err(|e| local_io(store.as_ref(), &path, e))?;
            let size = before.size;
            let early = inner.queue.lock().unwrap().early.remove(&op.seq);
            if let Some(old) = &op.multipart_id {
                store.abort_multipart(&op.key, old).await?;
                let _ = inner.journal.set_multipart(op.seq, None).await;
            }
            if let (Some(e), None) = (early, acl) {
                if let Some(f) = e.finish(op, size, &options(op, acl)).await {
                    return complete_early(inner, op, path, before, f).await;
                }
            }
            if let Some(b) = small.filter(|b| b.len() as u64 == size) {
                // The CRC of the bytes sent, where the store keeps none.
                return store
                    .put(&op.key, PutBody::Bytes(b.clone()), &put_options(op, acl))
                    .await
                    .map(|mut r| {
                        r.crc64nvme.get_or_insert_with(|| Crc64::of(b).to_base64());
                        r
                    });
            }
            if size < inner.cfg.multipart_threshold.0 {
                let check_path = path.clone();
                let unchanged = Arc::new(move || stamp::of_path(&check_path).ok() == Some(before));
                let res = store
                    .put(
                        &op.key,
                        PutBody::StableFile {
                            path: path.clone(),
                            len: size,
                            unchanged,
                        },
                        &put_options(op, acl),
                    )
                    .await;
                return match res {
                    Err(_) if stamp::of_path(&path).ok() != Some(before) => {
                        Err(changed_error(store.as_ref(), &path))
                    }
                    other => other,
                };
            }
            multipart(inner, op, path, before, acl).await
        }
    }
}

/// Points `op` at a private copy of its file, made while nothing wrote the
/// file (tried three times), synced, and recorded in the journal before the
/// op uses it. The copy goes once uploaded (`remove_front`).
pub(super) async fn snapshot(inner: &Arc<Inner>, op: Op) -> Result<Op, StoreError> {
    let Some(from) = op.file.clone() else {
        return Ok(op);
    };
    let store = inner.store.as_ref();
    let path = inner.cache.data_path(&from);
    for _ in 0..3 {
        let before = stamp::of_path(&path).map_err(|e| local_io(store, &path, e))?;
        let copy = inner
            .cache
            .copy_data_file(&from)
            .map_err(|e| local_io(store, &path, std::io::Error::other(e.to_string())))?;
        let copied = inner.cache.data_path(&copy);
        if stamp::of_path(&path).map_err(|e| local_io(store, &path, e))? != before {
            inner.cache.remove_data(&copy);
            continue;
        }
        let synced = std::fs::File::open(&copied)
            .map_err(|e| local_io(store, &copied, e))
            .and_then(|f| {
                inner
                    .cache
                    .sync_data(&copy, &f)
                    .map_err(|e| local_io(store, &copied, std::io::Error::other(e.to_string())))
            });
        if let Err(e) = synced {
            inner.cache.remove_data(&copy);
            return Err(e);
        }
        let up = Uploader {
            inner: inner.clone(),
        };
        if let Err(e) = up.repoint(&[op.seq], &from, &copy).await {
            inner.cache.remove_data(&copy);
            return Err(local_io(
                store,
                &copied,
                std::io::Error::other(e.to_string()),
            ));
        }
        tracing::info!(key = %op.key, "uploading a copy of a file still being written");
        inner.queue.lock().unwrap().changed.remove(&op.seq);
        return Ok(Op {
            file: Some(copy),
            size: before.size,
            ..op
        });
    }
    Err(changed_error(store, &path))
}

/// The error of an attempt that found its file written while reading it.
pub(super) fn changed_error(store: &dyn ObjectStore, path: &std::path::Path) -> StoreError {
    StoreError::LocalIo {
        bucket: store.describe(),
        source: std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            format!("{}: written while it was uploaded", path.display()),
        ),
    }
}

pub(super) fn is_changed(e: &StoreError) -> bool {
    matches!(e, StoreError::LocalIo { source, .. } if source.kind() == std::io::ErrorKind::Interrupted)
}

pub(super) fn local_io(
    store: &dyn ObjectStore,
    path: &std::path::Path,
    e: std::io::Error,
) -> StoreError {
    StoreError::LocalIo {
        bucket: store.describe(),
        source: std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
    }
}

/// Fails (transiently: the retry uploads the file as it then is) when the
/// file at `path` was written since `before` was taken.
pub(super) fn unchanged(
    store: &dyn ObjectStore,
    path: &std::path::Path,
    before: Stamp,
) -> Result<(), StoreError> {
    let now = stamp::of_path(path).map_err(|e| local_io(store, path, e))?;
    if now == before {
        return Ok(());
    }
    tracing::info!(file = %path.display(), "a cache file was written while it was uploaded; uploading a copy");
    Err(changed_error(store, path))
}
