//! `edge-kd distill` orchestration: finds the Python environment with PyTorch and the
//! `edgekd_train` package, starts the trainer, and reads its JSON-lines events. The
//! training itself is Python (`training/`); this module only drives and listens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde::Deserialize;
use thiserror::Error;

/// The oldest Python the training package runs on (training/pyproject.toml's
/// `requires-python`: it reads its configs with `tomllib`). Checked here, so an older
/// interpreter is named as the problem instead of being told to install the package.
pub const MIN_PYTHON: (u32, u32) = (3, 11);

#[derive(Debug, Error)]
pub enum DistillError {
    #[error(
        "no Python interpreter found (tried: {tried}); install Python {}.{} or later \
         (`apt-get install python3 python3-venv`) or pass --python PATH",
        MIN_PYTHON.0,
        MIN_PYTHON.1
    )]
    NoPython { tried: String },
    #[error("{python} is Python {version}; edge-kd distill needs {}.{} or later", MIN_PYTHON.0, MIN_PYTHON.1)]
    OldPython { python: String, version: String },
    #[error(
        "PyTorch is not installed for {python}: run `{python} -m pip install torch` \
         (then `{python} -m pip install -e training/` from the edge-kd checkout), or pass --python \
         for an environment that has both"
    )]
    NoTorch { python: String },
    #[error(
        "{python} has PyTorch {torch} but not edge-kd's training package: run \
         `{python} -m pip install -e training/` from the edge-kd checkout"
    )]
    NoTrainingPackage { python: String, torch: String },
    #[error("cannot start {python}: {source}")]
    Spawn { python: String, source: std::io::Error },
}

/// A Python interpreter that can run the trainer.
#[derive(Debug, Clone)]
pub struct PythonEnv {
    pub python: PathBuf,
    pub version: String,
    pub torch: String,
    pub cuda: bool,
}

#[derive(Debug, Deserialize)]
struct Probe {
    python: String,
    torch: Option<String>,
    edgekd_train: bool,
    #[serde(default)]
    cuda: bool,
}

const PROBE: &str = "import importlib.util as u, json, sys\n\
r = {'python': sys.version.split()[0], 'torch': None, 'cuda': False, \
'edgekd_train': u.find_spec('edgekd_train') is not None}\n\
try:\n    import torch\n    r['torch'] = torch.__version__\n    r['cuda'] = bool(torch.cuda.is_available())\n\
except Exception:\n    pass\n\
print(json.dumps(r))";

/// The interpreter to use: `explicit` (`--python`), `EDGE_KD_PYTHON`, the active virtual
/// environment, `./.venv`, then `python3`. The first that runs is checked, and a missing
/// piece is reported with the command that installs it.
pub fn find_python(explicit: Option<&Path>) -> Result<PythonEnv, DistillError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_owned());
    } else {
        if let Some(p) = std::env::var_os("EDGE_KD_PYTHON") {
            candidates.push(p.into());
        }
        if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
            candidates.push(Path::new(&venv).join("bin/python"));
        }
        candidates.push(PathBuf::from(".venv/bin/python"));
        candidates.push(PathBuf::from("python3"));
    }
    let mut tried = Vec::new();
    for python in &candidates {
        let Ok(output) = Command::new(python).args(["-c", PROBE]).stderr(Stdio::null()).output() else {
            tried.push(python.display().to_string());
            continue;
        };
        let shown = python.display().to_string();
        let text = String::from_utf8_lossy(&output.stdout);
        let Some(probe) = text.lines().last().and_then(|l| serde_json::from_str::<Probe>(l).ok()) else {
            tried.push(format!("{shown} (not a working Python 3)"));
            continue;
        };
        if major_minor(&probe.python) < MIN_PYTHON {
            return Err(DistillError::OldPython { python: shown, version: probe.python });
        }
        let Some(torch) = probe.torch else { return Err(DistillError::NoTorch { python: shown }) };
        if !probe.edgekd_train {
            return Err(DistillError::NoTrainingPackage { python: shown, torch });
        }
        return Ok(PythonEnv { python: python.clone(), version: probe.python, torch, cuda: probe.cuda });
    }
    Err(DistillError::NoPython { tried: tried.join(", ") })
}

/// `(3, 11)` from `3.11.4` or `3.11.0rc1`; `(0, 0)`, older than any floor, when unreadable.
fn major_minor(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| {
        let digits = p.find(|c: char| !c.is_ascii_digit()).map_or(p, |end| &p[..end]);
        digits.parse::<u32>().ok()
    });
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor),
        _ => (0, 0),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Auto,
    Cpu,
    Cuda,
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub config: PathBuf,
    pub out: PathBuf,
    pub device: Option<Device>,
    pub resume: bool,
    /// `section.key=value` overrides.
    pub overrides: Vec<String>,
}

/// Starts `python -m edgekd_train distill` with its events on a pipe. The trainer gets a
/// process group of its own, so a terminal's Ctrl-C reaches edge-kd alone, which passes
/// exactly one SIGINT on: a second one could interrupt the checkpoint being written.
pub fn spawn(env: &PythonEnv, job: &Job) -> Result<Child, DistillError> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(&env.python);
    cmd.args(["-m", "edgekd_train", "distill", "--config"]).arg(&job.config).arg("--out").arg(&job.out);
    if let Some(device) = job.device {
        cmd.args(["--device", device.as_str()]);
    }
    if job.resume {
        cmd.arg("--resume");
    }
    for o in &job.overrides {
        cmd.args(["--set", o]);
    }
    cmd.env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null())
        .process_group(0);
    cmd.spawn().map_err(|source| DistillError::Spawn { python: env.python.display().to_string(), source })
}

/// One line of the trainer's event stream (the contract is in training/edgekd_train/cli.py).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start {
        out: String,
        device: String,
        #[serde(default)]
        world_size: u32,
    },
    Phase {
        phase: String,
        #[serde(default)]
        epochs: Option<u32>,
        #[serde(default)]
        skipped: Option<String>,
    },
    Step {
        phase: String,
        epoch: u32,
        of: u32,
        step: u64,
        steps: u64,
        loss: f64,
        /// The method's named terms of this step's loss (`ce`, `kd`, `attn`...), besides the total.
        #[serde(default)]
        losses: BTreeMap<String, f64>,
    },
    Epoch {
        phase: String,
        epoch: u32,
        of: u32,
        loss: f64,
        /// Each named term averaged over the epoch's samples.
        #[serde(default)]
        losses: BTreeMap<String, f64>,
        #[serde(default)]
        train_accuracy: Option<f64>,
        #[serde(default)]
        test_accuracy: Option<f64>,
        #[serde(default)]
        images_per_s: Option<f64>,
    },
    Checkpoint {
        phase: String,
        path: String,
    },
    Summary(Box<Summary>),
    Interrupted {
        phase: String,
        checkpoint: Option<String>,
    },
    Error {
        kind: String,
        message: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelSummary {
    pub model: String,
    pub params: Option<u64>,
    pub test_accuracy: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Summary {
    pub teacher: Option<ModelSummary>,
    pub student: ModelSummary,
    pub method: String,
    pub onnx: PathBuf,
    pub onnx_bytes: Option<u64>,
    pub temperature: Option<f64>,
    pub ece_before: Option<f64>,
    pub ece_after: Option<f64>,
    pub target: Option<f64>,
    pub coverage: Option<f64>,
    pub error_among_accepted: Option<f64>,
    #[serde(default)]
    pub notes: Vec<String>,
    pub reference_dir: PathBuf,
    pub images_per_s: Option<f64>,
    /// The student's named loss terms over its last epoch.
    #[serde(default)]
    pub losses: BTreeMap<String, f64>,
    #[serde(default)]
    pub plots: Vec<PathBuf>,
    /// CRLD's confidence gates over the last logged epoch (methods with CRLD's views only).
    pub crld_masks: Option<CrldMasks>,
}

/// How much of each batch CRLD's gates let through: a gate that is almost never open means its
/// threshold is above what this teacher reaches on this data.
#[derive(Debug, Clone, Deserialize)]
pub struct CrldMasks {
    pub mask_weak: f64,
    pub mask_strong: f64,
    pub teacher_conf_weak: f64,
    pub teacher_conf_strong: f64,
    pub tau_w: f64,
    pub tau_s: f64,
}

/// Parses one stdout line; `None` for a line that is not an event (reported, not fatal).
pub fn parse_event(line: &str) -> Option<Event> {
    serde_json::from_str(line).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An interpreter that answers the probe as a Python `version` with PyTorch and the
    /// training package would.
    fn fake_python(dir: &Path, version: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!("python{version}"));
        let answer =
            format!(r#"{{"python": "{version}", "torch": "2.4.0", "cuda": false, "edgekd_train": true}}"#);
        std::fs::write(&path, format!("#!/bin/sh\necho '{answer}'\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn python_3_10_is_told_its_version_is_too_old_not_to_install_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let old = fake_python(dir.path(), "3.10.12");
        let err = find_python(Some(&old)).unwrap_err();
        assert!(matches!(err, DistillError::OldPython { .. }), "{err}");
        assert!(err.to_string().contains("is Python 3.10.12; edge-kd distill needs 3.11 or later"), "{err}");

        for ok in ["3.11.0rc1", "3.13.1"] {
            let env = find_python(Some(&fake_python(dir.path(), ok))).unwrap();
            assert_eq!((env.version.as_str(), env.torch.as_str()), (ok, "2.4.0"));
        }
    }

    #[test]
    fn the_version_floor_is_the_one_the_training_package_declares() {
        let pyproject =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("training/pyproject.toml"))
                .unwrap();
        let floor = format!("requires-python = \">={}.{}\"", MIN_PYTHON.0, MIN_PYTHON.1);
        assert!(pyproject.contains(&floor), "training/pyproject.toml does not say {floor}");
    }

    #[test]
    fn events_parse_and_unknown_ones_are_tolerated() {
        let e = parse_event(
            r#"{"event":"epoch","phase":"student","epoch":2,"of":20,"loss":0.4,"train_accuracy":0.9,"test_accuracy":0.91,"images_per_s":35000.0,"seconds":1.7}"#,
        );
        assert!(matches!(e, Some(Event::Epoch { epoch: 2, of: 20, .. })));
        assert!(matches!(parse_event(r#"{"event":"lr_warmup","x":1}"#), Some(Event::Other)));
        assert!(parse_event("Downloading nothing").is_none());
    }

    #[test]
    fn a_summary_carries_crld_gates_only_when_the_method_has_them() {
        let base = r#""event":"summary","teacher":null,"student":{"model":"cnn-18k","params":18000,"test_accuracy":0.9},
            "method":"crld","onnx":"o/student.onnx","onnx_bytes":1,"temperature":1.2,"ece_before":0.1,"ece_after":0.02,
            "target":0.01,"coverage":0.7,"error_among_accepted":0.009,"notes":[],"reference_dir":"o/reference",
            "images_per_s":100.0"#;
        let gates = r#""crld_masks":{"epoch":1,"steps":3,"mask_weak":0.79,"mask_strong":1.0,
            "teacher_conf_weak":0.93,"teacher_conf_strong":0.79,"tau_w":0.9,"tau_s":0.2}"#;
        let Some(Event::Summary(s)) = parse_event(&format!("{{{base},{gates}}}").replace('\n', "")) else {
            panic!("summary with gates did not parse")
        };
        let m = s.crld_masks.expect("crld_masks");
        assert_eq!((m.mask_weak, m.tau_s), (0.79, 0.2));
        let Some(Event::Summary(s)) = parse_event(&format!("{{{base}}}").replace('\n', "")) else {
            panic!("summary without gates did not parse")
        };
        assert!(s.crld_masks.is_none());
    }
}
