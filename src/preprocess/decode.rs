//! Image files (PNG, JPEG, BMP) → frames, into buffers that are reused across files.
//!
//! Every image comes from outside (a camera folder, an upload), so its header is checked
//! against [`ImageLimits`] before a pixel buffer is allocated: a 10 KB PNG may declare
//! 50,000 × 50,000 pixels, and decoding it blindly would ask for 7.5 GB.

use std::io::{Cursor, Read};
use std::path::Path;

use image::{ColorType, ImageDecoder, ImageFormat, ImageReader};
use serde::Deserialize;

use super::{Frame, PixelFormat, Samples};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a PNG, JPEG or BMP image")]
    UnknownFormat,
    #[error("{format} image: {message}")]
    Corrupt { format: &'static str, message: String },
    #[error("{0:?} images are not supported (8- or 16-bit gray, gray+alpha, RGB or RGBA only)")]
    UnsupportedColor(ColorType),
    #[error("{what} {value} is over the limit {limit} ({key})")]
    OverLimit { what: &'static str, value: u64, limit: u64, key: &'static str },
}

/// What one image may cost, checked before anything is allocated for it. The defaults fit a
/// 2 GB box running a couple of workers: 24 MP covers the largest common industrial cameras
/// (6000 × 4000), and the biggest image they allow (24 MP of 16-bit RGBA) needs 192 MiB.
/// The field names are the keys of `serve`'s `[source.limits]` and of `run`'s flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageLimits {
    /// Widest and tallest image accepted, in pixels.
    pub max_width: u32,
    pub max_height: u32,
    /// Most pixels (width × height) accepted.
    pub max_pixels: u64,
    /// Largest encoded file or upload read into memory.
    pub max_file_bytes: u64,
    /// Most memory the decoder may allocate for one image: the decoded pixels plus the
    /// decoder's own buffers.
    pub max_decode_bytes: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_width: 16_384,
            max_height: 16_384,
            max_pixels: 24_000_000,
            max_file_bytes: 64 << 20,
            max_decode_bytes: 256 << 20,
        }
    }
}

impl ImageLimits {
    /// Why these limits cannot work, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let fields = [
            ("max_width", u64::from(self.max_width)),
            ("max_height", u64::from(self.max_height)),
            ("max_pixels", self.max_pixels),
            ("max_file_bytes", self.max_file_bytes),
            ("max_decode_bytes", self.max_decode_bytes),
        ];
        match fields.iter().find(|(_, v)| *v == 0) {
            Some((key, _)) => Err(format!("{key} must be > 0")),
            None => Ok(()),
        }
    }

    fn check(
        &self,
        what: &'static str,
        value: u64,
        limit: u64,
        key: &'static str,
    ) -> Result<(), DecodeError> {
        if value > limit { Err(DecodeError::OverLimit { what, value, limit, key }) } else { Ok(()) }
    }

    /// Checks a header's dimensions, before a pixel buffer exists.
    pub fn check_dimensions(&self, width: u32, height: u32) -> Result<(), DecodeError> {
        self.check("width", u64::from(width), u64::from(self.max_width), "max_width")?;
        self.check("height", u64::from(height), u64::from(self.max_height), "max_height")?;
        self.check("pixel count", u64::from(width) * u64::from(height), self.max_pixels, "max_pixels")
    }

    pub fn check_file_bytes(&self, bytes: u64) -> Result<(), DecodeError> {
        self.check("file size", bytes, self.max_file_bytes, "max_file_bytes")
    }

    /// The image crate's own limits, so its decoders bound their internal buffers too.
    fn for_decoder(&self) -> image::Limits {
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(self.max_width);
        limits.max_image_height = Some(self.max_height);
        limits.max_alloc = Some(self.max_decode_bytes);
        limits
    }
}

/// Reads a whole file into `buf`, refusing one larger than `limits.max_file_bytes` without
/// reading it (and one that grows past the limit while being read).
pub fn read_file_limited(path: &Path, limits: &ImageLimits, buf: &mut Vec<u8>) -> Result<(), DecodeError> {
    buf.clear();
    let file = std::fs::File::open(path)?;
    limits.check_file_bytes(file.metadata()?.len())?;
    file.take(limits.max_file_bytes.saturating_add(1)).read_to_end(buf)?;
    limits.check_file_bytes(buf.len() as u64)
}

#[derive(Default)]
pub struct ImageFileDecoder {
    limits: ImageLimits,
    bytes: Vec<u8>,
    pixels8: Vec<u8>,
    pixels16: Vec<u16>,
}

impl ImageFileDecoder {
    /// A decoder with the default limits.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_limits(limits: ImageLimits) -> Self {
        ImageFileDecoder { limits, ..Self::default() }
    }

    pub fn limits(&self) -> &ImageLimits {
        &self.limits
    }

    pub fn decode_file(&mut self, path: &Path) -> Result<Frame<'_>, DecodeError> {
        read_file_limited(path, &self.limits, &mut self.bytes)?;
        self.decode_bytes()
    }

    /// Decodes an encoded image held in memory (an upload), copied into the reused buffer.
    pub fn decode_encoded(&mut self, encoded: &[u8]) -> Result<Frame<'_>, DecodeError> {
        self.limits.check_file_bytes(encoded.len() as u64)?;
        self.bytes.clear();
        self.bytes.extend_from_slice(encoded);
        self.decode_bytes()
    }

    fn decode_bytes(&mut self) -> Result<Frame<'_>, DecodeError> {
        let format = image::guess_format(&self.bytes).map_err(|_| DecodeError::UnknownFormat)?;
        let name = match format {
            ImageFormat::Png => "PNG",
            ImageFormat::Jpeg => "JPEG",
            ImageFormat::Bmp => "BMP",
            _ => return Err(DecodeError::UnknownFormat),
        };
        let corrupt = |e: image::ImageError| DecodeError::Corrupt { format: name, message: e.to_string() };
        let mut reader = ImageReader::with_format(Cursor::new(&self.bytes[..]), format);
        reader.limits(self.limits.for_decoder());
        // The decoders read only the header here; the image crate refuses dimensions over
        // the limits itself, but its message does not say which key to raise.
        let decoder = match reader.into_decoder() {
            Ok(decoder) => decoder,
            Err(image::ImageError::Limits(_)) => {
                let (width, height) = header_dimensions(&self.bytes, format).unwrap_or((u32::MAX, u32::MAX));
                self.limits.check_dimensions(width, height)?;
                return Err(DecodeError::OverLimit {
                    what: "decoder memory",
                    value: u64::MAX,
                    limit: self.limits.max_decode_bytes,
                    key: "max_decode_bytes",
                });
            }
            Err(e) => return Err(corrupt(e)),
        };
        let (width, height) = decoder.dimensions();
        self.limits.check_dimensions(width, height)?;
        let (width, height) = (width as usize, height as usize);
        let color = decoder.color_type();
        let (pixel_format, wide) = match color {
            ColorType::L8 => (PixelFormat::Gray, false),
            ColorType::La8 => (PixelFormat::GrayAlpha, false),
            ColorType::Rgb8 => (PixelFormat::Rgb, false),
            ColorType::Rgba8 => (PixelFormat::Rgba, false),
            ColorType::L16 => (PixelFormat::Gray, true),
            ColorType::La16 => (PixelFormat::GrayAlpha, true),
            ColorType::Rgb16 => (PixelFormat::Rgb, true),
            ColorType::Rgba16 => (PixelFormat::Rgba, true),
            other => return Err(DecodeError::UnsupportedColor(other)),
        };
        let total = decoder.total_bytes();
        self.limits.check("decoded size", total, self.limits.max_decode_bytes, "max_decode_bytes")?;
        let total = usize::try_from(total).unwrap_or(usize::MAX);
        if wide {
            self.pixels16.resize(total / 2, 0);
            decoder.read_image(bytemuck_u16(&mut self.pixels16)).map_err(corrupt)?;
            Ok(Frame { width, height, format: pixel_format, samples: Samples::U16(&self.pixels16) })
        } else {
            self.pixels8.resize(total, 0);
            decoder.read_image(&mut self.pixels8).map_err(corrupt)?;
            Ok(Frame { width, height, format: pixel_format, samples: Samples::U8(&self.pixels8) })
        }
    }
}

/// Width and height from the header alone, for an error message after the image crate
/// refused a header over the limits without saying what it found.
fn header_dimensions(bytes: &[u8], format: ImageFormat) -> Option<(u32, u32)> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.no_limits();
    reader.into_dimensions().ok()
}

/// The bytes of a `u16` buffer, so 16-bit images decode straight into it (the image
/// crate writes native-endian samples).
fn bytemuck_u16(buf: &mut [u16]) -> &mut [u8] {
    let len = buf.len() * 2;
    // SAFETY: u8 has no alignment or validity requirements and the length covers
    // exactly the u16 buffer, which stays borrowed mutably for the slice's lifetime.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), len) }
}

/// File extensions taken as images when a folder is expanded.
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg" | "bmp"))
}
