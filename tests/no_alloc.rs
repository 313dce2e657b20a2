//! A warm preprocessor allocates nothing per frame: every buffer it needs is reserved
//! on the first frame of a given size and reused after.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use edge_kd::model::Model;
use edge_kd::preprocess::{Frame, PixelFormat, Preprocessor, Samples};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn warm_preprocessing_does_not_allocate() {
    let model = Model::embedded_default().unwrap();
    let mut spec = model.card.inputs[0].clone();
    let camera = vec![90u8; 640 * 480 * 3];
    let frame = Frame { width: 640, height: 480, format: PixelFormat::Rgb, samples: Samples::U8(&camera) };
    for resize in
        [edge_kd::card::Resize::Stretch, edge_kd::card::Resize::CenterCrop, edge_kd::card::Resize::Letterbox]
    {
        spec.resize = resize;
        let mut pre = Preprocessor::new(&spec);
        pre.run(&frame).unwrap();
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for _ in 0..10 {
            pre.run(&frame).unwrap();
        }
        assert_eq!(ALLOCATIONS.load(Ordering::SeqCst) - before, 0, "{resize:?}: allocations per warm frame");
    }
}
