//! One frame through the whole chain: each card input's value is decoded, preprocessed or
//! checked, the engine runs once on all of them, and the logits are decided.
//! `run`, `bench`, `doctor` and `serve` all classify through this type: [`Classifier::classify`]
//! is the chain, and the `classify_*` methods are the one-value shapes today's callers have.

use std::path::Path;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::card::{Card, InputSpec, MAX_INPUTS};
use crate::decide::{Decider, Decision, WidthMismatch};
use crate::engine::{Engine, EngineError, EngineKind};
use crate::model::Model;
use crate::npy::{self, NpyError};
use crate::preprocess::decode::{DecodeError, ImageFileDecoder, ImageLimits};
use crate::preprocess::{Frame, PreprocessError, Preprocessor};
use crate::source::InputKind;

/// The value one card input gets for one frame. A frame of a model is one value per card
/// input, in the card's order.
#[derive(Debug, Clone, Copy)]
pub enum InputValue<'a> {
    /// An image file (PNG, JPEG, BMP), decoded within the classifier's limits.
    ImageFile(&'a Path),
    /// An encoded image held in memory (an upload, a file a source read).
    Encoded(&'a [u8]),
    /// A decoded frame (a camera's).
    Frame(&'a Frame<'a>),
    /// A `.npy` float32 tensor, fed without preprocessing.
    TensorFile(&'a Path),
    /// A model-ready tensor, fed without preprocessing: the input's shape, with or without
    /// the batch dimension of 1.
    Tensor { shape: &'a [usize], data: &'a [f32] },
    /// No value this frame (a modality that dropped out).
    Absent,
}

/// What is wrong with the value given for one input.
#[derive(Debug, Error)]
pub enum ValueError {
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Preprocess(#[from] PreprocessError),
    #[error("{0}")]
    Npy(#[from] NpyError),
    #[error("tensor of shape {got:?} does not fit the model input {expected:?}")]
    TensorShape { got: Vec<usize>, expected: Vec<usize> },
    #[error("tensor of shape {shape:?} holds {got} values, not the {expected} its shape has")]
    TensorLen { shape: Vec<usize>, got: usize, expected: usize },
    #[error("no value for this frame ({modality}), and this edge-kd does not fill missing modalities")]
    Absent { modality: String },
}

/// Problems with one frame; the next frame is unaffected.
#[derive(Debug, Error)]
pub enum InputError {
    /// The value of a one-input model: there is only one input, so it is not named.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// The value of one input of a model with several.
    #[error("input {input:?}: {error}")]
    OfInput { input: String, error: ValueError },
    #[error("the model takes {expected} inputs ({names}) but {got} were given")]
    ValueCount { expected: usize, names: String, got: usize },
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Width(#[from] WidthMismatch),
}

/// Problems that stop every frame: the model cannot be used as loaded.
#[derive(Debug, Error)]
pub enum ClassifierError {
    #[error(
        "{model}: the model has {count} inputs ({names}); this command feeds one image per frame, \
         so it cannot run multimodal models yet"
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
    /// Decoding, preprocessing and checking every input's value.
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

/// One card input: its spec and the buffers its values become tensors in.
struct Slot {
    spec: InputSpec,
    preprocessor: Preprocessor,
    /// A tensor value's copy or a `.npy`'s data, when the last value was a tensor.
    tensor: Vec<f32>,
    fed_tensor: bool,
}

impl Slot {
    /// The tensor the last value left for the engine.
    fn tensor(&self) -> &[f32] {
        if self.fed_tensor { &self.tensor } else { self.preprocessor.output() }
    }
}

pub struct Classifier {
    card: Card,
    engine: Box<dyn Engine>,
    slots: Vec<Slot>,
    decoder: ImageFileDecoder,
    decider: Decider,
    logits: Vec<f32>,
}

impl Classifier {
    /// A classifier for callers that give one value per frame (`run`, `bench`, `serve`
    /// today): a model with more inputs is refused here, before any frame, rather than
    /// failing every frame. `limits` bound every image this classifier decodes.
    pub fn new(
        model: &Model,
        engine: Box<dyn Engine>,
        opts: DecideOptions,
        limits: ImageLimits,
    ) -> Result<Self, ClassifierError> {
        single_input(model)?;
        Self::multimodal(model, engine, opts, limits)
    }

    /// A classifier for a model with any number of inputs, fed one value per input through
    /// [`Self::classify`].
    pub fn multimodal(
        model: &Model,
        engine: Box<dyn Engine>,
        opts: DecideOptions,
        limits: ImageLimits,
    ) -> Result<Self, ClassifierError> {
        let mut card = model.card.clone();
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
        let slots = card
            .inputs
            .iter()
            .map(|spec| Slot {
                spec: spec.clone(),
                preprocessor: Preprocessor::new(spec),
                tensor: Vec::new(),
                fed_tensor: false,
            })
            .collect();
        let decider = Decider::new(&card, opts.top_k, opts.threshold);
        Ok(Classifier {
            card,
            engine,
            slots,
            decoder: ImageFileDecoder::with_limits(limits),
            decider,
            logits: Vec::new(),
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.card.labels
    }

    /// The card's inputs, in the order [`Self::classify`] takes their values.
    pub fn inputs(&self) -> &[InputSpec] {
        &self.card.inputs
    }

    pub fn image_limits(&self) -> &ImageLimits {
        self.decoder.limits()
    }

    pub fn engine_kind(&self) -> EngineKind {
        self.engine.kind()
    }

    /// Classifies one frame given as one value per card input, in the card's order, and
    /// times each stage.
    pub fn classify(&mut self, values: &[InputValue]) -> Result<(Decision, StageTimes), InputError> {
        if values.len() != self.slots.len() {
            return Err(InputError::ValueCount {
                expected: self.slots.len(),
                names: describe(&self.card.inputs),
                got: values.len(),
            });
        }
        let t0 = Instant::now();
        // A one-input model's errors read as they always have; with several, each names its input.
        let named = self.slots.len() > 1;
        for (slot, value) in self.slots.iter_mut().zip(values) {
            feed(slot, &mut self.decoder, value).map_err(|error| {
                if named {
                    InputError::OfInput { input: slot.spec.name.clone(), error }
                } else {
                    InputError::Value(error)
                }
            })?;
        }
        let t1 = Instant::now();
        self.run_engine()?;
        let t2 = Instant::now();
        let decision = self.decider.decide(&self.logits)?;
        let t3 = Instant::now();
        Ok((decision, StageTimes { preprocess: t1 - t0, engine: t2 - t1, decide: t3 - t2 }))
    }

    /// Classifies a file: an image, or a `.npy` tensor fed as it is.
    pub fn classify_path(&mut self, path: &Path, kind: InputKind) -> Result<Outcome, InputError> {
        let value = match kind {
            InputKind::Image => InputValue::ImageFile(path),
            InputKind::Tensor => InputValue::TensorFile(path),
        };
        self.classify_timed(&[value])
    }

    /// Classifies an encoded image held in memory (an upload, a file read by a source).
    pub fn classify_encoded(&mut self, encoded: &[u8]) -> Result<Outcome, InputError> {
        self.classify_timed(&[InputValue::Encoded(encoded)])
    }

    /// Classifies an already decoded frame (a camera's, or one held in memory).
    pub fn classify_frame(&mut self, frame: &Frame) -> Result<Decision, InputError> {
        Ok(self.classify(&[InputValue::Frame(frame)])?.0)
    }

    /// Like [`Self::classify_frame`], timing each stage (for `bench`).
    pub fn classify_frame_timed(&mut self, frame: &Frame) -> Result<(Decision, StageTimes), InputError> {
        self.classify(&[InputValue::Frame(frame)])
    }

    /// Classifies a model-ready tensor. Its shape must be the input's, with or without
    /// the batch dimension of 1.
    pub fn classify_tensor(&mut self, shape: &[usize], data: &[f32]) -> Result<Decision, InputError> {
        Ok(self.classify(&[InputValue::Tensor { shape, data }])?.0)
    }

    /// Runs only the engine on the tensors of the last frame (for `bench`).
    pub fn run_engine_on_last_input(&mut self) -> Result<(), InputError> {
        self.run_engine()
    }

    /// Like [`Self::classify`], timed as a whole from reading the first value to the verdict.
    pub fn classify_timed(&mut self, values: &[InputValue]) -> Result<Outcome, InputError> {
        let start = Instant::now();
        let (decision, _) = self.classify(values)?;
        Ok(Outcome { decision, latency: start.elapsed() })
    }

    fn run_engine(&mut self) -> Result<(), InputError> {
        // On the stack, so a frame allocates nothing here: a parsed card has at most
        // MAX_INPUTS inputs and a card-less model one (were there more, the engine would
        // refuse the short list rather than this index panic).
        let mut tensors: [&[f32]; MAX_INPUTS] = [&[]; MAX_INPUTS];
        for (tensor, slot) in tensors.iter_mut().zip(&self.slots) {
            *tensor = slot.tensor();
        }
        self.engine.run(&tensors[..self.slots.len().min(MAX_INPUTS)], &mut self.logits)?;
        Ok(())
    }
}

/// The input of a model that a caller with one value per frame can feed; a model with
/// several inputs is refused here, the one place that assumption is made.
pub fn single_input(model: &Model) -> Result<&InputSpec, ClassifierError> {
    match model.card.inputs.as_slice() {
        [input] => Ok(input),
        inputs => Err(ClassifierError::Multimodal {
            model: model.origin().into(),
            count: inputs.len(),
            names: describe(inputs),
        }),
    }
}

/// Turns one value into the slot's tensor.
fn feed(slot: &mut Slot, decoder: &mut ImageFileDecoder, value: &InputValue) -> Result<(), ValueError> {
    slot.fed_tensor = false;
    match *value {
        InputValue::ImageFile(path) => {
            slot.preprocessor.run(&decoder.decode_file(path)?)?;
        }
        InputValue::Encoded(bytes) => {
            slot.preprocessor.run(&decoder.decode_encoded(bytes)?)?;
        }
        InputValue::Frame(frame) => {
            slot.preprocessor.run(frame)?;
        }
        InputValue::TensorFile(path) => {
            // A tensor larger than the model's input is refused before it is read.
            let array = npy::read_f32(path, slot.spec.tensor_len())?;
            check_tensor(&slot.spec, &array.shape, &array.data)?;
            slot.tensor = array.data;
            slot.fed_tensor = true;
        }
        InputValue::Tensor { shape, data } => {
            check_tensor(&slot.spec, shape, data)?;
            slot.tensor.clear();
            slot.tensor.extend_from_slice(data);
            slot.fed_tensor = true;
        }
        InputValue::Absent => return Err(absent(&slot.spec)),
    }
    Ok(())
}

/// The one place an absent value is answered. Filling it by the card's `missing_modality`
/// policy (zero-fill, a mask input) is issue 14; until then the frame cannot be classified.
fn absent(spec: &InputSpec) -> ValueError {
    ValueError::Absent { modality: spec.modality.clone() }
}

fn check_tensor(spec: &InputSpec, shape: &[usize], data: &[f32]) -> Result<(), ValueError> {
    let expected = &spec.shape;
    if shape != expected.as_slice() && shape != &expected[1..] {
        return Err(ValueError::TensorShape { got: shape.to_vec(), expected: expected.clone() });
    }
    if data.len() != spec.tensor_len() {
        return Err(ValueError::TensorLen {
            shape: shape.to_vec(),
            got: data.len(),
            expected: spec.tensor_len(),
        });
    }
    Ok(())
}

/// `image (camera), depth (depth)`, for messages about a model's inputs.
fn describe(inputs: &[InputSpec]) -> String {
    let names: Vec<String> = inputs.iter().map(|i| format!("{} ({})", i.name, i.modality)).collect();
    names.join(", ")
}
