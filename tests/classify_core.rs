//! The classify core: one value per card input, one engine run, one decision. A two-input
//! model (a camera image and a depth map, `tests/fixtures/models/two_input.onnx`) runs end to
//! end in tract and ONNX Runtime; a missing optional input is filled as its card says (a
//! learned token, `learned_token.onnx`; zeros and a mask, `masked.onnx`) and decided by the
//! calibration of the inputs present; missing required and misshapen values are errors naming
//! their input; the one-value entry points are the core with one value.

mod common;

use common::*;
use edge_kd::classify::{Classifier, ClassifierError, DecideOptions, InputError, InputValue, ValueError};
use edge_kd::decide::{CalibrationUsed, Decider, Decision, Verdict};
use edge_kd::engine::{self, EngineKind, EngineOptions};
use edge_kd::model::{CardlessOptions, Model};
use edge_kd::npy::{self, NpyArray};
use edge_kd::preprocess::PixelFormat;
use edge_kd::preprocess::decode::{ImageFileDecoder, ImageLimits};
use edge_kd::present::Present;

fn open(name: &str) -> Model {
    Model::open(&fixture(&format!("models/{name}.onnx")), &CardlessOptions::default()).unwrap()
}

fn classifier(model: &Model, kind: EngineKind) -> Classifier {
    let opts = EngineOptions { kind, threads: 1, ort_library: Some(ort_library()) };
    let engine = engine::open(model, &opts).unwrap_or_else(|e| panic!("{kind}: {e}"));
    Classifier::new(model, engine, DecideOptions::default(), ImageLimits::default()).unwrap()
}

fn array(rel: &str) -> NpyArray {
    npy::read_f32(&fixture(rel), usize::MAX).unwrap()
}

fn tensor(a: &NpyArray) -> InputValue<'_> {
    InputValue::Tensor { shape: &a.shape, data: &a.data }
}

/// What the card's decision is on the reference logits.
fn expected(model: &Model, logits: &str) -> Decision {
    let every = Present::all(model.card.inputs.len());
    Decider::new(&model.card, 3, None).decide(&array(logits).data, every).unwrap()
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
fn an_absent_required_input_is_an_error_naming_it() {
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
        "input \"depth\": no value for this frame (depth), and the card does not make this input optional"
    );
    // A one-input model's absent image is the same error, with no input to name.
    let gray = open("gray28");
    let mut c = classifier(&gray, EngineKind::Tract);
    let err = c.classify(&[InputValue::Absent]).unwrap_err();
    assert!(matches!(err, InputError::Value(ValueError::Absent { .. })), "{err:?}");
    // The learned-token model's camera image is required too.
    let model = open("learned_token");
    let mut c = classifier(&model, EngineKind::Tract);
    let height = InputValue::ImageFile(&fixture("images/gray16_20x20.png"));
    let err = c.classify(&[InputValue::Absent, height]).unwrap_err();
    assert!(err.to_string().starts_with("input \"rgb\": no value for this frame (camera)"), "{err}");
}

/// softmax(logits / t), in class order.
fn probabilities(logits: &[f32], t: f32) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|l| ((l - max) / t).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// Every class's probability in `d` (top-k is every class here) against the reference logits at
/// temperature `t`: the logits match up to a constant, and `t` is the one that decided.
fn assert_probabilities(d: &Decision, reference: &[f32], t: f32, tol: f32, what: &str) {
    assert_eq!(d.top.len(), reference.len(), "{what}: every class is in top");
    let want = probabilities(reference, t);
    for &(class, p) in &d.top {
        assert!((p - want[class]).abs() <= tol, "{what}: class {class}: p {p} vs {} at T={t}", want[class]);
    }
}

#[test]
fn a_missing_optional_input_gets_its_learned_token_and_the_calibration_of_the_inputs_present() {
    let model = open("learned_token");
    let rgb = InputValue::ImageFile(&fixture("images/rgb_50x30.png"));
    let height = InputValue::ImageFile(&fixture("images/gray16_20x20.png"));
    let both = array("models/learned_token.from_images.output.npy").data;
    let rgb_only = array("models/learned_token.rgb_only.output.npy").data;
    assert!(common::max_abs_diff(&both, &rgb_only) > 0.01, "the fixture's token changes the logits");
    for kind in EngineKind::ALL {
        let mut c = classifier(&model, kind);
        let (d, _) = c.classify(&[rgb, height]).unwrap();
        assert_probabilities(&d, &both, 1.5, 1e-3, &format!("{kind}: rgb+height"));
        assert_eq!((d.present, d.calibration), (Present::all(2), CalibrationUsed::Full), "{kind}");
        assert_eq!(d.threshold, Some(0.95), "{kind}: the top level's threshold for dent");
        // Height missing: zeros and height_present = 0 give the reference logits, and the rgb-only
        // subset (T = 3.0, accept 0.4) decides.
        let (d, _) = c.classify(&[rgb, InputValue::Absent]).unwrap();
        assert_probabilities(&d, &rgb_only, 3.0, 1e-3, &format!("{kind}: rgb"));
        assert_eq!((d.present, d.calibration), (Present::default().with(0), CalibrationUsed::Subset(0)));
        assert_eq!(d.threshold, Some(0.4), "{kind}: the subset's threshold");
        // And back: nothing of the missing frame stays behind.
        let (d, _) = c.classify(&[rgb, height]).unwrap();
        assert_probabilities(&d, &both, 1.5, 1e-3, &format!("{kind}: rgb+height again"));
    }
}

#[test]
fn every_reference_sample_of_the_learned_token_model_is_reproduced_with_the_height_present_or_absent() {
    let model = open("learned_token");
    let dir = fixture("models/learned_token.reference");
    for kind in EngineKind::ALL {
        let mut c = classifier(&model, kind);
        for k in 0..4 {
            let read =
                |name: &str| npy::read_f32(&dir.join(format!("input_{k}.{name}.npy")), usize::MAX).unwrap();
            let (rgb, height, present) = (read("rgb"), read("height"), read("height_present"));
            let output = npy::read_f32(&dir.join(format!("output_{k}.npy")), usize::MAX).unwrap().data;
            let here = present.data == [1.0];
            let value = if here { tensor(&height) } else { InputValue::Absent };
            let (d, _) = c.classify(&[tensor(&rgb), value]).unwrap();
            let t = if here { 1.5 } else { 3.0 };
            assert_probabilities(&d, &output, t, 1e-5, &format!("{kind}: sample {k}"));
        }
    }
}

#[test]
fn under_zero_fill_a_missing_input_is_zeros_the_mask_says_so_and_an_uncalibrated_set_goes_to_review() {
    let model = open("masked");
    let names: Vec<&str> = model.card.value_inputs().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["image", "depth"], "the mask input takes no value");
    let image = InputValue::ImageFile(&fixture("images/rgb_50x30.png"));
    let depth = InputValue::ImageFile(&fixture("images/gray_28.png"));
    for kind in EngineKind::ALL {
        let mut c = classifier(&model, kind);
        let (d, _) = c.classify(&[image, depth]).unwrap();
        let both = array("models/masked.from_images.output.npy").data;
        assert_probabilities(&d, &both, 2.0, 1e-3, &format!("{kind}: image+depth"));
        assert_eq!((d.calibration, d.threshold), (CalibrationUsed::Full, Some(0.4)), "{kind}");
        let (d, _) = c.classify(&[image, InputValue::Absent]).unwrap();
        let image_only = array("models/masked.image_only.output.npy").data;
        // The card calibrates only frames with every input: raw softmax, always review.
        assert_probabilities(&d, &image_only, 1.0, 1e-3, &format!("{kind}: image"));
        assert_eq!(
            (d.calibration, d.threshold, d.verdict),
            (CalibrationUsed::NoneForPresent, None, Verdict::Review)
        );
        assert_eq!(d.present, Present::default().with(0).with(2), "{kind}: image and the mask");
        let err = c.classify(&[image, depth, depth]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the model takes 2 inputs (image (camera), depth (depth)) but 3 were given"
        );
    }
}

#[test]
fn a_mask_input_needs_a_channel_per_optional_input() {
    let mut model = open("masked");
    let engine =
        engine::open(&model, &EngineOptions { kind: EngineKind::Tract, threads: 1, ort_library: None })
            .unwrap();
    // The depth map made required: the one-channel mask has no optional input to mark.
    model.card.inputs[1].optional = false;
    let Err(err) = Classifier::new(&model, engine, DecideOptions::default(), ImageLimits::default()) else {
        panic!("a mask without its optional input was accepted");
    };
    assert!(matches!(err, ClassifierError::MaskChannels { channels: 1, optional: 0, .. }), "{err:?}");
    assert!(err.to_string().ends_with(
        "masked.onnx: the mask input \"depth_mask\" has 1 channel(s) but the card has 0 optional input(s); \
         edge-kd fills one channel per optional input (1 present, 0 missing)"
    ), "{err}");
}

#[test]
fn a_colour_image_for_a_gray_measurement_is_that_inputs_error_and_a_camera_input_converts() {
    let model = open("learned_token");
    let mut c = classifier(&model, EngineKind::Tract);
    let rgb = InputValue::ImageFile(&fixture("images/rgb_50x30.png"));
    let err = c.classify(&[rgb, rgb]).unwrap_err();
    assert!(
        matches!(&err, InputError::OfInput { input, error: ValueError::ColourForMeasurement { format: PixelFormat::Rgb, .. } } if input == "height"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "input \"height\": a colour image (Rgb) where a gray height map is expected (edge-kd converts colour to gray for camera inputs only)"
    );
    // Undecodable and truncated height maps are errors of that input too, and the next frame runs.
    for bad in ["images/corrupt.png", "images/truncated.png", "images/notes.txt"] {
        let err = c.classify(&[rgb, InputValue::ImageFile(&fixture(bad))]).unwrap_err();
        assert!(err.to_string().starts_with("input \"height\": "), "{bad}: {err}");
    }
    c.classify(&[rgb, InputValue::ImageFile(&fixture("images/gray_28.png"))]).unwrap();
    // A gray camera input still takes colour files (gray28's card: modality camera).
    let gray = open("gray28");
    let mut c = classifier(&gray, EngineKind::Tract);
    c.classify(&[rgb]).unwrap();
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
fn a_two_input_model_given_one_value_says_what_it_lacks() {
    let model = open("two_input");
    let mut c = classifier(&model, EngineKind::Tract);
    let bytes = std::fs::read(fixture("images/rgb_50x30.png")).unwrap();
    let err = c.classify(&[InputValue::Encoded(&bytes)]).unwrap_err();
    assert!(matches!(err, InputError::ValueCount { expected: 2, got: 1, .. }), "{err:?}");
}

#[test]
fn every_kind_of_value_is_the_same_frame_to_the_core() {
    let gray = open("gray28");
    let mut c = classifier(&gray, EngineKind::Tract);
    let png = fixture("images/gray_28.png");
    let bytes = std::fs::read(&png).unwrap();
    let (core, _) = c.classify(&[InputValue::Encoded(&bytes)]).unwrap();
    assert_eq!(c.classify(&[InputValue::ImageFile(&png)]).unwrap().0, core);
    let mut decoder = ImageFileDecoder::new();
    let frame = decoder.decode_file(&png).unwrap();
    assert_eq!(c.classify(&[InputValue::Frame(&frame)]).unwrap().0, core);
    assert_eq!(c.classify_timed(&[InputValue::ImageFile(&png)]).unwrap().decision, core);
    // bench's engine-only loop reruns the frame just preprocessed.
    c.run_engine_on_last_input().unwrap();

    let input = fixture("models/gray28.input.npy");
    let array = array("models/gray28.input.npy");
    let (core, _) = c.classify(&[InputValue::TensorFile(&input)]).unwrap();
    assert_eq!(c.classify(&[InputValue::Tensor { shape: &array.shape, data: &array.data }]).unwrap().0, core);
    assert_same(&core, &expected(&gray, "models/gray28.output.npy"), edge_kd::parity::tolerance(), "gray28");
    // A one-input model's errors read as they always have: no input name.
    let wrong = fixture("models/gray28.wrong_shape.npy");
    let err = c.classify(&[InputValue::TensorFile(&wrong)]).unwrap_err();
    assert_eq!(err.to_string(), "tensor of shape [1, 1, 28, 27] does not fit the model input [1, 1, 28, 28]");
}
