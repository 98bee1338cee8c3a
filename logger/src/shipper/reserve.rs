//! Space set aside in the state directory (`state_dir/reserve`, a file of
//! allocated blocks) for the few KiB that keep a container recoverable: its
//! registration, their copy and its first checkpoint. When the file system is
//! full (the disk buffer filled it during a long sink outage, say), such a
//! save takes its room from the reserve, so that a worker restarted meanwhile
//! still knows every container; the reserve is topped up once space returns.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Bytes released from the reserve per retry beyond what a save needs
/// (file system blocks, the temporary file of an atomic write).
const SLACK: u64 = 64 * 1024;

/// The reserve file (none when `state_reserve_bytes` is 0).
#[derive(Debug)]
pub struct Reserve {
    file: Option<File>,
    target: u64,
    /// Its file system: room given back elsewhere would not help a save.
    dev: u64,
}

fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

impl Reserve {
    /// Opens (creating) `state_dir/reserve` and allocates it up to `target` bytes.
    pub fn open(state_dir: &Path, target: u64) -> Reserve {
        let file = (target > 0)
            .then(|| crate::private::open_rw(&state_dir.join("reserve")))
            .and_then(|r| {
                r.map_err(|e| tracing::warn!("state reserve: {e}; saved without one"))
                    .ok()
            });
        let dev = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| std::os::unix::fs::MetadataExt::dev(&m));
        let r = Reserve { file, target, dev };
        r.top_up();
        r
    }

    fn len(&self) -> u64 {
        self.file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len())
    }

    /// Allocates the reserve back to its size if it was used (no effect
    /// while the file system is full).
    pub fn top_up(&self) {
        let Some(f) = &self.file else { return };
        if self.len() >= self.target {
            return;
        }
        let len = libc::off_t::try_from(self.target).unwrap_or(libc::off_t::MAX);
        // A full file system refuses it: tried again at the next tick.
        let _ = nix::fcntl::fallocate(f.as_raw_fd(), nix::fcntl::FallocateFlags::empty(), 0, len);
    }

    /// Gives `bytes` of the reserve back to the file system; false if it is empty.
    fn release(&self, bytes: u64) -> bool {
        let Some(f) = &self.file else { return false };
        let len = self.len();
        len > 0 && f.set_len(len.saturating_sub(bytes)).is_ok()
    }

    /// Runs `save` (which writes about `need` bytes in the directory `dir`);
    /// while it fails for a full file system, takes room from the reserve (if
    /// `dir` is on the reserve's file system) and runs it again.
    pub fn save(
        &self,
        dir: &Path,
        need: u64,
        mut save: impl FnMut() -> io::Result<()>,
    ) -> io::Result<()> {
        let same_fs = std::fs::metadata(dir)
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::dev(&m) == self.dev);
        loop {
            match save() {
                Err(e) if is_full(&e) && same_fs && self.release(need + SLACK) => {
                    tracing::warn!("state directory full: {need} bytes saved from its reserve");
                }
                r => return r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_save_takes_room_from_the_reserve_until_it_is_empty() {
        let d = tempfile::tempdir().unwrap();
        let r = Reserve::open(d.path(), 200 * 1024);
        assert_eq!(r.len(), 200 * 1024);
        let mut tries = 0;
        let full = || io::Error::from_raw_os_error(libc::ENOSPC);
        // Succeeds at the second try: one release.
        r.save(d.path(), 1000, || {
            tries += 1;
            if tries < 2 {
                Err(full())
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(r.len(), 200 * 1024 - 1000 - SLACK);
        // Never succeeds: the reserve runs out and the error comes back.
        assert!(r.save(d.path(), 1000, || Err(full())).is_err());
        assert_eq!(r.len(), 0);
        // Other errors are not retried.
        let mut n = 0;
        assert!(r
            .save(d.path(), 1, || {
                n += 1;
                Err(io::Error::from_raw_os_error(libc::EIO))
            })
            .is_err());
        assert_eq!(n, 1);
        r.top_up();
        assert_eq!(r.len(), 200 * 1024);
        // Room on another file system would not help: not given back.
        assert!(r.save(Path::new("/proc"), 1, || Err(full())).is_err());
        assert_eq!(r.len(), 200 * 1024);
        assert!(Reserve::open(d.path(), 0).file.is_none());
    }
}
