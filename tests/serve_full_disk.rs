//! Issue 13, a full disk: the JSONL file, the state folder and the MQTT spool on a 2 MiB
//! tmpfs that fills up while a folder backlog and an upload come in. Every input ends with
//! exactly one result in every sink, none torn, `seq` strictly increasing; while the disk is
//! full the files stay in the inbox, the upload is not answered and `/readyz` says why; once
//! space is back everything is written and the files move, and a restart processes none again.
//! Needs root to mount the tmpfs: elsewhere the test says so and passes without running.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::*;
use common::*;

// The sinks' unit tests' tmpfs, shared rather than written again.
#[path = "../src/sink/small_disk.rs"]
mod small_disk;
use small_disk::{SmallDisk, fill};

/// Every line of the JSONL file: it ends with a newline (no torn last line) and each line
/// is a whole JSON object.
fn results(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail = &text[text.len().saturating_sub(80)..];
    assert!(text.is_empty() || text.ends_with('\n'), "the file ends inside a line: {tail:?}");
    result_lines(path)
}

fn drop_files(inbox: &Path, from: usize, n: usize) {
    let samples: Vec<PathBuf> = std::fs::read_dir(samples()).unwrap().map(|e| e.unwrap().path()).collect();
    for i in from..from + n {
        let sample = &samples[i % samples.len()];
        // Written beside the inbox and renamed in, as a camera daemon would.
        let staged = inbox.with_extension("staging").join(format!("f{i:03}.png"));
        std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
        std::fs::copy(sample, &staged).unwrap();
        std::fs::rename(&staged, inbox.join(format!("f{i:03}.png"))).unwrap();
    }
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_full_disk_delays_results_but_loses_none_tears_none_and_strands_none() {
    let dir = tempfile::tempdir().unwrap();
    let disk = match SmallDisk::mount(2 << 20) {
        Ok(disk) => disk,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let (inbox, done) = (dir.path().join("in"), dir.path().join("done"));
    // 51 inputs while the disk is full: 50 files and an upload.
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::create_dir_all(&done).unwrap();
    let jsonl = disk.path().join("results.jsonl");
    let mut broker = Broker::start(dir.path());
    let sub = Subscriber::start(broker.port, "test-sub-full-disk", "edge-kd/box9/+/result");
    let port = free_port();
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            r#"[box]
id = "box9"
state_dir = "{state}"
[http]
listen = "127.0.0.1:{port}"
[[source]]
name = "inbox"
folder = {{ path = "{inbox}", after = "move", move_to = "{done}" }}
[[source]]
name = "upload"
http = {{}}
[sinks.jsonl]
path = "{jsonl}"
fsync = "always"
[sinks.mqtt]
host = "127.0.0.1"
port = {mqtt}
fsync = "always"
"#,
            state = disk.path().join("state").display(),
            inbox = inbox.display(),
            done = done.display(),
            jsonl = jsonl.display(),
            mqtt = broker.port,
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, port);
    drop_files(&inbox, 0, 10);
    wait_until("10 results", Duration::from_secs(30), || results(&jsonl).len() == 10);

    let filler = fill(&disk);
    // More than the last pages of the files hold: the disk refuses the rest.
    drop_files(&inbox, 10, 40);
    wait_until("/readyz to name the JSONL file", Duration::from_secs(30), || {
        http(port, "GET", "/readyz", None, b"").is_some_and(|r| {
            r.status == 503 && r.json()["sinks"]["jsonl"]["writing"] == serde_json::json!(false)
        })
    });
    let png = std::fs::read(samples().join("0002-trouser.png")).unwrap();
    let upload = std::thread::spawn(move || http(port, "POST", "/infer?source=upload", None, &png));
    wait_until("every file read", Duration::from_secs(30), || {
        metric(port, None, "edge_kd_jsonl_waiting").is_some_and(|w| w as usize + results(&jsonl).len() == 51)
    });
    let written = results(&jsonl).len();
    std::thread::sleep(Duration::from_secs(2));
    assert!(!upload.is_finished(), "the upload was answered before its result was written");
    assert_eq!(results(&jsonl).len(), written, "no line while the disk is full");
    assert_eq!(count(&inbox), 51 - written, "the files whose result is not written wait in the inbox");

    std::fs::remove_file(&filler).unwrap();
    let answer = upload.join().unwrap().expect("the upload's answer");
    assert_eq!(answer.status, 200, "{}", answer.body);
    wait_until("every result and move", Duration::from_secs(30), || {
        results(&jsonl).len() == 51 && count(&inbox) == 0 && count(&done) == 50
    });
    wait_until("/readyz 200", Duration::from_secs(10), || {
        http(port, "GET", "/readyz", None, b"").is_some_and(|r| r.status == 200)
    });
    let failed = metric(port, None, "edge_kd_jsonl_errors_total").unwrap() as usize;
    assert_eq!(failed, 51 - written, "edge_kd_jsonl_errors_total: the results that waited, each once");
    let log = daemon.log_text();
    let refusals = log.lines().filter(|l| l.contains("No space left") && l.contains("results.jsonl")).count();
    assert!(refusals <= 2, "{refusals} lines about the full JSONL disk (one per state change):\n{log}");
    assert!(log.contains("sinks.jsonl: writing again"), "{log}");
    drop_files(&inbox, 50, 5);
    wait_until("the last 5", Duration::from_secs(30), || results(&jsonl).len() == 56 && count(&inbox) == 0);
    let spooled = || metric(port, None, "edge_kd_mqtt_spooled_total");
    let pending = || metric(port, None, "edge_kd_mqtt_spool_pending");
    let published = || sub.payloads().len();
    let status = || format!("spooled {:?}, pending {:?}, received {}", spooled(), pending(), published());
    if !(1..150).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        pending() == Some(0.0)
    }) {
        panic!("the spool did not empty: {}\n{}", status(), daemon.log_text());
    }
    assert_eq!(daemon.stop(), 0);

    // A restart finds nothing to do again.
    let daemon = Daemon::start(&config, port);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(daemon.stop(), 0);
    let all = results(&jsonl);
    assert_eq!(all.len(), 56, "one line per input, none processed twice");
    let mut files: Vec<&str> =
        all.iter().filter(|l| l["source"] == "inbox").map(|l| l["file"].as_str().unwrap()).collect();
    files.sort();
    files.dedup();
    assert_eq!(files.len(), 55, "every file once");
    let seqs: Vec<u64> = all.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq strictly increasing: {seqs:?}");
    wait_until("every result at the broker", Duration::from_secs(30), || sub.payloads().len() >= 56);
    let mut published: Vec<u64> = sub.payloads().iter().map(|p| p["seq"].as_u64().unwrap()).collect();
    published.sort();
    published.dedup();
    assert_eq!(published, seqs, "the broker got every result, whole, once (by seq)");
    broker.stop();
}
