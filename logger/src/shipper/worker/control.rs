//! The worker's side of the supervisor channel: the containers it takes back
//! at start, the descriptors it gives the supervisor to hold, and the
//! containers whose descriptors the supervisor may close.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::proto::{self, Control, DecodeError};
use crate::shipper::stream::{self, StreamState};

/// One message of the supervisor's container list at start.
#[derive(Debug)]
pub(super) enum Adoption {
    /// The list is complete.
    Done,
    /// A container and the descriptors the supervisor holds for it.
    Container { key: String, fds: Vec<OwnedFd> },
    /// Something else (skipped).
    Other,
}

/// Why the container list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing arrived in time.
    #[error("the supervisor sent no container list")]
    NoList,
    /// The channel failed.
    #[error("control: {0}")]
    Channel(#[from] nix::Error),
}

/// Waits for the next message of the container list (10 s at most).
pub(super) fn next_adoption(control: &OwnedFd) -> Result<Adoption, ControlError> {
    if !proto::wait_readable(control.as_fd(), Duration::from_secs(10))? {
        return Err(ControlError::NoList);
    }
    let (msg, fds) = proto::recv_with_fds(control.as_fd())?;
    Ok(match Control::decode(&msg) {
        Ok(Control::Done) | Err(DecodeError::Empty) => Adoption::Done,
        Ok(Control::Adopt(key)) => Adoption::Container { key, fds },
        other => {
            tracing::warn!("control message ignored while adopting: {other:?}");
            Adoption::Other
        }
    })
}

/// True when the supervisor closed the channel (it died); anything else it
/// sends after the start is ignored.
pub(super) fn supervisor_gone(control: &OwnedFd) -> bool {
    matches!(proto::recv_with_fds(control.as_fd()), Ok((m, _)) if m.is_empty())
}

/// Gives the supervisor duplicates of both pipes and of new staging pipes
/// (created here), so that neither dies with this process. Without a
/// staging pipe for both streams, the streams splice straight into the file.
pub(super) fn hand_to_supervisor(control: &OwnedFd, key: &str, streams: &mut [StreamState]) {
    let stages: Vec<_> = streams.iter().map(|_| stream::stage_pipe()).collect();
    let mut fds = pipe_fds(streams);
    if stages.iter().all(Result::is_ok) {
        for (st, stage) in streams.iter_mut().zip(stages) {
            st.stage = stage.ok();
        }
        fds.extend(
            streams
                .iter()
                .filter_map(|s| s.stage.as_ref().map(|(r, _)| r.as_raw_fd())),
        );
    } else {
        tracing::warn!(
            container = key,
            "no staging pipes: splicing straight into the files"
        );
    }
    send_add(control, key, &fds);
}

/// The container's pipes still open.
pub(super) fn pipe_fds(streams: &[StreamState]) -> Vec<RawFd> {
    streams
        .iter()
        .filter_map(|s| s.pipe.as_ref().map(AsRawFd::as_raw_fd))
        .collect()
}

/// Tells the supervisor to hold `fds` for container `key` (replacing what it held).
pub(super) fn send_add(control: &OwnedFd, key: &str, fds: &[RawFd]) {
    let hold = Control::Hold(key.to_string()).encode();
    if let Err(e) = proto::send_with_fds(control.as_fd(), &hold, fds) {
        tracing::error!(
            "supervisor unreachable ({e}): a restart of this worker would close container {key}"
        );
    }
}

/// Tells the supervisor to close what it holds for container `key`.
pub(super) fn send_del(control: &OwnedFd, key: &str) {
    let release = Control::Release(key.to_string()).encode();
    let _ = proto::send_with_fds(control.as_fd(), &release, &[]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    fn channel() -> (OwnedFd, OwnedFd) {
        let flags = SockFlag::SOCK_CLOEXEC;
        socketpair(AddressFamily::Unix, SockType::SeqPacket, None, flags).unwrap()
    }

    #[test]
    fn the_container_list_is_read_until_done_and_strangers_are_skipped() {
        let (worker, supervisor) = channel();
        let (r, w) = crate::module::pipe(0).unwrap();
        let fds = [r.as_raw_fd(), w.as_raw_fd()];
        let send = |m: &[u8], f: &[RawFd]| proto::send_with_fds(supervisor.as_fd(), m, f).unwrap();
        send(b"adopt\nabc", &fds);
        send(b"something else", &[]);
        send(b"done", &[]);
        match next_adoption(&worker).unwrap() {
            Adoption::Container { key, fds } => {
                assert_eq!(key, "abc");
                assert_eq!(fds.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(next_adoption(&worker).unwrap(), Adoption::Other));
        assert!(matches!(next_adoption(&worker).unwrap(), Adoption::Done));
    }

    #[test]
    fn held_descriptors_and_releases_reach_the_supervisor_and_eof_means_it_is_gone() {
        let (worker, supervisor) = channel();
        let (r, _w) = crate::module::pipe(0).unwrap();
        send_add(&worker, "abc", &[r.as_raw_fd()]);
        send_del(&worker, "abc");
        let (m, fds) = proto::recv_with_fds(supervisor.as_fd()).unwrap();
        assert_eq!((m.as_slice(), fds.len()), (&b"add\nabc"[..], 1));
        let (m, fds) = proto::recv_with_fds(supervisor.as_fd()).unwrap();
        assert_eq!((m.as_slice(), fds.len()), (&b"del\nabc"[..], 0));
        proto::send_with_fds(supervisor.as_fd(), b"later talk", &[]).unwrap();
        assert!(!supervisor_gone(&worker), "a message is not an EOF");
        drop(supervisor);
        assert!(supervisor_gone(&worker));
    }
}
