//! The per-input result as programs read it: the JSONL contract of design §1, shared by
//! `run` (one line per file) and `serve`'s sinks (which add where and when the frame came from).
//! Keys are public; add new ones, never rename or remove.

use serde::Serialize;

use crate::classify::Outcome;
use crate::decide::Verdict;

#[derive(Debug, Clone, Serialize)]
pub struct TopLabel {
    pub label: String,
    pub p: f32,
}

/// What became of one input: a decision, or why there is none.
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

    pub fn verdict(&self) -> Option<Verdict> {
        match self {
            ResultBody::Decided { verdict, .. } => Some(*verdict),
            ResultBody::Failed { .. } => None,
        }
    }

    pub fn label(&self) -> Option<&str> {
        match self {
            ResultBody::Decided { label, .. } => Some(label),
            ResultBody::Failed { .. } => None,
        }
    }
}

/// One line of `run`'s output.
#[derive(Debug, Serialize)]
pub struct FileResult<'a> {
    pub file: &'a str,
    #[serde(flatten)]
    pub body: &'a ResultBody,
}
