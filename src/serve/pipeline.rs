//! One source's flow, started and stopped as a unit: the source thread, its bounded
//! queue, its inference workers, its model slot and its counters.
//!
//! Stopping runs in this order, so that nothing waits on a queue no one reads and no
//! accepted frame goes unaccounted for:
//! 1. the shutdown signal stops the source at its next step;
//! 2. the queue closes: a source blocked on a full queue (a folder source whose workers
//!    died) is released, and what it pushes from now on is refused and logged;
//! 3. the workers finish what is queued and exit; then the source thread is joined;
//! 4. whatever is still queued (no worker was left to take it) is refused and logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ServeError;
use super::config::{FolderConfig, SourceConfig, SourceKind};
use super::feed::{FeedInputs, feed_inputs};
use super::http::SourceHandle;
use super::job::{Finished, Job, Part, Payload, Refusal};
use super::metrics::SourceMetrics;
use super::model_slot::ModelSlot;
use super::queue::{BoundedQueue, Pushed};
use super::reload::Target;
use super::shutdown::Shutdown;
use super::worker::Worker;
use crate::source::camera::{self, CameraEvent};
use crate::source::folder_watch::{self, FolderEvent};
use crate::source::stem_pairs::{Paired, StemPairs};
use crate::source::synthetic;

/// What every pipeline is connected to.
pub struct Wiring {
    /// Where workers send results (the dispatcher).
    pub out: Sender<Finished>,
    pub shutdown: Shutdown,
    /// Keep the frame of `review` verdicts for the review sink.
    pub keep_review_frames: bool,
}

pub struct Pipeline {
    name: String,
    /// The card input a single image of this source is (a raw upload's body), when there is
    /// one; the model's inputs must then be named (multipart parts).
    input: Option<String>,
    queue: Arc<BoundedQueue<Job>>,
    slot: Arc<ModelSlot>,
    counters: Arc<SourceMetrics>,
    shutdown: Shutdown,
    /// None for an upload source: the HTTP API pushes into its queue.
    source: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    /// Frames the source delivered after the queue closed.
    not_queued: Arc<AtomicU64>,
}

/// What [`Pipeline::stop`] could not process.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Frames that arrived while shutting down, after the queue closed.
    pub not_queued: u64,
    /// Frames still queued when the last worker had gone.
    pub not_processed: usize,
}

impl Pipeline {
    /// Starts the workers, then the source. `index` is the source's place in the config,
    /// which results carry to the dispatcher.
    pub fn start(
        index: usize,
        config: &SourceConfig,
        slot: Arc<ModelSlot>,
        counters: Arc<SourceMetrics>,
        wiring: &Wiring,
    ) -> Result<Pipeline, ServeError> {
        let feed = feed_inputs(config, &slot.current().model.card).map_err(|message| ServeError::Input {
            index,
            name: config.name.clone(),
            message,
        })?;
        let mut pipeline = Pipeline {
            name: config.name.clone(),
            input: match &feed {
                FeedInputs::One(input) => Some(input.clone()),
                FeedInputs::ByName(_) => None,
            },
            queue: Arc::new(BoundedQueue::new(config.queue, config.drop_policy())),
            slot,
            counters,
            shutdown: wiring.shutdown.clone(),
            source: None,
            workers: Vec::with_capacity(config.workers),
            not_queued: Arc::default(),
        };
        match pipeline.spawn_all(index, config, feed, wiring) {
            Ok(()) => Ok(pipeline),
            Err(e) => {
                pipeline.stop();
                Err(e)
            }
        }
    }

    fn spawn_all(
        &mut self,
        index: usize,
        config: &SourceConfig,
        inputs: FeedInputs,
        wiring: &Wiring,
    ) -> Result<(), ServeError> {
        for w in 0..config.workers {
            let worker = Worker {
                source: index,
                source_name: self.name.clone(),
                queue: self.queue.clone(),
                slot: self.slot.clone(),
                out: wiring.out.clone(),
                counters: self.counters.clone(),
                keep_review_frames: wiring.keep_review_frames,
            };
            self.workers.push(spawn(format!("infer-{}-{w}", self.name), move || worker.run())?);
        }
        let feed = Feed {
            index,
            name: self.name.clone(),
            queue: self.queue.clone(),
            counters: self.counters.clone(),
            not_queued: self.not_queued.clone(),
        };
        let stop = self.shutdown.clone();
        self.source = match config.kind() {
            SourceKind::Camera(cam) => {
                let input = self.input.clone().unwrap_or_default();
                Some(spawn(format!("camera-{}", self.name), move || {
                    let device = cam.device.display().to_string();
                    camera::capture_loop(&cam, stop.flag(), &mut |event| match event {
                        CameraEvent::Frame(raw) => {
                            let part = Part {
                                input: input.clone(),
                                origin: device.clone(),
                                payload: Payload::Camera(raw),
                            };
                            feed.push(device.clone(), vec![part])
                        }
                        CameraEvent::State(state) => feed.state(state.is_up(), state.to_string()),
                    });
                })?)
            }
            SourceKind::Folder(folder) => Some(spawn(format!("folder-{}", self.name), move || {
                watch_folder(&folder, inputs, &feed, stop.flag())
            })?),
            SourceKind::Upload => {
                self.counters.set_state(true, "accepting uploads");
                None
            }
            SourceKind::Synthetic(syn) => {
                let pattern = synthetic::pattern(&syn).map_err(|message| ServeError::Synthetic {
                    index,
                    name: self.name.clone(),
                    message,
                })?;
                self.counters.set_state(true, "synthetic");
                let input = self.input.clone().unwrap_or_default();
                Some(spawn(format!("synthetic-{}", self.name), move || {
                    synthetic::run(&syn, &pattern, stop.flag(), &mut |raw| {
                        let part = Part {
                            input: input.clone(),
                            origin: "synthetic".into(),
                            payload: Payload::Camera(raw),
                        };
                        feed.push("synthetic".into(), vec![part])
                    });
                })?)
            }
        };
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the HTTP API needs of this pipeline; `uploads` when it takes `POST /infer`.
    pub fn handle(&self, uploads: bool) -> SourceHandle {
        SourceHandle {
            name: self.name.clone(),
            queue: self.queue.clone(),
            counters: self.counters.clone(),
            uploads,
            slot: self.slot.clone(),
            input: self.input.clone(),
        }
    }

    /// What the model reloader needs of this pipeline.
    pub(super) fn reload_target(&self) -> Target {
        Target { name: self.name.clone(), slot: self.slot.clone(), counters: self.counters.clone() }
    }

    /// Stops the source, runs the queue dry and joins every thread (see the module
    /// comment for the order). Triggers the shutdown if nothing did yet: a pipeline only
    /// stops when the daemon does.
    pub fn stop(mut self) -> Stopped {
        self.shutdown.trigger();
        self.queue.close();
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                tracing::error!("source {}: an inference worker panicked", self.name);
            }
        }
        if let Some(source) = self.source.take()
            && source.join().is_err()
        {
            tracing::error!("source {}: the source thread panicked", self.name);
        }
        let left = self.queue.drain();
        for job in &left {
            tracing::warn!("source {}: {}: not processed: no inference worker was left", self.name, job.name);
        }
        let not_processed = left.len();
        for job in left {
            job.refuse(Refusal::NoWorker);
        }
        self.counters.queue_depth.store(0, Relaxed);
        Stopped { not_queued: self.not_queued.load(Relaxed), not_processed }
    }
}

/// A source thread's end of the queue.
struct Feed {
    index: usize,
    name: String,
    queue: Arc<BoundedQueue<Job>>,
    counters: Arc<SourceMetrics>,
    not_queued: Arc<AtomicU64>,
}

impl Feed {
    fn push(&self, name: String, parts: Vec<Part>) {
        self.push_job(Job::new(self.index, name, parts, None));
    }

    fn push_job(&self, job: Job) {
        match self.queue.push(job) {
            Pushed::Queued => {}
            Pushed::DroppedOldest(old) => {
                self.counters.dropped.fetch_add(1, Relaxed);
                old.refuse(Refusal::Displaced);
            }
            Pushed::Refused(job) => {
                self.counters.dropped.fetch_add(1, Relaxed);
                job.refuse(Refusal::QueueFull);
            }
            Pushed::Closed(job) => {
                self.not_queued.fetch_add(1, Relaxed);
                tracing::info!(
                    "source {}: {}: arrived while shutting down; not processed",
                    self.name,
                    job.name
                );
                job.refuse(Refusal::ShuttingDown);
            }
        }
        self.counters.queue_depth.store(self.queue.len() as u64, Relaxed);
    }

    /// A frame of paired folder files, or a file that cannot be part of one (its error
    /// result lets it go like any other).
    fn paired(&self, paired: Paired) {
        match paired {
            Paired::Frame { id, files } => {
                let parts = files
                    .into_iter()
                    .filter_map(|(input, path)| {
                        let path = path?;
                        Some(Part { input, origin: path.display().to_string(), payload: Payload::File(path) })
                    })
                    .collect();
                self.push(id.display().to_string(), parts);
            }
            Paired::Unpaired { path, why } => {
                let origin = path.display().to_string();
                let part =
                    Part { input: String::new(), origin: origin.clone(), payload: Payload::File(path) };
                let mut job = Job::new(self.index, origin, vec![part], None);
                job.unusable = Some(why);
                self.push_job(job);
            }
        }
    }

    /// What a folder says besides its files.
    fn folder_event(&self, event: FolderEvent) {
        match event {
            FolderEvent::NotAFile(path, what) => self.not_a_file(&path, &what),
            FolderEvent::State(up, state) => self.state(up, state),
            FolderEvent::File(_) | FolderEvent::Idle => {}
        }
    }

    fn not_a_file(&self, path: &std::path::Path, what: &str) {
        tracing::warn!("source {}: {}: {what}, not an image file; left in place", self.name, path.display());
        self.counters.not_files.fetch_add(1, Relaxed);
    }

    fn state(&self, up: bool, state: String) {
        tracing::info!("source {}: {state}", self.name);
        self.counters.set_state(up, state);
    }
}

/// A folder source's thread: each file a frame, or, for a model whose inputs are named by
/// the files, the files of one stem a frame (see [`crate::source::stem_pairs`]).
fn watch_folder(
    folder: &FolderConfig,
    inputs: FeedInputs,
    feed: &Feed,
    stop: &std::sync::atomic::AtomicBool,
) {
    let mut pairs = match inputs {
        FeedInputs::One(input) => {
            return folder_watch::watch(&folder.path, folder.existing, stop, &mut |event| match event {
                FolderEvent::File(path) => {
                    let origin = path.display().to_string();
                    let part =
                        Part { input: input.clone(), origin: origin.clone(), payload: Payload::File(path) };
                    feed.push(origin, vec![part]);
                }
                other => feed.folder_event(other),
            });
        }
        FeedInputs::ByName(inputs) => StemPairs::new(inputs, Duration::from_millis(folder.pair_wait_ms)),
    };
    folder_watch::watch(&folder.path, folder.existing, stop, &mut |event| {
        if let FolderEvent::File(path) = event {
            if let Some(paired) = pairs.arrived(path, Instant::now()) {
                feed.paired(paired);
            }
        } else {
            feed.folder_event(event);
        }
        for paired in pairs.due(Instant::now()) {
            feed.paired(paired);
        }
    });
    if pairs.waiting() > 0 {
        tracing::info!(
            "source {}: {} frame(s) still waiting for their other files at shutdown; left in the folder",
            feed.name,
            pairs.waiting()
        );
    }
}

pub(super) fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, ServeError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|source| ServeError::Thread { name, source })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::classify::DecideOptions;
    use crate::engine::{EngineKind, EngineOptions};
    use crate::preprocess::decode::ImageLimits;

    fn folder_source(dir: &std::path::Path) -> SourceConfig {
        let text = format!(
            "[[source]]\nname = \"inbox\"\nqueue = 1\nworkers = 1\nfolder = {{ path = \"{}\" }}\n",
            dir.display()
        );
        let config = super::super::config::ServeConfig::parse(&text, "test.toml".as_ref()).unwrap();
        config.sources.into_iter().next().unwrap()
    }

    /// The order hazard of issue 12: a folder source blocks on its full queue; if its workers
    /// are all gone and the source were joined before the queue closes, shutdown would hang.
    #[test]
    fn shutdown_completes_when_a_blocking_folder_source_has_no_worker_left() {
        let dir = tempfile::tempdir().unwrap();
        let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/samples");
        let png = std::fs::read(samples.join("0002-trouser.png")).unwrap();
        for i in 0..6 {
            std::fs::write(dir.path().join(format!("{i}.png")), &png).unwrap();
        }
        let config = folder_source(dir.path());
        let engine = EngineOptions { kind: EngineKind::Tract, threads: 1, ort_library: None };
        let decide = DecideOptions { top_k: 1, threshold: None };
        let slot = Arc::new(ModelSlot::open(None, None, engine, decide, ImageLimits::default()).unwrap());
        // The dispatcher is gone: the worker's first result has nowhere to go, so it exits.
        let (out, results) = mpsc::channel();
        drop(results);
        let wiring = Wiring { out, shutdown: Shutdown::default(), keep_review_frames: false };
        let counters = Arc::new(SourceMetrics::new("inbox"));
        let pipeline = Pipeline::start(0, &config, slot, counters, &wiring).unwrap();

        let start = Instant::now();
        while !(pipeline.workers.iter().all(JoinHandle::is_finished) && pipeline.queue.len() == 1) {
            assert!(start.elapsed() < Duration::from_secs(30), "the worker never took a frame and died");
            std::thread::sleep(Duration::from_millis(20));
        }
        // One frame queued, the source blocked pushing the next with no one to take it.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!pipeline.source.as_ref().unwrap().is_finished(), "the source must be blocked, not done");

        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || done_tx.send(pipeline.stop()));
        let stopped = done.recv_timeout(Duration::from_secs(10)).expect("shutdown hung on the full queue");
        assert_eq!(stopped, Stopped { not_queued: 1, not_processed: 1 }, "each unprocessed frame reported");
    }
}
