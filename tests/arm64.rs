//! The ARM64 build gives the same answers as this one: cross-built for
//! aarch64-unknown-linux-gnu and run under qemu-user on the shipped samples.
//! (Timings under emulation mean nothing; ARM latency is measured on a real box.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const TARGET: &str = "aarch64-unknown-linux-gnu";
const SYSROOT: &str = "/usr/aarch64-linux-gnu";

fn require(ok: bool, what: &str) {
    assert!(ok, "{what} is missing: run `bash .ci/setup` (installs the ARM64 toolchain and qemu-user)");
}

/// Builds the ARM64 binary in its own target folder, so it never waits on the lock of
/// the build that is running these tests. The folder is outside the checkout
/// (`$EDGE_KD_CROSS_TARGET_DIR`, default `~/.cache/edge-kd/cross-target`), as the fuzz
/// build's is: the cold cross build of every dependency is the longest step of CI on 2
/// cores (13 min), and CI's fresh clones on one machine then share it.
fn arm64_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = std::env::var_os("EDGE_KD_CROSS_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| root().join("target"));
        cache.join("edge-kd/cross-target")
    });
    let status = Command::new(&cargo)
        .current_dir(root())
        .args(["build", "--quiet", "--bin", "edge-kd", "--target", TARGET])
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cross build for {TARGET} failed (see above)");
    target_dir.join(TARGET).join("debug/edge-kd")
}

fn qemu(binary: &Path) -> Command {
    let mut cmd = Command::new("qemu-aarch64");
    cmd.args(["-L", SYSROOT]).arg(binary).env_remove("ORT_DYLIB_PATH").env("NO_COLOR", "1");
    cmd
}

fn labels(output: &std::process::Output) -> Vec<(String, u64, f64)> {
    stdout_lines(output)
        .iter()
        .map(|l| {
            (
                l["file"].as_str().unwrap().to_string(),
                l["class_index"].as_u64().unwrap(),
                l["confidence"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn arm64_binary_labels_the_samples_like_x86_64() {
    if std::env::var_os("EDGE_KD_SKIP_ARM64").is_some() {
        eprintln!("EDGE_KD_SKIP_ARM64 is set: the ARM64 check did not run (CI always runs it)");
        return;
    }
    require(
        Command::new("qemu-aarch64").arg("--version").output().is_ok(),
        "qemu-aarch64 (Debian qemu-user)",
    );
    require(
        Path::new(SYSROOT).join("lib/ld-linux-aarch64.so.1").exists(),
        "the aarch64 C library (libc6-dev-arm64-cross)",
    );
    require(Command::new("aarch64-linux-gnu-gcc").arg("--version").output().is_ok(), "aarch64-linux-gnu-gcc");

    let arm = arm64_binary();
    let file =
        Command::new("file").arg(&arm).output().map(|o| String::from_utf8_lossy(&o.stdout).to_string());
    if let Ok(description) = file {
        assert!(description.contains("aarch64") || description.contains("ARM aarch64"), "{description}");
    }

    let native =
        edge_kd().current_dir(root()).args(["run", "--format", "jsonl", "models/samples"]).output().unwrap();
    assert!(native.status.success());
    let emulated =
        qemu(&arm).current_dir(root()).args(["run", "--format", "jsonl", "models/samples"]).output().unwrap();
    assert!(emulated.status.success(), "{}", String::from_utf8_lossy(&emulated.stderr));
    let (native, emulated) = (labels(&native), labels(&emulated));
    assert_eq!(native.len(), 12);
    assert_eq!(native.len(), emulated.len());
    for (n, e) in native.iter().zip(&emulated) {
        assert_eq!((&n.0, n.1), (&e.0, e.1), "same file, same label");
        assert!((n.2 - e.2).abs() < 1e-4, "{}: confidence {} vs {}", n.0, n.2, e.2);
    }

    // On a box, `bench` needs nothing but the binary (the student is embedded).
    let alone = tempfile::tempdir().unwrap();
    let copy = alone.path().join("edge-kd");
    std::fs::copy(&arm, &copy).unwrap();
    let bench = qemu(&copy)
        .current_dir(alone.path())
        .env("HOME", alone.path())
        .env("EDGE_KD_PYTHON", "/nonexistent")
        .env_remove("VIRTUAL_ENV")
        .args(["bench", "--engine", "tract", "--iters", "3", "--warmup", "1", "--threads", "1"])
        .output()
        .unwrap();
    assert!(bench.status.success(), "{}", String::from_utf8_lossy(&bench.stderr));
    assert!(String::from_utf8_lossy(&bench.stdout).contains("aarch64"));
}
