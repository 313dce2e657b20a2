//! `edge-kd serve`: the shop-floor daemon. Per source, frames flow
//! source thread → bounded queue → inference workers → dispatcher → sinks,
//! with the HTTP API and the MQTT publisher on a small tokio runtime beside them.
//!
//! Shutdown (SIGTERM/SIGINT) runs the flow dry in order: sources stop, queues close,
//! workers finish what was queued, the dispatcher writes and flushes every result, the
//! MQTT publisher drains the spool for up to `box.shutdown_drain_ms` (the rest stays on
//! disk for the next start), and only then does the process exit.

pub mod config;
pub mod dispatch;
pub mod http;
pub mod job;
pub mod metrics;
pub mod model_slot;
pub mod queue;
mod reload;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::Notify;

use crate::classify::DecideOptions;
use crate::engine::EngineOptions;
use crate::sink::jsonl::JsonlSink;
use crate::sink::mqtt::{self, Publisher};
use crate::sink::review::ReviewSink;
use crate::sink::spool::Spool;
use crate::source::camera::{self, CameraEvent};
use crate::source::folder_watch::{self, FolderEvent};
use crate::source::synthetic;
use config::{ConfigError, ServeConfig, SourceConfig, SourceKind};
use dispatch::{Dispatcher, Latest, MqttQueue};
use job::{Job, Payload};
use metrics::Metrics;
use model_slot::{ModelSlot, SlotError};
use queue::{BoundedQueue, Pushed};

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("source {source_name}: {error}")]
    Model { source_name: String, error: SlotError },
    #[error("{0}")]
    Setup(String),
}

/// What `--check-config` verifies without starting anything: the file, every model
/// (hash pin included, one trial run), folders, token and password files.
pub fn check(config: &ServeConfig) -> Result<Vec<String>, ServeError> {
    let mut lines = Vec::new();
    for (i, source) in config.sources.iter().enumerate() {
        let slot = open_slot(source)?;
        let loaded = slot.current();
        let feed = match source.kind() {
            SourceKind::Camera(c) => {
                format!("camera {} ({:?} {}x{})", c.device.display(), c.format, c.width, c.height)
            }
            SourceKind::Folder(f) => {
                if !f.path.is_dir() {
                    return Err(ServeError::Setup(format!(
                        "source[{i}] ({}).folder.path: {}: no such folder",
                        source.name,
                        f.path.display()
                    )));
                }
                format!("folder {}", f.path.display())
            }
            SourceKind::Upload => "uploads (POST /infer)".to_string(),
            SourceKind::Synthetic(syn) => {
                let frame = synthetic::pattern(&syn).map_err(|e| synthetic_error(i, source, e))?;
                format!(
                    "synthetic {}x{} from {} at {} fps",
                    frame.width,
                    frame.height,
                    syn.image.display(),
                    syn.fps
                )
            }
        };
        lines.push(format!(
            "source {}: {feed}; model {} sha256 {}; {} ×{} worker(s), queue {} {}",
            source.name,
            loaded.model,
            &loaded.sha256[..12],
            source.engine_kind(),
            source.workers,
            source.queue,
            source.drop_policy()
        ));
    }
    if let Some(path) = &config.http.token_file {
        read_secret(path, "http.token_file")?;
    }
    if let Some(m) = &config.sinks.mqtt {
        if let Some(path) = &m.password_file {
            read_secret(path, "sinks.mqtt.password_file")?;
        }
        lines.push(format!(
            "mqtt: {}:{} topics {}",
            m.host,
            m.port,
            mqtt::result_topic(m, &config.box_.id, "<source>")
        ));
    }
    lines.push(format!("http: {}", config.http.listen));
    Ok(lines)
}

fn synthetic_error(i: usize, source: &SourceConfig, e: String) -> ServeError {
    ServeError::Setup(format!("source[{i}] ({}).synthetic.image: {e}", source.name))
}

fn open_slot(source: &SourceConfig) -> Result<ModelSlot, ServeError> {
    let engine = EngineOptions { kind: source.engine_kind(), threads: source.threads, ort_library: None };
    let decide = DecideOptions { top_k: source.top_k, threshold: source.threshold };
    ModelSlot::open(source.model.as_deref(), source.model_sha256.clone(), engine, decide, source.limits)
        .map_err(|error| ServeError::Model { source_name: source.name.clone(), error })
}

fn read_secret(path: &Path, key: &str) -> Result<String, ServeError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ServeError::Setup(format!("{key}: {}: cannot read: {e}", path.display())))?;
    let secret = text.trim().to_string();
    if secret.is_empty() {
        return Err(ServeError::Setup(format!("{key}: {}: is empty", path.display())));
    }
    Ok(secret)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: ServeConfig, config_path: PathBuf) -> Result<(), ServeError> {
    let names: Vec<String> = config.sources.iter().map(|s| s.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(&names));
    let slots: Vec<Arc<ModelSlot>> =
        config.sources.iter().map(|s| open_slot(s).map(Arc::new)).collect::<Result<_, _>>()?;
    for (slot, m) in slots.iter().zip(&metrics.sources) {
        let loaded = slot.current();
        m.set_model(&loaded.model.card.name, &loaded.sha256);
    }
    let token = config.http.token_file.as_deref().map(|p| read_secret(p, "http.token_file")).transpose()?;
    let setup = |what: &str, e: &dyn std::fmt::Display| ServeError::Setup(format!("{what}: {e}"));
    let jsonl =
        config.sinks.jsonl.as_ref().map(JsonlSink::open).transpose().map_err(|e| setup("sinks.jsonl", &e))?;
    let review = config
        .sinks
        .review
        .as_ref()
        .map(ReviewSink::open)
        .transpose()
        .map_err(|e| setup("sinks.review", &e))?;
    let mqtt_parts = match &config.sinks.mqtt {
        Some(m) => {
            let dir = m.spool_dir.clone().unwrap_or_else(|| config.box_.state_dir.join("mqtt-spool"));
            let spool = Spool::open(&dir, m.fsync, Duration::from_millis(m.fsync_interval_ms))
                .map_err(|e| setup("sinks.mqtt.spool_dir", &e))?;
            if spool.pending() > 0 {
                tracing::info!("MQTT spool: {} results from before are published first", spool.pending());
            }
            let password =
                m.password_file.as_deref().map(|p| read_secret(p, "sinks.mqtt.password_file")).transpose()?;
            Some((m.clone(), Arc::new(Mutex::new(spool)), password))
        }
        None => None,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("edge-kd-io")
        .enable_all()
        .build()
        .map_err(|e| setup("tokio runtime", &e))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.http.listen))
        .map_err(|e| setup(&format!("http.listen: {}", config.http.listen), &e))?;

    let queues: Vec<Arc<BoundedQueue<Job>>> =
        config.sources.iter().map(|s| Arc::new(BoundedQueue::new(s.queue, s.drop_policy()))).collect();
    let (finished_tx, finished_rx) = mpsc::channel();
    let mut workers = Vec::new();
    for (i, source) in config.sources.iter().enumerate() {
        for w in 0..source.workers {
            let worker = worker::Worker {
                source: i,
                source_name: source.name.clone(),
                queue: queues[i].clone(),
                slot: slots[i].clone(),
                out: finished_tx.clone(),
                metrics: metrics.clone(),
                keep_review_frames: review.is_some(),
            };
            workers.push(spawn(format!("infer-{}-{w}", source.name), move || worker.run())?);
        }
    }
    drop(finished_tx);

    let latest = Arc::new(Latest::new(config.http.keep_latest));
    let appended = Arc::new(Notify::new());
    let mqtt_queue = mqtt_parts.as_ref().map(|(m, spool, _)| MqttQueue {
        spool: spool.clone(),
        appended: appended.clone(),
        topics: names.iter().map(|n| mqtt::result_topic(m, &config.box_.id, n)).collect(),
    });
    let folders = config.sources.iter().map(|s| s.folder.clone()).collect();
    let dispatcher =
        Dispatcher::new(finished_rx, jsonl, mqtt_queue, review, folders, latest.clone(), metrics.clone());
    let dispatcher = spawn("dispatch".into(), move || dispatcher.run())?;

    let closing = Arc::new(AtomicBool::new(false));
    let closing_notify = Arc::new(Notify::new());
    let publisher = mqtt_parts.map(|(m, spool, password)| {
        runtime.spawn(
            Publisher {
                config: m,
                box_id: config.box_.id.clone(),
                password,
                spool,
                appended: appended.clone(),
                metrics: metrics.clone(),
                closing: closing.clone(),
                closing_notify: closing_notify.clone(),
                drain: config.shutdown_drain(),
            }
            .run(),
        )
    });

    let stop = Arc::new(AtomicBool::new(false));
    let mut sources = Vec::new();
    for (i, source) in config.sources.iter().enumerate() {
        let (queue, metrics, stop) = (queues[i].clone(), metrics.clone(), stop.clone());
        match source.kind() {
            SourceKind::Camera(cam) => {
                sources.push(spawn(format!("camera-{}", source.name), move || {
                    let device = cam.device.display().to_string();
                    camera::capture_loop(&cam, &stop, &mut |event| match event {
                        CameraEvent::Frame(raw) => {
                            enqueue(&queue, &metrics, Job::new(i, device.clone(), Payload::Camera(raw), None))
                        }
                        CameraEvent::State(state) => {
                            tracing::info!("source {}: {state}", metrics.sources[i].name);
                            metrics.sources[i].set_state(state.is_up(), state.to_string());
                        }
                    });
                })?);
            }
            SourceKind::Folder(folder) => {
                sources.push(spawn(format!("folder-{}", source.name), move || {
                    folder_watch::watch(&folder.path, folder.existing, &stop, &mut |event| match event {
                        FolderEvent::File(path) => {
                            let name = path.display().to_string();
                            enqueue(&queue, &metrics, Job::new(i, name, Payload::File(path), None));
                        }
                        FolderEvent::State(up, state) => {
                            tracing::info!("source {}: {state}", metrics.sources[i].name);
                            metrics.sources[i].set_state(up, state);
                        }
                    });
                })?);
            }
            SourceKind::Upload => metrics.sources[i].set_state(true, "accepting uploads"),
            SourceKind::Synthetic(syn) => {
                let pattern = synthetic::pattern(&syn).map_err(|e| synthetic_error(i, source, e))?;
                metrics.sources[i].set_state(true, "synthetic");
                sources.push(spawn(format!("synthetic-{}", source.name), move || {
                    synthetic::run(&syn, &pattern, &stop, &mut |raw| {
                        enqueue(&queue, &metrics, Job::new(i, "synthetic".into(), Payload::Camera(raw), None))
                    });
                })?);
            }
        }
    }

    let api = Arc::new(http::ApiState {
        sources: config
            .sources
            .iter()
            .zip(&queues)
            .map(|(s, q)| http::SourceHandle {
                name: s.name.clone(),
                queue: q.clone(),
                uploads: s.http.is_some(),
            })
            .collect(),
        metrics: metrics.clone(),
        latest,
        token,
    });
    let http_stop = Arc::new(Notify::new());
    let server = {
        let app = http::router(api, config.http.max_body_bytes);
        let http_stop = http_stop.clone();
        runtime.spawn(async move {
            let shutdown = async move { http_stop.notified().await };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                tracing::error!("http server: {e}");
            }
        })
    };
    let reloader =
        reload::Reloader::start(&config, config_path, slots.clone(), metrics.clone(), stop.clone())?;
    tracing::info!(
        "serving {} source(s) as box {:?}; HTTP on {}",
        config.sources.len(),
        config.box_.id,
        config.http.listen
    );

    runtime.block_on(reload::wait_for_shutdown(&reloader));
    tracing::info!("shutting down: stopping sources, finishing queued frames, flushing sinks");
    stop.store(true, Relaxed);
    http_stop.notify_one();
    for s in sources {
        let _ = s.join();
    }
    for q in &queues {
        q.close();
    }
    for w in workers {
        let _ = w.join();
    }
    let _ = dispatcher.join();
    closing.store(true, Relaxed);
    closing_notify.notify_one();
    runtime.block_on(async {
        if let Some(p) = publisher {
            let _ = p.await;
        }
        let _ = server.await;
    });
    reloader.join();
    let sum = |get: fn(&metrics::SourceMetrics) -> u64| metrics.sources.iter().map(get).sum::<u64>();
    let k = &metrics.sinks;
    tracing::info!(
        "stopped cleanly: {} frames decided, {} failed, {} dropped; {} results written to JSONL, {} to the MQTT spool ({} still spooled)",
        sum(|s| s.frames.load(Relaxed)),
        sum(|s| s.errors.load(Relaxed)),
        sum(|s| s.dropped.load(Relaxed)),
        k.jsonl_lines.load(Relaxed),
        k.mqtt_spooled.load(Relaxed),
        k.mqtt_pending.load(Relaxed),
    );
    Ok(())
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, ServeError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|e| ServeError::Setup(format!("cannot start thread {name}: {e}")))
}

fn enqueue(queue: &BoundedQueue<Job>, metrics: &Metrics, job: Job) {
    let source = job.source;
    match queue.push(job) {
        Pushed::Queued => {}
        Pushed::DroppedOldest(old) => {
            metrics.sources[source].dropped.fetch_add(1, Relaxed);
            old.refuse("dropped: queue full");
        }
        Pushed::Refused(job) => {
            metrics.sources[source].dropped.fetch_add(1, Relaxed);
            job.refuse("dropped: queue full");
        }
    }
    metrics.sources[source].queue_depth.store(queue.len() as u64, Relaxed);
}
