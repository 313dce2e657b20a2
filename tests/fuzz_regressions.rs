//! Every input the fuzzers found a bug with, replayed under plain `cargo test`: each file in
//! `tests/fixtures/fuzz/<target>/` goes through the fuzz target's own body
//! (`tests/fuzz/harness.rs`, included here as it is), so a fixed crash stays fixed without
//! cargo-fuzz or a nightly compiler. The seed corpora (`tests/fuzz/corpus/`) are replayed
//! too, so that a harness that no longer fits the code fails here first.
//!
//! A panic fails the test and names the file. So does an allocation past the fuzzers'
//! `-malloc_limit_mb` (256 MiB): this binary's allocator refuses it, which aborts the
//! process, after writing the file's name to stderr.

#[path = "fuzz/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// The fuzzers' `-malloc_limit_mb`, in bytes.
const CEILING: usize = 256 << 20;

/// The file being replayed (leaked bytes), for the allocator's message.
static CURRENT: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static CURRENT_LEN: AtomicUsize = AtomicUsize::new(0);

struct Ceiling;

impl Ceiling {
    /// Says which file asked (one write, so other tests' output does not cut into it) and
    /// refuses: the caller then aborts with "memory allocation of N bytes failed".
    fn refuse(size: usize) -> *mut u8 {
        let mut message = [0u8; 4096];
        let mut len = 0;
        let mut put = |bytes: &[u8]| {
            let n = bytes.len().min(message.len() - len);
            message[len..len + n].copy_from_slice(&bytes[..n]);
            len += n;
        };
        put(b"\nfuzz_regressions: an allocation past the 256 MiB ceiling (");
        let mut digits = [0u8; 20];
        let (mut n, mut at) = (size, digits.len());
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        put(&digits[at..]);
        put(b" bytes) while replaying ");
        let (ptr, path_len) = (CURRENT.load(Ordering::SeqCst), CURRENT_LEN.load(Ordering::SeqCst));
        if !ptr.is_null() {
            // SAFETY: CURRENT points at `path_len` leaked bytes that are never freed.
            put(unsafe { std::slice::from_raw_parts(ptr, path_len) });
        }
        put(b"\n");
        // SAFETY: writes a valid buffer to stderr; nothing is allocated inside the allocator.
        unsafe { libc::write(2, message.as_ptr().cast(), len) };
        std::ptr::null_mut()
    }
}

// SAFETY: forwards to the system allocator; only refuses (returns null for) large requests.
unsafe impl GlobalAlloc for Ceiling {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > CEILING {
            return Self::refuse(layout.size());
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > CEILING {
            return Self::refuse(layout.size());
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > CEILING {
            return Self::refuse(new_size);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Ceiling = Ceiling;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.map(|e| e.unwrap().path()).filter(|p| p.is_file() && !is_note(p)).collect();
    files.sort();
    files
}

/// `README.md` or `*.md` files beside the inputs describe them.
fn is_note(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "md")
}

/// Replays every file in `<base>/<target>/` through its target; the failures, described.
fn replay(base: &Path) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut count = 0;
    for (name, body) in harness::TARGETS {
        for file in files(&base.join(name)) {
            let data = std::fs::read(&file).unwrap();
            let shown: &'static [u8] = Box::leak(file.display().to_string().into_bytes().into_boxed_slice());
            CURRENT_LEN.store(shown.len(), Ordering::SeqCst);
            CURRENT.store(shown.as_ptr().cast_mut(), Ordering::SeqCst);
            count += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| body(&data))) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{name}: {}: {message}", file.display()));
            }
        }
    }
    (count, failures)
}

#[test]
fn every_input_the_fuzzers_found_a_bug_with_stays_fixed() {
    let (count, failures) = replay(&root().join("tests/fixtures/fuzz"));
    assert!(count > 0, "tests/fixtures/fuzz/ holds no inputs");
    assert!(failures.is_empty(), "{} of {count} inputs fail again:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_seed_corpora_replay_cleanly() {
    let (count, failures) = replay(&root().join("tests/fuzz/corpus"));
    assert!(count >= harness::TARGETS.len(), "every target has seeds");
    assert!(failures.is_empty(), "{} of {count} seeds fail:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_target_has_a_fuzz_target_and_seeds() {
    for (name, _) in harness::TARGETS {
        let target = root().join(format!("tests/fuzz/fuzz_targets/{name}.rs"));
        let source = std::fs::read_to_string(&target).unwrap_or_else(|e| panic!("{}: {e}", target.display()));
        assert!(
            source.contains(&format!("edge_kd_fuzz::{name}(")),
            "{} calls another body",
            target.display()
        );
        assert!(!files(&root().join("tests/fuzz/corpus").join(name)).is_empty(), "{name} has no seeds");
    }
}
