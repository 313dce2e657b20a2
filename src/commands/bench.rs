//! `edge-kd bench`: latency and throughput of a model on this box.

use std::path::PathBuf;

use anyhow::anyhow;
use edge_kd::bench::{self, BenchError, BenchEvent, BenchOptions};
use edge_kd::engine::{self, EngineKind};
use edge_kd::model::Model;
use indicatif::{ProgressBar, ProgressStyle};

use super::ModelArgs;
use crate::{Failure, exit};

/// Measure latency (p50/p90/p99/max), throughput and peak RSS per engine and thread count
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    edge-kd bench                                   the default student, every engine found\n  \
    edge-kd bench --model mobilenet.onnx --engine tract,ort --threads 1,2 --iters 500\n  \
    edge-kd bench --input frame.jpg --json > bench-$(hostname).json\n  \
    edge-kd bench --model rgb_height.onnx --input rgb=cam.png --input height=height.png\n\n\
    'engine' times the engine alone on a ready tensor; 'pipeline' times preprocess + engine +\n\
    decide from a decoded frame (file decoding excluded, as for camera frames). 'overhead' is\n\
    the median preprocess + decide time and its share of the engine's median in that loop.\n\
    A model with several inputs gets a frame per input (synthetic unless --input NAME=PATH names\n\
    one), and with optional inputs a row per set of inputs present: all, then each set the card\n\
    calibrates (or, if it calibrates none, the required inputs alone).\n\
    Only the binary and the model are needed; ONNX Runtime is used where its library is found.")]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Engines to measure, comma-separated [default: tract, and ort when its library is found].
    #[arg(short, long, value_delimiter = ',')]
    engine: Vec<EngineKind>,
    /// Thread counts to measure, comma-separated.
    #[arg(short, long, value_delimiter = ',', default_value = "1,2", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Vec<u16>,
    /// Timed iterations per stage.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    iters: u32,
    /// Untimed iterations before measuring.
    #[arg(long, default_value_t = 20)]
    warmup: u32,
    /// Image to use as the frame [default: a synthetic frame of the input's size]; for a model
    /// with several inputs NAME=PATH, once per input that should not be synthetic.
    #[arg(long, value_name = "IMAGE|NAME=PATH")]
    input: Vec<String>,
    /// Print the report as JSON instead of a Markdown table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<u8, Failure> {
    let model = args.model.load()?;
    let selection = engine::select(&args.engine, args.model.ort_lib.as_deref());
    if selection.ort_not_found {
        eprintln!("edge-kd: ONNX Runtime not found, measuring tract only (`edge-kd doctor` says why)");
    }
    let opts = BenchOptions {
        engines: selection.engines,
        threads: args.threads.iter().map(|&t| usize::from(t)).collect(),
        iters: args.iters as usize,
        warmup: args.warmup as usize,
        frames: frames(&model, &args.input)?,
        ort_library: args.model.ort_lib.clone(),
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let report = bench::run(&model, &opts, &mut |event| match event {
        BenchEvent::Config { engine, threads, index, of } => {
            bar.set_prefix(format!("{engine} ×{threads}"));
            bar.set_message(format!("({}/{of})", index + 1));
            bar.set_position(0);
        }
        BenchEvent::Step { done, total } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    })
    .map_err(|e| match e {
        BenchError::Frame { .. } | BenchError::UnknownInput { .. } => Failure::usage(e),
        _ => Failure::model(e),
    })?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("reports serialise"));
    } else {
        print!("{}", report.to_markdown());
    }
    let failed = report.rows.iter().filter(|r| r.error.is_some()).count();
    Ok(if failed == report.rows.len() {
        exit::MODEL
    } else if failed > 0 {
        exit::SOME_INPUTS_FAILED
    } else {
        exit::OK
    })
}

/// The `--input` values as (input name, path): a one-input model's one IMAGE, or a NAME=PATH per
/// named input of a model with several.
fn frames(model: &Model, given: &[String]) -> Result<Vec<(String, PathBuf)>, Failure> {
    let inputs: Vec<&str> = model.card.value_inputs().map(|i| i.name.as_str()).collect();
    if let [only] = inputs.as_slice() {
        return match given {
            [] => Ok(Vec::new()),
            [path] => Ok(vec![(only.to_string(), PathBuf::from(path))]),
            _ => Err(Failure::usage(anyhow!("the model has one input: give at most one --input IMAGE"))),
        };
    }
    let mut frames: Vec<(String, PathBuf)> = Vec::new();
    for value in given {
        let Some((name, path)) = value.split_once('=').filter(|(n, p)| !n.is_empty() && !p.is_empty()) else {
            return Err(Failure::usage(anyhow!(
                "--input {value:?}: the model has {} inputs ({}): give NAME=PATH",
                inputs.len(),
                inputs.join(", ")
            )));
        };
        if frames.iter().any(|(earlier, _)| earlier == name) {
            return Err(Failure::usage(anyhow!("--input {name}=...: given twice")));
        }
        frames.push((name.to_string(), PathBuf::from(path)));
    }
    Ok(frames)
}
