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

use super::job::{Finished, Job, Part, Payload};
use super::metrics::SourceMetrics;
use super::model_slot::{Loaded, ModelSlot};
use super::queue::BoundedQueue;
use crate::card::InputSpec;
use crate::classify::{Classifier, InputError, InputValue, Outcome};
use crate::preprocess::decode::{DecodeError, read_file_limited};
use crate::preprocess::{Frame, PixelFormat, Samples};
use crate::record::{ByInput, Presence, SampleFields};
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
    /// The value of a one-input model's input (read or converted) failed: as it said.
    #[error("{0}")]
    Value(String),
    /// The value of one input of a model with several failed.
    #[error("input {input:?}: {error}")]
    OfInput { input: String, error: String },
    #[error(
        "no value for input {inputs} in this frame; the model needs it in every frame (it is not optional)"
    )]
    Missing { inputs: String },
    #[error("{input:?} is not an input of the model; its inputs are {names}")]
    UnknownInput { input: String, names: String },
    /// The source could not make a frame of what arrived.
    #[error("{0}")]
    Unusable(String),
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
    /// Boxed: a result line is large beside a retry.
    Done(Box<Finished>),
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
        // Camera pixels, one buffer per part of a frame, reused frame after frame.
        let mut buffers = Vec::new();
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
            match self.process(job, &mut current, &mut buffers) {
                Processed::Done(finished) => {
                    if backoff.is_some() {
                        self.retry_ended();
                    }
                    if self.out.send(*finished).is_err() {
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

    fn process(&self, job: Job, current: &mut Current, buffers: &mut Vec<Vec<u8>>) -> Processed {
        // Every file is read before anything else, so that a read failing for a reason
        // outside the file retries the whole frame.
        let mut read: Vec<Option<Result<Vec<u8>, DecodeError>>> = Vec::with_capacity(job.parts.len());
        if job.unusable.is_none() {
            for part in &job.parts {
                let Payload::File(path) = &part.payload else {
                    read.push(None);
                    continue;
                };
                let mut bytes = Vec::new();
                match read_file_limited(path, current.classifier.image_limits(), &mut bytes) {
                    Err(DecodeError::Io(e)) if is_transient(&e) => return Processed::Retry(job, e),
                    result => read.push(Some(result.map(|()| bytes))),
                }
            }
        }
        let files = job.files();
        let Job { source, name, ts_ms, arrived, parts, unusable, reply } = job;
        if buffers.len() < parts.len() {
            buffers.resize_with(parts.len(), Vec::new);
        }
        // Latency as `run` measures it: from the values in memory (camera conversion
        // included) to the verdict.
        let start = Instant::now();
        let (held, outcome) = match unusable {
            Some(why) => (Vec::new(), Err(FrameError::Unusable(why))),
            None => {
                let held = hold(parts, read, buffers);
                let outcome = classify_held(&mut current.classifier, &held, buffers, start);
                (held, outcome)
            }
        };
        let card = &current.loaded.model.card;
        let inputs: Vec<&InputSpec> = current.classifier.inputs().collect();
        let several = inputs.len() > 1;
        // The set the decision was calibrated by, as `run` names it.
        let subset = outcome.as_ref().ok().map(|o| card.subset_name(&o.decision.present.names(card)));
        let sample = match &outcome {
            Err(FrameError::Unusable(_)) => None,
            _ => several.then(|| sample_fields(&inputs, &held, subset.clone())),
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
            sample,
            body,
            model_sha256: sha,
        };
        let elapsed = arrived.elapsed();
        let m = &self.counters;
        match (line.label(), line.verdict()) {
            (Some(label), Some(verdict)) => {
                m.observe(elapsed, label, verdict.as_str(), subset.as_deref().unwrap_or_default())
            }
            _ => {
                m.errors.fetch_add(1, Relaxed);
            }
        }
        let is_review = line.verdict() == Some(crate::decide::Verdict::Review);
        let review = if self.keep_review_frames && is_review {
            review_images(held, buffers, several)
        } else {
            Vec::new()
        };
        Processed::Done(Box::new(Finished { source, line, elapsed, review, files, reply }))
    }
}

/// One part of a frame, made ready for the classifier.
struct Held {
    input: String,
    origin: String,
    value: Result<Value, FrameError>,
}

enum Value {
    /// An encoded image: a file's bytes or an upload.
    Encoded(Vec<u8>),
    /// A camera frame converted into the buffer of the part's index.
    Pixels { width: usize, height: usize, format: PixelFormat },
}

/// The parts with their files' bytes (`read`, by part) and their camera frames converted
/// (into `buffers`, by part).
fn hold(
    parts: Vec<Part>,
    read: Vec<Option<Result<Vec<u8>, DecodeError>>>,
    buffers: &mut [Vec<u8>],
) -> Vec<Held> {
    let mut read = read.into_iter();
    parts
        .into_iter()
        .zip(buffers.iter_mut())
        .map(|(Part { input, origin, payload }, buffer)| {
            let file = read.next().flatten();
            let value = match payload {
                Payload::Encoded(bytes) => Ok(Value::Encoded(bytes)),
                Payload::File(_) => match file {
                    Some(Ok(bytes)) => Ok(Value::Encoded(bytes)),
                    Some(Err(e)) => Err(e.into()),
                    // Every file part was read before the frame was held.
                    None => Err(FrameError::Unusable("not read".into())),
                },
                Payload::Camera(raw) => {
                    camera::convert(&raw, buffer).map_err(FrameError::from).map(|format| Value::Pixels {
                        width: raw.width as usize,
                        height: raw.height as usize,
                        format,
                    })
                }
            };
            Held { input, origin, value }
        })
        .collect()
}

/// The card inputs' values from the frame's parts, in the card's order, then the chain. A
/// missing optional input is absent; a missing required one, or a part for no input of the
/// model, is the frame's error.
fn classify_held(
    classifier: &mut Classifier,
    held: &[Held],
    buffers: &[Vec<u8>],
    start: Instant,
) -> Result<Outcome, FrameError> {
    let inputs: Vec<&InputSpec> = classifier.inputs().collect();
    if let Some(stray) = held.iter().find(|h| !inputs.iter().any(|i| i.name == h.input)) {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(FrameError::UnknownInput { input: stray.input.clone(), names: names.join(", ") });
    }
    let missing: Vec<&str> = inputs
        .iter()
        .filter(|i| !i.optional && !held.iter().any(|h| h.input == i.name))
        .map(|i| i.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(FrameError::Missing { inputs: missing.join(", ") });
    }
    let several = inputs.len() > 1;
    let mut frames: Vec<Option<Frame>> = Vec::with_capacity(held.len());
    for (h, buffer) in held.iter().zip(buffers) {
        frames.push(match &h.value {
            Ok(Value::Pixels { width, height, format }) => {
                Some(Frame { width: *width, height: *height, format: *format, samples: Samples::U8(buffer) })
            }
            Ok(Value::Encoded(_)) => None,
            Err(e) if several => {
                return Err(FrameError::OfInput { input: h.input.clone(), error: e.to_string() });
            }
            Err(e) => return Err(FrameError::Value(e.to_string())),
        });
    }
    let values: Vec<InputValue> = inputs
        .iter()
        .map(|spec| match held.iter().position(|h| h.input == spec.name) {
            None => InputValue::Absent,
            Some(k) => match (&held[k].value, &frames[k]) {
                (Ok(Value::Encoded(bytes)), _) => InputValue::Encoded(bytes),
                (_, Some(frame)) => InputValue::Frame(frame),
                // Every failed value returned above.
                _ => InputValue::Absent,
            },
        })
        .collect();
    let (decision, _) = classifier.classify(&values)?;
    Ok(Outcome { decision, latency: start.elapsed() })
}

/// What a line of a model with several inputs adds: where each input's value came from
/// (`null` where the frame had none) and whether it was present, in the card's order.
fn sample_fields(inputs: &[&InputSpec], held: &[Held], subset: Option<String>) -> SampleFields {
    let of = |name: &str| held.iter().find(|h| h.input == name);
    SampleFields {
        files: ByInput(
            inputs.iter().map(|i| (i.name.clone(), of(&i.name).map(|h| h.origin.clone()))).collect(),
        ),
        modalities: ByInput(
            inputs
                .iter()
                .map(|i| {
                    (
                        i.name.clone(),
                        if of(&i.name).is_some() { Presence::Present } else { Presence::Missing },
                    )
                })
                .collect(),
        ),
        subset,
        expected: None,
    }
}

/// The frame as a person will see it: each input's image as it came (files, uploads) or
/// encoded (camera frames, only now that a person will look at them).
fn review_images(held: Vec<Held>, buffers: &[Vec<u8>], several: bool) -> Vec<ReviewImage> {
    held.into_iter()
        .zip(buffers)
        .filter_map(|(h, buffer)| {
            let input = several.then_some(h.input);
            match h.value.ok()? {
                Value::Encoded(bytes) => Some(ReviewImage { input, extension: extension_of(&bytes), bytes }),
                Value::Pixels { width, height, format } => {
                    let (bytes, extension) = png_of(buffer, width as u32, height as u32, format)?;
                    Some(ReviewImage { input, bytes, extension })
                }
            }
        })
        .collect()
}

/// The retry due first, if one is due.
fn take_due(retries: &mut Vec<Retry>) -> Option<Retry> {
    let now = Instant::now();
    let (i, _) = retries.iter().enumerate().filter(|(_, r)| r.due <= now).min_by_key(|(_, r)| r.due)?;
    Some(retries.swap_remove(i))
}

fn png_of(pixels: &[u8], width: u32, height: u32, format: PixelFormat) -> Option<(Vec<u8>, &'static str)> {
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
    Some((png, "png"))
}

fn extension_of(bytes: &[u8]) -> &'static str {
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Png) => "png",
        Ok(image::ImageFormat::Jpeg) => "jpg",
        Ok(image::ImageFormat::Bmp) => "bmp",
        _ => "bin",
    }
}
