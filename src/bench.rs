//! Latency and throughput of a model on this box, per engine and thread count, for the
//! engine alone and for the whole chain around it (preprocess + engine + decide).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use crate::card::InputSpec;
use crate::classify::{self, Classifier, ClassifierError, DecideOptions, InputError};
use crate::engine::{self, EngineError, EngineKind, EngineOptions};
use crate::machine::{self, Machine};
use crate::model::Model;
use crate::preprocess::decode::{DecodeError, ImageFileDecoder, ImageLimits};
use crate::preprocess::{Frame, PixelFormat, Samples};

/// Why a benchmark, or one engine × threads configuration of it, could not run.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("{path}: {source}")]
    Frame { path: PathBuf, source: DecodeError },
    #[error("{path}: a 16-bit image; use an 8-bit image as the frame")]
    SixteenBitFrame { path: PathBuf },
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
    /// Image to use as the frame; a synthetic frame of the input's size otherwise.
    pub frame: Option<PathBuf>,
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
    pub input_shape: Vec<usize>,
    pub frame: String,
    pub iters: usize,
    pub warmup: usize,
    pub rows: Vec<BenchRow>,
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
    pixels: Vec<u8>,
    description: String,
}

impl BenchFrame {
    fn frame(&self) -> Frame<'_> {
        Frame {
            width: self.width,
            height: self.height,
            format: self.format,
            samples: Samples::U8(&self.pixels),
        }
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
                Samples::U8(s) => s.to_vec(),
                Samples::U16(_) => return Err(BenchError::SixteenBitFrame { path: path.clone() }),
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
            Ok(BenchFrame { width: w, height: h, format, pixels, description: format!("synthetic {w}x{h}") })
        }
    }
}

pub fn run(
    model: &Model,
    opts: &BenchOptions,
    progress: &mut dyn FnMut(BenchEvent),
) -> Result<BenchReport, BenchError> {
    // One frame per iteration: a model with several inputs is refused before any is measured.
    let input = classify::single_input(model)?;
    let frame = load_frame(input, opts.frame.as_ref())?;
    let configs: Vec<(EngineKind, usize)> =
        opts.engines.iter().flat_map(|&e| opts.threads.iter().map(move |&t| (e, t))).collect();
    let mut rows = Vec::new();
    for (index, &(kind, threads)) in configs.iter().enumerate() {
        progress(BenchEvent::Config { engine: kind, threads, index, of: configs.len() });
        rows.push(bench_one(model, opts, kind, threads, &frame, progress));
    }
    Ok(BenchReport {
        edge_kd_version: env!("CARGO_PKG_VERSION"),
        date: machine::utc_now(),
        machine: Machine::detect(),
        model: model.to_string(),
        input_shape: input.shape.clone(),
        frame: frame.description.clone(),
        iters: opts.iters,
        warmup: opts.warmup,
        rows,
    })
}

fn bench_one(
    model: &Model,
    opts: &BenchOptions,
    kind: EngineKind,
    threads: usize,
    frame: &BenchFrame,
    progress: &mut dyn FnMut(BenchEvent),
) -> BenchRow {
    let mut row = BenchRow {
        engine: kind,
        threads,
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
            row.error = Some(e.to_string());
            return row;
        }
    };
    row.load_ms = Some(load_start.elapsed().as_secs_f64() * 1e3);
    let frame = frame.frame();
    let total = opts.warmup + 2 * opts.iters;
    let mut done = 0;
    let mut step = |progress: &mut dyn FnMut(BenchEvent)| {
        done += 1;
        if done % 16 == 0 || done == total {
            progress(BenchEvent::Step { done, total });
        }
    };
    let result: Result<(), BenchError> = (|| {
        for _ in 0..opts.warmup {
            classifier.classify_frame(&frame)?;
            step(progress);
        }
        let mut engine_times = Vec::with_capacity(opts.iters);
        for _ in 0..opts.iters {
            let start = Instant::now();
            classifier.run_engine_on_last_input()?;
            engine_times.push(start.elapsed());
            step(progress);
        }
        let mut totals = Vec::with_capacity(opts.iters);
        let mut overheads = Vec::with_capacity(opts.iters);
        let mut engine_in_pipeline = Vec::with_capacity(opts.iters);
        for _ in 0..opts.iters {
            let start = Instant::now();
            let (_, stages) = classifier.classify_frame_timed(&frame)?;
            totals.push(start.elapsed());
            overheads.push(stages.preprocess + stages.decide);
            engine_in_pipeline.push(stages.engine);
            step(progress);
        }
        row.engine_only = Some(Stats::from_durations(&mut engine_times));
        row.pipeline = Some(Stats::from_durations(&mut totals));
        let overhead = Stats::from_durations(&mut overheads).p50_us;
        let engine_p50 = Stats::from_durations(&mut engine_in_pipeline).p50_us;
        row.overhead_p50_us = Some(overhead);
        row.overhead_pct = (engine_p50 > 0.0).then(|| 100.0 * overhead / engine_p50);
        Ok(())
    })();
    row.error = result.err().map(|e| e.to_string());
    if rss_reset {
        row.peak_rss_mib = machine::peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0));
    }
    row
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
        s.push_str(&format!(
            "model: {}, input {:?}; frame: {}; {} iterations after {} warm-up\n\n",
            self.model, self.input_shape, self.frame, self.iters, self.warmup
        ));
        s.push_str("| engine | threads | stage | p50 µs | p90 µs | p99 µs | max µs | frames/s | overhead p50 | peak RSS MiB |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            if let Some(e) = &r.error {
                s.push_str(&format!("| {} | {} | error: {} | | | | | | | |\n", r.engine, r.threads, e));
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
                    "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} |\n",
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
