//! One source of truth for the card: the JSON schema in docs/, the Rust parser, and
//! (in training/tests) the Python writer agree on the same test vectors.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use edge_kd::card::Card;
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

/// A graph that fits the card as far as the card can be read.
fn graph_for(json: &str) -> ModelInfo {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let input = &v["inputs"][0];
    let shape = input["shape"].as_array().map(|d| d.iter().map(|x| x.as_i64()).collect());
    let labels = v["labels"].as_array().map_or(0, Vec::len) as i64;
    ModelInfo {
        inputs: vec![TensorInfo {
            name: input["name"].as_str().unwrap_or("image").into(),
            elem_type: Some(1),
            shape,
        }],
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
    for (path, json) in vectors("invalid") {
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(!schema.is_valid(&value), "{}: schema accepts it", name(&path));
        let err = rust_accepts(&json).expect_err(&name(&path));
        assert!(err.starts_with("card"), "{}: error does not name the card field: {err}", name(&path));
    }
}

#[test]
fn semantic_vectors_pass_schema_but_fail_parser() {
    let schema = schema();
    for (path, json) in vectors("semantic") {
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(schema.is_valid(&value), "{}: schema refuses it", name(&path));
        let err = rust_accepts(&json).expect_err(&name(&path));
        assert!(err.starts_with("card."), "{}: {err}", name(&path));
    }
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
