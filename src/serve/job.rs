//! What travels from a source to a worker (a `Job`: one frame, one part per card input that
//! has a value) and from a worker to the sinks (a `Finished`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::sink::ResultLine;
use crate::sink::review::ReviewImage;
use crate::source::camera::RawFrame;

pub enum Payload {
    /// A file a folder source saw arrive; read by the worker.
    File(PathBuf),
    /// An uploaded image.
    Encoded(Vec<u8>),
    Camera(RawFrame),
}

/// The value one card input has in a frame.
pub struct Part {
    /// The card input it is for.
    pub input: String,
    /// Where it came from, for the result's `files`: the file's path, the upload's part
    /// file name, the camera device.
    pub origin: String,
    pub payload: Payload,
}

/// The answer an upload waits for: the result line as JSON, or why there is none.
pub type Reply = Result<ReplyOk, Refusal>;

/// Why a job was never processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("dropped: a newer frame took its place in the full queue")]
    Displaced,
    #[error("dropped: queue full")]
    QueueFull,
    #[error("not queued: the daemon is shutting down")]
    ShuttingDown,
    #[error("not processed: no inference worker was left for its source")]
    NoWorker,
}

pub struct ReplyOk {
    pub json: Arc<String>,
    /// False when the line carries an `error` (the upload was not a usable image).
    pub decided: bool,
}

/// One frame: a value for each card input that has one (a missing input has no part).
pub struct Job {
    pub source: usize,
    /// File name (a paired folder frame: its folder and stem), `upload`, or the camera
    /// device: the result's `file`.
    pub name: String,
    pub ts_ms: u64,
    pub arrived: Instant,
    pub parts: Vec<Part>,
    /// Set when the source already knows the frame cannot be classified (a folder file whose
    /// name says no input of the model): this is its error result, and its files are let go
    /// like any other.
    pub unusable: Option<String>,
    pub reply: Option<oneshot::Sender<Reply>>,
}

impl Job {
    pub fn new(source: usize, name: String, parts: Vec<Part>, reply: Option<oneshot::Sender<Reply>>) -> Job {
        Job { source, name, ts_ms: now_ms(), arrived: Instant::now(), parts, unusable: None, reply }
    }

    /// The folder files this frame is made of, let go once its result is written.
    pub fn files(&self) -> Vec<PathBuf> {
        self.parts
            .iter()
            .filter_map(|p| match &p.payload {
                Payload::File(path) => Some(path.clone()),
                _ => None,
            })
            .collect()
    }

    /// Tells whoever waits that this job will never be processed.
    pub fn refuse(self, why: Refusal) {
        if let Some(reply) = self.reply {
            let _ = reply.send(Err(why));
        }
    }
}

pub struct Finished {
    pub source: usize,
    pub line: ResultLine,
    /// Arrival to verdict, queue wait included.
    pub elapsed: Duration,
    /// The frame for the review sink: one image per input present (kept only for `review`).
    pub review: Vec<ReviewImage>,
    /// The folder files this result is about, moved or deleted once the result is written.
    pub files: Vec<PathBuf>,
    pub reply: Option<oneshot::Sender<Reply>>,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
