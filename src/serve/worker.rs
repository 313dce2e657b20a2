//! An inference worker: takes jobs from its source's queue, classifies them with its own
//! engine, and hands each result to the dispatcher. It picks up a reloaded model between
//! frames, never during one. A folder file whose read fails for a reason outside the file
//! (descriptors exhausted, an I/O error) gets no result: it stays where it is and is read
//! again with back-off, between other frames.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use image::ImageEncoder;

use super::job::{Finished, Job, Payload};
use super::metrics::SourceMetrics;
use super::model_slot::{Loaded, ModelSlot};
use super::queue::BoundedQueue;
use crate::classify::{Classifier, InputError, Outcome};
use crate::preprocess::decode::{DecodeError, read_file_limited};
use crate::preprocess::{Frame, PixelFormat, Samples};
use crate::sink::review::ReviewImage;
use crate::sink::{ResultBody, ResultLine};
use crate::source::camera::{self, ConvertError};
use crate::source::retry::{Backoff, is_transient};

/// Why a frame got no verdict; its result line carries the message as `error`.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The folder file could not be read (gone, too large, unreadable).
    #[error(transparent)]
    Read(#[from] DecodeError),
    /// Not an image the model can take.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A camera frame that does not convert to pixels.
    #[error(transparent)]
    Camera(#[from] ConvertError),
}

pub struct Worker {
    pub source: usize,
    pub source_name: String,
    pub queue: Arc<BoundedQueue<Job>>,
    pub slot: Arc<ModelSlot>,
    pub out: Sender<Finished>,
    pub counters: Arc<SourceMetrics>,
    /// Keep the frame of `review` verdicts for the review sink.
    pub keep_review_frames: bool,
}

/// A folder file to read again.
struct Retry {
    due: Instant,
    backoff: Backoff,
    job: Job,
    error: std::io::Error,
}

enum Processed {
    Done(Finished),
    /// The file could not be read for a reason outside it.
    Retry(Job, std::io::Error),
}

struct Current {
    generation: u64,
    loaded: Arc<Loaded>,
    classifier: Classifier,
}

impl Worker {
    pub fn run(self) {
        let mut current = match self.slot.classifier() {
            Ok((generation, loaded, classifier)) => Current { generation, loaded, classifier },
            Err(e) => {
                // The slot ran this model at start, so this is unexpected; say so and
                // leave the frames to the other workers rather than losing them here.
                tracing::error!("source {}: worker cannot start: {e}", self.source_name);
                return;
            }
        };
        let mut rgb = Vec::new();
        let mut retries: Vec<Retry> = Vec::new();
        loop {
            let (job, backoff) = match take_due(&mut retries) {
                Some(retry) => (retry.job, Some(retry.backoff)),
                None => {
                    let wait = retries
                        .iter()
                        .map(|r| r.due.saturating_duration_since(Instant::now()))
                        .fold(Duration::from_millis(250), Duration::min);
                    let Some(job) = self.queue.pop(wait) else {
                        if self.queue.is_closed_and_empty() {
                            self.abandon(retries);
                            return;
                        }
                        continue;
                    };
                    (job, None)
                }
            };
            self.counters.queue_depth.store(self.queue.len() as u64, Relaxed);
            if self.slot.generation() != current.generation {
                match self.slot.classifier() {
                    Ok((generation, loaded, classifier)) => {
                        current = Current { generation, loaded, classifier }
                    }
                    Err(e) => tracing::error!("source {}: keeping the previous model: {e}", self.source_name),
                }
            }
            match self.process(job, &mut current, &mut rgb) {
                Processed::Done(finished) => {
                    if backoff.is_some() {
                        self.retry_ended();
                    }
                    if self.out.send(finished).is_err() {
                        self.abandon(retries);
                        return;
                    }
                }
                Processed::Retry(job, error) => {
                    self.counters.read_retries.fetch_add(1, Relaxed);
                    if backoff.is_none() {
                        self.retry_started(&job, &error);
                    }
                    let mut backoff = backoff.unwrap_or_default();
                    retries.push(Retry { due: Instant::now() + backoff.next_wait(), backoff, job, error });
                }
            }
        }
    }

    /// One line when the first file of this source starts waiting for a retry, not one
    /// per retry.
    fn retry_started(&self, job: &Job, error: &std::io::Error) {
        if self.counters.read_retry_pending.fetch_add(1, Relaxed) == 0 {
            tracing::warn!(
                "source {}: {}: cannot read: {error}; it stays in the folder and is read again with \
                 back-off (so are other files failing so, logged once until all are read)",
                self.source_name,
                job.name
            );
        }
    }

    fn retry_ended(&self) {
        if self.counters.read_retry_pending.fetch_sub(1, Relaxed) == 1 {
            tracing::info!("source {}: every file that could not be read is now read", self.source_name);
        }
    }

    /// At shutdown: the files still waiting stay in the folder, for the next start.
    fn abandon(&self, retries: Vec<Retry>) {
        let Some(first) = retries.first() else { return };
        tracing::warn!(
            "source {}: {} file(s) still cannot be read ({}: {}); left in the folder",
            self.source_name,
            retries.len(),
            first.job.name,
            first.error
        );
        self.counters.read_retry_pending.fetch_sub(retries.len() as u64, Relaxed);
    }

    fn process(&self, job: Job, current: &mut Current, rgb: &mut Vec<u8>) -> Processed {
        let Job { source, name, ts_ms, arrived, payload, reply } = job;
        let mut review_bytes: Option<ReviewImage> = None;
        let mut camera_frame = None;
        let mut file = None;
        let outcome: Result<Outcome, FrameError> = match payload {
            Payload::File(path) => {
                let mut bytes = Vec::new();
                let read = match read_file_limited(&path, current.classifier.image_limits(), &mut bytes) {
                    Err(DecodeError::Io(e)) if is_transient(&e) => {
                        let job = Job { source, name, ts_ms, arrived, payload: Payload::File(path), reply };
                        return Processed::Retry(job, e);
                    }
                    read => read.map(|()| bytes).map_err(FrameError::from),
                };
                file = Some(path);
                read.and_then(|bytes| {
                    let outcome = current.classifier.classify_encoded(&bytes).map_err(FrameError::from);
                    review_bytes = Some(ReviewImage { extension: extension_of(&bytes), bytes });
                    outcome
                })
            }
            Payload::Encoded(bytes) => {
                let outcome = current.classifier.classify_encoded(&bytes).map_err(FrameError::from);
                review_bytes = Some(ReviewImage { extension: extension_of(&bytes), bytes });
                outcome
            }
            Payload::Camera(raw) => {
                classify_camera(&mut current.classifier, &raw, rgb).map(|(outcome, format)| {
                    camera_frame = Some((raw.width, raw.height, format));
                    outcome
                })
            }
        };
        let engine = current.classifier.engine_kind().as_str();
        let (body, sha) = match &outcome {
            Ok(o) => (
                ResultBody::decided(o, current.classifier.labels(), engine),
                Some(current.loaded.sha256.clone()),
            ),
            Err(e) => (ResultBody::Failed { error: e.to_string() }, None),
        };
        let line = ResultLine {
            seq: None,
            ts_ms,
            source: self.source_name.clone(),
            file: name,
            body,
            model_sha256: sha,
        };
        let elapsed = arrived.elapsed();
        let m = &self.counters;
        match (line.label(), line.verdict()) {
            (Some(label), Some(verdict)) => m.observe(elapsed, label, verdict.as_str()),
            _ => {
                m.errors.fetch_add(1, Relaxed);
            }
        }
        let is_review = line.verdict() == Some(crate::decide::Verdict::Review);
        let review = if self.keep_review_frames && is_review {
            review_bytes.or_else(|| camera_frame.and_then(|(w, h, f)| png_of(rgb, w, h, f)))
        } else {
            None
        };
        Processed::Done(Finished { source, line, elapsed, review, file, reply })
    }
}

/// The retry due first, if one is due.
fn take_due(retries: &mut Vec<Retry>) -> Option<Retry> {
    let now = Instant::now();
    let (i, _) = retries.iter().enumerate().filter(|(_, r)| r.due <= now).min_by_key(|(_, r)| r.due)?;
    Some(retries.swap_remove(i))
}

fn classify_camera(
    classifier: &mut Classifier,
    raw: &camera::RawFrame,
    rgb: &mut Vec<u8>,
) -> Result<(Outcome, PixelFormat), FrameError> {
    let start = Instant::now();
    let format = camera::convert(raw, rgb)?;
    let frame =
        Frame { width: raw.width as usize, height: raw.height as usize, format, samples: Samples::U8(rgb) };
    let decision = classifier.classify_frame(&frame)?;
    Ok((Outcome { decision, latency: start.elapsed() }, format))
}

/// Camera frames are only encoded when a person will look at them.
fn png_of(pixels: &[u8], width: u32, height: u32, format: PixelFormat) -> Option<ReviewImage> {
    let color = match format {
        PixelFormat::Gray => image::ExtendedColorType::L8,
        PixelFormat::Rgb => image::ExtendedColorType::Rgb8,
        PixelFormat::Rgba => image::ExtendedColorType::Rgba8,
        PixelFormat::GrayAlpha => image::ExtendedColorType::La8,
    };
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(Cursor::new(&mut png))
        .write_image(pixels, width, height, color)
        .ok()?;
    Some(ReviewImage { bytes: png, extension: "png" })
}

fn extension_of(bytes: &[u8]) -> &'static str {
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Png) => "png",
        Ok(image::ImageFormat::Jpeg) => "jpg",
        Ok(image::ImageFormat::Bmp) => "bmp",
        _ => "bin",
    }
}
