#![no_main]
// Body: tests/fuzz/harness.rs `infer_body` (also replayed by tests/fuzz_regressions.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| edge_kd_fuzz::infer_body(data));
