//! Frames a person should look at: each `review` verdict saves the frame and its result
//! (`<ts>-<n>-<source>-<label>.<ext>` + `.json`) into one folder, oldest deleted first
//! beyond a count and a byte limit.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Deserialize;

use super::{InvalidKey, invalid};

/// `[sinks.review]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewConfig {
    pub dir: PathBuf,
    /// Oldest review frames are deleted beyond this count...
    #[serde(default = "default_review_files")]
    pub max_files: usize,
    /// ...or beyond this many bytes in all.
    #[serde(default = "default_review_bytes")]
    pub max_bytes: u64,
}

fn default_review_files() -> usize {
    10_000
}
fn default_review_bytes() -> u64 {
    1 << 30
}

impl ReviewConfig {
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if self.max_files == 0 || self.max_bytes == 0 {
            return invalid("max_files", "max_files and max_bytes must be > 0");
        }
        Ok(())
    }
}

/// What the sink did, for `/metrics`.
#[derive(Debug, Default)]
pub struct ReviewCounters {
    pub saved: AtomicU64,
    pub errors: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("review folder {path}: {source}")]
pub struct ReviewError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The frame as it arrived (an image file's bytes) or re-encoded (a camera frame).
pub struct ReviewImage {
    pub bytes: Vec<u8>,
    pub extension: &'static str,
}

pub struct ReviewSink {
    config: ReviewConfig,
    counters: Arc<ReviewCounters>,
    /// Saved frames oldest first: (image path, bytes of image + result).
    saved: VecDeque<(PathBuf, u64)>,
    bytes: u64,
    counter: u64,
}

impl ReviewSink {
    pub fn open(config: &ReviewConfig, counters: Arc<ReviewCounters>) -> Result<Self, ReviewError> {
        let err = |source| ReviewError { path: config.dir.clone(), source };
        std::fs::create_dir_all(&config.dir).map_err(err)?;
        let mut images: Vec<PathBuf> = std::fs::read_dir(&config.dir)
            .map_err(err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e != "json") && sidecar(p).exists())
            .collect();
        // Names start with the arrival time, zero-padded: name order is age order.
        images.sort();
        let saved: VecDeque<(PathBuf, u64)> = images
            .into_iter()
            .map(|p| {
                let size = file_size(&p) + file_size(&sidecar(&p));
                (p, size)
            })
            .collect();
        let bytes = saved.iter().map(|(_, b)| b).sum();
        let mut sink = ReviewSink { config: config.clone(), counters, saved, bytes, counter: 0 };
        sink.enforce_limits();
        Ok(sink)
    }

    pub fn save(
        &mut self,
        ts_ms: u64,
        source: &str,
        label: &str,
        image: &ReviewImage,
        result_json: &str,
    ) -> Result<PathBuf, ReviewError> {
        let saved = self.write(ts_ms, source, label, image, result_json);
        let counter = if saved.is_ok() { &self.counters.saved } else { &self.counters.errors };
        counter.fetch_add(1, Relaxed);
        saved
    }

    fn write(
        &mut self,
        ts_ms: u64,
        source: &str,
        label: &str,
        image: &ReviewImage,
        result_json: &str,
    ) -> Result<PathBuf, ReviewError> {
        self.counter += 1;
        let safe_label: String =
            label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let name =
            format!("{ts_ms:014}-{:06}-{source}-{safe_label}.{}", self.counter % 1_000_000, image.extension);
        let path = self.config.dir.join(name);
        let err = |source| ReviewError { path: path.clone(), source };
        std::fs::write(&path, &image.bytes).map_err(err)?;
        std::fs::write(sidecar(&path), result_json.as_bytes()).map_err(err)?;
        let size = image.bytes.len() as u64 + result_json.len() as u64;
        self.saved.push_back((path.clone(), size));
        self.bytes += size;
        self.enforce_limits();
        Ok(path)
    }

    fn enforce_limits(&mut self) {
        while self.saved.len() > self.config.max_files
            || (self.bytes > self.config.max_bytes && self.saved.len() > 1)
        {
            let Some((path, size)) = self.saved.pop_front() else { break };
            for p in [sidecar(&path), path] {
                if let Err(e) = std::fs::remove_file(&p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!("review folder: cannot delete {}: {e}", p.display());
                }
            }
            self.bytes = self.bytes.saturating_sub(size);
        }
    }
}

fn sidecar(image: &Path) -> PathBuf {
    image.with_extension("json")
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_within_the_count_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let config = ReviewConfig { dir: dir.path().to_owned(), max_files: 3, max_bytes: 1 << 20 };
        let counters = Arc::new(ReviewCounters::default());
        let mut sink = ReviewSink::open(&config, counters.clone()).unwrap();
        let image = ReviewImage { bytes: vec![1, 2, 3], extension: "png" };
        for ts in 1..=5 {
            sink.save(ts, "cam", "dent", &image, "{}").unwrap();
        }
        assert_eq!((counters.saved.load(Relaxed), counters.errors.load(Relaxed)), (5, 0));
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 6, "{names:?}");
        assert!(names[0].starts_with("00000000000003-"), "{names:?}");
        let config = ReviewConfig { max_files: 1, ..config };
        ReviewSink::open(&config, Arc::default()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn byte_limit_deletes_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let config = ReviewConfig { dir: dir.path().to_owned(), max_files: 100, max_bytes: 250 };
        let mut sink = ReviewSink::open(&config, Arc::default()).unwrap();
        let image = ReviewImage { bytes: vec![0; 98], extension: "jpg" };
        for ts in 1..=4 {
            sink.save(ts, "cam", "ok", &image, "{}").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4, "two frames of 100 bytes fit in 250");
    }
}
