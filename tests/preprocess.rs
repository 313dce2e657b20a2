//! The Rust preprocessing matches the trainer's definition (`edgekd_train.data.resample`,
//! through `tests/fixtures/preprocess_ref.py`) on every image and card in the fixtures, and on
//! textured images (stripes, noise, text; several sizes and aspects; 8- and 16-bit) in every
//! colour and resize mode, to one grey level: the box sees what training saw.

mod common;

use common::*;
use edge_kd::card::{Color, InputSpec, Layout, Resize};
use edge_kd::model::{CardlessOptions, Model};
use edge_kd::npy;
use edge_kd::preprocess::decode::ImageFileDecoder;
use edge_kd::preprocess::{Frame, PixelFormat, Preprocessor, Samples};

const IMAGES: [&str; 6] = [
    "rgb_50x30.png",
    "gray_28.png",
    "rgba_40x40.png",
    "gray16_20x20.png",
    "photo_64x48.jpg",
    "tiny_33x17.bmp",
];

fn model(name: &str) -> Model {
    Model::open(&fixture(&format!("models/{name}.onnx")), &CardlessOptions::default()).unwrap()
}

/// One grey level after the card's normalisation: fast_image_resize's fixed point and Pillow's
/// round a pixel differently now and then (measured: never by more than one level).
fn one_level(spec: &InputSpec) -> f32 {
    spec.scale / spec.std.iter().copied().fold(f32::INFINITY, f32::min) + 1e-4
}

/// A uint8 `.npy` (the JPEG as PIL decoded it, or what training stores), read here because
/// the runtime only takes float32 tensors.
fn read_u8_npy(path: &std::path::Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'|u1'"), "{header}");
    bytes[10 + header_len..].to_vec()
}

#[test]
fn jpeg_decoding_is_close_to_libjpeg() {
    let mut decoder = ImageFileDecoder::new();
    let frame = decoder.decode_file(&fixture("images/photo_64x48.jpg")).unwrap();
    let Samples::U8(ours) = frame.samples else { panic!("8-bit JPEG") };
    let pil = read_u8_npy(&fixture("images/photo_64x48.decoded.npy"));
    assert_eq!((frame.width, frame.height, ours.len()), (64, 48, pil.len()));
    // JPEG leaves IDCT rounding and chroma upsampling to the decoder: libjpeg-turbo (PIL)
    // and the image crate differ by a few levels on some pixels, not on average.
    let worst = ours.iter().zip(&pil).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    let mean = ours.iter().zip(&pil).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>() / pil.len() as f64;
    assert!(worst <= 6 && mean < 0.5, "JPEG decoders differ: max {worst} levels, mean {mean:.3}");
}

#[test]
fn jpeg_pixels_as_pil_decoded_them_preprocess_to_the_reference() {
    let pil = read_u8_npy(&fixture("images/photo_64x48.decoded.npy"));
    let frame = Frame { width: 64, height: 48, format: PixelFormat::Rgb, samples: Samples::U8(&pil) };
    for model_name in ["gray28", "rgb32_crop", "bgr_letterbox", "fashion-tiny"] {
        let model = model(model_name);
        let expected =
            npy::read_f32(&fixture(&format!("preprocess/photo_64x48__{model_name}.npy")), usize::MAX)
                .unwrap();
        let spec = &model.card.inputs[0];
        let diff = max_abs_diff(Preprocessor::new(spec).run(&frame).unwrap(), &expected.data);
        assert!(diff <= one_level(spec), "{model_name}: {diff}");
    }
}

#[test]
fn every_image_and_card_matches_the_reference() {
    for model_name in ["gray28", "rgb32_crop", "bgr_letterbox", "fashion-tiny"] {
        let model = model(model_name);
        let spec = &model.card.inputs[0];
        let mut pre = Preprocessor::new(spec);
        let mut decoder = ImageFileDecoder::new();
        for image in IMAGES {
            let stem = image.split('.').next().unwrap();
            let expected =
                npy::read_f32(&fixture(&format!("preprocess/{stem}__{model_name}.npy")), usize::MAX).unwrap();
            assert_eq!(expected.shape, spec.shape, "{stem}__{model_name}");
            let frame = decoder.decode_file(&fixture(&format!("images/{image}"))).unwrap();
            let got = pre.run(&frame).unwrap();
            let diff = max_abs_diff(got, &expected.data);
            // Decoded JPEG pixels may differ from PIL's by a few levels (see above); the
            // arithmetic itself is checked on PIL's pixels in the test before.
            let tolerance = if image.ends_with(".jpg") { 7.0 * one_level(spec) } else { one_level(spec) };
            assert!(diff <= tolerance, "{image} for {model_name} ({:?}): max abs diff {diff}", spec.resize);
        }
    }
}

#[test]
fn shipped_samples_preprocess_to_the_training_tensors() {
    let model = Model::embedded_default().unwrap();
    let mut pre = Preprocessor::new(&model.card.inputs[0]);
    let mut decoder = ImageFileDecoder::new();
    let mut samples: Vec<_> = std::fs::read_dir(samples()).unwrap().map(|e| e.unwrap().path()).collect();
    samples.sort();
    for (k, path) in samples.iter().take(4).enumerate() {
        let expected =
            npy::read_f32(&root().join(format!("models/default/reference/input_{k}.npy")), usize::MAX)
                .unwrap();
        let frame = decoder.decode_file(path).unwrap();
        let diff = max_abs_diff(pre.run(&frame).unwrap(), &expected.data);
        assert!(diff <= 1e-5, "{}: {diff}", path.display());
    }
}

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
fn textured_images_give_what_training_feeds_the_model_in_every_mode() {
    let dir = fixture("images/textured");
    let mut images: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    images.sort();
    assert!(images.len() >= 6, "{images:?}");
    let mut decoder = ImageFileDecoder::new();
    let mut checked = 0;
    let mut failures = Vec::new();
    let (mut off_by_one, mut pixels) = (0, 0);
    for path in &images {
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let frame = decoder.decode_file(path).unwrap();
        for (color, (h, w)) in [(Color::Gray, (28, 28)), (Color::Rgb, (24, 40))] {
            for resize in [Resize::Stretch, Resize::CenterCrop, Resize::Letterbox] {
                let name = format!("{stem}__{}__{}", color.as_str(), resize.as_str());
                // What training stores for this image and mode: uint8 (C, H, W), from Pillow.
                let trained = read_u8_npy(&fixture(&format!("preprocess/textured/{name}.npy")));
                let mut pre = Preprocessor::new(&spec(color, resize, h, w));
                let ours = pre.run(&frame).unwrap();
                assert_eq!(ours.len(), trained.len(), "{name}");
                let worst =
                    ours.iter().zip(&trained).map(|(a, &b)| (a - f32::from(b)).abs()).fold(0.0, f32::max);
                // 16-bit sources: training rounds v/257 to uint8, the runtime keeps it (≤ 0.5).
                let allowed = 1.0;
                if !matches!(frame.samples, Samples::U16(_)) {
                    off_by_one +=
                        ours.iter().zip(&trained).filter(|(a, b)| (**a - f32::from(**b)).abs() > 0.5).count();
                    pixels += ours.len();
                }
                if worst > allowed {
                    failures.push(format!("{name}: {worst} grey levels from what training feeds the model"));
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, images.len() * 6);
    assert!(failures.is_empty(), "{failures:#?}");
    // Each resampling pass is Pillow's and they run in Pillow's order (rows, then columns), so an
    // 8-bit pixel is one level off only where the two round a filter weight differently: 179 of
    // 66k here, where one two-axis fast_image_resize call had 7,874 (12 %).
    assert!(off_by_one * 100 < pixels, "{off_by_one} of {pixels} 8-bit pixels one level off training's");
}

#[test]
fn a_fine_textured_frame_shrunk_to_28_px_is_not_aliased() {
    // The case: fine stripes + noise at 640x480 to 28x28. An antialiased resize leaves
    // a nearly flat image; a 4-tap sampler left aliased noise (sd 33 levels).
    let mut decoder = ImageFileDecoder::new();
    let frame = decoder.decode_file(&fixture("images/textured/stripes_gray_640x480.png")).unwrap();
    let mut pre = Preprocessor::new(&spec(Color::Gray, Resize::Stretch, 28, 28));
    let out = pre.run(&frame).unwrap();
    let mean = out.iter().sum::<f32>() / out.len() as f32;
    let sd = (out.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / out.len() as f32).sqrt();
    assert!(sd < 3.0, "sd {sd} grey levels");
}
