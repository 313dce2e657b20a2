//! The model a source serves, swappable while frames flow. A new file is hashed, checked
//! against the configured sha256 pin, loaded and run once on a blank input before it
//! replaces the old one; if any step fails the old model keeps serving.

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
    Reloaded { sha256: String },
    Refused(SlotError),
    Failed(SlotError),
}

pub struct ModelSlot {
    path: Option<PathBuf>,
    pin: Mutex<Option<String>>,
    engine: EngineOptions,
    decide: DecideOptions,
    limits: ImageLimits,
    current: Mutex<Arc<Loaded>>,
    generation: AtomicU64,
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
        let loaded = load(path, pin.as_deref(), &engine, decide)?;
        Ok(ModelSlot {
            path: path.map(Path::to_owned),
            pin: Mutex::new(pin),
            engine,
            decide,
            limits,
            current: Mutex::new(Arc::new(loaded)),
            generation: AtomicU64::new(0),
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

    pub fn reload(&self) -> ReloadOutcome {
        let Some(path) = &self.path else { return ReloadOutcome::Unchanged };
        let pin = self.pin.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match load(Some(path), pin.as_deref(), &self.engine, self.decide) {
            Ok(loaded) if loaded.sha256 == self.current().sha256 => ReloadOutcome::Unchanged,
            Ok(loaded) => {
                let sha256 = loaded.sha256.clone();
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
                self.generation.fetch_add(1, Ordering::Release);
                ReloadOutcome::Reloaded { sha256 }
            }
            Err(e @ SlotError::PinMismatch { .. }) => ReloadOutcome::Refused(e),
            Err(e) => ReloadOutcome::Failed(e),
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

fn load(
    path: Option<&Path>,
    pin: Option<&str>,
    engine_opts: &EngineOptions,
    decide: DecideOptions,
) -> Result<Loaded, SlotError> {
    let (model, sha256) = match path {
        Some(path) => {
            let bytes =
                std::fs::read(path).map_err(|source| SlotError::Read { path: path.into(), source })?;
            let sha256 = sha256_hex(&bytes);
            if let Some(pinned) = pin
                && pinned != sha256
            {
                return Err(SlotError::PinMismatch {
                    path: path.into(),
                    pinned: pinned.into(),
                    actual: sha256,
                });
            }
            (Model::from_file_bytes(bytes, path, &CardlessOptions::default())?, sha256)
        }
        None => (Model::embedded_default()?, sha256_hex(DEFAULT_MODEL_BYTES)),
    };
    let engine = engine::open(&model, engine_opts)?;
    // The trial run feeds a tensor; no image is decoded, so the limits do not matter here.
    let mut classifier = Classifier::new(&model, engine, decide, ImageLimits::default())?;
    let inputs = &model.card.inputs;
    let zeros: Vec<Vec<f32>> = inputs.iter().map(|i| vec![0.0; i.tensor_len()]).collect();
    let values: Vec<InputValue> = (inputs.iter().zip(&zeros))
        .map(|(input, data)| InputValue::Tensor { shape: &input.shape, data })
        .collect();
    classifier.classify(&values)?;
    Ok(Loaded { model, sha256 })
}
