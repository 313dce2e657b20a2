//! Both engines give the same outputs as the reference on every fixture model, and as
//! each other (max abs diff ≤ docs/parity.toml's tolerance, 1e-4).

mod common;

use common::*;
use edge_kd::engine::{self, EngineKind, EngineOptions};
use edge_kd::model::{CardlessOptions, Model};
use edge_kd::npy;
use edge_kd::parity::tolerance;

fn outputs(model: &Model, kind: EngineKind, threads: usize, input: &[f32]) -> Vec<f32> {
    let opts = EngineOptions { kind, threads, ort_library: Some(ort_library()) };
    let mut engine = engine::open(model, &opts).unwrap_or_else(|e| panic!("{kind}: {e}"));
    let mut out = Vec::new();
    engine.run(&[input], &mut out).unwrap();
    // A second run on the same engine must give the same answer (buffers are reused).
    let mut again = Vec::new();
    engine.run(&[input], &mut again).unwrap();
    assert_eq!(out, again, "{kind}: repeated runs differ");
    out
}

#[test]
fn every_fixture_model_matches_its_reference_in_both_engines() {
    for name in ["gray28", "rgb32_crop", "bgr_letterbox", "cardless"] {
        let model =
            Model::open(&fixture(&format!("models/{name}.onnx")), &CardlessOptions::default()).unwrap();
        let input = npy::read_f32(&fixture(&format!("models/{name}.input.npy")), usize::MAX).unwrap();
        let expected = npy::read_f32(&fixture(&format!("models/{name}.output.npy")), usize::MAX).unwrap();
        let tract = outputs(&model, EngineKind::Tract, 1, &input.data);
        let ort = outputs(&model, EngineKind::Ort, 1, &input.data);
        assert!(max_abs_diff(&tract, &expected.data) <= tolerance(), "{name}: tract vs reference");
        assert!(max_abs_diff(&ort, &expected.data) <= tolerance(), "{name}: ort vs reference");
        assert!(max_abs_diff(&tract, &ort) <= tolerance(), "{name}: tract vs ort");
        // Threads change scheduling, not results.
        let tract2 = outputs(&model, EngineKind::Tract, 2, &input.data);
        assert!(max_abs_diff(&tract, &tract2) <= tolerance(), "{name}: tract 1 vs 2 threads");
    }
}

#[test]
fn the_default_student_reproduces_pytorch() {
    let model = Model::embedded_default().unwrap();
    for k in 0..4 {
        let reference = root().join("models/default/reference");
        let input = npy::read_f32(&reference.join(format!("input_{k}.npy")), usize::MAX).unwrap();
        let expected = npy::read_f32(&reference.join(format!("output_{k}.npy")), usize::MAX).unwrap();
        for kind in EngineKind::ALL {
            let got = outputs(&model, kind, 1, &input.data);
            let diff = max_abs_diff(&got, &expected.data);
            assert!(diff <= tolerance(), "{kind} on input_{k}: max abs diff {diff}");
        }
    }
}

#[test]
fn the_embedded_student_is_the_shipped_file() {
    let shipped = std::fs::read(root().join("models/default/student.onnx")).unwrap();
    assert!(shipped == edge_kd::model::DEFAULT_MODEL_BYTES, "rebuild: the embedded default is stale");
}
