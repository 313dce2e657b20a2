#![allow(clippy::all)]
#![allow(deref_nullptr)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(non_upper_case_globals)]

// The upstream crate runs bindgen (and so needs libclang) in its build script. These files are
// that build script's output for each target edge-kd ships, made by `regenerate.sh`: struct
// layouts differ between targets, so each target has its own file.
#[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
include!("../bindings/x86_64-unknown-linux-gnu.rs");

#[cfg(all(target_os = "linux", target_arch = "aarch64", target_env = "gnu"))]
include!("../bindings/aarch64-unknown-linux-gnu.rs");

#[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"), target_env = "gnu")))]
compile_error!(
    "edge-kd ships V4L2 bindings for x86_64- and aarch64-unknown-linux-gnu only: generate this \
     target's with `bash deploy/v4l2-sys-mit/regenerate.sh TARGET` (needs libclang), or build \
     without cameras: `cargo build --no-default-features --features ort`"
);
