//! The reader half's data path: the container's pipe spliced into the
//! sandbox file through a staging pipe the supervisor also holds, ending the
//! file at a line end near the rotation size.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use nix::fcntl::SpliceFFlags;

use super::{mono_ms, StreamState};

/// Capacity asked for each staging pipe (and the most moved per splice).
pub const STAGE_BYTES: u64 = 1 << 20;

/// Creates a staging pipe: (read end, write end).
pub fn stage_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = crate::module::pipe(STAGE_BYTES)?;
    Ok((r, w))
}

/// One `splice(2)` of up to `max` bytes from the pipe `from` into `to` (at
/// `offset` if `to` is a file); the bytes moved.
fn splice_raw(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    offset: Option<u64>,
    max: u64,
    nonblock: bool,
) -> std::io::Result<u64> {
    let mut off = offset.map(|o| libc::loff_t::try_from(o).unwrap_or(libc::loff_t::MAX));
    let len = usize::try_from(max).unwrap_or(usize::MAX);
    let mut flags = SpliceFFlags::SPLICE_F_MOVE;
    if nonblock {
        flags |= SpliceFFlags::SPLICE_F_NONBLOCK;
    }
    let n = nix::fcntl::splice(from, None, to, off.as_mut(), len, flags)?;
    Ok(n as u64)
}

/// Result of one splice round.
#[derive(Debug, PartialEq, Eq)]
pub enum Splice {
    /// Moved this many bytes; the pipe may have more.
    Moved(u64),
    /// The pipe is empty for now.
    Empty,
    /// All write ends are closed.
    Eof,
}

impl StreamState {
    /// Moves up to `max` bytes from the pipe into the file.
    ///
    /// `splice(2)` from a pipe into a file holds the pipe's lock while it writes
    /// the file, and a container writing flat out then spins on that lock. So
    /// the bytes first move into a staging pipe (buffer references only: the
    /// container's pipe is locked briefly) and go to the file from there. A
    /// worker killed in between leaves them in the staging pipe, whose read end
    /// the supervisor keeps: the next worker writes them first ([`Self::drain`]).
    pub fn splice(&mut self, max: u64) -> std::io::Result<Splice> {
        if self.staged > 0 {
            self.flush_stage()?;
        }
        let Some(pipe) = &self.pipe else {
            return Ok(Splice::Eof);
        };
        let file = self.file.as_fd();
        let Some((_, stage_w)) = &self.stage else {
            let r = splice_raw(pipe.as_fd(), file, Some(self.file_len), max, true);
            return self.account(r, true);
        };
        let r = splice_raw(
            pipe.as_fd(),
            stage_w.as_fd(),
            None,
            max.min(STAGE_BYTES),
            true,
        );
        let r = self.account(r, false)?;
        if let Splice::Moved(n) = r {
            self.staged = n;
            self.flush_stage()?;
        }
        Ok(r)
    }

    /// Writes the staging pipe's bytes to the file.
    fn flush_stage(&mut self) -> std::io::Result<()> {
        while self.staged > 0 {
            let Some((stage_r, _)) = &self.stage else {
                return Ok(());
            };
            let file = self.file.as_fd();
            match splice_raw(
                stage_r.as_fd(),
                file,
                Some(self.file_len),
                self.staged,
                false,
            ) {
                Ok(0) => break,
                Ok(n) => {
                    self.staged -= n;
                    self.grew(n);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // The rest stays staged for the next call.
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes everything a previous worker left in its staging pipe `old`
    /// (read end; its writer is gone, so it ends) before anything newer.
    pub fn drain(&mut self, old: &OwnedFd) -> std::io::Result<u64> {
        let mut total = 0;
        loop {
            let (from, to) = (old.as_fd(), self.file.as_fd());
            match splice_raw(from, to, Some(self.file_len), STAGE_BYTES, true) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    total += n;
                    self.grew(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(total),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Maps a splice from the container's pipe to a [`Splice`], updating the
    /// file's length when it went straight there.
    fn account(&mut self, r: std::io::Result<u64>, to_file: bool) -> std::io::Result<Splice> {
        match r {
            Ok(0) => Ok(Splice::Eof),
            Ok(n) => {
                if to_file {
                    self.grew(n);
                }
                self.shared.last_data_ms.store(mono_ms(), Ordering::Relaxed);
                Ok(Splice::Moved(n))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Splice::Empty),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(Splice::Moved(0)),
            Err(e) => Err(e),
        }
    }

    /// Records a failed write; the delay doubles up to 30 s. Returns it.
    pub fn stall(&mut self) -> std::time::Duration {
        let d = self
            .stalled
            .map_or(std::time::Duration::from_millis(500), |(_, d)| {
                (d * 2).min(std::time::Duration::from_secs(30))
            });
        self.stalled = Some((std::time::Instant::now() + d, d));
        d
    }

    /// True while a stall's delay runs.
    pub fn stalled_now(&self) -> bool {
        self.stalled
            .is_some_and(|(until, _)| std::time::Instant::now() < until)
    }

    fn grew(&mut self, n: u64) {
        self.file_len += n;
        self.shared
            .written
            .store(self.base + self.file_len, Ordering::Release);
    }

    /// Splices up to `max` bytes, ending the file on a line boundary near the
    /// rotation size `limit` so that it can be rotated there. Far from the
    /// limit this is a plain splice; within one peek window of it, the next
    /// bytes are peeked with `tee(2)` into `scratch` (a pipe of the caller's)
    /// and the splice stops after the last newline that fits (or the first
    /// one, if none does); [`StreamState::rotate_due`] is then set.
    pub fn splice_for_rotation(
        &mut self,
        scratch: &(OwnedFd, OwnedFd),
        peek: &mut [u8],
        max: u64,
        limit: u64,
    ) -> std::io::Result<Splice> {
        let window = peek.len() as u64;
        let room = limit.saturating_sub(self.file_len);
        if room > window {
            return self.splice(max.min(room - window / 2));
        }
        let Some(pipe) = &self.pipe else {
            return Ok(Splice::Eof);
        };
        let want = usize::try_from(max).unwrap_or(usize::MAX).min(peek.len());
        let flags = SpliceFFlags::SPLICE_F_NONBLOCK;
        let n = match nix::fcntl::tee(pipe.as_fd(), scratch.1.as_fd(), want, flags) {
            Ok(n) if n > 0 => n,
            _ => return self.splice(max.min(room.max(1))),
        };
        let mut got = 0;
        while got < n {
            match nix::unistd::read(scratch.0.as_raw_fd(), &mut peek[got..n]) {
                Ok(r) if r > 0 => got += r,
                _ => break,
            }
        }
        let fits = usize::try_from(room).unwrap_or(usize::MAX).min(got);
        let (take, at_line_end) = match memchr::memrchr(b'\n', &peek[..fits]) {
            Some(i) => (i + 1, true),
            None => match memchr::memchr(b'\n', &peek[fits..got]) {
                Some(i) => (fits + i + 1, true),
                // No line end in sight: move what was peeked (a long line is split).
                None => (got, false),
            },
        };
        let take = take.max(1) as u64;
        let r = self.splice(take)?;
        if r == Splice::Moved(take) && at_line_end {
            // The next line would pass the limit (or it is passed already).
            self.rotate_due = take < got as u64 || self.file_len >= limit;
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{open_in, write_all};
    use super::*;

    #[test]
    fn staged_bytes_of_a_killed_worker_go_to_the_file_before_newer_ones() {
        let d = tempfile::tempdir().unwrap();
        let (r, w) = crate::module::pipe(0).unwrap();
        let (mut st, _ps) = open_in(d.path(), r);
        // What a killed worker had moved out of the container's pipe but not
        // written yet: only the supervisor's read end of its staging pipe is left.
        let (old_r, old_w) = stage_pipe().unwrap();
        write_all(&old_w, b"old 1\nold 2\n");
        drop(old_w);
        write_all(&w, b"new 3\n");
        assert_eq!(st.drain(&old_r).unwrap(), 12);
        st.stage = Some(stage_pipe().unwrap());
        assert_eq!(st.splice(1 << 20).unwrap(), Splice::Moved(6));
        assert_eq!(st.splice(1 << 20).unwrap(), Splice::Empty);
        let text = std::fs::read(d.path().join("stdout")).unwrap();
        assert_eq!(text, b"old 1\nold 2\nnew 3\n");
        assert_eq!(st.shared.written.load(Ordering::Acquire), 18);
        drop(w);
        assert_eq!(st.splice(1 << 20).unwrap(), Splice::Eof);
    }

    #[test]
    fn splicing_through_the_staging_pipe_keeps_every_byte_in_order() {
        let d = tempfile::tempdir().unwrap();
        let (r, w) = crate::module::pipe(1 << 20).unwrap();
        let (mut st, _ps) = open_in(d.path(), r);
        st.stage = Some(stage_pipe().unwrap());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = std::thread::spawn(move || write_all(&w, &data));
        let mut moved = 0;
        loop {
            match st.splice(300_000).unwrap() {
                Splice::Moved(n) => moved += n,
                Splice::Empty => std::thread::sleep(std::time::Duration::from_millis(1)),
                Splice::Eof => break,
            }
        }
        writer.join().unwrap();
        assert_eq!(moved, 3_000_000);
        assert_eq!(std::fs::read(d.path().join("stdout")).unwrap(), expected);
    }
}
