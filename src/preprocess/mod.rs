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
    /// Source converted to the target colour, planar, on the 0..255 scale.
    plane: Vec<f32>,
    rows: Axis,
    cols: Axis,
    geometry: Option<(usize, usize)>,
    out: Vec<f32>,
}

impl Preprocessor {
    pub fn new(spec: &InputSpec) -> Preprocessor {
        Preprocessor {
            spec: spec.clone(),
            plane: Vec::new(),
            rows: Axis::default(),
            cols: Axis::default(),
            geometry: None,
            out: vec![0.0; spec.len()],
        }
    }

    pub fn spec(&self) -> &InputSpec {
        &self.spec
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
        self.convert_colour(frame);
        if self.geometry != Some((w, h)) {
            self.plan_geometry(w, h);
            self.geometry = Some((w, h));
        }
        self.resample(w, h);
        Ok(&self.out)
    }

    fn convert_colour(&mut self, frame: &Frame) {
        let target = self.spec.color;
        let pixels = frame.width * frame.height;
        let out_channels = target.channels();
        self.plane.resize(pixels * out_channels, 0.0);
        match frame.samples {
            Samples::U8(s) => fill_plane(&mut self.plane, s, frame.format, target, pixels, |v| f32::from(v)),
            Samples::U16(s) => {
                fill_plane(&mut self.plane, s, frame.format, target, pixels, |v| f32::from(v) / 257.0)
            }
        }
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

    fn resample(&mut self, w: usize, h: usize) {
        let (out_h, out_w) = (self.spec.height(), self.spec.width());
        let channels = self.spec.channels();
        for c in 0..channels {
            let plane = &self.plane[c * w * h..(c + 1) * w * h];
            let (gain, bias) = {
                let std = self.spec.std[c];
                (self.spec.scale / std, -self.spec.mean[c] / std)
            };
            let out = &mut self.out[c * out_h * out_w..(c + 1) * out_h * out_w];
            for (i, &(y0, y1, wy)) in self.rows.taps.iter().enumerate() {
                let row = &mut out[i * out_w..(i + 1) * out_w];
                if i < self.rows.start || i >= self.rows.end {
                    row.fill(bias);
                    continue;
                }
                let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
                for (j, (dst, &(x0, x1, wx))) in row.iter_mut().zip(&self.cols.taps).enumerate() {
                    if j < self.cols.start || j >= self.cols.end {
                        *dst = bias;
                        continue;
                    }
                    let top = r0[x0] + wx * (r0[x1] - r0[x0]);
                    let bottom = r1[x0] + wx * (r1[x1] - r1[x0]);
                    let v = top + wy * (bottom - top);
                    *dst = v * gain + bias;
                }
            }
        }
    }
}

/// Writes the source pixels into planar f32 in the target colour (0..255 scale).
/// Luma uses ITU-R BT.601 weights, as PIL's `convert("L")` does; alpha is dropped.
fn fill_plane<T: Copy>(
    plane: &mut [f32],
    src: &[T],
    format: PixelFormat,
    target: Color,
    pixels: usize,
    value: impl Fn(T) -> f32,
) {
    let stride = format.channels();
    let colour = matches!(format, PixelFormat::Rgb | PixelFormat::Rgba);
    match target {
        Color::Gray => {
            for (dst, px) in plane[..pixels].iter_mut().zip(src.chunks_exact(stride)) {
                *dst = if colour {
                    0.299 * value(px[0]) + 0.587 * value(px[1]) + 0.114 * value(px[2])
                } else {
                    value(px[0])
                };
            }
        }
        Color::Rgb | Color::Bgr => {
            let order: [usize; 3] = if target == Color::Rgb { [0, 1, 2] } else { [2, 1, 0] };
            let (first, rest) = plane.split_at_mut(pixels);
            let (second, third) = rest.split_at_mut(pixels);
            for (k, px) in src.chunks_exact(stride).enumerate() {
                let rgb = if colour {
                    [value(px[0]), value(px[1]), value(px[2])]
                } else {
                    let v = value(px[0]);
                    [v, v, v]
                };
                first[k] = rgb[order[0]];
                second[k] = rgb[order[1]];
                third[k] = rgb[order[2]];
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
