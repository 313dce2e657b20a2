//! `edge-kd serve` as a box runs it: the real binary, real files, real HTTP, signals.
//! (MQTT, with a real mosquitto, is in `serve_mqtt.rs`.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::*;
use common::*;
use predicates::prelude::*;

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(samples().join(name)).unwrap()
}

#[test]
fn folder_source_end_to_end_in_arrival_order_with_review_frames_and_move() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, done, review, results) = (
        dir.path().join("in"),
        dir.path().join("done"),
        dir.path().join("review"),
        dir.path().join("r.jsonl"),
    );
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::create_dir_all(&done).unwrap();
    std::fs::write(inbox.join("early.png"), sample("0000-ankle-boot.png")).unwrap();
    let port = free_port();
    let config = dir.path().join("serve.toml");
    // A threshold no frame reaches: every verdict is `review`, so every frame is saved.
    std::fs::write(
        &config,
        format!(
            r#"[box]
id = "test-box"
state_dir = "{state}"
[http]
listen = "127.0.0.1:{port}"
[[source]]
name = "inbox"
threshold = 0.999999
folder = {{ path = "{inbox}", after = "move", move_to = "{done}" }}
[sinks.jsonl]
path = "{results}"
fsync = "always"
[sinks.review]
dir = "{review}"
max_files = 2
"#,
            state = dir.path().join("state").display(),
            inbox = inbox.display(),
            done = done.display(),
            results = results.display(),
            review = review.display(),
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, port);
    wait_until("the existing file", Duration::from_secs(20), || result_lines(&results).len() == 1);
    let names = ["0001-pullover.png", "0002-trouser.png", "0003-trouser.png"];
    for name in names {
        // Written elsewhere and renamed in: the way a camera uploader should drop files.
        let tmp = dir.path().join(format!("{name}.part"));
        std::fs::write(&tmp, sample(name)).unwrap();
        std::fs::rename(&tmp, inbox.join(name)).unwrap();
    }
    std::fs::write(inbox.join("broken.png"), b"not an image at all").unwrap();
    wait_until("every file", Duration::from_secs(20), || result_lines(&results).len() == 5);
    assert_eq!(daemon.stop(), 0);

    let lines = result_lines(&results);
    let files: Vec<String> = lines
        .iter()
        .map(|l| Path::new(l["file"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["early.png", names[0], names[1], names[2], "broken.png"], "arrival order, each once");
    assert_eq!(lines[0]["label"], "Ankle boot");
    assert_eq!(lines[1]["label"], "Pullover");
    for l in &lines[..4] {
        assert_eq!(l["verdict"], "review");
        assert_eq!(l["source"], "inbox");
        assert!(l["model_sha256"].as_str().unwrap().len() == 64);
        assert!(l["ts_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }
    assert!(lines[4]["error"].as_str().unwrap().contains("not a PNG, JPEG or BMP"), "{}", lines[4]);
    // Moved only once written; the broken file too (its error line is its result).
    assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&done).unwrap().count(), 5);
    // Review retention: the newest 2 frames, each with its result beside it.
    let mut saved: Vec<String> =
        std::fs::read_dir(&review).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    saved.sort();
    assert_eq!(saved.len(), 4, "{saved:?}");
    assert!(
        saved[0].ends_with("-inbox-Trouser.json") && saved[1].ends_with("-inbox-Trouser.png"),
        "{saved:?}"
    );
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(review.join(&saved[2])).unwrap()).unwrap();
    assert_eq!(sidecar["verdict"], "review");
}

fn upload_config(dir: &Path, port: u16, extra: &str) -> std::path::PathBuf {
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            r#"[box]
id = "box1"
state_dir = "{state}"
[http]
listen = "127.0.0.1:{port}"
token_file = "{token}"
max_body_bytes = 4096
[[source]]
name = "line1"
http = {{}}
{extra}"#,
            state = dir.join("state").display(),
            token = dir.join("token").display(),
        ),
    )
    .unwrap();
    std::fs::write(dir.join("token"), "s3cret\n").unwrap();
    config
}

#[test]
fn http_api_answers_with_json_and_guards_with_the_token_and_body_limit() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Two sources, each with its own model: uploads are routed by ?source=.
    let second = format!(
        "[[source]]\nname = \"line2\"\nmodel = \"{}\"\nhttp = {{}}\n",
        fixture("models/gray28.onnx").display()
    );
    let daemon = Daemon::start(&upload_config(dir.path(), port, &second), port);
    let token = Some("s3cret");
    let png = sample("0002-trouser.png");

    assert_eq!(http(port, "GET", "/healthz", None, b"").unwrap().status, 200);
    let ready = http(port, "GET", "/readyz", None, b"").unwrap();
    assert_eq!(
        (ready.status, ready.json()["sources"]["line1"]["up"].clone()),
        (200, serde_json::json!(true))
    );

    let r = http(port, "POST", "/infer", None, &png).unwrap();
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].as_str().unwrap().contains("Bearer"));
    let r = http(port, "POST", "/infer", Some("wrong"), &png).unwrap();
    assert_eq!((r.status, r.json()["error"].as_str().unwrap()), (401, "wrong bearer token"));
    assert_eq!(http(port, "GET", "/metrics", None, b"").unwrap().status, 401);
    // The token is checked before the body is read: no token, no 10 kB read, no 413.
    assert_eq!(http(port, "POST", "/infer?source=line1", None, &vec![0u8; 10_000]).unwrap().status, 401);
    assert_eq!(http(port, "GET", "/results/latest", Some("wrong"), b"").unwrap().status, 401);

    let r = http(port, "POST", "/infer", token, &png).unwrap();
    assert_eq!(r.status, 400, "two upload sources: which one? {}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("?source="));
    let r = http(port, "POST", "/infer?source=line2", token, &png).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["source"], "line2");
    assert!(r.json()["label"].as_str().unwrap().starts_with('c'), "gray28's labels are c0..c9");

    let r = http(port, "POST", "/infer?source=line1", token, &png).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let result = r.json();
    assert_eq!((result["label"].as_str(), result["verdict"].as_str()), (Some("Trouser"), Some("accept")));
    assert_eq!(result["source"], "line1");
    assert_eq!(result["top"].as_array().unwrap().len(), 3);

    let r = http(port, "POST", "/infer?source=line1", token, &vec![0u8; 10_000]).unwrap();
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("max_body_bytes"));
    let r = http(port, "POST", "/infer?source=line1", token, b"GIF89a not a png").unwrap();
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("not a PNG, JPEG or BMP"));
    let r = http(port, "POST", "/infer?source=nope", token, &png).unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(http(port, "POST", "/infer?source=line1", token, b"").unwrap().status, 400);
    assert_eq!(http(port, "GET", "/nowhere", token, b"").unwrap().status, 404);

    let latest = http(port, "GET", "/results/latest?n=5&source=line1", token, b"").unwrap();
    let latest = latest.json();
    assert_eq!(latest.as_array().unwrap().len(), 2, "newest first: the failed upload, then the trouser");
    assert!(latest[0]["error"].is_string());
    assert_eq!(latest[1]["label"], "Trouser");

    let metrics = http(port, "GET", "/metrics", token, b"").unwrap();
    assert_eq!(metrics.status, 200);
    for expected in [
        r#"edge_kd_frames_total{source="line1"} 1"#,
        r#"edge_kd_errors_total{source="line1"} 1"#,
        r#"edge_kd_verdicts_total{source="line1",label="Trouser",verdict="accept"} 1"#,
        r#"edge_kd_frame_latency_seconds_count{source="line1"} 1"#,
        r#"edge_kd_dropped_total{source="line1"} 0"#,
        r#"edge_kd_source_up{source="line1",state="accepting uploads"} 1"#,
    ] {
        assert!(metrics.body.contains(expected), "missing {expected} in\n{}", metrics.body);
    }
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn model_hot_reload_swaps_good_files_and_keeps_serving_through_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(root().join("models/default/student.onnx"), &model).unwrap();
    let port = free_port();
    let extra = format!("model = \"{}\"\n", model.display());
    let daemon = Daemon::start(&upload_config(dir.path(), port, &extra), port);
    let token = Some("s3cret");
    let png = sample("0002-trouser.png");
    let label =
        || http(port, "POST", "/infer", token, &png).unwrap().json()["label"].as_str().unwrap().to_string();
    assert_eq!(label(), "Trouser");

    // Replaced the safe way (write beside, rename over): the new model serves.
    let replace = |from: &Path| {
        let tmp = dir.path().join("model.onnx.tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, &model).unwrap();
    };
    replace(&fixture("models/gray28.onnx"));
    let reloads = |result: &str| {
        let text = http(port, "GET", "/metrics", token, b"").unwrap().body;
        let prefix = format!("edge_kd_model_reloads_total{{source=\"line1\",result=\"{result}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)?.parse::<u32>().ok()).unwrap_or(0)
    };
    wait_until("the reload", Duration::from_secs(20), || reloads("ok") == 1);
    assert!(label().starts_with('c'), "gray28's labels are c0..c9");

    // A broken file is refused; the last good model keeps answering.
    std::fs::write(dir.path().join("model.onnx.tmp"), b"not onnx").unwrap();
    std::fs::rename(dir.path().join("model.onnx.tmp"), &model).unwrap();
    wait_until("the failed reload", Duration::from_secs(20), || reloads("failed") == 1);
    assert!(label().starts_with('c'));
    assert_eq!(daemon.stop(), 0);
    assert!(
        predicate::str::contains("reload failed")
            .eval(&std::fs::read_to_string(dir.path().join("serve.0.log")).unwrap())
    );
}

#[test]
fn a_sha256_pin_refuses_other_files_at_start_and_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(root().join("models/default/student.onnx"), &model).unwrap();
    let sha = edge_kd::serve::model_slot::sha256_hex(&std::fs::read(&model).unwrap());
    let port = free_port();
    let wrong = "0".repeat(64);
    let config = upload_config(
        dir.path(),
        port,
        &format!("model = \"{}\"\nmodel_sha256 = \"{wrong}\"\n", model.display()),
    );
    edge_kd()
        .args(["serve", "--check-config"])
        .arg(&config)
        .assert()
        .code(3)
        .stderr(predicate::str::contains("model_sha256 pins 0000").and(predicate::str::contains("refused")));

    let config = upload_config(
        dir.path(),
        port,
        &format!("model = \"{}\"\nmodel_sha256 = \"{sha}\"\n", model.display()),
    );
    let daemon = Daemon::start(&config, port);
    std::fs::copy(fixture("models/gray28.onnx"), dir.path().join("m.tmp")).unwrap();
    std::fs::rename(dir.path().join("m.tmp"), &model).unwrap();
    wait_until("the refusal", Duration::from_secs(20), || {
        http(port, "GET", "/metrics", Some("s3cret"), b"").is_some_and(|r| {
            r.body.contains(r#"edge_kd_model_reloads_total{source="line1",result="refused"} 1"#)
        })
    });
    let r = http(port, "POST", "/infer", Some("s3cret"), &sample("0002-trouser.png")).unwrap();
    assert_eq!(r.json()["model_sha256"], sha.as_str());

    // The new pin in the config, then SIGHUP: the new file now serves.
    let new_sha = edge_kd::serve::model_slot::sha256_hex(&std::fs::read(&model).unwrap());
    upload_config(
        dir.path(),
        port,
        &format!("model = \"{}\"\nmodel_sha256 = \"{new_sha}\"\n", model.display()),
    );
    daemon.signal(libc::SIGHUP);
    wait_until("the reload after SIGHUP", Duration::from_secs(20), || {
        http(port, "GET", "/metrics", Some("s3cret"), b"")
            .is_some_and(|r| r.body.contains(r#"edge_kd_model_reloads_total{source="line1",result="ok"} 1"#))
    });
    let r = http(port, "POST", "/infer", Some("s3cret"), &sample("0002-trouser.png")).unwrap();
    assert_eq!(r.json()["model_sha256"], new_sha.as_str());
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn sigterm_decides_every_queued_frame_and_flushes_before_exit() {
    let dir = tempfile::tempdir().unwrap();
    let (port, results) = (free_port(), dir.path().join("r.jsonl"));
    let config = dir.path().join("serve.toml");
    // An unpaced synthetic camera keeps the queue full, so SIGTERM always finds frames waiting.
    std::fs::write(
        &config,
        format!(
            "[box]\nstate_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[[source]]\nname = \"pattern\"\nqueue = 64\n\
             synthetic = {{ image = \"{}\" }}\n[sinks.jsonl]\npath = \"{}\"\nfsync = \"never\"\n",
            dir.path().join("state").display(),
            samples().join("0001-pullover.png").display(),
            results.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, port);
    wait_until("frames", Duration::from_secs(20), || {
        metric(port, None, r#"edge_kd_frames_total{source="pattern"}"#).is_some_and(|n| n > 200.0)
    });
    let log = daemon.log.clone();
    assert_eq!(daemon.stop(), 0);
    let log = std::fs::read_to_string(log).unwrap();
    let accounting = log.lines().find(|l| l.contains("stopped cleanly")).unwrap_or_else(|| panic!("{log}"));
    let numbers: Vec<u64> = accounting
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    let lines = std::fs::read_to_string(&results).unwrap().lines().count() as u64;
    // "N frames decided, 0 failed, 0 dropped; N results written to JSONL, ..." (after the timestamp)
    let tail: Vec<u64> = numbers[numbers.len() - 6..].to_vec();
    assert_eq!((tail[1], tail[2]), (0, 0), "{accounting}");
    assert_eq!(tail[0], tail[3], "every decided frame written: {accounting}");
    assert_eq!(tail[3], lines, "the file holds them all: {accounting}");
}

#[test]
fn every_config_error_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 11] = [
        ("[[source]]\nname = \"a\"\nhttp = {}\nengin = \"tract\"\n", "unknown field `engin`"),
        (
            "[[source]]\nname = \"a\"\nhttp = {}\nengine = \"tensorrt\"\n",
            "source[0] (a).engine: unknown engine",
        ),
        ("[[source]]\nname = \"a\"\n", "source[0] (a).camera|folder|http|synthetic"),
        ("[[source]]\nname = \"a b\"\nhttp = {}\n", "source[0].name"),
        ("[[source]]\nname = \"a\"\nhttp = {}\nworkers = 0\n", "source[0] (a).workers: must be > 0"),
        (
            "[[source]]\nname = \"a\"\nhttp = {}\n[source.limits]\nmax_pixels = 0\n",
            "source[0] (a).limits: max_pixels must be > 0",
        ),
        (
            "[[source]]\nname = \"a\"\nhttp = {}\n[source.limits]\nmax_pixel = 9\n",
            "unknown field `max_pixel`",
        ),
        (
            "[[source]]\nname = \"a\"\nfolder = { path = \"/x\", after = \"move\" }\n",
            "source[0] (a).folder.move_to",
        ),
        (
            "[[source]]\nname = \"a\"\ncamera = { device = \"/dev/video0\", width = 0 }\n",
            "source[0] (a).camera: width",
        ),
        ("[[source]]\nname = \"a\"\nhttp = {}\n[sinks.mqtt]\nhost = \"\"\n", "sinks.mqtt.host"),
        ("[http]\nlisten = \"localhost\"\n[[source]]\nname = \"a\"\nhttp = {}\n", "listen"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        edge_kd().args(["serve", "--check-config"]).arg(&path).assert().code(2).stderr(
            predicate::str::contains(path.display().to_string()).and(predicate::str::contains(*expected)),
        );
    }
    let missing = dir.path().join("in");
    let path = dir.path().join("folder.toml");
    std::fs::write(
        &path,
        format!("[[source]]\nname = \"a\"\nfolder = {{ path = \"{}\" }}\n", missing.display()),
    )
    .unwrap();
    edge_kd().args(["serve", "--check-config"]).arg(&path).assert().code(2).stderr(
        predicate::str::contains("source[0] (a).folder.path").and(predicate::str::contains("no such folder")),
    );
    edge_kd()
        .args(["serve", "--check-config", "/nonexistent/edge-kd.toml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/nonexistent/edge-kd.toml: cannot read"));
}

#[test]
fn the_documented_example_config_is_valid() {
    let config = edge_kd::serve::config::ServeConfig::load(&root().join("deploy/edge-kd.toml")).unwrap();
    assert!(config.sources.len() >= 3, "the example shows a camera, a folder and uploads");
    assert!(config.sinks.jsonl.is_some() && config.sinks.mqtt.is_some() && config.sinks.review.is_some());
}
