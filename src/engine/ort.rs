//! ONNX Runtime through the `ort` crate, with the shared library loaded at run time.

use std::path::Path;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use super::ort_library::{self, Located};
use super::{Engine, EngineError, EngineKind};
use crate::model::Model;

/// ONNX Runtime allows one environment per process, so it is made once and shared.
static RUNTIME: OnceLock<Result<(Environment, Located), String>> = OnceLock::new();

/// Loads the library (once per process) and reports where it came from.
pub fn runtime(configured: Option<&Path>) -> Result<&'static Located, String> {
    let runtime = RUNTIME.get_or_init(|| {
        let located = ort_library::locate(configured).map_err(|e| e.to_string())?;
        let builder = ort::init_from(&located.path)
            .map_err(|e| format!("ONNX Runtime library {} did not load: {e}", located.path.display()))?;
        let env =
            builder.with_name("edge-kd").build().map_err(|e| format!("ONNX Runtime environment: {e}"))?;
        Ok((env, located))
    });
    match runtime {
        Ok((_, located)) => Ok(located),
        Err(e) => Err(e.clone()),
    }
}

pub struct OrtEngine {
    session: Session,
    input_names: Vec<String>,
    shapes: Vec<Vec<i64>>,
    output: String,
    output_len: usize,
}

impl OrtEngine {
    pub fn load(model: &Model, threads: usize, library: Option<&Path>) -> Result<OrtEngine, EngineError> {
        runtime(library).map_err(EngineError::Unavailable)?;
        let Some(Ok((env, _))) = RUNTIME.get() else { unreachable!("runtime() succeeded") };
        let load_error = |message: String| EngineError::Load {
            engine: EngineKind::Ort,
            model: model.origin().to_string(),
            message,
        };
        // Session-builder errors carry the builder and are not Send: keep only the text.
        let session = Session::builder(env)
            .map_err(|e| load_error(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| load_error(e.to_string()))?
            .with_intra_threads(threads)
            .map_err(|e| load_error(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| load_error(e.to_string()))?
            .commit_from_memory(model.bytes())
            .map_err(|e| load_error(e.to_string()))?;
        let feeds = super::feeds(&model.card);
        let mut engine = OrtEngine {
            session,
            input_names: feeds.iter().map(|f| f.name.clone()).collect(),
            shapes: feeds.iter().map(|f| f.shape.iter().map(|&d| d as i64).collect()).collect(),
            output: model.card.output.clone(),
            output_len: 0,
        };
        // The output width may be symbolic in the graph: learn it from one zero frame.
        let zeros: Vec<Vec<f32>> = feeds.iter().map(|f| vec![0.0; f.shape.iter().product()]).collect();
        let views: Vec<&[f32]> = zeros.iter().map(Vec::as_slice).collect();
        let mut out = Vec::new();
        engine.run(&views, &mut out).map_err(|e| load_error(e.to_string()))?;
        engine.output_len = out.len();
        Ok(engine)
    }
}

impl Engine for OrtEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Ort
    }

    fn output_len(&self) -> usize {
        self.output_len
    }

    fn run(&mut self, inputs: &[&[f32]], out: &mut Vec<f32>) -> Result<(), EngineError> {
        let run_error = |e: ort::Error| EngineError::Run { engine: EngineKind::Ort, message: e.to_string() };
        let mut values = Vec::with_capacity(inputs.len());
        for ((data, shape), name) in inputs.iter().zip(&self.shapes).zip(&self.input_names) {
            let tensor = TensorRef::from_array_view((shape.as_slice(), *data)).map_err(run_error)?;
            values.push((name.as_str(), tensor));
        }
        let outputs = self.session.run(values).map_err(run_error)?;
        let (_, logits) = outputs[self.output.as_str()].try_extract_tensor::<f32>().map_err(run_error)?;
        out.clear();
        out.extend_from_slice(logits);
        Ok(())
    }
}
