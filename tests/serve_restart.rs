//! Issue 13, a restart after a crash between a result being written and its folder file
//! being moved: the file is moved at start, not decided again, while a file written since
//! under a name that has an older result, and a new file, are decided.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::daemon::*;
use common::*;

fn set_modified(path: &Path, unix_s: u64) {
    assert!(Command::new("touch").arg("-d").arg(format!("@{unix_s}")).arg(path).status().unwrap().success());
}

#[test]
fn a_file_decided_before_a_crash_is_moved_at_start_not_decided_again() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, done, results) = (dir.path().join("in"), dir.path().join("done"), dir.path().join("r.jsonl"));
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::create_dir_all(&done).unwrap();
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let png = samples().join("0001-pullover.png");
    for name in ["decided.png", "rewritten.png", "new.png"] {
        std::fs::copy(&png, inbox.join(name)).unwrap();
    }
    // decided.png: written a minute ago, its result 30 s ago, then the kill.
    // rewritten.png: its result is two minutes old, older than the file now there.
    set_modified(&inbox.join("decided.png"), now_s - 60);
    set_modified(&inbox.join("rewritten.png"), now_s - 60);
    let line = |file: &str, ago_s: u64, seq: u64| {
        let path = inbox.join(file).display().to_string();
        serde_json::json!({"source": "inbox", "file": path, "ts_ms": (now_s - ago_s) * 1000, "seq": seq, "label": "Pullover"})
    };
    std::fs::write(&results, format!("{}\n{}\n", line("rewritten.png", 120, 6), line("decided.png", 30, 7)))
        .unwrap();
    let port = free_port();
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "[box]\nstate_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[[source]]\nname = \"inbox\"\n\
             folder = {{ path = \"{}\", after = \"move\", move_to = \"{}\" }}\n[sinks.jsonl]\npath = \"{}\"\n",
            dir.path().join("state").display(),
            inbox.display(),
            done.display(),
            results.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, port);
    wait_until("the inbox to empty", Duration::from_secs(20), || {
        std::fs::read_dir(&inbox).unwrap().count() == 0
    });
    std::thread::sleep(Duration::from_millis(500));
    let log = daemon.log_text();
    assert_eq!(daemon.stop(), 0);
    let files: Vec<String> =
        result_lines(&results)[2..].iter().map(|l| l["file"].as_str().unwrap().to_owned()).collect();
    let name = |f: &str| inbox.join(f).display().to_string();
    assert_eq!(files.len(), 2, "decided again: {files:?}");
    assert!(files.contains(&name("rewritten.png")) && files.contains(&name("new.png")), "{files:?}");
    assert_eq!(std::fs::read_dir(&done).unwrap().count(), 3);
    assert!(log.contains("decided.png: decided before the restart (seq 7)"), "{log}");
}
