//! The card's resampling definition, `bilinear-antialias`: a frame → the model's pixels at the
//! model's size, before normalisation. Written once for training in
//! `training/edgekd_train/data/resample.py` (the README has it in full); here it is computed by
//! fast_image_resize, whose convolution is Pillow's (a triangle filter whose support grows with
//! the scale when shrinking), one axis at a time in Pillow's order, so the box sees the tensor
//! training saw: 8-bit pixels to the bit but where a filter weight rounds differently (0.3 % of
//! the textured fixtures' pixels, one level), 16-bit ones within a grey level.
//!
//! The resizer keeps its filter coefficients per geometry (edge-kd's copy of the crate,
//! `deploy/fast_image_resize`), so a warm frame allocates nothing.
//!
//! Colour is converted before resizing, in 8 bits, as Pillow's `convert("L")` does, because that
//! is what the trainer does; gray → rgb replication and bgr reordering commute with resizing and
//! are left to the normalisation. 16-bit gray is resized at 16 bits; 16-bit colour is first
//! reduced to its high byte, which is what Pillow decodes it to.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::{Frame, PixelFormat, PreprocessError, Samples};
use crate::card::{Color, Resize};

/// Where the resized frame lies in the model's input: the content box (letterbox pads the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Placement {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// The resized pixels, channel-interleaved, `placement.height × placement.width` of them.
pub(super) enum Pixels<'a> {
    U8(&'a [u8]),
    U16(&'a [u16]),
}

/// What one frame resamples to: its pixels, how many channels they interleave, and where they go.
pub(super) struct Resampled<'a> {
    pub pixels: Pixels<'a>,
    pub channels: usize,
    pub placement: Placement,
}

/// The plan for one frame geometry, kept until a frame of another size or format comes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Plan {
    key: (usize, usize, PixelFormat, bool),
    placement: Placement,
    /// Pillow's `box` for center-crop, as fast_image_resize's crop (left, top, width, height).
    crop: Option<(f64, f64, f64, f64)>,
    /// The frame is already the content's size: nothing to resample.
    identity: bool,
}

pub(super) struct Resampler {
    color: Color,
    resize: Resize,
    out_h: usize,
    out_w: usize,
    resizer: Resizer,
    plan: Option<Plan>,
    /// The frame in 8 bits at its own size, when it needs converting first (to gray, or 16-bit
    /// colour to 8 bits); reserved for the largest frame seen.
    converted: Vec<u8>,
    resized8: Vec<u8>,
    resized16: Vec<u16>,
    /// The horizontal pass's rows, between the two passes (see [`Resampler::resize`]).
    between8: Vec<u8>,
    between16: Vec<u16>,
}

impl Resampler {
    pub fn new(color: Color, resize: Resize, out_h: usize, out_w: usize) -> Resampler {
        Resampler {
            color,
            resize,
            out_h,
            out_w,
            resizer: Resizer::new(),
            plan: None,
            converted: Vec::new(),
            resized8: Vec::new(),
            resized16: Vec::new(),
            between8: Vec::new(),
            between16: Vec::new(),
        }
    }

    fn plan(&self, w: usize, h: usize, key: (usize, usize, PixelFormat, bool)) -> Plan {
        let (out_h, out_w) = (self.out_h, self.out_w);
        let full = Placement { top: 0, left: 0, height: out_h, width: out_w };
        let (placement, crop) = match self.resize {
            Resize::Stretch => (full, None),
            Resize::CenterCrop => {
                let s = (w as f64 / out_w as f64).min(h as f64 / out_h as f64);
                let (cw, ch) = (out_w as f64 * s, out_h as f64 * s);
                let crop = ((w as f64 - cw) / 2.0, (h as f64 - ch) / 2.0, cw, ch);
                (full, (crop != (0.0, 0.0, w as f64, h as f64)).then_some(crop))
            }
            Resize::Letterbox => {
                let s = (w as f64 / out_w as f64).max(h as f64 / out_h as f64);
                let nh = ((h as f64 / s + 0.5).floor() as usize).clamp(1, out_h);
                let nw = ((w as f64 / s + 0.5).floor() as usize).clamp(1, out_w);
                (Placement { top: (out_h - nh) / 2, left: (out_w - nw) / 2, height: nh, width: nw }, None)
            }
        };
        let identity = (w, h) == (placement.width, placement.height) && crop.is_none();
        Plan { key, placement, crop, identity }
    }

    /// Resamples `frame` (already checked: non-empty, sample count matching its size).
    pub fn run<'a>(&'a mut self, frame: &Frame<'a>) -> Result<Resampled<'a>, PreprocessError> {
        let (w, h, format) = (frame.width, frame.height, frame.format);
        let wide = matches!(frame.samples, Samples::U16(_));
        let key = (w, h, format, wide);
        let plan = match self.plan {
            Some(plan) if plan.key == key => plan,
            _ => {
                let plan = self.plan(w, h, key);
                self.plan = Some(plan);
                plan
            }
        };
        let colour = matches!(format, PixelFormat::Rgb | PixelFormat::Rgba);
        let to_gray = colour && self.color == Color::Gray;
        // The source of the resize: the frame itself, or its 8-bit conversion.
        let (source, channels) = match frame.samples {
            Samples::U8(s) if !to_gray => (Pixels::U8(s), format.channels()),
            Samples::U16(s) if !colour => (Pixels::U16(s), format.channels()),
            samples => {
                let channels = if to_gray { 1 } else { 3 };
                self.converted.resize(w * h * channels, 0);
                convert(samples, format, to_gray, &mut self.converted);
                (Pixels::U8(&self.converted[..]), channels)
            }
        };
        if plan.identity {
            return Ok(Resampled { pixels: source, channels, placement: plan.placement });
        }
        let Placement { height: nh, width: nw, .. } = plan.placement;
        let (left, top, cw, ch) = plan.crop.unwrap_or((0.0, 0.0, w as f64, h as f64));
        let geometry = Geometry { w, h, nw, nh, left, top, cw, ch };
        let pixels = match source {
            Pixels::U8(src) => {
                let pixel_type =
                    [PixelType::U8, PixelType::U8x2, PixelType::U8x3, PixelType::U8x4][channels - 1];
                self.resized8.resize(nh * nw * channels, 0);
                self.between8.resize(nw * h * channels, 0);
                two_passes(
                    &mut self.resizer,
                    src,
                    &mut self.between8,
                    &mut self.resized8,
                    pixel_type,
                    geometry,
                )?;
                Pixels::U8(&self.resized8[..])
            }
            Pixels::U16(src) => {
                let pixel_type = [PixelType::U16, PixelType::U16x2][channels - 1];
                self.resized16.resize(nh * nw * channels, 0);
                self.between16.resize(nw * h * channels, 0);
                two_passes(
                    &mut self.resizer,
                    bytemuck::cast_slice(src),
                    bytemuck::cast_slice_mut(&mut self.between16[..]),
                    bytemuck::cast_slice_mut(&mut self.resized16[..]),
                    pixel_type,
                    geometry,
                )?;
                Pixels::U16(&self.resized16[..])
            }
        };
        Ok(Resampled { pixels, channels, placement: plan.placement })
    }
}

/// A resize from `w × h` (the crop box `left, top, cw, ch` of it) to `nw × nh`.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    w: usize,
    h: usize,
    nw: usize,
    nh: usize,
    left: f64,
    top: f64,
    cw: f64,
    ch: f64,
}

/// Pillow's order: the rows first (width `w` → `nw`, every source row, into `between`), rounded
/// to the pixel type, then the columns (`h` → `nh`, into `out`). One fast_image_resize call on
/// both axes rounds between its passes in another order, and 18 % of the pixels of a 64 → 32 px
/// RGB patch came out one level off Pillow's; each pass alone is Pillow's to the bit.
fn two_passes(
    resizer: &mut Resizer,
    src: &[u8],
    between: &mut [u8],
    out: &mut [u8],
    pixel_type: PixelType,
    g: Geometry,
) -> Result<(), PreprocessError> {
    let fail = |e: &dyn std::fmt::Display| PreprocessError::Resample(e.to_string());
    let alg = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)).use_alpha(false);
    let (w, h, nw, nh) = (g.w as u32, g.h as u32, g.nw as u32, g.nh as u32);
    let src = ImageRef::new(w, h, src, pixel_type).map_err(|e| fail(&e))?;
    let mut rows = Image::from_slice_u8(nw, h, between, pixel_type).map_err(|e| fail(&e))?;
    resizer.resize(&src, &mut rows, &alg.crop(g.left, 0.0, g.cw, g.h as f64)).map_err(|e| fail(&e))?;
    let rows = ImageRef::new(nw, h, between, pixel_type).map_err(|e| fail(&e))?;
    let mut dst = Image::from_slice_u8(nw, nh, out, pixel_type).map_err(|e| fail(&e))?;
    resizer.resize(&rows, &mut dst, &alg.crop(0.0, g.top, g.nw as f64, g.ch)).map_err(|e| fail(&e))?;
    Ok(())
}

/// Pillow's `convert("L")` luma, in its own fixed point (ITU-R 601-2, rounded).
#[inline(always)]
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((19595 * u32::from(r) + 38470 * u32::from(g) + 7471 * u32::from(b) + 0x8000) >> 16) as u8
}

/// 8-bit luma of every `S`-sample pixel (RGB or RGBA). The one conversion over every pixel
/// of a camera frame (an RGB camera feeding a gray model): x86-64's baseline (SSE2) does not
/// vectorise this stride-3 loop, AVX2 does (it halved the default student's preprocessing of
/// a VGA frame, 310 → 145 µs: docs/RESULTS.md), so x86-64 picks the AVX2 build of it at run
/// time. NEON, baseline on aarch64, has its own deinterleaving loads.
fn luma_of<const S: usize>(s: &[u8], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, just checked.
        return unsafe { luma_of_avx2::<S>(s, out) };
    }
    luma_loop::<S>(s, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn luma_of_avx2<const S: usize>(s: &[u8], out: &mut [u8]) {
    luma_loop::<S>(s, out);
}

#[inline(always)]
fn luma_loop<const S: usize>(s: &[u8], out: &mut [u8]) {
    for (o, p) in out.iter_mut().zip(s.chunks_exact(S)) {
        *o = luma(p[0], p[1], p[2]);
    }
}

/// A colour frame (8- or 16-bit; 16-bit to its high byte) into 8-bit gray or RGB, alpha dropped.
/// (8-bit colour kept as colour is resized as it is and never comes here.)
fn convert(samples: Samples, format: PixelFormat, to_gray: bool, out: &mut [u8]) {
    let step = format.channels();
    match samples {
        Samples::U8(s) if to_gray && step == 3 => luma_of::<3>(s, out),
        Samples::U8(s) if to_gray => luma_of::<4>(s, out),
        Samples::U16(s) if to_gray => {
            for (o, p) in out.iter_mut().zip(s.chunks_exact(step)) {
                *o = luma((p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8);
            }
        }
        Samples::U16(s) => {
            for (o, p) in out.chunks_exact_mut(3).zip(s.chunks_exact(step)) {
                for c in 0..3 {
                    o[c] = (p[c] >> 8) as u8;
                }
            }
        }
        Samples::U8(s) => {
            for (o, p) in out.chunks_exact_mut(3).zip(s.chunks_exact(step)) {
                o.copy_from_slice(&p[..3]);
            }
        }
    }
}
