//! One frame through the whole chain: each card input's value is decoded, preprocessed or
//! checked (or, for a missing optional input, filled as the card's `missing_modality` says), the
//! engine runs once on all of them, and the logits are decided by the calibration of the inputs
//! the frame had. `run`, `bench`, `doctor` and `serve` all classify through this type, one
//! value per card input: [`Classifier::classify`] is the chain.

use std::path::Path;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::card::{CAMERA, Card, Color, InputSpec, MAX_INPUTS};
use crate::decide::{Decider, Decision, WidthMismatch};
use crate::engine::{Engine, EngineError, EngineKind};
use crate::model::Model;
use crate::npy::{self, NpyError};
use crate::preprocess::decode::{DecodeError, ImageFileDecoder, ImageLimits};
use crate::preprocess::{Frame, PixelFormat, PreprocessError, Preprocessor};
use crate::present::Present;

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
    /// No value this frame (a modality that dropped out): filled per the card's
    /// `missing_modality` for an optional input, an error for a required one.
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
    #[error("no value for this frame ({modality}), and the card does not make this input optional")]
    Absent { modality: String },
    // A colour file where a measurement is expected is another modality's file: averaging its
    // channels would feed the model a picture as if it were a height or depth map.
    #[error(
        "a colour image ({format:?}) where a gray {modality} map is expected (edge-kd converts colour \
         to gray for camera inputs only)"
    )]
    ColourForMeasurement { modality: String, format: PixelFormat },
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
    #[error("{model}: the card lists {labels} labels but {engine} computes {width} outputs")]
    Width { model: String, labels: usize, engine: EngineKind, width: usize },
    #[error(
        "{model}: the mask input {mask:?} has {channels} channel(s) but the card has {optional} optional \
         input(s); edge-kd fills one channel per optional input (1 present, 0 missing)"
    )]
    MaskChannels { model: String, mask: String, channels: usize, optional: usize },
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
    /// A tensor value's copy, a `.npy`'s data, a missing input's zeros or the mask, when the
    /// last value was not an image.
    tensor: Vec<f32>,
    fed_tensor: bool,
    role: Role,
}

enum Role {
    /// Each frame gives it a value. `presence` is the index of its presence input in
    /// [`Classifier::presence`], under `"learned-token"`.
    Value { presence: Option<usize> },
    /// The mask input of `"zero-fill"`, which edge-kd fills: channel `c` is 1.0 where the
    /// card input at `optional[c]` is present, 0.0 where it is missing.
    Mask { optional: Vec<usize> },
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
    /// One per card input, in card order.
    slots: Vec<Slot>,
    /// The value of each presence input (1.0 present, 0.0 missing; their batch is 1), in the
    /// order the engine takes them ([`crate::engine::feeds`]).
    presence: Vec<f32>,
    decoder: ImageFileDecoder,
    decider: Decider,
    logits: Vec<f32>,
}

impl Classifier {
    /// A classifier for a model with any number of inputs, fed one value per input through
    /// [`Self::classify`].
    pub fn new(
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
        let slots = slots(&card, model.origin())?;
        let presence = vec![1.0; card.presence_inputs().len()];
        let decider = Decider::new(&card, opts.top_k, opts.threshold);
        Ok(Classifier {
            card,
            engine,
            slots,
            presence,
            decoder: ImageFileDecoder::with_limits(limits),
            decider,
            logits: Vec::new(),
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.card.labels
    }

    /// The inputs [`Self::classify`] takes a value for, in that order: the card's, less the mask
    /// input (which edge-kd fills).
    pub fn inputs(&self) -> impl Iterator<Item = &InputSpec> {
        self.card.value_inputs()
    }

    pub fn image_limits(&self) -> &ImageLimits {
        self.decoder.limits()
    }

    pub fn engine_kind(&self) -> EngineKind {
        self.engine.kind()
    }

    /// Classifies one frame given as one value per input of [`Self::inputs`], in that order,
    /// and times each stage.
    pub fn classify(&mut self, values: &[InputValue]) -> Result<(Decision, StageTimes), InputError> {
        let expected = self.slots.iter().filter(|s| matches!(s.role, Role::Value { .. })).count();
        if values.len() != expected {
            let names = describe(self.card.value_inputs());
            return Err(InputError::ValueCount { expected, names, got: values.len() });
        }
        let t0 = Instant::now();
        // A one-input model's errors read as they always have; with several, each names its input.
        let named = self.slots.len() > 1;
        let mut present = Present::default();
        let mut values = values.iter();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Role::Value { presence } = slot.role else {
                present = present.with(index);
                continue;
            };
            let value = values.next().expect("one value per value input, counted above");
            let here = feed(slot, &mut self.decoder, value).map_err(|error| {
                if named {
                    InputError::OfInput { input: slot.spec.name.clone(), error }
                } else {
                    InputError::Value(error)
                }
            })?;
            if here {
                present = present.with(index);
            }
            if let Some(k) = presence {
                self.presence[k] = if here { 1.0 } else { 0.0 };
            }
        }
        for slot in &mut self.slots {
            if let Role::Mask { optional } = &slot.role {
                fill_mask(&mut slot.tensor, optional, present);
            }
        }
        let t1 = Instant::now();
        self.run_engine()?;
        let t2 = Instant::now();
        let decision = self.decider.decide(&self.logits, present)?;
        let t3 = Instant::now();
        Ok((decision, StageTimes { preprocess: t1 - t0, engine: t2 - t1, decide: t3 - t2 }))
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
        // MAX_INPUTS inputs, each with at most one presence input, and a card-less model one
        // (were there more, the engine would refuse the short list rather than this index panic).
        let mut tensors: [&[f32]; 2 * MAX_INPUTS] = [&[]; 2 * MAX_INPUTS];
        let fed = self.slots.iter().map(Slot::tensor).chain(self.presence.iter().map(std::slice::from_ref));
        let mut count = 0;
        for (tensor, value) in tensors.iter_mut().zip(fed) {
            *tensor = value;
            count += 1;
        }
        self.engine.run(&tensors[..count], &mut self.logits)?;
        Ok(())
    }
}

/// A slot per card input, each knowing what fills it.
fn slots(card: &Card, origin: &str) -> Result<Vec<Slot>, ClassifierError> {
    let policy = card.missing_modality.as_ref().map(|m| m.policy);
    let optional: Vec<usize> = card
        .inputs
        .iter()
        .enumerate()
        .filter(|(_, i)| i.optional && !card.is_mask(i))
        .map(|(index, _)| index)
        .collect();
    let mut presence = 0..;
    card.inputs
        .iter()
        .map(|spec| {
            let role = if card.is_mask(spec) {
                if spec.channels() != optional.len() {
                    return Err(ClassifierError::MaskChannels {
                        model: origin.into(),
                        mask: spec.name.clone(),
                        channels: spec.channels(),
                        optional: optional.len(),
                    });
                }
                Role::Mask { optional: optional.clone() }
            } else {
                let has_presence = policy.and_then(|p| spec.presence_input(p)).is_some();
                Role::Value { presence: has_presence.then(|| presence.next().expect("an endless range")) }
            };
            // An input that can be missing or is filled here holds its tensor from the start, so
            // that no frame allocates it.
            let tensor = if spec.optional || matches!(role, Role::Mask { .. }) {
                vec![0.0; spec.tensor_len()]
            } else {
                Vec::new()
            };
            Ok(Slot {
                spec: spec.clone(),
                preprocessor: Preprocessor::new(spec),
                fed_tensor: matches!(role, Role::Mask { .. }),
                tensor,
                role,
            })
        })
        .collect()
}

/// Turns one value into the slot's tensor; whether the input is present in this frame.
fn feed(slot: &mut Slot, decoder: &mut ImageFileDecoder, value: &InputValue) -> Result<bool, ValueError> {
    slot.fed_tensor = false;
    match *value {
        InputValue::ImageFile(path) => {
            let frame = decoder.decode_file(path)?;
            check_colour(&slot.spec, &frame)?;
            slot.preprocessor.run(&frame)?;
        }
        InputValue::Encoded(bytes) => {
            let frame = decoder.decode_encoded(bytes)?;
            check_colour(&slot.spec, &frame)?;
            slot.preprocessor.run(&frame)?;
        }
        InputValue::Frame(frame) => {
            check_colour(&slot.spec, frame)?;
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
        InputValue::Absent => {
            if !slot.spec.optional {
                return Err(ValueError::Absent { modality: slot.spec.modality.clone() });
            }
            // Zeros after normalisation, under either policy: what training fed a missing
            // modality (its presence input, or the mask, says it is missing). The slot holds
            // the tensor's length from the start, so this allocates nothing.
            slot.tensor.clear();
            slot.tensor.resize(slot.spec.tensor_len(), 0.0);
            slot.fed_tensor = true;
            return Ok(false);
        }
    }
    Ok(true)
}

fn check_colour(spec: &InputSpec, frame: &Frame) -> Result<(), ValueError> {
    let colour = matches!(frame.format, PixelFormat::Rgb | PixelFormat::Rgba);
    if colour && spec.color == Color::Gray && spec.modality != CAMERA {
        return Err(ValueError::ColourForMeasurement {
            modality: spec.modality.clone(),
            format: frame.format,
        });
    }
    Ok(())
}

/// The mask input's tensor for a frame that had `present`: plane `c` all 1.0 where the input
/// `optional[c]` is present, all 0.0 where it is missing.
fn fill_mask(tensor: &mut [f32], optional: &[usize], present: Present) {
    let plane = tensor.len() / optional.len().max(1);
    for (values, &input) in tensor.chunks_mut(plane.max(1)).zip(optional) {
        values.fill(if present.contains(input) { 1.0 } else { 0.0 });
    }
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
fn describe<'a>(inputs: impl IntoIterator<Item = &'a InputSpec>) -> String {
    let names: Vec<String> = inputs.into_iter().map(|i| format!("{} ({})", i.name, i.modality)).collect();
    names.join(", ")
}
