//! Issue 13, faults under which `serve` must lose nothing: a model file that turns bad under
//! hot reload (rejected once, not retried every settle period; its repair logged), and a
//! SIGKILL in the middle of a folder backlog (`seq` strictly increasing across restarts,
//! every file with its result). The real binary, real files, real signals.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::*;
use common::*;

fn write_config(dir: &Path, port: u16, source: &str) -> PathBuf {
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "[box]\nid = \"box13\"\nstate_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             [[source]]\nname = \"line1\"\n{source}\n[sinks.jsonl]\npath = \"{}\"\nfsync = \"never\"\n",
            dir.join("state").display(),
            dir.join("results.jsonl").display(),
        ),
    )
    .unwrap();
    config
}

fn reloads(port: u16, result: &str) -> f64 {
    metric(port, None, &format!("edge_kd_model_reloads_total{{source=\"line1\",result=\"{result}\"}}"))
        .unwrap_or(0.0)
}

/// Truncates the served model in place (a copy cut short by a full disk or a killed
/// `cp`), waits several settle periods, then writes the good bytes back.
fn a_model_file_cut_short(pinned: bool, rejected_as: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    let good = std::fs::read(root().join("models/default/student.onnx")).unwrap();
    std::fs::write(&model, &good).unwrap();
    let sha = edge_kd::serve::model_slot::sha256_hex(&good);
    let pin = if pinned { format!("model_sha256 = \"{sha}\"\n") } else { String::new() };
    let port = free_port();
    let source = format!("http = {{}}\nmodel = \"{}\"\n{pin}", model.display());
    let daemon = Daemon::start(&write_config(dir.path(), port, &source), port);
    let png = std::fs::read(samples().join("0002-trouser.png")).unwrap();
    let infer = || http(port, "POST", "/infer", None, &png).unwrap().json();
    assert_eq!(infer()["model_sha256"], sha.as_str());

    let file = std::fs::OpenOptions::new().write(true).open(&model).unwrap();
    file.set_len(good.len() as u64 / 2).unwrap();
    drop(file);
    wait_until("the rejection", Duration::from_secs(20), || reloads(port, rejected_as) >= 1.0);
    // Seven settle periods (400 ms): a reload loop would have tried again in each.
    std::thread::sleep(Duration::from_millis(2800));
    let rejections =
        |log: &str| log.lines().filter(|l| l.contains("the previous model keeps serving")).count();
    assert_eq!(reloads(port, rejected_as), 1.0, "rejected once per change:\n{}", daemon.log_text());
    assert_eq!(rejections(&daemon.log_text()), 1, "one log line:\n{}", daemon.log_text());
    let r = infer();
    assert_eq!((r["label"].as_str(), r["model_sha256"].as_str()), (Some("Trouser"), Some(sha.as_str())));

    std::fs::write(&model, &good).unwrap();
    wait_until("the repair", Duration::from_secs(20), || reloads(port, "restored") == 1.0);
    let log = daemon.log_text();
    assert_eq!(log.matches("the model file is back to the model being served").count(), 1, "{log}");
    assert_eq!((reloads(port, "ok"), reloads(port, rejected_as)), (0.0, 1.0), "{log}");
    assert_eq!(rejections(&log), 1, "{log}");
    assert_eq!(infer()["model_sha256"], sha.as_str());
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn a_truncated_model_file_fails_once_and_its_repair_is_logged() {
    a_model_file_cut_short(false, "failed");
}

#[test]
fn a_truncated_pinned_model_file_is_refused_once_and_its_repair_is_logged() {
    a_model_file_cut_short(true, "refused");
}

fn file_name(line: &serde_json::Value) -> String {
    Path::new(line["file"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned()
}

fn seqs(lines: &[serde_json::Value]) -> Vec<u64> {
    lines.iter().map(|l| l["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {l}"))).collect()
}

#[test]
fn sigkill_mid_backlog_keeps_seq_strictly_increasing_and_every_file_gets_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, done, results) =
        (dir.path().join("in"), dir.path().join("done"), dir.path().join("results.jsonl"));
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::create_dir_all(&done).unwrap();
    let png = std::fs::read(samples().join("0001-pullover.png")).unwrap();
    const FILES: usize = 2000;
    for i in 0..FILES {
        std::fs::write(inbox.join(format!("{i:04}.png")), &png).unwrap();
    }
    let port = free_port();
    let source = format!(
        "workers = 1\nfolder = {{ path = \"{}\", after = \"move\", move_to = \"{}\" }}",
        inbox.display(),
        done.display()
    );
    let config = write_config(dir.path(), port, &source);
    let daemon = Daemon::start(&config, port);
    wait_until("part of the backlog", Duration::from_secs(30), || result_lines(&results).len() >= 20);
    daemon.kill(); // SIGKILL: no flush, no goodbye
    let before = result_lines(&results);
    let (waiting, moved) =
        (std::fs::read_dir(&inbox).unwrap().count(), std::fs::read_dir(&done).unwrap().count());
    assert!(waiting > 0, "the backlog was done before the kill: make it longer");
    assert_eq!(waiting + moved, FILES);
    // Moved only once written: at most the file in flight is written and not yet moved.
    assert!(before.len() == moved || before.len() == moved + 1, "{} lines, {moved} moved", before.len());

    let daemon = Daemon::start(&config, port);
    wait_until("the rest of the backlog", Duration::from_secs(60), || {
        std::fs::read_dir(&done).unwrap().count() == FILES
    });
    assert_eq!(daemon.stop(), 0);
    let lines = result_lines(&results);
    let seq = seqs(&lines);
    assert!(seq.windows(2).all(|w| w[0] < w[1]), "seq strictly increasing across the restart: {seq:?}");
    let mut per_file: BTreeMap<String, usize> = BTreeMap::new();
    for l in &lines {
        assert_eq!(l["label"], "Pullover", "{l}");
        *per_file.entry(file_name(l)).or_default() += 1;
    }
    assert_eq!(per_file.len(), FILES, "every file has its result");
    assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 0);
    // A file whose result was written just before the kill, not yet moved, is moved at the
    // restart rather than decided again (tests/serve_restart.rs has that case on purpose).
    let twice: Vec<&String> = per_file.iter().filter(|(_, n)| **n > 1).map(|(f, _)| f).collect();
    assert!(twice.is_empty(), "decided twice: {twice:?}");

    // A clean stop stores the exact next seq: the next start continues without a gap.
    let last = *seq.last().unwrap();
    let daemon = Daemon::start(&config, port);
    std::fs::write(dir.path().join("late.part"), &png).unwrap();
    std::fs::rename(dir.path().join("late.part"), inbox.join("late.png")).unwrap();
    wait_until("the late file", Duration::from_secs(20), || result_lines(&results).len() == lines.len() + 1);
    assert_eq!(daemon.stop(), 0);
    let late = result_lines(&results).pop().unwrap();
    assert_eq!((file_name(&late), late["seq"].as_u64()), ("late.png".into(), Some(last + 1)));
}
