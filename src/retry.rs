//! Retrying and waiting, shared by the uploader and the replicator (below
//! both): jittered exponential backoff, and waiting for a watched count of
//! queued work to drain.

use std::time::Duration;

use tokio::sync::watch;

/// Exponential backoff from 250 ms, capped at 30 s, with "equal jitter".
pub(crate) fn jittered_backoff(attempts: u32) -> Duration {
    let base = 250u64.saturating_mul(1u64 << attempts.min(7)).min(30_000);
    let jitter = rand::random::<u64>() % (base / 2 + 1);
    Duration::from_millis(base / 2 + jitter)
}

/// Waits until a watched count reaches zero or `timeout` passes; returns the
/// count left, calling `progress` with every value seen.
pub(crate) async fn wait_for_zero(
    mut rx: watch::Receiver<usize>,
    timeout: Duration,
    mut progress: impl FnMut(usize),
) -> usize {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = *rx.borrow_and_update();
        progress(n);
        if n == 0 {
            return 0;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return *rx.borrow();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_from_a_quarter_second_to_thirty_and_stays_jittered() {
        for attempts in 0..20 {
            let base = (250u64 << attempts.min(7)).min(30_000);
            for _ in 0..50 {
                let d = jittered_backoff(attempts).as_millis() as u64;
                assert!((base / 2..=base).contains(&d), "attempt {attempts}: {d} ms");
            }
        }
    }

    #[tokio::test]
    async fn waiting_for_zero_returns_what_is_left_when_time_runs_out() {
        let (tx, rx) = watch::channel(3usize);
        let mut seen = Vec::new();
        let left = wait_for_zero(rx.clone(), Duration::from_millis(20), |n| seen.push(n)).await;
        assert_eq!((left, seen), (3, vec![3]));
        let waiter = tokio::spawn(wait_for_zero(rx, Duration::from_secs(10), |_| {}));
        tx.send(1).unwrap();
        tx.send(0).unwrap();
        assert_eq!(waiter.await.unwrap(), 0);
    }
}
