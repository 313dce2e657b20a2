//! The one shutdown signal of the daemon. Blocking threads (sources, the reloader) poll
//! the flag between steps; async tasks (the HTTP server, the signal waiter) await it.
//! Workers, the dispatcher and the MQTT publisher do not listen: they stop when what
//! feeds them runs dry (a closed queue, the last worker gone, the outbox dropped), so
//! nothing already accepted is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { flag: Arc::default(), tx: Arc::new(watch::Sender::new(false)) }
    }
}

impl Shutdown {
    /// Starts the shutdown; calling it again does nothing more.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// The flag, for the blocking loops of `source::*` that take a `&AtomicBool`.
    pub fn flag(&self) -> &AtomicBool {
        &self.flag
    }

    /// Resolves once [`Self::trigger`] was called (at once if it already was).
    pub async fn triggered(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so waiting cannot fail on a closed channel.
        let _ = rx.wait_for(|&stop| stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listener_hears_one_trigger_even_one_that_starts_listening_late() {
        let shutdown = Shutdown::default();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let early = {
            let s = shutdown.clone();
            runtime.spawn(async move { s.triggered().await })
        };
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        assert!(shutdown.flag().load(Ordering::Relaxed));
        runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), early).await.unwrap().unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(5), shutdown.triggered()).await.unwrap();
        });
    }
}
