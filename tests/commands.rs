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
