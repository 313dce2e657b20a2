//! Reads what edge-kd needs from an ONNX file without a full protobuf stack: the
//! `metadata_props` (where the model card lives) and the graph's inputs and outputs.
//!
//! This keeps `card` independent of the engines: a model can be described, validated
//! and refused before any engine loads it.
//!
//! The file may come from anywhere, so nothing it declares is trusted: a length is checked
//! against the bytes that remain before it is used, varints and field numbers are checked
//! for overflow, every string is a copy of bytes the file holds (never a buffer sized by a
//! declared length), and the records read (metadata entries, opsets, inputs, outputs,
//! dimensions) are capped in number, so no file makes the reader hold more than the file's
//! own size in strings plus under 20 MiB of records (2 × 16,384 values of up to 32
//! dimensions, with room for vectors doubling; the rest is small).

use std::collections::HashSet;

use thiserror::Error;

/// Far more `metadata_props` entries than any exporter writes (they write a handful).
pub const MAX_METADATA_PROPS: usize = 1024;
/// Metadata keys are short identifiers such as `edge_kd.card`.
pub const MAX_METADATA_KEY_BYTES: usize = 1024;
/// Room for the card (at most [`crate::card::MAX_CARD_JSON_BYTES`]) and for what other
/// tools store, such as a vocabulary, without letting one entry claim the box's memory.
pub const MAX_METADATA_VALUE_BYTES: usize = 16 << 20;
/// Opset imports: one per operator domain, a few in practice.
pub const MAX_OPSETS: usize = 1024;
/// Graph inputs and outputs each. Old IR versions list every weight as an input too, so
/// this leaves room for a model with thousands of weight tensors.
pub const MAX_GRAPH_VALUES: usize = 16_384;
/// Dimensions of one input or output; the models in use stay at or below rank 8.
pub const MAX_RANK: usize = 32;

#[derive(Debug, Error)]
#[error("not a valid ONNX model: {0}")]
pub struct OnnxError(String);

/// Pushes `item` unless `list` already holds `limit` entries.
fn push_bounded<T>(list: &mut Vec<T>, item: T, limit: usize, what: &str) -> Result<(), OnnxError> {
    if list.len() >= limit {
        return Err(OnnxError(format!("more than {limit} {what}, the most edge-kd reads")));
    }
    list.push(item);
    Ok(())
}

/// One graph input or output as declared in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ONNX `TensorProto.DataType` (1 = float32); `None` for non-tensor types.
    pub elem_type: Option<i32>,
    /// Each dimension: `Some(n)` when static, `None` when symbolic or missing.
    pub shape: Option<Vec<Option<i64>>>,
}

impl TensorInfo {
    pub fn shape_string(&self) -> String {
        match &self.shape {
            None => "unknown".into(),
            Some(dims) => {
                let parts: Vec<String> =
                    dims.iter().map(|d| d.map_or_else(|| "?".to_string(), |n| n.to_string())).collect();
                format!("[{}]", parts.join(", "))
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ModelInfo {
    pub ir_version: i64,
    pub producer: String,
    pub opsets: Vec<(String, i64)>,
    pub metadata: Vec<(String, String)>,
    /// Graph inputs that are real inputs (initializers listed as inputs are left out).
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
}

impl ModelInfo {
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn input(&self, name: &str) -> Option<&TensorInfo> {
        self.inputs.iter().find(|t| t.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&TensorInfo> {
        self.outputs.iter().find(|t| t.name == name)
    }
}

/// Parses the parts of an ONNX `ModelProto` that describe the model.
pub fn read_model_info(bytes: &[u8]) -> Result<ModelInfo, OnnxError> {
    let mut info = ModelInfo::default();
    let mut graph = None;
    let mut saw_ir_version = false;
    for field in Fields::new(bytes) {
        let (number, value) = field?;
        match (number, value) {
            (1, Value::Varint(v)) => {
                info.ir_version = v as i64;
                saw_ir_version = true;
            }
            (2, Value::Bytes(b)) => info.producer = utf8(b, "producer_name")?,
            (7, Value::Bytes(b)) => graph = Some(b),
            (8, Value::Bytes(b)) => {
                push_bounded(&mut info.opsets, read_opset(b)?, MAX_OPSETS, "opset imports")?
            }
            (14, Value::Bytes(b)) => {
                let entry = read_string_pair(b, info.metadata.len())?;
                push_bounded(&mut info.metadata, entry, MAX_METADATA_PROPS, "metadata_props entries")?;
            }
            _ => {}
        }
    }
    let graph = graph.ok_or_else(|| OnnxError("no graph".into()))?;
    if !saw_ir_version {
        return Err(OnnxError("no ir_version".into()));
    }
    read_graph(graph, &mut info)?;
    if info.outputs.is_empty() {
        return Err(OnnxError("the graph declares no outputs".into()));
    }
    Ok(info)
}

fn read_graph(bytes: &[u8], info: &mut ModelInfo) -> Result<(), OnnxError> {
    let mut inputs = Vec::new();
    for field in Fields::new(bytes) {
        match field? {
            (11, Value::Bytes(b)) => {
                push_bounded(&mut inputs, read_value_info(b)?, MAX_GRAPH_VALUES, "graph inputs")?
            }
            (12, Value::Bytes(b)) => {
                push_bounded(&mut info.outputs, read_value_info(b)?, MAX_GRAPH_VALUES, "graph outputs")?
            }
            _ => {}
        }
    }
    // Models exported with old IR versions list their weights as graph inputs too. Only
    // initializer names that are input names are kept, borrowed from the file, so a graph
    // of many weights costs nothing here.
    let input_names: HashSet<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    let mut weights = HashSet::new();
    for field in Fields::new(bytes) {
        if let (5, Value::Bytes(b)) = field?
            && let Some(name) = read_tensor_name(b)?
            && input_names.contains(name)
        {
            weights.insert(name);
        }
    }
    inputs.retain(|i| !weights.contains(i.name.as_str()));
    info.inputs = inputs;
    Ok(())
}

fn read_tensor_name(bytes: &[u8]) -> Result<Option<&str>, OnnxError> {
    for field in Fields::new(bytes) {
        if let (8, Value::Bytes(b)) = field? {
            return std::str::from_utf8(b)
                .map(Some)
                .map_err(|_| OnnxError("initializer name is not UTF-8".into()));
        }
    }
    Ok(None)
}

fn read_value_info(bytes: &[u8]) -> Result<TensorInfo, OnnxError> {
    let mut t = TensorInfo { name: String::new(), elem_type: None, shape: None };
    for field in Fields::new(bytes) {
        match field? {
            (1, Value::Bytes(b)) => t.name = utf8(b, "value name")?,
            (2, Value::Bytes(type_proto)) => {
                for f in Fields::new(type_proto) {
                    if let (1, Value::Bytes(tensor_type)) = f? {
                        read_tensor_type(tensor_type, &mut t)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(t)
}

fn read_tensor_type(bytes: &[u8], t: &mut TensorInfo) -> Result<(), OnnxError> {
    for field in Fields::new(bytes) {
        match field? {
            (1, Value::Varint(v)) => t.elem_type = Some(v as i32),
            (2, Value::Bytes(shape)) => {
                let mut dims = Vec::new();
                for f in Fields::new(shape) {
                    if let (1, Value::Bytes(dim)) = f? {
                        let mut value = None;
                        for d in Fields::new(dim) {
                            if let (1, Value::Varint(v)) = d? {
                                value = Some(v as i64);
                            }
                        }
                        push_bounded(&mut dims, value, MAX_RANK, "dimensions in one shape")?;
                    }
                }
                t.shape = Some(dims);
            }
            _ => {}
        }
    }
    Ok(())
}

fn read_opset(bytes: &[u8]) -> Result<(String, i64), OnnxError> {
    let mut domain = String::new();
    let mut version = 0;
    for field in Fields::new(bytes) {
        match field? {
            (1, Value::Bytes(b)) => domain = utf8(b, "opset domain")?,
            (2, Value::Varint(v)) => version = v as i64,
            _ => {}
        }
    }
    Ok((domain, version))
}

/// One `metadata_props` entry; `index` names it in errors.
fn read_string_pair(bytes: &[u8], index: usize) -> Result<(String, String), OnnxError> {
    let (mut key, mut value) = (String::new(), String::new());
    for field in Fields::new(bytes) {
        match field? {
            (1, Value::Bytes(b)) => {
                key = bounded_utf8(b, MAX_METADATA_KEY_BYTES, &format!("metadata_props[{index}].key"))?
            }
            (2, Value::Bytes(b)) => {
                let what = format!("metadata_props[{index}] ({:?}).value", key);
                value = bounded_utf8(b, MAX_METADATA_VALUE_BYTES, &what)?
            }
            _ => {}
        }
    }
    Ok((key, value))
}

/// Checked before the copy, so an oversized string is never allocated.
fn bounded_utf8(b: &[u8], limit: usize, what: &str) -> Result<String, OnnxError> {
    if b.len() > limit {
        return Err(OnnxError(format!("{what} is {} bytes, more than the {limit} edge-kd reads", b.len())));
    }
    utf8(b, what)
}

fn utf8(b: &[u8], what: &str) -> Result<String, OnnxError> {
    String::from_utf8(b.to_vec()).map_err(|_| OnnxError(format!("{what} is not UTF-8")))
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Iterates over the fields of one protobuf message.
struct Fields<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, failed: false }
    }

    fn varint(&mut self) -> Result<u64, OnnxError> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self.buf.split_first().ok_or_else(|| OnnxError("truncated varint".into()))?;
            self.buf = rest;
            // The tenth byte holds bit 63 only: anything more does not fit 64 bits.
            if i == 9 && byte > 1 {
                return Err(OnnxError("varint does not fit 64 bits".into()));
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(OnnxError("varint longer than 10 bytes".into()))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], OnnxError> {
        if n > self.buf.len() {
            return Err(OnnxError(format!(
                "a field claims {n} bytes but only {} remain (truncated file?)",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn next_field(&mut self) -> Result<(u32, Value<'a>), OnnxError> {
        let key = self.varint()?;
        // Protobuf field numbers are 1 ..= 2^29 - 1.
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|n| (1..1 << 29).contains(n))
            .ok_or_else(|| OnnxError(format!("field number {} is out of range", key >> 3)))?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(usize::try_from(len).unwrap_or(usize::MAX))?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            other => return Err(OnnxError(format!("unsupported protobuf wire type {other}"))),
        };
        Ok((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), OnnxError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        let field = self.next_field();
        self.failed = field.is_err();
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(number: u32, payload: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(number) << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn value_info(name: &str, dims: &[Option<i64>]) -> Vec<u8> {
        let mut shape = Vec::new();
        for d in dims {
            let mut dim = Vec::new();
            match d {
                Some(n) => {
                    varint(1 << 3, &mut dim);
                    varint(*n as u64, &mut dim);
                }
                None => bytes_field(2, b"batch", &mut dim),
            }
            bytes_field(1, &dim, &mut shape);
        }
        let mut tensor = Vec::new();
        varint(1 << 3, &mut tensor);
        varint(1, &mut tensor);
        bytes_field(2, &shape, &mut tensor);
        let mut type_proto = Vec::new();
        bytes_field(1, &tensor, &mut type_proto);
        let mut vi = Vec::new();
        bytes_field(1, name.as_bytes(), &mut vi);
        bytes_field(2, &type_proto, &mut vi);
        vi
    }

    fn model(with_weight_as_input: bool) -> Vec<u8> {
        let mut graph = Vec::new();
        let mut init = Vec::new();
        bytes_field(8, b"w", &mut init);
        bytes_field(5, &init, &mut graph);
        bytes_field(11, &value_info("image", &[None, Some(1), Some(28), Some(28)]), &mut graph);
        if with_weight_as_input {
            bytes_field(11, &value_info("w", &[Some(3)]), &mut graph);
        }
        bytes_field(12, &value_info("logits", &[Some(1), Some(10)]), &mut graph);
        let mut m = Vec::new();
        varint(1 << 3, &mut m);
        varint(8, &mut m);
        bytes_field(7, &graph, &mut m);
        let mut entry = Vec::new();
        bytes_field(1, b"edge_kd.card", &mut entry);
        bytes_field(2, b"{}", &mut entry);
        bytes_field(14, &entry, &mut m);
        m
    }

    #[test]
    fn reads_io_and_metadata() {
        let info = read_model_info(&model(true)).unwrap();
        assert_eq!(info.ir_version, 8);
        assert_eq!(info.metadata("edge_kd.card"), Some("{}"));
        assert_eq!(info.inputs.len(), 1, "initializers are not inputs");
        assert_eq!(info.inputs[0].shape, Some(vec![None, Some(1), Some(28), Some(28)]));
        assert_eq!(info.outputs[0].name, "logits");
        assert_eq!(info.outputs[0].shape_string(), "[1, 10]");
    }

    #[test]
    fn refuses_text_and_truncation() {
        assert!(read_model_info(b"hello, this is not a model\n").is_err());
        let m = model(false);
        assert!(read_model_info(&m[..m.len() / 2]).is_err());
        assert!(read_model_info(&[]).is_err());
    }

    /// A model with one output, the given metadata entries and one input of `rank` dimensions.
    fn model_with(metadata: &[(&[u8], &[u8])], rank: usize) -> Vec<u8> {
        let mut graph = Vec::new();
        bytes_field(11, &value_info("image", &vec![Some(1); rank]), &mut graph);
        bytes_field(12, &value_info("logits", &[Some(1), Some(10)]), &mut graph);
        let mut m = Vec::new();
        varint(1 << 3, &mut m);
        varint(8, &mut m);
        bytes_field(7, &graph, &mut m);
        for (key, value) in metadata {
            let mut entry = Vec::new();
            bytes_field(1, key, &mut entry);
            bytes_field(2, value, &mut entry);
            bytes_field(14, &entry, &mut m);
        }
        m
    }

    fn error_of(bytes: &[u8]) -> String {
        read_model_info(bytes).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn metadata_is_read_up_to_its_documented_bounds_and_refused_past_them() {
        let key = vec![b'k'; MAX_METADATA_KEY_BYTES];
        let value = vec![b'v'; MAX_METADATA_VALUE_BYTES];
        let info = read_model_info(&model_with(&[(&key, &value)], 4)).unwrap();
        assert_eq!(info.metadata[0].1.len(), MAX_METADATA_VALUE_BYTES, "the limits themselves are allowed");

        let long_key = vec![b'k'; MAX_METADATA_KEY_BYTES + 1];
        let message = error_of(&model_with(&[(&long_key, b"v")], 4));
        assert!(
            message.contains("metadata_props[0].key is 1025 bytes, more than the 1024 edge-kd reads"),
            "{message}"
        );
        let long_value = vec![b'v'; MAX_METADATA_VALUE_BYTES + 1];
        let message = error_of(&model_with(&[(b"notes", &long_value)], 4));
        assert!(
            message.contains(&format!(
                "metadata_props[0] (\"notes\").value is {} bytes, more than the {MAX_METADATA_VALUE_BYTES}",
                MAX_METADATA_VALUE_BYTES + 1
            )),
            "{message}"
        );

        let names: Vec<Vec<u8>> = (0..=MAX_METADATA_PROPS).map(|i| format!("k{i}").into_bytes()).collect();
        let entries: Vec<(&[u8], &[u8])> = names.iter().map(|k| (k.as_slice(), &b"v"[..])).collect();
        let message = error_of(&model_with(&entries, 4));
        assert!(message.contains("more than 1024 metadata_props entries"), "{message}");
        assert!(read_model_info(&model_with(&entries[..MAX_METADATA_PROPS], 4)).is_ok());
    }

    #[test]
    fn shapes_of_absurd_rank_are_refused() {
        assert!(read_model_info(&model_with(&[], MAX_RANK)).is_ok());
        let message = error_of(&model_with(&[], MAX_RANK + 1));
        assert!(message.contains("more than 32 dimensions in one shape"), "{message}");
    }

    #[test]
    fn declared_lengths_and_varints_are_checked_before_they_are_used() {
        // A metadata entry claiming 2^62 bytes: refused without trying to hold them.
        let mut m = model_with(&[], 4);
        varint(14 << 3 | 2, &mut m);
        varint(1 << 62, &mut m);
        m.extend_from_slice(b"tiny");
        let message = error_of(&m);
        assert!(message.contains("claims 4611686018427387904 bytes but only 4 remain"), "{message}");

        // Ten varint bytes whose last one carries more than bit 63.
        let mut m = model_with(&[], 4);
        m.extend_from_slice(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
        let message = error_of(&m);
        assert!(message.contains("varint does not fit 64 bits"), "{message}");

        // A field number beyond protobuf's 2^29 - 1.
        let mut m = model_with(&[], 4);
        varint((1u64 << 32) << 3, &mut m);
        varint(1, &mut m);
        let message = error_of(&m);
        assert!(message.contains("field number 4294967296 is out of range"), "{message}");
    }

    #[test]
    fn no_truncation_or_corrupted_byte_makes_the_reader_panic() {
        let good = model(true);
        for end in 0..good.len() {
            let _ = read_model_info(&good[..end]);
        }
        for i in 0..good.len() {
            for byte in [0x00, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] = byte;
                let _ = read_model_info(&bad);
            }
        }
    }
}
