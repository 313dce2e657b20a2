//! The per-input result as programs read it: the JSONL contract of design §1, shared by
//! `run` (one line per file) and `serve`'s sinks (which add where and when the frame came from).
//! Keys are public; add new ones, never rename or remove.

use serde::Serialize;

use crate::classify::Outcome;
use crate::decide::{CalibrationUsed, Verdict};
use crate::source::{Member, Sample};

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
        /// Why the verdict is review whatever the confidence: only for a frame whose inputs
        /// the calibrated card has no calibration for.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
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
            reason: (d.calibration == CalibrationUsed::NoneForPresent).then(|| {
                "the card has no calibration for frames with only these inputs (subset), so a person decides"
                    .to_string()
            }),
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
    /// The file, or for a model with several inputs the sample's id.
    pub file: &'a str,
    /// Only for a model with several inputs, so that one-input lines stay as they were.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub sample: Option<&'a SampleFields>,
    #[serde(flatten)]
    pub body: &'a ResultBody,
}

/// What a sample of a model with several inputs adds to its line; keys are card input names,
/// in the card's order.
#[derive(Debug, Clone, Serialize)]
pub struct SampleFields {
    /// Each input's file, `null` where the sample has none.
    pub files: ByInput<Option<String>>,
    pub modalities: ByInput<Presence>,
    /// The inputs the decided sample had, joined by `+` in card order (`"rgb+height"`): the set
    /// its calibration was looked up by ([`crate::card::Card::subset_name`]). Not on error lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// A manifest's label for the sample, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
}

impl SampleFields {
    pub fn of(sample: &Sample) -> Self {
        let files = sample
            .members
            .iter()
            .map(|m| (m.input.clone(), m.item.as_ref().map(|i| i.path.display().to_string())));
        let presence = |m: &Member| if m.item.is_some() { Presence::Present } else { Presence::Missing };
        SampleFields {
            files: ByInput(files.collect()),
            modalities: ByInput(sample.members.iter().map(|m| (m.input.clone(), presence(m))).collect()),
            subset: None,
            expected: sample.expected.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Present,
    Missing,
}

/// One value per card input, written as a JSON object in the card's order.
#[derive(Debug, Clone)]
pub struct ByInput<V>(pub Vec<(String, V)>);

impl<V: Serialize> Serialize for ByInput<V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}
