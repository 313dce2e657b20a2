//! V4L2 cameras: what the config asks for, the raw frames a camera delivers, their
//! conversion to the RGB the preprocessor takes, and the capture loop that keeps a camera
//! streaming through unplugs and driver hiccups.
//!
//! Everything here compiles on every platform and without the `camera` feature, so that
//! `serve` can parse a config and report why a camera is unavailable; only `v4l2.rs`
//! talks to the kernel.

#[cfg(all(feature = "camera", target_os = "linux"))]
mod v4l2;

use std::fmt;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use image::ImageDecoder;
use image::codecs::jpeg::JpegDecoder;
use serde::Deserialize;

use crate::preprocess::PixelFormat;

/// The first wait after a failure; it doubles per consecutive failure up to
/// `reconnect_max_ms`.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// The `camera` table of a `[[source]]` in the serve config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// The device node, e.g. `/dev/video0` (or a stable `/dev/v4l/by-id/...` link).
    pub device: PathBuf,
    #[serde(default)]
    pub format: CameraFormat,
    #[serde(default = "default_width")]
    pub width: u32,
    #[serde(default = "default_height")]
    pub height: u32,
    /// Frame rate to ask the driver for; the camera's own default when left out.
    #[serde(default)]
    pub fps: Option<u32>,
    /// Keep at most one frame per interval (a capture trigger); every frame when left out.
    #[serde(default)]
    pub interval_ms: Option<u64>,
    /// Longest wait between reconnection attempts.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

fn default_width() -> u32 {
    640
}

fn default_height() -> u32 {
    480
}

fn default_reconnect_max_ms() -> u64 {
    10_000
}

/// Largest frame side accepted in a config: beyond any V4L2 camera, and it keeps every
/// buffer size computation far from overflow.
const MAX_SIDE: u32 = 16_384;

impl CameraConfig {
    /// A config for `device` with every other key at its default.
    pub fn new(device: impl Into<PathBuf>) -> CameraConfig {
        CameraConfig {
            device: device.into(),
            format: CameraFormat::default(),
            width: default_width(),
            height: default_height(),
            fps: None,
            interval_ms: None,
            reconnect_max_ms: default_reconnect_max_ms(),
        }
    }

    /// Checks what serde cannot; each message names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.device.as_os_str().is_empty() {
            return Err("device must be a device path such as /dev/video0".into());
        }
        if self.width == 0 {
            return Err("width must be > 0".into());
        }
        if self.height == 0 {
            return Err("height must be > 0".into());
        }
        if self.width > MAX_SIDE {
            return Err(format!("width must be at most {MAX_SIDE}, got {}", self.width));
        }
        if self.height > MAX_SIDE {
            return Err(format!("height must be at most {MAX_SIDE}, got {}", self.height));
        }
        match self.fps {
            Some(0) => return Err("fps must be > 0 (leave it out for the camera's default)".into()),
            Some(fps) if fps > 1000 => return Err(format!("fps must be at most 1000, got {fps}")),
            _ => {}
        }
        if self.interval_ms == Some(0) {
            return Err("interval_ms must be > 0 (leave it out to keep every frame)".into());
        }
        let first = FIRST_BACKOFF.as_millis() as u64;
        if self.reconnect_max_ms < first {
            return Err(format!("reconnect_max_ms must be at least {first}, got {}", self.reconnect_max_ms));
        }
        Ok(())
    }
}

/// The pixel format asked of the camera.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraFormat {
    /// MJPEG when offered at the configured size (least USB bandwidth), else YUYV, else RGB.
    #[default]
    Auto,
    Yuyv,
    Mjpeg,
    Rgb,
}

/// How the bytes of a [`RawFrame`] are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawFormat {
    /// Packed 4:2:2 `Y0 U Y1 V` (V4L2 `YUYV`), BT.601 limited range.
    Yuyv,
    /// One JPEG per frame (V4L2 `MJPG`), possibly without Huffman tables.
    Mjpeg,
    /// Packed 8-bit `R G B` (V4L2 `RGB3`).
    Rgb24,
}

impl fmt::Display for RawFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RawFormat::Yuyv => "YUYV",
            RawFormat::Mjpeg => "MJPEG",
            RawFormat::Rgb24 => "RGB24",
        })
    }
}

/// One frame as the camera delivered it. Rows are tightly packed (any driver line padding
/// is removed at capture), so `bytes` is exactly what [`convert`] expects.
#[derive(Clone)]
pub struct RawFrame {
    pub format: RawFormat,
    pub width: u32,
    pub height: u32,
    pub bytes: Vec<u8>,
    /// Wall-clock time the frame was taken from the driver.
    pub captured_at: SystemTime,
}

impl fmt::Debug for RawFrame {
    // The pixels would drown any log line that prints a frame.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawFrame")
            .field("format", &self.format)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("bytes", &format_args!("[{} bytes]", self.bytes.len()))
            .field("captured_at", &self.captured_at)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{format} frame is empty ({width}x{height})")]
    Empty { format: RawFormat, width: u32, height: u32 },
    #[error("{format} frame {width}x{height} is too large to hold in memory")]
    TooLarge { format: RawFormat, width: u32, height: u32 },
    #[error("{format} frame {width}x{height} needs {needed} bytes, got {got}")]
    TooShort { format: RawFormat, width: u32, height: u32, needed: usize, got: usize },
    #[error("YUYV frame width {width} is odd (YUYV stores pixels in pairs)")]
    OddWidth { width: u32 },
    #[error("MJPEG frame does not decode: {0}")]
    Mjpeg(String),
    #[error("MJPEG frame is {got_width}x{got_height}, the camera announced {width}x{height}")]
    MjpegSize { width: u32, height: u32, got_width: u32, got_height: u32 },
    #[error("MJPEG frame decodes to {0}, which is neither RGB nor gray")]
    MjpegColor(String),
}

/// Converts a camera frame to interleaved 8-bit pixels in `out` and says which: RGB, or
/// gray for a grayscale MJPEG stream. `out` is resized, never shrunk in capacity, so a
/// warm buffer makes YUYV and RGB24 conversion allocation-free.
pub fn convert(raw: &RawFrame, out: &mut Vec<u8>) -> Result<PixelFormat, ConvertError> {
    let (format, width, height) = (raw.format, raw.width, raw.height);
    if width == 0 || height == 0 {
        return Err(ConvertError::Empty { format, width, height });
    }
    let pixels = (width as usize).checked_mul(height as usize).ok_or(ConvertError::TooLarge {
        format,
        width,
        height,
    })?;
    let sized = |bytes_per_pixel: usize| {
        let needed =
            pixels.checked_mul(bytes_per_pixel).ok_or(ConvertError::TooLarge { format, width, height })?;
        // Longer is accepted: drivers may report a padded `sizeimage` as bytes used.
        if raw.bytes.len() < needed {
            return Err(ConvertError::TooShort { format, width, height, needed, got: raw.bytes.len() });
        }
        Ok(&raw.bytes[..needed])
    };
    match format {
        RawFormat::Yuyv => {
            if width % 2 != 0 {
                return Err(ConvertError::OddWidth { width });
            }
            let src = sized(2)?;
            out.resize(pixels * 3, 0);
            yuyv_to_rgb(src, out);
            Ok(PixelFormat::Rgb)
        }
        RawFormat::Rgb24 => {
            let src = sized(3)?;
            out.clear();
            out.extend_from_slice(src);
            Ok(PixelFormat::Rgb)
        }
        RawFormat::Mjpeg => decode_mjpeg(raw, out),
    }
}

/// BT.601 limited range (Y 16..235, Cb/Cr 16..240), the matrix UVC cameras use, in 8.8
/// fixed point; within one level of the exact matrix before rounding.
fn yuyv_to_rgb(src: &[u8], out: &mut [u8]) {
    for (yuyv, rgb) in src.chunks_exact(4).zip(out.chunks_exact_mut(6)) {
        let d = i32::from(yuyv[1]) - 128;
        let e = i32::from(yuyv[3]) - 128;
        let r = 409 * e + 128;
        let g = -100 * d - 208 * e + 128;
        let b = 516 * d + 128;
        for (luma, px) in [yuyv[0], yuyv[2]].into_iter().zip(rgb.chunks_exact_mut(3)) {
            let c = 298 * (i32::from(luma) - 16);
            px[0] = ((c + r) >> 8).clamp(0, 255) as u8;
            px[1] = ((c + g) >> 8).clamp(0, 255) as u8;
            px[2] = ((c + b) >> 8).clamp(0, 255) as u8;
        }
    }
}

fn decode_mjpeg(raw: &RawFrame, out: &mut Vec<u8>) -> Result<PixelFormat, ConvertError> {
    let patched;
    let jpeg: &[u8] = match missing_dht_at(&raw.bytes) {
        Some(sos) => {
            patched = with_standard_dht(&raw.bytes, sos);
            &patched
        }
        None => &raw.bytes,
    };
    let decoder = JpegDecoder::new(Cursor::new(jpeg)).map_err(|e| ConvertError::Mjpeg(e.to_string()))?;
    let (got_width, got_height) = decoder.dimensions();
    if (got_width, got_height) != (raw.width, raw.height) {
        return Err(ConvertError::MjpegSize { width: raw.width, height: raw.height, got_width, got_height });
    }
    let format = match decoder.color_type() {
        image::ColorType::Rgb8 => PixelFormat::Rgb,
        image::ColorType::L8 => PixelFormat::Gray,
        other => return Err(ConvertError::MjpegColor(format!("{other:?}"))),
    };
    let total = usize::try_from(decoder.total_bytes()).map_err(|_| ConvertError::TooLarge {
        format: RawFormat::Mjpeg,
        width: raw.width,
        height: raw.height,
    })?;
    out.resize(total, 0);
    decoder.read_image(out).map_err(|e| ConvertError::Mjpeg(e.to_string()))?;
    Ok(format)
}

/// The offset of the first SOS marker when no DHT segment precedes it: MJPEG from many
/// UVC cameras omits the Huffman tables and relies on the JPEG Annex K defaults (the
/// OpenDML AVI convention), which a plain JPEG decoder does not assume. `None` when the
/// tables are there or the stream is too malformed to tell; the decoder then reports what
/// is wrong with it.
fn missing_dht_at(jpeg: &[u8]) -> Option<usize> {
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut at = 2;
    loop {
        if *jpeg.get(at)? != 0xFF {
            return None;
        }
        // Any number of 0xFF fill bytes may precede a marker code.
        let mut code_at = at + 1;
        while *jpeg.get(code_at)? == 0xFF {
            code_at += 1;
        }
        match jpeg[code_at] {
            0xC4 => return None,
            0xDA => return Some(at),
            0xD9 => return None,
            // Markers without a length field.
            0x01 | 0xD0..=0xD8 => at = code_at + 1,
            _ => {
                let len = usize::from(u16::from_be_bytes([*jpeg.get(code_at + 1)?, *jpeg.get(code_at + 2)?]));
                if len < 2 {
                    return None;
                }
                at = code_at + 1 + len;
            }
        }
    }
}

/// The JPEG Annex K.3 Huffman tables as (table class << 4 | id, BITS, HUFFVAL), the ones
/// libjpeg and ffmpeg insert into table-less MJPEG.
const ANNEX_K_TABLES: [(u8, [u8; 16], &[u8]); 4] = [
    // Table K.3: luminance DC.
    (0x00, [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
    // Table K.4: chrominance DC.
    (0x01, [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
    // Table K.5: luminance AC.
    (
        0x10,
        [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 125],
        &[
            0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
            0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0,
            0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28,
            0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
            0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
            0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
            0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
            0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5,
            0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
            0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
            0xf9, 0xfa,
        ],
    ),
    // Table K.6: chrominance AC.
    (
        0x11,
        [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 119],
        &[
            0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
            0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0,
            0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26,
            0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
            0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
            0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
            0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
            0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
            0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
            0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
            0xf9, 0xfa,
        ],
    ),
];

/// `jpeg` with one DHT segment holding the Annex K tables inserted at `sos`.
fn with_standard_dht(jpeg: &[u8], sos: usize) -> Vec<u8> {
    let payload: usize = ANNEX_K_TABLES.iter().map(|(_, bits, values)| 1 + bits.len() + values.len()).sum();
    let mut patched = Vec::with_capacity(jpeg.len() + payload + 4);
    patched.extend_from_slice(&jpeg[..sos]);
    patched.extend_from_slice(&[0xFF, 0xC4]);
    // 418: fits the 16-bit length field with room to spare.
    patched.extend_from_slice(&((payload + 2) as u16).to_be_bytes());
    for (class_id, bits, values) in ANNEX_K_TABLES {
        patched.push(class_id);
        patched.extend_from_slice(&bits);
        patched.extend_from_slice(values);
    }
    patched.extend_from_slice(&jpeg[sos..]);
    patched
}

/// What the capture loop reports, in order, on the thread that runs it.
#[derive(Debug, Clone)]
pub enum CameraEvent {
    Frame(RawFrame),
    State(CameraState),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraState {
    /// Opening the device and negotiating a format.
    Opening,
    /// Frames are flowing in the format and size the driver granted.
    Streaming { format: RawFormat, width: u32, height: u32, fps: Option<u32> },
    /// The camera failed or went away; `error` names the device and the cause.
    Lost { error: String },
    /// The next attempt to open the camera starts after `after`; `attempt` counts the
    /// failures since frames last flowed.
    Retrying { after: Duration, attempt: u32 },
}

impl CameraState {
    pub fn is_up(&self) -> bool {
        matches!(self, CameraState::Streaming { .. })
    }
}

impl fmt::Display for CameraState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CameraState::Opening => f.write_str("opening"),
            CameraState::Streaming { format, width, height, fps: Some(fps) } => {
                write!(f, "streaming {format} {width}x{height} at {fps} fps")
            }
            CameraState::Streaming { format, width, height, fps: None } => {
                write!(f, "streaming {format} {width}x{height}")
            }
            CameraState::Lost { error } => write!(f, "lost: {error}"),
            CameraState::Retrying { after, attempt } => {
                write!(f, "reconnecting in {} ms (attempt {attempt})", after.as_millis())
            }
        }
    }
}

impl fmt::Display for CameraEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CameraEvent::Frame(frame) => write!(
                f,
                "{} frame {}x{} ({} bytes)",
                frame.format,
                frame.width,
                frame.height,
                frame.bytes.len()
            ),
            CameraEvent::State(state) => state.fmt(f),
        }
    }
}

/// Why a camera could not be opened or stopped streaming. Every message starts with the
/// device path: a box may have several cameras.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error("{}: no such device (is the camera plugged in? {})", .device.display(), present_devices(.present))]
    NotFound { device: PathBuf, present: Vec<PathBuf> },
    #[error(
        "{}: permission denied (add the user running edge-kd to the `video` group and log in again)",
        .device.display()
    )]
    PermissionDenied { device: PathBuf },
    #[error("{}: busy (another program is streaming from this camera)", .device.display())]
    Busy { device: PathBuf },
    #[error("{}: disconnected (the camera was unplugged or its USB link reset)", .device.display())]
    Disconnected { device: PathBuf },
    #[error(
        "{}: not a video capture device (a camera's second node is often metadata only: try the \
         other /dev/video* of the same camera)",
        .device.display()
    )]
    NotCapture { device: PathBuf },
    #[error("{}: does not support streaming (mmap) capture", .device.display())]
    NoStreaming { device: PathBuf },
    #[error("{}: offers none of YUYV, MJPEG, RGB3 (it offers: {})", .device.display(), list(.offered))]
    NoUsableFormat { device: PathBuf, offered: Vec<String> },
    #[error("{}: asked the driver for {asked}, it granted {granted}", .device.display())]
    FormatRefused { device: PathBuf, asked: RawFormat, granted: String },
    #[error("{}: no frame for {} s (the camera stopped sending)", .device.display(), .silent.as_secs())]
    Stalled { device: PathBuf, silent: Duration },
    #[error("{}: {op} failed: {source}", .device.display())]
    Io {
        device: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the V4L2 layer panicked: {message}", .device.display())]
    Panicked { device: PathBuf, message: String },
}

fn list(items: &[String]) -> String {
    if items.is_empty() { "nothing".into() } else { items.join(", ") }
}

fn present_devices(present: &[PathBuf]) -> String {
    if present.is_empty() {
        "this machine has no /dev/video* device".into()
    } else {
        let names: Vec<String> = present.iter().map(|p| p.display().to_string()).collect();
        format!("video devices here: {}", names.join(", "))
    }
}

/// The `/dev/videoN` nodes of this machine, sorted.
pub fn list_devices() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/dev") else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("video"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    found.sort();
    found
}

/// Streams from the camera in `cfg`, calling `on_event` with every state change and kept
/// frame, and reconnects with exponential back-off when the camera fails, until `stop` is
/// set. It returns early only when it can never succeed: edge-kd was built without the
/// `camera` feature, or `cfg` does not validate (one `Lost` says which).
pub fn capture_loop(cfg: &CameraConfig, stop: &AtomicBool, on_event: &mut dyn FnMut(CameraEvent)) {
    #[cfg(all(feature = "camera", target_os = "linux"))]
    supervise::reconnect_loop(cfg, stop, on_event, FIRST_BACKOFF, v4l2::stream);

    #[cfg(not(all(feature = "camera", target_os = "linux")))]
    {
        let _ = (cfg, stop);
        on_event(CameraEvent::State(CameraState::Lost {
            error: "edge-kd was built without the `camera` feature".into(),
        }));
    }
}

/// The reconnect schedule and frame pacing, kept apart from V4L2 so they are testable on
/// any machine. Without the `camera` feature nothing drives them.
#[cfg_attr(not(all(feature = "camera", target_os = "linux")), allow(dead_code))]
mod supervise {
    use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::{CameraConfig, CameraError, CameraEvent, CameraState};

    /// How often a waiting capture loop looks at its stop flag; `serve` shutdown waits on it.
    pub(super) const STOP_CHECK: Duration = Duration::from_millis(50);

    /// Runs `session` (one open → stream → failure cycle) again and again until `stop`,
    /// with growing waits in between.
    pub(super) fn reconnect_loop<S>(
        cfg: &CameraConfig,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(CameraEvent),
        first_backoff: Duration,
        mut session: S,
    ) where
        S: FnMut(&CameraConfig, &AtomicBool, &mut dyn FnMut(CameraEvent)) -> Result<(), CameraError>,
    {
        if let Err(message) = cfg.validate() {
            let error = format!("{}: camera config: {message}", cfg.device.display());
            on_event(CameraEvent::State(CameraState::Lost { error }));
            return;
        }
        let max_backoff = Duration::from_millis(cfg.reconnect_max_ms);
        let mut failures: u32 = 0;
        while !stop.load(Ordering::Relaxed) {
            on_event(CameraEvent::State(CameraState::Opening));
            let mut delivered = false;
            let mut in_callback = false;
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                session(cfg, stop, &mut |event| {
                    delivered |= matches!(event, CameraEvent::Frame(_));
                    in_callback = true;
                    on_event(event);
                    in_callback = false;
                })
            }));
            let error = match outcome {
                Ok(Ok(())) if stop.load(Ordering::Relaxed) => return,
                Ok(Ok(())) => format!("{}: the stream ended", cfg.device.display()),
                Ok(Err(e)) => e.to_string(),
                // A panic of the caller's own callback is the caller's to see.
                Err(panic) if in_callback => resume_unwind(panic),
                // v4l panics in a few driver corner cases (Drop after a failed STREAMOFF,
                // unexpected enum values); a camera must not take `serve` down with it.
                Err(panic) => {
                    CameraError::Panicked { device: cfg.device.clone(), message: panic_message(&*panic) }
                        .to_string()
                }
            };
            on_event(CameraEvent::State(CameraState::Lost { error }));
            if stop.load(Ordering::Relaxed) {
                return;
            }
            // A camera that streamed for a while and then dropped out is retried quickly.
            failures = if delivered { 1 } else { failures.saturating_add(1) };
            let after = backoff(failures, first_backoff, max_backoff);
            on_event(CameraEvent::State(CameraState::Retrying { after, attempt: failures }));
            wait_unless_stopped(after, stop);
        }
    }

    fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
        match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
            (Some(s), _) => (*s).to_string(),
            (_, Some(s)) => s.clone(),
            _ => "unknown panic".into(),
        }
    }

    /// `first`, doubled for each further consecutive failure, capped at `max`.
    pub(super) fn backoff(failures: u32, first: Duration, max: Duration) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        first.saturating_mul(1 << doublings).min(max)
    }

    /// Sleeps for `total` in short slices, returning early once `stop` is set.
    pub(super) fn wait_unless_stopped(total: Duration, stop: &AtomicBool) {
        let deadline = Instant::now() + total;
        loop {
            let now = Instant::now();
            if stop.load(Ordering::Relaxed) || now >= deadline {
                return;
            }
            std::thread::sleep((deadline - now).min(STOP_CHECK));
        }
    }

    /// Keeps one frame per interval. Due times advance by whole intervals so the kept rate
    /// does not drift below one per interval when frames arrive slightly late.
    #[derive(Debug)]
    pub(super) struct FrameGate {
        interval: Option<Duration>,
        next_due: Option<Instant>,
    }

    impl FrameGate {
        pub(super) fn new(interval_ms: Option<u64>) -> FrameGate {
            FrameGate { interval: interval_ms.map(Duration::from_millis), next_due: None }
        }

        pub(super) fn admit(&mut self, now: Instant) -> bool {
            let Some(interval) = self.interval else { return true };
            if self.next_due.is_some_and(|due| now < due) {
                return false;
            }
            let next = self.next_due.map_or(now, |due| due + interval);
            // After a gap (a stalled camera) restart the schedule instead of bursting.
            self.next_due = Some(if next > now { next } else { now + interval });
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::supervise::*;
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    fn frame(format: RawFormat, width: u32, height: u32, bytes: Vec<u8>) -> RawFrame {
        RawFrame { format, width, height, bytes, captured_at: SystemTime::now() }
    }

    #[test]
    fn warm_yuyv_conversion_reuses_the_buffer() {
        let raw = frame(RawFormat::Yuyv, 640, 480, vec![128; 640 * 480 * 2]);
        let mut out = Vec::new();
        convert(&raw, &mut out).unwrap();
        let (ptr, capacity) = (out.as_ptr(), out.capacity());
        for _ in 0..3 {
            assert_eq!(convert(&raw, &mut out).unwrap(), PixelFormat::Rgb);
            assert_eq!((out.as_ptr(), out.capacity()), (ptr, capacity), "the buffer was reallocated");
        }
        assert_eq!(out.len(), 640 * 480 * 3);
    }

    #[test]
    fn yuyv_extremes_clamp_instead_of_wrapping() {
        // Out-of-range luma with extreme chroma pushes channels past both ends; the exact
        // matrix gives [74, 333, 534] and [-223, 36, 238].
        let raw = frame(RawFormat::Yuyv, 2, 1, vec![255, 255, 0, 0]);
        let mut out = Vec::new();
        convert(&raw, &mut out).unwrap();
        assert_eq!(out, [74, 255, 255, 0, 36, 237]);
        let white = frame(RawFormat::Yuyv, 2, 1, vec![235, 128, 16, 128]);
        convert(&white, &mut out).unwrap();
        assert_eq!(out, [255, 255, 255, 0, 0, 0]);
    }

    #[test]
    fn dht_goes_right_before_the_scan_and_only_when_missing() {
        let sos = [0xFF, 0xDA, 0x00, 0x02];
        let app0 = [0xFF, 0xE0, 0x00, 0x04, b'A', b'V'];
        let mut no_dht = vec![0xFF, 0xD8];
        no_dht.extend_from_slice(&app0);
        // The tables go before any fill bytes (0xFF) that precede the SOS marker.
        let sos_at = no_dht.len();
        no_dht.extend_from_slice(&[0xFF, 0xFF]);
        no_dht.extend_from_slice(&sos);
        assert_eq!(missing_dht_at(&no_dht), Some(sos_at));

        let patched = with_standard_dht(&no_dht, sos_at);
        assert_eq!(&patched[sos_at..sos_at + 4], &[0xFF, 0xC4, 0x01, 0xA2]);
        assert_eq!(patched.len(), no_dht.len() + 0x1A2 + 2);
        assert_eq!(missing_dht_at(&patched), None);

        assert_eq!(missing_dht_at(b"not a jpeg"), None);
        assert_eq!(missing_dht_at(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00]), None, "truncated length");
        assert_eq!(missing_dht_at(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x00]), None, "length below 2");
    }

    #[test]
    fn backoff_doubles_from_250_ms_up_to_the_cap() {
        let max = Duration::from_millis(10_000);
        let waits: Vec<u128> = (1..=8).map(|n| backoff(n, FIRST_BACKOFF, max).as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(backoff(u32::MAX, FIRST_BACKOFF, max), max);
    }

    #[test]
    fn frame_gate_keeps_one_frame_per_interval() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut every = FrameGate::new(None);
        assert!((0..5).all(|i| every.admit(ms(i))));

        let mut gate = FrameGate::new(Some(100));
        // 30 fps for one second: frames every 33 ms.
        let kept: Vec<u64> = (0..31).map(|i| i * 33).filter(|&t| gate.admit(ms(t))).collect();
        assert_eq!(kept, [0, 132, 231, 330, 429, 528, 627, 726, 825, 924]);
        // After a long silence the next frame is kept and the schedule restarts from it.
        assert!(gate.admit(ms(5000)));
        assert!(!gate.admit(ms(5050)));
        assert!(gate.admit(ms(5100)));
    }

    #[test]
    fn failures_back_off_and_frames_reset_the_count() {
        let cfg = CameraConfig::new("/dev/video7");
        let stop = AtomicBool::new(false);
        let calls = AtomicU32::new(0);
        let mut events = Vec::new();
        let session = |_: &CameraConfig, stop: &AtomicBool, emit: &mut dyn FnMut(CameraEvent)| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            match n {
                0 | 1 => Err(CameraError::Disconnected { device: "/dev/video7".into() }),
                2 => {
                    emit(CameraEvent::Frame(frame(RawFormat::Rgb24, 1, 1, vec![1, 2, 3])));
                    Err(CameraError::Busy { device: "/dev/video7".into() })
                }
                3 => panic!("v4l said no"),
                _ => {
                    stop.store(true, Ordering::SeqCst);
                    Ok(())
                }
            }
        };
        reconnect_loop(&cfg, &stop, &mut |e| events.push(e.to_string()), Duration::from_millis(1), session);
        assert_eq!(
            events,
            [
                "opening",
                "lost: /dev/video7: disconnected (the camera was unplugged or its USB link reset)",
                "reconnecting in 1 ms (attempt 1)",
                "opening",
                "lost: /dev/video7: disconnected (the camera was unplugged or its USB link reset)",
                "reconnecting in 2 ms (attempt 2)",
                "opening",
                "RGB24 frame 1x1 (3 bytes)",
                "lost: /dev/video7: busy (another program is streaming from this camera)",
                "reconnecting in 1 ms (attempt 1)",
                "opening",
                "lost: /dev/video7: the V4L2 layer panicked: v4l said no",
                "reconnecting in 2 ms (attempt 2)",
                "opening",
            ]
        );
    }

    #[test]
    #[should_panic(expected = "the callback's own bug")]
    fn a_panicking_callback_is_not_swallowed() {
        let cfg = CameraConfig::new("/dev/video7");
        let stop = AtomicBool::new(false);
        let session = |_: &CameraConfig, _: &AtomicBool, emit: &mut dyn FnMut(CameraEvent)| {
            emit(CameraEvent::Frame(frame(RawFormat::Rgb24, 1, 1, vec![0; 3])));
            Ok(())
        };
        let mut on_event = |e: CameraEvent| {
            if matches!(e, CameraEvent::Frame(_)) {
                panic!("the callback's own bug");
            }
        };
        reconnect_loop(&cfg, &stop, &mut on_event, Duration::from_millis(1), session);
    }

    #[test]
    fn an_invalid_config_is_reported_once() {
        let cfg = CameraConfig { width: 0, ..CameraConfig::new("/dev/video0") };
        let stop = AtomicBool::new(false);
        let mut events = Vec::new();
        let session = |_: &CameraConfig, _: &AtomicBool, _: &mut dyn FnMut(CameraEvent)| -> Result<(), _> {
            unreachable!("an invalid config must not be opened")
        };
        reconnect_loop(&cfg, &stop, &mut |e| events.push(e.to_string()), FIRST_BACKOFF, session);
        assert_eq!(events, ["lost: /dev/video0: camera config: width must be > 0"]);
    }
}
