//! A warm preprocessor reserves nothing per frame: every buffer it owns is reserved on the first
//! frame of a given size and reused after, and a frame at the model's size allocates nothing.
//!
//! Not yet allocation-free: a frame that must be resized. fast_image_resize 6.1 rebuilds its
//! filter coefficient tables on every call (`precompute_coefficients` is crate-private), about
//! 2·(W + H) small vectors, all freed before it returns. The test pins that count, so any
//! allocation of ours coming back on the warm path fails it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use edge_kd::model::Model;
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
fn warm_resizing_reserves_nothing_and_allocates_only_the_resamplers_tables() {
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
