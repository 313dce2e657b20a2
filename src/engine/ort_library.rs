//! Finding the ONNX Runtime shared library. Nothing links it at build time, so every
//! edge-kd build can use it where it is installed; this is where we look, in order.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the library was found and why we looked there.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub path: PathBuf,
    pub how: String,
}

/// What was searched when nothing was found, for the error and for `doctor`.
#[derive(Debug, Clone)]
pub struct NotFound {
    pub tried: Vec<String>,
}

impl NotFound {
    pub fn advice() -> &'static str {
        "install it with `pip install onnxruntime` (any version from 1.17; the wheel ships \
         libonnxruntime.so), then either run edge-kd from that Python environment or point \
         ORT_DYLIB_PATH (or --ort-lib) at the file: \
         ORT_DYLIB_PATH=$(python3 -c \"import onnxruntime, pathlib; print(next(pathlib.Path(onnxruntime.__file__).parent.glob('capi/libonnxruntime.so*')))\"); \
         or use --engine tract"
    }
}

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ONNX Runtime library not found (looked at: {}); {}", self.tried.join("; "), Self::advice())
    }
}

/// Searches, in order: the configured path (`--ort-lib`), `ORT_DYLIB_PATH`, the active
/// Python virtual environment, the usual site-packages folders, and finally asks the
/// Python interpreter (`EDGE_KD_PYTHON`, else `python3`) where its `onnxruntime` is.
pub fn locate(configured: Option<&Path>) -> Result<Located, NotFound> {
    // A path the user chose is final: falling back to another library would hide the mistake.
    if let Some(path) = configured {
        return explicit(path, "--ort-lib");
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return explicit(Path::new(&p), "ORT_DYLIB_PATH");
    }
    let mut tried = vec!["ORT_DYLIB_PATH (not set)".to_string()];
    let mut prefixes: Vec<(PathBuf, &str)> = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        prefixes.push((PathBuf::from(venv), "the active virtual environment"));
    }
    if let Ok(exe) = std::env::current_exe() {
        // A binary installed into a venv's bin/ (or next to one) finds that venv.
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            prefixes.push((prefix.to_owned(), "the environment edge-kd is installed in"));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        prefixes.push((Path::new(&home).join(".local"), "the user's pip packages"));
    }
    prefixes.push(("/usr/local".into(), "system pip packages"));
    prefixes.push(("/usr".into(), "system Python packages"));
    for (prefix, what) in &prefixes {
        if let Some(path) = scan_prefix(prefix) {
            return Ok(Located { path, how: format!("onnxruntime wheel in {what} ({})", prefix.display()) });
        }
        tried.push(format!("{}/lib/python3*/site-packages", prefix.display()));
    }
    let python = std::env::var("EDGE_KD_PYTHON").unwrap_or_else(|_| "python3".into());
    match ask_python(&python) {
        Some(path) => return Ok(Located { path, how: format!("onnxruntime module of {python}") }),
        None => tried.push(format!("`{python} -c 'import onnxruntime'`")),
    }
    Err(NotFound { tried })
}

fn explicit(path: &Path, how: &str) -> Result<Located, NotFound> {
    if path.is_file() {
        Ok(Located { path: path.to_owned(), how: how.into() })
    } else {
        Err(NotFound { tried: vec![format!("{how}={} (no such file)", path.display())] })
    }
}

fn scan_prefix(prefix: &Path) -> Option<PathBuf> {
    let lib = prefix.join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python3")))
        .collect();
    pythons.sort();
    pythons.iter().rev().find_map(|py| {
        ["site-packages", "dist-packages"]
            .iter()
            .find_map(|sp| library_in(&py.join(sp).join("onnxruntime").join("capi")))
    })
}

/// The `libonnxruntime.so.X.Y.Z` in an onnxruntime package's `capi` folder.
pub fn library_in(capi: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(capi)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libonnxruntime.so") || n == "libonnxruntime.dylib" || n == "onnxruntime.dll"
            })
        })
        .collect();
    found.sort();
    found.pop()
}

fn ask_python(python: &str) -> Option<PathBuf> {
    let output = Command::new(python)
        .args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = String::from_utf8(output.stdout).ok()?;
    library_in(&Path::new(dir.trim()).join("capi"))
}

/// The version in a library file name such as `libonnxruntime.so.1.32.0`.
pub fn version_from_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let version = name.strip_prefix("libonnxruntime.so.")?;
    (!version.is_empty()).then(|| version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_versioned_library_in_capi() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["libonnxruntime_providers_shared.so", "libonnxruntime.so.1.32.0", "__init__.py"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let found = library_in(dir.path()).unwrap();
        assert_eq!(found.file_name().unwrap(), "libonnxruntime.so.1.32.0");
        assert_eq!(version_from_name(&found).as_deref(), Some("1.32.0"));
    }

    #[test]
    fn a_configured_path_is_final() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libonnxruntime.so.1.20.1");
        std::fs::write(&lib, b"").unwrap();
        assert_eq!(locate(Some(&lib)).unwrap(), Located { path: lib, how: "--ort-lib".into() });
        let err = locate(Some(&dir.path().join("missing.so"))).unwrap_err();
        assert_eq!(err.tried.len(), 1);
        assert!(err.to_string().contains("missing.so (no such file)"), "{err}");
    }
}
