//! Where frames come from: the files and folders named on the command line (`run`; for a
//! model with several inputs, files paired by stem or listed in a manifest),
//! and for `serve` a watched folder (its files paired by stem for a model with several inputs),
//! V4L2 cameras, HTTP uploads and a test-pattern camera.

pub mod camera;
pub mod files;
pub mod folder_watch;
pub mod manifest;
pub mod pairing;
pub mod retry;
pub mod stem_pairs;
pub mod synthetic;

pub use files::{InputItem, InputKind, expand};
pub use pairing::{Member, Sample, SampleInput};
