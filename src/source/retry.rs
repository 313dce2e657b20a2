//! Telling a fault of the machine from a fault of the input. Running out of descriptors,
//! memory or disk, or an I/O error, says nothing about the file being read: its input is
//! retried with back-off, not given an error result and moved on.

use std::io;
use std::time::Duration;

/// True for errors that may pass with time: the input is not at fault.
pub fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::EIO
                | libc::EAGAIN
                | libc::ENOSPC
                | libc::ENOMEM
                | libc::ENOBUFS
                | libc::EINTR
                | libc::ESTALE
                | libc::ETIMEDOUT
        )
    )
}

/// Waits between retries: from 100 ms, doubling, to at most 5 s, so that a short fault
/// costs little delay and a long one little work.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// The wait before the next try.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_of_the_machine_are_transient_faults_of_the_file_are_not() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::EIO, libc::EAGAIN, libc::ENOSPC] {
            assert!(is_transient(&io::Error::from_raw_os_error(errno)), "errno {errno}");
        }
        for errno in [libc::ENOENT, libc::EACCES, libc::EISDIR, libc::ELOOP, libc::EINVAL] {
            assert!(!is_transient(&io::Error::from_raw_os_error(errno)), "errno {errno}");
        }
        assert!(!is_transient(&io::Error::new(io::ErrorKind::InvalidData, "corrupt")));
    }

    #[test]
    fn the_back_off_doubles_up_to_its_cap() {
        let mut backoff = Backoff::new();
        let waits: Vec<u64> = (0..8).map(|_| backoff.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }
}
