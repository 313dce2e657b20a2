//! Issue 13, descriptors: `edge-kd serve` under a descriptor limit, flooded with idle
//! connections or short of descriptors, loses no folder file and keeps answering.

mod common;

use std::collections::HashSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::*;
use common::*;

/// The daemon's limit in the flood test: far fewer descriptors than the flood's connections.
const NOFILE: usize = 256;

struct Inbox {
    dir: tempfile::TempDir,
    inbox: PathBuf,
    done: PathBuf,
    results: PathBuf,
    config: PathBuf,
    port: u16,
}

fn inbox(http: &str) -> Inbox {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, done, results) = (dir.path().join("in"), dir.path().join("done"), dir.path().join("r.jsonl"));
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::create_dir_all(&done).unwrap();
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
{http}
[[source]]
name = "inbox"
folder = {{ path = "{inbox}", after = "move", move_to = "{done}" }}
[sinks.jsonl]
path = "{results}"
fsync = "always"
"#,
            state = dir.path().join("state").display(),
            inbox = inbox.display(),
            done = done.display(),
            results = results.display(),
        ),
    )
    .unwrap();
    Inbox { dir, inbox, done, results, config, port }
}

impl Inbox {
    /// Written beside the inbox and renamed in, as a camera uploader should.
    fn drop_file(&self, name: &str, sample: &str) {
        let tmp = self.dir.path().join(format!("{name}.part"));
        std::fs::copy(samples().join(sample), &tmp).unwrap();
        std::fs::rename(&tmp, self.inbox.join(name)).unwrap();
    }

    fn results(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.results)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

fn file_name(line: &serde_json::Value) -> String {
    let file = line["file"].as_str().unwrap_or_else(|| panic!("no file in {line}"));
    Path::new(file).file_name().unwrap().to_string_lossy().into_owned()
}

fn open_descriptors(pid: u32) -> HashSet<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

#[test]
fn a_connection_flood_under_prlimit_leaves_healthz_and_the_folder_working() {
    let max_connections = 64;
    let t = inbox(&format!("max_connections = {max_connections}"));
    let nofile = format!("--nofile={NOFILE}");
    let daemon = Daemon::start_under(&["prlimit", &nofile, "--"], &t.config, t.port);

    // More idle connections than the daemon has descriptors: each past the cap closes the
    // one that has waited longest.
    let flood: Vec<TcpStream> =
        (0..NOFILE + 100).map(|_| TcpStream::connect(("127.0.0.1", t.port)).unwrap()).collect();
    let asked = Instant::now();
    let health = http(t.port, "GET", "/healthz", None, b"").expect("/healthz answers during the flood");
    let health_took = asked.elapsed();
    assert_eq!(health.status, 200);
    assert!(health_took < Duration::from_secs(5), "/healthz took {health_took:?}");

    t.drop_file("during-flood.png", "0002-trouser.png");
    wait_until("the file's result", Duration::from_secs(20), || {
        t.results().len() == 1 && t.done.join("during-flood.png").exists()
    });
    let line = &t.results()[0];
    assert_eq!(file_name(line), "during-flood.png");
    assert_eq!(line["label"], "Trouser", "a real result, not an error: {line}");

    let open = open_descriptors(daemon.child.id()).len();
    assert!(open < NOFILE, "the daemon holds {open} descriptors of {NOFILE}");
    let gauge = metric(t.port, None, "edge_kd_http_connections").unwrap();
    assert!(gauge <= max_connections as f64, "{gauge} connections open, cap {max_connections}");
    let evicted = metric(t.port, None, "edge_kd_http_evicted_total").unwrap();
    assert!(evicted >= (flood.len() - max_connections) as f64, "{evicted} evicted");
    // For docs/RESULTS.md (`cargo test --test serve_descriptors -- --nocapture`).
    println!(
        "flood of {}: /healthz in {:?}; {open} descriptors held of {NOFILE}; {gauge} connections open; {evicted} evicted",
        flood.len(),
        health_took
    );
    drop(flood);
    let log = daemon.log.clone();
    assert_eq!(daemon.stop(), 0);
    let log = std::fs::read_to_string(log).unwrap();
    assert!(!log.contains("Too many open files"), "{log}");
}

/// Sets the soft limit on `pid`'s open descriptors; the old limit.
fn set_nofile(pid: u32, soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit(2) reads the current limits into `old`, then writes `new`; both valid.
    unsafe {
        assert_eq!(libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old), 0);
        let new = libc::rlimit { rlim_cur: soft, rlim_max: old.rlim_max };
        assert_eq!(libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()), 0);
    }
    old
}

#[test]
fn a_folder_file_that_cannot_be_opened_for_want_of_descriptors_stays_and_is_retried() {
    let t = inbox("");
    let daemon = Daemon::start(&t.config, t.port);
    t.drop_file("first.png", "0000-ankle-boot.png");
    wait_until("the first result", Duration::from_secs(20), || t.results().len() == 1);

    // Every descriptor below the limit taken: the daemon's next open fails with EMFILE.
    let pid = daemon.child.id();
    let open = open_descriptors(pid);
    let lowest_free = (0..).find(|fd| !open.contains(fd)).unwrap();
    let old = set_nofile(pid, lowest_free as u64);
    t.drop_file("starved.png", "0002-trouser.png");
    let retry_line = "starved.png: cannot read: Too many open files";
    wait_until("the retry's log line", Duration::from_secs(20), || daemon.log_text().contains(retry_line));
    // Retried at 100, 200, 400, 800 ms...: still one line, no result, the file in place.
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(daemon.log_text().matches("cannot read").count(), 1, "{}", daemon.log_text());
    assert_eq!(t.results().len(), 1, "no error result for a fault of the machine: {:?}", t.results());
    assert!(t.inbox.join("starved.png").exists(), "the file stays in the inbox");

    set_nofile(pid, old.rlim_cur);
    wait_until("the retried file's result", Duration::from_secs(20), || {
        t.results().len() == 2 && t.done.join("starved.png").exists()
    });
    let line = &t.results()[1];
    assert_eq!(
        (file_name(line).as_str(), &line["label"]),
        ("starved.png", &serde_json::json!("Trouser")),
        "{line}"
    );
    assert!(daemon.log_text().contains("every file that could not be read is now read"));
    let retries = metric(t.port, None, r#"edge_kd_read_retries_total{source="inbox"}"#).unwrap();
    assert!(retries >= 3.0, "{retries} retries");
    println!("EMFILE for 2 s: {retries} retries, one log line, then the real result");
    assert_eq!(metric(t.port, None, r#"edge_kd_read_retry_pending{source="inbox"}"#), Some(0.0));
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn check_config_refuses_a_connection_cap_that_does_not_fit_the_descriptor_limit() {
    let check = |http: &str| {
        let t = inbox(http);
        let out = std::process::Command::new("prlimit")
            .args([
                &format!("--nofile={NOFILE}"),
                "--",
                env!("CARGO_BIN_EXE_edge-kd"),
                "serve",
                "--check-config",
            ])
            .arg(&t.config)
            .env("ORT_DYLIB_PATH", ort_library())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, text) = check("max_connections = 200");
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("http.max_connections: 200 connections") && text.contains("descriptor limit 256"),
        "{text}"
    );
    let (code, text) = check("max_connections = 128");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("at most 128 connections (descriptor limit 256)"), "{text}");
    let (code, text) = check("idle_timeout_ms = 0");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("http.idle_timeout_ms: must be > 0"), "{text}");
}
