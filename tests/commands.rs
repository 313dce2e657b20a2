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

#[test]
fn card_shows_every_input_the_missing_modality_policy_and_each_calibration_subset() {
    edge_kd().arg("card").arg(fixture("models/learned_token.onnx")).assert().success().stdout(
        predicate::str::contains("input        rgb [1, 3, 16, 16] NCHW rgb")
            .and(predicate::str::contains("input        height [1, 1, 16, 16] NCHW gray"))
            .and(predicate::str::contains("modality height (optional)"))
            .and(predicate::str::contains(
                "missing      optional height; learned-token: a missing input is zeros",
            ))
            .and(predicate::str::contains("presence inputs height_present [1]"))
            .and(predicate::str::contains("calibration  rgb+height: temperature 1.5000"))
            .and(predicate::str::contains("thresholds   ok 0.5000; scratch 0.5000; dent 0.9500"))
            .and(predicate::str::contains("subset       rgb: temperature 3.0000"))
            .and(predicate::str::contains("thresholds   ok 0.4000; scratch 0.4000; dent 0.4000"))
            .and(predicate::str::contains("note         fixture: rgb only"))
            .and(predicate::str::contains(
                "otherwise    a frame with any other set of inputs has no calibration",
            )),
    );
    edge_kd().arg("card").arg(fixture("models/masked.onnx")).assert().success().stdout(
        predicate::str::contains("depth_mask [1, 1, 12, 20]")
            .and(predicate::str::contains("modality mask (the mask: edge-kd fills it)"))
            .and(predicate::str::contains(
                "optional depth; zero-fill: a missing input is zeros; mask input depth_mask",
            )),
    );
    // One-input cards print no policy line: nothing can be missing.
    edge_kd()
        .arg("card")
        .arg(fixture("models/gray28.onnx"))
        .assert()
        .success()
        .stdout(predicate::str::contains("missing").not().and(predicate::str::contains("subset").not()));
}

#[test]
fn bench_measures_a_model_with_optional_inputs_per_set_of_inputs_present() {
    let output = edge_kd()
        .args(["bench", "--engine", "tract,ort", "--threads", "1", "--iters", "5", "--warmup", "1", "--json"])
        .arg("--model")
        .arg(fixture("models/learned_token.onnx"))
        .arg("--input")
        .arg(format!("height={}", fixture("images/gray16_20x20.png").display()))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let configs: Vec<(&str, &str)> =
        rows.iter().map(|r| (r["engine"].as_str().unwrap(), r["subset"].as_str().unwrap())).collect();
    assert_eq!(configs, [("tract", "rgb+height"), ("tract", "rgb"), ("ort", "rgb+height"), ("ort", "rgb")]);
    for row in rows {
        assert!(row["error"].is_null(), "{row}");
        for stage in ["engine_only", "pipeline"] {
            assert!(row[stage]["p50_us"].as_f64().unwrap() > 0.0, "{stage}: {row}");
        }
    }
    assert!(report.get("input_shape").is_none());
    let inputs: Vec<(&str, &str)> = report["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i["frame"].as_str().unwrap()))
        .collect();
    assert_eq!(inputs[0], ("rgb", "synthetic 16x16"));
    assert_eq!(inputs[1].0, "height");
    assert!(inputs[1].1.ends_with("gray16_20x20.png (20x20)"), "a 16-bit height map is a frame: {inputs:?}");

    // Every input required: one row per configuration. The table gets an inputs column.
    edge_kd()
        .args(["bench", "--engine", "tract", "--threads", "1", "--iters", "3", "--warmup", "0", "--model"])
        .arg(fixture("models/two_input.onnx"))
        .assert()
        .success()
        .stdout(
            predicate::str::contains("| engine | threads | inputs | stage |")
                .and(predicate::str::contains("| tract | 1 | image+depth | pipeline |"))
                .and(predicate::str::contains("| tract | 1 | image+depth | engine |")),
        );
    // A card with an optional input but no calibration subset: the required inputs alone too.
    edge_kd()
        .args(["bench", "--engine", "tract", "--threads", "1", "--iters", "3", "--warmup", "0", "--model"])
        .arg(fixture("models/masked.onnx"))
        .assert()
        .success()
        .stdout(
            predicate::str::contains("| tract | 1 | image+depth+depth_mask | pipeline |")
                .and(predicate::str::contains("| tract | 1 | image+depth_mask | pipeline |")),
        );
    // Names are checked; a one-input model's --input is a path.
    edge_kd()
        .args(["bench", "--iters", "1", "--model"])
        .arg(fixture("models/learned_token.onnx"))
        .args(["--input", "depth=x.png"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("the model has no input \"depth\"; its inputs are rgb, height"));
    edge_kd()
        .args(["bench", "--iters", "1", "--model"])
        .arg(fixture("models/learned_token.onnx"))
        .args(["--input", "x.png"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("the model has 2 inputs (rgb, height): give NAME=PATH"));
}

#[test]
fn parity_checks_every_tensor_a_multi_input_model_is_fed_and_fails_on_a_wrong_reference() {
    let model = fixture("models/learned_token.onnx");
    let reference = fixture("models/learned_token.reference");
    edge_kd().args(["parity", "--model"]).arg(&model).arg(&reference).assert().success().stdout(
        predicate::str::is_match(r"tract\s+ok .* over 4 samples")
            .unwrap()
            .and(predicate::str::is_match(r"ort\s+ok .* over 4 samples").unwrap()),
    );
    // Graph inputs declared in another order are bound by name, in both engines.
    edge_kd()
        .args(["parity", "--model"])
        .arg(fixture("models/learned_token.reordered.onnx"))
        .arg(&reference)
        .assert()
        .success()
        .stdout(
            predicate::str::is_match(r"tract\s+ok")
                .unwrap()
                .and(predicate::str::is_match(r"ort\s+ok").unwrap()),
        );
    // Sample 1 (height missing) given sample 0's output: the engines must disagree with it.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&reference).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::copy(reference.join("output_0.npy"), dir.path().join("output_1.npy")).unwrap();
    edge_kd().args(["parity", "--model"]).arg(&model).arg(dir.path()).assert().code(3).stdout(
        predicate::str::is_match(r"tract\s+FAIL")
            .unwrap()
            .and(predicate::str::is_match(r"ort\s+FAIL").unwrap()),
    );
    // A presence input missing from a sample is named.
    std::fs::remove_file(dir.path().join("input_2.height_present.npy")).unwrap();
    edge_kd()
        .args(["parity", "--model"])
        .arg(&model)
        .arg(dir.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("input_2.height_present.npy: missing"));
    // A pair feeds one tensor: not this model.
    edge_kd()
        .args(["parity", "--model"])
        .arg(&model)
        .arg(format!(
            "{}:{}",
            reference.join("input_0.rgb.npy").display(),
            reference.join("output_0.npy").display()
        ))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "the model is fed 3 tensors (rgb, height, height_present), so a reference is a folder",
        ));
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
