//! Issue 13, silent skips: entries of a watched folder named like images that are not files
//! to read are reported once each (a log line and a metric) and left where they are,
//! while the files beside them are processed.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use common::daemon::*;
use common::*;

#[test]
fn entries_that_are_not_files_are_reported_once_and_left_while_files_are_processed() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, away, done, jsonl) = (
        dir.path().join("in"),
        dir.path().join("in.away"),
        dir.path().join("done"),
        dir.path().join("r.jsonl"),
    );
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::create_dir_all(&done).unwrap();
    std::fs::copy(samples().join("0000-ankle-boot.png"), inbox.join("early.png")).unwrap();
    // There at start...
    std::fs::create_dir(inbox.join("dir.png")).unwrap();
    symlink("loop.png", inbox.join("loop.png")).unwrap();
    symlink("nowhere.png", inbox.join("dangling.png")).unwrap();
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
            jsonl.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, port);
    let not_files = || metric(port, None, r#"edge_kd_folder_not_files_total{source="inbox"}"#);
    wait_until("the early file and three reports", Duration::from_secs(20), || {
        result_lines(&jsonl).len() == 1 && not_files() == Some(3.0)
    });

    // ... and made while it runs; a symlink to an image is a file that arrived.
    std::fs::create_dir(inbox.join("late.jpg")).unwrap();
    symlink("gone.bmp", inbox.join("late-dangling.bmp")).unwrap();
    symlink(samples().join("0002-trouser.png"), inbox.join("linked.png")).unwrap();
    let tmp = dir.path().join("good.part");
    std::fs::copy(samples().join("0001-pullover.png"), &tmp).unwrap();
    std::fs::rename(&tmp, inbox.join("good.png")).unwrap();
    wait_until("the files and five reports", Duration::from_secs(20), || {
        result_lines(&jsonl).len() == 3 && not_files() == Some(5.0)
    });

    // The folder goes away and comes back: listed again, nothing reported again.
    std::fs::rename(&inbox, &away).unwrap();
    wait_until("the folder to be missed", Duration::from_secs(10), || {
        daemon.log_text().contains("folder is gone")
    });
    std::fs::rename(&away, &inbox).unwrap();
    wait_until("the folder watched again", Duration::from_secs(10), || {
        daemon.log_text().matches("source inbox: watching").count() == 2
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(not_files(), Some(5.0), "each reported once");
    assert_eq!(daemon.stop(), 0);

    let log = std::fs::read_to_string(dir.path().join("serve.0.log")).unwrap();
    for (name, what) in [
        ("dir.png", "a directory"),
        ("loop.png", "a symlink loop"),
        ("dangling.png", "a dangling symlink"),
        ("late.jpg", "a directory"),
        ("late-dangling.bmp", "a dangling symlink"),
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&format!("/{name}: "))).collect();
        assert_eq!(lines.len(), 1, "{name}: one line, not one per scan:\n{log}");
        assert!(lines[0].contains(what) && lines[0].contains("left in place"), "{}", lines[0]);
        assert!(inbox.join(name).symlink_metadata().is_ok(), "{name} left in the inbox");
    }
    let mut processed: Vec<String> = result_lines(&jsonl)
        .iter()
        .map(|l| {
            assert!(l["label"].is_string(), "a real result: {l}");
            Path::new(l["file"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    processed.sort();
    assert_eq!(processed, ["early.png", "good.png", "linked.png"]);
    assert_eq!(std::fs::read_dir(&done).unwrap().count(), 3);
}
