//! A warm preprocessor allocates nothing per frame: every buffer it owns, and the resampler's
//! filter coefficients (kept by edge-kd's copy of fast_image_resize, deploy/fast_image_resize),
//! are made on the first frame of a given size and format and reused after. Filling a missing
//! input and picking the calibration of the inputs present allocate nothing either.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use edge_kd::classify::{Classifier, DecideOptions, InputValue};
use edge_kd::engine::{Engine, EngineError, EngineKind};
use edge_kd::model::{CardlessOptions, Model};
use edge_kd::preprocess::decode::ImageLimits;
use edge_kd::preprocess::{Frame, PixelFormat, Preprocessor, Samples};

struct Counting;

// Per thread: the test harness's own threads (its output, the other test) allocate while a
// test measures. Const-initialised cells with no destructor: reading them never allocates.
thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn count(allocations: usize, bytes: isize) {
    ALLOCATIONS.with(|a| a.set(a.get() + allocations));
    LIVE_BYTES.with(|l| l.set(l.get() + bytes));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(1, layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(0, -(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(1, new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and net live bytes of `n` warm runs.
fn warm(pre: &mut Preprocessor, frame: &Frame, n: usize) -> (usize, isize) {
    pre.run(frame).unwrap();
    let (count, live) = (ALLOCATIONS.with(Cell::get), LIVE_BYTES.with(Cell::get));
    for _ in 0..n {
        pre.run(frame).unwrap();
    }
    (ALLOCATIONS.with(Cell::get) - count, LIVE_BYTES.with(Cell::get) - live)
}

#[test]
fn a_frame_at_the_models_size_allocates_nothing() {
    let model = Model::embedded_default().unwrap();
    let spec = model.card.inputs[0].clone();
    let (h, w) = (spec.height(), spec.width());
    for format in [PixelFormat::Gray, PixelFormat::Rgb, PixelFormat::Rgba] {
        let px = vec![90u8; h * w * format.channels()];
        let frame = Frame { width: w, height: h, format, samples: Samples::U8(&px) };
        let mut pre = Preprocessor::new(&spec);
        assert_eq!(warm(&mut pre, &frame, 10), (0, 0), "{format:?}: allocations, bytes per 10 warm frames");
    }
}

#[test]
fn a_warm_resized_frame_allocates_nothing_in_any_mode_or_format() {
    let model = Model::embedded_default().unwrap();
    let mut spec = model.card.inputs[0].clone();
    let (w, h) = (640, 480);
    let camera8 = vec![90u8; w * h * 4];
    let camera16 = vec![23130u16; w * h];
    let frames = [
        Frame { width: w, height: h, format: PixelFormat::Gray, samples: Samples::U8(&camera8[..w * h]) },
        Frame { width: w, height: h, format: PixelFormat::Rgb, samples: Samples::U8(&camera8[..w * h * 3]) },
        Frame { width: w, height: h, format: PixelFormat::Rgba, samples: Samples::U8(&camera8) },
        Frame { width: w, height: h, format: PixelFormat::Gray, samples: Samples::U16(&camera16) },
    ];
    for resize in
        [edge_kd::card::Resize::Stretch, edge_kd::card::Resize::CenterCrop, edge_kd::card::Resize::Letterbox]
    {
        spec.resize = resize;
        for frame in &frames {
            let mut pre = Preprocessor::new(&spec);
            let what = format!("{resize:?}, {:?} {}", frame.format, matches!(frame.samples, Samples::U16(_)));
            assert_eq!(warm(&mut pre, frame, 10), (0, 0), "{what}: allocations, bytes per 10 warm frames");
        }
    }
}

#[test]
fn frames_of_two_sizes_in_turn_allocate_nothing_once_both_were_seen() {
    // A box with two cameras on one model: the resampler keeps both geometries' coefficients.
    let model = Model::embedded_default().unwrap();
    let spec = model.card.inputs[0].clone();
    let vga = vec![90u8; 640 * 480 * 3];
    let hd = vec![90u8; 1280 * 720 * 3];
    let a = Frame { width: 640, height: 480, format: PixelFormat::Rgb, samples: Samples::U8(&vga) };
    let b = Frame { width: 1280, height: 720, format: PixelFormat::Rgb, samples: Samples::U8(&hd) };
    let mut pre = Preprocessor::new(&spec);
    pre.run(&b).unwrap();
    pre.run(&a).unwrap();
    let (count, live) = (ALLOCATIONS.with(Cell::get), LIVE_BYTES.with(Cell::get));
    for _ in 0..5 {
        pre.run(&b).unwrap();
        pre.run(&a).unwrap();
    }
    let spent = (ALLOCATIONS.with(Cell::get) - count, LIVE_BYTES.with(Cell::get) - live);
    assert_eq!(spent, (0, 0), "allocations, bytes of 10 warm frames of two sizes in turn");
}

/// An engine that computes nothing, so that what is counted is the classifier around it.
struct Fixed;

impl Engine for Fixed {
    fn kind(&self) -> EngineKind {
        EngineKind::Tract
    }
    fn output_len(&self) -> usize {
        3
    }
    fn run(&mut self, _inputs: &[&[f32]], out: &mut Vec<f32>) -> Result<(), EngineError> {
        out.clear();
        out.extend_from_slice(&[0.5, 0.25, 0.125]);
        Ok(())
    }
}

#[test]
fn a_missing_optional_input_and_its_calibration_cost_a_warm_frame_nothing() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/learned_token.onnx");
    let model = Model::open(&path, &CardlessOptions::default()).unwrap();
    let mut classifier =
        Classifier::new(&model, Box::new(Fixed), DecideOptions::default(), ImageLimits::default()).unwrap();
    let (rgb, height) = (&model.card.inputs[0], &model.card.inputs[1]);
    let rgb = vec![0.5f32; rgb.tensor_len()];
    let height = vec![0.5f32; height.tensor_len()];
    let (rgb_shape, height_shape) = (model.card.inputs[0].shape.clone(), model.card.inputs[1].shape.clone());
    let both = [
        InputValue::Tensor { shape: &rgb_shape, data: &rgb },
        InputValue::Tensor { shape: &height_shape, data: &height },
    ];
    let rgb_only = [InputValue::Tensor { shape: &rgb_shape, data: &rgb }, InputValue::Absent];
    let mut frames = |values: &[InputValue], n: usize| {
        classifier.classify(values).unwrap();
        let (count, live) = (ALLOCATIONS.with(Cell::get), LIVE_BYTES.with(Cell::get));
        for _ in 0..n {
            let (decision, _) = classifier.classify(values).unwrap();
            assert!(decision.top.len() == 3);
        }
        (ALLOCATIONS.with(Cell::get) - count, LIVE_BYTES.with(Cell::get) - live)
    };
    let present = frames(&both, 10);
    let missing = frames(&rgb_only, 10);
    // Each decision's top-k list is its one allocation, freed with it.
    assert_eq!(present, (10, 0), "allocations, bytes per 10 warm frames with every input");
    assert_eq!(missing, present, "allocations, bytes per 10 warm frames with the height map missing");
}
