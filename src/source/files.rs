//! Where frames come from. For `run`: the files and folders named on the command line,
//! expanded in a stable order. (Cameras, watched folders and uploads join in `serve`.)

use std::path::{Path, PathBuf};

use crate::preprocess::decode::is_image_path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// An image file, decoded and preprocessed as the card says.
    Image,
    /// A `.npy` float32 tensor fed to the model as it is.
    Tensor,
}

/// One input to process, or the reason it cannot be.
#[derive(Debug, Clone, PartialEq)]
pub struct InputItem {
    pub path: PathBuf,
    pub kind: Result<InputKind, String>,
}

/// Expands files and folders. Folders are walked recursively in name order, hidden
/// entries skipped; a file in a folder that is not an image is reported, not dropped.
pub fn expand(paths: &[PathBuf]) -> Vec<InputItem> {
    let mut items = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Err(e) => items.push(InputItem { path: path.clone(), kind: Err(io_message(&e)) }),
            Ok(m) if m.is_dir() => {
                let before = items.len();
                walk(path, &mut items);
                if items.len() == before {
                    items.push(InputItem { path: path.clone(), kind: Err("folder holds no files".into()) });
                }
            }
            Ok(_) => items.push(InputItem { path: path.clone(), kind: Ok(kind_of(path)) }),
        }
    }
    items
}

/// One file named directly (a `--input` file, a manifest cell): a path that cannot be read,
/// or is a folder, is that input's error rather than a sample of its own.
pub fn file_item(path: &Path) -> InputItem {
    let kind = match std::fs::metadata(path) {
        Err(e) => Err(io_message(&e)),
        Ok(m) if m.is_dir() => Err("a folder, where a file was expected".into()),
        Ok(_) => Ok(kind_of(path)),
    };
    InputItem { path: path.to_owned(), kind }
}

fn kind_of(path: &Path) -> InputKind {
    let npy = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    if npy { InputKind::Tensor } else { InputKind::Image }
}

fn walk(dir: &Path, items: &mut Vec<InputItem>) {
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            items.push(InputItem { path: dir.to_owned(), kind: Err(io_message(&e)) });
            return;
        }
    };
    entries.sort();
    for path in entries {
        let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, items);
        } else if is_image_path(&path) || kind_of(&path) == InputKind::Tensor {
            items.push(InputItem { kind: Ok(kind_of(&path)), path });
        } else {
            items.push(InputItem {
                path,
                kind: Err("not an image file (expected .png, .jpg, .jpeg, .bmp or .npy)".into()),
            });
        }
    }
}

fn io_message(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or folder".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_expand_sorted_and_report_strays() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        for f in ["b.png", "a.JPG", "sub/c.bmp", "notes.txt", ".hidden.png", "x.npy"] {
            std::fs::write(d.join(f), b"").unwrap();
        }
        let items = expand(&[d.to_owned(), d.join("missing.png")]);
        let names: Vec<String> =
            items.iter().map(|i| i.path.strip_prefix(d).unwrap_or(&i.path).display().to_string()).collect();
        assert_eq!(names[..5], ["a.JPG", "b.png", "notes.txt", "sub/c.bmp", "x.npy"]);
        assert!(items[2].kind.as_ref().unwrap_err().contains("not an image"));
        assert_eq!(items[4].kind, Ok(InputKind::Tensor));
        assert_eq!(items[5].kind, Err("no such file or folder".into()));
    }
}
