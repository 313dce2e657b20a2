//! What travels from a source to a worker (a `Job`) and from a worker to the sinks
//! (a `Finished`).

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

pub struct Job {
    pub source: usize,
    /// File name, `upload`, or the camera device: the result's `file`.
    pub name: String,
    pub ts_ms: u64,
    pub arrived: Instant,
    pub payload: Payload,
    pub reply: Option<oneshot::Sender<Reply>>,
}

impl Job {
    pub fn new(source: usize, name: String, payload: Payload, reply: Option<oneshot::Sender<Reply>>) -> Job {
        Job { source, name, ts_ms: now_ms(), arrived: Instant::now(), payload, reply }
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
    pub review: Option<ReviewImage>,
    /// The folder file this result is about, moved or deleted once the result is written.
    pub file: Option<PathBuf>,
    pub reply: Option<oneshot::Sender<Reply>>,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
