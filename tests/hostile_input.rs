//! Images built to exhaust memory (tests/fixtures/hostile/, made by make_hostile.py): tiny
//! files that declare tens of thousands of pixels a side. `run` and `serve` refuse each by its
//! header, with an error naming the limit, and never hold more than a few tens of MB for it.
//! Each test binary is its own process, so the children's peak RSS measured here is only
//! these tests' `edge-kd` processes.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::daemon::*;
use common::*;

fn hostile(name: &str) -> PathBuf {
    fixture(&format!("hostile/{name}"))
}

/// The largest peak RSS of any waited-for child of this test process, in MiB.
fn children_peak_rss_mib() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_CHILDREN is always valid.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    usage.ru_maxrss as f64 / 1024.0 // kilobytes on Linux
}

/// Peak RSS of a running process (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

#[test]
fn run_refuses_images_declaring_huge_dimensions_by_their_header() {
    let cases = [
        ("png-50000x50000.png", "width 50000 is over the limit 16384 (max_width)"),
        ("jpeg-60000x60000.jpg", "width 60000 is over the limit 16384 (max_width)"),
        ("bmp-50000x50000.bmp", "width 50000 is over the limit 16384 (max_width)"),
        ("png-6000x4001.png", "pixel count 24006000 is over the limit 24000000 (max_pixels)"),
    ];
    for (name, message) in cases {
        let output = edge_kd()
            .args(["run", "--format", "jsonl"])
            .arg(hostile(name))
            .arg(samples().join("0002-trouser.png"))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(4), "{name}: {}", String::from_utf8_lossy(&output.stderr));
        let lines = stdout_lines(&output);
        assert_eq!(lines.len(), 2, "{name}: a line for the refused file and one for the good one");
        let error = lines[0]["error"].as_str().unwrap_or_else(|| panic!("{name}: {}", lines[0]));
        assert!(error.contains(message), "{name}: {error}");
        assert_eq!(lines[1]["label"], "Trouser", "the next input is unaffected");
    }
    let peak = children_peak_rss_mib();
    assert!(peak < 100.0, "peak RSS of edge-kd run on the hostile files: {peak:.0} MiB");
}

#[test]
fn run_limits_are_flags() {
    // Raised past the 24 MP image, it gets as far as decoding and fails on its missing rows;
    // lowered under a 28x28 sample, the sample itself is refused.
    let output = edge_kd()
        .args(["run", "--format", "jsonl", "--max-pixels", "30000000"])
        .arg(hostile("png-6000x4001.png"))
        .output()
        .unwrap();
    let error = stdout_lines(&output)[0]["error"].as_str().unwrap().to_string();
    assert!(error.starts_with("PNG image:") && !error.contains("limit"), "{error}");
    let output = edge_kd()
        .args(["run", "--format", "jsonl", "--max-dimension", "27"])
        .arg(samples().join("0002-trouser.png"))
        .output()
        .unwrap();
    let error = stdout_lines(&output)[0]["error"].as_str().unwrap().to_string();
    assert_eq!(error, "width 28 is over the limit 27 (max_width)");
    let output = edge_kd()
        .args(["run", "--format", "jsonl", "--max-file-bytes", "100"])
        .arg(samples().join("0002-trouser.png"))
        .output()
        .unwrap();
    let error = stdout_lines(&output)[0]["error"].as_str().unwrap().to_string();
    assert!(
        error.starts_with("file size ") && error.ends_with("over the limit 100 (max_file_bytes)"),
        "{error}"
    );
    edge_kd().args(["run", "--max-pixels", "0", "x.png"]).assert().code(2);
}

#[test]
fn serve_refuses_hostile_uploads_and_folder_files_without_growing() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, results) = (dir.path().join("in"), dir.path().join("r.jsonl"));
    std::fs::create_dir_all(&inbox).unwrap();
    let port = free_port();
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            r#"[box]
id = "test-box"
state_dir = "{state}"
[http]
listen = "127.0.0.1:{port}"
[[source]]
name = "upload"
http = {{}}
[[source]]
name = "inbox"
folder = {{ path = "{inbox}" }}
[source.limits]
max_width = 4096
max_height = 4096
[sinks.jsonl]
path = "{results}"
"#,
            state = dir.path().join("state").display(),
            inbox = inbox.display(),
            results = results.display(),
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, port);
    let idle = peak_rss_mib(daemon.child.id());
    for name in ["png-50000x50000.png", "jpeg-60000x60000.jpg", "bmp-50000x50000.bmp"] {
        let r =
            http(port, "POST", "/infer?source=upload", None, &std::fs::read(hostile(name)).unwrap()).unwrap();
        assert_eq!(r.status, 422, "{name}: {}", r.body);
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains("over the limit 16384 (max_width)"), "{name}: {error}");
        std::fs::copy(hostile(name), inbox.join(name)).unwrap();
    }
    wait_until("three folder results", Duration::from_secs(30), || {
        std::fs::read_to_string(&results).unwrap_or_default().matches("\"source\":\"inbox\"").count() == 3
    });
    let text = std::fs::read_to_string(&results).unwrap();
    for line in text.lines().filter(|l| l.contains("\"source\":\"inbox\"")) {
        assert!(line.contains("over the limit 4096 (max_width)"), "the folder source's own limits: {line}");
    }
    let grown = peak_rss_mib(daemon.child.id()) - idle;
    assert!(grown < 100.0, "the daemon's peak RSS grew by {grown:.0} MiB over idle ({idle:.0} MiB)");
    assert_eq!(http(port, "GET", "/healthz", None, b"").unwrap().status, 200);
    daemon.stop();
}
