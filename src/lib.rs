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
//! Modules follow that flow: [`config`] → [`store`] (one bucket, one region).

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod background;
pub mod cache;
pub mod config;
pub mod error;
pub mod fs;
pub mod heap;
pub mod journal;
pub mod meta;
pub mod metrics;
pub mod regions;
pub mod replicator;
pub mod service;
pub mod store;
pub mod uploader;
