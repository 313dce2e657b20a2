//! tract: pure Rust, always available. Every tract call in edge-kd lives in this file,
//! because tract's inner crates change between patch releases.

use std::io::Cursor;
use std::sync::Arc;

use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;

use super::{Engine, EngineError, EngineKind};
use crate::model::Model;

type Plan = TypedSimplePlan;

pub struct TractEngine {
    state: TypedSimpleState,
    shapes: Vec<Vec<usize>>,
    output_len: usize,
}

impl TractEngine {
    pub fn load(model: &Model, threads: usize) -> Result<TractEngine, EngineError> {
        let load_error = |e: TractError| EngineError::Load {
            engine: EngineKind::Tract,
            model: model.origin().to_string(),
            message: format!("{e:#}"),
        };
        let card = &model.card;
        let feeds = super::feeds(card);
        let mut graph =
            tract_onnx::onnx().model_for_read(&mut Cursor::new(model.bytes())).map_err(load_error)?;
        // By name: from here on the plan's inputs are these, in this order, whatever the graph's.
        let names: Vec<&str> = feeds.iter().map(|f| f.name.as_str()).collect();
        graph = graph.with_input_names(&names).map_err(load_error)?;
        graph = graph.with_outputs_by_name([card.output.as_str()]).map_err(load_error)?;
        for (ix, feed) in feeds.iter().enumerate() {
            graph = graph.with_input_fact(ix, f32::fact(feed.shape.as_slice()).into()).map_err(load_error)?;
        }
        let typed = graph.into_optimized().map_err(load_error)?;
        let output_len = typed
            .output_fact(0)
            .ok()
            .and_then(|f| f.shape.as_concrete().map(|s| s.iter().product()))
            .unwrap_or(0);
        let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
        let options = RunOptions { executor: Some(executor), ..Default::default() };
        let plan: Arc<Plan> = typed.into_runnable_with_options(&options).map_err(load_error)?;
        let state = plan.spawn().map_err(load_error)?;
        Ok(TractEngine { state, shapes: feeds.into_iter().map(|f| f.shape).collect(), output_len })
    }
}

impl Engine for TractEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Tract
    }

    fn output_len(&self) -> usize {
        self.output_len
    }

    fn run(&mut self, inputs: &[&[f32]], out: &mut Vec<f32>) -> Result<(), EngineError> {
        let run_error =
            |e: TractError| EngineError::Run { engine: EngineKind::Tract, message: format!("{e:#}") };
        let mut values = TVec::with_capacity(inputs.len());
        for (data, shape) in inputs.iter().zip(&self.shapes) {
            let tensor = Tensor::from_shape(shape, data).map_err(run_error)?;
            values.push(tensor.into_tvalue());
        }
        let outputs = self.state.run(values).map_err(run_error)?;
        let view = outputs[0].to_plain_array_view::<f32>().map_err(run_error)?;
        out.clear();
        out.extend(view.iter().copied());
        Ok(())
    }
}
