//! The daemon's one TOML file (`deploy/edge-kd.toml` is the documented example).
//! Parsing is strict: an unknown key is an error, and every error names the file and
//! the key, so a typo on a box is found by `serve --check-config`, not by a silent default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use super::connections::Limits;
use crate::engine::EngineKind;
use crate::preprocess::decode::ImageLimits;
use crate::sink::InvalidKey;
use crate::sink::jsonl::JsonlConfig;
use crate::sink::mqtt::MqttConfig;
use crate::sink::review::ReviewConfig;
use crate::source::camera::CameraConfig;
use crate::source::synthetic::SyntheticConfig;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    #[serde(rename = "box", default)]
    pub box_: BoxConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(rename = "source", default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub sinks: SinksConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxConfig {
    /// Names this box in MQTT topics and results; the host name when empty.
    #[serde(default)]
    pub id: String,
    /// Where the daemon keeps what must survive a restart (the seq high-water mark, the
    /// MQTT spool).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How long shutdown may spend publishing what is still spooled before it leaves the
    /// rest on disk for the next start.
    #[serde(default = "default_drain_ms")]
    pub shutdown_drain_ms: u64,
}

impl Default for BoxConfig {
    fn default() -> Self {
        BoxConfig { id: String::new(), state_dir: default_state_dir(), shutdown_drain_ms: default_drain_ms() }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/edge-kd")
}
fn default_drain_ms() -> u64 {
    5000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// A file holding the bearer token every request but /healthz and /readyz must carry.
    pub token_file: Option<PathBuf>,
    /// Largest accepted upload to /infer.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// How many recent results /results/latest can return.
    #[serde(default = "default_latest")]
    pub keep_latest: usize,
    /// Connections open at once; with the descriptors the rest of the daemon needs, it
    /// must fit in the descriptor limit (the unit's `LimitNOFILE`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a client may take to send a request's head.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// How long a connection may wait for its next request.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            token_file: None,
            max_body_bytes: default_max_body(),
            keep_latest: default_latest(),
            max_connections: default_max_connections(),
            header_timeout_ms: default_header_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
        }
    }
}

impl HttpConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body() -> usize {
    16 << 20
}
fn default_latest() -> usize {
    100
}
/// Far more than a box's clients (a PLC, a dashboard, a scraper), and within a shell's
/// usual 1024 descriptors.
fn default_max_connections() -> usize {
    256
}
fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropPolicy {
    /// Keep the newest frames: right for cameras, where an old frame is worth least.
    DropOldest,
    /// Refuse the new frame (an upload gets 503).
    DropNewest,
    /// Wait for room: right for folders, whose files must all be processed.
    Block,
}

impl std::fmt::Display for DropPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DropPolicy::DropOldest => "drop-oldest",
            DropPolicy::DropNewest => "drop-newest",
            DropPolicy::Block => "block",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Names the source in results, metrics and MQTT topics.
    pub name: String,
    /// The ONNX student; the embedded default when absent.
    pub model: Option<PathBuf>,
    /// sha256 of the model file (hex). When set, any other file is refused.
    pub model_sha256: Option<String>,
    #[serde(default = "default_engine")]
    pub engine: String,
    /// Intra-op threads per worker.
    #[serde(default = "one")]
    pub threads: usize,
    /// Inference workers for this source, each with its own engine.
    #[serde(default = "one")]
    pub workers: usize,
    /// Frames waiting for a worker.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Full-queue behaviour; drop-oldest for cameras and uploads, block for folders.
    pub drop: Option<DropPolicy>,
    /// Replaces every class's accept threshold.
    pub threshold: Option<f32>,
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// What one image from this source may cost (size, pixels, decoder memory).
    #[serde(default)]
    pub limits: ImageLimits,
    /// The card input this source's images are, for a model with several inputs: a camera's
    /// or synthetic frames, raw upload bodies, every file of a folder (which then does not
    /// pair files by name). Left out, a one-input model's only input; a folder pairs
    /// `<stem>.<input>.<ext>` files and uploads send multipart parts named by input.
    pub input: Option<String>,
    pub camera: Option<CameraConfig>,
    pub folder: Option<FolderConfig>,
    pub http: Option<UploadConfig>,
    pub synthetic: Option<SyntheticConfig>,
}

fn default_engine() -> String {
    EngineKind::DEFAULT.as_str().into()
}
fn one() -> usize {
    1
}
fn default_queue() -> usize {
    8
}
/// `serve` allocates a source's queue whole at start: a typo such as `queue = 100000000`
/// would ask for gigabytes there, after `--check-config` said the file was fine.
const MAX_QUEUE: usize = 10_000;
fn default_top_k() -> usize {
    3
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderConfig {
    pub path: PathBuf,
    /// Process the files already there at start (oldest first).
    #[serde(default = "yes")]
    pub existing: bool,
    /// What to do with a file once its result is written.
    #[serde(default)]
    pub after: AfterProcessing,
    /// Target folder for `after = "move"`.
    pub move_to: Option<PathBuf>,
    /// For a model with several inputs: how long a frame's first file waits for the files
    /// of its other inputs (`<stem>.<input>.<ext>`) before the frame runs without them.
    #[serde(default = "default_pair_wait_ms")]
    pub pair_wait_ms: u64,
}

fn default_pair_wait_ms() -> u64 {
    2000
}

/// A frame's files waiting longer than this are a typo, not a plan: the inbox would look
/// stuck.
const MAX_PAIR_WAIT_MS: u64 = 600_000;

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterProcessing {
    #[default]
    Keep,
    Move,
    Delete,
}

/// Marks a source fed by `POST /infer?source=NAME`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {}

/// `[sinks]`: each sink's table is the sink's own type.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    pub jsonl: Option<JsonlConfig>,
    pub mqtt: Option<MqttConfig>,
    pub review: Option<ReviewConfig>,
}

/// What kind of source a `[[source]]` table is, once validated.
#[derive(Debug, Clone)]
pub enum SourceKind {
    Camera(CameraConfig),
    Folder(FolderConfig),
    Upload,
    Synthetic(SyntheticConfig),
}

impl SourceConfig {
    pub fn kind(&self) -> SourceKind {
        match (&self.camera, &self.folder, &self.synthetic) {
            (Some(c), _, _) => SourceKind::Camera(c.clone()),
            (None, Some(f), _) => SourceKind::Folder(f.clone()),
            (None, None, Some(s)) => SourceKind::Synthetic(s.clone()),
            (None, None, None) => SourceKind::Upload,
        }
    }

    pub fn drop_policy(&self) -> DropPolicy {
        let unpaced = self.synthetic.as_ref().is_some_and(|s| s.fps == 0.0);
        let default =
            if self.folder.is_some() || unpaced { DropPolicy::Block } else { DropPolicy::DropOldest };
        self.drop.unwrap_or(default)
    }

    pub fn engine_kind(&self) -> EngineKind {
        self.engine.parse().unwrap_or(EngineKind::DEFAULT)
    }
}

impl ServeConfig {
    pub fn load(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates the text of the file at `path` (named in errors): all of
    /// [`Self::load`] but the read, so that it can be fuzzed (tests/fuzz).
    pub fn parse(text: &str, path: &Path) -> Result<ServeConfig, ConfigError> {
        let mut config: ServeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim_end().into(),
        })?;
        config.validate().map_err(|(key, message)| ConfigError::Invalid {
            path: path.into(),
            key,
            message,
        })?;
        if config.box_.id.is_empty() {
            config.box_.id = host_name();
        }
        Ok(config)
    }

    pub fn shutdown_drain(&self) -> Duration {
        Duration::from_millis(self.box_.shutdown_drain_ms)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: String, message: &str| Err((key, message.to_string()));
        if !self.box_.id.is_empty() && !is_topic_safe(&self.box_.id) {
            return bad(
                "box.id".into(),
                "use only letters, digits, '-', '_' and '.' (it becomes an MQTT topic level)",
            );
        }
        if self.sources.is_empty() {
            return bad("source".into(), "no [[source]] configured: add a camera, folder or http source");
        }
        for (key, value) in [
            ("http.max_body_bytes", self.http.max_body_bytes as u64),
            ("http.max_connections", self.http.max_connections as u64),
            ("http.header_timeout_ms", self.http.header_timeout_ms),
            ("http.idle_timeout_ms", self.http.idle_timeout_ms),
        ] {
            if value == 0 {
                return bad(key.into(), "must be > 0");
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let key = |field: &str| format!("source[{i}].{field}");
            if !is_topic_safe(&s.name) {
                return bad(
                    key("name"),
                    "use only letters, digits, '-', '_' and '.' (it becomes an MQTT topic level)",
                );
            }
            if !names.insert(s.name.as_str()) {
                return bad(key("name"), &format!("{:?} is used by an earlier source", s.name));
            }
            let key = |field: &str| format!("source[{i}] ({}).{field}", s.name);
            let kinds = [s.camera.is_some(), s.folder.is_some(), s.http.is_some(), s.synthetic.is_some()];
            let feeds = "camera|folder|http|synthetic";
            match kinds.iter().filter(|&&k| k).count() {
                1 => {}
                0 => {
                    return bad(
                        key(feeds),
                        "say what feeds this source: a camera, folder, http or synthetic table",
                    );
                }
                _ => return bad(key(feeds), "a source has exactly one of camera, folder, http or synthetic"),
            }
            if let Some(syn) = &s.synthetic
                && !(syn.fps >= 0.0 && syn.fps.is_finite())
            {
                return bad(key("synthetic.fps"), "must be >= 0 (0: as fast as the queue takes frames)");
            }
            if let Err(message) = s.engine.parse::<EngineKind>() {
                return bad(key("engine"), &message);
            }
            for (field, value) in
                [("threads", s.threads), ("workers", s.workers), ("queue", s.queue), ("top_k", s.top_k)]
            {
                if value == 0 {
                    return bad(key(field), "must be > 0");
                }
            }
            if s.queue > MAX_QUEUE {
                return bad(key("queue"), &format!("must be at most {MAX_QUEUE} frames"));
            }
            if let Some(t) = s.threshold
                && !(0.0..=1.0).contains(&t)
            {
                return bad(key("threshold"), "must be a probability between 0 and 1");
            }
            if let Some(pin) = &s.model_sha256
                && (pin.len() != 64 || !pin.chars().all(|c| c.is_ascii_hexdigit()))
            {
                return bad(key("model_sha256"), "must be 64 hex digits (sha256sum's output)");
            }
            if s.model_sha256.is_some() && s.model.is_none() {
                return bad(key("model_sha256"), "pins a model file, but no `model` is set");
            }
            s.limits.validate().map_err(|m| (key("limits"), m))?;
            if s.input.as_deref().is_some_and(|i| i.trim().is_empty()) {
                return bad(key("input"), "name one of the model's inputs (edge-kd card MODEL lists them)");
            }
            if let Some(c) = &s.camera {
                c.validate().map_err(|m| (key("camera"), m))?;
            }
            if (s.camera.is_some() || s.http.is_some()) && s.drop == Some(DropPolicy::Block) {
                return bad(key("drop"), "only folder sources block; use drop-oldest or drop-newest");
            }
            if let Some(f) = &s.folder {
                match (f.after, &f.move_to) {
                    (AfterProcessing::Move, None) => {
                        return bad(key("folder.move_to"), "after = \"move\" needs a move_to folder");
                    }
                    (AfterProcessing::Keep | AfterProcessing::Delete, Some(_)) => {
                        return bad(key("folder.move_to"), "only used with after = \"move\"");
                    }
                    _ => {}
                }
                if f.pair_wait_ms > MAX_PAIR_WAIT_MS {
                    return bad(
                        key("folder.pair_wait_ms"),
                        &format!("must be at most {MAX_PAIR_WAIT_MS} ms (10 minutes)"),
                    );
                }
                if s.drop.is_some_and(|d| d != DropPolicy::Block) {
                    return bad(
                        key("drop"),
                        "a folder source only blocks: dropping would skip files for good",
                    );
                }
            }
        }
        let sink = |table: &str, checked: Result<(), InvalidKey>| {
            checked.map_err(|e| (format!("sinks.{table}.{}", e.key), e.message.to_string()))
        };
        if let Some(j) = &self.sinks.jsonl {
            sink("jsonl", j.validate())?;
        }
        if let Some(m) = &self.sinks.mqtt {
            sink("mqtt", m.validate())?;
        }
        if let Some(r) = &self.sinks.review {
            sink("review", r.validate())?;
        }
        Ok(())
    }
}

fn is_topic_safe(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let cleaned: String = raw
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    if cleaned.is_empty() { "box".into() } else { cleaned }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::FsyncPolicy;

    #[test]
    fn the_mqtt_spool_interval_is_read_and_must_be_positive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        let base = "[[source]]\nname = \"a\"\nhttp = {}\n[sinks.mqtt]\nhost = \"broker\"\n";
        std::fs::write(&path, format!("{base}fsync_interval_ms = 0\n")).unwrap();
        let err = ServeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("sinks.mqtt.fsync_interval_ms: must be > 0"), "{err}");

        std::fs::write(&path, format!("{base}fsync = \"interval\"\nfsync_interval_ms = 250\n")).unwrap();
        let mqtt = ServeConfig::load(&path).unwrap().sinks.mqtt.unwrap();
        assert_eq!((mqtt.fsync, mqtt.fsync_interval_ms), (FsyncPolicy::Interval, 250));
    }
}
