//! A model file as edge-kd sees it: the ONNX bytes, what the graph declares, and a
//! validated card (read from the file, or made from the graph and flags for a model
//! that has none).

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::card::{self, Card, Color, InputSpec, Layout, Resize, Task};
use crate::onnx_meta::{self, ModelInfo, OnnxError};

/// The default student, embedded so that `edge-kd run img.png` works from any folder.
pub const DEFAULT_MODEL_BYTES: &[u8] = include_bytes!("../models/default/student.onnx");
pub const DEFAULT_MODEL_NAME: &str = "models/default/student.onnx (embedded)";

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {source}")]
    NotOnnx { origin: String, source: OnnxError },
    #[error("{origin}: {source}")]
    Card { origin: String, source: card::CardError },
    #[error("{origin}: {message}")]
    Unsupported { origin: String, message: String },
}

/// How to describe a model that carries no card, from `run`/`bench` flags.
#[derive(Debug, Clone, Default)]
pub struct CardlessOptions {
    pub color: Option<Color>,
    pub resize: Option<Resize>,
    pub scale: Option<f32>,
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
}

impl CardlessOptions {
    pub fn is_empty(&self) -> bool {
        self.color.is_none()
            && self.resize.is_none()
            && self.scale.is_none()
            && self.mean.is_none()
            && self.std.is_none()
    }
}

#[derive(Debug, Clone)]
pub struct Model {
    bytes: Cow<'static, [u8]>,
    origin: String,
    pub info: ModelInfo,
    pub card: Card,
    /// False when the file had no card and `card` was derived from the graph.
    pub has_card: bool,
}

impl Model {
    pub fn open(path: &Path, fallback: &CardlessOptions) -> Result<Model, ModelError> {
        let bytes =
            std::fs::read(path).map_err(|source| ModelError::Read { path: path.to_owned(), source })?;
        Self::from_bytes(Cow::Owned(bytes), path.display().to_string(), fallback)
    }

    /// A model already read into memory from `path` (so that what was hashed is what runs).
    pub fn from_file_bytes(
        bytes: Vec<u8>,
        path: &Path,
        fallback: &CardlessOptions,
    ) -> Result<Model, ModelError> {
        Self::from_bytes(Cow::Owned(bytes), path.display().to_string(), fallback)
    }

    pub fn embedded_default() -> Result<Model, ModelError> {
        Self::from_bytes(
            Cow::Borrowed(DEFAULT_MODEL_BYTES),
            DEFAULT_MODEL_NAME.into(),
            &CardlessOptions::default(),
        )
    }

    /// `path` when given, the embedded default otherwise.
    pub fn open_or_default(path: Option<&Path>, fallback: &CardlessOptions) -> Result<Model, ModelError> {
        match path {
            Some(p) => Self::open(p, fallback),
            None => Self::embedded_default(),
        }
    }

    fn from_bytes(
        bytes: Cow<'static, [u8]>,
        origin: String,
        fallback: &CardlessOptions,
    ) -> Result<Model, ModelError> {
        let info = onnx_meta::read_model_info(&bytes)
            .map_err(|source| ModelError::NotOnnx { origin: origin.clone(), source })?;
        let (card, has_card) = match info.metadata(card::METADATA_KEY) {
            Some(json) => {
                let card = Card::parse(json)
                    .and_then(|c| c.validate(&info).map(|()| c))
                    .map_err(|source| ModelError::Card { origin: origin.clone(), source })?;
                (card, true)
            }
            None => (
                cardless(&info, fallback)
                    .map_err(|message| ModelError::Unsupported { origin: origin.clone(), message })?,
                false,
            ),
        };
        Ok(Model { bytes, origin, info, card, has_card })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Where the model came from, for messages: its path, or the embedded default.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.card.name, self.origin)
    }
}

/// Describes a card-less model from its graph: input shape from the graph, labels
/// `class_N`, preprocessing from the flags (8-bit pixels scaled to 0..1 by default).
fn cardless(info: &ModelInfo, opts: &CardlessOptions) -> Result<Card, String> {
    let input = info.inputs.first().ok_or("the graph declares no inputs")?;
    if info.inputs.len() > 1 {
        return Err(format!(
            "the graph has {} inputs and no edge-kd card to say which modality each is",
            info.inputs.len()
        ));
    }
    let dims = input.shape.as_ref().ok_or_else(|| {
        format!("input {:?} has no declared shape; edge-kd needs a fixed NCHW input", input.name)
    })?;
    if dims.len() != 4 {
        return Err(format!(
            "input {:?} has shape {}; edge-kd runs image models with an NCHW input",
            input.name,
            input.shape_string()
        ));
    }
    let mut shape = Vec::with_capacity(4);
    for (i, d) in dims.iter().enumerate() {
        match (i, d) {
            (0, _) => shape.push(1),
            (_, Some(n)) if *n > 0 && *n as usize <= card::MAX_INPUT_SIDE => shape.push(*n as usize),
            (2 | 3, Some(n)) if *n > 0 => {
                return Err(format!(
                    "input {:?} has shape {}: height and width are at most {}",
                    input.name,
                    input.shape_string(),
                    card::MAX_INPUT_SIDE
                ));
            }
            _ => {
                return Err(format!(
                    "input {:?} has shape {}: dimension {i} is not fixed; export the model with a fixed input size",
                    input.name,
                    input.shape_string()
                ));
            }
        }
    }
    let color = match (opts.color, shape[1]) {
        (Some(c), n) if c.channels() == n => c,
        (Some(c), n) => {
            return Err(format!(
                "--color {} needs {} channels but the input has {n}",
                c.as_str(),
                c.channels()
            ));
        }
        (None, 1) => Color::Gray,
        (None, 3) => Color::Rgb,
        (None, n) => {
            return Err(format!(
                "input {:?} has {n} channels; edge-kd reads 1 (gray) or 3 (rgb/bgr)",
                input.name
            ));
        }
    };
    let channels = color.channels();
    let per_channel = |v: &Option<Vec<f32>>, flag: &str, default: f32| -> Result<Vec<f32>, String> {
        match v {
            None => Ok(vec![default; channels]),
            Some(v) if v.len() == 1 => Ok(vec![v[0]; channels]),
            Some(v) if v.len() == channels => Ok(v.clone()),
            Some(v) => Err(format!("{flag} has {} values; give 1 or {channels}", v.len())),
        }
    };
    let output = info.outputs.first().ok_or("the graph declares no outputs")?;
    let labels = match card::output_width(output) {
        // A label is made for each class: a width only a hostile graph declares is refused.
        Some(n) if n > card::MAX_LABELS => {
            return Err(format!(
                "output {:?} has {n} classes, more than the {} edge-kd reads",
                output.name,
                card::MAX_LABELS
            ));
        }
        Some(n) => (0..n).map(|i| format!("class_{i}")).collect(),
        None => Vec::new(),
    };
    Ok(Card {
        schema: card::SCHEMA_VERSION,
        name: "(no card)".into(),
        task: Task::Classification,
        labels,
        inputs: vec![InputSpec {
            name: input.name.clone(),
            modality: "camera".into(),
            shape,
            layout: Layout::Nchw,
            color,
            resize: opts.resize.unwrap_or(Resize::Stretch),
            resample: Default::default(),
            scale: opts.scale.unwrap_or(1.0 / 255.0),
            mean: per_channel(&opts.mean, "--mean", 0.0)?,
            std: per_channel(&opts.std, "--std", 1.0)?,
            optional: false,
        }],
        missing_modality: None,
        output: output.name.clone(),
        calibration: None,
        provenance: None,
    })
}
