//! A small tmpfs for the sinks' full-disk tests.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A tmpfs of `bytes`, unmounted when dropped. `mount` says why not where mounting is not
/// allowed (not root, or a container without CAP_SYS_ADMIN): the test is then skipped.
pub struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn mount(bytes: usize) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount -t tmpfs refused: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

/// Fills the disk to its last byte with a file, whose path is returned (remove it to free
/// the space).
pub fn fill(disk: &SmallDisk) -> PathBuf {
    let filler = disk.path().join("filler");
    let mut f = File::create(&filler).unwrap();
    while f.write_all(&[0u8; 4096]).is_ok() {}
    while f.write_all(&[0u8; 1]).is_ok() {}
    filler
}
