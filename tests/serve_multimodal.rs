//! `edge-kd serve` with a model of several inputs (issue 14): a frame is one value per card
//! input. A watched folder pairs `<stem>.<input>.<ext>` files, waiting `pair_wait_ms` for a
//! late partner; uploads send one multipart part per input; review frames keep every input's
//! image; `/metrics` counts frames by the inputs they had. The models are
//! `tests/fixtures/models/two_input.onnx` (inputs `image` and `depth`, both required) and
//! `learned_token.onnx` (`rgb`, and an optional `height` with a calibration for `rgb` alone).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::daemon::*;
use common::*;
use predicates::prelude::*;

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(samples().join(name)).unwrap()
}

/// Written beside, renamed in: how a line's uploader drops files.
fn drop_in(dir: &Path, inbox: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!("{name}.part"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, inbox.join(name)).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

struct Folder {
    dir: tempfile::TempDir,
    inbox: PathBuf,
    done: PathBuf,
    review: PathBuf,
    results: PathBuf,
    config: PathBuf,
    port: u16,
}

/// A folder source serving two_input.onnx, files moved once decided, every verdict `review`
/// (a threshold no frame reaches) so that every decided frame is saved for review.
fn folder(pair_wait_ms: u64) -> Folder {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let (inbox, done, review, results) = (p("in"), p("done"), p("review"), p("r.jsonl"));
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::create_dir_all(&done).unwrap();
    let port = free_port();
    let config = p("serve.toml");
    std::fs::write(
        &config,
        format!(
            r#"[box]
state_dir = "{state}"
[http]
listen = "127.0.0.1:{port}"
[[source]]
name = "inbox"
model = "{model}"
threshold = 0.999999
folder = {{ path = "{inbox}", after = "move", move_to = "{done}", pair_wait_ms = {pair_wait_ms} }}
[sinks.jsonl]
path = "{results}"
fsync = "always"
[sinks.review]
dir = "{review}"
"#,
            state = p("state").display(),
            model = fixture("models/two_input.onnx").display(),
            inbox = inbox.display(),
            done = done.display(),
            results = results.display(),
            review = review.display(),
        ),
    )
    .unwrap();
    Folder { dir, inbox, done, review, results, config, port }
}

#[test]
fn a_folder_pairs_files_by_stem_waits_for_a_late_partner_and_names_a_missing_one() {
    let f = folder(1500);
    let daemon = Daemon::start(&f.config, f.port);
    let (png, other) = (sample("0002-trouser.png"), sample("0001-pullover.png"));
    let d = f.dir.path();
    // Both at once; then a partner 400 ms late (within the wait); then one that never comes.
    drop_in(d, &f.inbox, "a.image.png", &png);
    drop_in(d, &f.inbox, "a.depth.png", &other);
    drop_in(d, &f.inbox, "b.c.depth.png", &other);
    std::thread::sleep(Duration::from_millis(400));
    drop_in(d, &f.inbox, "b.c.image.png", &png);
    drop_in(d, &f.inbox, "lonely.image.png", &png);
    // A name that says no input is its own error, not a frame's.
    drop_in(d, &f.inbox, "plain.png", &png);
    wait_until("four results", Duration::from_secs(20), || result_lines(&f.results).len() == 4);
    let metrics = http(f.port, "GET", "/metrics", None, b"").unwrap().body;
    assert_eq!(daemon.stop(), 0);

    let lines = result_lines(&f.results);
    let by_file = |id: &str| {
        let want = f.inbox.join(id).display().to_string();
        lines.iter().find(|l| l["file"] == want.as_str()).unwrap_or_else(|| panic!("no {want} in {lines:?}"))
    };
    let path = |n: &str| f.inbox.join(n).display().to_string();
    for (id, stem) in [("a", "a"), ("b.c", "b.c")] {
        let l = by_file(id);
        assert_eq!(l["verdict"], "review", "{l}");
        assert!(["near", "mid", "far"].contains(&l["label"].as_str().unwrap()), "{l}");
        assert_eq!(
            l["files"],
            serde_json::json!({"image": path(&format!("{stem}.image.png")), "depth": path(&format!("{stem}.depth.png"))})
        );
        assert_eq!(l["modalities"], serde_json::json!({"image": "present", "depth": "present"}));
        assert_eq!(l["subset"], "image+depth");
    }
    let lonely = by_file("lonely");
    let error = lonely["error"].as_str().unwrap();
    assert!(error.contains("no value for input depth") && error.contains("not optional"), "{lonely}");
    assert_eq!(lonely["files"], serde_json::json!({"image": path("lonely.image.png"), "depth": null}));
    assert_eq!(lonely["modalities"], serde_json::json!({"image": "present", "depth": "missing"}));
    let plain = by_file("plain.png");
    assert!(
        plain["error"].as_str().unwrap().contains("<stem>.<input>.<ext> with <input> one of image, depth"),
        "{plain}"
    );
    // The late partner made one frame, not two; the lonely one waited for it the full wait.
    let late = lines.iter().position(|l| l["file"] == path("b.c")).unwrap();
    let alone = lines.iter().position(|l| l["file"] == path("lonely")).unwrap();
    assert!(late < alone, "{lines:?}");
    // Every file, decided or not, is let go once its result is written.
    assert!(names(&f.inbox).is_empty(), "{:?}", names(&f.inbox));
    assert_eq!(names(&f.done).len(), 6, "{:?}", names(&f.done));

    // Review frames keep each input's image, named to pair, beside one result.
    let saved = names(&f.review);
    assert_eq!(saved.len(), 6, "two frames of two images and a result: {saved:?}");
    for frame in saved.iter().filter(|n| n.ends_with(".json")) {
        let base = frame.strip_suffix(".json").unwrap();
        for input in ["image", "depth"] {
            assert!(saved.contains(&format!("{base}.{input}.png")), "{base}: no {input} in {saved:?}");
        }
        let sidecar: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f.review.join(frame)).unwrap()).unwrap();
        assert_eq!(sidecar["modalities"]["depth"], "present");
    }
    assert_eq!(
        std::fs::read(f.review.join(saved.iter().find(|n| n.ends_with(".depth.png")).unwrap())).unwrap(),
        other,
        "the depth image as it came"
    );

    for expected in [
        r#"edge_kd_frames_by_subset_total{source="inbox",subset="image+depth"} 2"#,
        r#"edge_kd_frames_total{source="inbox"} 2"#,
        r#"edge_kd_errors_total{source="inbox"} 2"#,
    ] {
        assert!(metrics.contains(expected), "missing {expected} in\n{metrics}");
    }
}

fn set_modified(path: &Path, unix_s: u64) {
    assert!(Command::new("touch").arg("-d").arg(format!("@{unix_s}")).arg(path).status().unwrap().success());
}

/// The crash-recovery guarantee of issue 13 for paired files: a frame whose result was
/// written before a kill, but whose files were not yet moved, has all its files let go at
/// the next start, not decided again.
#[test]
fn paired_files_decided_before_a_crash_are_let_go_at_start() {
    let f = folder(1500);
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    for name in ["x.image.png", "x.depth.png"] {
        std::fs::write(f.inbox.join(name), sample("0002-trouser.png")).unwrap();
        set_modified(&f.inbox.join(name), now_s - 60);
    }
    let path = |n: &str| f.inbox.join(n).display().to_string();
    let line = serde_json::json!({
        "source": "inbox", "file": path("x"), "ts_ms": (now_s - 30) * 1000, "seq": 41,
        "files": {"image": path("x.image.png"), "depth": path("x.depth.png")}, "label": "far",
    });
    std::fs::write(&f.results, format!("{line}\n")).unwrap();
    let daemon = Daemon::start(&f.config, f.port);
    wait_until("the inbox to empty", Duration::from_secs(20), || names(&f.inbox).is_empty());
    std::thread::sleep(Duration::from_millis(2000));
    let log = daemon.log_text();
    assert_eq!(daemon.stop(), 0);
    assert_eq!(result_lines(&f.results).len(), 1, "decided again");
    assert_eq!(names(&f.done), ["x.depth.png", "x.image.png"]);
    assert!(log.contains("x.depth.png: decided before the restart (seq 41)"), "{log}");
}

fn multipart(parts: &[(&str, &[u8])], boundary: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.png\"\r\n\
                 Content-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

#[test]
fn uploads_send_one_multipart_part_per_input_and_bad_forms_are_refused_naming_the_part() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("serve.toml");
    let results = dir.path().join("r.jsonl");
    std::fs::write(
        &config,
        format!(
            "[box]\nstate_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             [[source]]\nname = \"cell\"\nmodel = \"{}\"\nhttp = {{}}\n\
             [[source]]\nname = \"gray\"\nhttp = {{}}\n[sinks.jsonl]\npath = \"{}\"\n",
            dir.path().join("state").display(),
            fixture("models/two_input.onnx").display(),
            results.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, port);
    let (png, depth) = (sample("0002-trouser.png"), sample("0001-pullover.png"));
    let boundary = "edge-kd-test-7d1f";
    let form_type = format!("multipart/form-data; boundary={boundary}");
    let post = |source: &str, content_type: &str, body: &[u8]| {
        let headers: &[(&str, &str)] = &[("Content-Type", content_type)];
        http_with(port, "POST", &format!("/infer?source={source}"), None, headers, body).unwrap()
    };

    let r = post("cell", &form_type, &multipart(&[("depth", &depth), ("image", &png)], boundary));
    assert_eq!(r.status, 200, "{}", r.body);
    let line = r.json();
    assert_eq!(line["source"], "cell");
    assert!(line["label"].is_string(), "{line}");
    assert_eq!(line["files"], serde_json::json!({"image": "image.png", "depth": "depth.png"}), "card order");
    assert_eq!(line["modalities"], serde_json::json!({"image": "present", "depth": "present"}));

    let refused = |r: Response, status: u16, says: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(says), "{error:?} does not say {says:?}");
    };
    refused(
        post("cell", &form_type, &multipart(&[("image", &png)], boundary)),
        400,
        "no part for input depth",
    );
    refused(
        post(
            "cell",
            &form_type,
            &multipart(&[("image", &png), ("depth", &depth), ("thermal", &png)], boundary),
        ),
        400,
        "part \"thermal\" is not an input of the model of source cell; its inputs are image, depth",
    );
    refused(
        post(
            "cell",
            &form_type,
            &multipart(&[("image", &png), ("image", &png), ("depth", &depth)], boundary),
        ),
        400,
        "part \"image\" is given twice",
    );
    let mut cut = multipart(&[("image", &png), ("depth", &depth)], boundary);
    cut.truncate(cut.len() - 40);
    refused(post("cell", &form_type, &cut), 400, "multipart part 2: the body ends before the boundary");
    refused(post("cell", "multipart/form-data", &cut), 400, "without a boundary");
    refused(post("cell", "image/png", &png), 400, "send multipart/form-data with one part per input");
    // A part that is there but not an image is the frame's error, as for any upload.
    let r = post("cell", &form_type, &multipart(&[("image", &png), ("depth", b"GIF89a")], boundary));
    refused(r, 422, "input \"depth\": not a PNG, JPEG or BMP");

    // A one-input model still takes the raw body, and a multipart part named by its input.
    assert_eq!(post("gray", "image/png", &png).json()["label"], "Trouser");
    let r = post("gray", &form_type, &multipart(&[("image", &png)], boundary));
    assert_eq!((r.status, r.json()["label"].as_str()), (200, Some("Trouser")), "{}", r.body);
    assert!(r.json().get("modalities").is_none(), "one-input lines stay as they were");

    let metrics = http(port, "GET", "/metrics", None, b"").unwrap().body;
    assert!(
        metrics.contains(r#"edge_kd_frames_by_subset_total{source="cell",subset="image+depth"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"edge_kd_frames_by_subset_total{source="gray",subset="image"} 2"#),
        "{metrics}"
    );
    assert_eq!(daemon.stop(), 0);
    assert_eq!(result_lines(&results).len(), 4, "refused requests write no result; the bad depth does");
}

#[test]
fn a_camera_for_a_model_of_several_inputs_must_name_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.toml");
    let write_for = |model: &str, input: &str| {
        std::fs::write(
            &config,
            format!(
                "[[source]]\nname = \"cam\"\nmodel = \"{}\"\n{input}camera = {{ device = \"/dev/video-none\" }}\n",
                fixture(model).display()
            ),
        )
        .unwrap();
    };
    let write = |input: &str| write_for("models/two_input.onnx", input);
    write("");
    edge_kd().args(["serve", "--check-config"]).arg(&config).assert().code(2).stderr(predicate::str::contains(
        "source[0] (cam).input: the model has inputs image, depth: say which one this source's frames are",
    ));
    write("input = \"rgb\"\n");
    edge_kd()
        .args(["serve", "--check-config"])
        .arg(&config)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("source[0] (cam).input: the model has no input \"rgb\""));
    write("input = \"image\"\n");
    edge_kd().args(["serve", "--check-config"]).arg(&config).assert().code(2).stderr(
        predicate::str::contains(
            "source[0] (cam).input: this source gives only input \"image\", but the model also needs depth",
        ),
    );
    // With the other input optional, a camera alone is a frame without it.
    write_for("models/learned_token.onnx", "input = \"rgb\"\n");
    edge_kd()
        .args(["serve", "--check-config"])
        .arg(&config)
        .assert()
        .success()
        .stdout(predicate::str::contains("images are input rgb"));
}

/// An optional input that does not come is missing, not an error: the frame runs without it
/// and is decided by the calibration of the inputs it had, from a folder and from an upload.
#[test]
fn a_frame_without_its_optional_input_runs_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, results) = (dir.path().join("in"), dir.path().join("r.jsonl"));
    std::fs::create_dir_all(&inbox).unwrap();
    let port = free_port();
    let model = fixture("models/learned_token.onnx");
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "[box]\nstate_dir = \"{state}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             [[source]]\nname = \"bench\"\nmodel = \"{model}\"\nfolder = {{ path = \"{inbox}\", pair_wait_ms = 600 }}\n\
             [[source]]\nname = \"cell\"\nmodel = \"{model}\"\ninput = \"rgb\"\nhttp = {{}}\n\
             [sinks.jsonl]\npath = \"{results}\"\n",
            state = dir.path().join("state").display(),
            model = model.display(),
            inbox = inbox.display(),
            results = results.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, port);
    let png = sample("0002-trouser.png");
    drop_in(dir.path(), &inbox, "alone.rgb.png", &png);
    drop_in(dir.path(), &inbox, "both.rgb.png", &png);
    drop_in(dir.path(), &inbox, "both.height.png", &sample("0001-pullover.png"));
    wait_until("the folder's two frames", Duration::from_secs(20), || result_lines(&results).len() == 2);

    // A raw body is the source's `input`; a multipart form may leave the optional part out.
    let r = http(port, "POST", "/infer?source=cell", None, &png).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.json()["subset"].as_str(), r.json()["modalities"]["height"].as_str()),
        (Some("rgb"), Some("missing"))
    );
    let boundary = "b0undary";
    let headers: &[(&str, &str)] = &[("Content-Type", "multipart/form-data; boundary=b0undary")];
    let r =
        http_with(port, "POST", "/infer?source=cell", None, headers, &multipart(&[("rgb", &png)], boundary))
            .unwrap();
    assert_eq!((r.status, r.json()["subset"].as_str()), (200, Some("rgb")), "{}", r.body);
    let metrics = http(port, "GET", "/metrics", None, b"").unwrap().body;
    assert_eq!(daemon.stop(), 0);

    let lines = result_lines(&results);
    let line = |id: &str| {
        let want = inbox.join(id).display().to_string();
        lines
            .iter()
            .find(|l| l["file"] == want.as_str())
            .unwrap_or_else(|| panic!("no {want} in {lines:?}"))
            .clone()
    };
    let alone = line("alone");
    assert!(alone["label"].is_string(), "decided without height: {alone}");
    assert_eq!(alone["subset"], "rgb");
    assert_eq!(alone["modalities"], serde_json::json!({"rgb": "present", "height": "missing"}));
    assert_eq!(alone["files"]["height"], serde_json::Value::Null);
    assert_eq!(line("both")["subset"], "rgb+height");
    // The calibration of the inputs present decides: rgb alone has its own thresholds (0.4).
    assert!(alone["threshold"].as_f64().is_some_and(|t| (t - 0.4).abs() < 1e-6), "{alone}");
    for expected in [
        r#"edge_kd_frames_by_subset_total{source="bench",subset="rgb"} 1"#,
        r#"edge_kd_frames_by_subset_total{source="bench",subset="rgb+height"} 1"#,
        r#"edge_kd_frames_by_subset_total{source="cell",subset="rgb"} 2"#,
    ] {
        assert!(metrics.contains(expected), "missing {expected} in\n{metrics}");
    }
}
