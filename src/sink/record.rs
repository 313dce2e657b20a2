//! The result line `serve` writes to its sinks: the shared result body (design §1) plus
//! where and when the frame came from. Keys are public: add, never rename or remove.

use serde::Serialize;

use crate::decide::Verdict;
pub use crate::record::ResultBody;
use crate::record::SampleFields;

#[derive(Debug, Clone, Serialize)]
pub struct ResultLine {
    /// The box's result sequence ([`crate::sink::seq`]): strictly increasing across
    /// restarts, the same in every sink, so a consumer can drop the duplicates an
    /// at-least-once replay may bring. Set by the dispatcher before any sink sees the line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Arrival time, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    pub source: String,
    pub file: String,
    /// Only for a model with several inputs (`files`, `modalities`), so that one-input
    /// lines stay as they were.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub sample: Option<SampleFields>,
    #[serde(flatten)]
    pub body: ResultBody,
    /// sha256 of the model that decided (absent on failures before a model ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
}

impl ResultLine {
    pub fn verdict(&self) -> Option<Verdict> {
        self.body.verdict()
    }

    pub fn label(&self) -> Option<&str> {
        self.body.label()
    }

    pub fn to_json(&self) -> String {
        // Only strings, numbers and options: serialising cannot fail.
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"unserialisable result: {e}\"}}"))
    }
}
