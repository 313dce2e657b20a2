//! edge-kd: run distilled, calibrated ONNX students on CPU boxes next to a line.
//!
//! A frame flows one way through these modules:
//! `source` → `preprocess` → `engine` → `decide` → `record`,
//! driven by `classify`; the `card` (read by `model` from the ONNX file) says how.
//! `bench` and `doctor` measure and inspect the same chain; `serve` runs it as a
//! daemon, from cameras, a watched folder and uploads to the `sink`s. The library never
//! prints or exits: the binary (`main.rs`) does.

pub mod bench;
pub mod card;
pub mod classify;
pub mod decide;
pub mod distill;
pub mod doctor;
pub mod engine;
pub mod machine;
pub mod model;
pub mod npy;
pub mod onnx_meta;
pub mod parity;
pub mod preprocess;
pub mod present;
pub mod record;
pub mod serve;
pub mod sink;
pub mod source;
