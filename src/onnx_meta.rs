//! Reads what edge-kd needs from an ONNX file without a full protobuf stack: the
//! `metadata_props` (where the model card lives) and the graph's inputs and outputs.
//!
//! This keeps `card` independent of the engines: a model can be described, validated
//! and refused before any engine loads it.

use std::collections::HashSet;

use thiserror::Error;

#[derive(Debug, Error)]
#[error("not a valid ONNX model: {0}")]
pub struct OnnxError(String);

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
            (8, Value::Bytes(b)) => info.opsets.push(read_opset(b)?),
            (14, Value::Bytes(b)) => info.metadata.push(read_string_pair(b)?),
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
    let mut initializers = HashSet::new();
    let mut inputs = Vec::new();
    for field in Fields::new(bytes) {
        match field? {
            (5, Value::Bytes(b)) => {
                if let Some(name) = read_tensor_name(b)? {
                    initializers.insert(name);
                }
            }
            (11, Value::Bytes(b)) => inputs.push(read_value_info(b)?),
            (12, Value::Bytes(b)) => info.outputs.push(read_value_info(b)?),
            _ => {}
        }
    }
    // Models exported with old IR versions list their weights as graph inputs too.
    info.inputs = inputs.into_iter().filter(|i| !initializers.contains(&i.name)).collect();
    Ok(())
}

fn read_tensor_name(bytes: &[u8]) -> Result<Option<String>, OnnxError> {
    for field in Fields::new(bytes) {
        if let (8, Value::Bytes(b)) = field? {
            return Ok(Some(utf8(b, "initializer name")?));
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
                        dims.push(value);
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

fn read_string_pair(bytes: &[u8]) -> Result<(String, String), OnnxError> {
    let (mut key, mut value) = (String::new(), String::new());
    for field in Fields::new(bytes) {
        match field? {
            (1, Value::Bytes(b)) => key = utf8(b, "metadata key")?,
            (2, Value::Bytes(b)) => value = utf8(b, "metadata value")?,
            _ => {}
        }
    }
    Ok((key, value))
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
        let number = (key >> 3) as u32;
        if number == 0 {
            return Err(OnnxError("field number 0".into()));
        }
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
}
