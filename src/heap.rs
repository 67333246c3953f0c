//! Gives freed heap memory back to the system while the daemon runs.
//!
//! Why: glibc's allocator returns to the system only the free memory at the
//! top of each arena; the pages of chunks freed below a live one stay
//! resident. A burst of small files fills the heap with short-lived buffers
//! (bodies held for replicas, queued uploads, listings) among long-lived ones
//! (inodes, clean-copy entries), so after the burst the daemon stays near the
//! burst's resident size although much of it is free: 55.6 MiB resident after
//! 40000 files were uploaded and replicated, 44.8 MiB after a trim
//! (docs/BENCHMARKS-history.md, 2026-12-03).
//!
//! What: a thread looks every [`EVERY`] at how much lies free in the arenas
//! and, past [`WORTH_TRIMMING`], asks glibc to release the whole free pages
//! (`malloc_trim`, which `madvise`s them away). No allocation moves, so
//! nothing held can change; the cost is one walk of the arenas (about a
//! millisecond here) and page faults when the memory is used again. This
//! lowers what stays resident between bursts, not the peak during one.
//! Other C libraries: nothing to do, the thread is not started.

use std::time::Duration;

/// How often the free heap is looked at.
pub(crate) const EVERY: Duration = Duration::from_secs(5);

/// Free heap below this is left alone: a trim would give back little, and
/// the next requests would fault it in again.
pub(crate) const WORTH_TRIMMING: usize = 4 << 20;

/// Bytes free inside the allocator's arenas (mmapped chunks excluded, they
/// go back to the system when freed); `None` where that cannot be asked.
pub(crate) fn free_bytes() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Releases the heap's free pages if at least `threshold` bytes lie free;
/// returns whether it trimmed.
pub(crate) fn trim_if_worthwhile(threshold: usize) -> bool {
    match free_bytes() {
        Some(free) if free >= threshold => {
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim takes the arenas' own locks; it frees no
            // chunk in use, it only gives back pages no chunk occupies.
            unsafe {
                libc::malloc_trim(0);
            }
            true
        }
        _ => false,
    }
}

/// Starts the trimming thread for the rest of the process (a no-op where the
/// free heap cannot be measured). Failing to start it costs memory, not data.
pub fn start() {
    if free_bytes().is_none() {
        return;
    }
    let started = std::thread::Builder::new()
        .name("regionfs-heap".into())
        .spawn(|| loop {
            std::thread::sleep(EVERY);
            trim_if_worthwhile(WORTH_TRIMMING);
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "no heap trimming: the daemon keeps freed memory resident");
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn resident_kib() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// 48 MiB of 4 KiB buffers, 15 of every 16 freed: the kept ones pin the
    /// arena's top, so only a trim can give the freed pages back.
    #[test]
    fn freed_pages_below_live_ones_go_back_to_the_system_once_trimmed() {
        let mut blocks: Vec<Vec<u8>> = (0..12_288).map(|i| vec![(i % 251) as u8; 4096]).collect();
        let mut kept = Vec::new();
        for (i, b) in blocks.drain(..).enumerate() {
            if i % 16 == 15 {
                kept.push(b);
            }
        }
        let before = resident_kib();
        assert!(
            free_bytes().unwrap() >= 32 << 20,
            "the freed buffers lie free in the heap"
        );
        assert!(
            !trim_if_worthwhile(usize::MAX),
            "below the threshold nothing is done"
        );
        assert!(trim_if_worthwhile(WORTH_TRIMMING));
        let after = resident_kib();
        assert!(
            before >= after + 24 * 1024,
            "resident {before} KiB before the trim, {after} KiB after"
        );
        // The kept buffers are intact.
        assert!(kept
            .iter()
            .enumerate()
            .all(|(j, b)| b.iter().all(|&x| x == ((j * 16 + 15) % 251) as u8)));
    }
}
