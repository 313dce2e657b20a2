//! The box's result sequence: every result line gets the next `seq`, strictly greater than
//! any handed out before on this box, across restarts, SIGKILL and power cuts.
//!
//! On disk: one file holding a high-water mark, a number no seq handed out reaches. Numbers
//! are reserved in blocks, as databases cache sequences: the mark moves `BLOCK` ahead and
//! is synced (file and folder) before the first number of the block is used, so a crash
//! can only skip numbers, never repeat one. A clean stop stores the exact next number, so
//! only a crash leaves a gap.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Numbers reserved per sync of the mark: one fsync per this many results.
const BLOCK: u64 = 1000;

#[derive(Debug, thiserror::Error)]
#[error("seq high-water mark {path}: {message}")]
pub struct SeqError {
    pub path: PathBuf,
    pub message: String,
}

pub struct Sequence {
    path: PathBuf,
    next: u64,
    /// What the file on disk says: no number from here on was handed out.
    reserved: u64,
}

impl Sequence {
    /// Opens (or creates) the mark and reserves the first block. `floor` is a number known
    /// to be unused, from where the numbers came from before this file existed (the MQTT
    /// spool's next position).
    pub fn open(path: &Path, floor: u64) -> Result<Sequence, SeqError> {
        let err = |message: String| SeqError { path: path.to_owned(), message };
        let stored = match std::fs::read_to_string(path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                err(format!(
                    "holds {text:?}, not a number: write into it a number above every seq already used \
                     (the largest seq in the results + 1) and start again"
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(err(format!("cannot read: {e}"))),
        };
        let next = stored.max(floor);
        let mut sequence = Sequence { path: path.to_owned(), next, reserved: next };
        sequence.store(next + BLOCK)?;
        Ok(sequence)
    }

    /// The next number; reserves a block first when the last one is used up. On error the
    /// number is not used and the next call tries again.
    pub fn take(&mut self) -> Result<u64, SeqError> {
        if self.next >= self.reserved {
            self.store(self.next + BLOCK)?;
        }
        let seq = self.next;
        self.next += 1;
        Ok(seq)
    }

    /// At a clean stop: the next start continues right after the last number used.
    pub fn close(mut self) -> Result<(), SeqError> {
        self.store(self.next)
    }

    /// Replaces the file with `mark`, synced, by rename: a crash leaves the old mark or
    /// the new one, never a torn number.
    fn store(&mut self, mark: u64) -> Result<(), SeqError> {
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = File::create(&tmp)?;
            f.write_all(format!("{mark}\n").as_bytes())?;
            f.sync_data()?;
            std::fs::rename(&tmp, &self.path)?;
            let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            File::open(dir)?.sync_all()
        };
        write().map_err(|e| SeqError {
            path: self.path.clone(),
            message: format!("cannot store {mark}: {e}"),
        })?;
        self.reserved = mark;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(path: &Path) -> u64 {
        std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
    }

    #[test]
    fn a_crash_skips_the_rest_of_the_block_and_a_clean_stop_skips_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seq");
        let mut seq = Sequence::open(&path, 0).unwrap();
        assert_eq!((0..3).map(|_| seq.take().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(stored(&path), BLOCK, "reserved before use");
        drop(seq); // a crash: close never runs

        let mut seq = Sequence::open(&path, 0).unwrap();
        assert_eq!(seq.take().unwrap(), BLOCK, "nothing below the mark is handed out again");
        seq.close().unwrap();
        let mut seq = Sequence::open(&path, 0).unwrap();
        assert_eq!(seq.take().unwrap(), BLOCK + 1);
    }

    #[test]
    fn the_mark_moves_ahead_before_a_block_is_used_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seq");
        let mut seq = Sequence::open(&path, 0).unwrap();
        for expected in 0..=BLOCK {
            let n = seq.take().unwrap();
            assert_eq!(n, expected);
            assert!(stored(&path) > n, "seq {n} handed out above the mark {}", stored(&path));
        }
    }

    #[test]
    fn the_floor_and_a_mark_that_is_not_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/seq");
        let mut seq = Sequence::open(&path, 37).unwrap();
        assert_eq!(seq.take().unwrap(), 37, "continues the spool's numbering on the first start");
        drop(seq);

        std::fs::write(&path, "").unwrap();
        let Err(e) = Sequence::open(&path, 0) else { panic!("an empty mark accepted") };
        assert!(e.to_string().contains("not a number"), "{e}");
    }
}
