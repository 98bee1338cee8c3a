//! The supervisor: binds the socket, holds a duplicate of every container
//! pipe's read end, and (re)starts the worker. It does nothing else, so it
//! has nothing to fail on; while a worker restarts, containers keep writing
//! into their pipe buffers (1 MiB each by default) and then block: they never
//! get EPIPE. SIGHUP restarts the worker from the binary on disk (upgrade).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    bind, listen, socket, socketpair, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};

use super::ShipperConfig;
use crate::proto;

static STOP: AtomicBool = AtomicBool::new(false);
static RESTART: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGHUP {
        RESTART.store(true, Ordering::Relaxed);
    } else {
        STOP.store(true, Ordering::Relaxed);
    }
}

fn set_cloexec(fd: &OwnedFd, on: bool) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFD,
            if on { libc::FD_CLOEXEC } else { 0 },
        )
    };
}

/// Raises the soft descriptor limit to the hard one (2 pipes per container).
pub fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn bind_socket(path: &Path) -> Result<OwnedFd, String> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let addr = UnixAddr::new(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if path.exists() {
        let probe = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| e.to_string())?;
        if nix::sys::socket::connect(probe.as_raw_fd(), &addr).is_ok() {
            return Err(format!("{}: another shipper is listening", path.display()));
        }
        let _ = std::fs::remove_file(path);
    }
    let s = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| e.to_string())?;
    bind(s.as_raw_fd(), &addr).map_err(|e| format!("bind {}: {e}", path.display()))?;
    listen(&s, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))
        .map_err(|e| format!("listen: {e}"))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(s)
}

struct WorkerProc {
    child: Child,
    control: OwnedFd,
    started: Instant,
    open: bool,
}

fn spawn(
    exe: &Path,
    cfg_path: &Path,
    listen: &OwnedFd,
    state_dir: &Path,
) -> Result<WorkerProc, String> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("socketpair: {e}"))?;
    set_cloexec(&theirs, false);
    set_cloexec(listen, false);
    let child = Command::new(exe)
        .arg("worker")
        .arg("--config")
        .arg(cfg_path)
        .env("REIN_SHIPPER_LISTEN_FD", listen.as_raw_fd().to_string())
        .env("REIN_SHIPPER_CONTROL_FD", theirs.as_raw_fd().to_string())
        .spawn();
    set_cloexec(listen, true);
    drop(theirs);
    let child = child.map_err(|e| format!("starting {}: {e}", exe.display()))?;
    let _ = std::fs::write(state_dir.join("worker.pid"), child.id().to_string());
    Ok(WorkerProc {
        child,
        control: ours,
        started: Instant::now(),
        open: true,
    })
}

/// Runs the supervisor until SIGTERM.
pub fn run(cfg_path: &Path, cfg: &ShipperConfig) -> Result<(), String> {
    raise_nofile();
    if let Some(name) = &cfg.cgroup {
        let limits = super::cgroup::Limits {
            memory_max: cfg.cgroup_memory_max,
            cpu_max: cfg.cgroup_cpu_max.clone(),
        };
        let dirs = super::cgroup::join(&cfg.cgroup_root, name, std::process::id(), &limits)?;
        tracing::info!(?dirs, "moved into the shipper's own cgroup");
    }
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| format!("{}: {e}", cfg.state_dir.display()))?;
    let listen = bind_socket(&cfg.socket)?;
    let _ = std::fs::write(
        cfg.state_dir.join("supervisor.pid"),
        std::process::id().to_string(),
    );
    {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        let sa = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::empty(),
            SigSet::empty(),
        );
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            // SAFETY: the handler only stores to atomics.
            let _ = unsafe { sigaction(s, &sa) };
        }
    }
    let exe: PathBuf = std::env::current_exe().map_err(|e| e.to_string())?;
    let cfg_path = std::fs::canonicalize(cfg_path).unwrap_or_else(|_| cfg_path.to_path_buf());
    let mut table: BTreeMap<String, [OwnedFd; 2]> = BTreeMap::new();
    let mut quick_exits = 0u32;
    tracing::info!(socket = %cfg.socket.display(), "log shipper supervisor started");
    loop {
        let mut w = spawn(&exe, &cfg_path, &listen, &cfg.state_dir)?;
        for (key, fds) in &table {
            let msg = format!("adopt\n{key}");
            if proto::send_with_fds(
                w.control.as_fd(),
                msg.as_bytes(),
                &[fds[0].as_raw_fd(), fds[1].as_raw_fd()],
            )
            .is_err()
            {
                break;
            }
        }
        let _ = proto::send_with_fds(w.control.as_fd(), b"done", &[]);
        tracing::info!(
            pid = w.child.id(),
            containers = table.len(),
            "worker started"
        );
        loop {
            if w.open
                && proto::wait_readable(w.control.as_fd(), Duration::from_millis(200))
                    .unwrap_or(false)
            {
                match proto::recv_with_fds(w.control.as_fd()) {
                    Ok((msg, fds)) if msg.is_empty() && fds.is_empty() => w.open = false,
                    Ok((msg, fds)) => {
                        if let Some(key) = msg.strip_prefix(b"add\n") {
                            if let Ok(pair) = <[OwnedFd; 2]>::try_from(fds) {
                                table.insert(String::from_utf8_lossy(key).into_owned(), pair);
                            }
                        } else if let Some(key) = msg.strip_prefix(b"del\n") {
                            table.remove(String::from_utf8_lossy(key).as_ref());
                        }
                    }
                    Err(_) => w.open = false,
                }
            } else if !w.open {
                std::thread::sleep(Duration::from_millis(50));
            }
            if STOP.load(Ordering::Relaxed) || RESTART.swap(false, Ordering::Relaxed) {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(i32::try_from(w.child.id()).unwrap_or(0), libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(20);
                while w.child.try_wait().ok().flatten().is_none() {
                    if Instant::now() > deadline {
                        let _ = w.child.kill();
                    }
                    // Keep serving the channel so the worker never blocks on it.
                    if w.open
                        && proto::wait_readable(w.control.as_fd(), Duration::from_millis(50))
                            .unwrap_or(false)
                    {
                        if let Ok((msg, fds)) = proto::recv_with_fds(w.control.as_fd()) {
                            if msg.is_empty() && fds.is_empty() {
                                w.open = false;
                            } else if let Some(key) = msg.strip_prefix(b"add\n") {
                                if let Ok(pair) = <[OwnedFd; 2]>::try_from(fds) {
                                    table.insert(String::from_utf8_lossy(key).into_owned(), pair);
                                }
                            } else if let Some(key) = msg.strip_prefix(b"del\n") {
                                table.remove(String::from_utf8_lossy(key).as_ref());
                            }
                        }
                    } else {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                if STOP.load(Ordering::Relaxed) {
                    tracing::info!("log shipper stopped");
                    let _ = std::fs::remove_file(&cfg.socket);
                    return Ok(());
                }
                break;
            }
            if let Ok(Some(status)) = w.child.try_wait() {
                tracing::error!(%status, "worker exited; restarting it");
                if w.started.elapsed() < Duration::from_secs(2) {
                    quick_exits += 1;
                    std::thread::sleep(Duration::from_millis(100u64 << quick_exits.min(5)));
                } else {
                    quick_exits = 0;
                }
                break;
            }
        }
    }
}
