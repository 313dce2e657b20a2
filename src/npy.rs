//! `.npy` tensors: model inputs fed as they are (parity checks) and reference outputs.
//! Only little-endian float32 in C order is accepted, which is what numpy writes for
//! `np.float32` arrays on every platform edge-kd runs on.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a .npy file ({0})")]
    Format(String),
    #[error("dtype {0} is not supported; save the array as float32 (`x.astype(np.float32)`)")]
    Dtype(String),
    #[error("Fortran-ordered arrays are not supported; save with np.ascontiguousarray(x)")]
    FortranOrder,
    #[error("holds {got} bytes of data, the header promises {expected}")]
    Truncated { got: usize, expected: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub fn read_f32(path: &Path) -> Result<NpyArray, NpyError> {
    parse_f32(&std::fs::read(path)?)
}

pub fn parse_f32(bytes: &[u8]) -> Result<NpyArray, NpyError> {
    let rest = bytes
        .strip_prefix(b"\x93NUMPY")
        .ok_or_else(|| NpyError::Format("missing \\x93NUMPY magic".into()))?;
    let (major, rest) = rest.split_first().ok_or_else(|| NpyError::Format("truncated header".into()))?;
    let rest = rest.get(1..).ok_or_else(|| NpyError::Format("truncated header".into()))?;
    let (header_len, rest) = match major {
        1 if rest.len() >= 2 => (usize::from(u16::from_le_bytes([rest[0], rest[1]])), &rest[2..]),
        2 | 3 if rest.len() >= 4 => {
            (u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize, &rest[4..])
        }
        _ => return Err(NpyError::Format(format!("unsupported version {major}"))),
    };
    if rest.len() < header_len {
        return Err(NpyError::Format("truncated header".into()));
    }
    let header = std::str::from_utf8(&rest[..header_len])
        .map_err(|_| NpyError::Format("header is not text".into()))?;
    let data = &rest[header_len..];
    let descr = dict_value(header, "descr")
        .and_then(|v| v.trim().strip_prefix('\'').and_then(|v| v.split('\'').next()))
        .ok_or_else(|| NpyError::Format("header has no descr".into()))?;
    if descr != "<f4" && descr != "=f4" && descr != "|f4" {
        return Err(NpyError::Dtype(descr.into()));
    }
    let fortran = dict_value(header, "fortran_order").map(str::trim_start);
    if fortran.is_some_and(|v| v.starts_with("True")) {
        return Err(NpyError::FortranOrder);
    }
    let shape_text = dict_value(header, "shape")
        .and_then(|v| v.trim_start().strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .ok_or_else(|| NpyError::Format("header has no shape".into()))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| NpyError::Format(format!("bad shape entry {s:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let count: usize = shape.iter().product();
    let expected = count * 4;
    if data.len() < expected {
        return Err(NpyError::Truncated { got: data.len(), expected });
    }
    let data =
        data[..expected].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(NpyArray { shape, data })
}

/// The text after `'key':` in numpy's header dict.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("'{key}':");
    let at = header.find(&pattern)?;
    Some(&header[at + pattern.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, values: &[f32]) -> Vec<u8> {
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    #[test]
    fn reads_float32_arrays() {
        let a = parse_f32(&npy("<f4", "(1, 3)", &[1.0, -2.5, 3.0])).unwrap();
        assert_eq!(a, NpyArray { shape: vec![1, 3], data: vec![1.0, -2.5, 3.0] });
        let scalar = parse_f32(&npy("<f4", "()", &[7.0])).unwrap();
        assert_eq!(scalar.shape, Vec::<usize>::new());
        let vector = parse_f32(&npy("<f4", "(2,)", &[1.0, 2.0])).unwrap();
        assert_eq!(vector.shape, vec![2]);
    }

    #[test]
    fn refuses_other_dtypes_and_truncation() {
        assert!(matches!(parse_f32(&npy("<f8", "(1,)", &[0.0, 0.0])), Err(NpyError::Dtype(d)) if d == "<f8"));
        let mut short = npy("<f4", "(4,)", &[1.0, 2.0, 3.0, 4.0]);
        short.truncate(short.len() - 3);
        assert!(matches!(parse_f32(&short), Err(NpyError::Truncated { .. })));
        assert!(matches!(parse_f32(b"PK\x03\x04 zip"), Err(NpyError::Format(_))));
    }
}
