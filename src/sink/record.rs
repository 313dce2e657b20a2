//! The result line `serve` writes to its sinks: `run`'s JSONL contract (design §1) plus
//! where and when the frame came from. Keys are public: add, never rename or remove.

use serde::Serialize;

use crate::classify::Outcome;
use crate::decide::Verdict;

#[derive(Debug, Clone, Serialize)]
pub struct TopLabel {
    pub label: String,
    pub p: f32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ResultBody {
    Decided {
        label: String,
        class_index: usize,
        confidence: f32,
        threshold: Option<f32>,
        verdict: Verdict,
        top: Vec<TopLabel>,
        latency_us: u64,
        engine: &'static str,
    },
    Failed {
        error: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct ResultLine {
    /// Position in the box's MQTT spool: strictly increasing across restarts, so a
    /// consumer can drop the duplicates an at-least-once replay may bring. Only with MQTT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Arrival time, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    pub source: String,
    pub file: String,
    #[serde(flatten)]
    pub body: ResultBody,
    /// sha256 of the model that decided (absent on failures before a model ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
}

impl ResultBody {
    pub fn decided(outcome: &Outcome, labels: &[String], engine: &'static str) -> Self {
        let d = &outcome.decision;
        ResultBody::Decided {
            label: labels[d.class_index].clone(),
            class_index: d.class_index,
            confidence: d.confidence,
            threshold: d.threshold,
            verdict: d.verdict,
            top: d.top.iter().map(|&(i, p)| TopLabel { label: labels[i].clone(), p }).collect(),
            latency_us: u64::try_from(outcome.latency.as_micros()).unwrap_or(u64::MAX),
            engine,
        }
    }
}

impl ResultLine {
    pub fn verdict(&self) -> Option<Verdict> {
        match &self.body {
            ResultBody::Decided { verdict, .. } => Some(*verdict),
            ResultBody::Failed { .. } => None,
        }
    }

    pub fn label(&self) -> Option<&str> {
        match &self.body {
            ResultBody::Decided { label, .. } => Some(label),
            ResultBody::Failed { .. } => None,
        }
    }

    pub fn to_json(&self) -> String {
        // Only strings, numbers and options: serialising cannot fail.
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"unserialisable result: {e}\"}}"))
    }
}
