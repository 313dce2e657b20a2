//! `edge-kd serve`: the shop-floor daemon. Per source, frames flow
//! source thread → bounded queue → inference workers → dispatcher → sinks,
//! with the HTTP API and the MQTT publisher on a small tokio runtime beside them.
//!
//! Shutdown (SIGTERM/SIGINT) runs the flow dry in order: sources stop, queues close,
//! workers finish what was queued, the dispatcher writes and flushes every result, the
//! MQTT publisher drains the spool for up to `box.shutdown_drain_ms` (the rest stays on
//! disk for the next start), and only then does the process exit.

pub mod config;
pub mod connections;
pub mod dispatch;
pub mod feed;
pub mod http;
pub mod job;
pub mod metrics;
pub mod model_slot;
pub mod multipart;
pub mod pipeline;
pub mod queue;
mod recover;
mod reload;
pub mod shutdown;
pub mod worker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, mpsc};

use thiserror::Error;

use crate::classify::DecideOptions;
use crate::engine::EngineOptions;
use crate::sink::jsonl::{JsonlError, JsonlSink};
use crate::sink::mqtt::{self, Outbox, Publisher};
use crate::sink::review::{ReviewError, ReviewSink};
use crate::sink::seq::{SeqError, Sequence};
use crate::sink::spool::{Spool, SpoolError};
use crate::source::synthetic;
use config::{ConfigError, ServeConfig, SourceConfig, SourceKind};
use dispatch::{Dispatcher, Latest, Route};
use metrics::Metrics;
use model_slot::{ModelSlot, SlotError};
use pipeline::{Pipeline, Stopped, Wiring, spawn};
use shutdown::Shutdown;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("source {source_name}: {error}")]
    Model { source_name: String, error: SlotError },
    #[error("source[{index}] ({name}).folder.path: {}: no such folder", .path.display())]
    NoFolder { index: usize, name: String, path: PathBuf },
    #[error("source[{index}] ({name}).input: {message}")]
    Input { index: usize, name: String, message: String },
    #[error("source[{index}] ({name}).synthetic.image: {message}")]
    Synthetic { index: usize, name: String, message: String },
    #[error("{key}: {}: cannot read: {source}", .path.display())]
    SecretUnreadable { key: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{key}: {}: is empty", .path.display())]
    SecretEmpty { key: &'static str, path: PathBuf },
    #[error("sinks.jsonl: {0}")]
    Jsonl(#[from] JsonlError),
    #[error("sinks.review: {0}")]
    Review(#[from] ReviewError),
    #[error("sinks.mqtt.spool_dir: {0}")]
    Spool(#[from] SpoolError),
    #[error(
        "http.max_connections: {max_connections} connections and {} descriptors for the rest of the daemon \
         do not fit in the descriptor limit {limit} (systemd: LimitNOFILE; a shell: ulimit -n): \
         lower it or raise the limit",
        connections::RESERVED_DESCRIPTORS
    )]
    Descriptors { max_connections: usize, limit: u64 },
    #[error("box.state_dir: {0}")]
    Seq(#[from] SeqError),
    #[error("http.listen: {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the I/O runtime: {source}")]
    Runtime { source: std::io::Error },
    #[error("cannot start thread {name}: {source}")]
    Thread { name: String, source: std::io::Error },
    #[error("cannot watch model files: {source}")]
    Watcher { source: notify::Error },
    #[error("cannot watch {} for model changes: {source}", .dir.display())]
    Watch { dir: PathBuf, source: notify::Error },
}

/// What `--check-config` verifies without starting anything: the file, every model
/// (hash pin included, one trial run), folders, token and password files.
pub fn check(config: &ServeConfig) -> Result<Vec<String>, ServeError> {
    let mut lines = Vec::new();
    for (i, source) in config.sources.iter().enumerate() {
        let slot = open_slot(source)?;
        let loaded = slot.current();
        let inputs = feed::feed_inputs(source, &loaded.model.card).map_err(|message| ServeError::Input {
            index: i,
            name: source.name.clone(),
            message,
        })?;
        let feed = match source.kind() {
            SourceKind::Camera(c) => {
                format!("camera {} ({:?} {}x{})", c.device.display(), c.format, c.width, c.height)
            }
            SourceKind::Folder(f) => {
                if !f.path.is_dir() {
                    return Err(ServeError::NoFolder { index: i, name: source.name.clone(), path: f.path });
                }
                format!("folder {}", f.path.display())
            }
            SourceKind::Upload => "uploads (POST /infer)".to_string(),
            SourceKind::Synthetic(syn) => {
                let frame = synthetic::pattern(&syn).map_err(|message| ServeError::Synthetic {
                    index: i,
                    name: source.name.clone(),
                    message,
                })?;
                format!(
                    "synthetic {}x{} from {} at {} fps",
                    frame.width,
                    frame.height,
                    syn.image.display(),
                    syn.fps
                )
            }
        };
        let inputs = match inputs {
            feed::FeedInputs::One(input) => format!("images are input {input}"),
            feed::FeedInputs::ByName(names) => {
                format!("inputs {} named by the files or parts", names.join(", "))
            }
        };
        lines.push(format!(
            "source {}: {feed}, {inputs}; model {} sha256 {}; {} ×{} worker(s), queue {} {}",
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
    let limit = check_descriptors(config)?.map_or("unlimited".into(), |l| l.to_string());
    lines.push(format!(
        "http: {}, at most {} connections (descriptor limit {limit})",
        config.http.listen, config.http.max_connections
    ));
    Ok(lines)
}

/// The connection cap must leave descriptors to the rest of the daemon, or a flood of
/// connections starves folder reads and sinks of them. The limit, when there is one.
fn check_descriptors(config: &ServeConfig) -> Result<Option<u64>, ServeError> {
    let Some(limit) = connections::descriptor_limit() else { return Ok(None) };
    let max_connections = config.http.max_connections;
    if max_connections as u64 + connections::RESERVED_DESCRIPTORS > limit {
        return Err(ServeError::Descriptors { max_connections, limit });
    }
    Ok(Some(limit))
}

fn open_slot(source: &SourceConfig) -> Result<ModelSlot, ServeError> {
    let engine = EngineOptions { kind: source.engine_kind(), threads: source.threads, ort_library: None };
    let decide = DecideOptions { top_k: source.top_k, threshold: source.threshold };
    ModelSlot::open(source.model.as_deref(), source.model_sha256.clone(), engine, decide, source.limits)
        .map_err(|error| ServeError::Model { source_name: source.name.clone(), error })
}

fn read_secret(path: &Path, key: &'static str) -> Result<String, ServeError> {
    let text = std::fs::read_to_string(path).map_err(|source| ServeError::SecretUnreadable {
        key,
        path: path.into(),
        source,
    })?;
    let secret = text.trim().to_string();
    if secret.is_empty() {
        return Err(ServeError::SecretEmpty { key, path: path.into() });
    }
    Ok(secret)
}

/// The sinks as opened at start: the dispatcher's, and the MQTT publisher to run beside it.
struct Sinks {
    seq: Sequence,
    jsonl: Option<JsonlSink>,
    review: Option<ReviewSink>,
    mqtt: Option<(Outbox, Publisher)>,
}

fn open_sinks(config: &ServeConfig, metrics: &Metrics) -> Result<Sinks, ServeError> {
    let jsonl = config.sinks.jsonl.as_ref().map(|c| JsonlSink::open(c, metrics.jsonl.clone())).transpose()?;
    let review =
        config.sinks.review.as_ref().map(|c| ReviewSink::open(c, metrics.review.clone())).transpose()?;
    // Before this file existed, seq was the spool's position: continue above it.
    let mut floor = 0;
    let mqtt = match &config.sinks.mqtt {
        Some(m) => {
            let dir = m.spool_dir.clone().unwrap_or_else(|| config.box_.state_dir.join("mqtt-spool"));
            let spool = Spool::open(&dir, m.fsync, std::time::Duration::from_millis(m.fsync_interval_ms))?;
            floor = spool.next_seq();
            if spool.pending() > 0 {
                tracing::info!("MQTT spool: {} results from before are published first", spool.pending());
            }
            let password =
                m.password_file.as_deref().map(|p| read_secret(p, "sinks.mqtt.password_file")).transpose()?;
            let drain = config.shutdown_drain();
            Some(mqtt::open(m, &config.box_.id, password, spool, metrics.mqtt.clone(), drain))
        }
        None => None,
    };
    let seq = Sequence::open(&config.box_.state_dir.join("seq"), floor)?;
    Ok(Sinks { seq, jsonl, review, mqtt })
}

/// Starts one pipeline per source; if one cannot start, those already running are stopped.
fn start_pipelines(
    config: &ServeConfig,
    slots: Vec<ModelSlot>,
    metrics: &Metrics,
    wiring: &Wiring,
) -> Result<Vec<Pipeline>, ServeError> {
    let mut pipelines = Vec::with_capacity(config.sources.len());
    let sources = config.sources.iter().zip(slots).zip(&metrics.sources).enumerate();
    for (i, ((source, slot), counters)) in sources {
        match Pipeline::start(i, source, slot.into(), counters.clone(), wiring) {
            Ok(p) => pipelines.push(p),
            Err(e) => {
                stop_all(pipelines);
                return Err(e);
            }
        }
    }
    Ok(pipelines)
}

/// Stops every pipeline (each in the order `pipeline` explains) and adds up what they
/// could not process.
fn stop_all(pipelines: Vec<Pipeline>) -> Stopped {
    let mut total = Stopped::default();
    for p in pipelines {
        let stopped = p.stop();
        total.not_queued += stopped.not_queued;
        total.not_processed += stopped.not_processed;
    }
    total
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: ServeConfig, config_path: PathBuf) -> Result<(), ServeError> {
    check_descriptors(&config)?;
    let names: Vec<String> = config.sources.iter().map(|s| s.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(&names));
    let slots: Vec<ModelSlot> = config.sources.iter().map(open_slot).collect::<Result<_, _>>()?;
    for (slot, m) in slots.iter().zip(&metrics.sources) {
        let loaded = slot.current();
        m.set_model(&loaded.model.card.name, &loaded.sha256);
    }
    let token = config.http.token_file.as_deref().map(|p| read_secret(p, "http.token_file")).transpose()?;
    let Sinks { seq, jsonl, review, mqtt } = open_sinks(&config, &metrics)?;
    // After the JSONL file is opened (a torn last line is cut, so it does not count).
    recover::let_go_of_decided_files(&config);
    let (outbox, publisher) = mqtt.unzip();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("edge-kd-io")
        .enable_all()
        .build()
        .map_err(|source| ServeError::Runtime { source })?;
    let addr = config.http.listen;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|source| ServeError::Listen { addr, source })?;

    // The dispatcher first: it ends when the last worker drops its sender, so a pipeline
    // that fails to start below leaves nothing behind.
    let (finished_tx, finished_rx) = mpsc::channel();
    let latest = Arc::new(Latest::new(config.http.keep_latest));
    let routes = config
        .sources
        .iter()
        .map(|s| Route {
            topic: config.sinks.mqtt.as_ref().map(|m| mqtt::result_topic(m, &config.box_.id, &s.name).into()),
            folder: s.folder.clone(),
        })
        .collect();
    let keep_review_frames = review.is_some();
    let dispatcher = Dispatcher::new(finished_rx, jsonl, outbox, review, routes, latest.clone(), seq);
    let dispatcher = spawn("dispatch".into(), move || dispatcher.run())?;
    let publisher = publisher.map(|p| runtime.spawn(p.run()));

    let shutdown = Shutdown::default();
    let wiring = Wiring { out: finished_tx, shutdown: shutdown.clone(), keep_review_frames };
    let pipelines = start_pipelines(&config, slots, &metrics, &wiring)?;
    // Only the workers hold senders now.
    drop(wiring);

    let api = Arc::new(http::ApiState {
        sources: config.sources.iter().zip(&pipelines).map(|(s, p)| p.handle(s.http.is_some())).collect(),
        jsonl: config.sinks.jsonl.is_some(),
        mqtt: config.sinks.mqtt.is_some(),
        metrics: metrics.clone(),
        latest,
        token,
    });
    let server = {
        let app = http::router(api, config.http.max_body_bytes)
            .into_make_service_with_connect_info::<connections::Busy>();
        let listener = connections::Connections::new(listener, config.http.limits(), metrics.http.clone());
        let shutdown = shutdown.clone();
        runtime.spawn(async move {
            let stopped = async move { shutdown.triggered().await };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                tracing::error!("http server: {e}");
            }
        })
    };
    let targets = pipelines.iter().map(Pipeline::reload_target).collect();
    let reloader = match reload::Reloader::start(targets, config_path, shutdown.clone()) {
        Ok(r) => r,
        Err(e) => {
            stop_all(pipelines);
            return Err(e);
        }
    };
    tracing::info!(
        "serving {} source(s) as box {:?}; HTTP on {}",
        config.sources.len(),
        config.box_.id,
        config.http.listen
    );

    runtime.block_on(reload::wait_for_shutdown(&reloader, &shutdown));
    tracing::info!("shutting down: stopping sources, finishing queued frames, flushing sinks");
    shutdown.trigger();
    let unprocessed = stop_all(pipelines);
    // The workers are gone, so the dispatcher runs dry, flushes, and drops the outbox:
    // the publisher then drains the spool for up to box.shutdown_drain_ms.
    if dispatcher.join().is_err() {
        tracing::error!("the dispatcher panicked; results it held may be missing from the sinks");
    }
    runtime.block_on(async {
        if let Some(p) = publisher {
            let _ = p.await;
        }
        let _ = server.await;
    });
    reloader.join();
    let sum = |get: fn(&metrics::SourceMetrics) -> u64| metrics.sources.iter().map(|s| get(s)).sum::<u64>();
    tracing::info!(
        "stopped cleanly: {} frames decided, {} failed, {} dropped; {} results written to JSONL, {} to the MQTT spool ({} still spooled)",
        sum(|s| s.frames.load(Relaxed)),
        sum(|s| s.errors.load(Relaxed)),
        sum(|s| s.dropped.load(Relaxed)),
        metrics.jsonl.lines.load(Relaxed),
        metrics.mqtt.spooled.load(Relaxed),
        metrics.mqtt.pending.load(Relaxed),
    );
    if unprocessed != Stopped::default() {
        tracing::warn!(
            "{} frame(s) arrived while shutting down and {} were queued with no worker left: not processed",
            unprocessed.not_queued,
            unprocessed.not_processed
        );
    }
    Ok(())
}
