//! What `/metrics` exports, in the Prometheus text format. Counters are atomics so the
//! frame path never waits on a scrape; only the per-label maps take a short lock. The
//! sinks' counters live in the sinks; this module only reads them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::connections::ConnectionCounters;
use crate::sink::jsonl::JsonlCounters;
use crate::sink::mqtt::MqttCounters;
use crate::sink::review::ReviewCounters;

/// Upper bounds (seconds) of the frame latency histogram: sub-millisecond students up
/// to 224-px models on a small ARM core.
const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5];

#[derive(Default)]
pub struct SourceMetrics {
    pub name: String,
    pub frames: AtomicU64,
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
    /// Folder entries with an image's name that are not files, each counted once.
    pub not_files: AtomicU64,
    /// Folder file reads that failed for a reason outside the file and were retried.
    pub read_retries: AtomicU64,
    /// Folder files waiting to be read again (the log says when the first starts and
    /// the last ends).
    pub read_retry_pending: AtomicU64,
    pub queue_depth: AtomicU64,
    pub up: AtomicBool,
    state: Mutex<String>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
    verdicts: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Decided frames by the inputs they had (`rgb+height`, card order).
    subsets: Mutex<BTreeMap<String, u64>>,
    reloads: Mutex<BTreeMap<&'static str, u64>>,
    model: Mutex<(String, String)>,
}

impl SourceMetrics {
    pub fn new(name: &str) -> Self {
        SourceMetrics { name: name.into(), ..Default::default() }
    }

    pub fn set_state(&self, up: bool, state: impl Into<String>) {
        self.up.store(up, Relaxed);
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state.into();
    }

    pub fn state(&self) -> String {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A frame decided: its end-to-end latency (queue wait included), verdict, and the
    /// inputs it had (`subset`: their names joined by `+` in card order).
    pub fn observe(&self, latency: Duration, label: &str, verdict: &'static str, subset: &str) {
        self.frames.fetch_add(1, Relaxed);
        let secs = latency.as_secs_f64();
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.latency_sum_us.fetch_add(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX), Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        match verdicts.get_mut(&(label.to_string(), verdict)) {
            Some(n) => *n += 1,
            None => {
                verdicts.insert((label.to_string(), verdict), 1);
            }
        }
        drop(verdicts);
        let mut subsets = self.subsets.lock().unwrap_or_else(|p| p.into_inner());
        match subsets.get_mut(subset) {
            Some(n) => *n += 1,
            None => {
                subsets.insert(subset.to_string(), 1);
            }
        }
    }

    pub fn reload(&self, result: &'static str) {
        *self.reloads.lock().unwrap_or_else(|p| p.into_inner()).entry(result).or_default() += 1;
    }

    pub fn set_model(&self, name: &str, sha256: &str) {
        *self.model.lock().unwrap_or_else(|p| p.into_inner()) = (name.into(), sha256.into());
    }
}

/// Every counter `/metrics` exports: one set per source (each pipeline holds its own), and
/// the counters each sink keeps.
pub struct Metrics {
    pub sources: Vec<Arc<SourceMetrics>>,
    pub jsonl: Arc<JsonlCounters>,
    pub mqtt: Arc<MqttCounters>,
    pub review: Arc<ReviewCounters>,
    pub http: Arc<ConnectionCounters>,
}

impl Metrics {
    pub fn new(source_names: &[String]) -> Self {
        Metrics {
            sources: source_names.iter().map(|n| Arc::new(SourceMetrics::new(n))).collect(),
            jsonl: Arc::default(),
            mqtt: Arc::default(),
            review: Arc::default(),
            http: Arc::default(),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let counters: [(&str, &str, Getter); 5] = [
            ("edge_kd_frames_total", "Frames decided.", |s| s.frames.load(Relaxed)),
            ("edge_kd_dropped_total", "Frames dropped because the source's queue was full.", |s| {
                s.dropped.load(Relaxed)
            }),
            ("edge_kd_errors_total", "Frames that could not be decided (bad image, engine error).", |s| {
                s.errors.load(Relaxed)
            }),
            (
                "edge_kd_folder_not_files_total",
                "Watched-folder entries with an image's name that are not files (a directory, a symlink \
                 loop, a dangling symlink): reported once each and left in place.",
                |s| s.not_files.load(Relaxed),
            ),
            (
                "edge_kd_read_retries_total",
                "Folder file reads retried after failing for a reason outside the file (descriptors \
                 exhausted, I/O error): the file stays until it is read.",
                |s| s.read_retries.load(Relaxed),
            ),
        ];
        for (name, help, get) in counters {
            header(&mut out, name, help, "counter");
            for s in &self.sources {
                let _ = writeln!(out, "{name}{{source=\"{}\"}} {}", esc(&s.name), get(s));
            }
        }
        header(
            &mut out,
            "edge_kd_read_retry_pending",
            "Folder files waiting to be read again after a failure outside the file.",
            "gauge",
        );
        for s in &self.sources {
            let _ = writeln!(
                out,
                "edge_kd_read_retry_pending{{source=\"{}\"}} {}",
                esc(&s.name),
                s.read_retry_pending.load(Relaxed)
            );
        }
        header(&mut out, "edge_kd_queue_depth", "Frames waiting for a worker.", "gauge");
        for s in &self.sources {
            let _ = writeln!(
                out,
                "edge_kd_queue_depth{{source=\"{}\"}} {}",
                esc(&s.name),
                s.queue_depth.load(Relaxed)
            );
        }
        header(
            &mut out,
            "edge_kd_source_up",
            "1 when the source delivers frames (camera streaming, folder watched).",
            "gauge",
        );
        for s in &self.sources {
            let _ = writeln!(
                out,
                "edge_kd_source_up{{source=\"{}\",state=\"{}\"}} {}",
                esc(&s.name),
                esc(&s.state()),
                u8::from(s.up.load(Relaxed))
            );
        }
        header(
            &mut out,
            "edge_kd_frame_latency_seconds",
            "From a frame's arrival to its verdict.",
            "histogram",
        );
        for s in &self.sources {
            let src = esc(&s.name);
            for (bucket, bound) in s.latency_buckets.iter().zip(LATENCY_BUCKETS) {
                let _ = writeln!(
                    out,
                    "edge_kd_frame_latency_seconds_bucket{{source=\"{src}\",le=\"{bound}\"}} {}",
                    bucket.load(Relaxed)
                );
            }
            let count = s.latency_count.load(Relaxed);
            let _ =
                writeln!(out, "edge_kd_frame_latency_seconds_bucket{{source=\"{src}\",le=\"+Inf\"}} {count}");
            let sum = s.latency_sum_us.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "edge_kd_frame_latency_seconds_sum{{source=\"{src}\"}} {sum}");
            let _ = writeln!(out, "edge_kd_frame_latency_seconds_count{{source=\"{src}\"}} {count}");
        }
        header(&mut out, "edge_kd_verdicts_total", "Decided frames by label and verdict.", "counter");
        for s in &self.sources {
            for ((label, verdict), n) in s.verdicts.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let _ = writeln!(
                    out,
                    "edge_kd_verdicts_total{{source=\"{}\",label=\"{}\",verdict=\"{verdict}\"}} {n}",
                    esc(&s.name),
                    esc(label)
                );
            }
        }
        header(
            &mut out,
            "edge_kd_frames_by_subset_total",
            "Decided frames by the inputs they had (names joined by + in card order).",
            "counter",
        );
        for s in &self.sources {
            for (subset, n) in s.subsets.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let _ = writeln!(
                    out,
                    "edge_kd_frames_by_subset_total{{source=\"{}\",subset=\"{}\"}} {n}",
                    esc(&s.name),
                    esc(subset)
                );
            }
        }
        header(
            &mut out,
            "edge_kd_model_reloads_total",
            "Model reloads by result (ok, refused, failed, restored).",
            "counter",
        );
        for s in &self.sources {
            for (result, n) in s.reloads.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let _ = writeln!(
                    out,
                    "edge_kd_model_reloads_total{{source=\"{}\",result=\"{result}\"}} {n}",
                    esc(&s.name)
                );
            }
        }
        header(&mut out, "edge_kd_model_info", "The model each source serves.", "gauge");
        for s in &self.sources {
            let (name, sha) = s.model.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let _ = writeln!(
                out,
                "edge_kd_model_info{{source=\"{}\",model=\"{}\",sha256=\"{}\"}} 1",
                esc(&s.name),
                esc(&name),
                esc(&sha)
            );
        }
        let (jsonl, mqtt, review) = (&self.jsonl, &self.mqtt, &self.review);
        let sink_values: [(&str, &str, &str, u64); 12] = [
            (
                "edge_kd_jsonl_lines_total",
                "Result lines appended to the JSONL file.",
                "counter",
                jsonl.lines.load(Relaxed),
            ),
            (
                "edge_kd_jsonl_errors_total",
                "Results the JSONL file refused when they came (each counted once; kept in memory and retried).",
                "counter",
                jsonl.health.failed_results.load(Relaxed),
            ),
            (
                "edge_kd_jsonl_waiting",
                "Results waiting in memory for the JSONL file to take them.",
                "gauge",
                jsonl.health.waiting.load(Relaxed),
            ),
            (
                "edge_kd_mqtt_connected",
                "1 while connected to the MQTT broker.",
                "gauge",
                u64::from(mqtt.connected.load(Relaxed)),
            ),
            (
                "edge_kd_mqtt_published_total",
                "Results the broker acknowledged (QoS 1).",
                "counter",
                mqtt.published.load(Relaxed),
            ),
            (
                "edge_kd_mqtt_spooled_total",
                "Results written to the MQTT spool.",
                "counter",
                mqtt.spooled.load(Relaxed),
            ),
            (
                "edge_kd_mqtt_spool_pending",
                "Results in the spool not yet acknowledged by the broker.",
                "gauge",
                mqtt.pending.load(Relaxed),
            ),
            ("edge_kd_mqtt_errors_total", "MQTT connection errors.", "counter", mqtt.errors.load(Relaxed)),
            (
                "edge_kd_mqtt_spool_errors_total",
                "Results the MQTT spool refused when they came (each counted once; kept in memory and retried).",
                "counter",
                mqtt.spool.failed_results.load(Relaxed),
            ),
            (
                "edge_kd_mqtt_spool_waiting",
                "Results waiting in memory for the MQTT spool to take them.",
                "gauge",
                mqtt.spool.waiting.load(Relaxed),
            ),
            (
                "edge_kd_review_frames_total",
                "Frames saved for review.",
                "counter",
                review.saved.load(Relaxed),
            ),
            (
                "edge_kd_review_errors_total",
                "Review frames that could not be saved.",
                "counter",
                review.errors.load(Relaxed),
            ),
        ];
        let http = &self.http;
        let http_values: [(&str, &str, &str, u64); 5] = [
            ("edge_kd_http_connections", "Open HTTP connections.", "gauge", http.open.load(Relaxed)),
            (
                "edge_kd_http_header_timeouts_total",
                "HTTP connections closed for not sending a request head within http.header_timeout_ms.",
                "counter",
                http.header_timeouts.load(Relaxed),
            ),
            (
                "edge_kd_http_idle_timeouts_total",
                "HTTP connections closed after http.idle_timeout_ms without a request.",
                "counter",
                http.idle_timeouts.load(Relaxed),
            ),
            (
                "edge_kd_http_evicted_total",
                "Idle HTTP connections closed to make room at http.max_connections.",
                "counter",
                http.evicted.load(Relaxed),
            ),
            (
                "edge_kd_http_accept_errors_total",
                "Failed accepts (descriptors exhausted), retried.",
                "counter",
                http.accept_errors.load(Relaxed),
            ),
        ];
        for (name, help, kind, value) in sink_values.into_iter().chain(http_values) {
            header(&mut out, name, help, kind);
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

/// Reads one counter of a source.
type Getter = fn(&SourceMetrics) -> u64;

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Label values escaped as the exposition format requires.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_labels_are_escaped() {
        let m = Metrics::new(&["cam\"0".to_string()]);
        m.sources[0].observe(Duration::from_micros(800), "ok", "accept", "rgb+height");
        m.sources[0].observe(Duration::from_millis(30), "ok", "review", "rgb");
        let text = m.render();
        assert!(
            text.contains(r#"edge_kd_frame_latency_seconds_bucket{source="cam\"0",le="0.001"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"edge_kd_frame_latency_seconds_bucket{source="cam\"0",le="0.05"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"edge_kd_frame_latency_seconds_count{source="cam\"0"} 2"#), "{text}");
        assert!(
            text.contains(r#"edge_kd_verdicts_total{source="cam\"0",label="ok",verdict="review"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"edge_kd_frames_total{source="cam\"0"} 2"#), "{text}");
        assert!(text.contains(r#"edge_kd_frames_by_subset_total{source="cam\"0",subset="rgb"} 1"#), "{text}");
        assert!(
            text.contains(r#"edge_kd_frames_by_subset_total{source="cam\"0",subset="rgb+height"} 1"#),
            "{text}"
        );
    }
}
