//! `edge-kd distill` end to end on a tiny CPU config: the trainer (PyTorch, in
//! `.venv`), the events, the files, the parity proof, Ctrl-C and --resume, and the
//! messages a user sees when something is missing.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use predicates::prelude::*;

const TINY: &str = "training/configs/tiny-cpu.toml";

fn python() -> PathBuf {
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "run `bash .ci/setup` first: it creates .venv with PyTorch and edgekd_train");
    python
}

fn distill(out: &Path) -> assert_cmd::Command {
    let mut cmd = edge_kd();
    cmd.current_dir(root())
        .env("EDGE_KD_PYTHON", python())
        .args(["distill", "--config", TINY, "--device", "cpu", "--out"])
        .arg(out);
    cmd
}

#[test]
fn tiny_run_exports_a_calibrated_student_that_every_engine_reproduces() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    distill(&out).assert().success().stdout(
        predicate::str::contains("distilled")
            .and(predicate::str::contains("teacher      wrn16-1"))
            .and(predicate::str::contains("student      cnn-18k"))
            .and(predicate::str::contains("ECE"))
            .and(predicate::str::is_match(r"parity\s+tract \S+ ok, ort \S+ ok").unwrap()),
    );
    for file in [
        "student.onnx",
        "reference/input_0.npy",
        "reference/output_0.npy",
        "reliability.png",
        "risk_coverage.png",
        "summary.json",
        "config.resolved.toml",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    // The student is a self-describing edge-kd model.
    edge_kd()
        .arg("card")
        .arg(out.join("student.onnx"))
        .assert()
        .success()
        .stdout(predicate::str::contains("method kd").and(predicate::str::contains("temperature")));
    edge_kd()
        .args(["run", "--format", "jsonl", "--model"])
        .arg(out.join("student.onnx"))
        .arg(samples())
        .assert()
        .success();
    // The same folder again needs --resume; with it, the finished run completes at once.
    distill(&out).assert().code(2).stderr(predicate::str::contains("--resume"));
    distill(&out).arg("--resume").assert().success().stderr(predicate::str::contains("skipped"));
}

#[test]
fn ctrl_c_stops_cleanly_and_resume_continues() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("edge-kd"))
        .current_dir(root())
        .env("EDGE_KD_PYTHON", python())
        .env("ORT_DYLIB_PATH", ort_library())
        .args(["distill", "--config", TINY, "--device", "cpu", "--set", "student.epochs=40", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    // Interrupt once the student is training, as a person pressing Ctrl-C would.
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("student epoch 1/40") {
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            break;
        }
        line.clear();
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    seen.push_str(&rest);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains("--resume"), "{seen}");
    assert!(out.join("checkpoints/student.pt").is_file(), "{seen}");
    assert!(!out.join("student.onnx").exists(), "an interrupted run exports nothing");

    distill(&out)
        .args(["--resume", "--set", "student.epochs=2"])
        .assert()
        .success()
        .stdout(predicate::str::contains("distilled"));
}

#[test]
fn a_bad_config_names_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(root().join(TINY))
        .unwrap()
        .replace("[distill]", "[distill]\ntemprature = 4.0");
    std::fs::write(&config, text).unwrap();
    edge_kd()
        .current_dir(root())
        .env("EDGE_KD_PYTHON", python())
        .args(["distill", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(dir.path().join("run"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("bad.toml").and(predicate::str::contains("temprature")))
        .stderr(predicate::str::contains("Traceback").not());
    edge_kd()
        .args(["distill", "--config", "/nonexistent.toml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/nonexistent.toml: no such config file"));
}

#[test]
fn missing_pytorch_says_which_command_installs_it() {
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("bare");
    let made = Command::new(python()).args(["-m", "venv", "--without-pip"]).arg(&venv).status().unwrap();
    assert!(made.success());
    let bare = venv.join("bin/python");
    edge_kd()
        .current_dir(root())
        .args(["distill", "--config", TINY, "--python"])
        .arg(&bare)
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("PyTorch is not installed for")
                .and(predicate::str::contains("-m pip install torch")),
        );
    edge_kd()
        .current_dir(root())
        .args(["distill", "--config", TINY, "--python", "/nonexistent/python3"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no Python interpreter found"));
}
