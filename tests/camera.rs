//! Camera frames as USB cameras deliver them (recorded in `tests/fixtures/camera/` by
//! `make_frames.py`) become the RGB the preprocessor takes; broken frames are errors that
//! say what is wrong; a missing camera is reported, retried with growing waits, and the
//! capture loop still stops when asked.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use edge_kd::preprocess::PixelFormat;
use edge_kd::source::camera::{
    CameraConfig, CameraEvent, CameraFormat, CameraState, RawFormat, RawFrame, capture_loop, convert,
};

const W: u32 = 64;
const H: u32 = 48;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn raw(format: RawFormat, width: u32, height: u32, bytes: Vec<u8>) -> RawFrame {
    RawFrame { format, width, height, bytes, captured_at: SystemTime::now() }
}

fn recorded(format: RawFormat, name: &str) -> RawFrame {
    raw(format, W, H, std::fs::read(fixture(&format!("camera/{name}"))).unwrap())
}

fn png_rgb(name: &str) -> Vec<u8> {
    image::open(fixture(&format!("camera/{name}"))).unwrap().to_rgb8().into_raw()
}

fn converted(frame: &RawFrame) -> Vec<u8> {
    let mut out = Vec::new();
    assert_eq!(convert(frame, &mut out).unwrap(), PixelFormat::Rgb);
    assert_eq!(out.len(), (frame.width * frame.height * 3) as usize);
    out
}

/// Largest and mean absolute difference between two images of the same size.
fn diff(a: &[u8], b: &[u8]) -> (u8, f64) {
    assert_eq!(a.len(), b.len());
    let max = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0);
    let sum: u64 = a.iter().zip(b).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
    (max, sum as f64 / a.len() as f64)
}

fn convert_error(frame: &RawFrame) -> String {
    convert(frame, &mut Vec::new()).unwrap_err().to_string()
}

#[test]
fn yuyv_converts_within_two_levels_of_exact_bt601() {
    let rgb = converted(&recorded(RawFormat::Yuyv, "yuyv_64x48.yuyv"));
    let (max, mean) = diff(&rgb, &png_rgb("yuyv_64x48.expected.png"));
    assert!(max <= 2, "max difference {max} levels (mean {mean:.3})");
}

#[test]
fn rgb24_is_copied_unchanged_and_driver_padding_at_the_end_is_ignored() {
    let mut frame = recorded(RawFormat::Rgb24, "rgb24_64x48.rgb");
    assert_eq!(converted(&frame), png_rgb("source_64x48.png"));
    frame.bytes.extend_from_slice(&[0; 100]);
    assert_eq!(converted(&frame), png_rgb("source_64x48.png"));
}

#[test]
fn mjpeg_decodes_close_to_libjpeg() {
    // Decoders differ in IDCT rounding and chroma upsampling: on this picture (sharp
    // colour bars, 4:2:2) the image crate is within 2 levels of libjpeg, 0.11 on average.
    let rgb = converted(&recorded(RawFormat::Mjpeg, "mjpeg_64x48.jpg"));
    let (max, mean) = diff(&rgb, &png_rgb("mjpeg_64x48.expected.png"));
    assert!(max <= 4 && mean <= 0.5, "max difference {max} levels, mean {mean:.3}");
}

#[test]
fn mjpeg_without_huffman_tables_decodes_like_the_full_jpeg() {
    let full = converted(&recorded(RawFormat::Mjpeg, "mjpeg_64x48.jpg"));
    let stripped = converted(&recorded(RawFormat::Mjpeg, "mjpeg_64x48_nodht.jpg"));
    assert_eq!(stripped, full, "the inserted Annex K tables are the ones the encoder used");
}

#[test]
fn short_frames_say_how_many_bytes_were_needed() {
    assert_eq!(
        convert_error(&raw(RawFormat::Yuyv, 640, 480, vec![0; 1000])),
        "YUYV frame 640x480 needs 614400 bytes, got 1000"
    );
    assert_eq!(
        convert_error(&raw(RawFormat::Rgb24, W, H, vec![0; 9215])),
        "RGB24 frame 64x48 needs 9216 bytes, got 9215"
    );
    assert_eq!(
        convert_error(&raw(RawFormat::Yuyv, 63, 48, vec![0; 63 * 48 * 2])),
        "YUYV frame width 63 is odd (YUYV stores pixels in pairs)"
    );
    assert_eq!(convert_error(&raw(RawFormat::Rgb24, 0, 48, vec![])), "RGB24 frame is empty (0x48)");
    assert_eq!(
        convert_error(&raw(RawFormat::Yuyv, u32::MAX - 1, u32::MAX, vec![0; 8])),
        format!("YUYV frame {}x{} is too large to hold in memory", u32::MAX - 1, u32::MAX)
    );
}

#[test]
fn broken_mjpeg_is_an_error_never_a_panic() {
    let garbage = convert_error(&raw(RawFormat::Mjpeg, W, H, b"this is not a jpeg at all".to_vec()));
    assert!(garbage.starts_with("MJPEG frame does not decode: "), "{garbage}");
    let empty = convert_error(&raw(RawFormat::Mjpeg, W, H, vec![]));
    assert!(empty.starts_with("MJPEG frame does not decode: "), "{empty}");

    let mut other_size = recorded(RawFormat::Mjpeg, "mjpeg_64x48.jpg");
    other_size.width = 32;
    assert_eq!(convert_error(&other_size), "MJPEG frame is 64x48, the camera announced 32x48");

    // Truncated and bit-flipped frames, as a flaky USB link delivers them: any result but
    // a panic is fine (a truncated scan may still decode, padded with grey).
    let jpeg = std::fs::read(fixture("camera/mjpeg_64x48_nodht.jpg")).unwrap();
    let mut out = Vec::new();
    for cut in (0..jpeg.len()).step_by(7) {
        let _ = convert(&raw(RawFormat::Mjpeg, W, H, jpeg[..cut].to_vec()), &mut out);
    }
    for at in (0..jpeg.len()).step_by(5) {
        let mut flipped = jpeg.clone();
        flipped[at] ^= 0x5A;
        let _ = convert(&raw(RawFormat::Mjpeg, W, H, flipped), &mut out);
    }
}

#[test]
fn config_defaults_and_mistakes_name_the_key() {
    let cfg: CameraConfig = toml::from_str(r#"device = "/dev/video0""#).unwrap();
    assert_eq!(cfg, CameraConfig::new("/dev/video0"));
    assert_eq!((cfg.format, cfg.width, cfg.height), (CameraFormat::Auto, 640, 480));
    assert_eq!((cfg.fps, cfg.interval_ms, cfg.reconnect_max_ms), (None, None, 10_000));
    assert_eq!(cfg.validate(), Ok(()));

    let cfg: CameraConfig =
        toml::from_str("device = \"/dev/video2\"\nformat = \"mjpeg\"\nfps = 15\ninterval_ms = 500").unwrap();
    assert_eq!((cfg.format, cfg.fps, cfg.interval_ms), (CameraFormat::Mjpeg, Some(15), Some(500)));

    let typo = toml::from_str::<CameraConfig>("device = \"/dev/video0\"\nwidht = 320").unwrap_err();
    assert!(typo.to_string().contains("unknown field `widht`"), "{typo}");
    let format = toml::from_str::<CameraConfig>("device = \"/dev/video0\"\nformat = \"h264\"").unwrap_err();
    assert!(format.to_string().contains("unknown variant `h264`"), "{format}");

    let invalid = |edit: fn(&mut CameraConfig)| {
        let mut cfg = CameraConfig::new("/dev/video0");
        edit(&mut cfg);
        cfg.validate().unwrap_err()
    };
    assert_eq!(invalid(|c| c.width = 0), "width must be > 0");
    assert_eq!(invalid(|c| c.height = 0), "height must be > 0");
    assert!(invalid(|c| c.fps = Some(0)).starts_with("fps must be > 0"));
    assert!(invalid(|c| c.interval_ms = Some(0)).starts_with("interval_ms must be > 0"));
    assert!(invalid(|c| c.reconnect_max_ms = 10).starts_with("reconnect_max_ms must be at least 250"));
    assert!(invalid(|c| c.device = "".into()).starts_with("device must be"));
}

#[test]
fn states_read_well_in_logs() {
    let streaming =
        CameraState::Streaming { format: RawFormat::Mjpeg, width: 640, height: 480, fps: Some(30) };
    assert_eq!(streaming.to_string(), "streaming MJPEG 640x480 at 30 fps");
    assert!(streaming.is_up());
    let retrying = CameraState::Retrying { after: Duration::from_millis(500), attempt: 2 };
    assert_eq!(retrying.to_string(), "reconnecting in 500 ms (attempt 2)");
    assert!(!retrying.is_up() && !CameraState::Opening.is_up());
    assert_eq!(CameraState::Lost { error: "x".into() }.to_string(), "lost: x");
    let frame = CameraEvent::Frame(raw(RawFormat::Yuyv, 2, 1, vec![0; 4]));
    assert_eq!(frame.to_string(), "YUYV frame 2x1 (4 bytes)");
}

/// Runs `capture_loop` until `stop_after`, returning the events with their times and how
/// long the loop took to return once stopped.
fn run_loop(cfg: &CameraConfig, stop_after: Duration) -> (Vec<(Duration, CameraEvent)>, Duration) {
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let mut events = Vec::new();
    let stopped_at = std::thread::scope(|scope| {
        let stopper = scope.spawn(|| {
            std::thread::sleep(stop_after);
            stop.store(true, Ordering::SeqCst);
            Instant::now()
        });
        capture_loop(cfg, &stop, &mut |event| events.push((start.elapsed(), event)));
        let returned = Instant::now();
        let stopped = stopper.join().unwrap();
        returned.saturating_duration_since(stopped)
    });
    (events, stopped_at)
}

#[cfg(all(feature = "camera", target_os = "linux"))]
#[test]
fn a_missing_camera_is_retried_with_growing_waits_until_stopped() {
    let cfg = CameraConfig::new("/dev/video-does-not-exist");
    let (events, stop_latency) = run_loop(&cfg, Duration::from_millis(1200));
    let states: Vec<&CameraState> = events
        .iter()
        .map(|(_, e)| match e {
            CameraEvent::State(s) => s,
            CameraEvent::Frame(f) => panic!("a frame from a missing camera: {f:?}"),
        })
        .collect();

    assert_eq!(states[0], &CameraState::Opening);
    let CameraState::Lost { error } = states[1] else { panic!("expected Lost, got {:?}", states[1]) };
    assert!(
        error.starts_with("/dev/video-does-not-exist: no such device (is the camera plugged in?"),
        "{error}"
    );
    assert_eq!(states[2], &CameraState::Retrying { after: Duration::from_millis(250), attempt: 1 });

    // Opening, Lost, Retrying, again and again, each wait twice the one before.
    for cycle in states.chunks(3) {
        assert_eq!(cycle[0], &CameraState::Opening);
        if let Some(lost) = cycle.get(1) {
            assert!(matches!(lost, CameraState::Lost { .. }), "{lost:?}");
        }
    }
    let waits: Vec<(Duration, u32)> = states
        .iter()
        .filter_map(|s| match s {
            CameraState::Retrying { after, attempt } => Some((*after, *attempt)),
            _ => None,
        })
        .collect();
    // 250 ms + 500 ms fit before the stop; the 1000 ms wait is cut short by it.
    assert!(waits.len() >= 3, "{waits:?}");
    for (i, pair) in waits.windows(2).enumerate() {
        assert_eq!(pair[1].0, pair[0].0 * 2, "wait {} of {waits:?}", i + 1);
        assert_eq!(pair[1].1, pair[0].1 + 1);
    }
    // The stop flag is honoured mid-wait, not after the full 1 s back-off.
    assert!(stop_latency < Duration::from_millis(250), "returned {stop_latency:?} after stop");
}

#[cfg(all(feature = "camera", target_os = "linux"))]
#[test]
fn a_stop_flag_set_before_the_start_returns_at_once() {
    let cfg = CameraConfig::new("/dev/video-does-not-exist");
    let stop = AtomicBool::new(true);
    let mut events = Vec::new();
    capture_loop(&cfg, &stop, &mut |e| events.push(e));
    assert!(events.is_empty(), "{events:?}");
}

#[cfg(not(all(feature = "camera", target_os = "linux")))]
#[test]
fn without_the_camera_feature_the_loop_says_so_and_returns() {
    let cfg = CameraConfig::new("/dev/video0");
    let (events, _) = run_loop(&cfg, Duration::from_millis(10));
    assert_eq!(events.len(), 1);
    let CameraEvent::State(CameraState::Lost { error }) = &events[0].1 else { panic!("{:?}", events[0]) };
    assert_eq!(error, "edge-kd was built without the `camera` feature");
}
