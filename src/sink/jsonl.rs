//! The results file: one JSON line per frame, appended; fsync as configured; rotated by
//! size (`results.jsonl` → `results.jsonl.1` → ... up to `keep`). A reader only ever sees
//! whole lines: a write that fails part-way (a full disk) is cut back to the last line's end
//! before the caller tries again, and a torn last line left by a crash is cut when the file
//! is opened.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::health::WriteHealth;
use super::{FsyncPolicy, InvalidKey, default_fsync, default_fsync_interval, invalid};

/// `[sinks.jsonl]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    pub path: PathBuf,
    #[serde(default = "default_fsync")]
    pub fsync: FsyncPolicy,
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval_ms: u64,
    /// Rotate when the file would grow past this; 0 never rotates.
    #[serde(default = "default_rotate")]
    pub rotate_bytes: u64,
    /// Rotated files kept (`results.jsonl.1` newest).
    #[serde(default = "default_keep")]
    pub keep: usize,
}

fn default_rotate() -> u64 {
    64 << 20
}
fn default_keep() -> usize {
    5
}

impl JsonlConfig {
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if self.fsync == FsyncPolicy::Interval && self.fsync_interval_ms == 0 {
            return invalid("fsync_interval_ms", "must be > 0 with fsync = \"interval\"");
        }
        if self.rotate_bytes > 0 && self.keep == 0 {
            return invalid("keep", "must be > 0 when rotate_bytes is set");
        }
        Ok(())
    }
}

/// What the sink did, for `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct JsonlCounters {
    pub lines: AtomicU64,
    /// Kept by the writer, which holds and retries what the file refused.
    pub health: Arc<WriteHealth>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct JsonlError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

pub struct JsonlSink {
    config: JsonlConfig,
    counters: Arc<JsonlCounters>,
    file: File,
    size: u64,
    last_sync: Instant,
    unsynced: bool,
    /// The end of the last whole line, when cutting back to it failed: done before the next
    /// write.
    cut_pending: Option<u64>,
}

impl JsonlSink {
    pub fn open(config: &JsonlConfig, counters: Arc<JsonlCounters>) -> Result<Self, JsonlError> {
        let err = |source| JsonlError { path: config.path.clone(), source };
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut file = open_append(&config.path).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        let whole = whole_lines_end(&mut file, size).map_err(err)?;
        if whole < size {
            file.set_len(whole).map_err(err)?;
            file.sync_data().map_err(err)?;
            tracing::warn!(
                "{}: cut a torn last line of {} bytes (a write that did not finish before a crash; \
                 its input had not been let go and is processed again)",
                config.path.display(),
                size - whole
            );
        }
        Ok(JsonlSink {
            config: config.clone(),
            counters,
            file,
            size: whole,
            last_sync: Instant::now(),
            unsynced: false,
            cut_pending: None,
        })
    }

    /// Appends one line (without its newline). A failed write leaves the file as it was
    /// as far as the caller knows: the caller keeps the line and tries again.
    pub fn write(&mut self, line: &str) -> Result<(), JsonlError> {
        self.append(line)?;
        self.counters.lines.fetch_add(1, Relaxed);
        Ok(())
    }

    pub fn counters(&self) -> &Arc<JsonlCounters> {
        &self.counters
    }

    fn append(&mut self, line: &str) -> Result<(), JsonlError> {
        if let Some(end) = self.cut_pending {
            self.file.set_len(end).map_err(|source| self.error(source))?;
            self.cut_pending = None;
        }
        let len = line.len() as u64 + 1;
        if self.config.rotate_bytes > 0 && self.size > 0 && self.size + len > self.config.rotate_bytes {
            self.rotate()?;
        }
        let end = self.size;
        let written = self.write_line(line);
        if written.is_err() {
            // Part of the line may be in the file (a short write), or all of it unsynced: cut
            // it off, so no reader sees a torn line and the caller's retry does not add it twice.
            if let Err(e) = self.file.set_len(end) {
                tracing::warn!("{}: cannot cut a failed write back yet: {e}", self.config.path.display());
                self.cut_pending = Some(end);
            }
            self.size = end;
        }
        written
    }

    fn write_line(&mut self, line: &str) -> Result<(), JsonlError> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.file.write_all(&buf).map_err(|source| self.error(source))?;
        self.size += buf.len() as u64;
        self.unsynced = true;
        match self.config.fsync {
            FsyncPolicy::Always => self.sync()?,
            FsyncPolicy::Interval
                if self.last_sync.elapsed() >= Duration::from_millis(self.config.fsync_interval_ms) =>
            {
                self.sync()?
            }
            _ => {}
        }
        Ok(())
    }

    /// Called when the dispatcher is idle, so an interval policy also covers the last line
    /// of a burst.
    pub fn tick(&mut self) -> Result<(), JsonlError> {
        if self.config.fsync == FsyncPolicy::Interval
            && self.unsynced
            && self.last_sync.elapsed() >= Duration::from_millis(self.config.fsync_interval_ms)
        {
            self.sync()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), JsonlError> {
        if self.unsynced && self.config.fsync != FsyncPolicy::Never {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), JsonlError> {
        self.file.sync_data().map_err(|source| self.error(source))?;
        self.last_sync = Instant::now();
        self.unsynced = false;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), JsonlError> {
        if self.config.fsync != FsyncPolicy::Never {
            self.sync()?;
        }
        let path = &self.config.path;
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
        let _ = std::fs::remove_file(numbered(self.config.keep));
        for n in (1..self.config.keep).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1)).map_err(|source| self.error(source))?;
            }
        }
        std::fs::rename(path, numbered(1)).map_err(|source| self.error(source))?;
        self.file = open_append(path).map_err(|source| self.error(source))?;
        self.size = 0;
        Ok(())
    }

    fn error(&self, source: std::io::Error) -> JsonlError {
        JsonlError { path: self.config.path.clone(), source }
    }
}

/// What a restart needs of a result line written before it.
#[derive(Debug, Clone, Deserialize)]
pub struct WrittenResult {
    pub source: String,
    pub file: String,
    /// A frame of several inputs: each input's file (`null` where it had none).
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, Option<String>>,
    pub ts_ms: u64,
    pub seq: Option<u64>,
}

impl WrittenResult {
    /// Every file the result is about: `file`, and for a frame of several inputs each of
    /// its inputs' files.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.file.as_str()).chain(self.files.values().flatten().map(String::as_str))
    }
}

/// The results among the last `max_bytes` of the file, oldest first (lines that do not
/// parse are skipped: a restart only looks for what it can recognise).
pub fn written_results(path: &Path, max_bytes: u64) -> std::io::Result<Vec<WrittenResult>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    let start = size.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.take(max_bytes).read_to_end(&mut tail)?;
    // From mid-file, the first line is a fragment.
    let whole = if start > 0 {
        tail.iter().position(|&b| b == b'\n').map_or(&[][..], |i| &tail[i + 1..])
    } else {
        &tail[..]
    };
    Ok(whole.split(|&b| b == b'\n').filter_map(|line| serde_json::from_slice(line).ok()).collect())
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).read(true).append(true).open(path)
}

/// Where the file's last whole line ends: `size` when it ends with a newline (or is empty).
fn whole_lines_end(file: &mut File, size: u64) -> std::io::Result<u64> {
    let mut end = size;
    let mut chunk = [0u8; 4096];
    while end > 0 {
        let n = chunk.len().min(end as usize);
        file.seek(SeekFrom::Start(end - n as u64))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(end - n as u64 + i as u64 + 1);
        }
        end -= n as u64;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::small_disk::{SmallDisk, fill};

    #[test]
    fn rotates_by_size_and_keeps_the_configured_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let config = JsonlConfig {
            path: path.clone(),
            fsync: FsyncPolicy::Never,
            fsync_interval_ms: 1000,
            rotate_bytes: 25,
            keep: 2,
        };
        let counters = Arc::new(JsonlCounters::default());
        let mut sink = JsonlSink::open(&config, counters.clone()).unwrap();
        for i in 0..10 {
            sink.write(&format!("{{\"n\":{i:03}}}")).unwrap(); // 11 bytes + newline
        }
        assert_eq!(counters.lines.load(Relaxed), 10);
        sink.flush().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), "{\"n\":008}\n{\"n\":009}\n");
        assert_eq!(read(&dir.path().join("r.jsonl.1")), "{\"n\":006}\n{\"n\":007}\n");
        assert_eq!(read(&dir.path().join("r.jsonl.2")), "{\"n\":004}\n{\"n\":005}\n");
        assert!(!dir.path().join("r.jsonl.3").exists());
    }

    fn config(path: PathBuf) -> JsonlConfig {
        JsonlConfig { path, fsync: FsyncPolicy::Always, fsync_interval_ms: 1000, rotate_bytes: 0, keep: 5 }
    }

    #[test]
    fn a_torn_last_line_left_by_a_crash_is_cut_when_the_file_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, "{\"n\":1}\n{\"n\":2}\n{\"n\":3,\"la").unwrap();
        let mut sink = JsonlSink::open(&config(path.clone()), Arc::default()).unwrap();
        sink.write("{\"n\":3}").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n");
        // No newline at all: the whole file was one torn line.
        std::fs::write(&path, "x".repeat(10_000)).unwrap();
        JsonlSink::open(&config(path.clone()), Arc::default()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    #[test]
    fn a_write_cut_short_by_a_full_disk_leaves_whole_lines_and_its_retry_writes_it_once() {
        let disk = match SmallDisk::mount(256 << 10) {
            Ok(disk) => disk,
            Err(why) => return eprintln!("skipped: {why}"),
        };
        let path = disk.path().join("r.jsonl");
        let counters = Arc::new(JsonlCounters::default());
        let mut sink = JsonlSink::open(&config(path.clone()), counters.clone()).unwrap();
        sink.write("{\"n\":1}").unwrap();
        // The rest of the disk filled: the next line fits only in part of the file's page.
        let filler = fill(&disk);
        let long = format!("{{\"n\":2,\"pad\":\"{}\"}}", "p".repeat(20_000));
        let err = sink.write(&long).unwrap_err();
        assert_eq!(err.source.raw_os_error(), Some(libc::ENOSPC), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":1}\n", "a reader sees only whole lines");
        // Space back: the caller's retry writes the line once.
        std::fs::remove_file(&filler).unwrap();
        sink.write(&long).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{{\"n\":1}}\n{long}\n"),
            "nothing between"
        );
        assert_eq!(counters.lines.load(Relaxed), 2);
    }
}
