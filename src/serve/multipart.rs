//! `multipart/form-data` bodies (RFC 7578) as `POST /infer` takes them: one part per card
//! input, named by the input. The body is already in memory and bounded by
//! `http.max_body_bytes`, so this parses it in one pass and hands out slices of it; what a
//! part may cost beyond that is bounded here (its head, the number of parts).
//!
//! A small parser of our own rather than a streaming crate: the request has been read whole
//! by then, and keeping the parse a plain function over bytes lets the `infer_body` fuzz
//! target run exactly what the daemon runs.

use memchr::memmem;

/// One part: its `name` and `filename` (from `Content-Disposition`) and its content.
#[derive(Debug, PartialEq)]
pub struct FormPart<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub body: &'a [u8],
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum MultipartError {
    #[error("multipart/form-data without a boundary parameter in its Content-Type")]
    NoBoundary,
    #[error("the multipart boundary must be 1 to 70 characters (RFC 2046)")]
    BadBoundary,
    #[error("the body does not start with the multipart boundary given in the Content-Type")]
    NoFirstBoundary,
    #[error("multipart part {index}: the body ends before the boundary that closes it")]
    Unterminated { index: usize },
    #[error(
        "multipart part {index}: its head is not followed by an empty line within {MAX_HEAD_BYTES} bytes"
    )]
    Head { index: usize },
    #[error("multipart part {index}: a header line without a colon")]
    HeaderLine { index: usize },
    #[error("multipart part {index}: no Content-Disposition: form-data with a name")]
    NoName { index: usize },
    #[error("multipart part {index}: garbage after its boundary")]
    AfterBoundary { index: usize },
    #[error("more than {MAX_PARTS} multipart parts")]
    TooManyParts,
}

/// A part's head (its headers) beyond this is not a form a client sends.
pub const MAX_HEAD_BYTES: usize = 8 << 10;
/// A card has at most this many inputs (`card::MAX_INPUTS`), so a frame at most this many parts.
pub const MAX_PARTS: usize = crate::card::MAX_INPUTS;

/// The boundary of a `multipart/form-data` content type, or `None` for any other type.
pub fn boundary(content_type: &str) -> Result<Option<String>, MultipartError> {
    let mut params = split_params(content_type);
    let Some(kind) = params.next() else { return Ok(None) };
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Ok(None);
    }
    let boundary = params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| unquote(v.trim()))
        .ok_or(MultipartError::NoBoundary)?;
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(MultipartError::BadBoundary);
    }
    Ok(Some(boundary))
}

/// The parts of `body`, in order.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<FormPart<'a>>, MultipartError> {
    let dash = format!("--{boundary}");
    // Every delimiter after the first is preceded by CRLF, which belongs to it, not to the
    // part before.
    let delimiter = format!("\r\n{dash}");
    let finder = memmem::Finder::new(delimiter.as_bytes());
    // The first delimiter may open the body or follow a preamble.
    let mut at = if body.starts_with(dash.as_bytes()) {
        dash.len()
    } else {
        finder.find(body).ok_or(MultipartError::NoFirstBoundary)? + delimiter.len()
    };
    let mut parts = Vec::new();
    loop {
        let index = parts.len() + 1;
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            // The close delimiter; whatever follows is the epilogue.
            return Ok(parts);
        }
        // Transport padding (RFC 2046 §5.1.1), then the line break.
        let padded = rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
        let Some(rest) = rest[padded..].strip_prefix(b"\r\n") else {
            return Err(if rest.is_empty() {
                MultipartError::Unterminated { index: index - 1 }
            } else {
                MultipartError::AfterBoundary { index: index - 1 }
            });
        };
        if parts.len() == MAX_PARTS {
            return Err(MultipartError::TooManyParts);
        }
        let start = body.len() - rest.len();
        let (head, content_start) = match rest.strip_prefix(b"\r\n") {
            // No headers at all: no name, refused below.
            Some(_) => (&rest[..0], start + 2),
            None => {
                let window = &rest[..rest.len().min(MAX_HEAD_BYTES + 4)];
                let end = memmem::find(window, b"\r\n\r\n").ok_or(MultipartError::Head { index })?;
                (&rest[..end], start + end + 4)
            }
        };
        let (name, filename) = disposition(head, index)?;
        let content = &body[content_start..];
        let end = finder.find(content).ok_or(MultipartError::Unterminated { index })?;
        parts.push(FormPart { name, filename, body: &content[..end] });
        at = content_start + end + delimiter.len();
    }
}

/// The `name` and `filename` of a part's `Content-Disposition: form-data` header.
fn disposition(head: &[u8], index: usize) -> Result<(String, Option<String>), MultipartError> {
    for line in head.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
        if line.is_empty() {
            continue;
        }
        let (header, value) = line.split_once(':').ok_or(MultipartError::HeaderLine { index })?;
        if !header.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        let mut params = split_params(value);
        if !params.next().is_some_and(|kind| kind.trim().eq_ignore_ascii_case("form-data")) {
            return Err(MultipartError::NoName { index });
        }
        let (mut name, mut filename) = (None, None);
        for (key, value) in params.filter_map(|p| p.split_once('=')) {
            match key.trim().to_ascii_lowercase().as_str() {
                "name" => name = Some(unquote(value.trim())),
                "filename" => filename = Some(unquote(value.trim())),
                _ => {}
            }
        }
        return match name {
            Some(name) if !name.is_empty() => Ok((name, filename)),
            _ => Err(MultipartError::NoName { index }),
        };
    }
    Err(MultipartError::NoName { index })
}

/// `a; b="x;y"; c` → `a`, ` b="x;y"`, ` c`: semicolons inside quotes do not split.
fn split_params(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ';' if !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

/// A token as it is, or a quoted string without its quotes and escapes.
fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = b"preamble\r\n".to_vec();
        for (name, content) in parts {
            body.extend_from_slice(
                format!("--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.png\"\r\nContent-Type: image/png\r\n\r\n")
                    .as_bytes(),
            );
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\nepilogue");
        body
    }

    #[test]
    fn the_boundary_comes_from_a_form_data_content_type_only() {
        assert_eq!(boundary("multipart/form-data; boundary=XyZ"), Ok(Some("XyZ".into())));
        assert_eq!(boundary("Multipart/Form-Data;charset=x; BOUNDARY=\"a;b c\""), Ok(Some("a;b c".into())));
        assert_eq!(boundary("image/png"), Ok(None));
        assert_eq!(boundary("multipart/mixed; boundary=x"), Ok(None));
        assert_eq!(boundary("multipart/form-data"), Err(MultipartError::NoBoundary));
        assert_eq!(boundary("multipart/form-data; boundary=\"\""), Err(MultipartError::BadBoundary));
        assert_eq!(
            boundary(&format!("multipart/form-data; boundary={}", "b".repeat(71))),
            Err(MultipartError::BadBoundary)
        );
    }

    #[test]
    fn parts_come_out_in_order_with_their_names_and_exact_bytes() {
        // Content holding CRLF and a near-boundary stays intact.
        let tricky: &[u8] = b"\x89PNG\r\n--XyY\r\n-XyZ\r\n";
        let body = form(&[("rgb", tricky), ("height", b"")]);
        let parts = parse(&body, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].name.as_str(), parts[0].filename.as_deref(), parts[0].body),
            ("rgb", Some("rgb.png"), tricky)
        );
        assert_eq!((parts[1].name.as_str(), parts[1].body), ("height", &b""[..]));
        // No preamble, a curl-style head, transport padding after a delimiter.
        let body = b"--b \t\r\ncontent-disposition: form-data; name=rgb\r\n\r\nA\r\n--b--";
        assert_eq!(parse(body, "b").unwrap(), [FormPart { name: "rgb".into(), filename: None, body: b"A" }]);
        assert_eq!(parse(b"--b--", "b").unwrap(), [], "no parts at all");
    }

    #[test]
    fn each_malformed_body_is_its_own_error_naming_the_part() {
        let head = "Content-Disposition: form-data; name=\"rgb\"\r\n\r\n";
        let cases: [(String, MultipartError); 8] = [
            ("just bytes".into(), MultipartError::NoFirstBoundary),
            (format!("--b\r\n{head}data"), MultipartError::Unterminated { index: 1 }),
            (format!("--b\r\n{head}A\r\n--b"), MultipartError::Unterminated { index: 1 }),
            (format!("--b\r\n{head}A\r\n--bX\r\n"), MultipartError::AfterBoundary { index: 1 }),
            ("--b\r\nContent-Disposition: form-data".into(), MultipartError::Head { index: 1 }),
            ("--b\r\nno colon here\r\n\r\nA\r\n--b--".into(), MultipartError::HeaderLine { index: 1 }),
            (
                "--b\r\nContent-Disposition: attachment; name=x\r\n\r\nA\r\n--b--".into(),
                MultipartError::NoName { index: 1 },
            ),
            (format!("--b\r\n{head}A\r\n--b\r\n\r\nB\r\n--b--"), MultipartError::NoName { index: 2 }),
        ];
        for (body, error) in cases {
            assert_eq!(parse(body.as_bytes(), "b"), Err(error), "{body:?}");
        }
        let many: String =
            (0..=MAX_PARTS).map(|i| format!("--b\r\n{}A{i}\r\n", head)).collect::<String>() + "--b--";
        assert_eq!(parse(many.as_bytes(), "b"), Err(MultipartError::TooManyParts));
        let long_head = format!("--b\r\nX-Pad: {}\r\n{head}A\r\n--b--", "p".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse(long_head.as_bytes(), "b"), Err(MultipartError::Head { index: 1 }));
    }

    /// Fuzz-like: every prefix, and bodies with bytes flipped, dropped or repeated, parse to
    /// parts or an error, never a panic, and every part is a slice of the body.
    #[test]
    fn damaged_bodies_never_panic() {
        let body = form(&[("rgb", b"\x89PNG\r\n\x1a\nabc"), ("height", b"\r\n\r\n--"), ("x\"y", b"z")]);
        let check = |bytes: &[u8]| {
            if let Ok(parts) = parse(bytes, "XyZ") {
                for p in parts {
                    let range = bytes.as_ptr_range();
                    assert!(range.contains(&p.body.as_ptr()) || p.body.is_empty());
                }
            }
        };
        for n in 0..=body.len() {
            check(&body[..n]);
        }
        // A small deterministic generator (xorshift), so that a failure is replayable.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut damaged = body.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % damaged.len().max(1);
                match next() % 3 {
                    0 => damaged[at] = next() as u8,
                    1 => {
                        damaged.remove(at);
                    }
                    _ => damaged.insert(at, b"\r\n-XyZ"[(next() % 6) as usize]),
                }
                if damaged.is_empty() {
                    break;
                }
            }
            check(&damaged);
        }
    }
}
