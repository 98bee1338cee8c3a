//! The supervisor: binds the socket, holds a duplicate of every container
//! pipe's read end, and (re)starts the worker. It does nothing else, so it
//! has nothing to fail on; while a worker restarts, containers keep writing
//! into their pipe buffers (1 MiB each by default) and then block: they never
//! get EPIPE. SIGHUP restarts the worker from the binary on disk (upgrade).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    bind, listen, socketpair, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};

use super::ShipperConfig;
use crate::proto;

static STOP: AtomicBool = AtomicBool::new(false);
static RESTART: AtomicBool = AtomicBool::new(false);
static UPGRADE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGHUP {
        RESTART.store(true, Ordering::Relaxed);
    } else if sig == libc::SIGUSR2 {
        UPGRADE.store(true, Ordering::Relaxed);
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

/// The socket's directory must not let another user replace the socket
/// (write access for group or others): refuse to start otherwise. A missing
/// directory is created 0755 (the socket's own mode is what guards it; a
/// `socket_group` member must be able to reach it).
fn check_socket_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let m = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.mode() & 0o022 != 0 || (m.uid() != 0 && m.uid() != me) {
        return Err(format!(
            "socket directory {} (mode {:o}, owner {}) can be written by other users, who could replace the socket: use a directory only root can write, such as /run/rein",
            dir.display(),
            m.mode() & 0o7777,
            m.uid()
        ));
    }
    Ok(())
}

/// Gives the socket its access: 0600 (root, or the shipper's own user,
/// only) or, with `socket_group`, 0660 and that group. Only ever widens a
/// socket bound 0600, so there is no moment when it is open to others.
pub fn set_socket_access(path: &Path, group: Option<u32>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match group {
        Some(gid) => {
            nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(|e| format!("chown {} to group {gid}: {e}", path.display()))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// Binds and listens on the modules' socket. The socket file is created
/// with mode 0600 (umask 0177 around `bind`), then given its group.
fn bind_socket(path: &Path, group: Option<u32>) -> Result<OwnedFd, String> {
    if let Some(d) = path.parent() {
        check_socket_dir(d)?;
    }
    let addr = UnixAddr::new(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if path.exists() {
        let probe = proto::seqpacket_socket().map_err(|e| e.to_string())?;
        if nix::sys::socket::connect(probe.as_raw_fd(), &addr).is_ok() {
            return Err(format!("{}: another shipper is listening", path.display()));
        }
        let _ = std::fs::remove_file(path);
    }
    let s = proto::seqpacket_socket().map_err(|e| e.to_string())?;
    // SAFETY: umask(2) cannot fail. The supervisor has a single thread at
    // this point, so nothing else is created under this umask.
    let old = unsafe { libc::umask(0o177) };
    let bound = bind(s.as_raw_fd(), &addr);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    bound.map_err(|e| format!("bind {}: {e}", path.display()))?;
    set_socket_access(path, group)?;
    listen(&s, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))
        .map_err(|e| format!("listen: {e}"))?;
    Ok(s)
}

/// Makes the state directory private (0700, files 0600), tightening what an
/// older version left with the default umask.
fn secure_state_dir(dir: &Path) -> Result<(), String> {
    let n = crate::private::tighten_tree(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if n > 0 {
        tracing::info!(
            state_dir = %dir.display(),
            changed = n,
            "state directory made private (0700 directories, 0600 files)"
        );
    }
    Ok(())
}

struct WorkerProc {
    pid: i32,
    control: OwnedFd,
    started: Instant,
    open: bool,
}

/// Reaps the worker if it exited; returns how.
fn try_wait(pid: i32) -> Option<String> {
    let mut status = 0;
    // SAFETY: waitpid on our own child with WNOHANG; `status` is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if r == pid {
        Some(if libc::WIFSIGNALED(status) {
            format!("signal {}", libc::WTERMSIG(status))
        } else {
            format!("exit {}", libc::WEXITSTATUS(status))
        })
    } else if r < 0 {
        Some("gone".into())
    } else {
        None
    }
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, sig) };
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
        .env_remove(STATE_VAR)
        .spawn();
    set_cloexec(listen, true);
    drop(theirs);
    let child = child.map_err(|e| format!("starting {}: {e}", exe.display()))?;
    let pid = i32::try_from(child.id()).unwrap_or(0);
    // Reaped with waitpid(2) below (the handle is not needed; dropping it neither
    // kills nor waits).
    drop(child);
    let _ = crate::private::write_atomic(&state_dir.join("worker.pid"), pid.to_string().as_bytes());
    Ok(WorkerProc {
        pid,
        control: ours,
        started: Instant::now(),
        open: true,
    })
}

/// Environment variable carrying the supervisor's state across an in-place
/// upgrade (`exec` of the new binary, same pid, descriptors kept).
const STATE_VAR: &str = "REIN_SUPERVISOR_STATE";

/// Per container: its stdout and stderr pipes, then the worker's two staging
/// pipes (read ends) if it uses them.
type Table = BTreeMap<String, Vec<OwnedFd>>;

fn handle(table: &mut Table, msg: &[u8], fds: Vec<OwnedFd>) {
    if let Some(key) = msg.strip_prefix(b"add\n") {
        // A repeated `add` (a new worker's staging pipes) replaces the entry.
        if matches!(fds.len(), 2 | 4) {
            table.insert(String::from_utf8_lossy(key).into_owned(), fds);
        }
    } else if let Some(key) = msg.strip_prefix(b"del\n") {
        table.remove(String::from_utf8_lossy(key).as_ref());
    }
}

fn take_fd(n: &str) -> Option<OwnedFd> {
    let fd: i32 = n.parse().ok()?;
    // SAFETY: the descriptor was left open for us by the previous image of this
    // process (see `exec_upgrade`); nothing else owns it.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    set_cloexec(&fd, true);
    Some(fd)
}

/// Parses `listen=N pid=P control=C key=A,B[,C,D] ...` left by `exec_upgrade`.
fn restore(state: &str) -> Option<(OwnedFd, WorkerProc, Table)> {
    let mut listen = None;
    let mut pid = None;
    let mut control = None;
    let mut table = Table::new();
    for item in state.split(' ').filter(|s| !s.is_empty()) {
        let (k, v) = item.split_once('=')?;
        match k {
            "listen" => listen = take_fd(v),
            "pid" => pid = v.parse().ok(),
            "control" => control = take_fd(v),
            key => {
                let fds = v.split(',').map(take_fd).collect::<Option<Vec<_>>>()?;
                table.insert(key.to_string(), fds);
            }
        }
    }
    let w = WorkerProc {
        pid: pid?,
        control: control?,
        started: Instant::now(),
        open: true,
    };
    Some((listen?, w, table))
}

/// Replaces this process's image with the binary on disk, keeping the pid,
/// the socket, the worker (still our child) and every pipe. Returns only on failure.
fn exec_upgrade(
    exe: &Path,
    cfg_path: &Path,
    listen: &OwnedFd,
    w: &WorkerProc,
    table: &Table,
) -> String {
    use std::os::unix::process::CommandExt;
    let mut state = format!(
        "listen={} pid={} control={}",
        listen.as_raw_fd(),
        w.pid,
        w.control.as_raw_fd()
    );
    let mut keep: Vec<&OwnedFd> = vec![listen, &w.control];
    for (key, fds) in table {
        // Keys are container file names: no space, no `=`.
        let list: Vec<String> = fds.iter().map(|f| f.as_raw_fd().to_string()).collect();
        state.push_str(&format!(" {key}={}", list.join(",")));
        keep.extend(fds.iter());
    }
    for fd in &keep {
        set_cloexec(fd, false);
    }
    let err = Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(cfg_path)
        .env(STATE_VAR, state)
        .exec();
    for fd in &keep {
        set_cloexec(fd, true);
    }
    err.to_string()
}

/// Runs the supervisor until SIGTERM. SIGHUP restarts the worker from the
/// binary on disk; SIGUSR2 replaces the supervisor itself (exec, same pid),
/// keeping the worker and every pipe.
pub fn run(cfg_path: &Path, cfg: &ShipperConfig) -> Result<(), String> {
    raise_nofile();
    let inherited = std::env::var(STATE_VAR).ok().and_then(|s| restore(&s));
    let (listen, mut current, mut table) = match inherited {
        Some((listen, w, table)) => {
            let n = std::fs::read_to_string(cfg.state_dir.join("supervisor.execs"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let _ = crate::private::write_atomic(
                &cfg.state_dir.join("supervisor.execs"),
                (n + 1).to_string().as_bytes(),
            );
            tracing::info!(
                worker = w.pid,
                containers = table.len(),
                "supervisor upgraded in place"
            );
            // A newer binary may have stricter settings or modes. Failing here
            // must not end the supervisor (its pipes would close): log it.
            if let Err(e) = secure_state_dir(&cfg.state_dir)
                .and_then(|()| set_socket_access(&cfg.socket, cfg.socket_group))
            {
                tracing::error!("after the upgrade: {e}");
            }
            (listen, Some(w), table)
        }
        None => {
            if let Some(name) = &cfg.cgroup {
                let limits = super::cgroup::Limits {
                    memory_max: cfg.cgroup_memory_max,
                    cpu_max: cfg.cgroup_cpu_max.clone(),
                };
                let dirs =
                    super::cgroup::join(&cfg.cgroup_root, name, std::process::id(), &limits)?;
                tracing::info!(?dirs, "moved into the shipper's own cgroup");
            }
            secure_state_dir(&cfg.state_dir)?;
            (
                bind_socket(&cfg.socket, cfg.socket_group)?,
                None,
                Table::new(),
            )
        }
    };
    let _ = crate::private::write_atomic(
        &cfg.state_dir.join("supervisor.pid"),
        std::process::id().to_string().as_bytes(),
    );
    {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        let sa = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::empty(),
            SigSet::empty(),
        );
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGUSR2,
        ] {
            // SAFETY: the handler only stores to atomics.
            let _ = unsafe { sigaction(s, &sa) };
        }
    }
    let exe: PathBuf = std::env::current_exe().map_err(|e| e.to_string())?;
    let exe = PathBuf::from(exe.to_string_lossy().trim_end_matches(" (deleted)"));
    let cfg_path = std::fs::canonicalize(cfg_path).unwrap_or_else(|_| cfg_path.to_path_buf());
    let mut quick_exits = 0u32;
    tracing::info!(socket = %cfg.socket.display(), "log shipper supervisor started");
    loop {
        let mut w = match current.take() {
            Some(w) => w,
            None => {
                let w = spawn(&exe, &cfg_path, &listen, &cfg.state_dir)?;
                for (key, fds) in &table {
                    let msg = format!("adopt\n{key}");
                    let raw: Vec<_> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                    if proto::send_with_fds(w.control.as_fd(), msg.as_bytes(), &raw).is_err() {
                        break;
                    }
                }
                let _ = proto::send_with_fds(w.control.as_fd(), b"done", &[]);
                tracing::info!(pid = w.pid, containers = table.len(), "worker started");
                w
            }
        };
        loop {
            if w.open
                && proto::wait_readable(w.control.as_fd(), Duration::from_millis(200))
                    .unwrap_or(false)
            {
                match proto::recv_with_fds(w.control.as_fd()) {
                    Ok((msg, fds)) if msg.is_empty() && fds.is_empty() => w.open = false,
                    Ok((msg, fds)) => handle(&mut table, &msg, fds),
                    Err(_) => w.open = false,
                }
            } else if !w.open {
                std::thread::sleep(Duration::from_millis(50));
            }
            if UPGRADE.swap(false, Ordering::Relaxed) {
                let e = exec_upgrade(&exe, &cfg_path, &listen, &w, &table);
                tracing::error!("in-place upgrade failed ({e}); carrying on");
            }
            if STOP.load(Ordering::Relaxed) || RESTART.swap(false, Ordering::Relaxed) {
                signal(w.pid, libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(20);
                while try_wait(w.pid).is_none() {
                    if Instant::now() > deadline {
                        signal(w.pid, libc::SIGKILL);
                    }
                    // Keep serving the channel so the worker never blocks on it.
                    if w.open
                        && proto::wait_readable(w.control.as_fd(), Duration::from_millis(50))
                            .unwrap_or(false)
                    {
                        match proto::recv_with_fds(w.control.as_fd()) {
                            Ok((msg, fds)) if msg.is_empty() && fds.is_empty() => w.open = false,
                            Ok((msg, fds)) => handle(&mut table, &msg, fds),
                            Err(_) => w.open = false,
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
            if let Some(status) = try_wait(w.pid) {
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
