//! The one thread that writes results to the sinks, in the order workers finish them.
//! A folder file is moved or deleted, and an upload answered, only once its result is
//! written to every sink; a sink that fails keeps its lines in memory and retries them
//! (a full disk, say), so no result is lost, and the files and uploads wait with them.
//! Each result gets the box's next `seq` here, the same number in every sink.

use std::collections::VecDeque;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::config::{AfterProcessing, FolderConfig};
use super::job::{Finished, Reply, ReplyOk};
use crate::decide::Verdict;
use crate::sink::health::{WriteHealth, now_ms};
use crate::sink::jsonl::JsonlSink;
use crate::sink::mqtt::Outbox;
use crate::sink::review::ReviewSink;
use crate::sink::seq::Sequence;

/// The most recent results, for `/results/latest`.
pub struct Latest {
    keep: usize,
    lines: Mutex<VecDeque<(usize, Arc<String>)>>,
}

impl Latest {
    pub fn new(keep: usize) -> Self {
        Latest { keep: keep.max(1), lines: Mutex::new(VecDeque::new()) }
    }

    fn push(&self, source: usize, json: Arc<String>) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == self.keep {
            lines.pop_front();
        }
        lines.push_back((source, json));
    }

    /// Newest first.
    pub fn get(&self, n: usize, source: Option<usize>) -> Vec<Arc<String>> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .iter()
            .rev()
            .filter(|(s, _)| source.is_none_or(|want| *s == want))
            .take(n)
            .map(|(_, j)| j.clone())
            .collect()
    }
}

/// Where one source's results go besides the shared sinks.
pub struct Route {
    /// Its MQTT result topic; None without an MQTT sink.
    pub topic: Option<Arc<str>>,
    /// Its folder, whose files are kept, moved or deleted once their result is written.
    pub folder: Option<FolderConfig>,
}

pub struct Dispatcher {
    rx: Receiver<Finished>,
    jsonl: Option<JsonlSink>,
    mqtt: Option<Outbox>,
    review: Option<ReviewSink>,
    /// By source index.
    routes: Vec<Route>,
    latest: Arc<Latest>,
    seq: Sequence,
    /// Logged once when storing the mark starts failing, and once when it works again.
    seq_failing: bool,
    /// Results waiting for a seq, in arrival order: the high-water mark could not be stored.
    unnumbered: VecDeque<Finished>,
    pending_jsonl: Backlog<String>,
    /// (topic, line)
    pending_mqtt: Backlog<(Arc<str>, String)>,
    /// Results whose file or upload waits for them to be written, in order.
    settling: VecDeque<Settling>,
}

/// A result's folder files and upload, waiting for its lines to be written.
struct Settling {
    source: usize,
    files: Vec<PathBuf>,
    reply: Option<oneshot::Sender<Reply>>,
    answer: ReplyOk,
    /// Its line's position in each sink's backlog.
    jsonl: Option<u64>,
    mqtt: Option<u64>,
}

/// While a sink keeps failing, a reminder this often (besides the lines when it starts
/// failing and when it writes again).
const STILL_FAILING_EVERY: Duration = Duration::from_secs(60);

/// One sink's results not yet written, oldest first, and the sink's health.
struct Backlog<T> {
    what: &'static str,
    lines: VecDeque<T>,
    health: Arc<WriteHealth>,
    /// Lines written since the start: the line pushed at position p is written once
    /// `written > p`.
    written: u64,
    /// Lines at the front already counted as failed results.
    counted: usize,
    reminded: Option<Instant>,
}

impl<T> Backlog<T> {
    fn new(what: &'static str, health: Arc<WriteHealth>) -> Self {
        Backlog { what, lines: VecDeque::new(), health, written: 0, counted: 0, reminded: None }
    }

    /// Queues a line; its position.
    fn push(&mut self, line: T) -> u64 {
        self.lines.push_back(line);
        self.written + self.lines.len() as u64 - 1
    }

    fn is_written(&self, position: u64) -> bool {
        self.written > position
    }

    /// Writes lines from the front until the sink refuses one. Logged once when the sink
    /// starts failing, every `STILL_FAILING_EVERY` while it does, and once when it writes
    /// again; every line that had to wait is counted once.
    fn write<E: Display>(&mut self, mut write: impl FnMut(&T) -> Result<(), E>) {
        let health = &self.health;
        while let Some(line) = self.lines.front() {
            if let Err(e) = write(line) {
                let waiting = self.lines.len();
                if health.failing_since_ms.load(Relaxed) == 0 {
                    health.failing_since_ms.store(now_ms(), Relaxed);
                    self.reminded = Some(Instant::now());
                    tracing::error!("{e}; {waiting} result(s) wait in memory and are retried");
                } else if self.reminded.is_none_or(|t| t.elapsed() >= STILL_FAILING_EVERY) {
                    self.reminded = Some(Instant::now());
                    tracing::error!("{e}; still failing, {waiting} result(s) waiting");
                }
                break;
            }
            self.lines.pop_front();
            self.written += 1;
            self.counted = self.counted.saturating_sub(1);
        }
        if self.lines.is_empty() && health.failing_since_ms.swap(0, Relaxed) != 0 {
            tracing::info!("{}: writing again; every result that waited is written", self.what);
        }
        let new = self.lines.len() - self.counted;
        health.failed_results.fetch_add(new as u64, Relaxed);
        self.counted = self.lines.len();
        health.waiting.store(self.lines.len() as u64, Relaxed);
    }
}

impl Dispatcher {
    pub fn new(
        rx: Receiver<Finished>,
        jsonl: Option<JsonlSink>,
        mqtt: Option<Outbox>,
        review: Option<ReviewSink>,
        routes: Vec<Route>,
        latest: Arc<Latest>,
        seq: Sequence,
    ) -> Self {
        // A sink that is not configured gets a health nobody reads: its backlog stays empty.
        let jsonl_health = jsonl.as_ref().map(|j| j.counters().health.clone()).unwrap_or_default();
        let spool_health = mqtt.as_ref().map(|m| m.counters().spool.clone()).unwrap_or_default();
        Dispatcher {
            rx,
            jsonl,
            mqtt,
            review,
            routes,
            latest,
            seq,
            seq_failing: false,
            unnumbered: VecDeque::new(),
            pending_jsonl: Backlog::new("sinks.jsonl", jsonl_health),
            pending_mqtt: Backlog::new("sinks.mqtt spool", spool_health),
            settling: VecDeque::new(),
        }
    }

    /// Runs until every worker is gone, then flushes. Dropping the MQTT outbox on return
    /// tells the publisher that every result is spooled.
    pub fn run(mut self) {
        loop {
            match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(finished) => {
                    self.unnumbered.push_back(finished);
                    self.number_and_write();
                }
                Err(RecvTimeoutError::Timeout) => self.idle(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.idle();
        if let Some(j) = &mut self.jsonl
            && let Err(e) = j.flush()
        {
            tracing::error!("{e}");
        }
        if let Some(m) = &self.mqtt
            && let Err(e) = m.sync()
        {
            tracing::error!("{e}");
        }
        if let Err(e) = self.seq.close() {
            // The mark on disk stays ahead of every number used: the next start skips some.
            tracing::warn!("{e}");
        }
        for Finished { line, .. } in &self.unnumbered {
            tracing::error!("result without a seq, not written to any sink: {}", line.to_json());
        }
        for line in &self.pending_jsonl.lines {
            // The file refused them to the end; the log is the last place they can go.
            tracing::error!("result not written to the JSONL file: {line}");
        }
        for (_, line) in &self.pending_mqtt.lines {
            tracing::error!("result not written to the MQTT spool: {line}");
        }
        for path in self.settling.iter().flat_map(|s| &s.files) {
            tracing::warn!("{}: left in place: its result is not written to every sink", path.display());
        }
    }

    /// Hands out seqs in arrival order and writes each result; a result that cannot get one
    /// waits, with those behind it, for the next try.
    fn number_and_write(&mut self) {
        while !self.unnumbered.is_empty() {
            let seq = match self.seq.take() {
                Ok(seq) => seq,
                Err(e) => {
                    if !self.seq_failing {
                        self.seq_failing = true;
                        tracing::error!("{e}; {} results wait for a seq", self.unnumbered.len());
                    }
                    return;
                }
            };
            if self.seq_failing {
                self.seq_failing = false;
                tracing::info!("seq high-water mark stored again; the waiting results are written");
            }
            let Some(mut finished) = self.unnumbered.pop_front() else { return };
            finished.line.seq = Some(seq);
            self.handle(finished);
        }
    }

    fn handle(&mut self, finished: Finished) {
        let Finished { source, line, review, files, reply, .. } = finished;
        let json = Arc::new(line.to_json());
        let jsonl = self.jsonl.is_some().then(|| self.pending_jsonl.push(json.to_string()));
        let mqtt = match (&self.mqtt, self.routes.get(source).and_then(|r| r.topic.clone())) {
            (Some(_), Some(topic)) => Some(self.pending_mqtt.push((topic, json.to_string()))),
            _ => None,
        };
        self.write_pending();
        if let (Some(sink), false, Some(Verdict::Review)) =
            (&mut self.review, review.is_empty(), line.verdict())
            && let Err(e) =
                sink.save(line.ts_ms, &line.source, line.label().unwrap_or("none"), &review, &json)
        {
            tracing::error!("{e}");
        }
        self.latest.push(source, json.clone());
        let answer = ReplyOk { json, decided: line.verdict().is_some() };
        self.settling.push_back(Settling { source, files, reply, answer, jsonl, mqtt });
        self.settle();
    }

    fn idle(&mut self) {
        self.number_and_write();
        self.write_pending();
        self.settle();
        if let Some(j) = &mut self.jsonl
            && let Err(e) = j.tick()
        {
            tracing::error!("{e}");
        }
        if let Some(m) = &self.mqtt
            && let Err(e) = m.tick()
        {
            tracing::error!("{e}");
        }
    }

    /// Writes what is waiting, in order, until a sink refuses.
    fn write_pending(&mut self) {
        if let Some(sink) = &mut self.jsonl {
            self.pending_jsonl.write(|line| sink.write(line));
        }
        if let Some(m) = &self.mqtt {
            self.pending_mqtt.write(|(topic, line)| m.append(topic, line));
        }
    }

    /// Moves or deletes the folder files, and answers the uploads, of the results now
    /// written to every sink: oldest first, so a result waits for those before it.
    fn settle(&mut self) {
        while let Some(front) = self.settling.front() {
            let jsonl_written = front.jsonl.is_none_or(|p| self.pending_jsonl.is_written(p));
            let mqtt_written = front.mqtt.is_none_or(|p| self.pending_mqtt.is_written(p));
            if !(jsonl_written && mqtt_written) {
                return;
            }
            let Some(Settling { source, files, reply, answer, .. }) = self.settling.pop_front() else {
                return;
            };
            if let Some(reply) = reply {
                let _ = reply.send(Ok(answer));
            }
            for path in files {
                self.after_processing(source, &path);
            }
        }
    }

    fn after_processing(&self, source: usize, path: &Path) {
        let Some(folder) = self.routes.get(source).and_then(|r| r.folder.as_ref()) else { return };
        if let Err(e) = let_go(folder, path) {
            tracing::warn!("{}: processed, but cannot {:?} it: {e}", path.display(), folder.after);
        }
    }
}

/// A folder file whose result is written: kept, moved or deleted, as its folder says.
pub fn let_go(folder: &FolderConfig, path: &Path) -> std::io::Result<()> {
    match (folder.after, &folder.move_to, path.file_name()) {
        (AfterProcessing::Delete, ..) => std::fs::remove_file(path),
        (AfterProcessing::Move, Some(dir), Some(name)) => std::fs::rename(path, dir.join(name)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;
    use crate::sink::jsonl::{JsonlConfig, JsonlCounters};
    use crate::sink::{FsyncPolicy, ResultBody, ResultLine};

    fn finished(n: usize) -> Finished {
        let line = ResultLine {
            seq: None,
            ts_ms: 0,
            source: "s".into(),
            file: format!("{n}"),
            sample: None,
            body: ResultBody::Failed { error: "e".into() },
            model_sha256: None,
        };
        Finished {
            source: 0,
            line,
            elapsed: Duration::ZERO,
            review: Vec::new(),
            files: Vec::new(),
            reply: None,
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn results_wait_in_order_while_the_seq_mark_cannot_be_stored() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("r.jsonl");
        let config = JsonlConfig {
            path: results.clone(),
            fsync: FsyncPolicy::Never,
            fsync_interval_ms: 1000,
            rotate_bytes: 0,
            keep: 1,
        };
        let jsonl = JsonlSink::open(&config, Arc::new(JsonlCounters::default())).unwrap();
        let seq = Sequence::open(&dir.path().join("seq"), 0).unwrap();
        let (tx, rx) = mpsc::channel();
        let routes = vec![Route { topic: None, folder: None }];
        let dispatcher = Dispatcher::new(rx, Some(jsonl), None, None, routes, Arc::new(Latest::new(1)), seq);
        let thread = std::thread::spawn(move || dispatcher.run());

        // The first block (1000 numbers) was reserved at open; the next needs the mark stored.
        for n in 0..1000 {
            tx.send(finished(n)).unwrap();
        }
        wait_for("the first block", || lines(&results).len() == 1000);
        // A folder where the new mark is written first: storing it fails, even for root.
        std::fs::create_dir(dir.path().join("seq.tmp")).unwrap();
        for n in 1000..1005 {
            tx.send(finished(n)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(lines(&results).len(), 1000, "no line without a reserved seq");
        std::fs::remove_dir(dir.path().join("seq.tmp")).unwrap();
        wait_for("the waiting results", || lines(&results).len() == 1005);
        drop(tx);
        thread.join().unwrap();

        let all = lines(&results);
        let seqs: Vec<u64> = all.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (0..1005).collect::<Vec<_>>(), "in order, none skipped, none repeated");
        assert_eq!(all[1004]["file"], "1004");
        let mark = std::fs::read_to_string(dir.path().join("seq")).unwrap();
        assert_eq!(mark.trim(), "1005", "a clean stop stores the exact next seq");
    }
}
