//! A watched folder: image files that arrive are handed on once each, in arrival order.
//! A file counts as arrived when its writer closes it or when it is renamed into the
//! folder (the safe way to drop a file in: write `x.part`, then `mv x.part x.png`), so a
//! half-written file is never read. Hidden files and other extensions are ignored; an
//! entry named like an image that is not a file to read (a directory, a symlink loop, a
//! dangling symlink) is reported once and left where it is.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

use super::retry::{Backoff, is_transient};
use crate::preprocess::decode::is_image_path;

pub enum FolderEvent {
    File(PathBuf),
    /// An entry with an image's name that is not a file to read (a directory, a symlink
    /// loop, a dangling symlink, a FIFO), and what it is: reported once, left in place.
    NotAFile(PathBuf, String),
    /// Watching (true) or not, and why.
    State(bool, String),
    /// Nothing arrived for a moment (at most [`IDLE`] apart while quiet): the time to act on
    /// what waits for time, such as a frame waiting for its partner files.
    Idle,
}

/// How long a quiet folder goes between [`FolderEvent::Idle`]s.
pub const IDLE: Duration = Duration::from_millis(250);

/// Watches `dir` until `stop` is set. When `existing` is true, files already there are
/// handed on first, oldest first. A folder that is missing or vanishes is waited for; a
/// listing that fails is retried with back-off.
pub fn watch(dir: &Path, existing: bool, stop: &AtomicBool, on_event: &mut dyn FnMut(FolderEvent)) {
    let mut folder = Folder {
        dir,
        stop,
        on_event,
        seen: Seen::default(),
        reported: HashSet::new(),
        rescan: None,
        last_state: String::new(),
    };
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let (tx, rx) = mpsc::channel();
        let watcher = notify::recommended_watcher(tx).and_then(|mut w| {
            w.watch(dir, RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        let _watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                folder.state(false, format!("{}: cannot watch: {e}", dir.display()));
                sleep_unless_stopped(stop, Duration::from_secs(1));
                continue;
            }
        };
        folder.state(true, "watching".into());
        // Listed after the watch started, so nothing arriving in between is missed;
        // `seen` drops what both report.
        folder.scan(existing || !first);
        first = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if folder.rescan.is_some_and(|(due, _)| Instant::now() >= due) {
                folder.scan(true);
            }
            match rx.recv_timeout(IDLE) {
                Ok(Ok(event)) if event.need_rescan() => folder.scan(true),
                Ok(Ok(event)) => folder.event(&event),
                Ok(Err(e)) => tracing::warn!("{}: watch error: {e}", dir.display()),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    (folder.on_event)(FolderEvent::Idle);
                    if !dir.is_dir() {
                        folder.state(false, format!("{}: folder is gone; waiting for it", dir.display()));
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    }
}

/// What one watch keeps across the folder's comings and goings.
struct Folder<'a> {
    dir: &'a Path,
    stop: &'a AtomicBool,
    on_event: &'a mut dyn FnMut(FolderEvent),
    seen: Seen,
    /// Entries reported as not files, so each is reported once while it stays.
    reported: HashSet<PathBuf>,
    /// When to list the folder again, after a listing that failed or was incomplete.
    rescan: Option<(Instant, Backoff)>,
    last_state: String,
}

impl Folder<'_> {
    fn state(&mut self, up: bool, message: String) {
        if message != self.last_state {
            self.last_state = message.clone();
            (self.on_event)(FolderEvent::State(up, message));
        }
    }

    /// Lists the folder: image files are handed on (when `hand_on`; else only marked
    /// seen), oldest first, and entries that are not files reported.
    fn scan(&mut self, hand_on: bool) {
        let listing = match list(self.dir) {
            Ok(listing) => listing,
            Err(e) => {
                self.state(false, format!("{}: cannot list: {e}; retrying", self.dir.display()));
                self.retry_scan();
                return;
            }
        };
        self.state(true, "watching".into());
        if listing.incomplete {
            self.retry_scan();
        } else {
            self.rescan = None;
        }
        let present: HashSet<&PathBuf> = listing.not_files.iter().map(|(p, _)| p).collect();
        self.reported.retain(|p| present.contains(p));
        for (path, what) in &listing.not_files {
            self.report(path, what);
        }
        for path in listing.files {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            if self.seen.insert(&path) && hand_on {
                (self.on_event)(FolderEvent::File(path));
            }
        }
    }

    fn retry_scan(&mut self) {
        let mut backoff = self.rescan.map_or_else(Backoff::new, |(_, b)| b);
        self.rescan = Some((Instant::now() + backoff.next_wait(), backoff));
    }

    fn event(&mut self, event: &notify::Event) {
        let Some(path) = event.paths.last() else { return };
        let arrived = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => true,
            // A file being written is handed on when closed; a directory or symlink made
            // here is never written.
            EventKind::Create(_) => is_symlink(path),
            _ => return,
        };
        match classify(path) {
            Entry::Image if arrived => {
                if self.seen.insert(path) {
                    (self.on_event)(FolderEvent::File(path.clone()));
                }
            }
            Entry::Image | Entry::Ignored => {}
            Entry::NotAFile(what) => self.report(path, &what),
            Entry::Unknown => self.retry_scan(),
        }
    }

    fn report(&mut self, path: &Path, what: &str) {
        if self.reported.insert(path.to_owned()) {
            (self.on_event)(FolderEvent::NotAFile(path.to_owned(), what.to_owned()));
        }
    }
}

/// What a folder entry is to the watcher.
#[derive(Debug, PartialEq)]
enum Entry {
    /// A regular file with an image's name, or a symlink to one.
    Image,
    /// Hidden, another extension, or gone: not for this source.
    Ignored,
    /// Named like an image but not a file to read: what it is.
    NotAFile(String),
    /// Not known for a reason outside the entry (see `is_transient`): look again later.
    Unknown,
}

fn classify(path: &Path) -> Entry {
    let hidden = path.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
    if hidden || !is_image_path(path) {
        return Entry::Ignored;
    }
    let error = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => return Entry::Image,
        Ok(m) if m.is_dir() => return Entry::NotAFile("a directory".into()),
        Ok(_) => return Entry::NotAFile("not a regular file (a FIFO, socket or device)".into()),
        Err(e) if is_transient(&e) => return Entry::Unknown,
        Err(e) => e,
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if is_transient(&e) => Entry::Unknown,
        // Deleted or moved away since it was seen.
        Err(_) => Entry::Ignored,
        Ok(_) if error.raw_os_error() == Some(libc::ELOOP) => Entry::NotAFile("a symlink loop".into()),
        Ok(m) if m.file_type().is_symlink() && error.kind() == std::io::ErrorKind::NotFound => {
            Entry::NotAFile("a dangling symlink (its target does not exist)".into())
        }
        Ok(_) => Entry::NotAFile(format!("cannot be read: {error}")),
    }
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

struct Listing {
    /// Image files, oldest first.
    files: Vec<PathBuf>,
    not_files: Vec<(PathBuf, String)>,
    /// Some entry could not be told for now.
    incomplete: bool,
}

fn list(dir: &Path) -> std::io::Result<Listing> {
    let mut files: Vec<(SystemTime, PathBuf)> = Vec::new();
    let mut listing = Listing { files: Vec::new(), not_files: Vec::new(), incomplete: false };
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        match classify(&path) {
            Entry::Image => files.push((modified(&path).unwrap_or(SystemTime::UNIX_EPOCH), path)),
            Entry::Ignored => {}
            Entry::NotAFile(what) => listing.not_files.push((path, what)),
            Entry::Unknown => listing.incomplete = true,
        }
    }
    files.sort();
    listing.files = files.into_iter().map(|(_, p)| p).collect();
    Ok(listing)
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

    #[test]
    fn entries_named_like_images_that_are_not_files_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("ok.png"), b"").unwrap();
        std::fs::create_dir(d.join("dir.png")).unwrap();
        std::os::unix::fs::symlink(d.join("loop.png"), d.join("loop.png")).unwrap();
        std::os::unix::fs::symlink(d.join("missing"), d.join("dangling.png")).unwrap();
        std::os::unix::fs::symlink(d.join("ok.png"), d.join("link.png")).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        let what = |name: &str| classify(&d.join(name));
        assert_eq!(what("ok.png"), Entry::Image);
        assert_eq!(what("link.png"), Entry::Image);
        assert_eq!(what("dir.png"), Entry::NotAFile("a directory".into()));
        assert_eq!(what("loop.png"), Entry::NotAFile("a symlink loop".into()));
        assert_eq!(
            what("dangling.png"),
            Entry::NotAFile("a dangling symlink (its target does not exist)".into())
        );
        assert_eq!(what("sub"), Entry::Ignored, "not named like an image: not this source's");
        assert_eq!(what("gone.png"), Entry::Ignored);
    }
}
