//! Publishes the spool to an MQTT broker, in order, at QoS 1.
//!
//! Topics (`<prefix>` = `sinks.mqtt.topic_prefix`, `<box>` = `box.id`):
//! - `<prefix>/<box>/<source>/result` — one message per frame, the result line as JSON;
//! - `<prefix>/<box>/status` — retained: `{"state":"online",...}` while connected,
//!   `{"state":"offline"}` on shutdown and, as the last will, when the box vanishes.
//!
//! Delivery is at least once: an entry leaves the spool only after the broker's PUBACK.
//! Every connection is a fresh client that replays from the first unacknowledged entry, so
//! the client library never resends on its own and order is the spool's order.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde::Deserialize;
use tokio::sync::Notify;

use super::health::{WriteHealth, now_ms};
use super::spool::{Spool, SpoolError};
use super::{FsyncPolicy, InvalidKey, default_fsync, default_fsync_interval, invalid};

/// `[sinks.mqtt]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// `edge-kd-<box id>` when absent.
    pub client_id: Option<String>,
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    #[serde(default = "default_keepalive")]
    pub keepalive_s: u64,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The on-disk queue of results not yet acknowledged by the broker;
    /// `<state_dir>/mqtt-spool` when absent.
    pub spool_dir: Option<PathBuf>,
    #[serde(default = "default_fsync")]
    pub fsync: FsyncPolicy,
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval_ms: u64,
    /// Publishes in flight before waiting for the broker's acknowledgements.
    #[serde(default = "default_window")]
    pub window: usize,
}

fn default_mqtt_port() -> u16 {
    1883
}
fn default_prefix() -> String {
    "edge-kd".into()
}
fn default_keepalive() -> u64 {
    30
}
fn default_window() -> usize {
    32
}

impl MqttConfig {
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if self.host.is_empty() {
            return invalid("host", "must not be empty");
        }
        if self.topic_prefix.is_empty() || self.topic_prefix.contains(['#', '+']) {
            return invalid("topic_prefix", "must be non-empty, without MQTT wildcards");
        }
        if self.fsync == FsyncPolicy::Interval && self.fsync_interval_ms == 0 {
            return invalid("fsync_interval_ms", "must be > 0 with fsync = \"interval\"");
        }
        if self.window == 0 {
            return invalid("window", "must be > 0");
        }
        if self.keepalive_s < 5 {
            return invalid("keepalive_s", "must be at least 5 seconds");
        }
        if self.password_file.is_some() && self.username.is_none() {
            return invalid("password_file", "needs a username");
        }
        Ok(())
    }
}

pub fn result_topic(config: &MqttConfig, box_id: &str, source: &str) -> String {
    format!("{}/{box_id}/{source}/result", config.topic_prefix)
}

pub fn status_topic(config: &MqttConfig, box_id: &str) -> String {
    format!("{}/{box_id}/status", config.topic_prefix)
}

/// What the sink did, for `/metrics`.
#[derive(Debug, Default)]
pub struct MqttCounters {
    pub connected: AtomicBool,
    /// Results the broker acknowledged.
    pub published: AtomicU64,
    /// Results written to the spool.
    pub spooled: AtomicU64,
    /// Results in the spool not yet acknowledged.
    pub pending: AtomicU64,
    /// Lost connections and failed connection attempts.
    pub errors: AtomicU64,
    /// Unix ms since when the broker has been unreachable (from the start until the first
    /// connection); 0 while connected.
    pub disconnected_since_ms: AtomicU64,
    /// Writes to the spool, kept by the writer, which holds and retries what it refused.
    pub spool: Arc<WriteHealth>,
}

/// What the outbox and the publisher share.
struct Shared {
    spool: Mutex<Spool>,
    counters: Arc<MqttCounters>,
    /// Poked after each append.
    appended: Notify,
    /// Set when the outbox is dropped: no more results will be appended.
    closing: AtomicBool,
    /// Poked when `closing` is set.
    closed: Notify,
}

impl Shared {
    fn spool(&self) -> MutexGuard<'_, Spool> {
        // The spool moves its counters only after each disk write succeeded, so a panic of
        // the other side while holding the lock leaves it consistent: keep publishing.
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writing end of the MQTT sink: results are appended to the spool here, and the
/// publisher is woken. Dropping it tells the publisher that no more will come, so it
/// drains what is spooled and stops; the owner drops it once every result is written.
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    pub fn append(&self, topic: &str, payload: &str) -> Result<(), SpoolError> {
        let mut spool = self.shared.spool();
        let appended = spool.append(topic, payload);
        self.shared.counters.pending.store(spool.pending(), Relaxed);
        drop(spool);
        appended?;
        self.shared.counters.spooled.fetch_add(1, Relaxed);
        self.shared.appended.notify_one();
        Ok(())
    }

    pub fn counters(&self) -> &Arc<MqttCounters> {
        &self.shared.counters
    }

    /// See [`Spool::tick`].
    pub fn tick(&self) -> Result<(), SpoolError> {
        self.shared.spool().tick()
    }

    /// See [`Spool::sync`].
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.shared.spool().sync()
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.shared.closing.store(true, Relaxed);
        self.shared.closed.notify_one();
    }
}

/// Connects a spool to a broker: the outbox that fills the spool and the publisher that
/// empties it (run it on a tokio runtime). At shutdown the publisher keeps publishing for
/// up to `drain` after the outbox is dropped, then leaves the rest on disk.
pub fn open(
    config: &MqttConfig,
    box_id: &str,
    password: Option<String>,
    spool: Spool,
    counters: Arc<MqttCounters>,
    drain: Duration,
) -> (Outbox, Publisher) {
    counters.pending.store(spool.pending(), Relaxed);
    counters.disconnected_since_ms.store(now_ms(), Relaxed);
    let shared = Arc::new(Shared {
        spool: Mutex::new(spool),
        counters,
        appended: Notify::new(),
        closing: AtomicBool::new(false),
        closed: Notify::new(),
    });
    let publisher =
        Publisher { config: config.clone(), box_id: box_id.into(), password, shared: shared.clone(), drain };
    (Outbox { shared }, publisher)
}

pub struct Publisher {
    config: MqttConfig,
    box_id: String,
    password: Option<String>,
    shared: Arc<Shared>,
    drain: Duration,
}

enum Session {
    /// Lost the connection: back off and reconnect.
    Lost(String),
    /// Shutting down and everything is acknowledged (or the drain time is over).
    Done,
}

/// While the broker stays away, how often a failed reconnection is logged.
const RECONNECT_LOG_EVERY: Duration = Duration::from_secs(60);

impl Publisher {
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(250);
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        let mut warned: Option<Instant> = None;
        loop {
            if self.shared.closing.load(Relaxed) {
                let deadline =
                    *drain_deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.drain);
                if self.pending() == 0 || tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            match self.session(drain_deadline).await {
                Session::Done => break,
                Session::Lost(why) => {
                    let was_connected = self.shared.counters.connected.swap(false, Relaxed);
                    let _ = self.shared.counters.disconnected_since_ms.compare_exchange(
                        0,
                        now_ms(),
                        Relaxed,
                        Relaxed,
                    );
                    self.shared.counters.errors.fetch_add(1, Relaxed);
                    // A lost connection is logged; failed attempts to get it back once a
                    // minute (edge_kd_mqtt_errors_total counts each).
                    if was_connected || warned.is_none_or(|t| t.elapsed() >= RECONNECT_LOG_EVERY) {
                        warned = Some(Instant::now());
                        tracing::warn!(
                            "MQTT {}:{}: {why}; {} results spooled, retrying in {:?}",
                            self.config.host,
                            self.config.port,
                            self.pending(),
                            backoff
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.shared.closed.notified() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
            if self.shared.counters.connected.load(Relaxed) {
                backoff = Duration::from_millis(250);
            }
        }
        let left = self.pending();
        if left > 0 {
            tracing::warn!("MQTT: {left} results stay in the spool and are published after the next start");
        }
    }

    fn pending(&self) -> u64 {
        let pending = self.shared.spool().pending();
        self.shared.counters.pending.store(pending, Relaxed);
        pending
    }

    fn options(&self) -> MqttOptions {
        let c = &self.config;
        let id = c.client_id.clone().unwrap_or_else(|| format!("edge-kd-{}", self.box_id));
        let mut o = MqttOptions::new(id, c.host.clone(), c.port);
        o.set_keep_alive(Duration::from_secs(c.keepalive_s));
        o.set_clean_session(true);
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_inflight(u16::try_from(c.window + 1).unwrap_or(u16::MAX));
        o.set_last_will(LastWill::new(
            status_topic(c, &self.box_id),
            r#"{"state":"offline"}"#,
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(user) = &c.username {
            o.set_credentials(user.clone(), self.password.clone().unwrap_or_default());
        }
        o
    }

    async fn session(&self, drain_deadline: Option<tokio::time::Instant>) -> Session {
        let (client, mut events) = AsyncClient::new(self.options(), self.config.window + 8);
        if let Err(why) = connected(&mut events).await {
            return Session::Lost(why);
        }
        self.shared.counters.connected.store(true, Relaxed);
        self.shared.counters.disconnected_since_ms.store(0, Relaxed);
        tracing::info!("MQTT: connected to {}:{}", self.config.host, self.config.port);
        let online = serde_json::json!({
            "state": "online",
            "version": env!("CARGO_PKG_VERSION"),
            "since_ms": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        });
        let status = status_topic(&self.config, &self.box_id);
        if let Err(e) = client.try_publish(status.clone(), QoS::AtLeastOnce, true, online.to_string()) {
            return Session::Lost(e.to_string());
        }
        // What was handed to the client, in order: the spool seq (None for status
        // messages), then the packet id once the client has written it.
        let mut requested: VecDeque<Option<u64>> = VecDeque::from([None]);
        let mut in_flight: VecDeque<(u16, Option<u64>, bool)> = VecDeque::new();
        let mut next = self.shared.spool().acked();
        let mut deadline = drain_deadline;
        let mut said_offline = false;
        let mut ack_failing = false;
        loop {
            let outstanding = requested.len() + in_flight.len();
            if outstanding < self.config.window {
                let batch = self.shared.spool().read(next, self.config.window - outstanding);
                match batch {
                    Ok(entries) => {
                        for e in entries {
                            if let Err(err) = client.try_publish(e.topic, QoS::AtLeastOnce, false, e.payload)
                            {
                                return Session::Lost(err.to_string());
                            }
                            requested.push_back(Some(e.seq));
                            next = e.seq + 1;
                        }
                    }
                    Err(e) => {
                        tracing::error!("{e}");
                        return Session::Lost(e.to_string());
                    }
                }
            }
            if self.shared.closing.load(Relaxed) {
                let d = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.drain);
                let idle = requested.is_empty() && in_flight.is_empty();
                if (idle && self.pending() == 0) || tokio::time::Instant::now() >= d {
                    if !said_offline {
                        said_offline = true;
                        let _ = client.try_publish(
                            status.clone(),
                            QoS::AtLeastOnce,
                            true,
                            r#"{"state":"offline"}"#,
                        );
                        requested.push_back(None);
                        // Give the offline status a moment to be acknowledged, then go.
                        deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                        continue;
                    }
                    if idle || tokio::time::Instant::now() >= d {
                        let _ = client.try_disconnect();
                        let _ = tokio::time::timeout(Duration::from_millis(500), events.poll()).await;
                        return Session::Done;
                    }
                }
            }
            let event = tokio::select! {
                ev = events.poll() => ev,
                _ = self.shared.appended.notified(), if requested.len() + in_flight.len() < self.config.window => continue,
                _ = self.shared.closed.notified() => continue,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            };
            match event {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(seq) = requested.pop_front() {
                        in_flight.push_back((pkid, seq, false));
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(entry) = in_flight.iter_mut().find(|(p, _, done)| *p == ack.pkid && !done) {
                        entry.2 = true;
                    }
                    let mut acked_upto = None;
                    while in_flight.front().is_some_and(|(_, _, done)| *done) {
                        if let Some((_, Some(seq), _)) = in_flight.pop_front() {
                            acked_upto = Some(seq + 1);
                            self.shared.counters.published.fetch_add(1, Relaxed);
                        }
                    }
                    if let Some(upto) = acked_upto {
                        // Not recorded (a full disk): the next start publishes these again
                        // (same seq). Logged once until recording works again.
                        match self.shared.spool().ack(upto) {
                            Err(e) if !ack_failing => {
                                ack_failing = true;
                                tracing::error!("{e}; the results since are published again after a restart");
                            }
                            Ok(()) if ack_failing => {
                                ack_failing = false;
                                tracing::info!("MQTT spool: acknowledgements recorded again");
                            }
                            _ => {}
                        }
                        self.pending();
                    }
                }
                Ok(_) => {}
                Err(e) => return Session::Lost(e.to_string()),
            }
        }
    }
}

async fn connected(events: &mut EventLoop) -> Result<(), String> {
    let wait = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return if ack.code == rumqttc::ConnectReturnCode::Success {
                        Ok(())
                    } else {
                        Err(format!("broker refused the connection: {:?}", ack.code))
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| Err("no CONNACK within 10 s".into()))
}
