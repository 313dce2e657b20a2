//! The per-input result as programs read it: the JSONL contract of design §1.
//! Keys are public; add new ones, never rename or remove.

use serde::Serialize;

use crate::classify::Outcome;
use crate::decide::Verdict;
use crate::engine::EngineKind;

#[derive(Debug, Serialize)]
pub struct TopEntry<'a> {
    pub label: &'a str,
    pub p: f32,
}

#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub file: &'a str,
    pub label: &'a str,
    pub class_index: usize,
    pub confidence: f32,
    pub threshold: Option<f32>,
    pub verdict: Verdict,
    pub top: Vec<TopEntry<'a>>,
    pub latency_us: u64,
    pub engine: &'static str,
}

impl<'a> Record<'a> {
    pub fn new(file: &'a str, outcome: &Outcome, labels: &'a [String], engine: EngineKind) -> Self {
        let d = &outcome.decision;
        Record {
            file,
            label: &labels[d.class_index],
            class_index: d.class_index,
            confidence: d.confidence,
            threshold: d.threshold,
            verdict: d.verdict,
            top: d.top.iter().map(|&(i, p)| TopEntry { label: &labels[i], p }).collect(),
            latency_us: u64::try_from(outcome.latency.as_micros()).unwrap_or(u64::MAX),
            engine: engine.as_str(),
        }
    }
}

/// A failed input: one line with the file and what went wrong.
#[derive(Debug, Serialize)]
pub struct FailedRecord<'a> {
    pub file: &'a str,
    pub error: &'a str,
}
