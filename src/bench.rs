//! Latency and throughput of a model on this box, per engine and thread count, for the
//! engine alone and for the whole chain around it (preprocess + engine + decide); for a model
//! with optional inputs, also per set of inputs present.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use crate::card::{Card, InputSpec};
use crate::classify::{Classifier, ClassifierError, DecideOptions, InputError, InputValue};
use crate::engine::{self, EngineError, EngineKind, EngineOptions};
use crate::machine::{self, Machine};
use crate::model::Model;
use crate::preprocess::decode::{DecodeError, ImageFileDecoder, ImageLimits};
use crate::preprocess::{Frame, PixelFormat, Samples};
use crate::present::Present;

/// Why a benchmark, or one engine × threads configuration of it, could not run.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("{path}: {source}")]
    Frame { path: PathBuf, source: DecodeError },
    #[error("--input {name}=...: the model has no input {name:?}; its inputs are {names}")]
    UnknownInput { name: String, names: String },
    #[error("{0}")]
    Model(#[from] ClassifierError),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Input(#[from] InputError),
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub engines: Vec<EngineKind>,
    pub threads: Vec<usize>,
    pub iters: usize,
    pub warmup: usize,
    /// Images to use as frames, by input name; a synthetic frame of its size for an input
    /// without one.
    pub frames: Vec<(String, PathBuf)>,
    pub ort_library: Option<PathBuf>,
}

/// Latency distribution of one measured loop, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    /// Frames per second for one stream (1 / mean latency).
    pub throughput_fps: f64,
}

impl Stats {
    pub fn from_durations(samples: &mut [Duration]) -> Stats {
        samples.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            us(samples[i])
        };
        let mean = samples.iter().map(|&d| us(d)).sum::<f64>() / samples.len() as f64;
        Stats {
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            max_us: us(*samples.last().expect("at least one sample")),
            mean_us: mean,
            throughput_fps: if mean > 0.0 { 1e6 / mean } else { 0.0 },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub engine: EngineKind,
    pub threads: usize,
    /// The inputs present in the frames (`"rgb+height"`, `"rgb"`): only for a model with
    /// several inputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// The engine alone, on a ready tensor.
    pub engine_only: Option<Stats>,
    /// Preprocess + engine + decide, from a decoded frame.
    pub pipeline: Option<Stats>,
    /// Median of preprocess + decide per frame, in the pipeline loop.
    pub overhead_p50_us: Option<f64>,
    /// `overhead_p50_us` relative to the engine's median in the same loop.
    pub overhead_pct: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub load_ms: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub edge_kd_version: &'static str,
    pub date: String,
    pub machine: Machine,
    pub model: String,
    /// A one-input model's input and frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_shape: Option<Vec<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame: Option<String>,
    /// A model with several inputs: each input and its frame.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<BenchInput>,
    pub iters: usize,
    pub warmup: usize,
    pub rows: Vec<BenchRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchInput {
    pub name: String,
    pub shape: Vec<usize>,
    pub frame: String,
}

/// Progress of a benchmark, for a progress bar.
#[derive(Debug, Clone)]
pub enum BenchEvent {
    Config { engine: EngineKind, threads: usize, index: usize, of: usize },
    Step { done: usize, total: usize },
}

/// Owned pixels of the frame every pipeline iteration starts from.
struct BenchFrame {
    width: usize,
    height: usize,
    format: PixelFormat,
    pixels: Pixels,
    description: String,
}

enum Pixels {
    U8(Vec<u8>),
    /// A 16-bit image (a height map), kept at its depth as the decoder gives it.
    U16(Vec<u16>),
}

impl BenchFrame {
    fn frame(&self) -> Frame<'_> {
        let samples = match &self.pixels {
            Pixels::U8(p) => Samples::U8(p),
            Pixels::U16(p) => Samples::U16(p),
        };
        Frame { width: self.width, height: self.height, format: self.format, samples }
    }
}

fn load_frame(input: &InputSpec, path: Option<&PathBuf>) -> Result<BenchFrame, BenchError> {
    match path {
        Some(path) => {
            let mut decoder = ImageFileDecoder::new();
            let frame = decoder
                .decode_file(path)
                .map_err(|source| BenchError::Frame { path: path.clone(), source })?;
            let pixels = match frame.samples {
                Samples::U8(s) => Pixels::U8(s.to_vec()),
                Samples::U16(s) => Pixels::U16(s.to_vec()),
            };
            Ok(BenchFrame {
                width: frame.width,
                height: frame.height,
                format: frame.format,
                pixels,
                description: format!("{} ({}x{})", path.display(), frame.width, frame.height),
            })
        }
        None => {
            // A deterministic textured frame at the input's size and colour.
            let (w, h) = (input.width(), input.height());
            let format = if input.channels() == 1 { PixelFormat::Gray } else { PixelFormat::Rgb };
            let mut state = 0x2545_f491_u32;
            let pixels = (0..w * h * format.channels())
                .map(|i| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    ((i % 251) as u32 / 2 + (state & 0x7f)) as u8
                })
                .collect();
            Ok(BenchFrame {
                width: w,
                height: h,
                format,
                pixels: Pixels::U8(pixels),
                description: format!("synthetic {w}x{h}"),
            })
        }
    }
}

/// The sets of inputs measured: every input, then each set the card calibrates; a card with
/// optional inputs but no such set gets the set of its required inputs, so that the missing
/// path is measured too. Each set with its name, for a model with several inputs.
fn subsets(card: &Card) -> Vec<(Present, Option<String>)> {
    let all = Present::all(card.inputs.len());
    let mut sets = vec![all];
    let calibrated = card.calibration.iter().flat_map(|c| c.subsets.iter());
    sets.extend(calibrated.map(|s| Present::of_names(card, &s.present)));
    if sets.len() == 1 && card.value_inputs().any(|i| i.optional) {
        let required = card.inputs.iter().enumerate().filter(|(_, i)| !i.optional || card.is_mask(i));
        sets.push(required.fold(Present::default(), |set, (index, _)| set.with(index)));
    }
    let named = card.inputs.len() > 1;
    sets.into_iter().map(|set| (set, named.then(|| card.subset_name(&set.names(card))))).collect()
}

pub fn run(
    model: &Model,
    opts: &BenchOptions,
    progress: &mut dyn FnMut(BenchEvent),
) -> Result<BenchReport, BenchError> {
    let card = &model.card;
    let inputs: Vec<&InputSpec> = card.value_inputs().collect();
    if let Some((name, _)) = opts.frames.iter().find(|(name, _)| !inputs.iter().any(|i| &i.name == name)) {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(BenchError::UnknownInput { name: name.clone(), names: names.join(", ") });
    }
    let frames = inputs
        .iter()
        .map(|input| {
            let path = opts.frames.iter().find(|(name, _)| *name == input.name).map(|(_, p)| p);
            load_frame(input, path)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let subsets = subsets(card);
    let configs: Vec<(EngineKind, usize)> =
        opts.engines.iter().flat_map(|&e| opts.threads.iter().map(move |&t| (e, t))).collect();
    let mut rows = Vec::new();
    for (index, &(kind, threads)) in configs.iter().enumerate() {
        progress(BenchEvent::Config { engine: kind, threads, index, of: configs.len() });
        rows.extend(bench_one(model, opts, kind, threads, &frames, &subsets, progress));
    }
    let (input_shape, frame, inputs) = match (inputs.as_slice(), frames.as_slice()) {
        ([input], [frame]) if card.inputs.len() == 1 => {
            (Some(input.shape.clone()), Some(frame.description.clone()), Vec::new())
        }
        _ => {
            let inputs = inputs.iter().zip(&frames).map(|(input, frame)| BenchInput {
                name: input.name.clone(),
                shape: input.shape.clone(),
                frame: frame.description.clone(),
            });
            (None, None, inputs.collect())
        }
    };
    Ok(BenchReport {
        edge_kd_version: env!("CARGO_PKG_VERSION"),
        date: machine::utc_now(),
        machine: Machine::detect(),
        model: model.to_string(),
        input_shape,
        frame,
        inputs,
        iters: opts.iters,
        warmup: opts.warmup,
        rows,
    })
}

/// One engine × threads configuration: loaded once, then every set of inputs measured on it
/// (a row each, sharing the load time and peak RSS).
fn bench_one(
    model: &Model,
    opts: &BenchOptions,
    kind: EngineKind,
    threads: usize,
    frames: &[BenchFrame],
    subsets: &[(Present, Option<String>)],
    progress: &mut dyn FnMut(BenchEvent),
) -> Vec<BenchRow> {
    let row = |subset: &Option<String>| BenchRow {
        engine: kind,
        threads,
        subset: subset.clone(),
        engine_only: None,
        pipeline: None,
        overhead_p50_us: None,
        overhead_pct: None,
        peak_rss_mib: None,
        load_ms: None,
        error: None,
    };
    let rss_reset = machine::reset_peak_rss();
    let load_start = Instant::now();
    let engine_opts = EngineOptions { kind, threads, ort_library: opts.ort_library.clone() };
    let classifier = engine::open(model, &engine_opts)
        .map_err(BenchError::from)
        .and_then(|e| Ok(Classifier::new(model, e, DecideOptions::default(), ImageLimits::default())?));
    let mut classifier = match classifier {
        Ok(c) => c,
        Err(e) => {
            let failed =
                |(_, name): &(Present, Option<String>)| BenchRow { error: Some(e.to_string()), ..row(name) };
            return subsets.iter().map(failed).collect();
        }
    };
    let load_ms = load_start.elapsed().as_secs_f64() * 1e3;
    let frames: Vec<Frame> = frames.iter().map(BenchFrame::frame).collect();
    let value_indices: Vec<usize> = (0..model.card.inputs.len())
        .filter(|&index| !model.card.is_mask(&model.card.inputs[index]))
        .collect();
    let mut steps = Steps { done: 0, total: subsets.len() * (opts.warmup + 2 * opts.iters), progress };
    let mut rows = Vec::new();
    for (set, name) in subsets {
        let values: Vec<InputValue> = value_indices
            .iter()
            .zip(&frames)
            .map(
                |(&index, frame)| {
                    if set.contains(index) { InputValue::Frame(frame) } else { InputValue::Absent }
                },
            )
            .collect();
        let mut row = BenchRow { load_ms: Some(load_ms), ..row(name) };
        let result = measure(&mut classifier, &values, opts, &mut row, &mut steps);
        row.error = result.err().map(|e| e.to_string());
        rows.push(row);
    }
    if rss_reset {
        let peak = machine::peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0));
        rows.iter_mut().for_each(|r| r.peak_rss_mib = peak);
    }
    rows
}

/// Iterations done out of all of a configuration's, reported every 16.
struct Steps<'a> {
    done: usize,
    total: usize,
    progress: &'a mut dyn FnMut(BenchEvent),
}

impl Steps<'_> {
    fn step(&mut self) {
        self.done += 1;
        if self.done.is_multiple_of(16) || self.done == self.total {
            (self.progress)(BenchEvent::Step { done: self.done, total: self.total });
        }
    }
}

/// Warm-up, the engine alone, then the pipeline, on one frame's values.
fn measure(
    classifier: &mut Classifier,
    values: &[InputValue],
    opts: &BenchOptions,
    row: &mut BenchRow,
    steps: &mut Steps,
) -> Result<(), BenchError> {
    for _ in 0..opts.warmup {
        classifier.classify(values)?;
        steps.step();
    }
    // The engine-only loop reruns the tensors the last frame left, so it needs one.
    if opts.warmup == 0 {
        classifier.classify(values)?;
    }
    let mut engine_times = Vec::with_capacity(opts.iters);
    for _ in 0..opts.iters {
        let start = Instant::now();
        classifier.run_engine_on_last_input()?;
        engine_times.push(start.elapsed());
        steps.step();
    }
    let mut totals = Vec::with_capacity(opts.iters);
    let mut overheads = Vec::with_capacity(opts.iters);
    let mut engine_in_pipeline = Vec::with_capacity(opts.iters);
    for _ in 0..opts.iters {
        let start = Instant::now();
        let (_, stages) = classifier.classify(values)?;
        totals.push(start.elapsed());
        overheads.push(stages.preprocess + stages.decide);
        engine_in_pipeline.push(stages.engine);
        steps.step();
    }
    row.engine_only = Some(Stats::from_durations(&mut engine_times));
    row.pipeline = Some(Stats::from_durations(&mut totals));
    let overhead = Stats::from_durations(&mut overheads).p50_us;
    let engine_p50 = Stats::from_durations(&mut engine_in_pipeline).p50_us;
    row.overhead_p50_us = Some(overhead);
    row.overhead_pct = (engine_p50 > 0.0).then(|| 100.0 * overhead / engine_p50);
    Ok(())
}

impl BenchReport {
    /// A Markdown report: a header naming the box and the model, then one table row
    /// per engine and thread count.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        s.push_str(&format!(
            "edge-kd {} bench, {} — {} ({} {}, {} logical CPUs{})\n",
            self.edge_kd_version,
            self.date,
            m.cpu,
            m.os,
            m.arch,
            m.logical_cpus,
            m.memory_mib.map_or(String::new(), |mib| format!(", {mib} MiB"))
        ));
        let inputs = match (&self.input_shape, &self.frame) {
            (Some(shape), Some(frame)) => format!("input {shape:?}; frame: {frame}"),
            _ => {
                let each: Vec<String> =
                    self.inputs.iter().map(|i| format!("{} {:?} ({})", i.name, i.shape, i.frame)).collect();
                format!("inputs {}", each.join(", "))
            }
        };
        s.push_str(&format!(
            "model: {}, {inputs}; {} iterations after {} warm-up\n\n",
            self.model, self.iters, self.warmup
        ));
        // The inputs column only for a model with several inputs: one-input reports read as before.
        let by_subset = self.rows.iter().any(|r| r.subset.is_some());
        let (column, rule) = if by_subset { (" inputs |", "---|") } else { ("", "") };
        s.push_str(&format!(
            "| engine | threads |{column} stage | p50 µs | p90 µs | p99 µs | max µs | frames/s | overhead p50 | peak RSS MiB |\n"
        ));
        s.push_str(&format!("|---|---|{rule}---|---|---|---|---|---|---|---|\n"));
        for r in &self.rows {
            let inputs = r.subset.as_ref().map_or(String::new(), |subset| format!(" {subset} |"));
            if let Some(e) = &r.error {
                s.push_str(&format!(
                    "| {} | {} |{inputs} error: {} | | | | | | | |\n",
                    r.engine, r.threads, e
                ));
                continue;
            }
            let rss = r.peak_rss_mib.map_or("n/a".into(), |v| format!("{v:.1}"));
            for (stage, stats) in [("engine", &r.engine_only), ("pipeline", &r.pipeline)] {
                let Some(st) = stats else { continue };
                let overhead = match (stage, r.overhead_p50_us, r.overhead_pct) {
                    ("pipeline", Some(us), Some(pct)) => format!("{us:.1} µs ({pct:.1} %)"),
                    _ => String::new(),
                };
                s.push_str(&format!(
                    "| {} | {} |{inputs} {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} |\n",
                    r.engine,
                    r.threads,
                    stage,
                    st.p50_us,
                    st.p90_us,
                    st.p99_us,
                    st.max_us,
                    st.throughput_fps,
                    overhead,
                    rss
                ));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_sorted_samples() {
        let mut d: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let s = Stats::from_durations(&mut d);
        assert_eq!(
            (s.p50_us.round(), s.p90_us.round(), s.p99_us.round(), s.max_us),
            (51.0, 90.0, 99.0, 100.0)
        );
        assert!((s.mean_us - 50.5).abs() < 1e-9);
        assert!((s.throughput_fps - 1e6 / 50.5).abs() < 1e-6);
    }
}
