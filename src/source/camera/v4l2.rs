//! One camera session over V4L2: open the node, negotiate format, size and frame rate,
//! stream memory-mapped buffers until the camera fails or `stop` is set. The only file
//! that uses the `v4l` crate; reconnecting is the caller's (`supervise`) job.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use v4l::buffer::{Flags as BufferFlags, Type};
use v4l::capability::Flags as CapabilityFlags;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::{CaptureStream, Stream as _};
use v4l::video::Capture;
use v4l::video::capture::Parameters;
use v4l::{Device, Format, FourCC, Fraction};

use super::supervise::{FrameGate, STOP_CHECK};
use super::{
    CameraConfig, CameraError, CameraEvent, CameraFormat, CameraState, RawFormat, RawFrame, list_devices,
};

/// Buffers asked of the driver: a few frames of slack for a slow consumer, few enough
/// that a kept frame is never more than a few frame periods old.
const BUFFERS: u32 = 4;

/// Backstop for v4l's own wait inside `next()`, which is only called once `poll` has said
/// a frame is ready; reaching it means the driver misbehaves and the session restarts.
const DEQUEUE_TIMEOUT: Duration = Duration::from_secs(1);

/// A camera silent this long is treated as lost: UVC cameras that hang after a USB glitch
/// otherwise stay "streaming" forever without a single frame.
const STALL_AFTER: Duration = Duration::from_secs(5);

/// Streams from `cfg.device` until `stop` (`Ok`) or a failure (`Err`).
pub(super) fn stream(
    cfg: &CameraConfig,
    stop: &AtomicBool,
    emit: &mut dyn FnMut(CameraEvent),
) -> Result<(), CameraError> {
    let device = cfg.device.as_path();
    let fail = |op: &'static str| move |e: io::Error| io_error(device, op, e);

    let dev = Device::with_path(device).map_err(fail("open"))?;
    let caps = dev.query_caps().map_err(fail("VIDIOC_QUERYCAP"))?;
    if !caps.capabilities.contains(CapabilityFlags::VIDEO_CAPTURE) {
        return Err(CameraError::NotCapture { device: device.to_path_buf() });
    }
    if !caps.capabilities.contains(CapabilityFlags::STREAMING) {
        return Err(CameraError::NoStreaming { device: device.to_path_buf() });
    }

    let offered: Vec<FourCC> =
        dev.enum_formats().map_err(fail("VIDIOC_ENUM_FMT"))?.into_iter().map(|d| d.fourcc).collect();
    let asked = choose_format(cfg, &dev, &offered)?;
    let granted =
        dev.set_format(&Format::new(cfg.width, cfg.height, fourcc(asked))).map_err(fail("VIDIOC_S_FMT"))?;
    let format = raw_format(granted.fourcc).ok_or_else(|| CameraError::FormatRefused {
        device: device.to_path_buf(),
        asked,
        granted: fourcc_name(granted.fourcc),
    })?;
    let fps = negotiate_fps(&dev, cfg.fps).map_err(fail("VIDIOC_S_PARM"))?;
    let layout = Layout::new(format, granted.width, granted.height, granted.stride);

    let mut stream =
        MmapStream::with_buffers(&dev, Type::VideoCapture, BUFFERS).map_err(fail("VIDIOC_REQBUFS"))?;
    stream.set_timeout(DEQUEUE_TIMEOUT);
    start_streaming(&mut stream).map_err(fail("VIDIOC_STREAMON"))?;
    let handle = stream.handle();
    emit(CameraEvent::State(CameraState::Streaming {
        format,
        width: granted.width,
        height: granted.height,
        fps,
    }));

    // A camera asked for a low rate may legitimately be quiet for a few frame periods.
    let stall_after = match fps {
        Some(fps) if fps > 0 => STALL_AFTER.max(Duration::from_millis(3000 / u64::from(fps))),
        _ => STALL_AFTER,
    };
    let poll_ms = i32::try_from(STOP_CHECK.as_millis()).unwrap_or(50);
    let mut gate = FrameGate::new(cfg.interval_ms);
    let mut last_frame = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Waiting here rather than in v4l's `next()` keeps the stop flag checked while the
        // camera is silent (v4l would block, or break its queue state on a timeout).
        match handle.poll(libc::POLLIN, poll_ms) {
            Ok(0) => {
                if last_frame.elapsed() >= stall_after {
                    return Err(CameraError::Stalled { device: device.to_path_buf(), silent: stall_after });
                }
                continue;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(device, "poll", e)),
        }
        let (buffer, meta) = CaptureStream::next(&mut stream).map_err(fail("VIDIOC_DQBUF"))?;
        let now = Instant::now();
        last_frame = now;
        // The driver flags frames it knows are damaged (lost USB packets); they would only
        // come back as garbled pictures or conversion errors.
        if meta.flags.contains(BufferFlags::ERROR) || meta.bytesused == 0 || !gate.admit(now) {
            continue;
        }
        let used = &buffer[..buffer.len().min(meta.bytesused as usize)];
        emit(CameraEvent::Frame(RawFrame {
            format,
            width: granted.width,
            height: granted.height,
            bytes: layout.pack(used),
            captured_at: SystemTime::now(),
        }));
    }
    Ok(())
}

/// v4l's `next()` queues every buffer on its first call and then waits in DQBUF, and
/// after a dequeue that timed out it re-queues a buffer the driver still holds (EINVAL).
/// So streaming starts here with every buffer but the first queued; each `next()` then
/// queues the buffer it handed out before (the first time: buffer 0) and is only called
/// once `poll` says a frame is ready.
fn start_streaming(stream: &mut MmapStream) -> io::Result<()> {
    for index in 1..BUFFERS as usize {
        if let Err(e) = CaptureStream::queue(stream, index) {
            // The driver may grant fewer buffers than asked; two are enough to stream.
            if index >= 2 && e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e);
        }
    }
    stream.start()
}

/// The requested format when the camera offers it; otherwise (and for `auto`) MJPEG if
/// offered at the configured size (a quarter of the USB bandwidth of YUYV), else YUYV,
/// else RGB3, else MJPEG at whatever size the driver picks. `convert` takes all three, so
/// streaming in another format beats not streaming; `Streaming` reports what was granted.
fn choose_format(cfg: &CameraConfig, dev: &Device, offered: &[FourCC]) -> Result<RawFormat, CameraError> {
    let offers = |format: RawFormat| offered.contains(&fourcc(format));
    let requested = match cfg.format {
        CameraFormat::Auto => None,
        CameraFormat::Yuyv => Some(RawFormat::Yuyv),
        CameraFormat::Mjpeg => Some(RawFormat::Mjpeg),
        CameraFormat::Rgb => Some(RawFormat::Rgb24),
    };
    if let Some(format) = requested
        && offers(format)
    {
        return Ok(format);
    }
    let mjpeg_at_size = offers(RawFormat::Mjpeg)
        && offers_size(dev, fourcc(RawFormat::Mjpeg), cfg.width, cfg.height) != Some(false);
    [
        mjpeg_at_size.then_some(RawFormat::Mjpeg),
        offers(RawFormat::Yuyv).then_some(RawFormat::Yuyv),
        offers(RawFormat::Rgb24).then_some(RawFormat::Rgb24),
        offers(RawFormat::Mjpeg).then_some(RawFormat::Mjpeg),
    ]
    .into_iter()
    .flatten()
    .next()
    .ok_or_else(|| CameraError::NoUsableFormat {
        device: cfg.device.clone(),
        offered: offered.iter().map(|&f| fourcc_name(f)).collect(),
    })
}

/// Whether `fourcc` is offered at `width`x`height`; `None` when the driver does not
/// enumerate frame sizes (many accept any size and pick the nearest).
fn offers_size(dev: &Device, fourcc: FourCC, width: u32, height: u32) -> Option<bool> {
    let sizes = dev.enum_framesizes(fourcc).ok().filter(|s| !s.is_empty())?;
    let in_steps = |v: u32, min: u32, max: u32, step: u32| {
        (min..=max).contains(&v) && (step == 0 || (v - min).is_multiple_of(step))
    };
    Some(sizes.iter().any(|size| match &size.size {
        FrameSizeEnum::Discrete(d) => d.width == width && d.height == height,
        FrameSizeEnum::Stepwise(s) => {
            in_steps(width, s.min_width, s.max_width, s.step_width)
                && in_steps(height, s.min_height, s.max_height, s.step_height)
        }
    }))
}

/// Asks for `wanted` fps and returns the rate the driver reports. Drivers without
/// frame-rate control refuse S_PARM; the camera then streams at its own rate.
fn negotiate_fps(dev: &Device, wanted: Option<u32>) -> io::Result<Option<u32>> {
    let params = match wanted {
        Some(fps) => match dev.set_params(&Parameters::with_fps(fps)) {
            Ok(params) => Some(params),
            Err(e) if is_gone(&e) => return Err(e),
            Err(_) => dev.params().ok(),
        },
        None => dev.params().ok(),
    };
    Ok(params.and_then(|p| fps_of(p.interval)))
}

/// Frames per second from a time-per-frame fraction, rounded.
fn fps_of(interval: Fraction) -> Option<u32> {
    let (num, den) = (u64::from(interval.numerator), u64::from(interval.denominator));
    if num == 0 || den == 0 {
        return None;
    }
    u32::try_from((den + num / 2) / num).ok()
}

/// Turns driver buffers into tightly packed `RawFrame` bytes.
struct Layout {
    format: RawFormat,
    /// Bytes of pixel data per row (0 for MJPEG).
    row_bytes: usize,
    /// Bytes per row in the driver's buffer, padding included.
    stride: usize,
    rows: usize,
}

impl Layout {
    fn new(format: RawFormat, width: u32, height: u32, stride: u32) -> Layout {
        let row_bytes = match format {
            RawFormat::Yuyv => width as usize * 2,
            RawFormat::Rgb24 => width as usize * 3,
            RawFormat::Mjpeg => 0,
        };
        Layout { format, row_bytes, stride: (stride as usize).max(row_bytes), rows: height as usize }
    }

    /// A copy of `used` without row padding. A short buffer gives a short copy, which
    /// `convert` reports with the sizes involved.
    fn pack(&self, used: &[u8]) -> Vec<u8> {
        if self.format == RawFormat::Mjpeg || self.row_bytes == 0 {
            return used.to_vec();
        }
        let mut bytes = Vec::with_capacity(self.row_bytes * self.rows);
        for row in used.chunks(self.stride).take(self.rows) {
            bytes.extend_from_slice(&row[..row.len().min(self.row_bytes)]);
        }
        bytes
    }
}

fn fourcc(format: RawFormat) -> FourCC {
    FourCC::new(match format {
        RawFormat::Yuyv => b"YUYV",
        RawFormat::Mjpeg => b"MJPG",
        RawFormat::Rgb24 => b"RGB3",
    })
}

fn raw_format(fourcc: FourCC) -> Option<RawFormat> {
    match &fourcc.repr {
        b"YUYV" => Some(RawFormat::Yuyv),
        b"MJPG" => Some(RawFormat::Mjpeg),
        b"RGB3" => Some(RawFormat::Rgb24),
        _ => None,
    }
}

/// `GREY`, `Y10 ` → `Y10`; codes that are not printable ASCII as hex.
fn fourcc_name(fourcc: FourCC) -> String {
    if fourcc.repr.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        String::from_utf8_lossy(&fourcc.repr).trim_end().to_string()
    } else {
        format!("0x{:08x}", u32::from_le_bytes(fourcc.repr))
    }
}

fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENXIO | libc::ENOENT))
}

/// The errors a person can act on get their own message; the rest keep the ioctl name.
fn io_error(device: &Path, op: &'static str, e: io::Error) -> CameraError {
    let device = device.to_path_buf();
    match e.raw_os_error() {
        Some(libc::ENOENT) => CameraError::NotFound { device, present: list_devices() },
        Some(libc::EACCES | libc::EPERM) => CameraError::PermissionDenied { device },
        Some(libc::EBUSY) => CameraError::Busy { device },
        Some(libc::ENODEV | libc::ENXIO) => CameraError::Disconnected { device },
        _ => CameraError::Io { device, op, source: e },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_rows_are_packed() {
        // 2x2 YUYV with rows padded from 4 to 6 bytes.
        let layout = Layout::new(RawFormat::Yuyv, 2, 2, 6);
        let padded = [1, 2, 3, 4, 0, 0, 5, 6, 7, 8, 0, 0];
        assert_eq!(layout.pack(&padded), [1, 2, 3, 4, 5, 6, 7, 8]);
        // Short buffers stay short so that `convert` can say so.
        assert_eq!(layout.pack(&padded[..8]), [1, 2, 3, 4, 5, 6]);
        let jpeg = Layout::new(RawFormat::Mjpeg, 640, 480, 0);
        assert_eq!(jpeg.pack(&[0xFF, 0xD8]), [0xFF, 0xD8]);
    }

    #[test]
    fn fourcc_names_read_well() {
        assert_eq!(fourcc_name(FourCC::new(b"GREY")), "GREY");
        assert_eq!(fourcc_name(FourCC::new(b"Y10 ")), "Y10");
        assert_eq!(fourcc_name(FourCC::new(&[0, 1, 2, 3])), "0x03020100");
        assert_eq!(raw_format(fourcc(RawFormat::Mjpeg)), Some(RawFormat::Mjpeg));
        assert_eq!(raw_format(FourCC::new(b"H264")), None);
    }

    #[test]
    fn frame_rate_from_time_per_frame() {
        assert_eq!(fps_of(Fraction::new(1, 30)), Some(30));
        assert_eq!(fps_of(Fraction::new(1001, 30000)), Some(30));
        assert_eq!(fps_of(Fraction::new(0, 30)), None);
    }

    #[test]
    fn errno_becomes_advice() {
        let err = |code| io_error(Path::new("/dev/video0"), "open", io::Error::from_raw_os_error(code));
        assert!(matches!(err(libc::EACCES), CameraError::PermissionDenied { .. }));
        assert!(matches!(err(libc::EBUSY), CameraError::Busy { .. }));
        assert!(matches!(err(libc::ENODEV), CameraError::Disconnected { .. }));
        let other = err(libc::EIO).to_string();
        assert!(other.starts_with("/dev/video0: open failed: "), "{other}");
    }
}
