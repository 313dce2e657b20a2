//! At start: the folder files a killed daemon had decided but not yet moved or deleted.
//! A result is written before its file is let go, so a crash between the two leaves a file
//! in the inbox whose result is already in the JSONL file; it is let go now instead of being
//! decided again (which would give it a second line with a new `seq`).

use std::collections::HashMap;
use std::path::Path;
use std::time::UNIX_EPOCH;

use super::config::{AfterProcessing, ServeConfig};
use super::dispatch::let_go;
use crate::sink::jsonl::{WrittenResult, written_results};

/// How far back the JSONL file is read: far more than the results in flight at a crash.
const LOOK_BACK_BYTES: u64 = 4 << 20;

/// Lets go of every folder file that already has its result. A file counts as decided when
/// the latest result for its path (same source; its `file`, or one of a paired frame's
/// `files`) arrived after the file was last modified; a file written since under the same
/// name is decided again.
pub fn let_go_of_decided_files(config: &ServeConfig) {
    let Some(jsonl) = &config.sinks.jsonl else { return };
    let results = match written_results(&jsonl.path, LOOK_BACK_BYTES) {
        Ok(results) => results,
        Err(e) => return tracing::warn!("{}: cannot read it back at start: {e}", jsonl.path.display()),
    };
    let mut latest: HashMap<(&str, &str), &WrittenResult> = HashMap::new();
    for r in &results {
        for path in r.paths() {
            latest.insert((r.source.as_str(), path), r);
        }
    }
    for source in &config.sources {
        let Some(folder) = source.folder.as_ref().filter(|f| f.after != AfterProcessing::Keep) else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(&folder.path) else { continue };
        for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
            let name = path.display().to_string();
            let Some(result) = latest.get(&(source.name.as_str(), name.as_str())) else { continue };
            if modified_ms(&path).is_none_or(|m| m > result.ts_ms) {
                continue;
            }
            let seq = result.seq.map_or(String::new(), |s| format!(" (seq {s})"));
            match let_go(folder, &path) {
                Ok(()) => tracing::info!(
                    "source {}: {}: decided before the restart{seq}; {:?} now, not decided again",
                    source.name,
                    path.display(),
                    folder.after
                ),
                Err(e) => tracing::warn!(
                    "{}: decided before the restart{seq}, but cannot {:?} it: {e}",
                    path.display(),
                    folder.after
                ),
            }
        }
    }
}

fn modified_ms(path: &Path) -> Option<u64> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(modified.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}
