//! `serve` publishing to a real mosquitto (Debian's, started on a free loopback port):
//! results survive a broker outage and a daemon killed with SIGKILL, arriving once each,
//! in order; the retained status topic says online, offline, and (last will) dead.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::*;
use common::*;

fn config(dir: &Path, http_port: u16, mqtt_port: u16) -> PathBuf {
    let path = dir.join("serve.toml");
    std::fs::write(
        &path,
        format!(
            r#"[box]
id = "box7"
state_dir = "{state}"
shutdown_drain_ms = 3000
[http]
listen = "127.0.0.1:{http_port}"
[[source]]
name = "line1"
http = {{}}
queue = 64
[sinks.jsonl]
path = "{results}"
[sinks.mqtt]
host = "127.0.0.1"
port = {mqtt_port}
keepalive_s = 5
"#,
            state = dir.join("state").display(),
            results = dir.join("results.jsonl").display(),
        ),
    )
    .unwrap();
    path
}

fn upload(port: u16, n: usize) {
    let png = std::fs::read(samples().join("0002-trouser.png")).unwrap();
    for _ in 0..n {
        let r = http(port, "POST", "/infer", None, &png).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// Every result, once, in spool order: seq strictly increasing, and the same numbers as in
/// the JSONL file (one result, one seq, in every sink).
fn assert_all_once_in_order(sub: &Subscriber, total: usize, dir: &Path) -> Vec<u64> {
    let payloads = sub.payloads();
    let seqs: Vec<u64> = payloads.iter().map(|p| p["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs.len(), total, "every result once: {seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    let jsonl: Vec<u64> = std::fs::read_to_string(dir.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(jsonl, seqs, "the JSONL file numbers each result as MQTT does");
    assert!(payloads.iter().all(|p| p["label"] == "Trouser" && p["source"] == "line1"));
    assert!(sub.topics().iter().all(|t| t == "edge-kd/box7/line1/result"));
    seqs
}

#[test]
fn a_broker_outage_loses_nothing_and_keeps_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let sub = Subscriber::start(broker.port, "test-sub-outage", "edge-kd/box7/+/result");
    let status = Subscriber::start(broker.port, "test-status-outage", "edge-kd/box7/status");
    let port = free_port();
    let daemon = Daemon::start(&config(dir.path(), port, broker.port), port);
    let published = |n: f64| move || metric(port, None, "edge_kd_mqtt_published_total") == Some(n);

    upload(port, 10);
    wait_until("10 published", Duration::from_secs(20), published(10.0));
    broker.stop();
    upload(port, 10);
    wait_until("the daemon to see the outage", Duration::from_secs(20), || {
        metric(port, None, "edge_kd_mqtt_connected") == Some(0.0)
    });
    assert_eq!(metric(port, None, "edge_kd_mqtt_spool_pending"), Some(10.0));
    broker.restart();
    upload(port, 10);
    wait_until("all 30 delivered", Duration::from_secs(30), || sub.payloads().len() >= 30);
    wait_until("the spool to empty", Duration::from_secs(10), || {
        metric(port, None, "edge_kd_mqtt_spool_pending") == Some(0.0)
    });
    assert_eq!(daemon.stop(), 0);
    std::thread::sleep(Duration::from_millis(300));
    let seqs = assert_all_once_in_order(&sub, 30, dir.path());
    assert_eq!(seqs, (0..30).collect::<Vec<_>>(), "a box without restarts numbers from 0, without gaps");
    // Retained status: online while connected, offline after a clean stop.
    let states: Vec<String> =
        status.payloads().iter().map(|p| p["state"].as_str().unwrap().to_string()).collect();
    assert_eq!(states.first().map(String::as_str), Some("online"), "{states:?}");
    assert_eq!(states.last().map(String::as_str), Some("offline"), "{states:?}");
}

#[test]
fn a_killed_daemon_replays_its_spool_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let sub = Subscriber::start(broker.port, "test-sub-kill", "edge-kd/box7/+/result");
    broker.stop();
    let port = free_port();
    let config = config(dir.path(), port, broker.port);
    let daemon = Daemon::start(&config, port);
    upload(port, 12);
    assert_eq!(metric(port, None, "edge_kd_mqtt_spool_pending"), Some(12.0));
    daemon.kill(); // SIGKILL: no flush, no goodbye

    broker.restart();
    let daemon = Daemon::start(&config, port);
    upload(port, 3);
    wait_until("all 15 delivered", Duration::from_secs(30), || sub.payloads().len() >= 15);
    // A box that dies while connected is announced by its last will.
    let status = Subscriber::start(broker.port, "test-status-kill", "edge-kd/box7/status");
    let state =
        |status: &Subscriber| status.payloads().last().map(|p| p["state"].as_str().unwrap().to_string());
    wait_until("the retained online status", Duration::from_secs(10), || {
        state(&status).as_deref() == Some("online")
    });
    daemon.kill();
    wait_until("the last will", Duration::from_secs(20), || state(&status).as_deref() == Some("offline"));
    std::thread::sleep(Duration::from_millis(300));
    // Strictly increasing across the SIGKILL: the restart skips the rest of the reserved block.
    let seqs = assert_all_once_in_order(&sub, 15, dir.path());
    assert_eq!(&seqs[..12], (0..12).collect::<Vec<_>>());
}
