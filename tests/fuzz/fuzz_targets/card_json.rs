#![no_main]
// Body: tests/fuzz/harness.rs `card_json` (also replayed by tests/fuzz_regressions.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| edge_kd_fuzz::card_json(data));
