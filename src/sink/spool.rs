//! The MQTT spool: every result is appended here before it is published, and stays until
//! the broker acknowledged it, so neither a broker outage nor a daemon restart loses one.
//!
//! On disk: segment files `<first seq, 20 digits>.spool` holding lines `topic\tpayload\n`
//! (JSON escapes tabs and newlines, topics are checked to hold none), and `acked`, the
//! first sequence number not yet acknowledged, replaced atomically by rename.
//!
//! Durability follows `sinks.mqtt.fsync`, as for the JSONL file: `always` syncs every
//! append, `interval` syncs an append once `fsync_interval_ms` has passed since the last
//! sync and [`Spool::tick`] syncs what a burst left behind, `never` leaves it to the kernel.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::FsyncPolicy;

/// A segment is closed at this size; fully acknowledged segments are deleted whole.
const SEGMENT_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
#[error("MQTT spool {path}: {message}")]
pub struct SpoolError {
    pub path: PathBuf,
    pub message: String,
}

pub struct SpoolEntry {
    pub seq: u64,
    pub topic: String,
    pub payload: String,
}

pub struct Spool {
    dir: PathBuf,
    fsync: FsyncPolicy,
    fsync_interval: Duration,
    last_sync: Instant,
    /// Appended lines that may still be only in the page cache.
    unsynced: bool,
    /// First seq of each segment, ascending; the last one is appended to.
    segments: Vec<u64>,
    writer: File,
    /// The end of the last whole record in the segment appended to.
    writer_bytes: u64,
    /// Cutting a failed append back failed: done before the next one.
    cut_pending: bool,
    next_seq: u64,
    acked: u64,
    /// Where the last read stopped: (seq of the next line, segment, byte offset), so
    /// reading in order does not rescan segments.
    cursor: Option<(u64, u64, u64)>,
}

impl Spool {
    pub fn open(dir: &Path, fsync: FsyncPolicy, fsync_interval: Duration) -> Result<Spool, SpoolError> {
        let err = |message: String| SpoolError { path: dir.to_owned(), message };
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create: {e}")))?;
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| err(format!("cannot list: {e}")))? {
            let name = entry.map_err(|e| err(e.to_string()))?.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".spool")
                && let Ok(seq) = stem.parse::<u64>()
            {
                segments.push(seq);
            }
        }
        segments.sort_unstable();
        if segments.is_empty() {
            segments.push(0);
        }
        let last = *segments.last().unwrap_or(&0);
        let last_path = segment_path(dir, last);
        let (lines, complete_bytes) = count_complete_lines(&last_path).map_err(&err)?;
        let writer = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&last_path)
            .map_err(|e| err(format!("{}: {e}", last_path.display())))?;
        // A line cut short by a crash was never acknowledged to anyone: drop the fragment.
        let size = writer.metadata().map_err(|e| err(e.to_string()))?.len();
        if size > complete_bytes {
            writer.set_len(complete_bytes).map_err(|e| err(e.to_string()))?;
            tracing::warn!(
                "MQTT spool {}: cut a torn last record of {} bytes (an append that did not finish \
                 before a crash; its result had not been let go and is decided again)",
                last_path.display(),
                size - complete_bytes
            );
        }
        let next_seq = last + lines;
        let acked = match std::fs::read_to_string(dir.join("acked")) {
            // `acked` is not synced under `interval` and `never`: a power cut can leave it
            // empty. Replaying from the oldest segment only repeats messages, which
            // at-least-once delivery allows; refusing to start would stop the line.
            Ok(text) if text.trim().is_empty() => {
                tracing::warn!(
                    "MQTT spool {}: acked is empty (power cut?): replaying from the oldest entry kept",
                    dir.display()
                );
                segments[0]
            }
            Ok(text) => {
                text.trim().parse::<u64>().map_err(|_| err(format!("acked holds {text:?}, not a number")))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => segments[0],
            Err(e) => return Err(err(format!("acked: {e}"))),
        };
        let stored_acked = acked;
        let acked = acked.clamp(segments[0], next_seq);
        let mut spool = Spool {
            dir: dir.to_owned(),
            fsync,
            fsync_interval,
            last_sync: Instant::now(),
            unsynced: false,
            segments,
            writer,
            writer_bytes: complete_bytes,
            cut_pending: false,
            next_seq,
            acked,
            cursor: None,
        };
        spool.writer.seek(SeekFrom::End(0)).map_err(|e| err(e.to_string()))?;
        spool.sync_dir()?;
        if stored_acked > next_seq {
            // `acked` outlived the segment's tail (a power cut under fsync = interval): left
            // as it is, it would mark the entries appended from here on as acknowledged at
            // the next start, and they would never be published.
            spool.store_acked(next_seq)?;
        }
        spool.drop_acked_segments();
        Ok(spool)
    }

    /// The position the next appended line will get (until the box's sequence existed,
    /// this was the results' `seq`).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    pub fn pending(&self) -> u64 {
        self.next_seq - self.acked
    }

    pub fn append(&mut self, topic: &str, payload: &str) -> Result<u64, SpoolError> {
        debug_assert!(!topic.contains(['\t', '\n']) && !payload.contains('\n'));
        if self.writer_bytes >= SEGMENT_BYTES {
            self.roll()?;
        }
        let mut line = Vec::with_capacity(topic.len() + payload.len() + 2);
        line.extend_from_slice(topic.as_bytes());
        line.push(b'\t');
        line.extend_from_slice(payload.as_bytes());
        line.push(b'\n');
        if let Err(e) = self.write_line(&line) {
            // Part of the line may be in the segment (a short write on a full disk), or all of
            // it unsynced: cut it off, so the publisher never reads a torn record and the
            // caller's retry does not spool it twice.
            if let Err(cut) = self.cut_back() {
                tracing::warn!("{}: cannot cut a failed append back yet: {cut}", self.dir.display());
                self.cut_pending = true;
            }
            return Err(e);
        }
        self.writer_bytes += line.len() as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Back to the end of the last whole record. The writer is not in append mode (it is
    /// positioned at open), so it must follow, or the next record would start after a hole.
    fn cut_back(&mut self) -> std::io::Result<()> {
        self.writer.set_len(self.writer_bytes)?;
        self.writer.seek(SeekFrom::Start(self.writer_bytes)).map(drop)
    }

    fn write_line(&mut self, line: &[u8]) -> Result<(), SpoolError> {
        if self.cut_pending {
            self.cut_back().map_err(|e| self.error(format!("cannot cut back: {e}")))?;
            self.cut_pending = false;
        }
        self.writer.write_all(line).map_err(|e| self.error(format!("cannot append: {e}")))?;
        self.unsynced = true;
        match self.fsync {
            FsyncPolicy::Always => self.sync_now(),
            FsyncPolicy::Interval if self.interval_passed() => self.sync_now(),
            _ => Ok(()),
        }
    }

    /// Called when the dispatcher is idle, so that under `interval` the last lines of a
    /// burst reach the disk within the interval instead of waiting for the next append.
    pub fn tick(&mut self) -> Result<(), SpoolError> {
        if self.fsync == FsyncPolicy::Interval && self.unsynced && self.interval_passed() {
            self.sync_now()?;
        }
        Ok(())
    }

    /// Syncs what is not yet on disk, unless the policy is `never` (at shutdown and before a
    /// segment is closed).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.unsynced && self.fsync != FsyncPolicy::Never {
            self.sync_now()?;
        }
        Ok(())
    }

    fn interval_passed(&self) -> bool {
        self.last_sync.elapsed() >= self.fsync_interval
    }

    fn sync_now(&mut self) -> Result<(), SpoolError> {
        self.writer.sync_data().map_err(|e| self.error(format!("fsync: {e}")))?;
        self.last_sync = Instant::now();
        self.unsynced = false;
        Ok(())
    }

    /// A segment's lines survive a power cut only once the directory entry naming the file
    /// does too; syncing the file alone does not promise that.
    fn sync_dir(&self) -> Result<(), SpoolError> {
        if self.fsync != FsyncPolicy::Never {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.error(format!("fsync of the folder: {e}")))?;
        }
        Ok(())
    }

    fn roll(&mut self) -> Result<(), SpoolError> {
        self.sync()?;
        let path = segment_path(&self.dir, self.next_seq);
        self.writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| self.error(format!("{}: {e}", path.display())))?;
        self.segments.push(self.next_seq);
        self.writer_bytes = 0;
        self.sync_dir()
    }

    /// Up to `max` entries from `from` on, in order.
    pub fn read(&mut self, from: u64, max: usize) -> Result<Vec<SpoolEntry>, SpoolError> {
        let from = from.max(self.acked);
        let mut out = Vec::new();
        if from >= self.next_seq || max == 0 {
            return Ok(out);
        }
        let (mut seq, mut segment, mut offset) = match self.cursor {
            Some((s, seg, off)) if s == from => (s, seg, off),
            _ => {
                let segment = *self.segments.iter().rev().find(|&&s| s <= from).unwrap_or(&self.segments[0]);
                (segment, segment, 0)
            }
        };
        while out.len() < max && seq < self.next_seq {
            let path = segment_path(&self.dir, segment);
            let mut file = File::open(&path).map_err(|e| self.error(format!("{}: {e}", path.display())))?;
            file.seek(SeekFrom::Start(offset)).map_err(|e| self.error(e.to_string()))?;
            let mut reader = BufReader::new(file);
            // Bytes: the lines before `from` are only skipped, and damage in one of those (long
            // since acknowledged) must not make the entries after it unreadable.
            let mut line = Vec::new();
            let next_segment = self.segments.iter().copied().find(|&s| s > segment);
            loop {
                if out.len() >= max || seq >= self.next_seq || next_segment.is_some_and(|n| seq >= n) {
                    break;
                }
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .map_err(|e| self.error(format!("{}: {e}", path.display())))?;
                if n == 0 || !line.ends_with(b"\n") {
                    return Err(self.error(format!("{}: ends before entry {seq}", path.display())));
                }
                offset += n as u64;
                if seq >= from {
                    let damaged = || self.error(format!("{}: entry {seq} is damaged", path.display()));
                    let text = std::str::from_utf8(&line[..n - 1]).map_err(|_| damaged())?;
                    let (topic, payload) = text.split_once('\t').ok_or_else(damaged)?;
                    out.push(SpoolEntry { seq, topic: topic.into(), payload: payload.into() });
                }
                seq += 1;
            }
            match next_segment {
                Some(n) if seq >= n => {
                    segment = n;
                    offset = 0;
                }
                _ => break,
            }
        }
        self.cursor = Some((seq, segment, offset));
        Ok(out)
    }

    /// Everything before `upto` reached the broker.
    pub fn ack(&mut self, upto: u64) -> Result<(), SpoolError> {
        let upto = upto.min(self.next_seq);
        if upto <= self.acked {
            return Ok(());
        }
        self.store_acked(upto)?;
        self.acked = upto;
        self.drop_acked_segments();
        Ok(())
    }

    /// Replaces the `acked` file with `upto`.
    fn store_acked(&self, upto: u64) -> Result<(), SpoolError> {
        let tmp = self.dir.join("acked.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(upto.to_string().as_bytes())?;
            if self.fsync == FsyncPolicy::Always {
                f.sync_data()?;
            }
            std::fs::rename(&tmp, self.dir.join("acked"))
        };
        write().map_err(|e| self.error(format!("cannot record acknowledgement: {e}")))
    }

    fn drop_acked_segments(&mut self) {
        while self.segments.len() > 1 && self.segments[1] <= self.acked {
            let path = segment_path(&self.dir, self.segments[0]);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("MQTT spool: cannot delete acknowledged {}: {e}", path.display());
                return;
            }
            self.segments.remove(0);
        }
    }

    fn error(&self, message: String) -> SpoolError {
        SpoolError { path: self.dir.clone(), message }
    }
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.spool"))
}

/// Complete lines in a segment and the bytes they span (a missing file has none).
fn count_complete_lines(path: &Path) -> Result<(u64, u64), String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = bytes[..complete].iter().filter(|&&b| b == b'\n').count() as u64;
    Ok((lines, complete as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::small_disk::{SmallDisk, fill};

    const SECOND: Duration = Duration::from_secs(1);

    fn payloads(entries: &[SpoolEntry]) -> Vec<String> {
        entries.iter().map(|e| e.payload.clone()).collect()
    }

    #[test]
    fn survives_reopen_and_replays_only_what_was_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), FsyncPolicy::Never, SECOND).unwrap();
        for i in 0..5 {
            assert_eq!(spool.append("t/a", &format!("{{\"i\":{i}}}")).unwrap(), i);
        }
        assert_eq!(payloads(&spool.read(0, 2).unwrap()), ["{\"i\":0}", "{\"i\":1}"]);
        spool.ack(2).unwrap();
        drop(spool);

        let mut spool = Spool::open(dir.path(), FsyncPolicy::Never, SECOND).unwrap();
        assert_eq!((spool.acked(), spool.next_seq(), spool.pending()), (2, 5, 3));
        let rest = spool.read(0, 10).unwrap();
        assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(rest[0].topic, "t/a");
        assert_eq!(spool.append("t/a", "x").unwrap(), 5);
    }

    #[test]
    fn a_torn_last_line_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), FsyncPolicy::Never, SECOND).unwrap();
        spool.append("t", "one").unwrap();
        drop(spool);
        let seg = segment_path(dir.path(), 0);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"t\ttw").unwrap();
        let mut spool = Spool::open(dir.path(), FsyncPolicy::Never, SECOND).unwrap();
        assert_eq!(spool.next_seq(), 1);
        spool.append("t", "two").unwrap();
        assert_eq!(payloads(&spool.read(0, 10).unwrap()), ["one", "two"]);
    }

    #[test]
    fn an_acked_file_emptied_by_a_power_cut_replays_instead_of_refusing_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), FsyncPolicy::Interval, SECOND).unwrap();
        for i in 0..3 {
            spool.append("t", &i.to_string()).unwrap();
        }
        spool.ack(2).unwrap();
        drop(spool);
        std::fs::write(dir.path().join("acked"), "").unwrap();
        let mut spool = Spool::open(dir.path(), FsyncPolicy::Interval, SECOND).unwrap();
        assert_eq!(payloads(&spool.read(0, 10).unwrap()), ["0", "1", "2"], "repeats, but loses nothing");

        std::fs::write(dir.path().join("acked"), "two").unwrap();
        let Err(e) = Spool::open(dir.path(), FsyncPolicy::Interval, SECOND) else {
            panic!("garbage accepted")
        };
        assert!(e.to_string().contains("acked holds \"two\", not a number"), "{e}");
    }

    #[test]
    fn segments_roll_and_acknowledged_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), FsyncPolicy::Never, SECOND).unwrap();
        let big = "x".repeat(1 << 20);
        for _ in 0..10 {
            spool.append("t", &big).unwrap();
        }
        let count = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".spool"))
                .count()
        };
        assert!(count() >= 3, "10 MiB must span several 4 MiB segments");
        let all = spool.read(0, 100).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
        spool.ack(10).unwrap();
        assert_eq!(count(), 1, "only the segment being appended to stays");
        drop(spool);
        let spool = Spool::open(dir.path(), FsyncPolicy::Never, SECOND).unwrap();
        assert_eq!((spool.next_seq(), spool.pending()), (10, 0));
    }

    /// Pretends `interval` has passed since the last sync, without sleeping through it.
    fn age_last_sync(spool: &mut Spool, interval: Duration) {
        spool.last_sync =
            Instant::now().checked_sub(interval).expect("the system has been up longer than the interval");
    }

    #[test]
    fn interval_syncs_a_burst_once_the_interval_passed_without_another_append() {
        let dir = tempfile::tempdir().unwrap();
        let minute = Duration::from_secs(60);
        let mut spool = Spool::open(dir.path(), FsyncPolicy::Interval, minute).unwrap();
        spool.append("t", "one").unwrap();
        spool.append("t", "two").unwrap();
        assert!(spool.unsynced, "within the interval an append is not synced");
        spool.tick().unwrap();
        assert!(spool.unsynced, "nor by a tick before the interval is over");

        age_last_sync(&mut spool, minute);
        spool.tick().unwrap();
        assert!(!spool.unsynced, "the idle tick syncs the burst once the interval is over");

        spool.append("t", "three").unwrap();
        assert!(spool.unsynced);
        age_last_sync(&mut spool, minute);
        spool.append("t", "four").unwrap();
        assert!(!spool.unsynced, "an append after the interval syncs itself and what came before");
    }

    #[test]
    fn always_syncs_every_append_and_never_syncs_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut always = Spool::open(&dir.path().join("always"), FsyncPolicy::Always, SECOND).unwrap();
        for i in 0..3 {
            always.append("t", &i.to_string()).unwrap();
            assert!(!always.unsynced, "append {i} under always is on disk when it returns");
        }

        let mut never = Spool::open(&dir.path().join("never"), FsyncPolicy::Never, SECOND).unwrap();
        never.append("t", "one").unwrap();
        age_last_sync(&mut never, SECOND);
        never.tick().unwrap();
        never.append("t", "two").unwrap();
        never.sync().unwrap();
        assert!(never.unsynced, "never leaves every line to the kernel, even at shutdown");
    }

    #[test]
    fn an_append_cut_short_by_a_full_disk_leaves_no_torn_record_and_its_retry_spools_it_once() {
        let disk = match SmallDisk::mount(256 << 10) {
            Ok(disk) => disk,
            Err(why) => return eprintln!("skipped: {why}"),
        };
        let dir = disk.path().join("spool");
        let mut spool = Spool::open(&dir, FsyncPolicy::Always, SECOND).unwrap();
        assert_eq!(spool.append("t/a", "{\"i\":0}").unwrap(), 0);
        let filler = fill(&disk);
        let long = format!("{{\"i\":1,\"pad\":\"{}\"}}", "p".repeat(20_000));
        let err = spool.append("t/a", &long).unwrap_err();
        assert!(err.message.contains("No space left"), "{err}");
        assert_eq!((spool.next_seq(), spool.pending()), (1, 1), "a failed append takes no seq");
        assert_eq!(payloads(&spool.read(0, 10).unwrap()), ["{\"i\":0}"]);
        std::fs::remove_file(&filler).unwrap();
        assert_eq!(spool.append("t/a", &long).unwrap(), 1);
        drop(spool);
        // What a restart reads: both records, whole, once, and nothing between them.
        let segment = std::fs::read_to_string(segment_path(&dir, 0)).unwrap();
        assert_eq!(segment, format!("t/a\t{{\"i\":0}}\nt/a\t{long}\n"));
        let mut spool = Spool::open(&dir, FsyncPolicy::Always, SECOND).unwrap();
        let entries = spool.read(0, 10).unwrap();
        assert_eq!(payloads(&entries), ["{\"i\":0}".to_string(), long]);
        assert!(entries.iter().all(|e| e.topic == "t/a"));
    }
}
