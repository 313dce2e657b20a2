//! The model a source serves, swappable while frames flow. A new file is hashed, checked
//! against the configured sha256 pin, loaded and run once on a blank input before it
//! replaces the old one; if any step fails the old model keeps serving.
//!
//! A rejected file is remembered by its hash, so the same bytes are not tried (and
//! reported) again until the file changes or the pins are re-read.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::classify::{Classifier, ClassifierError, DecideOptions, InputError, InputValue};
use crate::engine::{self, EngineError, EngineOptions};
use crate::model::{CardlessOptions, DEFAULT_MODEL_BYTES, Model, ModelError};
use crate::preprocess::decode::ImageLimits;

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{path}: sha256 is {actual}, but model_sha256 pins {pinned}: refused")]
    PinMismatch { path: PathBuf, pinned: String, actual: String },
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Classifier(#[from] ClassifierError),
    #[error("the model fails on a blank input: {0}")]
    TrialRun(#[from] InputError),
}

pub struct Loaded {
    pub model: Model,
    pub sha256: String,
}

pub enum ReloadOutcome {
    Unchanged,
    /// The file holds the bytes last rejected, under the same pin: not tried again.
    StillRejected,
    /// After a rejected file, the file is the served model again.
    Restored,
    Reloaded {
        sha256: String,
    },
    Refused(SlotError),
    Failed(SlotError),
}

/// The file content last rejected, and the pin it was checked against.
struct Rejected {
    /// None when the file could not be read.
    sha256: Option<String>,
    pin: Option<String>,
}

pub struct ModelSlot {
    path: Option<PathBuf>,
    pin: Mutex<Option<String>>,
    engine: EngineOptions,
    decide: DecideOptions,
    limits: ImageLimits,
    current: Mutex<Arc<Loaded>>,
    generation: AtomicU64,
    rejected: Mutex<Option<Rejected>>,
}

impl ModelSlot {
    pub fn open(
        path: Option<&Path>,
        pin: Option<String>,
        engine: EngineOptions,
        decide: DecideOptions,
        limits: ImageLimits,
    ) -> Result<ModelSlot, SlotError> {
        let pin = pin.map(|p| p.to_ascii_lowercase());
        let loaded = match path {
            Some(path) => {
                let (bytes, sha256) = read(path)?;
                check_pin(path, pin.as_deref(), &sha256)?;
                load(
                    Model::from_file_bytes(bytes, path, &CardlessOptions::default())?,
                    sha256,
                    &engine,
                    decide,
                )?
            }
            None => load(Model::embedded_default()?, sha256_hex(DEFAULT_MODEL_BYTES), &engine, decide)?,
        };
        Ok(ModelSlot {
            path: path.map(Path::to_owned),
            pin: Mutex::new(pin),
            engine,
            decide,
            limits,
            current: Mutex::new(Arc::new(loaded)),
            generation: AtomicU64::new(0),
            rejected: Mutex::new(None),
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Bumped on every successful reload; workers compare it before each frame.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn set_pin(&self, pin: Option<String>) {
        *self.pin.lock().unwrap_or_else(|p| p.into_inner()) = pin.map(|p| p.to_ascii_lowercase());
    }

    /// Forgets the rejected file, so that the next reload tries it again (SIGHUP: the
    /// operator asks for a fresh verdict).
    pub fn forget_rejected(&self) {
        *self.rejected.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn reload(&self) -> ReloadOutcome {
        let Some(path) = &self.path else { return ReloadOutcome::Unchanged };
        let pin = self.pin.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut rejected = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        let (bytes, sha256) = match read(path) {
            Ok(read) => read,
            Err(e) => {
                *rejected = Some(Rejected { sha256: None, pin });
                return ReloadOutcome::Failed(e);
            }
        };
        if let Some(r) = rejected.as_ref()
            && r.sha256.as_ref() == Some(&sha256)
            && r.pin == pin
        {
            return ReloadOutcome::StillRejected;
        }
        let tried = check_pin(path, pin.as_deref(), &sha256).and_then(|()| {
            if sha256 == self.current().sha256 {
                return Ok(None);
            }
            let model = Model::from_file_bytes(bytes, path, &CardlessOptions::default())?;
            load(model, sha256.clone(), &self.engine, self.decide).map(Some)
        });
        match tried {
            Ok(None) if rejected.take().is_some() => ReloadOutcome::Restored,
            Ok(None) => ReloadOutcome::Unchanged,
            Ok(Some(loaded)) => {
                *rejected = None;
                let sha256 = loaded.sha256.clone();
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
                self.generation.fetch_add(1, Ordering::Release);
                ReloadOutcome::Reloaded { sha256 }
            }
            Err(e) => {
                *rejected = Some(Rejected { sha256: Some(sha256), pin });
                match e {
                    SlotError::PinMismatch { .. } => ReloadOutcome::Refused(e),
                    e => ReloadOutcome::Failed(e),
                }
            }
        }
    }

    /// A classifier on the current model, for one worker, with the generation it is of.
    pub fn classifier(&self) -> Result<(u64, Arc<Loaded>, Classifier), SlotError> {
        let generation = self.generation();
        let loaded = self.current();
        let engine = engine::open(&loaded.model, &self.engine)?;
        let classifier = Classifier::new(&loaded.model, engine, self.decide, self.limits)?;
        Ok((generation, loaded, classifier))
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn read(path: &Path) -> Result<(Vec<u8>, String), SlotError> {
    let bytes = std::fs::read(path).map_err(|source| SlotError::Read { path: path.into(), source })?;
    let sha256 = sha256_hex(&bytes);
    Ok((bytes, sha256))
}

fn check_pin(path: &Path, pin: Option<&str>, sha256: &str) -> Result<(), SlotError> {
    match pin {
        Some(pinned) if pinned != sha256 => {
            Err(SlotError::PinMismatch { path: path.into(), pinned: pinned.into(), actual: sha256.into() })
        }
        _ => Ok(()),
    }
}

fn load(
    model: Model,
    sha256: String,
    engine_opts: &EngineOptions,
    decide: DecideOptions,
) -> Result<Loaded, SlotError> {
    let engine = engine::open(&model, engine_opts)?;
    // The trial run feeds a tensor; no image is decoded, so the limits do not matter here.
    let mut classifier = Classifier::new(&model, engine, decide, ImageLimits::default())?;
    // Every input a frame gives a value for (the mask input, when there is one, edge-kd fills).
    let inputs: Vec<_> = model.card.value_inputs().collect();
    let zeros: Vec<Vec<f32>> = inputs.iter().map(|i| vec![0.0; i.tensor_len()]).collect();
    let values: Vec<InputValue> = (inputs.iter().zip(&zeros))
        .map(|(input, data)| InputValue::Tensor { shape: &input.shape, data })
        .collect();
    classifier.classify(&values)?;
    Ok(Loaded { model, sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineKind;

    fn slot(path: &Path, pin: Option<String>) -> ModelSlot {
        let engine = EngineOptions { kind: EngineKind::Tract, threads: 1, ort_library: None };
        ModelSlot::open(Some(path), pin, engine, DecideOptions::default(), ImageLimits::default()).unwrap()
    }

    #[test]
    fn a_rejected_file_is_tried_once_per_content_and_its_repair_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, DEFAULT_MODEL_BYTES).unwrap();
        let slot = slot(&path, None);
        assert!(matches!(slot.reload(), ReloadOutcome::Unchanged));

        std::fs::write(&path, &DEFAULT_MODEL_BYTES[..DEFAULT_MODEL_BYTES.len() / 2]).unwrap();
        assert!(matches!(slot.reload(), ReloadOutcome::Failed(_)));
        assert!(matches!(slot.reload(), ReloadOutcome::StillRejected), "the same bytes are not tried twice");
        std::fs::write(&path, &DEFAULT_MODEL_BYTES[..100]).unwrap();
        assert!(matches!(slot.reload(), ReloadOutcome::Failed(_)), "other bytes are a new change");
        slot.forget_rejected();
        assert!(matches!(slot.reload(), ReloadOutcome::Failed(_)), "SIGHUP tries again");

        std::fs::write(&path, DEFAULT_MODEL_BYTES).unwrap();
        assert!(matches!(slot.reload(), ReloadOutcome::Restored));
        assert!(matches!(slot.reload(), ReloadOutcome::Unchanged), "reported once");
        assert_eq!(slot.generation(), 0, "the served model never changed");
    }

    #[test]
    fn a_pin_refusal_is_remembered_with_its_pin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, DEFAULT_MODEL_BYTES).unwrap();
        let slot = slot(&path, Some(sha256_hex(DEFAULT_MODEL_BYTES)));
        slot.set_pin(Some("0".repeat(64)));
        assert!(matches!(slot.reload(), ReloadOutcome::Refused(SlotError::PinMismatch { .. })));
        assert!(matches!(slot.reload(), ReloadOutcome::StillRejected));
        slot.set_pin(Some("1".repeat(64)));
        assert!(matches!(slot.reload(), ReloadOutcome::Refused(_)), "a new pin is a new verdict");
        slot.set_pin(None);
        assert!(matches!(slot.reload(), ReloadOutcome::Restored));
    }
}
