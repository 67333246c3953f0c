//! Where the uploader's and the replicator's loops run: a second async
//! runtime whose threads have a lower scheduling priority than the threads
//! answering the kernel, once the daemon [`install`]s it.
//!
//! Why: on a machine with few cores, uploads (signing, checksums, HTTP, and
//! an S3 server on the same host) take the CPU the writer's requests need.
//! At a lower priority they use what the file system leaves: a burst of
//! writes closes faster, and uploads still start at once, so the replication
//! lag of a steady load stays far below its 1 s target (p99 0.072 s against
//! 0.050 s at the normal priority). The measurements are in
//! docs/BENCHMARKS-history.md (2026-12-02). Durability is untouched: what runs here
//! only reads what the journal already holds.
//!
//! Without [`install`] (the library's tests) the loops run on the caller's
//! runtime, so that dropping it still stops everything at once, like a
//! crash.

use std::future::Future;
use std::sync::OnceLock;

/// How much nicer the background threads are than the daemon's others.
const NICENESS: libc::c_int = 10;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// Starts the background runtime (2 threads, [`NICENESS`] nicer) for the rest of
/// the process. Fails only if the runtime cannot start its threads.
pub fn install() -> std::io::Result<()> {
    if RUNTIME.get().is_some() {
        return Ok(());
    }
    let _ = RUNTIME.set(build()?);
    Ok(())
}

/// The background runtime, not yet installed.
fn build() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("regionfs-bg")
        .on_thread_start(|| {
            // Per thread on Linux: only this runtime's threads are lowered.
            // Failure leaves the thread at the normal priority, which is
            // merely slower for the foreground.
            // SAFETY: plain syscalls on this thread's own id; no memory is shared.
            unsafe {
                let tid = libc::gettid() as libc::id_t;
                let inherited = libc::getpriority(libc::PRIO_PROCESS, tid);
                libc::setpriority(libc::PRIO_PROCESS, tid, (inherited + NICENESS).min(19));
            }
        })
        .enable_all()
        .build()
}

/// Spawns `f` on the background runtime if installed, else on the current one.
pub fn spawn<F>(f: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match RUNTIME.get() {
        Some(rt) => drop(rt.spawn(f)),
        None => drop(tokio::spawn(f)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn background_work_runs_at_a_lower_priority_than_the_caller() {
        // Not installed: the other tests of this process run their loops
        // on runtimes they drop (as a crash would).
        let bg = super::build().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        drop(bg.spawn(async move {
            let name = std::thread::current().name().map(str::to_string);
            // SAFETY: plain syscalls on this thread's own id.
            let nice =
                unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
            tx.send((name, nice)).unwrap();
        }));
        let (name, nice) = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(name.as_deref(), Some("regionfs-bg"));
        // SAFETY: plain syscalls on this thread's own id.
        let mine = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        assert_eq!(nice, (mine + super::NICENESS).min(19));
    }
}
