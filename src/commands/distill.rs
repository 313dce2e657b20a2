//! `edge-kd distill`: train (or load) the teacher, distill, calibrate and export the
//! student with its card — in Python — then prove it in every engine on this box.

use std::io::{BufRead, BufReader, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use anyhow::anyhow;
use edge_kd::distill::{self, Device, Event, Job, Summary};
use edge_kd::engine;
use edge_kd::model::{CardlessOptions, Model};
use edge_kd::parity::{self, References};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{Failure, exit};

/// Conventional exit status of a process stopped by SIGINT.
const INTERRUPTED: u8 = 130;

/// Distill a teacher into a calibrated ONNX student and check it in every engine
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    edge-kd distill --config training/configs/fashion-kd.toml --device cuda\n  \
    edge-kd distill --config training/configs/fashion-kd.toml --out runs/kd-seed1 --set run.seed=1\n  \
    edge-kd distill --config training/configs/fashion-kd.toml --out runs/kd-seed1 --resume\n\n\
    The training runs in Python (package training/, `pip install -e training/`); edge-kd finds the\n\
    interpreter via --python, EDGE_KD_PYTHON, the active virtual environment, ./.venv or python3.\n\
    Ctrl-C stops cleanly after saving a checkpoint; --resume continues from it.\n\
    Writes OUT/student.onnx (card inside), OUT/reference/, reliability.png, risk_coverage.png,\n\
    summary.json and config.resolved.toml.")]
pub struct Args {
    /// Experiment config (TOML).
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// Where to train [default: the config's, else auto: cuda when available].
    #[arg(long)]
    device: Option<Device>,
    /// Output folder [default: runs/<config name>].
    #[arg(short, long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue an interrupted run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Override a config value, e.g. --set student.epochs=5 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Python interpreter with PyTorch and edgekd_train.
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
    /// ONNX Runtime shared library for the parity check.
    #[arg(long, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<u8, Failure> {
    if !args.config.is_file() {
        return Err(Failure::usage(anyhow!("{}: no such config file", args.config.display())));
    }
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args.config.file_stem().map_or("run".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from("runs").join(stem)
    });
    if !args.resume && out.join("checkpoints").exists() {
        return Err(Failure::usage(anyhow!(
            "{}: holds an earlier run; pass --resume to continue it, or choose another --out",
            out.display()
        )));
    }
    let env = distill::find_python(args.python.as_deref()).map_err(Failure::usage)?;
    eprintln!(
        "edge-kd: training with {} (Python {}, PyTorch {}{})",
        env.python.display(),
        env.version,
        env.torch,
        if env.cuda { ", CUDA available" } else { "" }
    );
    let job = Job {
        config: args.config.clone(),
        out: out.clone(),
        device: args.device,
        resume: args.resume,
        overrides: args.overrides.clone(),
    };
    let mut child = distill::spawn(&env, &job).map_err(Failure::usage)?;

    let child_pid = Arc::new(AtomicI32::new(child.id() as i32));
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let (pid, flag) = (Arc::clone(&child_pid), Arc::clone(&interrupted));
        // Failing to install the handler only loses the clean stop, not the run.
        let _ = ctrlc::set_handler(move || {
            if !flag.swap(true, Ordering::SeqCst) {
                // SAFETY: kill(2) with a pid we spawned; no memory is touched.
                unsafe { libc::kill(pid.load(Ordering::SeqCst), libc::SIGINT) };
            }
        });
    }

    let mut progress = Progress::new();
    let mut summary: Option<Summary> = None;
    let mut trainer_error: Option<(String, String)> = None;
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        match distill::parse_event(&line) {
            Some(Event::Summary(s)) => summary = Some(*s),
            Some(Event::Error { kind, message }) => trainer_error = Some((kind, message)),
            Some(event) => progress.show(&event),
            None if !line.trim().is_empty() => progress.note(&format!("trainer: {line}")),
            None => {}
        }
    }
    let status = child.wait().map_err(|e| Failure::usage(anyhow!("waiting for the trainer: {e}")))?;
    progress.finish();

    if interrupted.load(Ordering::SeqCst) || status.code() == Some(i32::from(INTERRUPTED)) {
        eprintln!(
            "edge-kd: interrupted; continue with: edge-kd distill --config {} --out {} --resume",
            args.config.display(),
            out.display()
        );
        return Ok(INTERRUPTED);
    }
    if let Some((kind, message)) = trainer_error {
        let failure = anyhow!("{message}");
        return Err(if kind == "config" || kind == "data" {
            Failure::usage(failure)
        } else {
            Failure { code: 1, error: failure }
        });
    }
    if !status.success() {
        return Err(Failure {
            code: 1,
            error: anyhow!("the trainer exited with {status} (its messages are above)"),
        });
    }
    let summary = summary
        .ok_or_else(|| Failure { code: 1, error: anyhow!("the trainer finished without a summary event") })?;
    let parity_ok = report(&summary, &out, args.ort_lib.as_deref())?;
    Ok(if parity_ok { exit::OK } else { exit::MODEL })
}

/// Prints what was made and checks the exported student in every engine.
fn report(s: &Summary, out: &std::path::Path, ort_lib: Option<&std::path::Path>) -> Result<bool, Failure> {
    let model = Model::open(&s.onnx, &CardlessOptions::default()).map_err(Failure::model)?;
    let samples = References::samples_in(&s.reference_dir, &model).map_err(Failure::model)?;
    let references = References::load(&samples, &model).map_err(Failure::model)?;
    let pct = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{:.2} %", 100.0 * v));
    let params = |p: Option<u64>| p.map_or("?".to_string(), |p| format!("{:.1}k", p as f64 / 1e3));
    println!("distilled {} ({} bytes)", s.onnx.display(), s.onnx_bytes.unwrap_or(0));
    if let Some(t) = &s.teacher {
        println!(
            "  teacher      {}, {} params, test accuracy {}",
            t.model,
            params(t.params),
            pct(t.test_accuracy)
        );
    }
    println!(
        "  student      {}, {} params, test accuracy {} (method {})",
        s.student.model,
        params(s.student.params),
        pct(s.student.test_accuracy),
        s.method
    );
    println!(
        "  calibration  temperature {}; ECE {} before, {} after",
        s.temperature.map_or("n/a".into(), |t| format!("{t:.3}")),
        s.ece_before.map_or("n/a".into(), |v| format!("{v:.4}")),
        s.ece_after.map_or("n/a".into(), |v| format!("{v:.4}"))
    );
    println!(
        "  thresholds   coverage {} at ≤ {} error among accepted (calibration split; achieved {})",
        pct(s.coverage),
        pct(s.target),
        pct(s.error_among_accepted)
    );
    if let Some(m) = &s.crld_masks {
        println!(
            "  crld gates   within-view KL on {:.0} % of samples (weak-view teacher confidence ≥ {}, mean {:.2}), \
             cross-view on {:.0} % (strong-view ≥ {}, mean {:.2}); last epoch",
            100.0 * m.mask_weak,
            m.tau_w,
            m.teacher_conf_weak,
            100.0 * m.mask_strong,
            m.tau_s,
            m.teacher_conf_strong
        );
    }
    for note in &s.notes {
        println!("  note         {note}");
    }
    if let Some(speed) = s.images_per_s {
        println!("  speed        {speed:.0} images/s (student training, last epoch)");
    }
    let mut all_ok = true;
    let mut results = Vec::new();
    let selection = engine::select(&[], ort_lib);
    for kind in selection.engines {
        match references.max_abs_diff(&model, kind, ort_lib) {
            Ok(diff) => {
                let ok = diff <= parity::tolerance();
                all_ok &= ok;
                results.push(format!("{kind} {diff:.1e} {}", if ok { "ok" } else { "FAIL" }));
            }
            Err(e) => {
                all_ok = false;
                results.push(format!("{kind} FAIL ({e})"));
            }
        }
    }
    if selection.ort_not_found {
        results.push("ort not checked (library not found; `edge-kd doctor`)".into());
    }
    println!(
        "  parity       {} (max abs diff vs PyTorch over {} inputs, tolerance {:.0e})",
        results.join(", "),
        references.len(),
        parity::tolerance()
    );
    println!("  files        {}", out.display());
    Ok(all_ok)
}

/// Progress bars from the trainer's events: one for epochs, one for steps.
struct Progress {
    multi: MultiProgress,
    epochs: ProgressBar,
    steps: ProgressBar,
    terminal: bool,
}

impl Progress {
    fn new() -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = |template: &str| {
            ProgressStyle::with_template(template).expect("valid template").progress_chars("=> ")
        };
        let epochs = multi.add(ProgressBar::new(0));
        epochs.set_style(style("{prefix:>8} epoch {pos}/{len} [{bar:30}] {msg}"));
        let steps = multi.add(ProgressBar::new(0));
        steps.set_style(style("{prefix:>8} step  {pos}/{len} [{bar:30}] loss {msg} ({elapsed})"));
        Progress { multi, epochs, steps, terminal }
    }

    fn note(&self, line: &str) {
        if self.terminal {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    fn show(&mut self, event: &Event) {
        match event {
            Event::Start { out, device, world_size } => {
                self.note(&format!("edge-kd: run {out} on {device} ({world_size} process(es))"))
            }
            Event::Phase { phase, epochs, skipped } => {
                if let Some(why) = skipped {
                    self.note(&format!("{phase}: skipped ({why})"));
                } else {
                    self.note(&format!("{phase}…"));
                }
                self.epochs.set_prefix(phase.clone());
                self.steps.set_prefix(phase.clone());
                self.epochs.set_length(u64::from(epochs.unwrap_or(0)));
                self.epochs.set_position(0);
            }
            Event::Step { epoch, of, step, steps, loss, .. } => {
                self.epochs.set_length(u64::from(*of));
                self.epochs.set_position(u64::from(epoch.saturating_sub(1)));
                self.steps.set_length(*steps);
                self.steps.set_position(*step);
                self.steps.set_message(format!("{loss:.4}"));
            }
            Event::Epoch { phase, epoch, of, loss, train_accuracy, test_accuracy, images_per_s } => {
                self.epochs.set_length(u64::from(*of));
                self.epochs.set_position(u64::from(*epoch));
                let pct = |v: &Option<f64>| v.map_or("n/a".to_string(), |v| format!("{:.2} %", 100.0 * v));
                let line = format!(
                    "{phase} epoch {epoch}/{of}: loss {loss:.4}, train {}, test {}, {} images/s",
                    pct(train_accuracy),
                    pct(test_accuracy),
                    images_per_s.map_or("?".into(), |v| format!("{v:.0}"))
                );
                self.epochs.set_message(format!("test {}", pct(test_accuracy)));
                self.note(&line);
            }
            Event::Checkpoint { phase, path } => tracing::info!("{phase}: checkpoint {path}"),
            Event::Interrupted { phase, checkpoint } => self.note(&format!(
                "{phase}: interrupted{}",
                checkpoint.as_ref().map_or(String::new(), |c| format!(", checkpoint {c}"))
            )),
            Event::Summary(_) | Event::Error { .. } | Event::Other => {}
        }
    }

    fn finish(&self) {
        self.steps.finish_and_clear();
        self.epochs.finish_and_clear();
    }
}
