//! The results file: one JSON line per frame, appended; fsync as configured; rotated by
//! size (`results.jsonl` → `results.jsonl.1` → ... up to `keep`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Deserialize;

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

/// What the sink did, for `/metrics`.
#[derive(Debug, Default)]
pub struct JsonlCounters {
    pub lines: AtomicU64,
    /// Failed writes (the caller keeps the line and tries again).
    pub errors: AtomicU64,
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
}

impl JsonlSink {
    pub fn open(config: &JsonlConfig, counters: Arc<JsonlCounters>) -> Result<Self, JsonlError> {
        let err = |source| JsonlError { path: config.path.clone(), source };
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = open_append(&config.path).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        Ok(JsonlSink {
            config: config.clone(),
            counters,
            file,
            size,
            last_sync: Instant::now(),
            unsynced: false,
        })
    }

    /// Appends one line (without its newline). A failed write leaves the file as it was
    /// as far as the caller knows: the caller keeps the line and tries again.
    pub fn write(&mut self, line: &str) -> Result<(), JsonlError> {
        let written = self.append(line);
        let counter = if written.is_ok() { &self.counters.lines } else { &self.counters.errors };
        counter.fetch_add(1, Relaxed);
        written
    }

    fn append(&mut self, line: &str) -> Result<(), JsonlError> {
        let len = line.len() as u64 + 1;
        if self.config.rotate_bytes > 0 && self.size > 0 && self.size + len > self.config.rotate_bytes {
            self.rotate()?;
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.file.write_all(&buf).map_err(|source| self.error(source))?;
        self.size += len;
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

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!((counters.lines.load(Relaxed), counters.errors.load(Relaxed)), (10, 0));
        sink.flush().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), "{\"n\":008}\n{\"n\":009}\n");
        assert_eq!(read(&dir.path().join("r.jsonl.1")), "{\"n\":006}\n{\"n\":007}\n");
        assert_eq!(read(&dir.path().join("r.jsonl.2")), "{\"n\":004}\n{\"n\":005}\n");
        assert!(!dir.path().join("r.jsonl.3").exists());
    }
}
