//! `edge-kd run` as a user runs it: the shipped student on the shipped samples, bad
//! inputs among good ones, card-less models, tensors, and broken models.

mod common;

use std::path::Path;

use common::*;
use predicates::prelude::*;

/// `models/samples.tsv`: file name -> (predicted label, calibrated confidence) of the shipped
/// student, as onnxruntime in Python gave them (training/scripts/install_default.py).
fn expected_samples() -> std::collections::HashMap<String, (String, f64)> {
    let tsv = std::fs::read_to_string(root().join("models/samples.tsv")).unwrap();
    tsv.lines()
        .skip(1)
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            (cols[0].to_string(), (cols[2].to_string(), cols[3].parse().unwrap()))
        })
        .collect()
}

#[test]
fn samples_get_the_shipped_students_label_and_confidence_in_both_engines() {
    let expected = expected_samples();
    let right =
        expected.iter().filter(|(file, (label, _))| slug(label) == sample_slug(Path::new(file))).count();
    assert!(right >= 11, "the shipped student names at least 11 of the 12 samples right, not {right}");
    for engine in ["tract", "ort"] {
        let output =
            edge_kd().args(["run", "--engine", engine, "--format", "jsonl"]).arg(samples()).output().unwrap();
        assert!(output.status.success(), "{engine}: {}", String::from_utf8_lossy(&output.stderr));
        let lines = stdout_lines(&output);
        assert_eq!(lines.len(), 12, "{engine}: one line per sample");
        for line in &lines {
            let file = Path::new(line["file"].as_str().unwrap());
            let (label, confidence) = &expected[file.file_name().unwrap().to_str().unwrap()];
            assert_eq!(line["label"], label.as_str(), "{engine}: {line}");
            let got = line["confidence"].as_f64().unwrap();
            assert!(
                (got - confidence).abs() <= 1e-4,
                "{engine}: confidence {got} vs {confidence} in samples.tsv"
            );
            assert_eq!(line["engine"], engine);
        }
    }
}

#[test]
fn jsonl_lines_keep_the_public_contract() {
    let output = edge_kd()
        .args(["run", "--format", "jsonl", "-k", "2"])
        .arg(samples().join("0004-shirt.png"))
        .output()
        .unwrap();
    assert!(output.status.success());
    let line = &stdout_lines(&output)[0];
    let keys: Vec<&str> = line.as_object().unwrap().keys().map(String::as_str).collect();
    for key in
        ["file", "label", "class_index", "confidence", "threshold", "verdict", "top", "latency_us", "engine"]
    {
        assert!(keys.contains(&key), "missing {key} in {line}");
    }
    let confidence = line["confidence"].as_f64().unwrap();
    // A class without a threshold (null: the calibration could not support the target) is
    // always reviewed.
    let expected = match line["threshold"].as_f64() {
        Some(threshold) if confidence >= threshold => "accept",
        Some(_) => "review",
        None if line["threshold"].is_null() => "review",
        None => panic!("threshold is neither a number nor null: {line}"),
    };
    assert_eq!(line["verdict"], expected);
    assert_eq!(line["top"].as_array().unwrap().len(), 2);
    assert_eq!(line["top"][0]["label"], line["label"]);
    assert_eq!(line["top"][0]["p"], line["confidence"]);
}

#[test]
fn table_format_shows_label_confidence_threshold_and_verdict() {
    edge_kd()
        .args(["run", "--format", "table"])
        .arg(samples().join("0000-ankle-boot.png"))
        .assert()
        .success()
        .stdout(predicate::str::contains("VERDICT").and(predicate::str::contains("Ankle boot")))
        .stdout(predicate::str::is_match(r"Ankle boot\s+0\.\d{3}\s+0\.\d{3}\s+(accept|review)").unwrap())
        .stderr(predicate::str::contains("1 input: "));
}

#[test]
fn bad_inputs_fail_alone_and_the_rest_complete() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "truncated.png",
        "corrupt.png",
        "notes.txt",
        "rgb_50x30.png",
        "rgba_40x40.png",
        "gray16_20x20.png",
        "photo_64x48.jpg",
        "tiny_33x17.bmp",
    ] {
        std::fs::copy(fixture(&format!("images/{name}")), dir.path().join(name)).unwrap();
    }
    let missing = dir.path().join("missing.png");
    let output = edge_kd()
        .args(["run", "--format", "jsonl"])
        .arg(&missing)
        .arg(dir.path())
        .arg(samples().join("0002-trouser.png"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4), "some inputs failed");
    let lines = stdout_lines(&output);
    assert_eq!(lines.len(), 10);
    let by_file =
        |name: &str| lines.iter().find(|l| l["file"].as_str().unwrap().ends_with(name)).unwrap().clone();
    assert!(by_file("missing.png")["error"].as_str().unwrap().contains("no such file"));
    assert!(by_file("truncated.png")["error"].as_str().unwrap().starts_with("PNG image"));
    assert!(by_file("corrupt.png")["error"].as_str().unwrap().contains("not a PNG, JPEG or BMP"));
    assert!(by_file("notes.txt")["error"].as_str().unwrap().contains("not an image file"));
    // Other sizes and colour types are converted per the card (28x28 gray) and classified.
    for name in ["rgb_50x30.png", "rgba_40x40.png", "gray16_20x20.png", "photo_64x48.jpg", "tiny_33x17.bmp"] {
        let line = by_file(name);
        assert!(line.get("error").is_none(), "{line}");
        assert!(line["confidence"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(by_file("0002-trouser.png")["label"], "Trouser", "inputs after failures still run");
}

#[test]
fn a_model_without_a_card_still_runs() {
    let output = edge_kd()
        .args(["run", "--format", "jsonl", "--model"])
        .arg(fixture("models/cardless.onnx"))
        .arg(fixture("images/rgb_50x30.png"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line = &stdout_lines(&output)[0];
    assert!(line["label"].as_str().unwrap().starts_with("class_"));
    assert_eq!(line["threshold"], serde_json::Value::Null);
    assert_eq!(line["verdict"], "review", "nothing calibrated: a person decides");
    assert!(String::from_utf8_lossy(&output.stderr).contains("no edge-kd card"));

    let forced = edge_kd()
        .args(["run", "--format", "jsonl", "--threshold", "0", "--mean", "0.5", "--std", "0.25", "--model"])
        .arg(fixture("models/cardless.onnx"))
        .arg(fixture("images/gray_28.png"))
        .output()
        .unwrap();
    assert_eq!(stdout_lines(&forced)[0]["verdict"], "accept");
}

#[test]
fn tensors_are_fed_as_they_are_and_checked() {
    let output = edge_kd()
        .args(["run", "--format", "jsonl", "--model"])
        .arg(fixture("models/gray28.onnx"))
        .args([
            fixture("models/gray28.input.npy"),
            fixture("models/gray28.wrong_shape.npy"),
            fixture("models/gray28.float64.npy"),
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4));
    let lines = stdout_lines(&output);
    let reference = edge_kd::npy::read_f32(&fixture("models/gray28.output.npy"), usize::MAX).unwrap();
    let argmax = reference.data.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    assert_eq!(lines[0]["class_index"], argmax);
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("[1, 1, 28, 27] does not fit the model input [1, 1, 28, 28]")
    );
    assert!(lines[2]["error"].as_str().unwrap().contains("dtype <f8 is not supported"));
}

#[test]
fn broken_models_are_refused_with_the_file_and_field() {
    let cases = [
        ("not_onnx.onnx", "not a valid ONNX model"),
        ("bad_schema.onnx", "card.schema: version 2 is not supported"),
        ("bad_labels.onnx", "card.labels: 7 labels but the output \"logits\" has 10 classes"),
    ];
    for (file, message) in cases {
        let path = fixture(&format!("models/{file}"));
        edge_kd()
            .args(["run", "--model"])
            .arg(&path)
            .arg(samples())
            .assert()
            .code(3)
            .stderr(predicate::str::contains(file).and(predicate::str::contains(message)));
    }
    edge_kd()
        .args(["run", "--model", "/nonexistent/model.onnx"])
        .arg(samples())
        .assert()
        .code(3)
        .stderr(predicate::str::contains("/nonexistent/model.onnx: cannot read"));
}

#[test]
fn ort_without_its_library_says_how_to_get_it() {
    edge_kd()
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.20.0")
        .args(["run", "--engine", "ort"])
        .arg(samples())
        .assert()
        .code(3)
        .stderr(
            predicate::str::contains("ONNX Runtime library not found")
                .and(predicate::str::contains(
                    "ORT_DYLIB_PATH=/nonexistent/libonnxruntime.so.1.20.0 (no such file)",
                ))
                .and(predicate::str::contains("pip install onnxruntime"))
                .and(predicate::str::contains("--engine tract")),
        );
}

#[test]
fn usage_errors_exit_2() {
    edge_kd().args(["run"]).assert().code(2);
    edge_kd()
        .args(["run", "--engine", "tensorrt", "x.png"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown engine"));
    edge_kd().args(["run", "--threshold", "1.5", "x.png"]).assert().code(2);
}

#[test]
fn runs_from_any_folder_with_the_embedded_student() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("boot.png");
    std::fs::copy(samples().join("0000-ankle-boot.png"), &image).unwrap();
    edge_kd()
        .current_dir(dir.path())
        .args(["run", "--format", "jsonl", "boot.png"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"label\":\"Ankle boot\""));
}
