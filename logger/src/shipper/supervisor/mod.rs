//! The supervisor: binds the socket, holds a duplicate of every container
//! pipe's read end, and (re)starts the worker. It does nothing else, so it
//! has nothing to fail on; while a worker restarts, containers keep writing
//! into their pipe buffers (1 MiB each by default) and then block: they never
//! get EPIPE. SIGHUP restarts the worker from the binary on disk (upgrade),
//! SIGUSR2 replaces the supervisor in place.
//!
//! It never exits while it holds pipes (only SIGTERM ends it):
//! * a worker that cannot be started (binary missing or not executable, exec
//!   or fork failure) is retried with backoff (100 ms doubling to 30 s), each
//!   failure logged and counted in `state_dir/supervisor.json`; a SIGHUP while
//!   the binary is not executable leaves the running worker in place;
//! * when a worker ends, every message it sent is handled before it is
//!   replaced (its channel is read to the end): a registration it passed on
//!   just before dying keeps its pipes;
//! * the next worker gets every container; a worker that cannot take the
//!   list is ended and the whole list goes to the one after.
//!
//! If the supervisor itself is killed, its worker keeps reading every pipe.
//! The next supervisor finds the socket served, and the orphaned worker
//! hands it the listening socket and every container's descriptors, then
//! stops; the supervisor waits until it is gone and starts its own worker,
//! which adopts them (see `handover`).

//!
//! Its parts: `socket` (the modules' socket and the state directory),
//! `process` (the worker process), `table` (the descriptors held and the
//! worker's messages), `serve` (the loop with one worker), `upgrade` (in
//! place), `signals`, `stats` (`supervisor.json`).

mod process;
mod serve;
mod signals;
mod socket;
mod stats;
mod table;
mod upgrade;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;

use super::handover::HandoverError;
use super::ShipperConfig;
use serve::{Ended, Supervisor, STOP_GRACE};
use table::Table;

pub use process::raise_nofile;
pub use serve::{backoff, AdoptionError};
pub use socket::set_socket_access;
pub use stats::{SupervisorStats, STATS_FILE};

/// Environment variable carrying the supervisor's state across an in-place
/// upgrade (`exec` of the new binary, same pid, descriptors kept).
const STATE_VAR: &str = "REIN_SUPERVISOR_STATE";

/// How long a new supervisor waits for an orphaned worker to hand over.
const HANDOVER_WAIT: Duration = Duration::from_secs(10);

/// Why the supervisor could not start, or a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A file or directory operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The object and what was done to it.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// The call (and its object).
        what: String,
        /// Cause.
        source: Errno,
    },
    /// The socket's directory lets other users replace the socket.
    #[error("socket directory {} (mode {mode:o}, owner {owner}) can be written by other users, who could replace the socket: use a directory only root can write, such as /run/rein", dir.display())]
    SocketDirOpen {
        /// The directory.
        dir: PathBuf,
        /// Its mode.
        mode: u32,
        /// Its owner.
        owner: u32,
    },
    /// Another shipper serves the socket.
    #[error("{}: another shipper is listening", .0.display())]
    Served(PathBuf),
    /// The socket is served and nobody handed over.
    #[error("{}: another shipper is listening (no orphaned worker handed over within {HANDOVER_WAIT:?})", .0.display())]
    NoHandover(PathBuf),
    /// Taking over from an orphaned worker failed.
    #[error(transparent)]
    Handover(#[from] HandoverError),
    /// The shipper's cgroup could not be joined.
    #[error("{0}")]
    Cgroup(String),
    /// The worker's binary cannot be started.
    #[error("{} is not an executable file", .0.display())]
    NotExecutable(PathBuf),
    /// Starting the worker failed.
    #[error("starting {}: {source}", exe.display())]
    Start {
        /// The binary.
        exe: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A worker could not be handed the containers (it was ended).
    #[error("handing the containers to worker {pid}: {source}")]
    Adoption {
        /// The worker.
        pid: i32,
        /// Why.
        source: AdoptionError,
    },
}

impl SupervisorError {
    fn io(what: impl std::fmt::Display, source: std::io::Error) -> Self {
        SupervisorError::Io {
            what: what.to_string(),
            source,
        }
    }

    fn sys(what: impl std::fmt::Display, source: Errno) -> Self {
        SupervisorError::Sys {
            what: what.to_string(),
            source,
        }
    }
}

/// The socket is served although no supervisor of ours runs: takes the
/// listening socket and every container from the orphaned worker (see
/// `handover`), then waits until that worker is gone.
fn take_over(cfg: &ShipperConfig) -> Result<(std::os::fd::OwnedFd, Table), SupervisorError> {
    let l = super::handover::Listener::bind(&cfg.state_dir)?;
    tracing::warn!(
        socket = %cfg.socket.display(),
        "the socket is served already: waiting up to {HANDOVER_WAIT:?} for an orphaned worker to hand over"
    );
    let r = l
        .receive(HANDOVER_WAIT)?
        .ok_or_else(|| SupervisorError::NoHandover(cfg.socket.clone()))?;
    drop(l);
    let table: Table = r.containers.into_iter().collect();
    tracing::warn!(
        pid = r.pid,
        containers = table.len(),
        "took over the containers of the orphaned worker; waiting for it to stop"
    );
    let started = Instant::now();
    let mut killed = false;
    while !super::handover::ended(r.pid) {
        if !killed && started.elapsed() > STOP_GRACE {
            // Safe: every pipe it read is held here now.
            tracing::error!(pid = r.pid, "the orphaned worker did not stop: SIGKILL");
            process::signal(r.pid, Signal::SIGKILL);
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((r.listen, table))
}

/// Runs the supervisor until SIGTERM. SIGHUP restarts the worker from the
/// binary on disk; SIGUSR2 replaces the supervisor itself (exec, same pid),
/// keeping the worker and every pipe.
pub fn run(cfg_path: &Path, cfg: &ShipperConfig) -> Result<(), SupervisorError> {
    raise_nofile();
    // Before a handover: a SIGTERM's default action would end this process
    // while it holds the containers' pipes.
    signals::install();
    let inherited = std::env::var(STATE_VAR)
        .ok()
        .and_then(|s| upgrade::restore(&s));
    let mut handed_over = false;
    let (listen, mut current, table) = match inherited {
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
                worker = w.as_ref().map_or(0, |w| w.pid),
                containers = table.len(),
                "supervisor upgraded in place"
            );
            // A newer binary may have stricter settings or modes. Failing here
            // must not end the supervisor (its pipes would close): log it.
            if let Err(e) = socket::secure_state_dir(&cfg.state_dir)
                .and_then(|()| set_socket_access(&cfg.socket, cfg.socket_group))
            {
                tracing::error!("after the upgrade: {e}");
            }
            (listen, w, table)
        }
        None => {
            if let Some(name) = &cfg.cgroup {
                let limits = super::own_cgroup::Limits {
                    memory_max: cfg.cgroup_memory_max,
                    cpu_max: cfg.cgroup_cpu_max.clone(),
                };
                let dirs =
                    super::own_cgroup::join(&cfg.cgroup_root, name, std::process::id(), &limits)
                        .map_err(|e| SupervisorError::Cgroup(e.to_string()))?;
                tracing::info!(?dirs, "moved into the shipper's own cgroup");
            }
            socket::secure_state_dir(&cfg.state_dir)?;
            if socket::socket_is_served(&cfg.socket) {
                let (listen, table) = take_over(cfg)?;
                handed_over = true;
                if let Err(e) = set_socket_access(&cfg.socket, cfg.socket_group) {
                    tracing::error!("after the handover: {e}");
                }
                (listen, None, table)
            } else {
                (
                    socket::bind_socket(&cfg.socket, cfg.socket_group)?,
                    None,
                    Table::new(),
                )
            }
        }
    };
    let _ = crate::private::write_atomic(
        &cfg.state_dir.join("supervisor.pid"),
        std::process::id().to_string().as_bytes(),
    );
    let exe: PathBuf =
        std::env::current_exe().map_err(|e| SupervisorError::io("this binary's path", e))?;
    let exe = PathBuf::from(exe.to_string_lossy().trim_end_matches(" (deleted)"));
    let cfg_path = std::fs::canonicalize(cfg_path).unwrap_or_else(|_| cfg_path.to_path_buf());
    let stats = SupervisorStats::load(&cfg.state_dir);
    let mut sup = Supervisor {
        cfg,
        exe,
        cfg_path,
        listen,
        table,
        stats,
        saved: Instant::now(),
    };
    sup.stats.pid = std::process::id();
    sup.stats.worker_pid = current.as_ref().map_or(0, |w| w.pid);
    sup.stats.handovers += u64::from(handed_over);
    sup.save();
    let mut quick_exits = 0u32;
    tracing::info!(socket = %cfg.socket.display(), "log shipper supervisor started");
    loop {
        let w = match current.take() {
            Some(w) => w,
            None => match sup.start_worker() {
                Some(w) => w,
                None => break,
            },
        };
        match sup.serve(w) {
            Ended::Stop => break,
            Ended::Restart => quick_exits = 0,
            Ended::Exited(lived) if lived < Duration::from_secs(2) => {
                sup.idle(backoff(quick_exits));
                quick_exits += 1;
            }
            Ended::Exited(_) => quick_exits = 0,
        }
    }
    tracing::info!("log shipper stopped");
    sup.stats.worker_pid = 0;
    sup.save();
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}
