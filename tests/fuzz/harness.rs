//! The bodies of edge-kd's fuzz targets, one function per target, each taking the raw fuzz
//! input. The libFuzzer targets (`fuzz_targets/*.rs`) call them, and
//! `tests/fuzz_regressions.rs` includes this very file to replay every saved input in
//! `tests/fixtures/fuzz/<target>/` under plain `cargo test`.
//!
//! Each function feeds the input to the entry point production uses and then checks what
//! the code after it relies on; an error result is fine, a panic (including a failed
//! `assert!` here), an allocation over the memory ceiling or a hang is a bug.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::IntoResponse;
use edge_kd::card::{self, Card, Color, InputSpec, Layout, Resize};
use edge_kd::classify::DecideOptions;
use edge_kd::engine::{EngineKind, EngineOptions};
use edge_kd::model::{CardlessOptions, Model};
use edge_kd::npy;
use edge_kd::onnx_meta::{self, ModelInfo, TensorInfo};
use edge_kd::preprocess::decode::{ImageFileDecoder, ImageLimits};
use edge_kd::preprocess::{Frame, PixelFormat, Preprocessor, Samples};
use edge_kd::serve::config::{DropPolicy, ServeConfig};
use edge_kd::serve::dispatch::Latest;
use edge_kd::serve::http::{SourceHandle, upload_target};
use edge_kd::serve::job::{Job, Payload};
use edge_kd::serve::model_slot::ModelSlot;
use edge_kd::serve::queue::BoundedQueue;
use edge_kd::sink::spool::Spool;
use edge_kd::sink::{FsyncPolicy, mqtt};
use edge_kd::source::camera::{self, RawFormat, RawFrame};

/// A target's body: takes the raw input, panics on a bug.
pub type Body = fn(&[u8]);

/// Every target by name, for the regression test (`tests/fixtures/fuzz/<name>/`).
pub const TARGETS: &[(&str, Body)] = &[
    ("card_json", card_json),
    ("onnx_meta", onnx_meta),
    ("npy", npy),
    ("image_decode", image_decode),
    ("camera_convert", camera_convert),
    ("serve_toml", serve_toml),
    ("infer_body", infer_body),
    ("spool_read", spool_read),
];

// ---------------------------------------------------------------------------------------
// card_json: the model card parser and validator (src/card.rs).

/// Input: the card's JSON text (what `metadata_props["edge_kd.card"]` holds).
pub fn card_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(card) = Card::parse(text) else { return };
    // `edge-kd card` prints any card that parses.
    let _ = (card.thresholds(), card.temperature(), card.to_json());
    // Validated against a graph that fits the card (so validation runs to its end), once with
    // fixed and once with symbolic (dynamic) batch/height/width, as exporters write them.
    for symbolic in [false, true] {
        if card.validate(&graph_for(&card, symbolic)).is_ok() {
            check_usable_card(&card);
        }
    }
}

fn graph_for(card: &Card, symbolic: bool) -> ModelInfo {
    let dims = |shape: &[usize]| {
        shape
            .iter()
            .enumerate()
            .map(|(i, &n)| if symbolic && i != 1 { None } else { i64::try_from(n).ok() })
            .collect()
    };
    ModelInfo {
        inputs: card
            .inputs
            .iter()
            .map(|i| TensorInfo { name: i.name.clone(), elem_type: Some(1), shape: Some(dims(&i.shape)) })
            .collect(),
        outputs: vec![TensorInfo {
            name: card.output.clone(),
            elem_type: Some(1),
            shape: Some(vec![Some(1), i64::try_from(card.labels.len()).ok()]),
        }],
        ..Default::default()
    }
}

/// What the code that takes a loaded model's card relies on (classify, preprocess, the
/// engines' trial run, `edge-kd card --json`).
fn check_usable_card(card: &Card) {
    assert_eq!(card.thresholds().len(), card.labels.len());
    for input in &card.inputs {
        assert_eq!(input.shape.len(), 4, "an NCHW shape");
        assert_eq!(input.shape[1], input.channels());
        assert_eq!(input.mean.len(), input.channels());
        assert_eq!(input.std.len(), input.channels());
        // Preprocessor::new and the engines allocate this many f32.
        let _ = input.tensor_len();
        let _ = (input.height(), input.width());
    }
    let json = card.to_json();
    let again =
        Card::parse(&json).unwrap_or_else(|e| panic!("the card's own JSON does not parse: {e}\n{json}"));
    assert_eq!(&again, card, "the card changed through to_json and parse");
}

// ---------------------------------------------------------------------------------------
// onnx_meta: the hand-written ONNX reader (src/onnx_meta.rs) over arbitrary bytes, then the
// rest of what `Model::open` does before an engine sees the file.

/// Input: the bytes of an `.onnx` file.
pub fn onnx_meta(data: &[u8]) {
    if let Ok(info) = onnx_meta::read_model_info(data) {
        let _ = info.metadata(card::METADATA_KEY);
        for t in info.inputs.iter().chain(&info.outputs) {
            let _ = (t.shape_string(), card::output_width(t));
        }
        assert!(!info.outputs.is_empty(), "read_model_info promises an output");
    }
    // The card from the file (parsed and validated against the graph), or one made from
    // the graph for a card-less model.
    let fallback = CardlessOptions::default();
    if let Ok(model) = Model::from_file_bytes(data.to_vec(), Path::new("fuzz.onnx"), &fallback) {
        check_usable_card(&model.card);
    }
}

// ---------------------------------------------------------------------------------------
// npy: the .npy reader (src/npy.rs).

/// Input: the bytes of a `.npy` file. Read with the bound `run` and `parity` use for a
/// model input (its tensor length; 3x32x32 here) and with no bound at all.
pub fn npy(data: &[u8]) {
    for max in [3 * 32 * 32, usize::MAX] {
        if let Ok(array) = npy::parse_f32(data, max) {
            let count = array.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            assert_eq!(
                count,
                Some(array.data.len()),
                "shape {:?} vs {} values",
                array.shape,
                array.data.len()
            );
            assert!(array.data.len() <= max);
        }
    }
}

// ---------------------------------------------------------------------------------------
// image_decode: PNG/JPEG/BMP decoding as uploads, folder files and `run` inputs are
// decoded (src/preprocess/decode.rs), then the preprocessing every decoded frame gets.

/// What a source without `[source.limits]` (and `run`) decodes with.
fn production_decoder() -> ImageFileDecoder {
    ImageFileDecoder::with_limits(ImageLimits::default())
}

/// Input: the bytes of an image file.
pub fn image_decode(data: &[u8]) {
    let mut decoder = production_decoder();
    let Ok(frame) = decoder.decode_encoded(data) else { return };
    check_frame(&frame);
    for spec in preprocess_specs() {
        check_preprocess(spec, &frame);
    }
}

fn check_frame(frame: &Frame) {
    let expected = frame.width.checked_mul(frame.height).and_then(|p| p.checked_mul(frame.format.channels()));
    let got = match frame.samples {
        Samples::U8(s) => s.len(),
        Samples::U16(s) => s.len(),
    };
    assert_eq!(expected, Some(got), "{}x{} {:?} frame", frame.width, frame.height, frame.format);
}

fn check_preprocess(spec: &InputSpec, frame: &Frame) {
    let mut pre = Preprocessor::new(spec);
    match pre.run(frame) {
        Ok(tensor) => {
            assert_eq!(tensor.len(), spec.tensor_len());
            assert!(tensor.iter().all(|v| v.is_finite()), "non-finite model input");
        }
        // A frame with no pixels is refused; every other decoded frame must preprocess.
        Err(e) => assert!(frame.width == 0 || frame.height == 0, "{e}"),
    }
}

/// One input spec per resize mode and colour, small, as the fixture models have them.
fn preprocess_specs() -> &'static [InputSpec] {
    static SPECS: OnceLock<Vec<InputSpec>> = OnceLock::new();
    SPECS.get_or_init(|| {
        let spec = |color: Color, resize: Resize, h: usize, w: usize| InputSpec {
            name: "image".into(),
            modality: "camera".into(),
            shape: vec![1, color.channels(), h, w],
            layout: Layout::Nchw,
            color,
            resize,
            resample: Default::default(),
            scale: 1.0 / 255.0,
            mean: vec![0.5; color.channels()],
            std: vec![0.25; color.channels()],
            optional: false,
        };
        vec![
            spec(Color::Gray, Resize::Stretch, 28, 28),
            spec(Color::Rgb, Resize::CenterCrop, 32, 32),
            spec(Color::Bgr, Resize::Letterbox, 24, 40),
        ]
    })
}

// ---------------------------------------------------------------------------------------
// camera_convert: the camera frame converters (src/source/camera/mod.rs `convert`), then the
// preprocessing the worker runs on the result.

/// Largest side the target asks for: every UVC camera's modes fit (4K is 3840x2160), and a
/// legitimate frame of that size (48 MiB as RGB) stays under the memory ceiling.
pub const CAMERA_MAX_SIDE: u32 = 4096;

/// Input: byte 0 the format (mod 3: YUYV, MJPEG, RGB24), bytes 1-2 and 3-4 the width and
/// height the driver announced (u16 LE, mod `CAMERA_MAX_SIDE + 1`, so 0 is possible), the
/// rest the frame as the driver delivered it.
pub fn camera_convert(data: &[u8]) {
    let Some((head, bytes)) = data.split_first_chunk::<5>() else { return };
    let format = [RawFormat::Yuyv, RawFormat::Mjpeg, RawFormat::Rgb24][usize::from(head[0] % 3)];
    let side = |lo: u8, hi: u8| u32::from(u16::from_le_bytes([lo, hi])) % (CAMERA_MAX_SIDE + 1);
    let (width, height) = (side(head[1], head[2]), side(head[3], head[4]));
    let raw = RawFrame { format, width, height, bytes: bytes.to_vec(), captured_at: SystemTime::UNIX_EPOCH };
    let mut out = Vec::new();
    let Ok(pixels) = camera::convert(&raw, &mut out) else { return };
    assert!(matches!(pixels, PixelFormat::Rgb | PixelFormat::Gray), "{pixels:?}");
    let frame =
        Frame { width: width as usize, height: height as usize, format: pixels, samples: Samples::U8(&out) };
    // What serve's worker does next (classify_camera): the converted frame must fit.
    check_frame(&frame);
    check_preprocess(&preprocess_specs()[1], &frame);
}

// ---------------------------------------------------------------------------------------
// serve_toml: the daemon's config parser and validation (src/serve/config.rs), all that
// `serve --check-config` does before it loads models, and the first things `serve` builds
// from a config that passed.

/// Input: the TOML text of a serve config.
pub fn serve_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = ServeConfig::parse(text, Path::new("fuzz.toml")) else { return };
    let _ = config.shutdown_drain();
    for s in &config.sources {
        let _ = (s.kind(), s.engine_kind());
        // serve::run makes one queue per source: a config that validates must not take
        // the daemon down (or a box's memory) when it starts.
        let _queue: BoundedQueue<Job> = BoundedQueue::new(s.queue, s.drop_policy());
    }
    let _ = Latest::new(config.http.keep_latest);
    if let Some(m) = &config.sinks.mqtt {
        for s in &config.sources {
            let topic = mqtt::result_topic(m, &config.box_.id, &s.name);
            assert!(!topic.contains(['#', '+']), "wildcard in topic {topic:?}");
        }
        let _ = mqtt::status_topic(m, &config.box_.id);
    }
}

// ---------------------------------------------------------------------------------------
// infer_body: what `POST /infer` does with a request before inference (src/serve/http.rs
// `upload_target`: query, body, which upload source), then the worker's decode and
// preprocessing of the body for the embedded default student.

/// Input: line 1 the configured sources, comma-separated, a leading `+` marking those that
/// take uploads (`http = {}`); line 2 the request target (`/infer?source=NAME`); then, when
/// line 3 starts with `content-type:`, that header (a multipart upload's boundary); the rest
/// the body. Every source serves the embedded default student (one input, `image`).
pub fn infer_body(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let (Some(names), Some(target)) = (parts.next(), parts.next()) else { return };
    let mut body = parts.next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    if body.len() >= 13 && body[..13].eq_ignore_ascii_case(b"content-type:") {
        let (line, rest) = body.split_at(body.iter().position(|&b| b == b'\n').unwrap_or(body.len()));
        body = rest.get(1..).unwrap_or_default();
        // A header value that is not one never reaches the handler (hyper answers 400).
        let Ok(value) = HeaderValue::from_bytes(line[13..].trim_ascii()) else { return };
        headers.insert(header::CONTENT_TYPE, value);
    }
    let Ok(names) = std::str::from_utf8(names) else { return };
    // A request line that is not a URI never reaches the handler (hyper answers 400).
    let Ok(uri) = Uri::try_from(target) else { return };
    let sources: Vec<SourceHandle> = names
        .split(',')
        .take(8)
        .map(|n| SourceHandle {
            name: n.strip_prefix('+').unwrap_or(n).to_string(),
            queue: Arc::new(BoundedQueue::new(1, DropPolicy::DropOldest)),
            counters: Arc::default(),
            uploads: n.starts_with('+'),
            slot: default_slot(),
            input: Some("image".into()),
        })
        .collect();
    match upload_target(&sources, &uri, &headers, Ok(Bytes::copy_from_slice(body))) {
        Ok((index, taken)) => {
            assert!(sources[index].uploads, "an upload routed to a source without http = {{}}");
            assert!(!body.is_empty());
            assert_eq!(taken.len(), 1, "the default student has one input, so one part");
            let Payload::Encoded(bytes) = &taken[0].payload else { panic!("an upload is encoded bytes") };
            assert_eq!(taken[0].input, "image");
            if headers.is_empty() {
                assert_eq!(&bytes[..], body);
            } else {
                assert!(!bytes.is_empty() && bytes.len() <= body.len());
            }
            // The worker: an uploaded part's decode and preprocessing, up to the engine.
            let mut decoder = production_decoder();
            if let Ok(frame) = decoder.decode_encoded(bytes) {
                check_frame(&frame);
                check_preprocess(default_student_input(), &frame);
            }
        }
        Err(e) => {
            let status = e.into_response().status();
            assert!(status.is_client_error(), "a bad request is the client's error, got {status}");
        }
    }
}

/// The slot every fuzzed upload source serves: the embedded default, opened once.
fn default_slot() -> Arc<ModelSlot> {
    static SLOT: OnceLock<Arc<ModelSlot>> = OnceLock::new();
    SLOT.get_or_init(|| {
        let engine = EngineOptions { kind: EngineKind::Tract, threads: 1, ort_library: None };
        let slot = ModelSlot::open(None, None, engine, DecideOptions::default(), ImageLimits::default());
        Arc::new(slot.expect("the embedded default student loads"))
    })
    .clone()
}

fn default_student_input() -> &'static InputSpec {
    static SPEC: OnceLock<InputSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let model = Model::embedded_default().expect("the embedded default student loads");
        model.card.inputs[0].clone()
    })
}

// ---------------------------------------------------------------------------------------
// spool_read: the MQTT spool as `serve` finds it after a restart (src/sink/spool.rs
// `Spool::open`, then reading every entry the way the publisher does).

/// Input: byte 0 the length of the `acked` file's content that follows (255: no `acked`
/// file), then that content, then the bytes of the one segment file
/// (`00000000000000000000.spool`).
pub fn spool_read(data: &[u8]) {
    let Some((&acked_len, rest)) = data.split_first() else { return };
    let (acked, segment) = match acked_len {
        255 => (None, rest),
        n => {
            let n = usize::from(n).min(rest.len());
            (Some(&rest[..n]), &rest[n..])
        }
    };
    SPOOL_DIR.with(|dir| {
        let dir = dir.borrow();
        let dir = fresh_dir(dir.path());
        std::fs::write(dir.join("00000000000000000000.spool"), segment).unwrap();
        if let Some(acked) = acked {
            std::fs::write(dir.join("acked"), acked).unwrap();
        }
        let Ok(mut spool) = open_spool(&dir) else { return };
        let (acked, next) = (spool.acked(), spool.next_seq());
        assert!(acked <= next, "acked {acked} past next_seq {next}");
        assert_eq!(spool.pending(), next - acked);
        let Ok(first) = read_all(&mut spool) else { return };
        assert_eq!(first, (acked..next).collect::<Vec<_>>(), "entries out of order or missing");

        // A result appended after the restart is kept across the next one.
        let seq = spool.append("edge-kd/box/src/result", "{\"fuzz\":1}").expect("append after open");
        assert_eq!(seq, next);
        drop(spool);
        let mut spool = open_spool(&dir).expect("the spool reopens after an append");
        assert_eq!((spool.acked(), spool.next_seq()), (acked, next + 1));
        let again = read_all(&mut spool).expect("what was readable stays readable");
        assert_eq!(again, (acked..next + 1).collect::<Vec<_>>());
    });
}

thread_local! {
    static SPOOL_DIR: RefCell<tempfile::TempDir> =
        RefCell::new(tempfile::Builder::new().prefix("edge-kd-fuzz-spool").tempdir().unwrap());
}

fn fresh_dir(parent: &Path) -> PathBuf {
    let dir = parent.join("spool");
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("{}: {e}", dir.display()),
    }
    std::fs::create_dir(&dir).unwrap();
    dir
}

fn open_spool(dir: &Path) -> Result<Spool, edge_kd::sink::spool::SpoolError> {
    Spool::open(dir, FsyncPolicy::Never, std::time::Duration::from_secs(1))
}

/// Every entry from `acked()` on, in batches of 32 as the publisher reads them (its window);
/// their seqs.
fn read_all(spool: &mut Spool) -> Result<Vec<u64>, edge_kd::sink::spool::SpoolError> {
    let mut seqs = Vec::new();
    let mut next = spool.acked();
    loop {
        let batch = spool.read(next, 32)?;
        let Some(last) = batch.last() else { break };
        next = last.seq + 1;
        seqs.extend(batch.iter().map(|e| e.seq));
        assert!(seqs.len() as u64 <= spool.pending(), "more entries than pending");
    }
    Ok(seqs)
}
