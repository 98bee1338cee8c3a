//! The modules' socket and the state directory: the socket is bound 0600 in
//! a directory no other user can write, then opened to `socket_group`; the
//! state directory is made private.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{bind, connect, listen, Backlog, UnixAddr};
use nix::sys::stat::{umask, Mode};

use super::SupervisorError;
use crate::proto;

/// The socket's directory must not let another user replace the socket
/// (write access for group or others): refuse to start otherwise. A missing
/// directory is created 0755 (the socket's own mode is what guards it; a
/// `socket_group` member must be able to reach it).
fn check_socket_dir(dir: &Path) -> Result<(), SupervisorError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let io = |e| SupervisorError::io(dir.display(), e);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io)?;
    let m = std::fs::metadata(dir).map_err(io)?;
    let me = nix::unistd::geteuid().as_raw();
    if m.mode() & 0o022 != 0 || (m.uid() != 0 && m.uid() != me) {
        return Err(SupervisorError::SocketDirOpen {
            dir: dir.to_path_buf(),
            mode: m.mode() & 0o7777,
            owner: m.uid(),
        });
    }
    Ok(())
}

/// Gives the socket its access: 0600 (root, or the shipper's own user,
/// only) or, with `socket_group`, 0660 and that group. Only ever widens a
/// socket bound 0600, so there is no moment when it is open to others.
pub fn set_socket_access(path: &Path, group: Option<u32>) -> Result<(), SupervisorError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match group {
        Some(gid) => {
            nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
                SupervisorError::sys(format!("chown {} to group {gid}", path.display()), e)
            })?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| SupervisorError::io(format!("chmod {}", path.display()), e))
}

/// Binds and listens on the modules' socket. The socket file is created
/// with mode 0600 (umask 0177 around `bind`), then given its group.
pub(super) fn bind_socket(path: &Path, group: Option<u32>) -> Result<OwnedFd, SupervisorError> {
    if let Some(d) = path.parent() {
        check_socket_dir(d)?;
    }
    let addr = UnixAddr::new(path).map_err(|e| SupervisorError::sys(path.display(), e))?;
    if path.exists() {
        if socket_is_served(path) {
            return Err(SupervisorError::Served(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let s = proto::seqpacket_socket().map_err(|e| SupervisorError::sys("socket", e))?;
    // The supervisor has a single thread at this point, so nothing else is
    // created under this umask.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = bind(s.as_raw_fd(), &addr);
    umask(old);
    bound.map_err(|e| SupervisorError::sys(format!("bind {}", path.display()), e))?;
    set_socket_access(path, group)?;
    listen(&s, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))
        .map_err(|e| SupervisorError::sys("listen", e))?;
    Ok(s)
}

/// Whether a process accepts connections on `path` (another supervisor, or
/// the orphaned worker of one that died).
pub(super) fn socket_is_served(path: &Path) -> bool {
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    proto::seqpacket_socket().is_ok_and(|probe| connect(probe.as_raw_fd(), &addr).is_ok())
}

/// Makes the state directory private (0700, files 0600), tightening what an
/// older version left with the default umask.
pub(super) fn secure_state_dir(dir: &Path) -> Result<(), SupervisorError> {
    let n = crate::private::tighten_tree(dir).map_err(|e| SupervisorError::io(dir.display(), e))?;
    if n > 0 {
        tracing::info!(
            state_dir = %dir.display(),
            changed = n,
            "state directory made private (0700 directories, 0600 files)"
        );
    }
    Ok(())
}
