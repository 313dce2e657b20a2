//! `edge-kd run` on a model with two inputs (`two_input.onnx`: `image` and `depth`), as a user
//! runs it: one file per input, one folder per input paired by stem, and a manifest; and the
//! mistakes (an unknown input name, positional inputs, a malformed manifest) refused up front.
//! With an optional input (`learned_token.onnx`: `rgb` and an optional `height`; `masked.onnx`:
//! zero-fill with a mask): left out, without a partner or in an empty cell it is missing, and
//! the calibration of the inputs present decides; a required one missing, or a height map that
//! is not one, fails that sample alone.

mod common;

use std::path::Path;

use common::*;

fn two_input() -> std::path::PathBuf {
    fixture("models/two_input.onnx")
}

/// The label index and calibrated confidence (no calibration: T = 1) of reference logits.
fn expected(reference: &str) -> (usize, f64) {
    expected_at(reference, 1.0)
}

/// The label index and confidence of reference logits at temperature `t`.
fn expected_at(reference: &str, t: f64) -> (usize, f64) {
    let logits = edge_kd::npy::read_f32(&fixture(reference), usize::MAX).unwrap().data;
    let (index, &top) = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
    let sum: f64 = logits.iter().map(|&l| (f64::from(l - top) / t).exp()).sum();
    (index, 1.0 / sum)
}

fn learned_token() -> std::path::PathBuf {
    fixture("models/learned_token.onnx")
}

/// `NAME=PATH` for a fixture file.
fn named(name: &str, rel: &str) -> String {
    format!("{name}={}", fixture(rel).display())
}

/// The line's class and confidence are those of `reference` at temperature `t`.
fn assert_decided(line: &serde_json::Value, reference: &str, t: f64, what: &str) {
    let (index, confidence) = expected_at(reference, t);
    assert_eq!(line["class_index"], index, "{what}: {line}");
    let got = line["confidence"].as_f64().unwrap_or_else(|| panic!("{what}: not decided: {line}"));
    assert!((got - confidence).abs() <= 1e-3, "{what}: confidence {got} vs {confidence} at T={t}");
}

fn copy(from: &str, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(fixture(from), to).unwrap();
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn one_file_per_input_is_one_sample_with_the_reference_logits() {
    let cases = [
        ("models/two_input.image.npy", "models/two_input.depth.npy", "models/two_input.output.npy", 1e-5),
        // The runtime's preprocessing matches the reference within one grey level.
        ("images/rgb_50x30.png", "images/gray_28.png", "models/two_input.from_images.output.npy", 1e-3),
    ];
    for engine in ["tract", "ort"] {
        for (image, depth, reference, tol) in cases {
            let output = edge_kd()
                .args(["run", "--format", "jsonl", "--engine", engine, "--model"])
                .arg(two_input())
                .arg("--input")
                .arg(format!("depth={}", fixture(depth).display()))
                .arg("--input")
                .arg(format!("image={}", fixture(image).display()))
                .output()
                .unwrap();
            assert!(output.status.success(), "{engine}: {}", stderr(&output));
            let lines = stdout_lines(&output);
            assert_eq!(lines.len(), 1);
            let line = &lines[0];
            let (index, confidence) = expected(reference);
            assert_eq!(line["class_index"], index, "{engine} {image}: {line}");
            let got = line["confidence"].as_f64().unwrap();
            assert!((got - confidence).abs() <= tol, "{engine} {image}: {got} vs {confidence}");
            let stem = Path::new(image).file_stem().unwrap().to_str().unwrap();
            assert_eq!(line["file"], stem, "the sample is named by the first input's stem");
            assert_eq!(line["modalities"], serde_json::json!({"image": "present", "depth": "present"}));
            assert_eq!(line["files"]["depth"], fixture(depth).display().to_string());
            let raw = String::from_utf8_lossy(&output.stdout);
            assert!(
                raw.contains(r#""modalities":{"image":"present","depth":"present"}"#),
                "keys in the card's order: {raw}"
            );
        }
    }
}

#[test]
fn folders_pair_by_stem_and_an_unpartnered_file_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (rgb, depth) = (dir.path().join("rgb"), dir.path().join("depth"));
    copy("images/rgb_50x30.png", &rgb.join("a.png"));
    copy("images/gray_28.png", &depth.join("a.png"));
    copy("images/rgb_50x30.png", &rgb.join("b.png"));
    copy("images/rgb_50x30.png", &rgb.join("c.png"));
    copy("images/gray_28.png", &depth.join("c.png"));
    let output = edge_kd()
        .args(["run", "--format", "jsonl", "--model"])
        .arg(two_input())
        .arg("--input")
        .arg(format!("image={}", rgb.display()))
        .arg("--input")
        .arg(format!("depth={}", depth.display()))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    let lines = stdout_lines(&output);
    let files: Vec<&str> = lines.iter().map(|l| l["file"].as_str().unwrap()).collect();
    assert_eq!(files, ["a", "b", "c"]);
    let (index, _) = expected("models/two_input.from_images.output.npy");
    assert_eq!(lines[0]["class_index"], index);
    assert_eq!(lines[2]["class_index"], index, "the sample after the failed one is still classified");
    let error = lines[1]["error"].as_str().unwrap();
    assert!(error.contains("no file for input depth"), "{error}");
    assert_eq!(lines[1]["modalities"], serde_json::json!({"image": "present", "depth": "missing"}));
    assert!(lines[1]["files"]["depth"].is_null());
    assert!(stderr(&output).contains("3 inputs: 0 accept, 2 review, 1 failed"), "{}", stderr(&output));
}

#[test]
fn a_manifest_lists_samples_and_an_empty_cell_fails_that_sample() {
    let dir = tempfile::tempdir().unwrap();
    copy("images/rgb_50x30.png", &dir.path().join("rgb/1.png"));
    copy("images/gray_28.png", &dir.path().join("depth/1.png"));
    copy("images/rgb_50x30.png", &dir.path().join("rgb/2.png"));
    let manifest = dir.path().join("samples.csv");
    std::fs::write(
        &manifest,
        "id,label,depth,image\nfirst,far,depth/1.png,rgb/1.png\n\"second, no depth\",,,rgb/2.png\n",
    )
    .unwrap();
    let output = edge_kd()
        .args(["run", "--format", "jsonl", "--model"])
        .arg(two_input())
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    let lines = stdout_lines(&output);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["file"], "first");
    assert_eq!(lines[0]["expected"], "far");
    assert_eq!(lines[0]["class_index"], expected("models/two_input.from_images.output.npy").0);
    assert_eq!(lines[0]["files"]["image"], dir.path().join("rgb/1.png").display().to_string());
    assert_eq!(lines[1]["file"], "second, no depth");
    assert!(lines[1].get("expected").is_none(), "an empty label is not reported");
    assert!(lines[1]["error"].as_str().unwrap().contains("no file for input depth"), "{}", lines[1]);
}

#[test]
fn the_table_names_each_sample_by_its_id() {
    let dir = tempfile::tempdir().unwrap();
    copy("images/rgb_50x30.png", &dir.path().join("rgb/1.png"));
    copy("images/gray_28.png", &dir.path().join("depth/1.png"));
    let manifest = dir.path().join("samples.csv");
    std::fs::write(&manifest, "id,label,image,depth\nbay-7,,rgb/1.png,depth/1.png\n").unwrap();
    let output = edge_kd()
        .args(["run", "--format", "table", "--model"])
        .arg(two_input())
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.lines().nth(1).unwrap().starts_with("bay-7 "), "{table}");
}

#[test]
fn mistakes_are_refused_before_any_sample_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "id,label,image,depth\ns1,,a.png,b.png\ns2,,a.png\n").unwrap();
    let image = format!("image={}", fixture("images/rgb_50x30.png").display());
    let depth = format!("depth={}", fixture("images/gray_28.png").display());
    let thermal = format!("thermal={}", fixture("images/gray_28.png").display());
    let depth_dir = format!("depth={}", dir.path().display());
    let bad_arg = bad.display().to_string();
    let positional = fixture("images/rgb_50x30.png").display().to_string();
    let cases: [(&[&str], String); 5] = [
        (&["--manifest", &bad_arg], format!("{}:3: 3 cells, the header has 4", bad.display())),
        (
            &["--input", &image, "--input", &thermal],
            "no input \"thermal\"; its inputs are image, depth".into(),
        ),
        (&["--input", &image], "no file or folder for input depth".into()),
        (&["--input", &image, "--input", &depth_dir], "not a mix (files: image; folders: depth)".into()),
        (&[&positional], "give each its file or folder with --input image=PATH --input depth=PATH".into()),
    ];
    for (args, message) in cases {
        let output = edge_kd()
            .args(["run", "--format", "jsonl", "--model"])
            .arg(two_input())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stderr(&output));
        assert!(output.stdout.is_empty(), "{args:?}: nothing is classified");
        assert!(stderr(&output).contains(&message), "{args:?}: {}", stderr(&output));
    }
    let both = edge_kd()
        .args(["run", "--model"])
        .arg(two_input())
        .args(["--input", &image, "--input", &depth, "--manifest", &bad_arg])
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2), "--input and --manifest are one or the other");
}

#[test]
fn one_input_models_print_the_lines_they_always_have() {
    let output = edge_kd()
        .args(["run", "--format", "jsonl", "--model"])
        .arg(fixture("models/gray28.onnx"))
        .arg(fixture("models/gray28.input.npy"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let line = &stdout_lines(&output)[0];
    let mut keys: Vec<&str> = line.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["class_index", "confidence", "engine", "file", "label", "latency_us", "threshold", "top", "verdict"]
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with(r#"{"file":"#));
}

#[test]
fn an_optional_input_left_out_is_missing_and_the_subsets_calibration_decides() {
    for engine in ["tract", "ort"] {
        let run = |inputs: &[String]| {
            let mut cmd = edge_kd();
            cmd.args(["run", "--format", "jsonl", "--engine", engine, "--model"]).arg(learned_token());
            for input in inputs {
                cmd.arg("--input").arg(input);
            }
            let output = cmd.output().unwrap();
            assert!(output.status.success(), "{engine}: {}", stderr(&output));
            let lines = stdout_lines(&output);
            assert_eq!(lines.len(), 1);
            (lines[0].clone(), String::from_utf8_lossy(&output.stdout).into_owned())
        };
        let rgb = named("rgb", "images/rgb_50x30.png");
        let height = named("height", "images/gray16_20x20.png");
        let (both, _) = run(&[height, rgb.clone()]);
        assert_decided(&both, "models/learned_token.from_images.output.npy", 1.5, engine);
        assert_eq!(both["subset"], "rgb+height");
        assert_eq!(both["modalities"], serde_json::json!({"rgb": "present", "height": "present"}));
        assert_eq!(both["threshold"].as_f64(), Some(0.95), "{engine}: the top level's dent threshold");
        assert!(both.get("reason").is_none());

        let (alone, raw) = run(&[rgb]);
        // Zeros and height_present = 0 give the exporter's logits, and the rgb subset's T = 3.0.
        assert_decided(&alone, "models/learned_token.rgb_only.output.npy", 3.0, engine);
        assert_eq!(alone["subset"], "rgb");
        assert_eq!(alone["threshold"].as_f64(), Some(0.4), "{engine}: the subset's threshold");
        assert_eq!(alone["modalities"], serde_json::json!({"rgb": "present", "height": "missing"}));
        assert!(alone["files"]["height"].is_null());
        assert!(
            raw.contains(r#""modalities":{"rgb":"present","height":"missing"},"subset":"rgb","label":"#),
            "{raw}"
        );
    }
}

#[test]
fn a_folder_without_a_partner_is_missing_for_an_optional_input_and_an_error_for_a_required_one() {
    let dir = tempfile::tempdir().unwrap();
    let (rgb, height) = (dir.path().join("rgb"), dir.path().join("height"));
    for stem in ["a", "b", "c"] {
        copy("images/rgb_50x30.png", &rgb.join(format!("{stem}.png")));
    }
    for stem in ["a", "c", "d"] {
        copy("images/gray16_20x20.png", &height.join(format!("{stem}.png")));
    }
    for engine in ["tract", "ort"] {
        let output = edge_kd()
            .args(["run", "--format", "jsonl", "--engine", engine, "--model"])
            .arg(learned_token())
            .arg("--input")
            .arg(format!("rgb={}", rgb.display()))
            .arg("--input")
            .arg(format!("height={}", height.display()))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(4), "{engine}: {}", stderr(&output));
        let lines = stdout_lines(&output);
        let files: Vec<&str> = lines.iter().map(|l| l["file"].as_str().unwrap()).collect();
        assert_eq!(files, ["a", "b", "c", "d"], "{engine}");
        let both = "models/learned_token.from_images.output.npy";
        assert_decided(&lines[0], both, 1.5, engine);
        assert_decided(&lines[1], "models/learned_token.rgb_only.output.npy", 3.0, engine);
        assert_eq!(lines[1]["subset"], "rgb");
        assert_decided(&lines[2], both, 1.5, engine);
        let error = lines[3]["error"].as_str().unwrap();
        assert_eq!(error, "no file for input rgb in this sample, and the card does not make it optional");
        assert!(lines[3].get("subset").is_none(), "an error line has no subset");
        assert!(stderr(&output).contains("4 inputs: 0 accept, 3 review, 1 failed"), "{}", stderr(&output));
    }
}

#[test]
fn a_manifests_empty_cell_is_missing_for_an_optional_input_and_an_error_for_a_required_one() {
    let dir = tempfile::tempdir().unwrap();
    copy("images/rgb_50x30.png", &dir.path().join("rgb/1.png"));
    copy("images/gray16_20x20.png", &dir.path().join("height/1.png"));
    let manifest = dir.path().join("samples.csv");
    std::fs::write(
        &manifest,
        "id,label,rgb,height\nboth,ok,rgb/1.png,height/1.png\nno-height,,rgb/1.png,\nno-rgb,,,height/1.png\n",
    )
    .unwrap();
    let output = edge_kd()
        .args(["run", "--format", "jsonl", "--model"])
        .arg(learned_token())
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    let lines = stdout_lines(&output);
    assert_eq!(lines.len(), 3);
    assert_decided(&lines[0], "models/learned_token.from_images.output.npy", 1.5, "both");
    assert_eq!(
        (lines[0]["subset"].as_str(), lines[0]["expected"].as_str()),
        (Some("rgb+height"), Some("ok"))
    );
    assert_decided(&lines[1], "models/learned_token.rgb_only.output.npy", 3.0, "no height");
    assert_eq!(lines[1]["modalities"]["height"], "missing");
    assert!(lines[2]["error"].as_str().unwrap().starts_with("no file for input rgb"), "{}", lines[2]);
}

#[test]
fn a_height_map_that_is_not_one_fails_its_sample_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (rgb, height) = (dir.path().join("rgb"), dir.path().join("height"));
    let cases = [
        ("1-colour", "images/rgb_50x30.png", "a colour image (Rgb) where a gray height map is expected"),
        ("2-corrupt", "images/corrupt.png", "input \"height\": "),
        ("3-truncated", "images/truncated.png", "input \"height\": "),
        ("4-good", "images/gray16_20x20.png", ""),
    ];
    for (stem, file, _) in cases {
        copy("images/rgb_50x30.png", &rgb.join(format!("{stem}.png")));
        copy(file, &height.join(format!("{stem}.png")));
    }
    // A tensor of the wrong shape for the height map.
    copy("images/rgb_50x30.png", &rgb.join("5-tensor.png"));
    copy("models/two_input.depth.npy", &height.join("5-tensor.npy"));
    for engine in ["tract", "ort"] {
        let output = edge_kd()
            .args(["run", "--format", "jsonl", "--engine", engine, "--model"])
            .arg(learned_token())
            .arg("--input")
            .arg(format!("rgb={}", rgb.display()))
            .arg("--input")
            .arg(format!("height={}", height.display()))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(4), "{engine}: {}", stderr(&output));
        let lines = stdout_lines(&output);
        assert_eq!(lines.len(), 5, "{engine}: one line per sample");
        for (line, (stem, _, message)) in lines.iter().zip(cases) {
            assert_eq!(line["file"], stem);
            if message.is_empty() {
                assert_decided(line, "models/learned_token.from_images.output.npy", 1.5, engine);
            } else {
                let error = line["error"].as_str().unwrap_or_else(|| panic!("{engine} {stem}: {line}"));
                assert!(
                    error.contains(message) && error.starts_with("input \"height\""),
                    "{engine} {stem}: {error}"
                );
            }
        }
        let error = lines[4]["error"].as_str().unwrap();
        assert_eq!(
            error,
            "input \"height\": tensor of shape [1, 1, 12, 20] does not fit the model input [1, 1, 16, 16]"
        );
    }
}

#[test]
fn a_set_of_inputs_the_card_has_no_calibration_for_goes_to_review_with_the_reason() {
    let output = edge_kd()
        .args(["run", "--format", "jsonl", "--threshold", "0.01", "--model"])
        .arg(fixture("models/masked.onnx"))
        .arg("--input")
        .arg(named("image", "images/rgb_50x30.png"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let line = &stdout_lines(&output)[0];
    // Raw softmax (T = 1), no threshold, whatever --threshold says.
    assert_decided(line, "models/masked.image_only.output.npy", 1.0, "image only");
    assert_eq!((line["verdict"].as_str(), line["threshold"].is_null()), (Some("review"), true));
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .starts_with("the card has no calibration for frames with only these inputs")
    );
    // The mask input is always there: edge-kd fills it.
    assert_eq!(line["subset"], "image+depth_mask");
    assert_eq!(line["modalities"], serde_json::json!({"image": "present", "depth": "missing"}));
    let full = edge_kd()
        .args(["run", "--format", "jsonl", "--threshold", "0.01", "--model"])
        .arg(fixture("models/masked.onnx"))
        .args([
            "--input",
            &named("image", "images/rgb_50x30.png"),
            "--input",
            &named("depth", "images/gray_28.png"),
        ])
        .output()
        .unwrap();
    let line = &stdout_lines(&full)[0];
    assert_decided(line, "models/masked.from_images.output.npy", 2.0, "image and depth");
    assert_eq!(
        (line["verdict"].as_str(), line["subset"].as_str()),
        (Some("accept"), Some("image+depth+depth_mask"))
    );
}

#[test]
fn the_table_shows_the_inputs_each_sample_had() {
    let output = edge_kd()
        .args(["run", "--format", "table", "--model"])
        .arg(learned_token())
        .arg("--input")
        .arg(named("rgb", "images/rgb_50x30.png"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let table = String::from_utf8_lossy(&output.stdout);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("FILE       INPUTS      LABEL"), "{table}");
    assert!(lines.next().unwrap().starts_with("rgb_50x30  rgb         dent"), "{table}");
}
