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
            .and(
                predicate::str::is_match(r"losses\s+ce \d\.\d{4}, kd \d\.\d{4} \(student, last epoch\)")
                    .unwrap(),
            )
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

/// A folder of RGB colour swatches, `root/{train,test}/{blue,green,red}/*.png`, with noise in
/// hue and brightness so that the classes are learnt, not looked up.
fn colour_folder(root: &Path, per_class: &[(&str, usize)]) {
    let mut state = 0x2545_f491_u32;
    let mut noise = move |span: i32| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % (2 * span as u32 + 1)) as i32 - span
    };
    for (split, n) in per_class {
        for (class, rgb) in [("blue", [40, 60, 190]), ("green", [50, 170, 60]), ("red", [190, 50, 40])] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..*n {
                let shift = noise(40);
                let img = image::RgbImage::from_fn(20, 20, |_, _| {
                    image::Rgb(rgb.map(|c: i32| (c + shift + noise(25)).clamp(0, 255) as u8))
                });
                img.save(dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
}

/// The other inputs design §3 promises: an RGB ImageFolder data set and an external TorchScript
/// teacher (here a fixed colour read-out, so the teacher is right and the student can follow it).
#[test]
fn an_image_folder_and_a_torchscript_teacher_give_a_student_that_names_the_folders() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("colours");
    colour_folder(&data, &[("train", 60), ("test", 10)]);
    let teacher = dir.path().join("teacher.ts");
    let script = format!(
        "import torch\n\
         class ColourTeacher(torch.nn.Module):\n    \
         def forward(self, x):\n        \
         return x.mean(dim=(2, 3))[:, [2, 1, 0]] * 8.0\n\
         torch.jit.script(ColourTeacher()).save({:?})\n",
        teacher.display().to_string()
    );
    // TorchScript reads the class's source, so it must live in a file, not in `-c`.
    let script_file = dir.path().join("make_teacher.py");
    std::fs::write(&script_file, script).unwrap();
    let made = Command::new(python()).arg(&script_file).status().unwrap();
    assert!(made.success(), "scripting the teacher failed");
    let config = dir.path().join("colours.toml");
    std::fs::write(
        &config,
        format!(
            r#"[data]
dataset = "image-folder"
path = {data:?}
image_size = 16
color = "rgb"
calibration_split = 45
augment_flip = false
augment_shift = 0

[teacher]
model = "torchscript:{teacher}"

[student]
model = "cnn-18k"
epochs = 6
lr = 0.005
batch_size = 16
schedule = "constant"

[distill]
method = "kd"
T = 2.0
alpha = 0.5

[calibration]
max_error_among_accepted = 0.1
min_samples_per_class = 5

[export]
name = "colours"
reference_samples = 4

[run]
seed = 0
threads = 1
"#,
            data = data.display().to_string(),
            teacher = teacher.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("run");
    edge_kd()
        .current_dir(root())
        .env("EDGE_KD_PYTHON", python())
        .args(["distill", "--device", "cpu", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .assert()
        .success()
        .stdout(
            predicate::str::contains("teacher      torchscript:")
                .and(predicate::str::is_match(r"parity\s+tract \S+ ok, ort \S+ ok").unwrap()),
        );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["teacher"]["test_accuracy"], 1.0, "the colour read-out is exact: {summary}");

    // The card carries the folder names, the RGB layout and the 16x16 size to the runtime,
    // which then names the test folders' colours from the PNGs alone.
    let card = edge_kd().arg("card").arg(out.join("student.onnx")).output().unwrap();
    let card = String::from_utf8_lossy(&card.stdout);
    assert!(card.contains("blue") && card.contains("green") && card.contains("red"), "{card}");
    let run = edge_kd()
        .args(["run", "--format", "jsonl", "--model"])
        .arg(out.join("student.onnx"))
        .arg(data.join("test"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let lines = stdout_lines(&run);
    assert_eq!(lines.len(), 30);
    let right = lines
        .iter()
        .filter(|l| {
            let file = l["file"].as_str().unwrap();
            file.contains(&format!("/{}/", l["label"].as_str().unwrap()))
        })
        .count();
    assert!(right >= 27, "{right} of 30 test swatches named by their folder");
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

#[test]
fn a_multimodal_manifest_gives_one_student_that_every_engine_runs_with_and_without_the_height_map() {
    let dir = tempfile::tempdir().unwrap();
    for (split, n, seed) in [("train", "60", "0"), ("test", "10", "1")] {
        let made = Command::new(python())
            .current_dir(root())
            .env("PYTHONPATH", root().join("training"))
            .args([
                "-m",
                "edgekd_train",
                "data",
                "inspection",
                "--size",
                "32",
                "--n",
                n,
                "--seed",
                seed,
                "--out",
            ])
            .arg(dir.path().join(split))
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    }
    let config = dir.path().join("inspection.toml");
    std::fs::write(
        &config,
        format!(
            r#"[data]
dataset = "manifest"
path = {train:?}
test_path = {test:?}
labels = ["ok", "scratch", "dent", "stain", "crack"]
image_size = 16
calibration_split = 20

[inputs.rgb]
color = "rgb"

[inputs.height]
color = "gray"
optional = true

[teacher]
model = "mm-vit-teacher"
epochs = 1
batch_size = 16

[student]
model = "mm-vit-missing-student"
epochs = 1
batch_size = 16
modality_dropout = 0.5

[calibration]
max_error_among_accepted = 0.5
min_samples_per_class = 2

[export]
reference_samples = 2

[run]
threads = 1
"#,
            train = dir.path().join("train/manifest.csv").display().to_string(),
            test = dir.path().join("test/manifest.csv").display().to_string(),
        ),
    )
    .unwrap();
    let out = dir.path().join("run");
    // The references hold both subsets (height present, then missing): parity covers both.
    edge_kd()
        .current_dir(root())
        .env("EDGE_KD_PYTHON", python())
        .args(["distill", "--device", "cpu", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"parity\s+tract \S+ ok, ort \S+ ok").unwrap());
    assert!(out.join("reference/input_3.height_present.npy").is_file());
    let model = out.join("student.onnx");
    edge_kd()
        .arg("card")
        .arg(&model)
        .assert()
        .success()
        .stdout(predicate::str::contains("learned-token").and(predicate::str::contains("height_present")));

    // A sample with both maps, and the same camera image alone: each decided by its own calibration.
    let test = dir.path().join("test");
    for engine in ["tract", "ort"] {
        let mut lines = Vec::new();
        for inputs in [vec!["rgb", "height"], vec!["rgb"]] {
            let mut cmd = edge_kd();
            cmd.args(["run", "--format", "jsonl", "--engine", engine, "--model"]).arg(&model);
            for input in &inputs {
                cmd.arg("--input").arg(format!("{input}={}", test.join(input).join("000000.png").display()));
            }
            let run = cmd.output().unwrap();
            assert!(run.status.success(), "{engine} {inputs:?}: {}", String::from_utf8_lossy(&run.stderr));
            lines.extend(stdout_lines(&run));
        }
        assert_eq!(lines[0]["subset"], "rgb+height", "{engine}: {}", lines[0]);
        assert_eq!(lines[1]["subset"], "rgb", "{engine}: {}", lines[1]);
        assert_eq!(lines[1]["modalities"], serde_json::json!({"rgb": "present", "height": "missing"}));
        // The whole test manifest, as the trainer reads it.
        let run = edge_kd()
            .args(["run", "--format", "jsonl", "--engine", engine, "--model"])
            .arg(&model)
            .arg("--manifest")
            .arg(test.join("manifest.csv"))
            .output()
            .unwrap();
        assert!(run.status.success(), "{engine}: {}", String::from_utf8_lossy(&run.stderr));
        assert_eq!(stdout_lines(&run).len(), 10);
    }
}
