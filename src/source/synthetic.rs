//! A test-pattern camera: one image, decoded once, delivered as RGB24 camera frames at a
//! set rate or as fast as the queue takes them. It exercises the camera path (convert →
//! preprocess → engine → decide → sinks) without a camera, for soak tests and for sizing
//! a box before the camera is mounted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use super::camera::{RawFormat, RawFrame};
use crate::preprocess::decode::ImageFileDecoder;
use crate::preprocess::{PixelFormat, Samples};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    pub image: PathBuf,
    /// Frames per second; 0 delivers as fast as the queue accepts (use with drop = "block").
    #[serde(default)]
    pub fps: f64,
}

/// The pattern as an RGB24 frame, or why the image cannot be one.
pub fn pattern(config: &SyntheticConfig) -> Result<RawFrame, String> {
    let mut decoder = ImageFileDecoder::new();
    let frame = decoder.decode_file(&config.image).map_err(|e| format!("{}: {e}", config.image.display()))?;
    let Samples::U8(samples) = frame.samples else {
        return Err(format!("{}: use an 8-bit image", config.image.display()));
    };
    let channels = frame.format.channels();
    let bytes: Vec<u8> = samples
        .chunks_exact(channels)
        .flat_map(|px| match frame.format {
            PixelFormat::Gray | PixelFormat::GrayAlpha => [px[0], px[0], px[0]],
            PixelFormat::Rgb | PixelFormat::Rgba => [px[0], px[1], px[2]],
        })
        .collect();
    Ok(RawFrame {
        format: RawFormat::Rgb24,
        width: frame.width as u32,
        height: frame.height as u32,
        bytes,
        captured_at: SystemTime::now(),
    })
}

/// Delivers copies of `frame` until `stop` is set.
pub fn run(
    config: &SyntheticConfig,
    frame: &RawFrame,
    stop: &AtomicBool,
    on_frame: &mut dyn FnMut(RawFrame),
) {
    let period = (config.fps > 0.0).then(|| Duration::from_secs_f64(1.0 / config.fps));
    let start = Instant::now();
    let mut n: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Some(period) = period {
            // Paced from the start, not from the last frame, so the rate does not drift.
            let due = start + period * n;
            let now = Instant::now();
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(100)));
                continue;
            }
        }
        on_frame(RawFrame { captured_at: SystemTime::now(), ..frame.clone() });
        n = n.wrapping_add(1);
    }
}
