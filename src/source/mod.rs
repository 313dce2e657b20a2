//! Where frames come from: the files and folders named on the command line (`run`),
//! and for `serve` a watched folder, V4L2 cameras, HTTP uploads and a test-pattern camera.

pub mod camera;
pub mod files;
pub mod folder_watch;
pub mod retry;
pub mod synthetic;

pub use files::{InputItem, InputKind, expand};
