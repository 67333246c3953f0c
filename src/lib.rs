//! regionfs: a FUSE filesystem whose every written file becomes a new version in a
//! versioned *source* S3 bucket, replicated to other regions by S3 replication rules.
//!
//! ```text
//! write(2) ─> fs (FUSE adapter) ─> cache (local file, fsync on close) ─> journal: "staged"
//!                                                  │
//!                              uploader ───────────┘  PUT / multipart ─> source bucket
//!                                   │  (new version id)
//!                                   └─> journal: replication tasks, one per matching rule
//!                                                  │
//!                              replicator ─────────┘  bytes from cache or GET ?versionId
//!                                                     ─> destination bucket(s)
//! read(2)  ─> fs ─> cache hit? ─> else nearest region holding the current version
//! ```
//!
//! # Module map
//! Modules follow that flow, in layers: a module imports only from layers
//! below its own (and from modules of its own layer it lists after `→`).
//! `layering_test` checks every `crate::` path in `src/` against this map.
//!
//! 0. [`clock`], [`error`], [`names`], [`retry`], [`background`], [`heap`],
//!    [`config`] → [`error`]: foundations (wall clock, lowest errors, paths ↔
//!    keys, backoff, the background runtime, heap trimming, configuration).
//! 1. [`store`]: one bucket in one region (S3; in memory in tests), with its
//!    capabilities (ACLs, conditional writes).
//! 2. [`journal`], [`meta`], [`cache`] → [`meta`]: the crash-safe queue of
//!    work, object metadata ↔ headers, the local cache of file bytes.
//! 3. [`replicator`]: copies each new version to the destinations.
//! 4. [`uploader`] (write-back to the source; hands versions to the
//!    replicator), [`regions`] (where reads come from, and the read policies
//!    `--as-of` and `read.max_staleness`).
//! 5. [`fs`]: the POSIX core over all of the above, and its FUSE adapter.
//! 6. [`status`], [`service`] → [`status`]: what `status` reports; starting,
//!    running and stopping a mount or a replicator.
//! 7. [`metrics`]: the Prometheus endpoint over `status` and the workers'
//!    own measures.

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod background;
pub mod cache;
pub mod clock;
pub mod config;
pub mod error;
pub mod fs;
pub mod heap;
pub mod journal;
pub mod meta;
pub mod metrics;
pub mod names;
pub mod regions;
pub mod replicator;
pub mod retry;
pub mod service;
pub mod status;
pub mod store;
pub mod uploader;

#[cfg(test)]
mod layering_test;
