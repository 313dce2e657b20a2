//! A warm preprocessor reserves nothing per frame: every buffer it owns is reserved on the first
//! frame of a given size and reused after, and a frame at the model's size allocates nothing.
//!
//! Not yet allocation-free: a frame that must be resized. fast_image_resize 6.1 rebuilds its
//! filter coefficient tables on every call (`precompute_coefficients` is crate-private), about
//! 2·(W + H) small vectors, all freed before it returns. The test pins that count, so any
//! allocation of ours coming back on the warm path fails it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use edge_kd::model::Model;
use edge_kd::preprocess::{Frame, PixelFormat, Preprocessor, Samples};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        LIVE_BYTES.fetch_add(layout.size(), Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        LIVE_BYTES.fetch_add(new_size, Ordering::SeqCst);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counters are process-wide: the tests take turns so one's allocations do not land in another's.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Allocations and net live bytes of `n` warm runs.
fn warm(pre: &mut Preprocessor, frame: &Frame, n: usize) -> (usize, isize) {
    pre.run(frame).unwrap();
    let (count, live) = (ALLOCATIONS.load(Ordering::SeqCst), LIVE_BYTES.load(Ordering::SeqCst));
    for _ in 0..n {
        pre.run(frame).unwrap();
    }
    (ALLOCATIONS.load(Ordering::SeqCst) - count, LIVE_BYTES.load(Ordering::SeqCst) as isize - live as isize)
}

#[test]
fn a_frame_at_the_models_size_allocates_nothing() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
fn warm_resizing_reserves_nothing_and_allocates_only_the_resamplers_tables() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let model = Model::embedded_default().unwrap();
    let mut spec = model.card.inputs[0].clone();
    let camera = vec![90u8; 640 * 480 * 3];
    let frame = Frame { width: 640, height: 480, format: PixelFormat::Rgb, samples: Samples::U8(&camera) };
    for resize in
        [edge_kd::card::Resize::Stretch, edge_kd::card::Resize::CenterCrop, edge_kd::card::Resize::Letterbox]
    {
        spec.resize = resize;
        let mut pre = Preprocessor::new(&spec);
        let (once, live) = warm(&mut pre, &frame, 1);
        let (ten, live10) = warm(&mut pre, &frame, 10);
        assert_eq!((live, live10), (0, 0), "{resize:?}: bytes kept by warm frames");
        assert_eq!(ten, 10 * once, "{resize:?}: allocations vary between warm frames");
        // 28x28 output from 640x480: fast_image_resize's per-call coefficient tables.
        let (h, w) = (spec.height(), spec.width());
        assert!(once <= 8 * (h + w) + 16, "{resize:?}: {once} allocations per warm frame");
    }
}
