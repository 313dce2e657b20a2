//! Shared by the integration tests: where things are, and the ONNX Runtime library.
#![allow(dead_code)]

pub mod daemon;

use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

pub fn samples() -> PathBuf {
    root().join("models/samples")
}

/// The ONNX Runtime library the tests use: found like the binary finds it, or in the
/// repository's `.venv` that `.ci/setup` creates. Both engines are part of what the
/// tests prove, so its absence is a failure with the command that fixes it.
pub fn ort_library() -> PathBuf {
    if let Ok(found) = edge_kd::engine::ort_library::locate(None) {
        return found.path;
    }
    let lib = root().join(".venv/lib");
    let venv = std::fs::read_dir(&lib).ok().and_then(|rd| {
        rd.filter_map(|e| e.ok())
            .map(|e| e.path().join("site-packages/onnxruntime/capi"))
            .find_map(|capi| edge_kd::engine::ort_library::library_in(&capi))
    });
    venv.unwrap_or_else(|| {
        panic!(
            "ONNX Runtime not found: run `bash .ci/setup` (creates .venv with onnxruntime) \
             or set ORT_DYLIB_PATH to libonnxruntime.so"
        )
    })
}

/// The `edge-kd` binary with ONNX Runtime reachable and a predictable environment.
pub fn edge_kd() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("edge-kd").expect("binary built");
    cmd.env("ORT_DYLIB_PATH", ort_library()).env("NO_COLOR", "1").env_remove("RUST_LOG");
    cmd
}

pub fn stdout_lines(output: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The true class slug in a sample's name, `0019-t-shirt-top.png` → `t-shirt-top`.
pub fn sample_slug(path: &Path) -> String {
    let stem = path.file_stem().unwrap().to_str().unwrap();
    stem.split_once('-').unwrap().1.to_string()
}

pub fn slug(label: &str) -> String {
    let mut s = String::new();
    for c in label.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c);
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    s.trim_matches('-').to_string()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
