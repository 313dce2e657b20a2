//! One module per subcommand; each is a short function over the library.

pub mod bench;
pub mod card;
pub mod distill;
pub mod doctor;
pub mod parity;
pub mod run;
pub mod serve;

use std::path::PathBuf;

use edge_kd::card::{Color, Resize};
use edge_kd::model::{CardlessOptions, Model};

use crate::Failure;

/// Which model to use and how to describe it when it carries no card.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// ONNX model; the embedded default student when omitted.
    #[arg(short, long, value_name = "M.onnx")]
    pub model: Option<PathBuf>,
    /// ONNX Runtime shared library (else ORT_DYLIB_PATH, then a pip-installed onnxruntime).
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Card-less models only: colour the model expects [default: from its channel count].
    #[arg(long, help_heading = "Models without a card")]
    pub color: Option<Color>,
    /// Card-less models only: how frames are fitted to the input [default: stretch].
    #[arg(long, help_heading = "Models without a card")]
    pub resize: Option<Resize>,
    /// Card-less models only: pixel scale before mean/std [default: 1/255].
    #[arg(long, help_heading = "Models without a card")]
    pub scale: Option<f32>,
    /// Card-less models only: per-channel mean, comma-separated [default: 0].
    #[arg(long, value_delimiter = ',', num_args = 1.., help_heading = "Models without a card")]
    pub mean: Option<Vec<f32>>,
    /// Card-less models only: per-channel std, comma-separated [default: 1].
    #[arg(long, value_delimiter = ',', num_args = 1.., help_heading = "Models without a card")]
    pub std: Option<Vec<f32>>,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Model, Failure> {
        let fallback = CardlessOptions {
            color: self.color,
            resize: self.resize,
            scale: self.scale,
            mean: self.mean.clone(),
            std: self.std.clone(),
        };
        let model = Model::open_or_default(self.model.as_deref(), &fallback).map_err(Failure::model)?;
        if model.has_card && !fallback.is_empty() {
            tracing::warn!(
                "{}: the model's card fixes its preprocessing; --color/--resize/--scale/--mean/--std are ignored",
                model.origin()
            );
        }
        if !model.has_card {
            tracing::warn!(
                "{}: no edge-kd card; labels are class_N, preprocessing comes from flags and nothing is calibrated",
                model.origin()
            );
        }
        Ok(model)
    }
}
