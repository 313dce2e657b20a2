//! Samples of a model with several inputs listed in a manifest, the CSV format the trainer
//! reads (`training/edgekd_train/data/manifest.py`): a header `id,label,<input>...`, one row per
//! sample, each cell a path relative to the manifest's folder, an empty cell a missing file.
//! Written without a CSV crate: the format is small, and quoted cells (commas, doubled quotes,
//! line breaks inside quotes) are all the reader has to know beyond splitting on commas.

use std::path::Path;

use thiserror::Error;

use super::files;
use super::pairing::{Member, Sample};

const KEY_COLUMNS: [&str; 2] = ["id", "label"];

/// A manifest that cannot be used; nothing is classified.
#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("{path}: cannot read manifest: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: {problem}")]
    At { path: String, line: usize, problem: String },
    #[error("{path}: {problem}")]
    Whole { path: String, problem: String },
}

/// The manifest's samples for a model whose inputs are `inputs`, each sample's members in the
/// card's order whatever the column order. Every input needs a column and every column after
/// `id,label` must be an input; `label` may be empty (a set not yet labelled).
pub fn read(path: &Path, inputs: &[String]) -> Result<Vec<Sample>, ManifestError> {
    let name = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: name.clone(), source })?;
    let at = |line: usize, problem: String| ManifestError::At { path: name.clone(), line, problem };
    // A manifest saved from a spreadsheet starts with a byte-order mark.
    let rows = parse(text.strip_prefix('\u{feff}').unwrap_or(&text)).map_err(|(line, p)| at(line, p))?;
    let Some((_, header)) = rows.first() else {
        return Err(ManifestError::Whole {
            path: name.clone(),
            problem: format!("empty file (expected a header line id,label,{})", inputs.join(",")),
        });
    };
    let columns = columns(header, inputs).map_err(|p| at(1, p))?;
    let folder = path.parent().unwrap_or(Path::new(""));
    let mut samples: Vec<(usize, Sample)> = Vec::new();
    for (line, row) in &rows[1..] {
        if row.iter().all(|cell| cell.trim().is_empty()) {
            continue; // a blank line, often the last one
        }
        if row.len() != header.len() {
            return Err(at(*line, format!("{} cells, the header has {}", row.len(), header.len())));
        }
        let id = row[0].trim();
        if id.is_empty() {
            return Err(at(*line, "column id is empty".into()));
        }
        if let Some((first, _)) = samples.iter().find(|(_, s)| s.id == id) {
            return Err(at(*line, format!("column id: {id:?} already used on line {first}")));
        }
        let label = row[1].trim();
        let members = inputs
            .iter()
            .zip(&columns)
            .map(|(input, &column)| {
                let cell = row[column].trim();
                let item = (!cell.is_empty()).then(|| files::file_item(&folder.join(cell)));
                Member { input: input.clone(), item }
            })
            .collect();
        let expected = (!label.is_empty()).then(|| label.to_string());
        samples.push((*line, Sample { id: id.to_string(), members, expected }));
    }
    if samples.is_empty() {
        return Err(ManifestError::Whole { path: name, problem: "no samples after the header".into() });
    }
    Ok(samples.into_iter().map(|(_, s)| s).collect())
}

/// For each card input, the index of its column.
fn columns(header: &[String], inputs: &[String]) -> Result<Vec<usize>, String> {
    let names: Vec<&str> = header.iter().map(|h| h.trim()).collect();
    let expected = format!("id,label,{}", inputs.join(","));
    if names.len() < 2 || names[..2] != KEY_COLUMNS {
        return Err(format!("the header must start with id,label (expected {expected})"));
    }
    for (k, column) in names.iter().enumerate().skip(2) {
        if !inputs.iter().any(|i| i == column) {
            return Err(format!(
                "column {column:?} is not an input of the model; its inputs are {} (expected {expected})",
                inputs.join(", ")
            ));
        }
        if names[..k].contains(column) {
            return Err(format!("column {column:?} appears twice"));
        }
    }
    inputs
        .iter()
        .map(|input| {
            names.iter().position(|n| n == input).ok_or_else(|| {
                format!(
                    "no column for input {input:?} (expected {expected}; an empty cell marks a missing file)"
                )
            })
        })
        .collect()
}

/// A row's cells and the line it starts on (1-based).
type Row = (usize, Vec<String>);

/// Rows of cells. A quoted cell may hold commas, doubled quotes and line breaks, so rows are
/// not lines. An error is the line it is on and what is wrong.
fn parse(text: &str) -> Result<Vec<Row>, (usize, String)> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut cell = String::new();
    let mut line = 1;
    let mut row_line = 1;
    let mut quoted = false; // inside a quoted cell
    let mut was_quoted = false; // the current cell was quoted and its quote closed
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    cell.push('"');
                }
                '"' => {
                    quoted = false;
                    was_quoted = true;
                }
                _ => {
                    if c == '\n' {
                        line += 1;
                    }
                    cell.push(c);
                }
            }
            continue;
        }
        match c {
            ',' => {
                row.push(std::mem::take(&mut cell));
                was_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                row.push(std::mem::take(&mut cell));
                rows.push((row_line, std::mem::take(&mut row)));
                was_quoted = false;
                line += 1;
                row_line = line;
            }
            '"' if cell.is_empty() && !was_quoted => quoted = true,
            '"' => {
                return Err((
                    line,
                    "a quote inside an unquoted cell (quote the whole cell and double the quote)".into(),
                ));
            }
            _ if was_quoted => {
                return Err((line, "text after a closing quote (quote the whole cell)".into()));
            }
            _ => cell.push(c),
        }
    }
    if quoted {
        return Err((row_line, "a quoted cell is never closed".into()));
    }
    if !cell.is_empty() || !row.is_empty() || was_quoted {
        row.push(cell);
        rows.push((row_line, row));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Vec<String> {
        vec!["image".into(), "depth".into()]
    }

    fn manifest(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("set.csv");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn cells_split_on_commas_outside_quotes() {
        let rows = parse("id,label\r\n\"a,b\",\"say \"\"hi\"\"\"\n\"two\nlines\",x\n,\n").unwrap();
        assert_eq!(rows[0], (1, vec!["id".to_string(), "label".into()]));
        assert_eq!(rows[1], (2, vec!["a,b".to_string(), "say \"hi\"".into()]));
        assert_eq!(rows[2], (3, vec!["two\nlines".to_string(), "x".into()]));
        assert_eq!(rows[3], (5, vec![String::new(), String::new()]));
        assert_eq!(parse("a,b\"c\n").unwrap_err().0, 1);
        assert_eq!(parse("a\n\"open,b\n").unwrap_err(), (2, "a quoted cell is never closed".into()));
    }

    #[test]
    fn samples_follow_the_card_order_and_empty_cells_are_missing() {
        let (dir, path) = manifest("\u{feff}id,label,depth,image\ns1,near,d/1.npy,i/1.png\ns2,,d/2.npy,\n\n");
        let samples = read(&path, &inputs()).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].members[0].input, "image");
        assert_eq!(samples[0].members[0].item.as_ref().unwrap().path, dir.path().join("i/1.png"));
        assert_eq!(samples[0].expected.as_deref(), Some("near"));
        assert_eq!(samples[1].expected, None);
        assert_eq!(samples[1].missing(), ["image"]);
    }

    #[test]
    fn malformed_manifests_name_the_file_and_line() {
        let cases = [
            ("name,label,image,depth\n", ":1: the header must start with id,label"),
            ("id,label,image,thermal\n", ":1: column \"thermal\" is not an input"),
            ("id,label,image\n", ":1: no column for input \"depth\""),
            ("id,label,image,depth\ns1,x,a.png\n", ":2: 3 cells, the header has 4"),
            (
                "id,label,image,depth\ns1,x,a.png,b.png\ns1,x,c.png,d.png\n",
                ":3: column id: \"s1\" already used on line 2",
            ),
            ("id,label,image,depth\n", ": no samples after the header"),
        ];
        for (text, expected) in cases {
            let (_dir, path) = manifest(text);
            let error = read(&path, &inputs()).unwrap_err().to_string();
            assert!(error.starts_with(&path.display().to_string()), "{error}");
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
