//! `edge-kd parity`: proves that every engine answers like the reference (PyTorch or
//! onnxruntime) on stored input/output tensors.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use edge_kd::engine::{self, EngineKind};
use edge_kd::model::Model;
use edge_kd::parity::{self, ParityError, References, SampleFiles};

use super::ModelArgs;
use crate::{Failure, exit};

/// Check that each engine reproduces reference outputs (max abs diff ≤ --tol)
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    edge-kd parity --model student.onnx runs/fashion/reference/\n  \
    edge-kd parity --model m.onnx --engine tract x.npy:expected.npy\n  \
    edge-kd parity --model rgb_height.onnx runs/mm/reference/\n\n\
    A PAIR is INPUT.npy:OUTPUT.npy, or a folder holding input_N.npy and output_N.npy. A model fed\n\
    several tensors (several inputs, presence inputs) takes a folder of input_N.NAME.npy, one\n\
    per tensor (input_0.rgb.npy, input_0.height.npy, input_0.height_present.npy), and output_N.npy.\n\
    Exit code 0 when every engine is within tolerance, 3 otherwise.")]
pub struct Args {
    /// Reference pairs: IN.npy:OUT.npy or a folder of input_N.npy (input_N.NAME.npy)/output_N.npy.
    #[arg(required = true, value_name = "PAIR")]
    pairs: Vec<String>,
    #[command(flatten)]
    model: ModelArgs,
    /// Engines to check, comma-separated [default: tract, and ort when its library is found].
    #[arg(short, long, value_delimiter = ',')]
    engine: Vec<EngineKind>,
    /// Largest absolute difference allowed [default: docs/parity.toml's, shared with the exporter].
    #[arg(long, default_value_t = parity::tolerance())]
    tol: f32,
}

fn expand_pairs(specs: &[String], model: &Model) -> Result<Vec<SampleFiles>, Failure> {
    let mut samples = Vec::new();
    for spec in specs {
        let path = Path::new(spec);
        if path.is_dir() {
            samples.extend(References::samples_in(path, model).map_err(failure)?);
        } else if let Some((a, b)) = spec.split_once(':') {
            samples.push(SampleFiles::pair(model, PathBuf::from(a), PathBuf::from(b)).map_err(failure)?);
        } else {
            return Err(Failure::usage(anyhow!("{spec}: expected INPUT.npy:OUTPUT.npy or a folder")));
        }
    }
    Ok(samples)
}

pub fn run(args: Args) -> Result<u8, Failure> {
    let model = args.model.load()?;
    let samples = expand_pairs(&args.pairs, &model)?;
    let references = References::load(&samples, &model).map_err(failure)?;
    let selection = engine::select(&args.engine, args.model.ort_lib.as_deref());
    if selection.ort_not_found {
        println!("ort    skipped: ONNX Runtime library not found (`edge-kd doctor` says why)");
    }
    let mut all_ok = true;
    // A sample of a model fed several tensors is a set of files, not a pair.
    let unit = if engine::feeds(&model.card).len() == 1 { "pair" } else { "sample" };
    for kind in selection.engines {
        let worst = references.max_abs_diff(&model, kind, args.model.ort_lib.as_deref()).map_err(failure)?;
        let ok = worst <= args.tol;
        all_ok &= ok;
        println!(
            "{:<6} {}  max abs diff {worst:.3e} over {} {unit}{} (tolerance {:.1e})",
            kind.as_str(),
            if ok { "ok  " } else { "FAIL" },
            references.len(),
            if references.len() == 1 { "" } else { "s" },
            args.tol
        );
    }
    Ok(if all_ok { exit::OK } else { exit::MODEL })
}

/// A model or engine that cannot be used is a model problem; a bad reference file, usage.
fn failure(e: ParityError) -> Failure {
    match e {
        ParityError::Engine(_) => Failure::model(e),
        ParityError::Reference { .. } | ParityError::PairForSeveral { .. } => Failure::usage(e),
    }
}
