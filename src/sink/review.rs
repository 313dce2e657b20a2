//! Frames a person should look at: each `review` verdict saves the frame and its result
//! (`<ts>-<n>-<source>-<label>.<ext>` + `.json`) into one folder, oldest deleted first
//! beyond a count and a byte limit. A frame of a model with several inputs keeps one image
//! per input present, named so that they pair: `<base>.<input>.<ext>` beside `<base>.json`.

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

/// One input's image as it arrived (an image file's bytes) or re-encoded (a camera frame).
pub struct ReviewImage {
    /// The card input it is, for a model with several (named in the file name); `None` for
    /// a model with one.
    pub input: Option<String>,
    pub bytes: Vec<u8>,
    pub extension: &'static str,
}

/// One saved frame: its result sidecar and its images.
struct Saved {
    sidecar: PathBuf,
    images: Vec<PathBuf>,
    /// Of the images and the result.
    bytes: u64,
}

pub struct ReviewSink {
    config: ReviewConfig,
    counters: Arc<ReviewCounters>,
    /// Oldest first.
    saved: VecDeque<Saved>,
    bytes: u64,
    counter: u64,
}

impl ReviewSink {
    pub fn open(config: &ReviewConfig, counters: Arc<ReviewCounters>) -> Result<Self, ReviewError> {
        let err = |source| ReviewError { path: config.dir.clone(), source };
        std::fs::create_dir_all(&config.dir).map_err(err)?;
        let paths: Vec<PathBuf> =
            std::fs::read_dir(&config.dir).map_err(err)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        let mut by_sidecar: std::collections::BTreeMap<PathBuf, Vec<PathBuf>> = Default::default();
        for image in paths.iter().filter(|p| p.extension().is_some_and(|e| e != "json")) {
            if let Some(sidecar) = sidecar_of(image) {
                by_sidecar.entry(sidecar).or_default().push(image.clone());
            }
        }
        // Names start with the arrival time, zero-padded: name order is age order.
        let saved: VecDeque<Saved> = by_sidecar
            .into_iter()
            .map(|(sidecar, images)| {
                let bytes = file_size(&sidecar) + images.iter().map(|i| file_size(i)).sum::<u64>();
                Saved { sidecar, images, bytes }
            })
            .collect();
        let bytes = saved.iter().map(|s| s.bytes).sum();
        let mut sink = ReviewSink { config: config.clone(), counters, saved, bytes, counter: 0 };
        sink.enforce_limits();
        Ok(sink)
    }

    /// Saves a frame's images (one per input present) and its result; the result's path.
    pub fn save(
        &mut self,
        ts_ms: u64,
        source: &str,
        label: &str,
        images: &[ReviewImage],
        result_json: &str,
    ) -> Result<PathBuf, ReviewError> {
        let saved = self.write(ts_ms, source, label, images, result_json);
        let counter = if saved.is_ok() { &self.counters.saved } else { &self.counters.errors };
        counter.fetch_add(1, Relaxed);
        saved
    }

    fn write(
        &mut self,
        ts_ms: u64,
        source: &str,
        label: &str,
        images: &[ReviewImage],
        result_json: &str,
    ) -> Result<PathBuf, ReviewError> {
        self.counter += 1;
        let base = format!("{ts_ms:014}-{:06}-{source}-{}", self.counter % 1_000_000, file_safe(label));
        let sidecar = self.config.dir.join(format!("{base}.json"));
        let mut entry =
            Saved { sidecar: sidecar.clone(), images: Vec::new(), bytes: result_json.len() as u64 };
        let written = images.iter().try_for_each(|image| {
            let name = match &image.input {
                Some(input) => format!("{base}.{}.{}", file_safe(input), image.extension),
                None => format!("{base}.{}", image.extension),
            };
            let path = self.config.dir.join(name);
            std::fs::write(&path, &image.bytes)
                .map_err(|source| ReviewError { path: path.clone(), source })?;
            entry.images.push(path);
            entry.bytes += image.bytes.len() as u64;
            Ok(())
        });
        let written = written.and_then(|()| {
            std::fs::write(&sidecar, result_json.as_bytes())
                .map_err(|source| ReviewError { path: sidecar.clone(), source })
        });
        // What was written counts against the limits even when the rest failed, so a
        // half-saved frame is deleted in its turn rather than left behind.
        self.bytes += entry.bytes;
        self.saved.push_back(entry);
        self.enforce_limits();
        written.map(|()| sidecar)
    }

    fn enforce_limits(&mut self) {
        while self.saved.len() > self.config.max_files
            || (self.bytes > self.config.max_bytes && self.saved.len() > 1)
        {
            let Some(Saved { sidecar, images, bytes }) = self.saved.pop_front() else { break };
            for p in images.iter().chain([&sidecar]) {
                if let Err(e) = std::fs::remove_file(p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!("review folder: cannot delete {}: {e}", p.display());
                }
            }
            self.bytes = self.bytes.saturating_sub(bytes);
        }
    }
}

/// A label or input name as part of a file name.
fn file_safe(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// The result beside a saved image: `<base>.json` for `<base>.<ext>` or `<base>.<input>.<ext>`,
/// when it exists. (Source names may hold dots, so both are looked for.)
fn sidecar_of(image: &Path) -> Option<PathBuf> {
    let one = image.with_extension("json");
    if one.exists() {
        return Some(one);
    }
    let several = image.with_extension("").with_extension("json");
    several.exists().then_some(several)
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
        let image = ReviewImage { input: None, bytes: vec![1, 2, 3], extension: "png" };
        for ts in 1..=5 {
            sink.save(ts, "cam", "dent", std::slice::from_ref(&image), "{}").unwrap();
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
        let image = ReviewImage { input: None, bytes: vec![0; 98], extension: "jpg" };
        for ts in 1..=4 {
            sink.save(ts, "cam", "ok", std::slice::from_ref(&image), "{}").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4, "two frames of 100 bytes fit in 250");
    }

    #[test]
    fn a_frame_of_several_inputs_keeps_each_image_beside_one_result_and_goes_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let config = ReviewConfig { dir: dir.path().to_owned(), max_files: 1, max_bytes: 1 << 20 };
        let mut sink = ReviewSink::open(&config, Arc::default()).unwrap();
        let frame =
            |input: &str| ReviewImage { input: Some(input.into()), bytes: vec![7; 10], extension: "png" };
        // A dot in the source name must not confuse reopening.
        sink.save(1, "line.1", "dent", &[frame("rgb"), frame("height")], "{}").unwrap();
        let names = |dir: &Path| {
            let mut n: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            n.sort();
            n
        };
        assert_eq!(
            names(dir.path()),
            [
                "00000000000001-000001-line.1-dent.height.png",
                "00000000000001-000001-line.1-dent.json",
                "00000000000001-000001-line.1-dent.rgb.png"
            ]
        );
        let mut sink = ReviewSink::open(&config, Arc::default()).unwrap();
        assert_eq!(sink.bytes, 22, "both images and the result are one saved frame");
        sink.save(2, "line.1", "ok", &[frame("rgb")], "{}").unwrap();
        let left = names(dir.path());
        assert_eq!(left.len(), 2, "the older frame went whole: {left:?}");
        assert!(left.iter().all(|n| n.starts_with("00000000000002-")), "{left:?}");
    }
}
