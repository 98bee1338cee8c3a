//! The worker: its main thread (the reader) accepts registrations, splices
//! pipes into sandbox files and rotates them; the parser threads
//! (`parser_pool.rs`, `parser.rs`), each following its share of the
//! containers, parse the files, buffer records and checkpoint; one thread
//! per sink ships. It may be killed at any instant: every byte it took
//! from a pipe is in a sandbox file, every offset it saved is behind records
//! already in the buffer, rotated files are kept until the saved offsets have
//! passed them, and the supervisor still holds every pipe.
//!
//! This module sets the worker up and runs its event loop; the jobs are in
//! its submodules: `register` (connections from the module), `adopt`
//! (containers taken back after a restart), `attach` (a container's streams
//! opened and handed to the supervisor and the parser), `read` (the splice
//! loop), `tick` (periodic work), `state` (state saved late), `orphan`
//! (handover without a supervisor), `sinks`, `control` (the supervisor
//! channel), `epoll`, `bucket` (rate limit) and `stop` (signals).

mod adopt;
mod attach;
mod bucket;
mod container;
mod control;
mod epoll;
mod orphan;
mod read;
mod register;
mod sinks;
mod state;
mod stop;
mod tick;

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::epoll::EpollEvent;

pub(super) use attach::multiline_config;
pub use attach::AttachError;
pub use control::ControlError;
pub use register::RegisterError;
pub use stop::{install_stop_handler, STOP};

use super::counters::Counters;
use super::parser::ParserConfig;
use super::parser_pool::ParserPool;
use super::parser_sched::{BurstPolicy, BurstState};
use super::reserve::Reserve;
use super::threads::{self, Liveness};
use super::ShipperConfig;
use container::Container;
use epoll::Poller;
use sinks::Sinks;

/// How long the event loop waits for input before its tick.
const TICK_MS: u16 = 50;

/// Why the worker could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A descriptor, pipe or thread of the worker itself.
    #[error("{what}: {source}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The state directory's `containers` directory.
    #[error("{}: {source}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A sink's disk buffer could not be opened.
    #[error("disk buffer of the {sink} sink: {reason}")]
    Buffer {
        /// The sink.
        sink: &'static str,
        /// Why.
        reason: String,
    },
    /// A sink refused its configuration.
    #[error("{sink} sink: {reason}")]
    Sink {
        /// The sink.
        sink: &'static str,
        /// Why.
        reason: String,
    },
    /// The supervisor's container list.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Waiting for events failed.
    #[error("epoll_wait: {0}")]
    Wait(nix::Error),
}

fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> WorkerError {
    move |source| WorkerError::Setup { what, source }
}

/// The worker process.
#[derive(Debug)]
pub struct Worker {
    cfg: ShipperConfig,
    epoll: Poller,
    listen: OwnedFd,
    control: OwnedFd,
    containers: HashMap<u64, Container>,
    keys: HashMap<String, u64>,
    next_id: u64,
    /// Set when the supervisor is gone: the last look for a new one (`handover`).
    orphaned: Option<Instant>,
    sinks: Sinks,
    counters: Arc<Counters>,
    parser: ParserPool,
    /// When each parser thread may take CPU from the containers.
    burst: Vec<BurstState>,
    scratch: (OwnedFd, OwnedFd),
    peek: Vec<u8>,
    last_counters: Instant,
    /// Each parser thread's progress, seen from here.
    parser_live: Vec<Liveness>,
    counters_failing: bool,
    /// Room for registrations and first checkpoints in a full state directory.
    reserve: Reserve,
}

impl Worker {
    /// Sets up the worker on the inherited listening socket and supervisor channel.
    pub fn new(
        cfg: ShipperConfig,
        listen: OwnedFd,
        control: OwnedFd,
    ) -> Result<Worker, WorkerError> {
        let epoll = Poller::new().map_err(|e| setup("epoll")(e.into()))?;
        set_nonblocking(&listen).map_err(setup("listening socket"))?;
        epoll
            .add(&listen, epoll::LISTEN)
            .and_then(|()| epoll.add(&control, epoll::CONTROL))
            .map_err(|e| setup("epoll")(e.into()))?;
        crate::private::create_dir(&cfg.state_dir.join("containers")).map_err(|source| {
            WorkerError::StateDir {
                path: cfg.state_dir.clone(),
                source,
            }
        })?;
        threads::install_panic_log();
        let reserve = Reserve::open(&cfg.state_dir, cfg.state_reserve_bytes);
        let counters = Arc::new(Counters::default());
        let sinks = sinks::start_all(&cfg, &counters)?;
        let wals: Vec<_> = sinks.iter().map(|(_, s)| s.wal.clone()).collect();
        let parser = ParserPool::start(
            cfg.parser_threads,
            &ParserConfig {
                partial_flush: cfg.partial_flush,
                checkpoint_interval: cfg.checkpoint_interval,
            },
            &wals,
            &counters,
        )
        .map_err(setup("the parser threads"))?;
        let burst = BurstPolicy {
            bytes: cfg.parser_burst_bytes.min(cfg.max_unparsed_bytes / 2),
            time: cfg.parser_burst_time,
        };
        Ok(Worker {
            epoll,
            listen,
            control,
            containers: HashMap::new(),
            keys: HashMap::new(),
            next_id: 0,
            orphaned: None,
            sinks,
            counters,
            burst: (0..parser.len()).map(|_| BurstState::new(burst)).collect(),
            parser_live: (0..parser.len()).map(|_| Liveness::new("parser")).collect(),
            parser,
            scratch: crate::module::pipe(0).map_err(setup("scratch pipe"))?,
            peek: vec![0u8; 64 * 1024],
            last_counters: Instant::now(),
            counters_failing: false,
            reserve,
            cfg,
        })
    }

    fn container_dir(&self, key: &str) -> PathBuf {
        self.cfg.state_dir.join("containers").join(key)
    }

    /// Runs until SIGTERM; then saves everything and stops the sinks.
    pub fn run(&mut self) -> Result<(), WorkerError> {
        let wals = self
            .sinks
            .iter()
            .map(|(k, s)| (*k, s.wal.clone()))
            .collect();
        if let Err(e) = super::fallback::start(&self.cfg, wals, self.counters.clone()) {
            tracing::error!("fallen-back containers will not be followed: {e}");
        }
        let mut events = vec![EpollEvent::empty(); 256];
        let mut ready = Vec::with_capacity(events.len());
        let mut last_tick = Instant::now();
        while !STOP.load(Ordering::Relaxed) {
            self.epoll
                .wait(&mut events, TICK_MS, &mut ready)
                .map_err(WorkerError::Wait)?;
            for &token in &ready {
                match token {
                    epoll::LISTEN => self.accept(),
                    // The supervisor only talks at start; EOF means it died.
                    epoll::CONTROL => {
                        if control::supervisor_gone(&self.control) {
                            tracing::error!(
                                "supervisor gone: pipes now depend on this process alone"
                            );
                            let _ = self.epoll.remove(self.control.as_fd());
                            self.orphaned = Some(Instant::now());
                        }
                    }
                    token => self.read(token),
                }
            }
            if last_tick.elapsed() >= Duration::from_millis(TICK_MS.into()) {
                self.tick();
                last_tick = Instant::now();
                if self.hand_over_if_asked() {
                    break;
                }
            }
        }
        self.shutdown();
        Ok(())
    }

    fn shutdown(&mut self) {
        // The parsers stop where they are: synced records, then saved offsets.
        self.parser.stop();
        self.write_counters();
        sinks::stop_all(&mut self.sinks);
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}
