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
    #[error("decoding needs more memory than the limit {limit} (max_decode_bytes)")]
    DecoderMemory { limit: u64 },
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

    /// The image crate's own memory limit, so its decoders bound their internal buffers too.
    /// Dimensions are left to [`Self::check_dimensions`], whose error names our key.
    fn for_decoder(&self) -> image::Limits {
        let mut limits = image::Limits::no_limits();
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
        if format == ImageFormat::Png {
            check_png_palette(&self.bytes)?;
        }
        let limit = self.limits.max_decode_bytes;
        let corrupt = |e: image::ImageError| match e {
            image::ImageError::Limits(_) => DecodeError::DecoderMemory { limit },
            e => DecodeError::Corrupt { format: name, message: e.to_string() },
        };
        let mut reader = ImageReader::with_format(Cursor::new(&self.bytes[..]), format);
        reader.limits(self.limits.for_decoder());
        // Only the header is read here; the pixel buffer is ours, sized once checked below.
        let decoder = reader.into_decoder().map_err(corrupt)?;
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
        self.limits.check("decoded size", total, limit, "max_decode_bytes")?;
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

/// png 0.18.1 panics on a PLTE chunk whose length is not a multiple of 3 (image-rs/image-png
/// issue 694, fixed upstream after that release; found by tests/fuzz `image_decode`): such a
/// file is refused here, before the decoder sees it.
fn check_png_palette(png: &[u8]) -> Result<(), DecodeError> {
    let mut at: usize = 8;
    while let Some(head) = png.get(at..at.saturating_add(8)) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if &head[4..] == b"PLTE" && !len.is_multiple_of(3) {
            let message = format!("its PLTE chunk holds {len} bytes, not whole RGB entries");
            return Err(DecodeError::Corrupt { format: "PNG", message });
        }
        // Length, type, data, CRC.
        at = at.saturating_add(12).saturating_add(len);
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> Vec<u8> {
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)).unwrap()
    }

    #[test]
    fn each_limit_is_checked_and_named() {
        let hostile = fixture("hostile/png-50000x50000.png");
        let err = ImageFileDecoder::new().decode_encoded(&hostile).map(|_| ()).unwrap_err();
        assert_eq!(err.to_string(), "width 50000 is over the limit 16384 (max_width)");

        let rgb = fixture("images/rgb_50x30.png");
        let limits = |f: fn(&mut ImageLimits)| {
            let mut l = ImageLimits::default();
            f(&mut l);
            l
        };
        let cases: [(ImageLimits, &str); 4] = [
            (limits(|l| l.max_height = 29), "height 30 is over the limit 29 (max_height)"),
            (limits(|l| l.max_pixels = 1499), "pixel count 1500 is over the limit 1499 (max_pixels)"),
            (limits(|l| l.max_file_bytes = 10), "(max_file_bytes)"),
            (
                limits(|l| l.max_decode_bytes = 4499),
                "decoded size 4500 is over the limit 4499 (max_decode_bytes)",
            ),
        ];
        for (limits, message) in cases {
            let err = ImageFileDecoder::with_limits(limits).decode_encoded(&rgb).map(|_| ()).unwrap_err();
            assert!(err.to_string().ends_with(message), "{err}");
        }
        // Exactly at every limit, the image decodes.
        let exact = ImageLimits {
            max_width: 50,
            max_height: 30,
            max_pixels: 1500,
            max_file_bytes: rgb.len() as u64,
            max_decode_bytes: 4500,
        };
        let mut decoder = ImageFileDecoder::with_limits(exact);
        let frame = decoder.decode_encoded(&rgb).unwrap();
        assert_eq!((frame.width, frame.height), (50, 30));
    }

    #[test]
    fn a_file_over_the_size_limit_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let limits = ImageLimits { max_file_bytes: 4095, ..ImageLimits::default() };
        let mut buf = Vec::new();
        let err = read_file_limited(&path, &limits, &mut buf).unwrap_err();
        assert_eq!(err.to_string(), "file size 4096 is over the limit 4095 (max_file_bytes)");
        assert!(buf.is_empty(), "nothing was read");
    }

    #[test]
    fn zero_limits_are_refused_by_name() {
        let limits = ImageLimits { max_pixels: 0, ..ImageLimits::default() };
        assert_eq!(limits.validate(), Err("max_pixels must be > 0".to_string()));
        assert_eq!(ImageLimits::default().validate(), Ok(()));
    }
}
