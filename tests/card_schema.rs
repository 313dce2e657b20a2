//! One source of truth for the card: the JSON schema in docs/, the Rust parser, and
//! (in training/tests) the Python writer agree on the same test vectors.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use edge_kd::card::{
    Card, MAX_CARD_JSON_BYTES, MAX_INPUT_SIDE, MAX_INPUTS, MAX_LABELS, MAX_NAME_CHARS, MAX_TEXT_CHARS,
};
use edge_kd::model::{CardlessOptions, Model};
use edge_kd::onnx_meta::{ModelInfo, TensorInfo};

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("docs/card.schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).expect("the schema compiles")
}

fn vectors(dir: &str) -> Vec<(PathBuf, String)> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(fixture(&format!("cards/{dir}"))).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "no vectors in {dir}");
    files.into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap())).collect()
}

/// The start of the error both parsers give for a rejected vector, by `dir/file.json`.
fn expected_errors() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(fixture("cards/expected_errors.json")).unwrap();
    serde_json::from_str(&text).expect("expected_errors.json maps file names to messages")
}

/// A graph that fits the card as far as the card can be read: one graph input per card input,
/// and under "learned-token" a presence input (float32 `[1]`) per optional one.
fn graph_for(json: &str) -> ModelInfo {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let inputs = v["inputs"].as_array().map_or(&[][..], Vec::as_slice);
    let labels = v["labels"].as_array().map_or(0, Vec::len) as i64;
    let learned_token = v["missing_modality"]["policy"] == "learned-token";
    let presence =
        inputs.iter().filter(|input| learned_token && input["optional"] == true).map(|input| TensorInfo {
            name: format!("{}_present", input["name"].as_str().unwrap_or("image")),
            elem_type: Some(1),
            shape: Some(vec![Some(1)]),
        });
    ModelInfo {
        inputs: inputs
            .iter()
            .map(|input| TensorInfo {
                name: input["name"].as_str().unwrap_or("image").into(),
                elem_type: Some(1),
                shape: input["shape"].as_array().map(|d| d.iter().map(|x| x.as_i64()).collect()),
            })
            .chain(presence)
            .collect(),
        outputs: vec![TensorInfo {
            name: v["output"].as_str().unwrap_or("logits").into(),
            elem_type: Some(1),
            shape: Some(vec![Some(1), Some(labels)]),
        }],
        ..Default::default()
    }
}

fn rust_accepts(json: &str) -> Result<(), String> {
    let card = Card::parse(json).map_err(|e| e.to_string())?;
    card.validate(&graph_for(json)).map_err(|e| e.to_string())
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into()
}

#[test]
fn valid_vectors_pass_schema_and_parser() {
    let schema = schema();
    for (path, json) in vectors("valid") {
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(schema.is_valid(&value), "{}: schema refuses it", name(&path));
        rust_accepts(&json).unwrap_or_else(|e| panic!("{}: {e}", name(&path)));
        // What Rust writes back is still a valid card.
        let again: serde_json::Value = serde_json::from_str(&Card::parse(&json).unwrap().to_json()).unwrap();
        assert!(schema.is_valid(&again), "{}: re-serialised card fails the schema", name(&path));
    }
}

#[test]
fn invalid_vectors_fail_schema_and_parser() {
    let schema = schema();
    let expected = expected_errors();
    for (path, json) in vectors("invalid") {
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(!schema.is_valid(&value), "{}: schema accepts it", name(&path));
        let err = rust_accepts(&json).expect_err(&name(&path));
        assert!(err.starts_with("card"), "{}: error does not name the card field: {err}", name(&path));
        let want = &expected[&format!("invalid/{}", name(&path))];
        assert!(err.starts_with(want.as_str()), "{}: {err:.200}\n  should start with {want}", name(&path));
    }
}

#[test]
fn semantic_vectors_pass_schema_but_fail_parser() {
    let schema = schema();
    let expected = expected_errors();
    for (path, json) in vectors("semantic") {
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(schema.is_valid(&value), "{}: schema refuses it", name(&path));
        let err = rust_accepts(&json).expect_err(&name(&path));
        let want = &expected[&format!("semantic/{}", name(&path))];
        assert!(err.starts_with(want.as_str()), "{}: {err}\n  should start with {want}", name(&path));
    }
}

#[test]
fn every_expected_error_belongs_to_a_rejected_vector() {
    for key in expected_errors().keys() {
        assert!(
            key.starts_with("invalid/") || key.starts_with("semantic/"),
            "{key}: only rejected vectors have an error"
        );
        assert!(fixture(&format!("cards/{key}")).is_file(), "{key}: no such vector");
    }
}

/// Every subschema of the schema that describes a string (property names included), by path.
fn string_parts<'a>(
    node: &'a serde_json::Value,
    path: String,
    out: &mut Vec<(String, &'a serde_json::Value)>,
) {
    if let Some(map) = node.as_object() {
        let is_string = match map.get("type") {
            Some(serde_json::Value::String(t)) => t == "string",
            Some(serde_json::Value::Array(ts)) => ts.iter().any(|t| t == "string"),
            _ => path.ends_with("/propertyNames"),
        };
        if is_string {
            out.push((path.clone(), node));
        }
        for (key, child) in map {
            string_parts(child, format!("{path}/{key}"), out);
        }
    } else if let Some(items) = node.as_array() {
        for (i, child) in items.iter().enumerate() {
            string_parts(child, format!("{path}/{i}"), out);
        }
    }
}

#[test]
fn the_schema_states_the_bounds_the_parser_enforces() {
    let text = std::fs::read_to_string(root().join("docs/card.schema.json")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut parts = Vec::new();
    string_parts(&schema, String::new(), &mut parts);
    for (path, part) in &parts {
        let max = part["maxLength"].as_u64().unwrap_or_else(|| panic!("{path}: a string without maxLength"));
        assert!(
            [MAX_NAME_CHARS, MAX_TEXT_CHARS].contains(&(max as usize)),
            "{path}: maxLength {max} is neither MAX_NAME_CHARS nor MAX_TEXT_CHARS"
        );
    }
    assert!(parts.len() >= 15, "the walk found only {} strings", parts.len());
    let props = &schema["properties"];
    assert_eq!(props["labels"]["maxItems"], MAX_LABELS);
    assert_eq!(props["inputs"]["maxItems"], MAX_INPUTS);
    assert_eq!(props["name"]["maxLength"], MAX_NAME_CHARS);
    assert_eq!(schema["$defs"]["provenance"]["properties"]["command"]["maxLength"], MAX_TEXT_CHARS);
    assert_eq!(schema["$defs"]["input"]["properties"]["shape"]["items"]["maximum"], MAX_INPUT_SIDE);
    let description = schema["description"].as_str().unwrap();
    assert!(description.contains(&format!("at most {MAX_CARD_JSON_BYTES} bytes")), "{description}");
}

#[test]
fn shipped_and_fixture_cards_follow_the_schema() {
    let schema = schema();
    let mut models = vec![Model::embedded_default().unwrap()];
    for m in ["gray28", "rgb32_crop", "bgr_letterbox"] {
        models.push(Model::open(&fixture(&format!("models/{m}.onnx")), &CardlessOptions::default()).unwrap());
    }
    for model in models {
        let stored = model.info.metadata(edge_kd::card::METADATA_KEY).unwrap();
        let value: serde_json::Value = serde_json::from_str(stored).unwrap();
        let errors: Vec<String> = schema.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", model.origin());
    }
}
