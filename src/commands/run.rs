//! `edge-kd run`: classify images, folders and tensors, one line per input; for a model with
//! several inputs, one line per sample (files given per input, paired by stem, or a manifest).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use edge_kd::card::Card;
use edge_kd::classify::{Classifier, DecideOptions, InputValue, Outcome};
use edge_kd::decide::Verdict;
use edge_kd::engine::{self, EngineKind, EngineOptions};
use edge_kd::preprocess::decode::ImageLimits;
use edge_kd::record::{FileResult, Presence, ResultBody, SampleFields};
use edge_kd::source::{self, InputItem, InputKind, Sample, SampleInput, manifest, pairing};

use super::ModelArgs;
use crate::{Failure, exit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line for programs.
    Jsonl,
}

/// Classify images (PNG, JPEG, BMP), folders of them, or .npy tensors
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    edge-kd run models/samples/\n  \
    edge-kd run --model student.onnx --engine ort line3/*.jpg\n  \
    edge-kd run --format jsonl frames/ > results.jsonl\n  \
    edge-kd run --model plain.onnx --color rgb --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 img.png\n  \
    edge-kd run --max-pixels 50000000 --max-decode-bytes 600000000 big-scans/\n  \
    edge-kd run --model two_input.onnx --input image=cam.png --input depth=depth.png\n  \
    edge-kd run --model two_input.onnx --input image=frames/ --input depth=depths/\n  \
    edge-kd run --model two_input.onnx --manifest set/samples.csv\n  \
    edge-kd run --model rgb_height.onnx --input rgb=cam.png        (height optional: missing)\n\n\
    A .npy input (float32, the model's input shape) is fed to the model without preprocessing.\n\
    JSONL keys: file, label, class_index, confidence, threshold, verdict, top, latency_us, engine;\n\
    a failed input is {\"file\", \"error\"}. A sample of a model with several inputs adds\n\
    files, modalities, subset (the inputs it had: rgb+height) and expected (a manifest's\n\
    label); its file is the sample's id. An optional input may be missing (left out of --input,\n\
    no partner in its folder, an empty manifest cell): the card's missing_modality fills it and\n\
    the calibration of the inputs present decides (none: review, with a reason).")]
pub struct Args {
    /// Image files, folders (walked recursively) or .npy tensors, for a model with one input.
    #[arg(value_name = "INPUT", required_unless_present_any = ["input", "manifest"], conflicts_with_all = ["input", "manifest"])]
    inputs: Vec<PathBuf>,
    /// One per card input of a model with several (an optional one may be left out): every PATH
    /// a file (one sample), or every PATH a folder (their files paired by stem: frames/a.png with
    /// depth/a.png).
    #[arg(long, value_name = "NAME=PATH", value_parser = named_path, conflicts_with = "manifest")]
    input: Vec<(String, PathBuf)>,
    /// Samples of a model with several inputs: a CSV with header id,label,<input>..., one row
    /// per sample, paths relative to the manifest's folder (the trainer's manifest format).
    #[arg(long, value_name = "FILE.csv")]
    manifest: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// Inference engine.
    #[arg(short, long, default_value_t = EngineKind::DEFAULT)]
    engine: EngineKind,
    /// Output format [default: table on a terminal, jsonl when piped].
    #[arg(short, long)]
    format: Option<Format>,
    /// Intra-op threads for the engine.
    #[arg(short, long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    /// How many of the most probable classes to list.
    #[arg(short = 'k', long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    top_k: u16,
    /// Accept when the calibrated confidence is at least P, for every class
    /// (replaces the card's thresholds).
    #[arg(long, value_name = "P", value_parser = probability)]
    threshold: Option<f32>,
    #[command(flatten)]
    limits: LimitArgs,
}

/// What one input image may cost; an image over a limit is one error line naming it.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Input limits")]
pub struct LimitArgs {
    /// Widest or tallest image accepted, in pixels.
    #[arg(long, value_name = "PX", default_value_t = ImageLimits::default().max_width, value_parser = clap::value_parser!(u32).range(1..))]
    max_dimension: u32,
    /// Most pixels (width × height) an image may have.
    #[arg(long, value_name = "N", default_value_t = ImageLimits::default().max_pixels, value_parser = clap::value_parser!(u64).range(1..))]
    max_pixels: u64,
    /// Largest image file read, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = ImageLimits::default().max_file_bytes, value_parser = clap::value_parser!(u64).range(1..))]
    max_file_bytes: u64,
    /// Most memory decoding one image may take, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = ImageLimits::default().max_decode_bytes, value_parser = clap::value_parser!(u64).range(1..))]
    max_decode_bytes: u64,
}

impl LimitArgs {
    fn limits(&self) -> ImageLimits {
        ImageLimits {
            max_width: self.max_dimension,
            max_height: self.max_dimension,
            max_pixels: self.max_pixels,
            max_file_bytes: self.max_file_bytes,
            max_decode_bytes: self.max_decode_bytes,
        }
    }
}

fn named_path(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name.to_string(), path.into())),
        _ => Err(format!("{s:?} is not NAME=PATH (e.g. depth=frames/depth/)")),
    }
}

fn probability(s: &str) -> Result<f32, String> {
    let p: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&p) { Ok(p) } else { Err(format!("{p} is not in [0, 1]")) }
}

pub fn run(args: Args) -> Result<u8, Failure> {
    let model = args.model.load()?;
    let opts = EngineOptions {
        kind: args.engine,
        threads: usize::from(args.threads),
        ort_library: args.model.ort_lib.clone(),
    };
    let engine = engine::open(&model, &opts).map_err(Failure::model)?;
    let decide = DecideOptions { top_k: usize::from(args.top_k), threshold: args.threshold };
    let jobs = jobs(&args, &model.card, model.origin())?;
    let mut classifier =
        Classifier::new(&model, engine, decide, args.limits.limits()).map_err(Failure::model)?;
    if model.card.calibration.is_none() && args.threshold.is_none() {
        tracing::warn!(
            "{}: no calibrated thresholds, so every verdict is review; --threshold P sets one",
            model.origin()
        );
    }

    let format =
        args.format.unwrap_or(if std::io::stdout().is_terminal() { Format::Table } else { Format::Jsonl });
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printer = Printer::new(format, &jobs, &model.card);
    printer.header(&mut out).map_err(write_failed)?;

    let mut summary = Summary::default();
    for job in &jobs {
        let result = match &job.files {
            Err(message) => Err(message.clone()),
            Ok(files) => {
                let values: Vec<InputValue> = files
                    .iter()
                    .map(|file| match file {
                        None => InputValue::Absent,
                        Some((path, InputKind::Image)) => InputValue::ImageFile(path),
                        Some((path, InputKind::Tensor)) => InputValue::TensorFile(path),
                    })
                    .collect();
                classifier.classify_timed(&values).map_err(|e| e.to_string())
            }
        };
        let mut sample = job.sample.clone();
        let body = match result {
            Ok(outcome) => {
                summary.add(&outcome);
                if let Some(fields) = &mut sample {
                    let present = outcome.decision.present.names(&model.card);
                    fields.subset = Some(model.card.subset_name(&present));
                }
                ResultBody::decided(&outcome, classifier.labels(), classifier.engine_kind().as_str())
            }
            Err(error) => {
                summary.failed += 1;
                ResultBody::Failed { error }
            }
        };
        let line = FileResult { file: &job.file, sample: sample.as_ref(), body: &body };
        printer.result(&mut out, &line).map_err(write_failed)?;
        // A daemon or pipe reading us sees each result as it is made.
        out.flush().map_err(write_failed)?;
    }
    drop(out);
    eprintln!("{}", summary.line(classifier.engine_kind(), usize::from(args.threads)));
    Ok(if summary.failed > 0 { exit::SOME_INPUTS_FAILED } else { exit::OK })
}

/// One line of output: what it classifies, and how the line names it.
struct Job {
    file: String,
    sample: Option<SampleFields>,
    /// One file per input a frame gives a value for, in the card's order (`None`: a missing
    /// optional input), or why the line is an error.
    files: Result<Vec<Option<(PathBuf, InputKind)>>, String>,
}

impl Job {
    fn of_item(item: InputItem) -> Job {
        let files = item.kind.map(|kind| vec![Some((item.path.clone(), kind))]);
        Job { file: item.path.display().to_string(), sample: None, files }
    }

    fn of_sample(sample: Sample, inputs: &[SampleInput]) -> Job {
        let optional = |name: &str| inputs.iter().any(|i| i.name == name && i.optional);
        let required: Vec<&str> = sample.missing().into_iter().filter(|name| !optional(name)).collect();
        let files = if let Some((input, path, error)) = sample.members.iter().find_map(|m| {
            let item = m.item.as_ref()?;
            item.kind.as_ref().err().map(|e| (&m.input, &item.path, e))
        }) {
            Err(format!("input {input:?}: {}: {error}", path.display()))
        } else if !required.is_empty() {
            Err(format!(
                "no file for input {} in this sample, and the card does not make it optional",
                required.join(", ")
            ))
        } else {
            Ok(sample
                .members
                .iter()
                .map(|m| {
                    let item = m.item.as_ref()?;
                    item.kind.as_ref().ok().map(|&kind| (item.path.clone(), kind))
                })
                .collect())
        };
        Job { sample: Some(SampleFields::of(&sample)), file: sample.id, files }
    }
}

/// The lines to produce: one per positional input for a one-input model, one per sample when
/// inputs are named (`--input`, `--manifest`). A wrong form is refused before any line.
fn jobs(args: &Args, card: &Card, origin: &str) -> Result<Vec<Job>, Failure> {
    let inputs: Vec<SampleInput> =
        card.value_inputs().map(|i| SampleInput { name: i.name.clone(), optional: i.optional }).collect();
    let names: Vec<String> = inputs.iter().map(|i| i.name.clone()).collect();
    let samples = if let Some(path) = &args.manifest {
        manifest::read(path, &names).map_err(Failure::usage)?
    } else if !args.input.is_empty() {
        pairing::pair(&inputs, &args.input).map_err(Failure::usage)?
    } else if names.len() > 1 {
        let example: Vec<String> = names.iter().map(|n| format!("--input {n}=PATH")).collect();
        return Err(Failure::usage(anyhow::anyhow!(
            "{origin}: the model has {} inputs ({}), so INPUT cannot say which is which; give each its \
             file or folder with {} or list the samples in --manifest FILE.csv",
            names.len(),
            names.join(", "),
            example.join(" ")
        )));
    } else {
        return Ok(source::expand(&args.inputs).into_iter().map(Job::of_item).collect());
    };
    Ok(samples.into_iter().map(|sample| Job::of_sample(sample, &inputs)).collect())
}

fn write_failed(e: std::io::Error) -> Failure {
    Failure { code: exit::USAGE, error: anyhow::Error::new(e).context("writing results to stdout") }
}

#[derive(Default)]
struct Summary {
    accepted: usize,
    review: usize,
    failed: usize,
    latencies: Vec<Duration>,
}

impl Summary {
    fn add(&mut self, outcome: &Outcome) {
        match outcome.decision.verdict {
            Verdict::Accept => self.accepted += 1,
            Verdict::Review => self.review += 1,
        }
        self.latencies.push(outcome.latency);
    }

    fn line(&mut self, engine: EngineKind, threads: usize) -> String {
        let total = self.accepted + self.review + self.failed;
        let mut line = format!(
            "{total} input{}: {} accept, {} review, {} failed ({engine}, {threads} thread{}",
            if total == 1 { "" } else { "s" },
            self.accepted,
            self.review,
            self.failed,
            if threads == 1 { "" } else { "s" }
        );
        if !self.latencies.is_empty() {
            self.latencies.sort_unstable();
            let p50 = self.latencies[self.latencies.len() / 2];
            line.push_str(&format!(", median latency {:.2} ms", p50.as_secs_f64() * 1e3));
        }
        line.push(')');
        line
    }
}

struct Printer {
    format: Format,
    file_width: usize,
    /// The width of the INPUTS column: only for a model with several inputs.
    inputs_width: Option<usize>,
    label_width: usize,
    colour: bool,
}

impl Printer {
    fn new(format: Format, jobs: &[Job], card: &Card) -> Printer {
        let file_width = jobs.iter().map(|j| j.file.chars().count()).max().unwrap_or(4).clamp(4, 48);
        let every: Vec<&str> = card.inputs.iter().map(|i| i.name.as_str()).collect();
        let inputs_width = jobs
            .iter()
            .any(|j| j.sample.is_some())
            .then(|| card.subset_name(&every).chars().count().clamp(6, 32));
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Printer { format, file_width, inputs_width, label_width: 12, colour }
    }

    /// The INPUTS cell: the subset that decided, or for an error line the inputs it has files for.
    fn inputs_cell(&self, r: &FileResult) -> String {
        let Some(width) = self.inputs_width else { return String::new() };
        let shown = r.sample.map_or(String::new(), |s| {
            s.subset.clone().unwrap_or_else(|| {
                let present = s.modalities.0.iter().filter(|(_, p)| *p == Presence::Present);
                present.map(|(name, _)| name.as_str()).collect::<Vec<_>>().join("+")
            })
        });
        format!("{:<width$}  ", fit(&shown, width))
    }

    fn header(&self, out: &mut impl Write) -> std::io::Result<()> {
        if self.format == Format::Table {
            let inputs = self.inputs_width.map_or(String::new(), |width| format!("{:<width$}  ", "INPUTS"));
            writeln!(
                out,
                "{:<fw$}  {inputs}{:<lw$}  {:>6}  {:>6}  {:<7}  {:>9}  TOP",
                "FILE",
                "LABEL",
                "CONF",
                "THRESH",
                "VERDICT",
                "LATENCY",
                fw = self.file_width,
                lw = self.label_width
            )?;
        }
        Ok(())
    }

    fn result(&mut self, out: &mut impl Write, r: &FileResult) -> std::io::Result<()> {
        if self.format == Format::Jsonl {
            return writeln!(out, "{}", serde_json::to_string(r).expect("results serialise"));
        }
        let file = fit(r.file, self.file_width);
        let fw = self.file_width;
        let inputs = self.inputs_cell(r);
        match r.body {
            ResultBody::Failed { error } => writeln!(out, "{file:<fw$}  {inputs}error: {error}"),
            ResultBody::Decided {
                label, confidence, threshold, verdict, reason, top, latency_us, ..
            } => {
                let shown = format!("{:<7}", verdict.as_str());
                let shown = if self.colour {
                    let code = if *verdict == Verdict::Accept { "32" } else { "33" };
                    format!("\x1b[{code}m{shown}\x1b[0m")
                } else {
                    shown
                };
                let top: Vec<String> = top.iter().map(|t| format!("{} {:.2}", t.label, t.p)).collect();
                let why = if reason.is_some() { "  (no calibration for these inputs)" } else { "" };
                writeln!(
                    out,
                    "{file:<fw$}  {inputs}{:<lw$}  {:>6.3}  {:>6}  {}  {:>6.2} ms  {}{why}",
                    label,
                    confidence,
                    threshold.map_or("none".to_string(), |t| format!("{t:.3}")),
                    shown,
                    *latency_us as f64 / 1e3,
                    top.join(", "),
                    lw = self.label_width
                )
            }
        }
    }
}

/// Shortens a path from the left so that its end (the file name) stays readable.
fn fit(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_string();
    }
    let tail: String = s.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}
