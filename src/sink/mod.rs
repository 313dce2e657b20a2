//! Where decisions go: a JSONL file, MQTT (through an on-disk spool), review frames; each
//! result numbered by the box's sequence (`seq`).
//! One dispatcher thread writes every result to every sink in arrival order; a folder
//! file is moved or deleted, and an upload answered, only after that.
//!
//! Each sink owns its `[sinks.*]` table (a serde type the daemon's config embeds) and its
//! counters (atomics the daemon's `/metrics` reads); nothing here knows about the daemon.

pub mod health;
pub mod jsonl;
pub mod mqtt;
pub mod record;
pub mod review;
pub mod seq;
#[cfg(test)]
mod small_disk;
pub mod spool;

use serde::Deserialize;

pub use record::{ResultBody, ResultLine};

/// When a sink forces what it wrote onto the disk (`fsync` in `[sinks.jsonl]` and
/// `[sinks.mqtt]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// After every line: nothing written is lost even on power loss; slowest.
    Always,
    /// At most every `fsync_interval_ms`.
    Interval,
    /// Leave it to the kernel: survives a daemon crash, not a power cut.
    Never,
}

fn default_fsync() -> FsyncPolicy {
    FsyncPolicy::Interval
}

fn default_fsync_interval() -> u64 {
    1000
}

/// A key of a sink's table that holds a value the sink cannot work with. `key` is relative
/// to the table (`host`), the caller names the table (`sinks.mqtt.host`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct InvalidKey {
    pub key: &'static str,
    pub message: &'static str,
}

fn invalid(key: &'static str, message: &'static str) -> Result<(), InvalidKey> {
    Err(InvalidKey { key, message })
}
