//! What this box can do: which engines run, where ONNX Runtime is (or why not),
//! cameras, and the Python side that `distill` needs. Checks only; printing is the
//! binary's job.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::classify::{Classifier, DecideOptions, InputValue};
use crate::distill;
use crate::engine::{self, EngineKind, EngineOptions, ort_library};
use crate::machine::Machine;
use crate::model::Model;
use crate::preprocess::decode::ImageLimits;
use crate::preprocess::{Frame, PixelFormat, Samples};

#[derive(Debug)]
pub struct EngineCheck {
    pub engine: EngineKind,
    /// `Ok(detail)` when the default student ran in it, `Err(why not)` otherwise.
    pub status: Result<String, String>,
}

#[derive(Debug)]
pub struct OrtCheck {
    pub built: bool,
    pub located: Result<ort_library::Located, String>,
}

#[derive(Debug)]
pub struct DoctorReport {
    pub machine: Machine,
    pub engines: Vec<EngineCheck>,
    pub ort: OrtCheck,
    pub cameras: Vec<PathBuf>,
    /// The Python environment `distill` would use, or what is missing and how to get it.
    pub python: Result<distill::PythonEnv, String>,
}

pub fn examine(ort_lib: Option<&Path>) -> DoctorReport {
    let located = ort_library::locate(ort_lib).map_err(|e| e.to_string());
    let engines = EngineKind::ALL
        .iter()
        .map(|&kind| EngineCheck { engine: kind, status: try_engine(kind, ort_lib) })
        .collect();
    DoctorReport {
        machine: Machine::detect(),
        engines,
        ort: OrtCheck { built: cfg!(feature = "ort"), located },
        cameras: crate::source::camera::list_devices(),
        python: distill::find_python(None).map_err(|e| e.to_string()),
    }
}

/// Loads the embedded default student in `kind` and classifies one frame.
fn try_engine(kind: EngineKind, ort_lib: Option<&Path>) -> Result<String, String> {
    let model = Model::embedded_default().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let engine =
        engine::open(&model, &EngineOptions { kind, threads: 1, ort_library: ort_lib.map(Path::to_owned) })
            .map_err(|e| e.to_string())?;
    let load = start.elapsed();
    let mut classifier = Classifier::new(&model, engine, DecideOptions::default(), ImageLimits::default())
        .map_err(|e| e.to_string())?;
    // A mid-grey frame of each input's size and colour.
    let inputs = &model.card.inputs;
    let pixels: Vec<Vec<u8>> =
        inputs.iter().map(|i| vec![128u8; i.width() * i.height() * i.channels()]).collect();
    let frames: Vec<Frame> = (inputs.iter().zip(&pixels))
        .map(|(i, p)| Frame {
            width: i.width(),
            height: i.height(),
            format: if i.channels() == 1 { PixelFormat::Gray } else { PixelFormat::Rgb },
            samples: Samples::U8(p),
        })
        .collect();
    let values: Vec<InputValue> = frames.iter().map(InputValue::Frame).collect();
    let start = Instant::now();
    classifier.classify(&values).map_err(|e| e.to_string())?;
    let detail = format!(
        "ran the default student (load {:.0} ms, first frame {:.2} ms)",
        load.as_secs_f64() * 1e3,
        start.elapsed().as_secs_f64() * 1e3
    );
    #[cfg(feature = "ort")]
    if kind == EngineKind::Ort
        && let Ok(located) = engine::ort::runtime(ort_lib)
    {
        let version =
            ort_library::version_from_name(&located.path).unwrap_or_else(|| "unknown version".into());
        return Ok(format!(
            "ONNX Runtime {version} from {} ({}); {detail}",
            located.path.display(),
            located.how
        ));
    }
    Ok(detail)
}
