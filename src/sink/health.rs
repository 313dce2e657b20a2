//! Whether a sink can write, for `/metrics` and `/readyz`. The dispatcher keeps the results a
//! sink refused, in order, and retries them; these atomics say how that is going.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct WriteHealth {
    /// Results that could not be written when they came (their write failed, or they queued
    /// behind one that did); each counted once, however often it is retried.
    pub failed_results: AtomicU64,
    /// Results waiting in memory to be written.
    pub waiting: AtomicU64,
    /// Unix ms since when writes have been failing; 0 while they succeed.
    pub failing_since_ms: AtomicU64,
}

impl WriteHealth {
    /// How long writes have been failing, or `None` while they succeed.
    pub fn failing_for_ms(&self) -> Option<u64> {
        match self.failing_since_ms.load(Relaxed) {
            0 => None,
            since => Some(now_ms().saturating_sub(since)),
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64).max(1)
}
