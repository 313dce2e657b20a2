//! `edge-kd doctor`: what this box has.

use std::path::PathBuf;

use edge_kd::doctor;
use edge_kd::engine::ort_library::NotFound;

use crate::{Failure, exit};

/// Say which engines work on this box, where ONNX Runtime is (or why not), cameras, Python
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  ORT_DYLIB_PATH=/opt/ort/libonnxruntime.so.1.20.1 edge-kd doctor")]
pub struct Args {
    /// ONNX Runtime shared library to check (else ORT_DYLIB_PATH, then a pip-installed onnxruntime).
    #[arg(long, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<u8, Failure> {
    let r = doctor::examine(args.ort_lib.as_deref());
    let m = &r.machine;
    println!("edge-kd {}", env!("CARGO_PKG_VERSION"));
    println!(
        "box        {} ({} {}, {} logical CPUs{})",
        m.cpu,
        m.os,
        m.arch,
        m.logical_cpus,
        m.memory_mib.map_or(String::new(), |mib| format!(", {mib} MiB"))
    );
    println!("\nengines");
    for check in &r.engines {
        match &check.status {
            Ok(detail) => println!("  {:<6} usable: {detail}", check.engine.as_str()),
            Err(why) => println!("  {:<6} NOT usable: {why}", check.engine.as_str()),
        }
    }
    if !r.ort.built {
        println!("  (this build has no ONNX Runtime support: rebuild with `cargo build --features ort`)");
    } else if r.ort.located.is_err() {
        // The engine line says why; the remedy gets a line of its own, easy to find.
        println!("  to use ort: {}", NotFound::advice());
    }
    println!("\ncameras");
    if r.cameras.is_empty() {
        println!("  none (/dev/video* absent)");
    }
    for cam in &r.cameras {
        println!("  {}", cam.display());
    }
    println!("\npython (for `edge-kd distill`)");
    match &r.python {
        Ok(env) => println!(
            "  {} — Python {}, PyTorch {}{}, edgekd_train installed",
            env.python.display(),
            env.version,
            env.torch,
            if env.cuda { " (CUDA available)" } else { " (no CUDA: training runs on the CPU)" }
        ),
        Err(why) => println!("  not ready: {why}"),
    }
    Ok(exit::OK)
}
