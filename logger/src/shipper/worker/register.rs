//! Registrations: the module connects to the listening socket, the peer is
//! checked, and the container's registration and two pipes are taken (or
//! refused with the reason, which the module logs).

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::socket::{accept4, SockFlag};

use super::attach::AttachError;
use super::Worker;
use crate::proto;
use crate::shipper::registration;

/// Why a registration was refused (sent to the module as `error: <reason>`).
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Waiting for or receiving the message failed.
    #[error("{0}")]
    Receive(#[from] nix::Error),
    /// Nothing arrived in time.
    #[error("no registration received")]
    NotReceived,
    /// The module gave up before the answer.
    #[error("the module stopped waiting (its container writes its sandbox files)")]
    ModuleGone,
    /// The message is not a registration this worker reads.
    #[error("{0}")]
    Decode(#[from] proto::DecodeError),
    /// A key the module does not make.
    #[error("bad container key {0:?}")]
    Key(String),
    /// A relative sandbox path.
    #[error("sandbox {} is not an absolute path", .0.display())]
    RelativeSandbox(PathBuf),
    /// Not exactly the two pipes.
    #[error("expected 2 descriptors")]
    Descriptors,
    /// The key is attached already.
    #[error("container {0} is already registered")]
    Duplicate(String),
    /// The container's state directory could not be created.
    #[error("{}: {source}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Attaching failed.
    #[error(transparent)]
    Attach(#[from] AttachError),
}

/// A container key as the module makes them (a flat, reversible file name).
pub(super) fn valid_key(key: &str) -> bool {
    rein_core::container::ContainerId::from_file_name(key).is_some() && !key.contains('/')
}

impl Worker {
    /// Serves every pending connection on the listening socket.
    pub(super) fn accept(&mut self) {
        while let Ok(fd) = accept4(self.listen.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: a new descriptor from accept4, owned by nobody else.
            let conn = unsafe { OwnedFd::from_raw_fd(fd) };
            // Only root, our own user or `socket_group` may hand us containers.
            if let Err(e) = crate::peercred::check_client(conn.as_fd(), self.cfg.socket_group) {
                self.counters
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!("connection refused: {e}");
                let refused = proto::Reply::Error(e.to_string()).encode();
                let _ = proto::send_with_fds(conn.as_fd(), &refused, &[]);
                continue;
            }
            let reply = match self.register(&conn) {
                Ok(()) => proto::Reply::Ok.encode(),
                Err(e) => {
                    self.counters
                        .registrations_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("registration refused: {e}");
                    proto::Reply::Error(e.to_string()).encode()
                }
            };
            let _ = proto::send_with_fds(conn.as_fd(), &reply, &[]);
        }
    }

    fn register(&mut self, conn: &OwnedFd) -> Result<(), RegisterError> {
        if !proto::wait_readable(conn.as_fd(), Duration::from_millis(500))? {
            return Err(RegisterError::NotReceived);
        }
        let (msg, fds) = proto::recv_with_fds(conn.as_fd())?;
        let reg = match proto::Request::decode(&msg)? {
            proto::Request::Probe => return Ok(()), // a module asking whether we answer
            proto::Request::Register(reg) => *reg,
        };
        if proto::peer_closed(conn.as_fd()) {
            return Err(RegisterError::ModuleGone);
        }
        if !valid_key(&reg.key) {
            return Err(RegisterError::Key(reg.key));
        }
        if !reg.sandbox.is_absolute() {
            return Err(RegisterError::RelativeSandbox(reg.sandbox));
        }
        let fds: [OwnedFd; 2] = fds.try_into().map_err(|_| RegisterError::Descriptors)?;
        if self.keys.contains_key(&reg.key) {
            return Err(RegisterError::Duplicate(reg.key));
        }
        let dir = self.container_dir(&reg.key);
        self.reserve
            .save(&self.cfg.state_dir, 4096, || {
                crate::private::create_dir(&dir)
            })
            .map_err(|source| RegisterError::StateDir {
                path: dir.clone(),
                source,
            })?;
        // A full state directory does not refuse the container: it is saved later.
        let need = 2 * msg.len() as u64;
        let unsaved = match self
            .reserve
            .save(&dir, need, || registration::save(&dir, &msg))
        {
            Ok(()) => None,
            Err(e) => {
                self.state_unsaved(&reg.key, "registration", &e);
                Some(msg)
            }
        };
        self.attach(reg, fds.into(), None, [None, None], unsaved, true)?;
        Ok(())
    }
}
