//! One frame through the whole chain: decode → preprocess → engine → decide.
//! `run`, `bench` and `serve` all classify through this type.

use std::path::Path;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::card::Card;
use crate::decide::{Decider, Decision, WidthMismatch};
use crate::engine::{Engine, EngineError, EngineKind};
use crate::model::Model;
use crate::npy::{self, NpyError};
use crate::preprocess::decode::{DecodeError, ImageFileDecoder, ImageLimits};
use crate::preprocess::{Frame, PreprocessError, Preprocessor};
use crate::source::InputKind;

/// Problems with one input; the next input is unaffected.
#[derive(Debug, Error)]
pub enum InputError {
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Preprocess(#[from] PreprocessError),
    #[error("{0}")]
    Npy(#[from] NpyError),
    #[error("tensor of shape {got:?} does not fit the model input {expected:?}")]
    TensorShape { got: Vec<usize>, expected: Vec<usize> },
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Width(#[from] WidthMismatch),
}

/// Problems that stop every input: the model cannot be used as loaded.
#[derive(Debug, Error)]
pub enum ClassifierError {
    #[error(
        "{model}: the model has {count} inputs ({names}); running multimodal models is not supported by this edge-kd"
    )]
    Multimodal { model: String, count: usize, names: String },
    #[error("{model}: the card lists {labels} labels but {engine} computes {width} outputs")]
    Width { model: String, labels: usize, engine: EngineKind, width: usize },
}

#[derive(Debug, Clone, Copy)]
pub struct DecideOptions {
    pub top_k: usize,
    /// Replaces every class's accept threshold.
    pub threshold: Option<f32>,
}

impl Default for DecideOptions {
    fn default() -> Self {
        DecideOptions { top_k: 3, threshold: None }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct StageTimes {
    pub preprocess: Duration,
    pub engine: Duration,
    pub decide: Duration,
}

/// A decision and how long it took from file (or frame) to verdict.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub decision: Decision,
    pub latency: Duration,
}

pub struct Classifier {
    card: Card,
    engine: Box<dyn Engine>,
    preprocessor: Preprocessor,
    decoder: ImageFileDecoder,
    decider: Decider,
    logits: Vec<f32>,
}

impl Classifier {
    /// `limits` bound every image this classifier decodes (files and uploads).
    pub fn new(
        model: &Model,
        engine: Box<dyn Engine>,
        opts: DecideOptions,
        limits: ImageLimits,
    ) -> Result<Self, ClassifierError> {
        let mut card = model.card.clone();
        if card.inputs.len() != 1 {
            let names: Vec<&str> = card.inputs.iter().map(|i| i.modality.as_str()).collect();
            return Err(ClassifierError::Multimodal {
                model: model.origin().into(),
                count: card.inputs.len(),
                names: names.join(", "),
            });
        }
        let width = engine.output_len();
        if card.labels.is_empty() {
            // A card-less model whose output width only the engine could tell.
            card.labels = (0..width).map(|i| format!("class_{i}")).collect();
        } else if width != card.labels.len() {
            return Err(ClassifierError::Width {
                model: model.origin().into(),
                labels: card.labels.len(),
                engine: engine.kind(),
                width,
            });
        }
        let preprocessor = Preprocessor::new(&card.inputs[0]);
        let decider = Decider::new(&card, opts.top_k, opts.threshold);
        Ok(Classifier {
            card,
            engine,
            preprocessor,
            decoder: ImageFileDecoder::with_limits(limits),
            decider,
            logits: Vec::new(),
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.card.labels
    }

    pub fn image_limits(&self) -> &ImageLimits {
        self.decoder.limits()
    }

    pub fn engine_kind(&self) -> EngineKind {
        self.engine.kind()
    }

    /// Classifies a file: an image, or a `.npy` tensor fed as it is.
    pub fn classify_path(&mut self, path: &Path, kind: InputKind) -> Result<Outcome, InputError> {
        let start = Instant::now();
        let decision = match kind {
            InputKind::Image => {
                let frame = self.decoder.decode_file(path)?;
                let tensor = self.preprocessor.run(&frame)?;
                self.engine.run(&[tensor], &mut self.logits)?;
                self.decider.decide(&self.logits)?
            }
            InputKind::Tensor => {
                // A tensor larger than the model's input is refused before it is read.
                let array = npy::read_f32(path, self.card.inputs[0].tensor_len())?;
                self.classify_tensor(&array.shape, &array.data)?
            }
        };
        Ok(Outcome { decision, latency: start.elapsed() })
    }

    /// Classifies an encoded image held in memory (an upload, a file read by a source).
    pub fn classify_encoded(&mut self, encoded: &[u8]) -> Result<Outcome, InputError> {
        let start = Instant::now();
        let frame = self.decoder.decode_encoded(encoded)?;
        let tensor = self.preprocessor.run(&frame)?;
        self.engine.run(&[tensor], &mut self.logits)?;
        let decision = self.decider.decide(&self.logits)?;
        Ok(Outcome { decision, latency: start.elapsed() })
    }

    /// Classifies an already decoded frame (a camera's, or one held in memory).
    pub fn classify_frame(&mut self, frame: &Frame) -> Result<Decision, InputError> {
        let tensor = self.preprocessor.run(frame)?;
        self.engine.run(&[tensor], &mut self.logits)?;
        Ok(self.decider.decide(&self.logits)?)
    }

    /// Like [`Self::classify_frame`], timing each stage (for `bench`).
    pub fn classify_frame_timed(&mut self, frame: &Frame) -> Result<(Decision, StageTimes), InputError> {
        let t0 = Instant::now();
        let tensor = self.preprocessor.run(frame)?;
        let t1 = Instant::now();
        self.engine.run(&[tensor], &mut self.logits)?;
        let t2 = Instant::now();
        let decision = self.decider.decide(&self.logits)?;
        let t3 = Instant::now();
        Ok((decision, StageTimes { preprocess: t1 - t0, engine: t2 - t1, decide: t3 - t2 }))
    }

    /// Classifies a model-ready tensor. Its shape must be the input's, with or without
    /// the batch dimension of 1.
    pub fn classify_tensor(&mut self, shape: &[usize], data: &[f32]) -> Result<Decision, InputError> {
        let expected = &self.card.inputs[0].shape;
        if shape != expected.as_slice() && shape != &expected[1..] {
            return Err(InputError::TensorShape { got: shape.to_vec(), expected: expected.clone() });
        }
        self.engine.run(&[data], &mut self.logits)?;
        Ok(self.decider.decide(&self.logits)?)
    }

    /// Runs only the engine on the last preprocessed tensor (for `bench`).
    pub fn run_engine_on_last_input(&mut self) -> Result<(), InputError> {
        let tensor = self.preprocessor.output();
        self.engine.run(&[tensor], &mut self.logits)?;
        Ok(())
    }
}
