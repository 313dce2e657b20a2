//! Proof that an engine answers like the reference: stored input tensors are run and
//! the outputs compared with the stored reference outputs (PyTorch's or onnxruntime's).

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use thiserror::Error;

use crate::classify::{self, ClassifierError};
use crate::engine::{self, EngineKind, EngineOptions};
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
    #[error("{0}")]
    Model(#[from] ClassifierError),
}

/// Reference input/output tensors, loaded once and checked in every engine.
pub struct References {
    pairs: Vec<(PathBuf, NpyArray, PathBuf, NpyArray)>,
}

impl References {
    /// The `input_N.npy` / `output_N.npy` pairs of a folder, N = 0, 1, … until one is missing.
    pub fn pairs_in(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>, ParityError> {
        let mut pairs = Vec::new();
        for i in 0.. {
            let (input, output) = (dir.join(format!("input_{i}.npy")), dir.join(format!("output_{i}.npy")));
            if !input.is_file() {
                break;
            }
            if !output.is_file() {
                return Err(ParityError::Reference {
                    path: output,
                    message: "missing (its input is there)".into(),
                });
            }
            pairs.push((input, output));
        }
        if pairs.is_empty() {
            return Err(ParityError::Reference {
                path: dir.to_owned(),
                message: "no input_0.npy/output_0.npy pairs".into(),
            });
        }
        Ok(pairs)
    }

    pub fn load(pairs: &[(PathBuf, PathBuf)], model: &Model) -> Result<References, ParityError> {
        let read = |p: &Path, max: usize| {
            npy::read_f32(p, max)
                .map_err(|e| ParityError::Reference { path: p.to_owned(), message: e.to_string() })
        };
        // A pair holds one input tensor, as the exporter writes them.
        let spec = classify::single_input(model)?;
        let mut loaded = Vec::new();
        for (input_path, output_path) in pairs {
            let input = read(input_path, spec.tensor_len())?;
            if input.data.len() != spec.tensor_len() {
                return Err(ParityError::Reference {
                    path: input_path.clone(),
                    message: format!("shape {:?} does not fit the model input {:?}", input.shape, spec.shape),
                });
            }
            loaded.push((
                input_path.clone(),
                input,
                output_path.clone(),
                read(output_path, MAX_OUTPUT_VALUES)?,
            ));
        }
        Ok(References { pairs: loaded })
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The largest absolute difference over all pairs in one engine (NaN counts as ∞).
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
        for (_, input, output_path, expected) in &self.pairs {
            engine.run(&[&input.data], &mut out)?;
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
