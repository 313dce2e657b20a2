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
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::Notify;

use super::spool::Spool;
use crate::serve::config::MqttConfig;
use crate::serve::metrics::Metrics;

pub fn result_topic(config: &MqttConfig, box_id: &str, source: &str) -> String {
    format!("{}/{box_id}/{source}/result", config.topic_prefix)
}

pub fn status_topic(config: &MqttConfig, box_id: &str) -> String {
    format!("{}/{box_id}/status", config.topic_prefix)
}

pub struct Publisher {
    pub config: MqttConfig,
    pub box_id: String,
    pub password: Option<String>,
    pub spool: Arc<Mutex<Spool>>,
    /// Poked by the dispatcher after each append.
    pub appended: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// Set once no more results will be appended.
    pub closing: Arc<AtomicBool>,
    /// Poked when `closing` is set.
    pub closing_notify: Arc<Notify>,
    pub drain: Duration,
}

enum Session {
    /// Lost the connection: back off and reconnect.
    Lost(String),
    /// Shutting down and everything is acknowledged (or the drain time is over).
    Done,
}

impl Publisher {
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(250);
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        loop {
            if self.closing.load(Relaxed) {
                let deadline =
                    *drain_deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.drain);
                if self.pending() == 0 || tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            match self.session(drain_deadline).await {
                Session::Done => break,
                Session::Lost(why) => {
                    self.metrics.sinks.mqtt_connected.store(false, Relaxed);
                    self.metrics.sinks.mqtt_errors.fetch_add(1, Relaxed);
                    tracing::warn!(
                        "MQTT {}:{}: {why}; {} results spooled, retrying in {:?}",
                        self.config.host,
                        self.config.port,
                        self.pending(),
                        backoff
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.closing_notify.notified() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
            if self.metrics.sinks.mqtt_connected.load(Relaxed) {
                backoff = Duration::from_millis(250);
            }
        }
        let left = self.pending();
        if left > 0 {
            tracing::warn!("MQTT: {left} results stay in the spool and are published after the next start");
        }
    }

    fn pending(&self) -> u64 {
        let pending = self.spool.lock().map(|s| s.pending()).unwrap_or(0);
        self.metrics.sinks.mqtt_pending.store(pending, Relaxed);
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
        self.metrics.sinks.mqtt_connected.store(true, Relaxed);
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
        let mut next = self.spool.lock().map(|s| s.acked()).unwrap_or(0);
        let mut deadline = drain_deadline;
        let mut said_offline = false;
        loop {
            let outstanding = requested.len() + in_flight.len();
            if outstanding < self.config.window {
                let batch = match self.spool.lock() {
                    Ok(mut s) => s.read(next, self.config.window - outstanding),
                    Err(_) => return Session::Lost("spool lock poisoned".into()),
                };
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
            if self.closing.load(Relaxed) {
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
                _ = self.appended.notified(), if requested.len() + in_flight.len() < self.config.window => continue,
                _ = self.closing_notify.notified() => continue,
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
                            self.metrics.sinks.mqtt_published.fetch_add(1, Relaxed);
                        }
                    }
                    if let Some(upto) = acked_upto {
                        let result = self.spool.lock().map(|mut s| s.ack(upto));
                        if let Ok(Err(e)) = result {
                            tracing::error!("{e}");
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
