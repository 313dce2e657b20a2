//! Model hot reload: when a model file changes, or on SIGHUP (which also re-reads the
//! config's sha256 pins), the affected sources load the new file. A refused or broken
//! file is reported once per content and the old model keeps serving; the file turning
//! back into the served model is reported too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};

use super::ServeError;
use super::config::ServeConfig;
use super::metrics::SourceMetrics;
use super::model_slot::{ModelSlot, ReloadOutcome};
use super::pipeline::spawn;
use super::shutdown::Shutdown;

/// One source's model, as the reloader sees it.
pub struct Target {
    pub name: String,
    pub slot: Arc<ModelSlot>,
    pub counters: Arc<SourceMetrics>,
}

enum Request {
    /// A file in a watched folder changed.
    Changed(PathBuf),
    /// SIGHUP: re-read pins, reload every model.
    All,
}

pub struct Reloader {
    tx: Sender<Request>,
    thread: JoinHandle<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

/// A model file being copied fires many events; act once it has been quiet this long.
const SETTLE: Duration = Duration::from_millis(400);

impl Reloader {
    pub fn start(
        targets: Vec<Target>,
        config_path: PathBuf,
        shutdown: Shutdown,
    ) -> Result<Reloader, ServeError> {
        let (tx, rx) = mpsc::channel::<Request>();
        let watch_tx = tx.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && changes_content(&event.kind)
            {
                for path in event.paths {
                    let _ = watch_tx.send(Request::Changed(path));
                }
            }
        })
        .map_err(|source| ServeError::Watcher { source })?;
        // Folders, not files: a model replaced by rename (the safe way) is a new inode
        // that a watch on the old file would never see.
        let mut watched = std::collections::HashSet::new();
        for target in &targets {
            if let Some(dir) = target.slot.path().and_then(Path::parent)
                && watched.insert(dir.to_owned())
            {
                let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
                watcher
                    .watch(dir, RecursiveMode::NonRecursive)
                    .map_err(|source| ServeError::Watch { dir: dir.to_owned(), source })?;
            }
        }
        let thread = spawn("reload".into(), move || {
            while !shutdown.is_triggered() {
                let first = match rx.recv_timeout(Duration::from_millis(250)) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                };
                let mut all = false;
                let mut changed = Vec::new();
                let mut next = Some(first);
                while let Some(request) = next {
                    match request {
                        Request::All => all = true,
                        Request::Changed(p) => changed.push(p),
                    }
                    next = rx.recv_timeout(SETTLE).ok();
                }
                if all {
                    refresh_pins(&config_path, &targets);
                    targets.iter().for_each(|t| t.slot.forget_rejected());
                }
                for target in &targets {
                    let Some(path) = target.slot.path() else { continue };
                    if all || changed.iter().any(|c| same_file(c, path)) {
                        reload_one(target);
                    }
                }
            }
        })?;
        Ok(Reloader { tx, thread, _watcher: Some(watcher) })
    }

    fn request_all(&self) {
        let _ = self.tx.send(Request::All);
    }

    pub fn join(self) {
        drop(self._watcher);
        drop(self.tx);
        let _ = self.thread.join();
    }
}

/// Reading a model opens it, and inotify reports that open: treated as a change, every
/// reload would schedule the next one, SETTLE later, for ever.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

fn same_file(changed: &Path, model: &Path) -> bool {
    changed == model
        || (changed.file_name() == model.file_name()
            && changed.parent().map(absolute) == model.parent().map(absolute))
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(if p.as_os_str().is_empty() { Path::new(".") } else { p })
        .unwrap_or_else(|_| p.to_owned())
}

fn refresh_pins(config_path: &Path, targets: &[Target]) {
    match ServeConfig::load(config_path) {
        Ok(config) => {
            for target in targets {
                if let Some(source) = config.sources.iter().find(|s| s.name == target.name) {
                    target.slot.set_pin(source.model_sha256.clone());
                }
            }
        }
        Err(e) => tracing::error!("SIGHUP: keeping the current sha256 pins: {e}"),
    }
}

fn reload_one(Target { name, slot, counters: metrics }: &Target) {
    match slot.reload() {
        ReloadOutcome::Unchanged => tracing::debug!("source {name}: model unchanged"),
        ReloadOutcome::StillRejected => {
            tracing::debug!("source {name}: model file still holds the rejected bytes")
        }
        ReloadOutcome::Restored => {
            metrics.reload("restored");
            let loaded = slot.current();
            tracing::info!(
                "source {name}: the model file is back to the model being served, {} (sha256 {})",
                loaded.model,
                &loaded.sha256[..12]
            );
        }
        ReloadOutcome::Reloaded { sha256 } => {
            let loaded = slot.current();
            metrics.set_model(&loaded.model.card.name, &sha256);
            metrics.reload("ok");
            tracing::info!("source {name}: now serving {} (sha256 {})", loaded.model, &sha256[..12]);
        }
        ReloadOutcome::Refused(e) => {
            metrics.reload("refused");
            tracing::error!("source {name}: {e}; the previous model keeps serving");
        }
        ReloadOutcome::Failed(e) => {
            metrics.reload("failed");
            tracing::error!("source {name}: reload failed: {e}; the previous model keeps serving");
        }
    }
}

/// Waits for SIGTERM or SIGINT, or a shutdown triggered elsewhere; SIGHUP on the way asks
/// for a reload.
pub async fn wait_for_shutdown(reloader: &Reloader, shutdown: &Shutdown) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        shutdown.triggered().await;
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.triggered() => return,
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading models and sha256 pins");
                reloader.request_all();
            }
        }
    }
}
