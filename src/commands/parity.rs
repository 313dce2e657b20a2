//! `edge-kd parity`: proves that every engine answers like the reference (PyTorch or
//! onnxruntime) on stored input/output tensors.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use edge_kd::engine::{self, EngineKind, EngineOptions};
use edge_kd::npy;

use super::ModelArgs;
use crate::{Failure, exit};

/// Check that each engine reproduces reference outputs (max abs diff ≤ --tol)
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    edge-kd parity --model student.onnx runs/fashion/reference/\n  \
    edge-kd parity --model m.onnx --engine tract x.npy:expected.npy\n\n\
    A PAIR is INPUT.npy:OUTPUT.npy, or a folder holding input_N.npy and output_N.npy.\n\
    Exit code 0 when every engine is within tolerance, 3 otherwise.")]
pub struct Args {
    /// Reference pairs: IN.npy:OUT.npy or a folder of input_N.npy/output_N.npy.
    #[arg(required = true, value_name = "PAIR")]
    pairs: Vec<String>,
    #[command(flatten)]
    model: ModelArgs,
    /// Engines to check, comma-separated [default: tract, and ort when its library is found].
    #[arg(short, long, value_delimiter = ',')]
    engine: Vec<EngineKind>,
    /// Largest absolute difference allowed.
    #[arg(long, default_value_t = 1e-4)]
    tol: f32,
}

fn expand_pairs(specs: &[String]) -> Result<Vec<(PathBuf, PathBuf)>, Failure> {
    let mut pairs = Vec::new();
    for spec in specs {
        let path = Path::new(spec);
        if path.is_dir() {
            let mut found = 0;
            for i in 0.. {
                let (input, output) =
                    (path.join(format!("input_{i}.npy")), path.join(format!("output_{i}.npy")));
                if !input.is_file() {
                    break;
                }
                if !output.is_file() {
                    return Err(Failure::usage(anyhow!(
                        "{}: has {} but no {}",
                        path.display(),
                        input.display(),
                        output.display()
                    )));
                }
                pairs.push((input, output));
                found += 1;
            }
            if found == 0 {
                return Err(Failure::usage(anyhow!(
                    "{}: no input_0.npy/output_0.npy pairs in this folder",
                    path.display()
                )));
            }
        } else if let Some((a, b)) = spec.split_once(':') {
            pairs.push((PathBuf::from(a), PathBuf::from(b)));
        } else {
            return Err(Failure::usage(anyhow!("{spec}: expected INPUT.npy:OUTPUT.npy or a folder")));
        }
    }
    Ok(pairs)
}

pub fn run(args: Args) -> Result<u8, Failure> {
    let model = args.model.load()?;
    let pairs = expand_pairs(&args.pairs)?;
    let mut tensors = Vec::new();
    for (input, output) in &pairs {
        let read = |p: &Path| npy::read_f32(p).map_err(|e| Failure::usage(anyhow!("{}: {e}", p.display())));
        tensors.push((read(input)?, read(output)?));
    }
    let engines = if args.engine.is_empty() {
        let found = engine::available(args.model.ort_lib.as_deref());
        if !found.contains(&EngineKind::Ort) {
            println!("ort    skipped: ONNX Runtime library not found (`edge-kd doctor` says why)");
        }
        found
    } else {
        args.engine.clone()
    };
    let mut all_ok = true;
    for kind in engines {
        let opts = EngineOptions { kind, threads: 1, ort_library: args.model.ort_lib.clone() };
        let mut engine = engine::open(&model, &opts).map_err(Failure::model)?;
        let mut worst = 0.0f32;
        let mut out = Vec::new();
        for ((input, expected), (in_path, out_path)) in tensors.iter().zip(&pairs) {
            let want: usize = model.card.inputs[0].shape.iter().product();
            if input.data.len() != want {
                return Err(Failure::usage(anyhow!(
                    "{}: shape {:?} does not fit the model input {:?}",
                    in_path.display(),
                    input.shape,
                    model.card.inputs[0].shape
                )));
            }
            engine.run(&[&input.data], &mut out).map_err(Failure::model)?;
            if out.len() != expected.data.len() {
                return Err(Failure::model(anyhow!(
                    "{}: {} values, but {kind} computed {}",
                    out_path.display(),
                    expected.data.len(),
                    out.len()
                )));
            }
            let diff = out.iter().zip(&expected.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            worst = worst.max(if diff.is_nan() { f32::INFINITY } else { diff });
        }
        let ok = worst <= args.tol;
        all_ok &= ok;
        println!(
            "{:<6} {}  max abs diff {worst:.3e} over {} pair{} (tolerance {:.1e})",
            kind.as_str(),
            if ok { "ok  " } else { "FAIL" },
            pairs.len(),
            if pairs.len() == 1 { "" } else { "s" },
            args.tol
        );
    }
    Ok(if all_ok { exit::OK } else { exit::MODEL })
}
