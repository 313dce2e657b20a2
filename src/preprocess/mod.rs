//! Frame → model input, exactly as the card says: the card's resampling definition
//! (`resample.rs`: colour, then an antialiased resize for stretch, center-crop or letterbox),
//! then scale, mean, std, NCHW f32. The output and scratch buffers are owned here and reused.
//!
//! The definition is the trainer's (`training/edgekd_train/data/resample.py`); the fixtures
//! `tests/fixtures/preprocess_ref.py` wrote from it are what this module is tested against.

pub mod decode;
mod resample;

use crate::card::{Color, InputSpec};
use resample::{Pixels, Resampled, Resampler};
/// How the samples of a frame are laid out, channel-interleaved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    Gray,
    GrayAlpha,
    Rgb,
    Rgba,
}

impl PixelFormat {
    pub fn channels(self) -> usize {
        match self {
            PixelFormat::Gray => 1,
            PixelFormat::GrayAlpha => 2,
            PixelFormat::Rgb => 3,
            PixelFormat::Rgba => 4,
        }
    }
}

/// Sample storage of a frame: 8-bit, or 16-bit in native byte order.
#[derive(Debug, Clone, Copy)]
pub enum Samples<'a> {
    U8(&'a [u8]),
    U16(&'a [u16]),
}

/// A decoded frame borrowed from whoever decoded it (a file decoder, a camera).
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub width: usize,
    pub height: usize,
    pub format: PixelFormat,
    pub samples: Samples<'a>,
}

impl Frame<'_> {
    fn sample_count(&self) -> usize {
        match self.samples {
            Samples::U8(s) => s.len(),
            Samples::U16(s) => s.len(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("frame of {width}x{height} {format:?} holds {got} samples, expected {expected}")]
    BadFrame { width: usize, height: usize, format: PixelFormat, got: usize, expected: usize },
    #[error("empty frame (0 pixels)")]
    Empty,
    #[error("frame of {width}x{height} is too large to resample (over 4 GiB pixels a side)")]
    TooLarge { width: usize, height: usize },
    #[error("resampling failed: {0}")]
    Resample(String),
}

pub struct Preprocessor {
    spec: InputSpec,
    resampler: Resampler,
    /// Per output channel: `v * gain + bias` is `(v * scale - mean) / std`.
    gain: [f32; 3],
    bias: [f32; 3],
    out: Vec<f32>,
}

impl Preprocessor {
    pub fn new(spec: &InputSpec) -> Preprocessor {
        let (mut gain, mut bias) = ([0.0; 3], [0.0; 3]);
        for c in 0..spec.channels() {
            gain[c] = spec.scale / spec.std[c];
            bias[c] = -spec.mean[c] / spec.std[c];
        }
        Preprocessor {
            resampler: Resampler::new(spec.color, spec.resize, spec.height(), spec.width()),
            spec: spec.clone(),
            gain,
            bias,
            out: vec![0.0; spec.tensor_len()],
        }
    }

    /// The last tensor produced.
    pub fn output(&self) -> &[f32] {
        &self.out
    }

    /// Converts one frame into the model input and returns it.
    pub fn run(&mut self, frame: &Frame) -> Result<&[f32], PreprocessError> {
        let (w, h) = (frame.width, frame.height);
        if w == 0 || h == 0 {
            return Err(PreprocessError::Empty);
        }
        if u32::try_from(w).is_err() || u32::try_from(h).is_err() {
            return Err(PreprocessError::TooLarge { width: w, height: h });
        }
        let expected = w * h * frame.format.channels();
        if frame.sample_count() != expected {
            return Err(PreprocessError::BadFrame {
                width: w,
                height: h,
                format: frame.format,
                got: frame.sample_count(),
                expected,
            });
        }
        let resampled = self.resampler.run(frame)?;
        let (out_h, out_w) = (self.spec.height(), self.spec.width());
        write_tensor(&resampled, self.spec.color, out_h, out_w, self.gain, self.bias, &mut self.out);
        Ok(&self.out)
    }
}

/// Normalises the resampled pixels into the NCHW tensor and fills the letterbox padding with
/// raw 0. Which source channel feeds each output channel is fixed per frame, so the per-pixel
/// loops are branch-free and their strides and offsets known at compile time. That lets AVX2
/// vectorise the strided reads of an interleaved RGB frame (SSE2, x86-64's baseline, does not),
/// so x86-64 picks the AVX2 build at run time, as for the gray conversion.
fn write_tensor(
    r: &Resampled,
    color: Color,
    out_h: usize,
    out_w: usize,
    gain: [f32; 3],
    bias: [f32; 3],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, just checked.
        return unsafe { write_tensor_avx2(r, color, out_h, out_w, gain, bias, out) };
    }
    write_tensor_loops(r, color, out_h, out_w, gain, bias, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn write_tensor_avx2(
    r: &Resampled,
    color: Color,
    out_h: usize,
    out_w: usize,
    gain: [f32; 3],
    bias: [f32; 3],
    out: &mut [f32],
) {
    write_tensor_loops(r, color, out_h, out_w, gain, bias, out);
}

#[inline(always)]
fn write_tensor_loops(
    r: &Resampled,
    color: Color,
    out_h: usize,
    out_w: usize,
    gain: [f32; 3],
    bias: [f32; 3],
    out: &mut [f32],
) {
    let p = r.placement;
    let plane = out_h * out_w;
    let padded = (p.height, p.width) != (out_h, out_w);
    for (c, values) in out.chunks_exact_mut(plane).enumerate() {
        if padded {
            values.fill(bias[c]);
        }
        // Output channel c reads source channel `from`: gray sources feed every channel.
        let from = match color {
            Color::Bgr if r.channels >= 3 => 2 - c,
            _ if r.channels >= 3 => c,
            _ => 0,
        };
        let rows = values[p.top * out_w..].chunks_exact_mut(out_w).take(p.height);
        let (left, width) = (p.left, p.width);
        match r.pixels {
            Pixels::U8(px) => normalise(rows, px, r.channels, from, left, width, gain[c], bias[c]),
            // 16-bit results are divided by 257 (0..65535 → 0..255) before the card's scale.
            Pixels::U16(px) => normalise(rows, px, r.channels, from, left, width, gain[c] / 257.0, bias[c]),
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn normalise<'o, T: Copy + Into<f32>>(
    rows: impl Iterator<Item = &'o mut [f32]>,
    px: &[T],
    channels: usize,
    from: usize,
    left: usize,
    width: usize,
    gain: f32,
    bias: f32,
) {
    for (row, src) in rows.zip(px.chunks_exact(width * channels)) {
        let dst = &mut row[left..left + width];
        match (channels, from) {
            (1, _) => pick::<T, 1, 0>(dst, src, gain, bias),
            (2, _) => pick::<T, 2, 0>(dst, src, gain, bias),
            (3, 0) => pick::<T, 3, 0>(dst, src, gain, bias),
            (3, 1) => pick::<T, 3, 1>(dst, src, gain, bias),
            (3, _) => pick::<T, 3, 2>(dst, src, gain, bias),
            (_, 0) => pick::<T, 4, 0>(dst, src, gain, bias),
            (_, 1) => pick::<T, 4, 1>(dst, src, gain, bias),
            _ => pick::<T, 4, 2>(dst, src, gain, bias),
        }
    }
}

/// Channel `FROM` of each `C`-sample pixel, scaled.
#[inline(always)]
fn pick<T: Copy + Into<f32>, const C: usize, const FROM: usize>(
    dst: &mut [f32],
    src: &[T],
    gain: f32,
    bias: f32,
) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(C)) {
        *d = s[FROM].into() * gain + bias;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::{Layout, Resize};

    fn spec(color: Color, resize: Resize, h: usize, w: usize) -> InputSpec {
        let c = color.channels();
        InputSpec {
            name: "image".into(),
            modality: "camera".into(),
            shape: vec![1, c, h, w],
            layout: Layout::Nchw,
            color,
            resize,
            resample: Default::default(),
            scale: 1.0,
            mean: vec![0.0; c],
            std: vec![1.0; c],
            optional: false,
        }
    }

    #[test]
    fn same_size_stretch_is_the_identity_with_normalisation() {
        let mut s = spec(Color::Gray, Resize::Stretch, 2, 3);
        s.scale = 1.0 / 255.0;
        s.mean = vec![0.5];
        s.std = vec![0.5];
        let pixels = [0u8, 255, 51, 102, 153, 204];
        let mut p = Preprocessor::new(&s);
        let frame = Frame { width: 3, height: 2, format: PixelFormat::Gray, samples: Samples::U8(&pixels) };
        let out = p.run(&frame).unwrap();
        let expected: Vec<f32> = pixels.iter().map(|&v| (f32::from(v) / 255.0 - 0.5) / 0.5).collect();
        for (a, b) in out.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-6, "{out:?} vs {expected:?}");
        }
    }

    #[test]
    fn bgr_swaps_channels_and_gray_uses_pillow_luma() {
        let px = [10u8, 20, 30];
        let frame = Frame { width: 1, height: 1, format: PixelFormat::Rgb, samples: Samples::U8(&px) };
        let mut bgr = Preprocessor::new(&spec(Color::Bgr, Resize::Stretch, 1, 1));
        assert_eq!(bgr.run(&frame).unwrap(), &[30.0, 20.0, 10.0]);
        let mut gray = Preprocessor::new(&spec(Color::Gray, Resize::Stretch, 1, 1));
        // Pillow's convert("L") rounds: 0.299·10 + 0.587·20 + 0.114·30 = 18.15 → 18.
        assert_eq!(gray.run(&frame).unwrap(), &[18.0]);
    }

    #[test]
    fn letterbox_pads_with_zero_pixels() {
        // A 4x2 (w x h) white frame into 4x4: content rows 1..3, padding rows 0 and 3.
        let px = [255u8; 8];
        let frame = Frame { width: 4, height: 2, format: PixelFormat::Gray, samples: Samples::U8(&px) };
        let mut p = Preprocessor::new(&spec(Color::Gray, Resize::Letterbox, 4, 4));
        let out = p.run(&frame).unwrap().to_vec();
        assert_eq!(&out[0..4], &[0.0; 4]);
        assert_eq!(&out[4..12], &[255.0; 8]);
        assert_eq!(&out[12..16], &[0.0; 4]);
    }

    #[test]
    fn wrong_sample_count_is_an_error_not_a_panic() {
        let px = [0u8; 5];
        let frame = Frame { width: 3, height: 2, format: PixelFormat::Gray, samples: Samples::U8(&px) };
        let mut p = Preprocessor::new(&spec(Color::Gray, Resize::Stretch, 2, 2));
        assert!(matches!(p.run(&frame), Err(PreprocessError::BadFrame { expected: 6, .. })));
    }

    #[test]
    fn shrinking_fine_stripes_averages_them_instead_of_aliasing() {
        // 1-px black/white columns, 64 wide, to 8: every output pixel spans 8 columns (a
        // 4-tap sampler gives 0 or 255 here). The values are Pillow's for the same resize.
        let px: Vec<u8> = (0..64 * 4).map(|k| if k % 2 == 0 { 0 } else { 255 }).collect();
        let frame = Frame { width: 64, height: 4, format: PixelFormat::Gray, samples: Samples::U8(&px) };
        let mut p = Preprocessor::new(&spec(Color::Gray, Resize::Stretch, 1, 8));
        let pillow = [123.0, 128.0, 128.0, 128.0, 128.0, 128.0, 128.0, 132.0];
        let out = p.run(&frame).unwrap();
        assert!(out.iter().zip(pillow).all(|(a, b)| (a - b).abs() <= 1.0), "{out:?}");
    }

    #[test]
    fn sixteen_bit_gray_is_resized_at_16_bits_then_divided_by_257() {
        let px = [65535u16, 0, 65535, 0];
        let frame = Frame { width: 4, height: 1, format: PixelFormat::Gray, samples: Samples::U16(&px) };
        let mut p = Preprocessor::new(&spec(Color::Rgb, Resize::Stretch, 1, 2));
        // Pillow's I;16 resize of the same row gives [37449, 28086]; gray replicates to rgb.
        let out = p.run(&frame).unwrap();
        let pillow = [37449.0 / 257.0, 28086.0 / 257.0];
        assert_eq!(out.len(), 6);
        for (k, &v) in out.iter().enumerate() {
            assert!((v - pillow[k % 2]).abs() <= 1.0 / 257.0, "{out:?}");
        }
    }
}
