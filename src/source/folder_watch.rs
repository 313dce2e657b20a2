//! A watched folder: image files that arrive are handed on once each, in arrival order.
//! A file counts as arrived when its writer closes it or when it is renamed into the
//! folder (the safe way to drop a file in: write `x.part`, then `mv x.part x.png`), so a
//! half-written file is never read. Hidden files and other extensions are ignored.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

use crate::preprocess::decode::is_image_path;

pub enum FolderEvent {
    File(PathBuf),
    /// Watching (true) or not, and why.
    State(bool, String),
}

/// Watches `dir` until `stop` is set. When `existing` is true, files already there are
/// handed on first, oldest first. A folder that is missing or vanishes is waited for.
pub fn watch(dir: &Path, existing: bool, stop: &AtomicBool, on_event: &mut dyn FnMut(FolderEvent)) {
    let mut seen = Seen::default();
    let mut first = true;
    let mut last_state = String::new();
    let mut state = |up: bool, msg: String, on_event: &mut dyn FnMut(FolderEvent)| {
        if msg != last_state {
            last_state = msg.clone();
            on_event(FolderEvent::State(up, msg));
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let (tx, rx) = mpsc::channel();
        let watcher = notify::recommended_watcher(tx).and_then(|mut w| {
            w.watch(dir, RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        let _watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                state(false, format!("{}: cannot watch: {e}", dir.display()), on_event);
                sleep_unless_stopped(stop, Duration::from_secs(1));
                continue;
            }
        };
        state(true, "watching".into(), on_event);
        // Listed after the watch started, so nothing arriving in between is missed;
        // `seen` drops what both report.
        if existing || !first {
            for path in list_oldest_first(dir) {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if seen.insert(&path) {
                    on_event(FolderEvent::File(path));
                }
            }
        } else {
            for path in list_oldest_first(dir) {
                seen.insert(&path);
            }
        }
        first = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match rx.recv_timeout(Duration::from_millis(250)) {
                Ok(Ok(event)) => {
                    if event.need_rescan() {
                        for path in list_oldest_first(dir) {
                            if seen.insert(&path) {
                                on_event(FolderEvent::File(path));
                            }
                        }
                        continue;
                    }
                    let arrived = match event.kind {
                        EventKind::Access(AccessKind::Close(AccessMode::Write)) => event.paths.last(),
                        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => {
                            event.paths.last()
                        }
                        _ => None,
                    };
                    if let Some(path) = arrived
                        && wanted(path)
                        && seen.insert(path)
                    {
                        on_event(FolderEvent::File(path.clone()));
                    }
                }
                Ok(Err(e)) => tracing::warn!("{}: watch error: {e}", dir.display()),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !dir.is_dir() {
                        state(false, format!("{}: folder is gone; waiting for it", dir.display()), on_event);
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    }
}

fn wanted(path: &Path) -> bool {
    let hidden = path.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
    !hidden && is_image_path(path) && path.is_file()
}

fn list_oldest_first(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| wanted(p))
        .map(|p| (modified(&p).unwrap_or(SystemTime::UNIX_EPOCH), p))
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn sleep_unless_stopped(stop: &AtomicBool, total: Duration) {
    let step = Duration::from_millis(100);
    let mut slept = Duration::ZERO;
    while slept < total && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        slept += step;
    }
}

/// Files already handed on, by path, modification time and size: a second close of the
/// same unchanged file is not a new arrival, a new file under an old name is.
#[derive(Default)]
struct Seen {
    keys: HashSet<(PathBuf, Option<SystemTime>, u64)>,
}

impl Seen {
    fn insert(&mut self, path: &Path) -> bool {
        let meta = std::fs::metadata(path).ok();
        let key = (
            path.to_owned(),
            meta.as_ref().and_then(|m| m.modified().ok()),
            meta.as_ref().map_or(0, |m| m.len()),
        );
        if self.keys.len() >= 50_000 {
            // Files that were moved or deleted after processing need no memory.
            self.keys.retain(|(p, _, _)| p.exists());
        }
        self.keys.insert(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn existing_first_then_arrivals_in_order_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let png = include_bytes!("../../models/samples/0000-ankle-boot.png");
        std::fs::write(dir.path().join("old.png"), png).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let path = dir.path().to_owned();
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            watch(&path, true, &stop2, &mut |e| {
                if let FolderEvent::File(p) = e {
                    tx.send(p.file_name().unwrap().to_string_lossy().into_owned()).unwrap();
                }
            })
        });
        let next = || rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(next(), "old.png");
        std::fs::write(dir.path().join("b.png"), png).unwrap();
        std::fs::write(dir.path().join("a.part"), png).unwrap();
        std::fs::rename(dir.path().join("a.part"), dir.path().join("a.png")).unwrap();
        assert_eq!(next(), "b.png");
        assert_eq!(next(), "a.png");
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "each file once");
        stop.store(true, Ordering::Relaxed);
        handle.join().unwrap();
    }
}
