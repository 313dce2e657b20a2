//! Image files (PNG, JPEG, BMP) → frames, into buffers that are reused across files.

use std::io::{Cursor, Read};
use std::path::Path;

use image::{ColorType, ImageDecoder, ImageFormat, ImageReader};

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
}

#[derive(Default)]
pub struct ImageFileDecoder {
    bytes: Vec<u8>,
    pixels8: Vec<u8>,
    pixels16: Vec<u16>,
}

impl ImageFileDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn decode_file(&mut self, path: &Path) -> Result<Frame<'_>, DecodeError> {
        self.bytes.clear();
        std::fs::File::open(path)?.read_to_end(&mut self.bytes)?;
        self.decode_bytes()
    }

    /// Decodes an encoded image held in memory (an upload), copied into the reused buffer.
    pub fn decode_encoded(&mut self, encoded: &[u8]) -> Result<Frame<'_>, DecodeError> {
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
        let reader = ImageReader::with_format(Cursor::new(&self.bytes[..]), format);
        let decoder = reader.into_decoder().map_err(corrupt)?;
        let (width, height) = decoder.dimensions();
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
        let total = usize::try_from(decoder.total_bytes()).unwrap_or(usize::MAX);
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
