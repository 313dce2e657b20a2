//! `card`, `parity`, `bench` and `doctor` as a user runs them.

mod common;

use common::*;
use predicates::prelude::*;

#[test]
fn card_prints_what_the_model_is_and_how_far_to_trust_it() {
    edge_kd().arg("card").assert().success().stdout(
        predicate::str::contains("models/default/student.onnx (embedded)")
            .and(predicate::str::contains("image [1, 1, 28, 28] NCHW gray, stretch"))
            .and(predicate::str::contains("logits [1, 10] (logits)"))
            .and(predicate::str::contains("temperature"))
            .and(predicate::str::is_match(r"Shirt (0\.\d+|none \(always review\))").unwrap())
            .and(predicate::str::contains("test_accuracy 0.9")),
    );
    edge_kd()
        .arg("card")
        .arg(fixture("models/gray28.onnx"))
        .assert()
        .success()
        .stdout(predicate::str::contains("c7 none (always review)"));
    edge_kd()
        .arg("card")
        .arg(fixture("models/cardless.onnx"))
        .assert()
        .success()
        .stdout(predicate::str::contains("(no edge-kd card)").and(predicate::str::contains("class_0")));
}

#[test]
fn card_json_is_the_stored_card() {
    let output = edge_kd().args(["card", "--json"]).arg(fixture("models/rgb32_crop.onnx")).output().unwrap();
    assert!(output.status.success());
    let card: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(card["labels"], serde_json::json!(["ok", "scratch", "dent", "stain"]));
    assert_eq!(card["inputs"][0]["resize"], "center-crop");
}

#[test]
fn parity_passes_in_every_engine_and_fails_on_a_wrong_reference() {
    edge_kd()
        .args(["parity", "--model"])
        .arg(fixture("models/gray28.onnx"))
        .arg(format!(
            "{}:{}",
            fixture("models/gray28.input.npy").display(),
            fixture("models/gray28.output.npy").display()
        ))
        .assert()
        .success()
        .stdout(
            predicate::str::is_match(r"tract\s+ok")
                .unwrap()
                .and(predicate::str::is_match(r"ort\s+ok").unwrap()),
        );
    edge_kd()
        .arg("parity")
        .arg(root().join("models/default/reference"))
        .assert()
        .success()
        .stdout(predicate::str::contains("over 4 pairs"));
    // Another model's outputs are not this model's: parity must fail.
    edge_kd()
        .args(["parity", "--engine", "tract", "--model"])
        .arg(fixture("models/gray28.onnx"))
        .arg(format!(
            "{}:{}",
            fixture("models/gray28.input.npy").display(),
            root().join("models/default/reference/output_0.npy").display()
        ))
        .assert()
        .code(3)
        .stdout(predicate::str::contains("FAIL"));
}

#[test]
fn bench_reports_percentiles_overhead_and_memory_per_engine_and_threads() {
    let output = edge_kd()
        .args([
            "bench",
            "--engine",
            "tract,ort",
            "--threads",
            "1,2",
            "--iters",
            "20",
            "--warmup",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for row in rows {
        assert!(row["error"].is_null(), "{row}");
        for stage in ["engine_only", "pipeline"] {
            let s = &row[stage];
            let (p50, p90, p99, max) = (
                s["p50_us"].as_f64().unwrap(),
                s["p90_us"].as_f64().unwrap(),
                s["p99_us"].as_f64().unwrap(),
                s["max_us"].as_f64().unwrap(),
            );
            assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max, "{stage}: {s}");
            assert!(s["throughput_fps"].as_f64().unwrap() > 0.0);
        }
        assert!(row["overhead_pct"].as_f64().unwrap() >= 0.0);
        assert!(row["peak_rss_mib"].as_f64().unwrap() > 1.0);
    }
    assert_eq!(report["machine"]["arch"], std::env::consts::ARCH);

    edge_kd()
        .args(["bench", "--engine", "tract", "--threads", "1", "--iters", "5", "--warmup", "0"])
        .arg("--input")
        .arg(fixture("images/rgb_50x30.png"))
        .assert()
        .success()
        .stdout(
            predicate::str::contains("| tract | 1 | pipeline |")
                .and(predicate::str::contains("rgb_50x30.png (50x30)")),
        );
}

#[test]
fn doctor_names_the_engines_and_the_ort_library() {
    edge_kd().arg("doctor").assert().success().stdout(
        predicate::str::is_match(r"tract\s+usable")
            .unwrap()
            .and(predicate::str::is_match(r"ort\s+usable: ONNX Runtime 1\.\d+").unwrap())
            .and(predicate::str::contains("ORT_DYLIB_PATH")),
    );
    edge_kd().env("ORT_DYLIB_PATH", "/nowhere/libonnxruntime.so").arg("doctor").assert().success().stdout(
        predicate::str::is_match(r"ort\s+NOT usable: ONNX Runtime library not found")
            .unwrap()
            .and(predicate::str::contains("to use ort: install it with `pip install onnxruntime`")),
    );
}

#[test]
fn help_has_examples() {
    for sub in ["run", "bench", "card", "parity", "doctor"] {
        edge_kd().args([sub, "--help"]).assert().success().stdout(predicate::str::contains("Example"));
    }
}

/// `run` takes such a model with `--input NAME=PATH` (tests/run_multi_input.rs); these two
/// still feed one value per frame.
#[test]
fn bench_and_parity_refuse_a_two_input_model_naming_its_inputs() {
    let model = fixture("models/two_input.onnx");
    let named = "two_input.onnx: the model has 2 inputs (image (camera), depth (depth))";
    edge_kd()
        .args(["bench", "--engine", "tract", "--iters", "1", "--model"])
        .arg(&model)
        .assert()
        .code(3)
        .stderr(predicate::str::contains(named));
    edge_kd()
        .args(["parity", "--model"])
        .arg(&model)
        .arg(format!(
            "{}:{}",
            fixture("models/two_input.image.npy").display(),
            fixture("models/two_input.output.npy").display()
        ))
        .assert()
        .code(3)
        .stderr(predicate::str::contains(named));
}

#[test]
fn without_engine_bench_and_parity_run_the_default_and_say_ort_was_not_found() {
    let reference = root().join("models/default/reference");
    edge_kd()
        .env("ORT_DYLIB_PATH", "/nowhere/libonnxruntime.so")
        .arg("parity")
        .arg(&reference)
        .assert()
        .success()
        .stdout(
            predicate::str::is_match(r"tract\s+ok")
                .unwrap()
                .and(predicate::str::contains("ort    skipped: ONNX Runtime library not found")),
        );
    let output = edge_kd()
        .env("ORT_DYLIB_PATH", "/nowhere/libonnxruntime.so")
        .args(["bench", "--threads", "1", "--iters", "2", "--warmup", "0", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ONNX Runtime not found, measuring tract only"));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let engines: Vec<&str> =
        report["rows"].as_array().unwrap().iter().map(|r| r["engine"].as_str().unwrap()).collect();
    assert_eq!(engines, [edge_kd::engine::EngineKind::DEFAULT.as_str()]);
}

#[test]
fn parity_and_the_python_exporter_hold_engines_to_the_same_tolerance() {
    let tol = edge_kd::parity::tolerance();
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "run `bash .ci/setup` first: it creates .venv with edgekd_train");
    let out = std::process::Command::new(python)
        .env("PYTHONPATH", root().join("training"))
        .env_remove("EDGEKD_PARITY_FILE")
        .args(["-c", "from edgekd_train.export import parity_tolerance; print(repr(parity_tolerance()))"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let python_tol: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(python_tol as f32, tol, "the exporter and the runtime read docs/parity.toml differently");
    // `parity` without --tol holds engines to it, and says so.
    edge_kd()
        .args(["parity", "--engine", "tract"])
        .arg(root().join("models/default/reference"))
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("(tolerance {tol:.1e})")));
    edge_kd()
        .args(["parity", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("[default: {tol}]")));
}
