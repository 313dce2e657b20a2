//! Frame → model input, exactly as the card says: colour conversion, resize (stretch,
//! center-crop or letterbox, bilinear with half-pixel centres), scale, mean, std,
//! NCHW f32. The output and scratch buffers are owned here and reused, so a warm
//! preprocessor allocates nothing per frame.
//!
//! The same arithmetic is implemented in `tests/fixtures/preprocess_ref.py`; the
//! fixtures it wrote are the reference this module is tested against.

pub mod decode;

use crate::card::{Color, InputSpec, Resize};

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
}

/// Precomputed bilinear taps along one axis.
#[derive(Debug, Default, Clone)]
struct Axis {
    /// For each output position: first source index, second source index, weight of the second.
    taps: Vec<(usize, usize, f32)>,
    /// Output range covered by the image (the rest is letterbox padding).
    start: usize,
    end: usize,
}

impl Axis {
    /// Taps for `out` output positions over `src` source samples: content occupies
    /// `[start, start + content)` and samples the source at step `step` from `offset`.
    fn build(&mut self, out: usize, src: usize, start: usize, content: usize, offset: f32, step: f32) {
        self.taps.clear();
        self.start = start;
        self.end = start + content;
        let last = (src - 1) as f32;
        for i in 0..out {
            let pos = offset + ((i as f32 - start as f32) + 0.5) * step - 0.5;
            let pos = pos.clamp(0.0, last);
            let p0 = pos.floor();
            let i0 = p0 as usize;
            let i1 = (i0 + 1).min(src - 1);
            self.taps.push((i0, i1, pos - p0));
        }
    }
}

pub struct Preprocessor {
    spec: InputSpec,
    rows: Axis,
    cols: Axis,
    geometry: Option<(usize, usize)>,
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
            spec: spec.clone(),
            rows: Axis::default(),
            cols: Axis::default(),
            geometry: None,
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
        if self.geometry != Some((w, h)) {
            self.plan_geometry(w, h);
            self.geometry = Some((w, h));
        }
        match frame.samples {
            Samples::U8(s) => self.convert(s, frame.format, w, h, f32::from),
            Samples::U16(s) => self.convert(s, frame.format, w, h, |v| f32::from(v) / 257.0),
        }
        Ok(&self.out)
    }

    fn plan_geometry(&mut self, w: usize, h: usize) {
        let (out_h, out_w) = (self.spec.height(), self.spec.width());
        let (sy, sx) = (h as f32 / out_h as f32, w as f32 / out_w as f32);
        match self.spec.resize {
            Resize::Stretch => {
                self.rows.build(out_h, h, 0, out_h, 0.0, sy);
                self.cols.build(out_w, w, 0, out_w, 0.0, sx);
            }
            Resize::CenterCrop => {
                let s = sy.min(sx);
                let oy = (h as f32 - out_h as f32 * s) / 2.0;
                let ox = (w as f32 - out_w as f32 * s) / 2.0;
                self.rows.build(out_h, h, 0, out_h, oy, s);
                self.cols.build(out_w, w, 0, out_w, ox, s);
            }
            Resize::Letterbox => {
                let s = sy.max(sx);
                let nh = ((h as f32 / s + 0.5).floor() as usize).clamp(1, out_h);
                let nw = ((w as f32 / s + 0.5).floor() as usize).clamp(1, out_w);
                let (top, left) = ((out_h - nh) / 2, (out_w - nw) / 2);
                self.rows.build(out_h, h, top, nh, 0.0, h as f32 / nh as f32);
                self.cols.build(out_w, w, left, nw, 0.0, w as f32 / nw as f32);
            }
        }
    }

    /// Picks the colour conversion and pixel size once per frame, so the per-pixel loops
    /// are branch-free and their slices have sizes known at compile time.
    /// Luma uses ITU-R BT.601 weights, as PIL's `convert("L")` does; alpha is dropped.
    fn convert<T: Copy>(
        &mut self,
        src: &[T],
        format: PixelFormat,
        w: usize,
        h: usize,
        value: impl Fn(T) -> f32 + Copy,
    ) {
        macro_rules! gray_source {
            ($s:literal) => {
                match self.spec.color {
                    Color::Gray => self.sample::<T, $s, 1>(src, w, h, move |p| [value(p[0])]),
                    Color::Rgb | Color::Bgr => self.sample::<T, $s, 3>(src, w, h, move |p| {
                        let v = value(p[0]);
                        [v, v, v]
                    }),
                }
            };
        }
        macro_rules! colour_source {
            ($s:literal) => {
                match self.spec.color {
                    Color::Gray => self.sample::<T, $s, 1>(src, w, h, move |p| {
                        [0.299 * value(p[0]) + 0.587 * value(p[1]) + 0.114 * value(p[2])]
                    }),
                    Color::Rgb => {
                        self.sample::<T, $s, 3>(src, w, h, move |p| [value(p[0]), value(p[1]), value(p[2])])
                    }
                    Color::Bgr => {
                        self.sample::<T, $s, 3>(src, w, h, move |p| [value(p[2]), value(p[1]), value(p[0])])
                    }
                }
            };
        }
        match format {
            PixelFormat::Gray => gray_source!(1),
            PixelFormat::GrayAlpha => gray_source!(2),
            PixelFormat::Rgb => colour_source!(3),
            PixelFormat::Rgba => colour_source!(4),
        }
    }

    /// Samples the frame at every output position. Colour conversion and bilinear
    /// interpolation are both linear, so converting the (at most four) source pixels each
    /// output pixel reads equals converting the whole frame first, at a cost that follows
    /// the model's input size rather than the camera's.
    fn sample<T: Copy, const S: usize, const C: usize>(
        &mut self,
        src: &[T],
        w: usize,
        h: usize,
        pixel: impl Fn(&[T; S]) -> [f32; C],
    ) {
        let at = |row: &[T], offset: usize| pixel(row[offset..offset + S].try_into().expect("S samples"));
        let (out_h, out_w) = (self.spec.height(), self.spec.width());
        let plane = out_h * out_w;
        let (gain, bias) = (self.gain, self.bias);
        if (w, h) == (out_w, out_h) {
            // Same size: every resize mode is the identity.
            for (k, px) in src.chunks_exact(S).enumerate() {
                let v = pixel(px.try_into().expect("S samples"));
                for c in 0..C {
                    self.out[c * plane + k] = v[c] * gain[c] + bias[c];
                }
            }
            return;
        }
        let mut channels = self.out.chunks_exact_mut(plane);
        let planes: [&mut [f32]; C] = std::array::from_fn(|_| channels.next().expect("C planes"));
        let (cols, row_len) = (&self.cols, w * S);
        for (i, &(y0, y1, wy)) in self.rows.taps.iter().enumerate() {
            let out_row = i * out_w..(i + 1) * out_w;
            if i < self.rows.start || i >= self.rows.end {
                for c in 0..C {
                    planes[c][out_row.clone()].fill(bias[c]);
                }
                continue;
            }
            let r0 = &src[y0 * row_len..(y0 + 1) * row_len];
            let r1 = &src[y1 * row_len..(y1 + 1) * row_len];
            for c in 0..C {
                planes[c][i * out_w..i * out_w + cols.start].fill(bias[c]);
                planes[c][i * out_w + cols.end..(i + 1) * out_w].fill(bias[c]);
            }
            for (j, &(x0, x1, wx)) in cols.taps[cols.start..cols.end].iter().enumerate() {
                let k = i * out_w + cols.start + j;
                let (a, b) = (x0 * S, x1 * S);
                let (p00, p01, p10, p11) = (at(r0, a), at(r0, b), at(r1, a), at(r1, b));
                for c in 0..C {
                    let top = p00[c] + wx * (p01[c] - p00[c]);
                    let bottom = p10[c] + wx * (p11[c] - p10[c]);
                    planes[c][k] = (top + wy * (bottom - top)) * gain[c] + bias[c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::Layout;

    fn spec(color: Color, resize: Resize, h: usize, w: usize) -> InputSpec {
        let c = color.channels();
        InputSpec {
            name: "image".into(),
            modality: "camera".into(),
            shape: vec![1, c, h, w],
            layout: Layout::Nchw,
            color,
            resize,
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
    fn bgr_swaps_channels_and_gray_uses_luma() {
        let px = [10u8, 20, 30];
        let frame = Frame { width: 1, height: 1, format: PixelFormat::Rgb, samples: Samples::U8(&px) };
        let mut bgr = Preprocessor::new(&spec(Color::Bgr, Resize::Stretch, 1, 1));
        assert_eq!(bgr.run(&frame).unwrap(), &[30.0, 20.0, 10.0]);
        let mut gray = Preprocessor::new(&spec(Color::Gray, Resize::Stretch, 1, 1));
        let v = gray.run(&frame).unwrap()[0];
        assert!((v - (0.299 * 10.0 + 0.587 * 20.0 + 0.114 * 30.0)).abs() < 1e-4);
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
}
