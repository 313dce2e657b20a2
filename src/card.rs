//! The model card (design §3): what a student is, what it expects and how far to trust it.
//!
//! It travels inside the ONNX file (`metadata_props["edge_kd.card"]`) so that the
//! preprocessing used in training is the one used on the box. The format is fixed by
//! `docs/card.schema.json`; parsing is strict (unknown fields are errors) and versioned.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::onnx_meta::{ModelInfo, TensorInfo};

/// Key of the card in the ONNX `metadata_props`.
pub const METADATA_KEY: &str = "edge_kd.card";
/// The card versions this build can read.
pub const SCHEMA_VERSION: u32 = 1;

// Bounds on a card. It comes from a model file, which can come from anywhere; these keep a
// broken or hostile one from costing the box more than a few MiB, with room to spare for any
// real classifier. docs/card.schema.json states the same numbers (maxItems, maxLength) and
// the Python writer refuses to write past them. Lengths are in characters, as JSON Schema's
// maxLength counts them.
/// The card's JSON: room for 100,000 labels of ImageNet-21k-sized names (~30 bytes) with the
/// rest of the card, while a hostile card parses in a few tens of MiB at most.
pub const MAX_CARD_JSON_BYTES: usize = 4 << 20;
/// ImageNet-21k has 21,841 classes; the largest label sets in use stay under 100,000.
pub const MAX_LABELS: usize = 100_000;
/// Multimodal students have a handful of inputs.
pub const MAX_INPUTS: usize = 64;
/// A name: the card's, a label, an input, the output, a teacher, a metric, a data set. Real
/// ones are under 100 characters.
pub const MAX_NAME_CHARS: usize = 1024;
/// Free text: a calibration note (which may quote a label) or the command that made the model.
pub const MAX_TEXT_CHARS: usize = 4096;
/// An input's height and width: the box allocates its tensor from them (3 × 8192² floats is
/// 768 MiB), and no image classifier we know of takes more than a few thousand pixels a side.
pub const MAX_INPUT_SIDE: usize = 8192;
/// Calibration subsets: one per set of present inputs a box meets, a handful in practice.
pub const MAX_SUBSETS: usize = 64;

#[derive(Debug, Error)]
pub enum CardError {
    #[error("card.{field}: {message}")]
    Field { field: String, message: String },
    #[error("card is not valid JSON: {0}")]
    Json(String),
    #[error(
        "card: {bytes} bytes of JSON, more than the {MAX_CARD_JSON_BYTES} ({} MiB) a card may take",
        MAX_CARD_JSON_BYTES >> 20
    )]
    TooLarge { bytes: usize },
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> CardError {
    CardError::Field { field: field.into(), message: message.into() }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Card {
    pub schema: u32,
    pub name: String,
    pub task: Task,
    pub labels: Vec<String>,
    pub inputs: Vec<InputSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_modality: Option<MissingModality>,
    pub output: String,
    #[serde(default)]
    pub calibration: Option<Calibration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    Classification,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    #[serde(default = "default_modality")]
    pub modality: String,
    pub shape: Vec<usize>,
    pub layout: Layout,
    pub color: Color,
    pub resize: Resize,
    /// The resampling definition the model was trained with. A card written before the field
    /// existed means `bilinear-antialias`: the trainer has always resized with Pillow's BILINEAR.
    #[serde(default)]
    pub resample: Resample,
    pub scale: f32,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    #[serde(default)]
    pub optional: bool,
}

/// The modality of an input whose card does not name one.
pub const CAMERA: &str = "camera";

fn default_modality() -> String {
    CAMERA.into()
}

impl InputSpec {
    pub fn channels(&self) -> usize {
        self.color.channels()
    }
    pub fn height(&self) -> usize {
        self.shape[2]
    }
    pub fn width(&self) -> usize {
        self.shape[3]
    }
    /// Number of f32 values in the input tensor.
    pub fn tensor_len(&self) -> usize {
        self.shape.iter().product()
    }
    /// The name of this input's presence input under `policy`: `<name>_present` for an optional
    /// input under [`MissingPolicy::LearnedToken`], `None` otherwise. It is a graph input that the
    /// card does not list: float32 of shape `[N]` (`N` = `shape[0]`, the batch), 1.0 when the
    /// input is present in the frame and 0.0 when it is missing (its own tensor is then zeros);
    /// the graph substitutes a learned token for a missing input.
    pub fn presence_input(&self, policy: MissingPolicy) -> Option<String> {
        (self.optional && policy == MissingPolicy::LearnedToken).then(|| format!("{}_present", self.name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    #[serde(rename = "NCHW")]
    Nchw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Color {
    Gray,
    Rgb,
    Bgr,
}

impl Color {
    pub fn channels(self) -> usize {
        match self {
            Color::Gray => 1,
            Color::Rgb | Color::Bgr => 3,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Gray => "gray",
            Color::Rgb => "rgb",
            Color::Bgr => "bgr",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    Stretch,
    CenterCrop,
    Letterbox,
}

impl Resize {
    pub fn as_str(self) -> &'static str {
        match self {
            Resize::Stretch => "stretch",
            Resize::CenterCrop => "center-crop",
            Resize::Letterbox => "letterbox",
        }
    }
}

/// How a frame is resampled to the input's size (README, "Preprocessing"). One definition so far;
/// a card naming another (from a newer edge-kd) is refused by name rather than run differently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resample {
    /// Colour first (8-bit, as Pillow's `convert`), then Pillow's antialiased BILINEAR.
    #[default]
    BilinearAntialias,
}

impl Resample {
    pub fn as_str(self) -> &'static str {
        match self {
            Resample::BilinearAntialias => "bilinear-antialias",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissingModality {
    pub policy: MissingPolicy,
    #[serde(default)]
    pub mask_input: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissingPolicy {
    /// A missing input's tensor is zeros (with `mask_input`, a mask input says which).
    ZeroFill,
    /// A missing input's tensor is zeros and its presence input
    /// ([`InputSpec::presence_input`]) is 0.0; the graph substitutes a learned token.
    LearnedToken,
}

impl MissingPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            MissingPolicy::ZeroFill => "zero-fill",
            MissingPolicy::LearnedToken => "learned-token",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub temperature: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ece: Option<Ece>,
    pub accept: Accept,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The calibration of frames with only some inputs present (the fields above are the one
    /// with every input present). Look one up with [`Card::calibration_for`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<CalibrationSubset>,
}

/// The calibration of frames whose present inputs are exactly `present`: the fields and rules
/// of the top-level [`Calibration`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSubset {
    pub present: Vec<String>,
    pub temperature: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ece: Option<Ece>,
    pub accept: Accept,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The calibration that applies to one set of present inputs ([`Card::calibration_for`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PresentCalibration<'a> {
    pub temperature: f32,
    pub accept: &'a Accept,
    /// The subset it comes from; `None` for the top level (every input present).
    pub subset: Option<&'a CalibrationSubset>,
}

impl PresentCalibration<'_> {
    /// The accept threshold of each class, in label order.
    pub fn thresholds(&self, labels: &[String]) -> Vec<Option<f32>> {
        labels.iter().map(|l| self.accept.per_class.get(l).copied().unwrap_or(self.accept.default)).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ece {
    pub before: f64,
    pub after: f64,
}

/// Accept thresholds on the calibrated confidence. `None` means the calibration split
/// could not support the error target: such frames always go to review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accept {
    pub default: Option<f32>,
    #[serde(default)]
    pub per_class: BTreeMap<String, Option<f32>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub max_error_among_accepted: f64,
    #[serde(default)]
    pub coverage_on_calibration_set: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teachers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_kd_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

impl Card {
    /// Parses a card strictly: the schema version first (so that a newer card gets a
    /// "newer version" error, not a confusing field error), then every field.
    pub fn parse(json: &str) -> Result<Card, CardError> {
        if json.len() > MAX_CARD_JSON_BYTES {
            return Err(CardError::TooLarge { bytes: json.len() });
        }
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| CardError::Json(e.to_string()))?;
        match value.get("schema") {
            None => return Err(field_error("schema", "missing (expected 1)")),
            Some(v) => match v.as_u64() {
                Some(n) if n == u64::from(SCHEMA_VERSION) => {}
                Some(n) => {
                    return Err(field_error(
                        "schema",
                        format!(
                            "version {n} is not supported by edge-kd {} (it reads version {SCHEMA_VERSION}); \
                             use an edge-kd release that knows version {n}",
                            env!("CARGO_PKG_VERSION")
                        ),
                    ));
                }
                None => return Err(field_error("schema", format!("expected an integer, got {v}"))),
            },
        }
        let card = serde_path_to_error::deserialize::<_, Card>(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let message = e.into_inner().to_string();
            if path.is_empty() { CardError::Json(message) } else { field_error(path, message) }
        })?;
        card.check_bounds()?;
        Ok(card)
    }

    /// The bounds above, field by field, in the card's order. Field names are formatted
    /// only for an error: a card may hold 100,000 labels.
    fn check_bounds(&self) -> Result<(), CardError> {
        check_count(self.labels.len(), MAX_LABELS, "labels")?;
        check_count(self.inputs.len(), MAX_INPUTS, "inputs")?;
        let name = |value: &str, field: &dyn Fn() -> String| check_chars(value, MAX_NAME_CHARS, field);
        let text = |value: &str, field: &dyn Fn() -> String| check_chars(value, MAX_TEXT_CHARS, field);
        name(&self.name, &|| "name".into())?;
        for (i, label) in self.labels.iter().enumerate() {
            name(label, &|| format!("labels[{i}]"))?;
        }
        for (i, input) in self.inputs.iter().enumerate() {
            name(&input.name, &|| format!("inputs[{i}].name"))?;
            name(&input.modality, &|| format!("inputs[{i}].modality"))?;
        }
        if let Some(mask) = self.missing_modality.as_ref().and_then(|m| m.mask_input.as_deref()) {
            name(mask, &|| "missing_modality.mask_input".into())?;
        }
        name(&self.output, &|| "output".into())?;
        if let Some(cal) = &self.calibration {
            for key in cal.accept.per_class.keys() {
                name(key, &|| "calibration.accept.per_class".into())?;
            }
            for (i, note) in cal.notes.iter().enumerate() {
                text(note, &|| format!("calibration.notes[{i}]"))?;
            }
            check_count(cal.subsets.len(), MAX_SUBSETS, "calibration.subsets")?;
            for (k, subset) in cal.subsets.iter().enumerate() {
                let field = format!("calibration.subsets[{k}]");
                check_count(subset.present.len(), MAX_INPUTS, &format!("{field}.present"))?;
                if subset.present.is_empty() {
                    return Err(field_error(format!("{field}.present"), "must name at least one input"));
                }
                for (m, present) in subset.present.iter().enumerate() {
                    name(present, &|| format!("{field}.present[{m}]"))?;
                    if subset.present[..m].contains(present) {
                        return Err(field_error(
                            format!("{field}.present"),
                            format!("{present:?} appears twice"),
                        ));
                    }
                }
                for key in subset.accept.per_class.keys() {
                    name(key, &|| format!("{field}.accept.per_class"))?;
                }
                for (i, note) in subset.notes.iter().enumerate() {
                    text(note, &|| format!("{field}.notes[{i}]"))?;
                }
            }
        }
        if let Some(p) = &self.provenance {
            let fields = [
                ("method", &p.method),
                ("dataset", &p.dataset),
                ("edge_kd_version", &p.edge_kd_version),
                ("created", &p.created),
            ];
            for (field, value) in fields {
                if let Some(v) = value {
                    name(v, &|| format!("provenance.{field}"))?;
                }
            }
            for (i, teacher) in p.teachers.iter().enumerate() {
                name(teacher, &|| format!("provenance.teachers[{i}]"))?;
            }
            for key in p.metrics.keys() {
                name(key, &|| "provenance.metrics".into())?;
            }
            if let Some(command) = &p.command {
                text(command, &|| "provenance.command".into())?;
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a card always serialises")
    }

    /// Checks what the schema cannot: consistency within the card and with the graph.
    pub fn validate(&self, graph: &ModelInfo) -> Result<(), CardError> {
        if self.name.trim().is_empty() {
            return Err(field_error("name", "must not be empty"));
        }
        if self.labels.is_empty() {
            return Err(field_error("labels", "must list at least one class"));
        }
        // A map, not a scan of the labels before each one: a card may hold 100,000.
        let mut seen = HashMap::with_capacity(self.labels.len());
        for (i, label) in self.labels.iter().enumerate() {
            if label.is_empty() {
                return Err(field_error(format!("labels[{i}]"), "must not be empty"));
            }
            if let Some(first) = seen.insert(label.as_str(), i) {
                return Err(field_error(
                    format!("labels[{i}]"),
                    format!("{label:?} appears twice (also labels[{first}])"),
                ));
            }
        }
        if self.inputs.is_empty() {
            return Err(field_error("inputs", "must describe at least one input"));
        }
        for (i, input) in self.inputs.iter().enumerate() {
            if let Some(first) = self.inputs[..i].iter().position(|other| other.name == input.name) {
                return Err(field_error(
                    format!("inputs[{i}].name"),
                    format!("{:?} is already the name of inputs[{first}]", input.name),
                ));
            }
            validate_input(input, &format!("inputs[{i}]"), graph.input(&input.name))?;
        }
        let names: Vec<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
        if let Some(mask) = self.missing_modality.as_ref().and_then(|m| m.mask_input.as_ref())
            && !self.inputs.iter().any(|i| &i.name == mask)
        {
            return Err(field_error(
                "missing_modality.mask_input",
                format!("{mask:?} is not one of the card's inputs ({})", names.join(", ")),
            ));
        }
        if let Some(m) = &self.missing_modality
            && m.policy == MissingPolicy::LearnedToken
        {
            self.validate_learned_token(m, graph)?;
        }
        let Some(output) = graph.output(&self.output) else {
            let names: Vec<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(field_error(
                "output",
                format!("the graph has no output {:?} (it has: {})", self.output, names.join(", ")),
            ));
        };
        if let Some(width) = output_width(output)
            && width != self.labels.len()
        {
            return Err(field_error(
                "labels",
                format!("{} labels but the output {:?} has {width} classes", self.labels.len(), self.output),
            ));
        }
        if let Some(cal) = &self.calibration {
            self.validate_calibration(cal.temperature, &cal.accept, "calibration")?;
            if !cal.subsets.is_empty() && !self.inputs.iter().any(|i| i.optional) {
                return Err(field_error(
                    "calibration.subsets",
                    "given, but no input is optional: every frame has every input",
                ));
            }
            for (k, subset) in cal.subsets.iter().enumerate() {
                let field = format!("calibration.subsets[{k}]");
                for (m, present) in subset.present.iter().enumerate() {
                    if !names.contains(&present.as_str()) {
                        return Err(field_error(
                            format!("{field}.present[{m}]"),
                            format!("{present:?} is not one of the card's inputs ({})", names.join(", ")),
                        ));
                    }
                }
                if let Some(required) =
                    self.inputs.iter().find(|i| !i.optional && !subset.present.contains(&i.name))
                {
                    return Err(field_error(
                        format!("{field}.present"),
                        format!("lacks {:?}, which is not optional", required.name),
                    ));
                }
                if subset.present.len() == self.inputs.len() {
                    return Err(field_error(
                        format!("{field}.present"),
                        "lists every input: that is the top-level calibration",
                    ));
                }
                if let Some(j) =
                    cal.subsets[..k].iter().position(|other| same_set(&other.present, &subset.present))
                {
                    return Err(field_error(
                        format!("{field}.present"),
                        format!("the same inputs as subsets[{j}]"),
                    ));
                }
                self.validate_calibration(subset.temperature, &subset.accept, &field)?;
            }
        }
        Ok(())
    }

    /// A temperature and accept thresholds, the top level's or a subset's, under `field`.
    fn validate_calibration(&self, temperature: f32, accept: &Accept, field: &str) -> Result<(), CardError> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(field_error(format!("{field}.temperature"), "must be a positive number"));
        }
        check_probability(accept.default, &format!("{field}.accept.default"))?;
        for (label, t) in &accept.per_class {
            let field = format!("{field}.accept.per_class.{label}");
            if !self.labels.contains(label) {
                return Err(field_error(field, "is not one of the card's labels"));
            }
            check_probability(*t, &field)?;
        }
        Ok(())
    }

    /// The rules of `"learned-token"`: an optional input, no mask, presence inputs that no card
    /// input is named like and that the graph has (float32, `[N]`).
    fn validate_learned_token(&self, m: &MissingModality, graph: &ModelInfo) -> Result<(), CardError> {
        let policy = MissingPolicy::LearnedToken;
        if !self.inputs.iter().any(|i| i.optional) {
            return Err(field_error(
                "missing_modality.policy",
                "\"learned-token\" needs at least one input with \"optional\": true",
            ));
        }
        if let Some(mask) = &m.mask_input {
            return Err(field_error(
                "missing_modality.mask_input",
                format!(
                    "{mask:?} given, but \"learned-token\" takes none (the graph has a <name>_present input per optional input)"
                ),
            ));
        }
        for (i, input) in self.inputs.iter().enumerate() {
            if let Some(j) =
                self.inputs.iter().position(|o| o.presence_input(policy).as_deref() == Some(&input.name))
            {
                return Err(field_error(
                    format!("inputs[{i}].name"),
                    format!(
                        "{:?} is the name of the presence input of inputs[{j}] under \"learned-token\"",
                        input.name
                    ),
                ));
            }
        }
        for (i, input) in self.inputs.iter().enumerate() {
            let Some(presence) = input.presence_input(policy) else { continue };
            let field = format!("inputs[{i}].optional");
            let Some(g) = graph.input(&presence) else {
                return Err(field_error(field, format!("the graph has no presence input {presence:?}")));
            };
            let batch = input.shape.first().copied().unwrap_or(1) as i64;
            let fits = g.elem_type.is_none_or(|t| t == 1)
                && g.shape.as_ref().is_none_or(|d| d.len() == 1 && d[0].is_none_or(|n| n == batch));
            if !fits {
                return Err(field_error(
                    field,
                    format!(
                        "the graph input {presence:?} is {}, expected float32 [{batch}]",
                        g.shape_string()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The presence inputs the runtime feeds besides the card's inputs, in card input order:
    /// `<name>_present` for each optional input under `"learned-token"`, none otherwise
    /// ([`InputSpec::presence_input`]).
    pub fn presence_inputs(&self) -> Vec<String> {
        match &self.missing_modality {
            Some(m) => self.inputs.iter().filter_map(|i| i.presence_input(m.policy)).collect(),
            None => Vec::new(),
        }
    }

    /// The calibration for a frame whose present inputs are `present` (card input names, in any
    /// order): the top level when every input is present, the subset with exactly that set
    /// otherwise, and `None` when the card has no calibration for it. The runtime must send a
    /// frame with no calibration for its set to review, and report the set it used
    /// ([`Card::subset_name`]).
    pub fn calibration_for(&self, present: &[&str]) -> Option<PresentCalibration<'_>> {
        let cal = self.calibration.as_ref()?;
        let known = |name: &&str| self.inputs.iter().any(|i| i.name == *name);
        if !present.iter().all(known) {
            return None;
        }
        if self.inputs.iter().all(|i| present.contains(&i.name.as_str())) {
            return Some(PresentCalibration {
                temperature: cal.temperature,
                accept: &cal.accept,
                subset: None,
            });
        }
        let subset = cal.subsets.iter().find(|s| {
            s.present.iter().all(|p| present.contains(&p.as_str()))
                && present.iter().all(|p| s.present.iter().any(|q| q.as_str() == *p))
        })?;
        Some(PresentCalibration {
            temperature: subset.temperature,
            accept: &subset.accept,
            subset: Some(subset),
        })
    }

    /// How JSONL names the set of inputs a frame had, the set its calibration is looked up by:
    /// their names joined by `+` in card input order (`"rgb+height"`, `"rgb"`).
    pub fn subset_name(&self, present: &[&str]) -> String {
        let named: Vec<&str> =
            self.inputs.iter().map(|i| i.name.as_str()).filter(|name| present.contains(name)).collect();
        named.join("+")
    }

    /// The input named by `missing_modality.mask_input` under `"zero-fill"`: the runtime fills it
    /// from which inputs are present, so no frame gives it a value.
    pub fn mask_input(&self) -> Option<&InputSpec> {
        let mask = self.missing_modality.as_ref().filter(|m| m.policy == MissingPolicy::ZeroFill)?;
        let name = mask.mask_input.as_deref()?;
        self.inputs.iter().find(|i| i.name == name)
    }

    /// Whether `input` is the mask input ([`Card::mask_input`]).
    pub fn is_mask(&self, input: &InputSpec) -> bool {
        self.mask_input().is_some_and(|mask| mask.name == input.name)
    }

    /// The inputs a frame gives a value for, in card order: every input but the mask input.
    pub fn value_inputs(&self) -> impl Iterator<Item = &InputSpec> {
        self.inputs.iter().filter(|i| !self.is_mask(i))
    }

    /// The accept threshold of each class, in label order.
    pub fn thresholds(&self) -> Vec<Option<f32>> {
        match &self.calibration {
            None => vec![None; self.labels.len()],
            Some(cal) => self
                .labels
                .iter()
                .map(|l| cal.accept.per_class.get(l).copied().unwrap_or(cal.accept.default))
                .collect(),
        }
    }

    pub fn temperature(&self) -> f32 {
        self.calibration.as_ref().map_or(1.0, |c| c.temperature)
    }
}

fn check_count(count: usize, limit: usize, field: &str) -> Result<(), CardError> {
    if count > limit {
        return Err(field_error(field, format!("{count} items, more than the {limit} a card allows")));
    }
    Ok(())
}

fn check_chars(value: &str, limit: usize, field: &dyn Fn() -> String) -> Result<(), CardError> {
    // A string's bytes bound its characters from above: most need no count.
    if value.len() > limit {
        let chars = value.chars().count();
        if chars > limit {
            return Err(field_error(
                field(),
                format!("{chars} characters, more than the {limit} a card allows"),
            ));
        }
    }
    Ok(())
}

fn check_probability(p: Option<f32>, field: &str) -> Result<(), CardError> {
    match p {
        Some(p) if !(0.0..=1.0).contains(&p) => {
            Err(field_error(field, format!("{p} is not a probability in [0, 1]")))
        }
        _ => Ok(()),
    }
}

fn validate_input(input: &InputSpec, field: &str, graph_input: Option<&TensorInfo>) -> Result<(), CardError> {
    let Some(graph_input) = graph_input else {
        return Err(field_error(format!("{field}.name"), format!("the graph has no input {:?}", input.name)));
    };
    if input.shape.len() != 4 || input.shape.contains(&0) {
        return Err(field_error(
            format!("{field}.shape"),
            format!("expected 4 positive dimensions (NCHW), got {:?}", input.shape),
        ));
    }
    if input.shape[0] != 1 {
        return Err(field_error(format!("{field}.shape"), "batch dimension must be 1"));
    }
    if input.shape[2..].iter().any(|&side| side > MAX_INPUT_SIDE) {
        return Err(field_error(
            format!("{field}.shape"),
            format!("{:?}: height and width are at most {MAX_INPUT_SIDE}", input.shape),
        ));
    }
    let channels = input.channels();
    if input.shape[1] != channels {
        return Err(field_error(
            format!("{field}.shape"),
            format!("{} channels but color {:?} has {channels}", input.shape[1], input.color.as_str()),
        ));
    }
    for (name, values) in [("mean", &input.mean), ("std", &input.std)] {
        if values.len() != channels {
            return Err(field_error(
                format!("{field}.{name}"),
                format!(
                    "{} values for a {:?} input, expected {channels}",
                    values.len(),
                    input.color.as_str()
                ),
            ));
        }
    }
    if input.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(field_error(format!("{field}.std"), "every value must be positive"));
    }
    if !(input.scale.is_finite() && input.scale > 0.0) {
        return Err(field_error(format!("{field}.scale"), "must be a positive number"));
    }
    if let Some(dims) = &graph_input.shape {
        let matches =
            dims.len() == 4 && dims.iter().zip(&input.shape).all(|(g, c)| g.is_none_or(|g| g == *c as i64));
        if !matches {
            return Err(field_error(
                format!("{field}.shape"),
                format!(
                    "{:?} does not fit the graph input {:?} of shape {}",
                    input.shape,
                    input.name,
                    graph_input.shape_string()
                ),
            ));
        }
    }
    Ok(())
}

/// Whether two lists of names hold the same names (each list's names are unique).
fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// The number of classes an output holds, when the graph fixes it.
pub fn output_width(output: &TensorInfo) -> Option<usize> {
    let dims = output.shape.as_ref()?;
    let last = (*dims.last()?)?;
    usize::try_from(last).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const VALID: &str = r#"{
      "schema": 1, "name": "t", "task": "classification", "labels": ["a", "b", "c"],
      "inputs": [{"name": "image", "shape": [1, 1, 4, 4], "layout": "NCHW", "color": "gray",
                  "resize": "stretch", "scale": 0.0039, "mean": [0.5], "std": [0.25]}],
      "output": "logits",
      "calibration": {"temperature": 1.5, "accept": {"default": 0.9, "per_class": {"b": null, "c": 0.8}}}
    }"#;

    fn graph(width: i64) -> ModelInfo {
        ModelInfo {
            inputs: vec![TensorInfo {
                name: "image".into(),
                elem_type: Some(1),
                shape: Some(vec![None, Some(1), Some(4), Some(4)]),
            }],
            outputs: vec![TensorInfo {
                name: "logits".into(),
                elem_type: Some(1),
                shape: Some(vec![Some(1), Some(width)]),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn valid_card_parses_and_resolves_thresholds() {
        let card = Card::parse(VALID).unwrap();
        card.validate(&graph(3)).unwrap();
        assert_eq!(card.thresholds(), vec![Some(0.9), None, Some(0.8)]);
        assert_eq!(card.temperature(), 1.5);
        assert_eq!(card.inputs[0].modality, "camera");
        assert_eq!(Card::parse(&card.to_json()).unwrap(), card);
    }

    fn error_of(json: &str, width: i64) -> String {
        match Card::parse(json) {
            Err(e) => e.to_string(),
            Ok(card) => card.validate(&graph(width)).unwrap_err().to_string(),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (VALID.replace("\"schema\": 1", "\"schema\": 2"), "card.schema: version 2"),
            (VALID.replace("\"task\"", "\"colour\": 1, \"task\""), "unknown field `colour`"),
            (VALID.replace("\"gray\"", "\"grey\""), "card.inputs[0].color"),
            (VALID.replace("[0.5]", "[0.5, 0.5, 0.5]"), "card.inputs[0].mean: 3 values"),
            (VALID.replace("\"b\": null", "\"z\": null"), "per_class.z: is not one of"),
            (VALID.replace("0.9,", "1.5,"), "card.calibration.accept.default: 1.5"),
            (VALID.replace("[1, 1, 4, 4]", "[1, 1, 5, 4]"), "does not fit the graph input"),
            (VALID.replace("\"logits\"", "\"probs\""), "card.output: the graph has no output"),
            (
                VALID.replace(
                    "\"output\"",
                    "\"missing_modality\": {\"policy\": \"zero-fill\", \"mask_input\": \"mask\"}, \"output\"",
                ),
                "card.missing_modality.mask_input: \"mask\" is not one of the card's inputs (image)",
            ),
        ];
        for (json, expected) in cases {
            let message = error_of(&json, 3);
            assert!(message.contains(expected), "{message:?} should contain {expected:?}");
        }
        assert!(error_of(VALID, 10).contains("card.labels: 3 labels but the output"));
    }

    /// VALID with one change made to its JSON.
    fn valid_with(change: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut card: serde_json::Value = serde_json::from_str(VALID).unwrap();
        change(&mut card);
        card.to_string()
    }

    #[test]
    fn a_card_one_past_each_bound_is_refused_with_the_bound_named() {
        let long = |n: usize| serde_json::Value::from("x".repeat(n));
        let labels = |n: usize| serde_json::Value::from((0..n).map(|i| i.to_string()).collect::<Vec<_>>());
        let cases = [
            (
                valid_with(|c| c["labels"] = labels(MAX_LABELS + 1)),
                "card.labels: 100001 items, more than the 100000",
            ),
            (
                valid_with(|c| c["inputs"] = vec![c["inputs"][0].clone(); MAX_INPUTS + 1].into()),
                "card.inputs: 65 items, more than the 64 a card allows",
            ),
            (
                valid_with(|c| c["name"] = long(MAX_NAME_CHARS + 1)),
                "card.name: 1025 characters, more than the 1024",
            ),
            (valid_with(|c| c["labels"][1] = long(MAX_NAME_CHARS + 1)), "card.labels[1]: 1025 characters"),
            (
                valid_with(|c| c["inputs"][0]["name"] = long(MAX_NAME_CHARS + 1)),
                "card.inputs[0].name: 1025 characters",
            ),
            (valid_with(|c| c["output"] = long(MAX_NAME_CHARS + 1)), "card.output: 1025 characters"),
            (
                valid_with(|c| c["calibration"]["notes"] = vec![long(MAX_TEXT_CHARS + 1)].into()),
                "card.calibration.notes[0]: 4097 characters, more than the 4096 a card allows",
            ),
            (
                valid_with(|c| {
                    c["provenance"] = serde_json::json!({"command": "x".repeat(MAX_TEXT_CHARS + 1)})
                }),
                "card.provenance.command: 4097 characters",
            ),
            (
                format!("{VALID}{}", " ".repeat(MAX_CARD_JSON_BYTES + 1 - VALID.len())),
                "card: 4194305 bytes of JSON, more than the 4194304 (4 MiB) a card may take",
            ),
        ];
        for (json, expected) in cases {
            let message = Card::parse(&json).unwrap_err().to_string();
            assert!(message.starts_with(expected), "{message:.200} should start with {expected:?}");
        }
    }

    /// rgb (required) and height, depth (optional) under "learned-token", with subsets.
    const MULTIMODAL: &str = r#"{
      "schema": 1, "name": "m", "task": "classification", "labels": ["a", "b", "c"],
      "inputs": [
        {"name": "rgb", "shape": [1, 3, 4, 4], "layout": "NCHW", "color": "rgb", "resize": "stretch",
         "scale": 0.0039, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        {"name": "height", "shape": [1, 1, 4, 4], "layout": "NCHW", "color": "gray", "resize": "stretch",
         "scale": 0.0039, "mean": [0.5], "std": [0.25], "optional": true},
        {"name": "depth", "shape": [1, 1, 4, 4], "layout": "NCHW", "color": "gray", "resize": "stretch",
         "scale": 0.0039, "mean": [0.5], "std": [0.25], "optional": true}],
      "missing_modality": {"policy": "learned-token"},
      "output": "logits",
      "calibration": {"temperature": 1.5, "accept": {"default": 0.9},
        "subsets": [
          {"present": ["rgb"], "temperature": 2.0, "accept": {"default": 0.95, "per_class": {"b": null}}},
          {"present": ["depth", "rgb"], "temperature": 1.7, "accept": {"default": null}}]}
    }"#;

    fn multimodal_graph(presence: &[&str]) -> ModelInfo {
        let image = |name: &str, c| TensorInfo {
            name: name.into(),
            elem_type: Some(1),
            shape: Some(vec![Some(1), Some(c), Some(4), Some(4)]),
        };
        let mut inputs = vec![image("rgb", 3), image("height", 1), image("depth", 1)];
        inputs.extend(presence.iter().map(|name| TensorInfo {
            name: (*name).into(),
            elem_type: Some(1),
            shape: Some(vec![None]),
        }));
        ModelInfo { inputs, outputs: graph(3).outputs, ..Default::default() }
    }

    #[test]
    fn learned_token_names_a_presence_input_per_optional_input() {
        let card = Card::parse(MULTIMODAL).unwrap();
        card.validate(&multimodal_graph(&["height_present", "depth_present"])).unwrap();
        assert_eq!(card.presence_inputs(), ["height_present", "depth_present"]);
        assert_eq!(card.inputs[0].presence_input(MissingPolicy::LearnedToken), None);
        assert_eq!(card.inputs[1].presence_input(MissingPolicy::ZeroFill), None);
        assert_eq!(Card::parse(&card.to_json()).unwrap(), card);
        let message = card.validate(&multimodal_graph(&["height_present"])).unwrap_err().to_string();
        assert_eq!(message, "card.inputs[2].optional: the graph has no presence input \"depth_present\"");
        let mut wrong = multimodal_graph(&["height_present", "depth_present"]);
        wrong.inputs[4].shape = Some(vec![Some(1), Some(1)]);
        let message = card.validate(&wrong).unwrap_err().to_string();
        assert!(message.contains("\"depth_present\" is [1, 1], expected float32 [1]"), "{message}");
        // Zero-fill cards have none, and their inputs may be called anything.
        assert!(Card::parse(VALID).unwrap().presence_inputs().is_empty());
    }

    #[test]
    fn the_calibration_for_a_frame_is_the_one_of_its_present_inputs() {
        let card = Card::parse(MULTIMODAL).unwrap();
        let of = |present: &[&str]| {
            card.calibration_for(present).map(|c| (c.temperature, c.thresholds(&card.labels)))
        };
        assert_eq!(of(&["rgb", "height", "depth"]), Some((1.5, vec![Some(0.9); 3])));
        assert_eq!(of(&["depth", "rgb", "height"]), Some((1.5, vec![Some(0.9); 3])), "order does not matter");
        assert_eq!(of(&["rgb"]), Some((2.0, vec![Some(0.95), None, Some(0.95)])));
        assert_eq!(of(&["rgb", "depth"]), Some((1.7, vec![None; 3])));
        assert_eq!(of(&["depth", "rgb"]), Some((1.7, vec![None; 3])));
        // No calibration for rgb+height: the frame goes to review.
        assert_eq!(of(&["rgb", "height"]), None);
        assert_eq!(of(&["rgb", "height", "depth", "ir"]), None, "an input the card does not have");
        assert_eq!(
            card.calibration_for(&["rgb"]).unwrap().subset,
            Some(&card.calibration.as_ref().unwrap().subsets[0])
        );
        assert_eq!(card.calibration_for(&["rgb", "height", "depth"]).unwrap().subset, None);
        assert_eq!(card.subset_name(&["depth", "rgb"]), "rgb+depth");
        assert_eq!(card.subset_name(&["height", "depth", "rgb"]), "rgb+height+depth");
        // A card without calibration has none for any set; one without subsets only the full one.
        let uncalibrated = Card { calibration: None, ..card.clone() };
        assert!(uncalibrated.calibration_for(&["rgb", "height", "depth"]).is_none());
        let single = Card::parse(VALID).unwrap();
        assert_eq!(single.calibration_for(&["image"]).map(|c| c.temperature), Some(1.5));
        assert!(single.calibration_for(&[]).is_none());
    }

    #[test]
    fn multimodal_rules_name_the_field() {
        let graph = multimodal_graph(&["height_present", "depth_present"]);
        let error = |json: String| match Card::parse(&json) {
            Err(e) => e.to_string(),
            Ok(card) => card.validate(&graph).unwrap_err().to_string(),
        };
        let cases = [
            (
                MULTIMODAL.replace("\"present\": [\"rgb\"]", "\"present\": [\"rgb\", \"height\", \"depth\"]"),
                "card.calibration.subsets[0].present: lists every input",
            ),
            (
                MULTIMODAL.replace("[\"depth\", \"rgb\"]", "[\"rgb\"]"),
                "card.calibration.subsets[1].present: the same inputs as subsets[0]",
            ),
            (
                MULTIMODAL.replace("[\"depth\", \"rgb\"]", "[\"depth\"]"),
                "card.calibration.subsets[1].present: lacks \"rgb\"",
            ),
            (
                MULTIMODAL.replace("[\"depth\", \"rgb\"]", "[\"rgb\", \"rgb\"]"),
                "card.calibration.subsets[1].present: \"rgb\" appears twice",
            ),
            (
                MULTIMODAL.replace("[\"depth\", \"rgb\"]", "[]"),
                "card.calibration.subsets[1].present: must name",
            ),
            (
                MULTIMODAL.replace("\"b\": null", "\"z\": null"),
                "card.calibration.subsets[0].accept.per_class.z: is not one",
            ),
            (
                MULTIMODAL.replace("\"temperature\": 2.0", "\"temperature\": 0"),
                "card.calibration.subsets[0].temperature",
            ),
            (
                MULTIMODAL.replace("\"learned-token\"}", "\"learned-token\", \"mask_input\": \"depth\"}"),
                "card.missing_modality.mask_input: \"depth\" given",
            ),
            (
                MULTIMODAL.replace("\"optional\": true", "\"optional\": false"),
                "card.missing_modality.policy: \"learned-token\" needs",
            ),
        ];
        for (json, expected) in cases {
            assert_ne!(json, MULTIMODAL, "{expected}: the replacement changed nothing");
            let message = error(json);
            assert!(message.starts_with(expected), "{message:?} should start with {expected:?}");
        }
        // A card input named like a presence input (here the graph's input of that name is an
        // image, as the card says).
        let mut renamed = multimodal_graph(&["height_present"]);
        renamed.inputs[0].name = "depth_present".into();
        let card =
            Card::parse(&MULTIMODAL.replace("\"name\": \"rgb\"", "\"name\": \"depth_present\"")).unwrap();
        let message = card.validate(&renamed).unwrap_err().to_string();
        assert_eq!(
            message,
            "card.inputs[0].name: \"depth_present\" is the name of the presence input of inputs[2] under \"learned-token\""
        );
        let no_optional = valid_with(|c| {
            c["calibration"]["subsets"] =
                serde_json::json!([{"present": ["image"], "temperature": 1, "accept": {"default": 0.9}}])
        });
        let message = error_of(&no_optional, 3);
        assert!(
            message.starts_with("card.calibration.subsets: given, but no input is optional"),
            "{message}"
        );
        let too_many = valid_with(|c| {
            c["calibration"]["subsets"] = vec![
                serde_json::json!({"present": ["image"], "temperature": 1, "accept": {"default": 0.9}});
                MAX_SUBSETS + 1
            ]
            .into()
        });
        let message = Card::parse(&too_many).unwrap_err().to_string();
        assert_eq!(message, "card.calibration.subsets: 65 items, more than the 64 a card allows");
    }

    #[test]
    fn a_card_at_each_bound_is_read() {
        let at_limits = valid_with(|c| {
            c["labels"] = (0..MAX_LABELS).map(|i| i.to_string()).collect::<Vec<_>>().into();
            // Characters, not bytes, are counted: 1024 two-byte characters fit.
            c["name"] = "é".repeat(MAX_NAME_CHARS).into();
            c["calibration"]["notes"] = vec!["n".repeat(MAX_TEXT_CHARS)].into();
        });
        let card = Card::parse(&at_limits).unwrap();
        assert_eq!((card.labels.len(), card.name.chars().count()), (MAX_LABELS, MAX_NAME_CHARS));
        let padded = format!("{VALID}{}", " ".repeat(MAX_CARD_JSON_BYTES - VALID.len()));
        assert!(Card::parse(&padded).is_ok(), "exactly {MAX_CARD_JSON_BYTES} bytes of JSON are allowed");
    }
}
