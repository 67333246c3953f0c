//! Running replication: the scheduling loop (what `ordering::runnable`
//! starts, per destination up to `replication.workers`), refilling the held
//! window from the journal, one attempt per task (see `copy`), and what its
//! outcome records (completed with its replica, a retry with backoff, or
//! FAILED and retried every [`FAILED_RETRY`]). It gives way to the source's
//! own uploads while they are busy.

use super::*;

/// How long tasks recovered from the journal wait for orphaned copies of the
/// previous process to land.
pub(super) const RECOVERY_GRACE: Duration = Duration::from_secs(2);

/// A permanent failure is retried after this long (the periodic probe).
pub(super) const FAILED_RETRY: Duration = Duration::from_secs(30);

pub(super) async fn run(inner: Arc<Inner>) {
    let mut in_flight: HashMap<String, usize> = HashMap::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    loop {
        while let Ok(dest) = done_rx.try_recv() {
            if let Some(n) = in_flight.get_mut(&dest) {
                *n = n.saturating_sub(1);
            }
        }
        let mut next_wake = Duration::from_secs(1);
        start_refills(&inner);
        let pass = Instant::now();
        let start: Vec<Task> = {
            let mut q = inner.queue.lock().unwrap();
            let now = Instant::now();
            let free: HashMap<String, usize> = inner
                .destinations
                .keys()
                .map(|d| {
                    (
                        d.clone(),
                        inner
                            .workers
                            .saturating_sub(*in_flight.get(d).unwrap_or(&0)),
                    )
                })
                .collect();
            let queued: Vec<ordering::Queued> = q
                .open
                .values()
                .map(|t| {
                    let due = match q.retry_at.get(&t.id) {
                        Some(at) if *at > now => {
                            next_wake = next_wake.min(*at - now);
                            false
                        }
                        _ => true,
                    };
                    ordering::Queued {
                        id: t.id,
                        key: &t.key,
                        destination: &t.destination,
                        due,
                    }
                })
                .collect();
            let ids = ordering::runnable(&queued, &q.running, &free);
            let tasks: Vec<Task> = ids
                .iter()
                .filter_map(|id| q.open.get(id))
                .cloned()
                .collect();
            for t in &tasks {
                q.running.insert((t.key.clone(), t.destination.clone()));
            }
            tasks
        };
        let took = pass.elapsed();
        for task in start {
            *in_flight.entry(task.destination.clone()).or_default() += 1;
            let inner = inner.clone();
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                let dest = task.destination.clone();
                execute(&inner, task).await;
                let _ = done_tx.send(dest);
                inner.wake.notify_one();
            });
        }
        if let Some(pause) = pause_after_pass(took) {
            tokio::time::sleep(pause).await;
        }
        let _ = tokio::time::timeout(next_wake, inner.wake.notified()).await;
    }
}

/// Starts a refill for each destination whose backlog is partly in the
/// journal and whose tasks in memory have fallen to half their share.
pub(super) fn start_refills(inner: &Arc<Inner>) {
    let Some(at_most) = inner.held_at_most else {
        return;
    };
    let now = Instant::now();
    let due: Vec<String> = {
        let mut q = inner.queue.lock().unwrap();
        let due: Vec<String> = q
            .spilled
            .iter()
            .filter(|(d, s)| {
                !q.refilling.contains(*d)
                    && q.held(d) <= at_most / 2
                    && s.refill_after.is_none_or(|at| at <= now)
            })
            .map(|(d, _)| d.clone())
            .collect();
        for d in &due {
            q.refilling.insert(d.clone());
            let s = q.spilled.get_mut(d).expect("listed above");
            s.arrived = 0;
            s.arrived_earliest_ms = i64::MAX;
        }
        due
    };
    for d in due {
        tokio::spawn(refill(inner.clone(), d, at_most));
    }
}

/// Reads the oldest open tasks of `dest` from the journal into memory, up to
/// its share; ends the spill when the journal holds no more than memory.
///
/// The window is the destination's oldest open tasks by id, and ids follow
/// the order versions were recorded in, so a key's older version is always
/// read before (or with) a newer one: [`ordering::runnable`] still sees the
/// oldest open task of every key it runs. A task finished while the read was
/// under way may still be in the window; `done_while_refilling` keeps it out.
pub(super) async fn refill(inner: Arc<Inner>, dest: String, at_most: usize) {
    // The window reaches past the held FAILED tasks (they are among the oldest).
    let failed = inner.queue.lock().unwrap().failed(&dest);
    let read = inner
        .journal
        .open_tasks_window(dest.clone(), at_most + failed)
        .await;
    let mut q = inner.queue.lock().unwrap();
    q.refilling.remove(&dest);
    match read {
        Err(e) => {
            tracing::warn!(destination = %dest, error = %e, "cannot read queued replications from the journal; will retry");
            if let Some(s) = q.spilled.get_mut(&dest) {
                s.refill_after = Some(Instant::now() + Duration::from_secs(1));
            }
        }
        Ok(w) => {
            let now = Instant::now();
            let whole = w.tasks.len() as u64 >= w.open;
            let mut all_held = true;
            for t in w.tasks {
                if q.open.contains_key(&t.id) || q.done_while_refilling.contains(&t.id) {
                    continue;
                }
                if q.held(&dest) >= at_most {
                    all_held = false;
                    break;
                }
                if inner.grace_until > now {
                    q.retry_at.insert(t.id, inner.grace_until);
                }
                q.insert(t);
            }
            let held = q.held.get(&dest).copied().unwrap_or(0);
            if let Some(s) = q.spilled.get_mut(&dest) {
                if whole && all_held && s.arrived == 0 {
                    q.spilled.remove(&dest);
                } else {
                    s.count = (w.open as usize).saturating_sub(held) + s.arrived as usize;
                    s.earliest_ms = w.earliest_ms.unwrap_or(i64::MAX).min(s.arrived_earliest_ms);
                    s.refill_after = None;
                }
            }
        }
    }
    if q.refilling.is_empty() {
        q.done_while_refilling.clear();
    }
    inner.pending.send_replace(q.pending());
    drop(q);
    inner.wake.notify_one();
}

/// How long to wait before the next scheduling pass after one that took
/// `took`. Each pass looks at the whole backlog: with a long one (a
/// destination down under load) passes take at most a tenth of a core,
/// instead of one per arriving version; short passes are not held back.
pub(super) fn pause_after_pass(took: Duration) -> Option<Duration> {
    (took > Duration::from_millis(1)).then(|| took * 9)
}

pub(super) async fn execute(inner: &Arc<Inner>, task: Task) {
    if task.size < inner.upload.multipart_threshold.0 {
        give_way(inner, Yield::BackedUp).await;
    }
    // Taken whatever happens: a retry reads the source like any other task.
    let fresh = inner.fresh.lock().unwrap().take(task.id);
    let fresh = fresh.and_then(|f| fresh_bytes(inner, &task, f));
    let result = match inner.destinations.get(&task.destination) {
        Some(d) => copy::replicate(inner, d, &task, fresh).await,
        None => Err(StoreError::Rejected {
            bucket: task.destination.clone(),
            status: 0,
            code: "UnknownDestination".into(),
            message: "no such destination in the configuration".into(),
        }),
    };
    let result = match result {
        Err(e) if e.is_not_found() && source_version_gone(inner, &task).await => {
            // Deleted for good (a DELETE naming the version) before it was
            // copied: as in S3, there is nothing left to replicate.
            tracing::info!(key = %task.key, version = %task.version_id, destination = %task.destination, "the source version was deleted before it was copied; nothing to replicate");
            Ok(crate::journal::Replica::default())
        }
        other => other,
    };
    let pair = (task.key.clone(), task.destination.clone());
    match result {
        Ok(replica) => {
            if let Err(e) = inner
                .journal
                .task_completed(task.id, replica, inner.target_ms)
                .await
            {
                tracing::error!(key = %task.key, error = %e, "cannot record a replication in the journal; will retry");
                let mut q = inner.queue.lock().unwrap();
                q.running.remove(&pair);
                q.retry_at
                    .insert(task.id, Instant::now() + backoff(task.attempts));
                return;
            }
            let lag = (crate::clock::now_ms() - task.created_at_ms).max(0) as f64 / 1000.0;
            inner.observed.observe(&task.destination, lag, task.size);
            let mut q = inner.queue.lock().unwrap();
            q.running.remove(&pair);
            q.retry_at.remove(&task.id);
            q.remove(task.id);
            inner.pending.send_replace(q.pending());
            drop(q);
        }
        Err(e) => {
            let permanent = e.is_permanent();
            let msg = e.to_string();
            if permanent {
                tracing::error!(key = %task.key, destination = %task.destination, error = %msg, "replication FAILED; retrying every 30 s until the cause is fixed");
            } else {
                tracing::warn!(key = %task.key, destination = %task.destination, error = %msg, "replication failed; retrying");
            }
            let _ = inner
                .journal
                .task_failed(task.id, msg.clone(), permanent)
                .await;
            let mut q = inner.queue.lock().unwrap();
            q.running.remove(&pair);
            let (attempts, was_failed) = match q.open.get_mut(&task.id) {
                Some(t) => {
                    let was = t.status == TaskStatus::Failed;
                    t.attempts += 1;
                    t.error = Some(msg);
                    t.status = if permanent {
                        TaskStatus::Failed
                    } else {
                        TaskStatus::Pending
                    };
                    (t.attempts, Some(was))
                }
                None => (task.attempts + 1, None),
            };
            if let Some(was) = was_failed {
                q.set_failed(&task.destination, was, permanent);
            }
            let wait = if permanent {
                FAILED_RETRY
            } else {
                backoff(attempts)
            };
            q.retry_at.insert(task.id, Instant::now() + wait);
        }
    }
    inner.finished.notify_waiters();
}

/// Whether the task's version no longer exists in the source (asked
/// again: a NotFound may have come from the destination).
pub(super) async fn source_version_gone(inner: &Inner, task: &Task) -> bool {
    task.kind == TaskKind::Version
        && inner
            .source
            .head(&task.key, Some(&task.version_id))
            .await
            .is_err_and(|e| e.is_not_found())
}

/// Fails permanently when the destination's versioning is not Enabled (checked
/// at most once a minute).
pub(super) async fn check_destination(d: &Destination) -> Result<(), StoreError> {
    if let Some((at, r)) = d.checked.lock().unwrap().as_ref() {
        if at.elapsed() < Duration::from_secs(60) {
            return r.clone().map_err(|m| StoreError::Rejected {
                bucket: d.store.describe(),
                status: 0,
                code: "VersioningNotEnabled".into(),
                message: m,
            });
        }
    }
    let v = d.store.versioning().await?;
    let r = match versioning_problem(&d.config, v) {
        None => Ok(()),
        Some(p) => Err(p),
    };
    *d.checked.lock().unwrap() = Some((Instant::now(), r.clone()));
    r.map_err(|m| StoreError::Rejected {
        bucket: d.store.describe(),
        status: 0,
        code: "VersioningNotEnabled".into(),
        message: m,
    })
}

/// The bytes of a fresh version: held, or read from its clean copy; `None`
/// when that copy no longer holds exactly the uploaded version.
pub(super) fn fresh_bytes(inner: &Inner, task: &Task, fresh: Arc<Fresh>) -> Option<FreshReady> {
    let body = match &fresh.body {
        Some(b) => b.clone(),
        None => inner
            .clean
            .as_ref()?
            .read_clean(&task.key, &fresh.etag, task.size)
            .map(bytes::Bytes::from)?,
    };
    Some(FreshReady { body, fresh })
}

/// When a replica waits for the uploader (see "Giving way").
#[derive(Clone, Copy)]
pub(super) enum Yield {
    /// While any upload is queued or being submitted (parts of large replicas).
    Busy,
    /// While the uploads are backed up (small replicas).
    BackedUp,
}

/// Waits while the source's load calls for it, at most the configured bound.
pub(super) async fn give_way(inner: &Inner, when: Yield) {
    let backed_up = 2 * inner.upload.concurrency.max(1);
    let waits = || {
        let load = inner.source_load();
        match when {
            Yield::Busy => load.busy(),
            Yield::BackedUp => load.queued > backed_up,
        }
    };
    if !waits() {
        return;
    }
    let until = Instant::now() + inner.give_way_at_most();
    while waits() && Instant::now() < until {
        tokio::time::sleep(GIVE_WAY_POLL.min(until - Instant::now())).await;
    }
}
