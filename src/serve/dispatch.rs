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
