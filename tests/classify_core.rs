//! The classify core: one value per card input, one engine run, one decision. A two-input
//! model (a camera image and a depth map, `tests/fixtures/models/two_input.onnx`) runs end to
//! end in tract and ONNX Runtime; missing and misshapen values are errors naming their input;
//! the one-value entry points are the core with one value.

mod common;

use common::*;
use edge_kd::classify::{Classifier, ClassifierError, DecideOptions, InputError, InputValue, ValueError};
use edge_kd::decide::{Decider, Decision};
use edge_kd::engine::{self, EngineKind, EngineOptions};
use edge_kd::model::{CardlessOptions, Model};
use edge_kd::npy::{self, NpyArray};
use edge_kd::preprocess::decode::{ImageFileDecoder, ImageLimits};
use edge_kd::source::InputKind;

fn open(name: &str) -> Model {
    Model::open(&fixture(&format!("models/{name}.onnx")), &CardlessOptions::default()).unwrap()
}

fn classifier(model: &Model, kind: EngineKind) -> Classifier {
    let opts = EngineOptions { kind, threads: 1, ort_library: Some(ort_library()) };
    let engine = engine::open(model, &opts).unwrap_or_else(|e| panic!("{kind}: {e}"));
    Classifier::multimodal(model, engine, DecideOptions::default(), ImageLimits::default()).unwrap()
}

fn array(rel: &str) -> NpyArray {
    npy::read_f32(&fixture(rel), usize::MAX).unwrap()
}

fn tensor(a: &NpyArray) -> InputValue<'_> {
    InputValue::Tensor { shape: &a.shape, data: &a.data }
}

/// What the card's decision is on the reference logits.
fn expected(model: &Model, logits: &str) -> Decision {
    Decider::new(&model.card, 3, None).decide(&array(logits).data).unwrap()
}

fn assert_same(got: &Decision, want: &Decision, tol: f32, what: &str) {
    assert_eq!(got.class_index, want.class_index, "{what}");
    assert_eq!(got.verdict, want.verdict, "{what}");
    for (g, w) in got.top.iter().zip(&want.top) {
        assert_eq!(g.0, w.0, "{what}: top classes");
        assert!((g.1 - w.1).abs() <= tol, "{what}: p {} vs {}", g.1, w.1);
    }
}

#[test]
fn a_two_input_model_classifies_tensors_like_onnxruntime_in_python_in_both_engines() {
    let model = open("two_input");
    let names: Vec<&str> = model.card.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["image", "depth"]);
    let (image, depth) = (array("models/two_input.image.npy"), array("models/two_input.depth.npy"));
    let want = expected(&model, "models/two_input.output.npy");
    for kind in EngineKind::ALL {
        let mut c = classifier(&model, kind);
        let (got, _) = c.classify(&[tensor(&image), tensor(&depth)]).unwrap();
        assert_same(&got, &want, edge_kd::parity::tolerance(), &format!("{kind}"));
        // The same tensors fed in the other order are another frame, not the same answer.
        let swapped = c.classify(&[tensor(&depth), tensor(&image)]).unwrap_err();
        assert!(
            swapped.to_string().starts_with("input \"image\": tensor of shape [1, 1, 12, 20]"),
            "{swapped}"
        );
    }
}

#[test]
fn each_input_of_a_two_input_model_is_decoded_and_preprocessed_by_its_own_card_entry() {
    let model = open("two_input");
    // rgb_50x30.png stretched to 16x16 RGB; gray_28.png centre-cropped to 20x12 gray.
    let want = expected(&model, "models/two_input.from_images.output.npy");
    let depth_png = std::fs::read(fixture("images/gray_28.png")).unwrap();
    let mut decoder = ImageFileDecoder::new();
    let depth_frame = decoder.decode_encoded(&depth_png).unwrap();
    for kind in EngineKind::ALL {
        let mut c = classifier(&model, kind);
        let image = InputValue::ImageFile(&fixture("images/rgb_50x30.png"));
        let (from_bytes, times) = c.classify(&[image, InputValue::Encoded(&depth_png)]).unwrap();
        // Preprocessing agrees with the Python reference to ~1e-4 per value; a few of those
        // move a probability by far less than 1e-3.
        assert_same(&from_bytes, &want, 1e-3, &format!("{kind}: file + encoded"));
        assert!(times.preprocess > std::time::Duration::ZERO && times.engine > std::time::Duration::ZERO);
        let (from_frame, _) = c.classify(&[image, InputValue::Frame(&depth_frame)]).unwrap();
        assert_eq!(from_frame, from_bytes, "{kind}: a decoded frame is the same value as its file");
    }
}

#[test]
fn an_absent_input_is_an_error_naming_it_until_the_missing_modality_policy_exists() {
    let model = open("two_input");
    let image = array("models/two_input.image.npy");
    let mut c = classifier(&model, EngineKind::Tract);
    let err = c.classify(&[tensor(&image), InputValue::Absent]).unwrap_err();
    assert!(
        matches!(&err, InputError::OfInput { input, error: ValueError::Absent { modality } }
            if input == "depth" && modality == "depth"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "input \"depth\": no value for this frame (depth), and this edge-kd does not fill missing modalities"
    );
    // A one-input model's absent image is the same error, with no input to name.
    let gray = open("gray28");
    let mut c = classifier(&gray, EngineKind::Tract);
    let err = c.classify(&[InputValue::Absent]).unwrap_err();
    assert!(matches!(err, InputError::Value(ValueError::Absent { .. })), "{err:?}");
}

#[test]
fn tensors_are_checked_against_their_own_input_and_the_error_names_it() {
    let model = open("two_input");
    let (image, depth) = (array("models/two_input.image.npy"), array("models/two_input.depth.npy"));
    let mut c = classifier(&model, EngineKind::Tract);
    // Without the batch dimension is the same input.
    let unbatched = InputValue::Tensor { shape: &depth.shape[1..], data: &depth.data };
    c.classify(&[tensor(&image), unbatched]).unwrap();
    let err = c.classify(&[tensor(&image), tensor(&image)]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "input \"depth\": tensor of shape [1, 3, 16, 16] does not fit the model input [1, 1, 12, 20]"
    );
    let short = InputValue::Tensor { shape: &depth.shape, data: &depth.data[1..] };
    let err = c.classify(&[tensor(&image), short]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "input \"depth\": tensor of shape [1, 1, 12, 20] holds 239 values, not the 240 its shape has"
    );
    let err = c.classify(&[tensor(&image)]).unwrap_err();
    assert_eq!(err.to_string(), "the model takes 2 inputs (image (camera), depth (depth)) but 1 were given");
    // After errors the classifier still classifies.
    c.classify(&[tensor(&image), tensor(&depth)]).unwrap();
}

#[test]
fn the_one_value_entry_points_refuse_a_two_input_model_before_any_frame() {
    let model = open("two_input");
    let engine =
        engine::open(&model, &EngineOptions { kind: EngineKind::Tract, threads: 1, ort_library: None })
            .unwrap();
    let Err(err) = Classifier::new(&model, engine, DecideOptions::default(), ImageLimits::default()) else {
        panic!("a two-input model was accepted by the one-value constructor");
    };
    assert!(matches!(err, ClassifierError::Multimodal { count: 2, .. }));
    assert!(
        err.to_string().contains("two_input.onnx: the model has 2 inputs (image (camera), depth (depth))"),
        "{err}"
    );
    // Built for several inputs, a one-value call says what it lacks.
    let mut c = classifier(&model, EngineKind::Tract);
    let err = c.classify_encoded(&std::fs::read(fixture("images/rgb_50x30.png")).unwrap()).unwrap_err();
    assert!(matches!(err, InputError::ValueCount { expected: 2, got: 1, .. }), "{err:?}");
}

#[test]
fn the_one_value_entry_points_are_the_core_with_one_value() {
    let gray = open("gray28");
    let mut c = classifier(&gray, EngineKind::Tract);
    let png = fixture("images/gray_28.png");
    let bytes = std::fs::read(&png).unwrap();
    let (core, _) = c.classify(&[InputValue::Encoded(&bytes)]).unwrap();
    assert_eq!(c.classify_path(&png, InputKind::Image).unwrap().decision, core);
    assert_eq!(c.classify_encoded(&bytes).unwrap().decision, core);
    let mut decoder = ImageFileDecoder::new();
    let frame = decoder.decode_file(&png).unwrap();
    assert_eq!(c.classify_frame(&frame).unwrap(), core);
    assert_eq!(c.classify_frame_timed(&frame).unwrap().0, core);
    // bench's engine-only loop reruns the frame just preprocessed.
    c.run_engine_on_last_input().unwrap();

    let input = fixture("models/gray28.input.npy");
    let array = array("models/gray28.input.npy");
    let (core, _) = c.classify(&[InputValue::TensorFile(&input)]).unwrap();
    assert_eq!(c.classify_path(&input, InputKind::Tensor).unwrap().decision, core);
    assert_eq!(c.classify_tensor(&array.shape, &array.data).unwrap(), core);
    assert_same(&core, &expected(&gray, "models/gray28.output.npy"), edge_kd::parity::tolerance(), "gray28");
    // A one-input model's errors read as they always have: no input name.
    let wrong = fixture("models/gray28.wrong_shape.npy");
    let err = c.classify_path(&wrong, InputKind::Tensor).unwrap_err();
    assert_eq!(err.to_string(), "tensor of shape [1, 1, 28, 27] does not fit the model input [1, 1, 28, 28]");
}
