//! Proof that an engine answers like the reference: stored input tensors are run and
//! the outputs compared with the stored reference outputs (PyTorch's or onnxruntime's).
//! A reference sample holds a tensor for every tensor the engine is fed
//! ([`engine::feeds`]): a one-input model's `input_K.npy`, or for a model fed several
//! (presence inputs included) `input_K.NAME.npy` each; and `output_K.npy`.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use thiserror::Error;

use crate::engine::{self, EngineKind, EngineOptions, Feed};
use crate::model::Model;
use crate::npy::{self, NpyArray};

/// `docs/parity.toml`, the one definition of the tolerance, shared with the Python exporter.
const TOLERANCE_FILE: &str = include_str!("../docs/parity.toml");

/// The largest absolute difference from the reference logits an engine may show
/// (`docs/parity.toml`).
pub fn tolerance() -> f32 {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        max_abs_diff: f32,
    }
    static TOLERANCE: LazyLock<f32> = LazyLock::new(|| {
        // The file is part of the build, and this module's tests parse it: a broken one
        // fails `cargo test`, never a user's command.
        toml::from_str::<File>(TOLERANCE_FILE).expect("docs/parity.toml: max_abs_diff = <float>").max_abs_diff
    });
    *TOLERANCE
}

/// A classifier's reference output is a row of logits; 16M values (64 MiB) is far past any
/// label set, and keeps a corrupt reference file from taking the box's memory.
const MAX_OUTPUT_VALUES: usize = 1 << 24;

#[derive(Debug, Error)]
pub enum ParityError {
    #[error("{path}: {message}")]
    Reference { path: PathBuf, message: String },
    #[error("{0}")]
    Engine(#[from] engine::EngineError),
    #[error(
        "{model}: the model is fed {count} tensors ({names}), so a reference is a folder of \
         input_K.NAME.npy (one per tensor) and output_K.npy, not IN.npy:OUT.npy"
    )]
    PairForSeveral { model: String, count: usize, names: String },
}

/// The files of one reference sample: a tensor per fed input, in [`engine::feeds`] order, and
/// the output.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleFiles {
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
}

impl SampleFiles {
    /// An `IN.npy:OUT.npy` pair, which can only feed a model fed one tensor.
    pub fn pair(model: &Model, input: PathBuf, output: PathBuf) -> Result<SampleFiles, ParityError> {
        let feeds = engine::feeds(&model.card);
        if feeds.len() != 1 {
            let names: Vec<&str> = feeds.iter().map(|f| f.name.as_str()).collect();
            return Err(ParityError::PairForSeveral {
                model: model.origin().into(),
                count: feeds.len(),
                names: names.join(", "),
            });
        }
        Ok(SampleFiles { inputs: vec![input], output })
    }
}

/// One loaded reference sample.
struct Sample {
    inputs: Vec<NpyArray>,
    output_path: PathBuf,
    output: NpyArray,
}

/// Reference input/output tensors, loaded once and checked in every engine.
pub struct References {
    samples: Vec<Sample>,
}

impl References {
    /// The samples of a folder for `model`, K = 0, 1, … until one's first input is missing.
    pub fn samples_in(dir: &Path, model: &Model) -> Result<Vec<SampleFiles>, ParityError> {
        let feeds = engine::feeds(&model.card);
        let file = |k: usize, feed: &Feed| match feeds.len() {
            1 => dir.join(format!("input_{k}.npy")),
            _ => dir.join(format!("input_{k}.{}.npy", feed.name)),
        };
        let mut samples = Vec::new();
        for k in 0.. {
            let inputs: Vec<PathBuf> = feeds.iter().map(|feed| file(k, feed)).collect();
            if !inputs[0].is_file() {
                break;
            }
            let output = dir.join(format!("output_{k}.npy"));
            if let Some(path) = inputs.iter().chain([&output]).find(|p| !p.is_file()) {
                return Err(ParityError::Reference {
                    path: path.clone(),
                    message: format!("missing (sample {k}'s {} is there)", inputs[0].display()),
                });
            }
            samples.push(SampleFiles { inputs, output });
        }
        if samples.is_empty() {
            return Err(ParityError::Reference {
                path: dir.to_owned(),
                message: format!(
                    "no reference samples (expected {} and output_0.npy)",
                    file(0, &feeds[0])
                        .file_name()
                        .map_or(String::new(), |n| n.to_string_lossy().into_owned())
                ),
            });
        }
        Ok(samples)
    }

    pub fn load(samples: &[SampleFiles], model: &Model) -> Result<References, ParityError> {
        let read = |p: &Path, max: usize| {
            npy::read_f32(p, max)
                .map_err(|e| ParityError::Reference { path: p.to_owned(), message: e.to_string() })
        };
        let feeds = engine::feeds(&model.card);
        let mut loaded = Vec::new();
        for sample in samples {
            let mut inputs = Vec::with_capacity(feeds.len());
            for (path, feed) in sample.inputs.iter().zip(&feeds) {
                let len = feed.shape.iter().product();
                let input = read(path, len)?;
                if input.data.len() != len {
                    return Err(ParityError::Reference {
                        path: path.clone(),
                        message: format!(
                            "shape {:?} does not fit the model input {:?} {:?}",
                            input.shape, feed.name, feed.shape
                        ),
                    });
                }
                inputs.push(input);
            }
            loaded.push(Sample {
                inputs,
                output_path: sample.output.clone(),
                output: read(&sample.output, MAX_OUTPUT_VALUES)?,
            });
        }
        Ok(References { samples: loaded })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The largest absolute difference over all samples in one engine (NaN counts as ∞).
    pub fn max_abs_diff(
        &self,
        model: &Model,
        kind: EngineKind,
        ort_library: Option<&Path>,
    ) -> Result<f32, ParityError> {
        let opts = EngineOptions { kind, threads: 1, ort_library: ort_library.map(Path::to_owned) };
        let mut engine = engine::open(model, &opts)?;
        let mut out = Vec::new();
        let mut worst = 0.0f32;
        for Sample { inputs, output_path, output: expected } in &self.samples {
            let tensors: Vec<&[f32]> = inputs.iter().map(|i| i.data.as_slice()).collect();
            engine.run(&tensors, &mut out)?;
            if out.len() != expected.data.len() {
                return Err(ParityError::Reference {
                    path: output_path.clone(),
                    message: format!("{} values, but {kind} computed {}", expected.data.len(), out.len()),
                });
            }
            let diff = out.iter().zip(&expected.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            worst = worst.max(if diff.is_nan() { f32::INFINITY } else { diff });
        }
        Ok(worst)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shared_tolerance_parses_to_a_small_positive_number() {
        let tol = super::tolerance();
        assert!(tol > 0.0 && tol < 1e-2, "docs/parity.toml: max_abs_diff = {tol}");
    }
}
