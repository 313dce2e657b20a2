//! A watched folder's files made into frames of a model with several inputs. A file is named
//! `<stem>.<input>.<ext>`: the extension after the last dot, the card input's name between
//! the last two dots, and everything before them the stem (`a.b.rgb.png` is input `rgb` of
//! frame `a.b`). The files of one stem in one folder are one frame. A frame is handed on as
//! soon as every input has its file, or when `wait` has passed since its first file came,
//! with whatever arrived by then (what to do about the rest is the classifier's to say: an
//! optional input is missing, a required one is an error).
//!
//! A file that comes after its frame was handed on starts a new frame of that stem.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the pairing hands on.
#[derive(Debug, PartialEq)]
pub enum Paired {
    /// A frame: its folder and stem (`inbox/x`), and one entry per input in the order the
    /// inputs were given, `None` where no file came.
    Frame { id: PathBuf, files: Vec<(String, Option<PathBuf>)> },
    /// A file that cannot be part of a frame, and why: its name says no input, or its frame
    /// already has a file for that input.
    Unpaired { path: PathBuf, why: String },
}

/// A frame waiting for the rest of its files.
struct Waiting {
    id: PathBuf,
    since: Instant,
    files: Vec<Option<PathBuf>>,
}

pub struct StemPairs {
    inputs: Vec<String>,
    wait: Duration,
    /// By first arrival, oldest first.
    waiting: VecDeque<Waiting>,
}

impl StemPairs {
    /// Pairs files for the card inputs `inputs`, waiting at most `wait` for a frame's files.
    pub fn new(inputs: Vec<String>, wait: Duration) -> Self {
        StemPairs { inputs, wait, waiting: VecDeque::new() }
    }

    /// A file arrived: the frame it completes, or why it is not part of one; `None` while
    /// its frame waits for more.
    pub fn arrived(&mut self, path: PathBuf, now: Instant) -> Option<Paired> {
        let (id, k) = match self.split(&path) {
            Ok(split) => split,
            Err(why) => return Some(Paired::Unpaired { path, why }),
        };
        let at = match self.waiting.iter().position(|w| w.id == id) {
            Some(at) => at,
            None => {
                let files = vec![None; self.inputs.len()];
                self.waiting.push_back(Waiting { id, since: now, files });
                self.waiting.len() - 1
            }
        };
        let frame = &mut self.waiting[at];
        match &frame.files[k] {
            // The same file again (written twice, renamed over): it is already in the frame.
            Some(earlier) if *earlier == path => return None,
            Some(earlier) => {
                let why = format!(
                    "frame {} already has {} for input {:?}; one file per input",
                    frame.id.display(),
                    earlier.display(),
                    self.inputs[k]
                );
                return Some(Paired::Unpaired { path, why });
            }
            None => frame.files[k] = Some(path),
        }
        if frame.files.iter().all(Option::is_some) {
            return self.waiting.remove(at).map(|w| self.hand_on(w));
        }
        None
    }

    /// The frames whose wait is over at `now`, oldest first.
    pub fn due(&mut self, now: Instant) -> Vec<Paired> {
        let mut due = Vec::new();
        while self.waiting.front().is_some_and(|w| now.saturating_duration_since(w.since) >= self.wait) {
            if let Some(w) = self.waiting.pop_front() {
                due.push(self.hand_on(w));
            }
        }
        due
    }

    /// How many frames wait for files.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn hand_on(&self, w: Waiting) -> Paired {
        Paired::Frame { id: w.id, files: self.inputs.iter().cloned().zip(w.files).collect() }
    }

    /// `inbox/x.rgb.png` → (`inbox/x`, the index of input `rgb`), or why the name says no input.
    fn split(&self, path: &Path) -> Result<(PathBuf, usize), String> {
        let expected = || {
            format!(
                "the model has several inputs, so a file is named <stem>.<input>.<ext> with <input> one of {}",
                self.inputs.join(", ")
            )
        };
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Err(format!("a file name that is not UTF-8 names no input; {}", expected()));
        };
        let split = name.rsplit_once('.').and_then(|(rest, _ext)| rest.rsplit_once('.'));
        let Some((stem, input)) = split.filter(|(stem, input)| !stem.is_empty() && !input.is_empty()) else {
            return Err(format!("the name says no input: {}", expected()));
        };
        match self.inputs.iter().position(|i| i == input) {
            Some(k) => Ok((path.with_file_name(stem), k)),
            None => Err(format!("{input:?} is not an input: {}", expected())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs() -> StemPairs {
        StemPairs::new(vec!["rgb".into(), "height".into()], Duration::from_millis(2000))
    }

    fn frame(id: &str, rgb: Option<&str>, height: Option<&str>) -> Paired {
        Paired::Frame {
            id: id.into(),
            files: vec![("rgb".into(), rgb.map(PathBuf::from)), ("height".into(), height.map(PathBuf::from))],
        }
    }

    #[test]
    fn a_frame_is_handed_on_when_its_last_input_arrives_in_any_order() {
        let mut p = pairs();
        let t = Instant::now();
        assert_eq!(p.arrived("in/a.b.height.png".into(), t), None);
        assert_eq!(p.arrived("in/c.rgb.png".into(), t), None);
        assert_eq!(
            p.arrived("in/a.b.rgb.jpg".into(), t),
            Some(frame("in/a.b", Some("in/a.b.rgb.jpg"), Some("in/a.b.height.png")))
        );
        assert_eq!(p.waiting(), 1);
        assert_eq!(p.arrived("other/c.height.png".into(), t), None, "another folder, another frame");
        assert_eq!(p.waiting(), 2);
    }

    #[test]
    fn after_the_wait_a_frame_goes_with_what_it_has_oldest_first() {
        let mut p = pairs();
        let t = Instant::now();
        p.arrived("in/x.rgb.png".into(), t);
        p.arrived("in/y.height.png".into(), t + Duration::from_millis(500));
        assert!(p.due(t + Duration::from_millis(1999)).is_empty());
        assert_eq!(p.due(t + Duration::from_millis(2000)), [frame("in/x", Some("in/x.rgb.png"), None)]);
        assert_eq!(p.due(t + Duration::from_secs(9)), [frame("in/y", None, Some("in/y.height.png"))]);
        assert_eq!(p.waiting(), 0);
        // Too late for its frame: a new one of the same stem.
        assert_eq!(p.arrived("in/x.height.png".into(), t + Duration::from_secs(10)), None);
        assert_eq!(p.waiting(), 1);
    }

    #[test]
    fn names_that_say_no_input_and_second_files_are_unpaired() {
        let mut p = pairs();
        let t = Instant::now();
        let why = |paired: Option<Paired>| match paired {
            Some(Paired::Unpaired { why, .. }) => why,
            other => panic!("{other:?}"),
        };
        assert!(
            why(p.arrived("in/x.png".into(), t))
                .contains("<stem>.<input>.<ext> with <input> one of rgb, height")
        );
        assert!(why(p.arrived("in/x.depth.png".into(), t)).starts_with("\"depth\" is not an input"));
        assert!(why(p.arrived("in/.rgb.png".into(), t)).contains("says no input"), "no stem");
        assert_eq!(p.arrived("in/x.rgb.png".into(), t), None);
        assert_eq!(p.arrived("in/x.rgb.png".into(), t), None, "the same file twice is one file");
        assert!(
            why(p.arrived("in/x.rgb.jpg".into(), t)).contains("already has in/x.rgb.png for input \"rgb\"")
        );
        assert_eq!(p.waiting(), 1);
    }
}
