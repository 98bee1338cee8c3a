//! The reader's epoll set: level-triggered readability of the listening
//! socket, the supervisor channel and each armed container pipe, each with
//! a token (a pipe's is `container id * 2 + stream index`).

use std::os::fd::AsFd;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// Token of the listening socket.
pub(super) const LISTEN: u64 = u64::MAX;
/// Token of the supervisor channel.
pub(super) const CONTROL: u64 = u64::MAX - 1;

/// Token of stream `idx` of container `id`.
pub(super) fn pipe_token(id: u64, idx: usize) -> u64 {
    id * 2 + idx as u64
}

/// Container id and stream index of a pipe token.
pub(super) fn pipe_of(token: u64) -> (u64, usize) {
    (token / 2, usize::from(token % 2 == 1))
}

/// An epoll instance watching for input.
#[derive(Debug)]
pub(super) struct Poller(Epoll);

impl Poller {
    pub(super) fn new() -> nix::Result<Poller> {
        Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map(Poller)
    }

    /// Watches `fd` for input, reported with `token`.
    pub(super) fn add(&self, fd: impl AsFd, token: u64) -> nix::Result<()> {
        self.0.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))
    }

    /// Stops watching `fd`.
    pub(super) fn remove(&self, fd: impl AsFd) -> nix::Result<()> {
        self.0.delete(fd)
    }

    /// Waits up to `timeout_ms` for input; the tokens ready go to `tokens`.
    /// An interrupted wait returns none.
    pub(super) fn wait(
        &self,
        events: &mut [EpollEvent],
        timeout_ms: u16,
        tokens: &mut Vec<u64>,
    ) -> nix::Result<()> {
        tokens.clear();
        match self.0.wait(events, EpollTimeout::from(timeout_ms)) {
            Ok(n) => {
                tokens.extend(events.iter().take(n).map(EpollEvent::data));
                Ok(())
            }
            Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_tokens_name_the_container_and_stream_and_never_the_fixed_ones() {
        for (id, idx) in [(0, 0), (0, 1), (7, 1), (1 << 40, 0)] {
            let t = pipe_token(id, idx);
            assert_eq!(pipe_of(t), (id, idx));
            assert!(t != LISTEN && t != CONTROL);
        }
    }

    #[test]
    fn a_readable_pipe_is_reported_with_its_token_until_removed() {
        let (r, w) = crate::module::pipe(0).unwrap();
        let p = Poller::new().unwrap();
        p.add(&r, 5).unwrap();
        let mut events = vec![EpollEvent::empty(); 4];
        let mut tokens = Vec::new();
        p.wait(&mut events, 0, &mut tokens).unwrap();
        assert!(tokens.is_empty());
        nix::unistd::write(&w, b"x").unwrap();
        p.wait(&mut events, 1000, &mut tokens).unwrap();
        assert_eq!(tokens, vec![5]);
        p.remove(&r).unwrap();
        p.wait(&mut events, 0, &mut tokens).unwrap();
        assert!(tokens.is_empty());
    }
}
