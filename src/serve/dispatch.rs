//! The one thread that writes results to the sinks, in the order workers finish them.
//! A folder file is moved or deleted, and an upload answered, only after its result is
//! written; a sink that fails keeps its lines in memory and retries, so no result is lost.
//! Each result gets the box's next `seq` here, the same number in every sink.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::config::{AfterProcessing, FolderConfig};
use super::job::{Finished, ReplyOk};
use crate::decide::Verdict;
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
    pending_jsonl: VecDeque<String>,
    /// (topic, line)
    pending_mqtt: VecDeque<(Arc<str>, String)>,
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
            pending_jsonl: VecDeque::new(),
            pending_mqtt: VecDeque::new(),
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
        for line in &self.pending_jsonl {
            // The file refused them to the end; the log is the last place they can go.
            tracing::error!("result not written to the JSONL file: {line}");
        }
        for (_, line) in &self.pending_mqtt {
            tracing::error!("result not written to the MQTT spool: {line}");
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
        let Finished { source, line, review, file, reply, .. } = finished;
        let json = Arc::new(line.to_json());
        if self.jsonl.is_some() {
            self.pending_jsonl.push_back(json.to_string());
        }
        if self.mqtt.is_some()
            && let Some(topic) = self.routes.get(source).and_then(|r| r.topic.clone())
        {
            self.pending_mqtt.push_back((topic, json.to_string()));
        }
        let durable = self.write_pending();
        if let (Some(sink), Some(image), Some(Verdict::Review)) = (&mut self.review, &review, line.verdict())
            && let Err(e) = sink.save(line.ts_ms, &line.source, line.label().unwrap_or("none"), image, &json)
        {
            tracing::error!("{e}");
        }
        self.latest.push(source, json.clone());
        if let Some(reply) = reply {
            let _ = reply.send(Ok(ReplyOk { json, decided: line.verdict().is_some() }));
        }
        if let Some(path) = file {
            if durable {
                self.after_processing(source, &path);
            } else {
                tracing::warn!(
                    "{}: kept in place: its result is not yet written to every sink",
                    path.display()
                );
            }
        }
    }

    fn idle(&mut self) {
        self.number_and_write();
        self.write_pending();
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

    /// Writes what is waiting; true when nothing is left waiting.
    fn write_pending(&mut self) -> bool {
        if let Some(sink) = &mut self.jsonl {
            while let Some(line) = self.pending_jsonl.front() {
                match sink.write(line) {
                    Ok(()) => {
                        self.pending_jsonl.pop_front();
                    }
                    Err(e) => {
                        tracing::error!("{e} ({} results waiting)", self.pending_jsonl.len());
                        break;
                    }
                }
            }
        }
        if let Some(m) = &self.mqtt {
            while let Some((topic, line)) = self.pending_mqtt.front() {
                match m.append(topic, line) {
                    Ok(()) => {
                        self.pending_mqtt.pop_front();
                    }
                    Err(e) => {
                        tracing::error!("{e} ({} results waiting)", self.pending_mqtt.len());
                        break;
                    }
                }
            }
        }
        self.pending_jsonl.is_empty() && self.pending_mqtt.is_empty()
    }

    fn after_processing(&self, source: usize, path: &Path) {
        let Some(folder) = self.routes.get(source).and_then(|r| r.folder.as_ref()) else { return };
        let result = match folder.after {
            AfterProcessing::Keep => return,
            AfterProcessing::Delete => std::fs::remove_file(path),
            AfterProcessing::Move => match (&folder.move_to, path.file_name()) {
                (Some(dir), Some(name)) => std::fs::rename(path, dir.join(name)),
                _ => return,
            },
        };
        if let Err(e) = result {
            tracing::warn!("{}: processed, but cannot {:?} it: {e}", path.display(), folder.after);
        }
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
            body: ResultBody::Failed { error: "e".into() },
            model_sha256: None,
        };
        Finished { source: 0, line, elapsed: Duration::ZERO, review: None, file: None, reply: None }
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
