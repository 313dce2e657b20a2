//! Where decisions go: a JSONL file, MQTT (through an on-disk spool), review frames.
//! One dispatcher thread writes every result to every sink in arrival order; a folder
//! file is moved or deleted, and an upload answered, only after that.

pub mod jsonl;
pub mod mqtt;
pub mod record;
pub mod review;
pub mod spool;

pub use record::{ResultBody, ResultLine};
