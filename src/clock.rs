//! The crate's clock: wall time in Unix milliseconds, as the journal records
//! it and as lag and ages are counted from it. One place, so a test or a
//! port has one thing to replace.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
