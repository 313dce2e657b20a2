//! `.npy` tensors: model inputs fed as they are (parity checks) and reference outputs.
//! Only little-endian float32 in C order is accepted, which is what numpy writes for
//! `np.float32` arrays on every platform edge-kd runs on.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// numpy writes headers of a few hundred bytes; version 2+ allows 4 GiB ones, which only a
/// hostile file would use.
const MAX_HEADER_BYTES: usize = 64 << 10;

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
    Truncated { got: u64, expected: u64 },
    #[error("shape {shape:?} holds {elements} values, more than the {max} expected here")]
    TooLarge { shape: Vec<usize>, elements: String, max: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Reads a float32 array of at most `max_elements` values. The header is read and checked
/// first, so a file claiming a huge shape is refused before its data is read.
pub fn read_f32(path: &Path, max_elements: usize) -> Result<NpyArray, NpyError> {
    let mut file = std::fs::File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut prefix = [0u8; 12];
    let got = read_up_to(&mut file, &mut prefix)?;
    let (start, header_len) = header_span(&prefix[..got])?;
    let mut text = vec![0u8; header_len];
    file.seek(SeekFrom::Start(start as u64))?;
    file.read_exact(&mut text).map_err(|_| NpyError::Format("truncated header".into()))?;
    let header = parse_header(&text, max_elements)?;
    let available = file_len.saturating_sub((start + header_len) as u64);
    if available < header.data_bytes as u64 {
        return Err(NpyError::Truncated { got: available, expected: header.data_bytes as u64 });
    }
    let mut data = vec![0u8; header.data_bytes];
    file.read_exact(&mut data)?;
    Ok(NpyArray { shape: header.shape, data: to_f32(&data) })
}

/// Parses a whole `.npy` file held in memory (at most `max_elements` values).
pub fn parse_f32(bytes: &[u8], max_elements: usize) -> Result<NpyArray, NpyError> {
    let (start, header_len) = header_span(bytes)?;
    let end = Some(start + header_len).filter(|&e| e <= bytes.len());
    let end = end.ok_or_else(|| NpyError::Format("truncated header".into()))?;
    let header = parse_header(&bytes[start..end], max_elements)?;
    let data = &bytes[end..];
    if data.len() < header.data_bytes {
        return Err(NpyError::Truncated { got: data.len() as u64, expected: header.data_bytes as u64 });
    }
    Ok(NpyArray { shape: header.shape, data: to_f32(&data[..header.data_bytes]) })
}

struct Header {
    shape: Vec<usize>,
    data_bytes: usize,
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Where the header text starts and how long it is, from the magic, the version and the
/// 2- or 4-byte length that follow it.
fn header_span(bytes: &[u8]) -> Result<(usize, usize), NpyError> {
    let rest = bytes
        .strip_prefix(b"\x93NUMPY")
        .ok_or_else(|| NpyError::Format("missing \\x93NUMPY magic".into()))?;
    let (major, rest) = rest.split_first().ok_or_else(|| NpyError::Format("truncated header".into()))?;
    let rest = rest.get(1..).ok_or_else(|| NpyError::Format("truncated header".into()))?;
    let (start, header_len) = match major {
        1 if rest.len() >= 2 => (10, usize::from(u16::from_le_bytes([rest[0], rest[1]]))),
        2 | 3 if rest.len() >= 4 => (12, u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize),
        _ => return Err(NpyError::Format(format!("unsupported version {major}"))),
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(NpyError::Format(format!("header of {header_len} bytes (at most {MAX_HEADER_BYTES})")));
    }
    Ok((start, header_len))
}

fn parse_header(text: &[u8], max_elements: usize) -> Result<Header, NpyError> {
    let header = std::str::from_utf8(text).map_err(|_| NpyError::Format("header is not text".into()))?;
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
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    match count.filter(|&n| n <= max_elements).and_then(|n| n.checked_mul(4)) {
        Some(data_bytes) => Ok(Header { shape, data_bytes }),
        None => Err(too_large(shape, count, max_elements)),
    }
}

fn too_large(shape: Vec<usize>, count: Option<usize>, max: usize) -> NpyError {
    let elements = count.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
    NpyError::TooLarge { shape, elements, max }
}

fn to_f32(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
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
        let a = parse_f32(&npy("<f4", "(1, 3)", &[1.0, -2.5, 3.0]), 3).unwrap();
        assert_eq!(a, NpyArray { shape: vec![1, 3], data: vec![1.0, -2.5, 3.0] });
        let scalar = parse_f32(&npy("<f4", "()", &[7.0]), 1).unwrap();
        assert_eq!(scalar.shape, Vec::<usize>::new());
        let vector = parse_f32(&npy("<f4", "(2,)", &[1.0, 2.0]), 2).unwrap();
        assert_eq!(vector.shape, vec![2]);
    }

    #[test]
    fn refuses_other_dtypes_and_truncation() {
        assert!(
            matches!(parse_f32(&npy("<f8", "(1,)", &[0.0, 0.0]), 10), Err(NpyError::Dtype(d)) if d == "<f8")
        );
        let mut short = npy("<f4", "(4,)", &[1.0, 2.0, 3.0, 4.0]);
        short.truncate(short.len() - 3);
        assert!(matches!(parse_f32(&short, 4), Err(NpyError::Truncated { .. })));
        assert!(matches!(parse_f32(b"PK\x03\x04 zip", 4), Err(NpyError::Format(_))));
    }

    #[test]
    fn refuses_shapes_over_the_limit_before_reading_data() {
        // 2^40 values declared in a 128-byte file: refused by the header alone.
        let huge = npy("<f4", "(1048576, 1048576)", &[]);
        let err = parse_f32(&huge, 784).unwrap_err();
        assert!(matches!(&err, NpyError::TooLarge { max: 784, .. }), "{err}");
        assert!(err.to_string().contains("1099511627776 values, more than the 784"), "{err}");
        // A product that overflows usize is refused, not wrapped around to a small number.
        let wraps = npy("<f4", "(4294967296, 4294967296, 2)", &[]);
        let err = parse_f32(&wraps, usize::MAX).unwrap_err();
        assert!(err.to_string().contains("more than 2^64"), "{err}");
        // One value over the limit is enough to refuse.
        assert!(matches!(parse_f32(&npy("<f4", "(5,)", &[0.0; 5]), 4), Err(NpyError::TooLarge { .. })));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.npy");
        std::fs::write(&path, &huge).unwrap();
        assert!(matches!(read_f32(&path, 784), Err(NpyError::TooLarge { .. })));
    }

    #[test]
    fn reads_files_like_parse_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let bytes = npy("<f4", "(2, 2)", &[1.0, 2.0, 3.0, 4.0]);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_f32(&path, 4).unwrap(), parse_f32(&bytes, 4).unwrap());
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(read_f32(&path, 4), Err(NpyError::Truncated { got: 15, expected: 16 })));
        std::fs::write(&path, &bytes[..20]).unwrap();
        assert!(matches!(read_f32(&path, 4), Err(NpyError::Format(_))));
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_f32(&v2, 4), Err(NpyError::Format(m)) if m.contains("at most")));
    }
}
