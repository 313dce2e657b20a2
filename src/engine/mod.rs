//! Inference engines behind one trait. tract is always built and is the default;
//! ONNX Runtime (feature `ort`) is loaded from a shared library at run time.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::card::Card;
use crate::model::Model;

#[cfg(feature = "ort")]
pub mod ort;
pub mod ort_library;
pub mod tract;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("{engine} could not load {model}: {message}")]
    Load { engine: EngineKind, model: String, message: String },
    #[error("{engine} failed to run the model: {message}")]
    Run { engine: EngineKind, message: String },
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Tract,
    Ort,
}

impl EngineKind {
    pub const ALL: [EngineKind; 2] = [EngineKind::Tract, EngineKind::Ort];
    /// The engine used when none is named: compiled into every build, so it always loads.
    pub const DEFAULT: EngineKind = EngineKind::Tract;

    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Tract => "tract",
            EngineKind::Ort => "ort",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tract" => Ok(EngineKind::Tract),
            "ort" | "onnxruntime" => Ok(EngineKind::Ort),
            other => Err(format!("unknown engine {other:?} (expected tract or ort)")),
        }
    }
}

/// How to open an engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub kind: EngineKind,
    /// Intra-op threads; 1 keeps inference on the calling thread.
    pub threads: usize,
    /// Where ONNX Runtime lives, when not found by the usual search.
    pub ort_library: Option<std::path::PathBuf>,
}

/// A model loaded into an engine, with its buffers reserved, ready to run frames.
pub trait Engine: Send {
    fn kind(&self) -> EngineKind;

    /// Number of values in the output the card names (the class count).
    fn output_len(&self) -> usize;

    /// Runs one frame. `inputs` follow [`feeds`] (the card's inputs, then its presence
    /// inputs), each holding exactly that tensor's f32 values; the logits are written into `out`.
    fn run(&mut self, inputs: &[&[f32]], out: &mut Vec<f32>) -> Result<(), EngineError>;
}

/// One tensor an engine is fed per frame: a graph input, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    pub name: String,
    pub shape: Vec<usize>,
}

/// Every tensor an engine is fed per frame, in the order [`Engine::run`] takes them: the card's
/// inputs in card order, then the presence input of each optional input under `"learned-token"`
/// (`<name>_present`, float32 `[N]`: [`crate::card::InputSpec::presence_input`]). Engines bind
/// them to the graph by name, so the graph may declare its inputs in any order.
pub fn feeds(card: &Card) -> Vec<Feed> {
    let inputs = card.inputs.iter().map(|i| Feed { name: i.name.clone(), shape: i.shape.clone() });
    let policy = card.missing_modality.as_ref().map(|m| m.policy);
    let presence = card.inputs.iter().filter_map(|i| {
        let name = i.presence_input(policy?)?;
        Some(Feed { name, shape: vec![i.shape[0]] })
    });
    inputs.chain(presence).collect()
}

/// The engines a command that checks or measures every engine (`bench`, `parity`,
/// `distill`) runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub engines: Vec<EngineKind>,
    /// None were named and ONNX Runtime was left out because its library was not found.
    pub ort_not_found: bool,
}

/// The engines named, or when none are, every engine this box can run: the default always,
/// ONNX Runtime when its library is found.
pub fn select(named: &[EngineKind], ort_library: Option<&std::path::Path>) -> Selection {
    if !named.is_empty() {
        return Selection { engines: named.to_vec(), ort_not_found: false };
    }
    let mut engines = vec![EngineKind::DEFAULT];
    let ort_found = cfg!(feature = "ort") && ort_library::locate(ort_library).is_ok();
    if ort_found {
        engines.push(EngineKind::Ort);
    }
    Selection { engines, ort_not_found: !ort_found }
}

pub fn open(model: &Model, opts: &EngineOptions) -> Result<Box<dyn Engine>, EngineError> {
    let threads = opts.threads.max(1);
    match opts.kind {
        EngineKind::Tract => Ok(Box::new(tract::TractEngine::load(model, threads)?)),
        #[cfg(feature = "ort")]
        EngineKind::Ort => Ok(Box::new(ort::OrtEngine::load(model, threads, opts.ort_library.as_deref())?)),
        #[cfg(not(feature = "ort"))]
        EngineKind::Ort => Err(EngineError::Unavailable(
            "this edge-kd was built without ONNX Runtime support (cargo feature `ort`); \
             rebuild with `--features ort` or use --engine tract"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_engines_are_used_as_named_and_none_means_the_default_and_ort_when_found() {
        let named = select(&[EngineKind::Ort], Some(std::path::Path::new("/nowhere/libonnxruntime.so")));
        assert_eq!(named, Selection { engines: vec![EngineKind::Ort], ort_not_found: false });
        let unnamed = select(&[], Some(std::path::Path::new("/nowhere/libonnxruntime.so")));
        assert_eq!(unnamed, Selection { engines: vec![EngineKind::DEFAULT], ort_not_found: true });
    }
}
