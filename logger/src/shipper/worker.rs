//! The worker: its main thread (the reader) accepts registrations, splices
//! pipes into sandbox files and rotates them; the parser thread
//! (`parser.rs`) follows the files, buffers records and checkpoints; one
//! thread per sink ships. It may be killed at any instant: every byte it took
//! from a pipe is in a sandbox file, every offset it saved is behind records
//! already in the buffer, rotated files are kept until the saved offsets have
//! passed them, and the supervisor still holds every pipe.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::counters::{self, Counters};
use super::parser::{Checkpoint, ParseJob, Parser, ParserConfig};
use super::parser_sched::{self, BurstPolicy, BurstState};
use super::registration::{self, Loaded};
use super::reserve::Reserve;
use super::stream::{self, FileRecord, ParseStream, Splice, StreamState};
use super::threads::{self, Liveness};
use super::ShipperConfig;
use crate::module::compile_pattern;
use crate::proto::{self, MultilineSpec, Registration, SinkKind};
use crate::record::{MultilineConfig, StartRule, Stream, StreamPipeline};
use crate::sandbox::SandboxDir;
use crate::sink::es::EsSink;
use crate::sink::{Control, Sink, SinkStats};
use crate::wal::{Wal, WalConfig};

const LISTEN: u64 = u64::MAX;
const CONTROL: u64 = u64::MAX - 1;
const SPLICE_CHUNK: u64 = 1 << 20;
const FAIR_SHARE: u64 = 4 << 20;

/// Set by SIGTERM/SIGINT: finish cleanly.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Installs the SIGTERM/SIGINT handlers of the worker.
pub fn install_stop_handler() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let sa = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(s, &sa) };
    }
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self) {
        let now = Instant::now();
        let cap = self.rate.max(65536.0);
        self.tokens =
            (self.tokens + self.rate * now.duration_since(self.last).as_secs_f64()).min(cap);
        self.last = now;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // non-negative, floored
    fn available(&self) -> u64 {
        self.tokens.max(0.0) as u64
    }
}

#[derive(Debug)]
struct Container {
    key: String,
    dir: PathBuf,
    streams: Vec<StreamState>,
    wal: Option<Arc<Wal>>,
    paused: bool,
    bucket: Option<Bucket>,
    /// Set by the parser once everything is parsed and synced after EOF.
    finished: Arc<AtomicBool>,
    /// State the state directory did not take yet (retried every second).
    unsaved: Unsaved,
    /// The previous worker's staging pipes while their bytes are not all in
    /// the files (the sandbox disk refused them): the container's pipes are
    /// not read until they are, and the supervisor holds these.
    old_stages: Option<Vec<OwnedFd>>,
}

/// A container's state that could not be saved when it was attached (a full
/// or failing state directory): the container is attached all the same.
#[derive(Debug, Default)]
struct Unsaved {
    /// The registration message, for `registration.json` and its copy.
    registration: Option<Vec<u8>>,
    /// The first checkpoint (only written if the parser has not saved one).
    checkpoint: Option<Vec<u8>>,
}

impl Unsaved {
    fn any(&self) -> bool {
        self.registration.is_some() || self.checkpoint.is_some()
    }
}

/// Starts a sink's thread (again), with a new sink.
struct SinkSpawner(Box<dyn Fn() -> std::io::Result<JoinHandle<()>> + Send>);

impl std::fmt::Debug for SinkSpawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SinkSpawner")
    }
}

#[derive(Debug)]
struct SinkHandle {
    wal: Arc<Wal>,
    stats: Arc<SinkStats>,
    stop: Arc<Control>,
    thread: Option<JoinHandle<()>>,
    spawn: SinkSpawner,
    live: Liveness,
}

impl SinkHandle {
    /// Moves whenever the sink sends, fails or acknowledges anything.
    fn progress(&self) -> u64 {
        let s = &self.stats;
        [
            &s.requests,
            &s.failed_requests,
            &s.retried,
            &s.dead_lettered,
            &self.wal.stats.acked_records,
        ]
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .fold(0u64, u64::wrapping_add)
    }

    /// Records appended in this run and neither acknowledged nor dropped yet.
    fn has_work(&self) -> bool {
        let w = &self.wal.stats;
        let done = w.acked_records.load(Ordering::Relaxed)
            + w.dropped_records.load(Ordering::Relaxed)
            + w.corrupt_records.load(Ordering::Relaxed);
        w.appended_records.load(Ordering::Relaxed) > done
    }
}

/// The worker process.
#[derive(Debug)]
pub struct Worker {
    cfg: ShipperConfig,
    epoll: OwnedFd,
    listen: OwnedFd,
    control: OwnedFd,
    containers: HashMap<u64, Container>,
    keys: HashMap<String, u64>,
    next_id: u64,
    /// Set when the supervisor is gone: the last look for a new one (`handover`).
    orphaned: Option<Instant>,
    sinks: Vec<(SinkKind, SinkHandle)>,
    counters: Arc<Counters>,
    parser: Parser,
    /// When the parser may take CPU from the containers.
    burst: BurstState,
    scratch: (OwnedFd, OwnedFd),
    peek: Vec<u8>,
    last_counters: Instant,
    parser_live: Liveness,
    counters_failing: bool,
    /// Room for registrations and first checkpoints in a full state directory.
    reserve: Reserve,
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

fn epoll_ctl(ep: &OwnedFd, op: libc::c_int, fd: RawFd, token: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: valid epoll and target descriptors; `ev` lives across the call.
    let r = unsafe { libc::epoll_ctl(ep.as_raw_fd(), op, fd, &mut ev) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub(super) fn multiline_config(spec: &MultilineSpec) -> Option<MultilineConfig> {
    let rule = match &spec.pattern {
        None => StartRule::Indented,
        Some(p) => match compile_pattern(p) {
            Ok(re) => StartRule::Pattern(re),
            Err(e) => {
                tracing::warn!("multiline pattern refused: {e}");
                return None;
            }
        },
    };
    Some(MultilineConfig {
        rule,
        max_lines: spec.max_lines.max(1),
        max_bytes: usize::try_from(spec.max_bytes).unwrap_or(usize::MAX).max(1),
        timeout: Duration::from_millis(spec.timeout_ms.max(1)),
    })
}

impl Worker {
    /// Sets up the worker on the inherited listening socket and supervisor channel.
    pub fn new(cfg: ShipperConfig, listen: OwnedFd, control: OwnedFd) -> Result<Worker, String> {
        // SAFETY: plain syscall; the result is checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(format!(
                "epoll_create1: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `ep` is a new descriptor owned by nobody else.
        let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
        set_nonblocking(&listen).map_err(io_err("listening socket"))?;
        epoll_ctl(&epoll, libc::EPOLL_CTL_ADD, listen.as_raw_fd(), LISTEN)
            .map_err(io_err("epoll"))?;
        epoll_ctl(&epoll, libc::EPOLL_CTL_ADD, control.as_raw_fd(), CONTROL)
            .map_err(io_err("epoll"))?;
        crate::private::create_dir(&cfg.state_dir.join("containers"))
            .map_err(io_err(cfg.state_dir.display()))?;
        threads::install_panic_log();
        let reserve = Reserve::open(&cfg.state_dir, cfg.state_reserve_bytes);
        let counters = Arc::new(Counters::default());
        let mut sinks = Vec::new();
        if let Some(es_cfg) = &cfg.es {
            let es_cfg = es_cfg.clone();
            sinks.push(start_sink(
                &cfg,
                SinkKind::Elasticsearch,
                "es-sink",
                &counters,
                move |stats| EsSink::new(es_cfg.clone(), stats),
                EsSink::run,
            )?);
        }
        #[cfg(feature = "kafka")]
        if let Some(k_cfg) = &cfg.kafka {
            use crate::sink::kafka::KafkaSink;
            let k_cfg = k_cfg.clone();
            sinks.push(start_sink(
                &cfg,
                SinkKind::Kafka,
                "kafka-sink",
                &counters,
                move |stats| KafkaSink::new(k_cfg.clone(), stats),
                KafkaSink::run,
            )?);
        }
        #[cfg(feature = "redis")]
        if let Some(r_cfg) = &cfg.redis {
            use crate::sink::redis::RedisSink;
            let r_cfg = r_cfg.clone();
            sinks.push(start_sink(
                &cfg,
                SinkKind::Redis,
                "redis-sink",
                &counters,
                move |stats| RedisSink::new(r_cfg.clone(), stats),
                RedisSink::run,
            )?);
        }
        let parser = Parser::start(
            ParserConfig {
                partial_flush: cfg.partial_flush,
                checkpoint_interval: cfg.checkpoint_interval,
            },
            sinks.iter().map(|(_, s)| s.wal.clone()).collect(),
            counters.clone(),
        )?;
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
            parser,
            scratch: crate::module::pipe(0).map_err(io_err("scratch pipe"))?,
            peek: vec![0u8; 64 * 1024],
            last_counters: Instant::now(),
            parser_live: Liveness::new("parser"),
            counters_failing: false,
            reserve,
            burst: BurstState::new(BurstPolicy {
                bytes: cfg.parser_burst_bytes.min(cfg.max_unparsed_bytes / 2),
                time: cfg.parser_burst_time,
            }),
            cfg,
        })
    }

    fn container_dir(&self, key: &str) -> PathBuf {
        self.cfg.state_dir.join("containers").join(key)
    }

    /// Takes back the containers the supervisor holds (after a restart).
    /// A container is released (the supervisor closes its pipes) only when
    /// its output can go nowhere at all: an unreadable registration or a
    /// failed attach leaves it writing into its sandbox files, or into the
    /// shipper's own state, never blocked on a pipe nobody reads.
    pub fn adopt(&mut self) -> Result<(), String> {
        loop {
            if !proto::wait_readable(self.control.as_fd(), Duration::from_secs(10))
                .map_err(|e| e.to_string())?
            {
                return Err("the supervisor sent no container list".into());
            }
            let (msg, fds) =
                proto::recv_with_fds(self.control.as_fd()).map_err(|e| format!("control: {e}"))?;
            if msg == b"done" || msg.is_empty() {
                return Ok(());
            }
            let Some(key) = msg
                .strip_prefix(b"adopt\n")
                .and_then(|k| std::str::from_utf8(k).ok())
            else {
                continue;
            };
            let key = key.to_string();
            if !matches!(fds.len(), 2 | 4) || !valid_key(&key) {
                let why = format!("bad key or {} descriptors", fds.len());
                self.release(&key, &why);
                continue;
            }
            self.adopt_one(&key, fds);
        }
    }

    fn adopt_one(&mut self, key: &str, fds: Vec<OwnedFd>) {
        let dir = self.container_dir(key);
        let cp = std::fs::read(dir.join("checkpoint.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Checkpoint>(&b).ok());
        let records = || [Stream::Stdout, Stream::Stderr].map(|s| stream::load_record(&dir, s));
        // Spares of the descriptors: a failed attach drops the ones it was given.
        let spare: Vec<OwnedFd> = fds.iter().filter_map(|f| f.try_clone().ok()).collect();
        let failed = match registration::load(&dir, key) {
            Loaded::Full { reg, problem } => {
                if let Some(p) = problem {
                    self.unreadable(key, &p, "taken back from the copy");
                } else {
                    // Written by an older version without the copy: make it now.
                    let copy = dir.join(registration::COPY);
                    if !copy.exists() {
                        if let Ok(b) = std::fs::read(dir.join(registration::FILE)) {
                            let _ = self.reserve.save(&dir, b.len() as u64, || {
                                crate::private::write_atomic(&copy, &b)
                            });
                        }
                    }
                }
                match self.attach(*reg, fds, cp, records(), None, true) {
                    Ok(_) => return,
                    Err(e) => e,
                }
            }
            Loaded::SandboxOnly { sandbox, problem } => {
                self.unreadable(key, &problem, "its output goes to its sandbox files only");
                let reg = registration::files_only(key, sandbox);
                match self.attach(reg, fds, None, records(), None, false) {
                    Ok(_) => return,
                    Err(e) => e,
                }
            }
            Loaded::Nothing { problem } => {
                self.unreadable(key, &problem, "no sandbox known");
                drop(fds);
                problem
            }
        };
        // Last resort: the shipper's own state, so that the container never blocks.
        let spill = self.cfg.state_dir.join("unregistered").join(key);
        tracing::error!(
            container = key,
            "cannot take the container back ({failed}): its output goes to {}",
            spill.display()
        );
        let res = crate::private::create_dir(&spill)
            .map_err(io_err(spill.display()))
            .and_then(|()| {
                let reg = registration::files_only(key, spill.clone());
                self.attach(reg, spare, None, [None, None], None, false)
            });
        if let Err(e) = res {
            self.release(key, &e);
        }
    }

    fn unreadable(&self, key: &str, problem: &str, outcome: &str) {
        self.counters
            .registrations_unreadable
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            container = key,
            "registration unreadable ({problem}): {outcome}"
        );
    }

    /// Tells the supervisor to close the container's pipes (its output can go nowhere).
    fn release(&self, key: &str, why: &str) {
        self.counters
            .containers_released
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            container = key,
            "cannot take the container back ({why}); releasing it"
        );
        let _ = proto::send_with_fds(self.control.as_fd(), format!("del\n{key}").as_bytes(), &[]);
    }

    /// Takes a container's two pipes (`fds[0..2]`), after an adoption with the
    /// previous worker's two staging pipes (`fds[2..4]`, written out first), and
    /// gives the supervisor duplicates of the pipes and of the new staging pipes.
    /// The sandbox files are those of `records` (saved by the previous
    /// worker), never whatever their names hold; without, new ones.
    /// Fails only before the supervisor is told of the container: from then
    /// on a state directory that takes no write (the registration message
    /// `unsaved_registration`, the first checkpoint if `first_checkpoint`)
    /// leaves the container attached, its state saved later.
    fn attach(
        &mut self,
        reg: Registration,
        fds: Vec<OwnedFd>,
        cp: Option<Checkpoint>,
        records: [Option<FileRecord>; 2],
        unsaved_registration: Option<Vec<u8>>,
        first_checkpoint: bool,
    ) -> Result<u64, String> {
        let mut fds = fds.into_iter();
        let (Some(out), Some(err)) = (fds.next(), fds.next()) else {
            return Err("two pipes expected".into());
        };
        let old_stages: Vec<OwnedFd> = fds.collect();
        let wal = self
            .sinks
            .iter()
            .find(|(k, _)| *k == reg.options.sink)
            .map(|(_, s)| s.wal.clone());
        if wal.is_none() && reg.options.sink != SinkKind::None {
            tracing::warn!(
                container = reg.key,
                sink = reg.options.sink.name(),
                "sink not configured in this shipper: sandbox files only"
            );
        }
        // Taken once, by a walk that follows no symlink a task controls; every
        // sandbox file is then reached relative to it.
        let sandbox = Arc::new(
            SandboxDir::open(&reg.sandbox)
                .map_err(|e| format!("sandbox {}: {e}", reg.sandbox.display()))?,
        );
        let dir = self.container_dir(&reg.key);
        let cid = reg.meta.container_id().into_bytes();
        let route = reg.options.route.clone().into_bytes();
        let mut streams = Vec::with_capacity(2);
        let mut parse_streams = Vec::with_capacity(2);
        for (((stream, fd), scp), record) in [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .zip([out, err])
            .zip([cp.as_ref().map(|c| c.stdout), cp.as_ref().map(|c| c.stderr)])
            .zip(records)
        {
            let pipeline = wal.as_ref().map(|_| {
                StreamPipeline::new(
                    &reg.meta,
                    stream,
                    &self.cfg.encode,
                    self.cfg.max_line_bytes,
                    reg.options.multiline.as_ref().and_then(multiline_config),
                )
            });
            let (st, ps) = stream::open(stream, sandbox.clone(), &dir, fd, pipeline, scp, record)
                .map_err(io_err(reg.sandbox.join(stream.name()).display()))?;
            streams.push(st);
            parse_streams.push(ps);
        }
        // The previous worker's staged bytes go first. A sandbox disk that
        // refuses them (full, say) makes the container wait, as while running.
        let mut undrained = false;
        for (st, old) in streams.iter_mut().zip(&old_stages) {
            undrained |= !self.write_out_stage(&reg.key, st, old);
        }
        // Nothing below fails: the supervisor holds the pipes from here on.
        let mut unsaved = Unsaved {
            registration: unsaved_registration,
            checkpoint: None,
        };
        if first_checkpoint {
            let body = checkpoint_body(&parse_streams);
            let path = dir.join("checkpoint.json");
            let saved = self.reserve.save(&dir, body.len() as u64, || {
                crate::private::write_atomic(&path, &body)
            });
            if let Err(e) = saved {
                self.state_unsaved(&reg.key, "checkpoint", &e);
                unsaved.checkpoint = Some(body);
            }
        }
        if unsaved.any() {
            self.counters
                .containers_state_unsaved
                .fetch_add(1, Ordering::Relaxed);
        }
        let old_stages = if undrained {
            // The supervisor keeps the old staging pipes until they are written out.
            let mut fds: Vec<RawFd> = streams
                .iter()
                .filter_map(|s| s.pipe.as_ref().map(AsRawFd::as_raw_fd))
                .collect();
            fds.extend(old_stages.iter().map(AsRawFd::as_raw_fd));
            send_add(&self.control, &reg.key, &fds);
            Some(old_stages)
        } else {
            hand_to_supervisor(&self.control, &reg.key, &mut streams);
            None
        };
        let id = self.next_id;
        self.next_id += 1;
        let rate = reg.options.rate_limit;
        let finished = Arc::new(AtomicBool::new(false));
        let mut c = Container {
            key: reg.key.clone(),
            dir: dir.clone(),
            streams,
            wal: wal.clone(),
            paused: false,
            bucket: (rate > 0).then(|| Bucket {
                rate: rate as f64,
                tokens: rate as f64,
                last: Instant::now(),
            }),
            finished: finished.clone(),
            unsaved,
            old_stages,
        };
        self.parser.add(ParseJob::new(
            reg.key.clone(),
            dir,
            cid,
            route,
            wal,
            parse_streams,
            finished,
        ));
        for (i, st) in c.streams.iter_mut().enumerate() {
            if let Some(p) = st.pipe.as_ref().filter(|_| c.old_stages.is_none()) {
                // Not armed: the next tick tries again.
                match epoll_ctl(
                    &self.epoll,
                    libc::EPOLL_CTL_ADD,
                    p.as_raw_fd(),
                    id * 2 + i as u64,
                ) {
                    Ok(()) => st.armed = true,
                    Err(e) => tracing::warn!(container = reg.key, "epoll: {e}"),
                }
            }
        }
        self.keys.insert(reg.key.clone(), id);
        self.containers.insert(id, c);
        self.counters
            .containers_live
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .containers_registered
            .fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    fn accept(&mut self) {
        loop {
            // SAFETY: accept4 on our listening socket; the result is checked and owned below.
            let fd = unsafe {
                libc::accept4(
                    self.listen.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                return;
            }
            // SAFETY: a new descriptor from accept4, owned by nobody else.
            let conn = unsafe { OwnedFd::from_raw_fd(fd) };
            // Only root, our own user or `socket_group` may hand us containers.
            if let Err(e) = crate::peercred::check_client(conn.as_fd(), self.cfg.socket_group) {
                self.counters
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!("connection refused: {e}");
                let _ = proto::send_with_fds(conn.as_fd(), format!("error: {e}").as_bytes(), &[]);
                continue;
            }
            let reply = match self.register(&conn) {
                Ok(()) => b"ok".to_vec(),
                Err(e) => {
                    self.counters
                        .registrations_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("registration refused: {e}");
                    format!("error: {e}").into_bytes()
                }
            };
            let _ = proto::send_with_fds(conn.as_fd(), &reply, &[]);
        }
    }

    fn register(&mut self, conn: &OwnedFd) -> Result<(), String> {
        if !proto::wait_readable(conn.as_fd(), Duration::from_millis(500))
            .map_err(|e| e.to_string())?
        {
            return Err("no registration received".into());
        }
        let (msg, fds) = proto::recv_with_fds(conn.as_fd()).map_err(|e| e.to_string())?;
        if msg == proto::PROBE {
            return Ok(()); // a module asking whether we answer: nothing to register
        }
        if proto::peer_closed(conn.as_fd()) {
            return Err(
                "the module stopped waiting (its container writes its sandbox files)".into(),
            );
        }
        let reg: Registration =
            serde_json::from_slice(&msg).map_err(|e| format!("bad registration: {e}"))?;
        if reg.version != proto::REGISTRATION_VERSION {
            return Err(format!("protocol version {} not supported", reg.version));
        }
        if !valid_key(&reg.key) {
            return Err(format!("bad container key {:?}", reg.key));
        }
        if !reg.sandbox.is_absolute() {
            return Err(format!(
                "sandbox {} is not an absolute path",
                reg.sandbox.display()
            ));
        }
        let fds: [OwnedFd; 2] = fds
            .try_into()
            .map_err(|_| "expected 2 descriptors".to_string())?;
        if self.keys.contains_key(&reg.key) {
            return Err(format!("container {} is already registered", reg.key));
        }
        let dir = self.container_dir(&reg.key);
        self.reserve
            .save(&self.cfg.state_dir, 4096, || {
                crate::private::create_dir(&dir)
            })
            .map_err(io_err(dir.display()))?;
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
        self.attach(reg, fds.into(), None, [None, None], unsaved, true)
            .map(|_| ())
    }

    /// Writes out a previous worker's staging pipe `old` into `st`'s file;
    /// false if the file refused it (retried by the tick).
    fn write_out_stage(&self, key: &str, st: &mut StreamState, old: &OwnedFd) -> bool {
        match st.drain(old) {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(
                        container = key,
                        bytes = n,
                        "wrote out the previous worker's staged bytes"
                    );
                }
                st.stalled = None;
                true
            }
            Err(e) => {
                let d = st.stall();
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %st.path.display(), "writing the previous worker's staged bytes: {e}; retrying in {d:?} (the container's pipe is not read until then)");
                false
            }
        }
    }

    /// Retries the staged bytes of a previous worker; once all are written,
    /// the container is read again with staging pipes of this worker.
    fn retry_old_stages(&mut self) {
        let ids: Vec<u64> = self
            .containers
            .iter()
            .filter(|(_, c)| {
                c.old_stages.is_some() && !c.streams.iter().any(StreamState::stalled_now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(mut c) = self.containers.remove(&id) else {
                continue;
            };
            let olds = c.old_stages.take().unwrap_or_default();
            let mut done = true;
            for (st, old) in c.streams.iter_mut().zip(&olds) {
                done &= self.write_out_stage(&c.key, st, old);
            }
            if done {
                tracing::info!(
                    container = c.key,
                    "the previous worker's staged bytes are written: reading again"
                );
                hand_to_supervisor(&self.control, &c.key, &mut c.streams);
            } else {
                c.old_stages = Some(olds);
            }
            self.containers.insert(id, c);
        }
    }

    fn state_unsaved(&self, key: &str, what: &str, e: &std::io::Error) {
        self.counters
            .state_save_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            container = key,
            "saving the {what}: {e}; the container stays attached and it is saved once the state directory takes it"
        );
    }

    /// Retries the state the state directory did not take at attach.
    fn save_pending_state(&mut self) {
        let mut left = 0u64;
        let reserve = &self.reserve;
        for c in self.containers.values_mut() {
            if let Some(msg) = &c.unsaved.registration {
                let need = 2 * msg.len() as u64;
                if reserve
                    .save(&c.dir, need, || registration::save(&c.dir, msg))
                    .is_ok()
                {
                    c.unsaved.registration = None;
                }
            }
            if let Some(body) = &c.unsaved.checkpoint {
                // The parser's own checkpoint, once saved, is newer: kept.
                let path = c.dir.join("checkpoint.json");
                if reserve
                    .save(&c.dir, body.len() as u64, || write_new(&path, body))
                    .is_ok()
                {
                    c.unsaved.checkpoint = None;
                }
            }
            if c.unsaved.any() {
                left += 1;
            }
        }
        let before = self
            .counters
            .containers_state_unsaved
            .swap(left, Ordering::Relaxed);
        if left < before {
            tracing::info!(
                containers = before - left,
                "container state saved after all"
            );
        }
    }

    /// Liveness: a sink thread that ended is started again; a thread without
    /// progress while it has work is reported.
    fn check_threads(&mut self) {
        let limit = self.cfg.thread_stall_timeout;
        for (kind, s) in self.sinks.iter_mut() {
            if s.thread.as_ref().is_some_and(JoinHandle::is_finished) {
                if let Some(t) = s.thread.take() {
                    let _ = t.join();
                }
                self.counters
                    .thread_restarts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    sink = kind.name(),
                    "the sink thread ended; starting it again"
                );
                match (s.spawn.0)() {
                    Ok(t) => s.thread = Some(t),
                    Err(e) => tracing::error!(sink = kind.name(), "sink thread: {e}"),
                }
            }
            let (progress, work) = (s.progress(), s.has_work());
            s.live
                .observe(progress, work, limit, &self.counters.thread_stalls_sink);
        }
        // The parser: any stream it should be parsing moved, or its lines.
        let mut progress = self.counters.lines_read.load(Ordering::Relaxed);
        let mut work = false;
        for c in self.containers.values().filter(|c| !c.paused) {
            for st in &c.streams {
                progress = progress.wrapping_add(st.shared.parsed.load(Ordering::Relaxed));
                work |= st.shared.lag() > 0;
            }
        }
        self.parser_live
            .observe(progress, work, limit, &self.counters.thread_stalls_parser);
    }

    fn read(&mut self, token: u64) {
        let (id, idx) = (token / 2, usize::try_from(token % 2).unwrap_or(0));
        let Some(c) = self.containers.get_mut(&id) else {
            return;
        };
        if c.old_stages.is_some() {
            // Older bytes first: not read until the tick has written them out.
            let st = &mut c.streams[idx];
            if let Some(p) = st.pipe.as_ref().filter(|_| st.armed) {
                let _ = epoll_ctl(&self.epoll, libc::EPOLL_CTL_DEL, p.as_raw_fd(), 0);
                st.armed = false;
            }
            return;
        }
        let rotate_max = self.cfg.rotate_max_bytes;
        let max_lag = self.cfg.max_unparsed_bytes;
        let mut moved = 0u64;
        let mut eof = false;
        let mut limited = false;
        let mut lagging = false;
        let mut stalled = false;
        loop {
            if c.wal.as_ref().is_some_and(|w| w.is_full()) && !c.paused {
                c.paused = true;
                self.counters
                    .buffer_full_pauses
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    container = c.key,
                    "disk buffer full: reading paused (the container blocks when its pipe fills)"
                );
            }
            if c.paused {
                break;
            }
            let st = &mut c.streams[idx];
            if st.shared.lag() >= max_lag {
                self.counters
                    .unparsed_pauses
                    .fetch_add(1, Ordering::Relaxed);
                lagging = true;
                break;
            }
            let chunk: u64 = std::env::var("REIN_EXP_CHUNK")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(SPLICE_CHUNK);
            let allow = c.bucket.as_mut().map_or(chunk, |b| {
                b.refill();
                b.available().min(chunk)
            });
            if allow == 0 {
                self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                limited = true;
                break;
            }
            // Parsed streams are rotated at a line end only (a record never spans files).
            let res = if st.shared.parses {
                st.splice_for_rotation(&self.scratch, &mut self.peek, allow, rotate_max)
            } else {
                let r = st.splice(allow);
                st.rotate_due = st.file_len >= rotate_max;
                r
            };
            let step = match res {
                Ok(Splice::Moved(n)) => n,
                Ok(Splice::Empty) => break,
                Ok(Splice::Eof) => {
                    eof = true;
                    break;
                }
                Err(e) => {
                    // Never close the stream for it: the container would get EPIPE
                    // once the supervisor lets go. Its pipe waits; retried later.
                    let d = st.stall();
                    self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(path = %st.path.display(), "writing the sandbox file: {e}; retrying in {d:?} (the container blocks once its pipe is full)");
                    stalled = true;
                    break;
                }
            };
            if st.stalled.take().is_some() {
                tracing::info!(path = %st.path.display(), "writing the sandbox file again");
            }
            moved += step;
            if let Some(b) = c.bucket.as_mut() {
                b.tokens -= step as f64;
            }
            if st.rotate_due {
                match st.rotate(self.cfg.rotate_keep) {
                    Ok(()) => {
                        self.counters.rotations.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::error!(path = %st.path.display(), "rotation failed: {e}"),
                }
                self.parser.wake();
            }
            if moved >= FAIR_SHARE {
                break;
            }
        }
        self.parser.wake();
        let st = &mut c.streams[idx];
        // Blocked (rate limit, full buffer, parser too far behind) or finished: stop
        // watching until the next tick re-arms. A stream that only used up its fair
        // share stays armed: level-triggered epoll reports it again after the others.
        if (eof || limited || lagging || stalled || c.paused) && st.armed {
            if let Some(p) = &st.pipe {
                let _ = epoll_ctl(&self.epoll, libc::EPOLL_CTL_DEL, p.as_raw_fd(), 0);
            }
            st.armed = false;
        }
        self.counters.bytes_read.fetch_add(moved, Ordering::Relaxed);
        if eof {
            st.pipe = None;
            st.shared.pipe_waiting.store(false, Ordering::Relaxed);
            st.shared.eof.store(true, Ordering::Release);
            self.parser.wake();
        }
    }

    fn tick(&mut self) {
        self.retry_old_stages();
        let mut finished = Vec::new();
        let max_lag = self.cfg.max_unparsed_bytes;
        let mut most_behind = 0u64;
        for (&id, c) in self.containers.iter_mut() {
            let full = c.wal.as_ref().is_some_and(|w| w.is_full());
            if full && !c.paused {
                self.counters
                    .buffer_full_pauses
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    container = c.key,
                    "disk buffer full: reading paused (the container blocks when its pipe fills)"
                );
            }
            c.paused = full;
            if let Some(b) = c.bucket.as_mut() {
                b.refill();
            }
            let limited = c.bucket.as_ref().is_some_and(|b| b.available() == 0);
            for (i, st) in c.streams.iter_mut().enumerate() {
                let lag = st.shared.lag();
                most_behind = most_behind.max(lag);
                let blocked = c.paused
                    || limited
                    || lag >= max_lag
                    || st.stalled_now()
                    || c.old_stages.is_some();
                if let Some(p) = st.pipe.as_ref().filter(|_| !st.armed && !blocked) {
                    let token = id * 2 + i as u64;
                    if epoll_ctl(&self.epoll, libc::EPOLL_CTL_ADD, p.as_raw_fd(), token).is_ok() {
                        st.armed = true;
                    }
                }
                // Tells the parser whether a partial line may still be completed.
                if let Some(p) = &st.pipe {
                    st.shared
                        .pipe_waiting
                        .store(pipe_pending(p) > 0, Ordering::Relaxed);
                }
            }
            if c.streams.iter().all(|s| s.pipe.is_none()) && c.finished.load(Ordering::Acquire) {
                finished.push(id);
            }
        }
        self.schedule_parser(most_behind);
        for id in finished {
            if let Some(c) = self.containers.remove(&id) {
                self.keys.remove(&c.key);
                let _ = proto::send_with_fds(
                    self.control.as_fd(),
                    format!("del\n{}", c.key).as_bytes(),
                    &[],
                );
                let _ = std::fs::remove_dir_all(&c.dir);
                self.counters
                    .containers_live
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
        if self.last_counters.elapsed() >= Duration::from_secs(1) {
            self.save_pending_state();
            self.reserve.top_up();
            self.check_threads();
            self.write_counters();
            self.last_counters = Instant::now();
        }
    }

    /// Idle-only parsing during a burst, full competition beyond it.
    fn schedule_parser(&mut self, most_behind: u64) {
        let tid = self.parser.tid();
        if tid == 0 {
            return;
        }
        if let Some(mode) = self.burst.observe(most_behind, Instant::now()) {
            if let Err(e) = parser_sched::apply(tid, mode) {
                tracing::warn!("parser scheduling {mode:?}: {e}");
            }
            tracing::debug!(most_behind, "parser scheduling: {mode:?}");
            let idle = mode == parser_sched::ParserMode::Idle;
            self.counters
                .parser_idle
                .store(u64::from(idle), Ordering::Relaxed);
            if !idle {
                self.counters
                    .parser_promotions
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn write_counters(&mut self) {
        let unparsed: u64 = self
            .containers
            .values()
            .flat_map(|c| c.streams.iter())
            .map(|s| s.shared.lag())
            .sum();
        self.counters
            .unparsed_bytes
            .store(unparsed, Ordering::Relaxed);
        let buffers: Vec<(&str, &crate::wal::WalStats)> = self
            .sinks
            .iter()
            .map(|(k, s)| (k.name(), s.wal.stats.as_ref()))
            .collect();
        let sinks: Vec<(&str, &SinkStats)> = self
            .sinks
            .iter()
            .map(|(k, s)| (k.name(), s.stats.as_ref()))
            .collect();
        let v = counters::snapshot(&self.counters, &buffers, &sinks);
        // Logged when it starts and stops failing, not every second.
        match counters::write(&self.cfg.state_dir, &v) {
            Err(e) if !self.counters_failing => {
                tracing::warn!("writing counters: {e}");
                self.counters_failing = true;
            }
            Ok(()) if self.counters_failing => {
                tracing::info!("writing counters again");
                self.counters_failing = false;
            }
            _ => {}
        }
    }

    /// Runs until SIGTERM; then saves everything and stops the sinks.
    pub fn run(&mut self) -> Result<(), String> {
        let wals = self
            .sinks
            .iter()
            .map(|(k, s)| (*k, s.wal.clone()))
            .collect();
        if let Err(e) = super::fallback::start(&self.cfg, wals, self.counters.clone()) {
            tracing::error!("fallen-back containers will not be followed: {e}");
        }
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut last_tick = Instant::now();
        while !STOP.load(Ordering::Relaxed) {
            // SAFETY: `events` is a valid buffer of the length passed.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    i32::try_from(events.len()).unwrap_or(256),
                    50,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(format!("epoll_wait: {e}"));
                }
            }
            for ev in events.iter().take(usize::try_from(n).unwrap_or(0)) {
                match ev.u64 {
                    LISTEN => self.accept(),
                    CONTROL => {
                        // The supervisor only talks at start; EOF means it died.
                        match proto::recv_with_fds(self.control.as_fd()) {
                            Ok((m, _)) if m.is_empty() => {
                                tracing::error!(
                                    "supervisor gone: pipes now depend on this process alone"
                                );
                                let _ = epoll_ctl(
                                    &self.epoll,
                                    libc::EPOLL_CTL_DEL,
                                    self.control.as_raw_fd(),
                                    0,
                                );
                                self.orphaned = Some(Instant::now());
                            }
                            _ => {}
                        }
                    }
                    token => self.read(token),
                }
            }
            if last_tick.elapsed() >= Duration::from_millis(50) {
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

    /// Without a supervisor: gives the listening socket and every
    /// container's descriptors to a new one once it waits for them (see
    /// `handover`). True when handed over: this worker must stop reading.
    fn hand_over_if_asked(&mut self) -> bool {
        let Some(last) = self.orphaned else {
            return false;
        };
        if last.elapsed() < super::handover::OFFER_INTERVAL {
            return false;
        }
        self.orphaned = Some(Instant::now());
        // A stream at EOF is handed over as a pipe at EOF (the supervisor
        // holds two pipes per container).
        let mut at_eof = Vec::new();
        let mut list = Vec::with_capacity(self.containers.len());
        for c in self.containers.values() {
            let mut fds = Vec::with_capacity(4);
            for st in &c.streams {
                match &st.pipe {
                    Some(p) => fds.push(p.as_raw_fd()),
                    None => match crate::module::pipe(0) {
                        Ok((r, _)) => {
                            fds.push(r.as_raw_fd());
                            at_eof.push(r);
                        }
                        Err(e) => {
                            tracing::warn!("handover: {e}; trying again");
                            return false;
                        }
                    },
                }
            }
            if c.streams.iter().all(|s| s.stage.is_some()) {
                fds.extend(
                    c.streams
                        .iter()
                        .filter_map(|s| s.stage.as_ref().map(|(r, _)| r.as_raw_fd())),
                );
            }
            list.push((c.key.clone(), fds));
        }
        match super::handover::offer(&self.cfg.state_dir, self.listen.as_fd(), &list) {
            Ok(done) => {
                if done {
                    tracing::warn!(
                        containers = list.len(),
                        "handed every container to a new supervisor; stopping"
                    );
                }
                done
            }
            Err(e) => {
                tracing::error!("handing over to a new supervisor: {e}; still reading every pipe");
                false
            }
        }
    }

    fn shutdown(&mut self) {
        // The parser stops where it is: synced records, then saved offsets.
        self.parser.stop();
        self.write_counters();
        for (_, s) in self.sinks.iter_mut() {
            s.stop.stop();
            s.wal.wake();
        }
        for (_, s) in self.sinks.iter_mut() {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn open_buffer(cfg: &ShipperConfig, name: &str) -> Result<Arc<Wal>, String> {
    Wal::open(WalConfig {
        dir: cfg.state_dir.join("buffer").join(name),
        segment_bytes: cfg.buffer_segment_bytes,
        max_bytes: cfg.buffer_max_bytes,
        fsync_interval: cfg.buffer_fsync_interval,
        policy: cfg.buffer_full_policy,
    })
    .map(Arc::new)
    .map_err(|e| e.to_string())
}

/// Opens a sink's disk buffer, builds the sink with its counters and runs it
/// on a thread named `thread`, contained: after a panic the sink is built
/// again by `make` and reads on from its buffer's acknowledged cursor.
fn start_sink<S: Sink + 'static>(
    cfg: &ShipperConfig,
    kind: SinkKind,
    thread: &'static str,
    counters: &Arc<Counters>,
    make: impl Fn(Arc<SinkStats>) -> Result<S, crate::sink::SinkError> + Send + Sync + 'static,
    run: fn(&mut S, &Wal, &Control),
) -> Result<(SinkKind, SinkHandle), String> {
    let wal = open_buffer(cfg, kind.name())?;
    let stats = Arc::new(SinkStats::default());
    // A configuration the sink refuses stops the worker here, at start.
    let first = Arc::new(Mutex::new(Some(make(stats.clone())?)));
    let make = Arc::new(make);
    let stop = Arc::new(Control::new());
    let spawn = {
        let (wal, stats, stop, counters) =
            (wal.clone(), stats.clone(), stop.clone(), counters.clone());
        move || {
            let (w, st, s, c, m) = (
                wal.clone(),
                stats.clone(),
                stop.clone(),
                counters.clone(),
                make.clone(),
            );
            let mut sink = first
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            std::thread::Builder::new()
                .name(thread.into())
                .spawn(move || {
                    threads::contain(thread, &c.thread_panics_sink, s.stop_flag(), |again| {
                        if again || sink.is_none() {
                            // A panic may have left it in the middle of a request: a new one.
                            sink = None;
                            match m(st.clone()) {
                                Ok(new) => sink = Some(new),
                                Err(e) => {
                                    tracing::error!(thread, "building the sink: {e}");
                                    return;
                                }
                            }
                        }
                        if let Some(sink) = sink.as_mut() {
                            run(sink, &w, &s);
                        }
                    });
                })
        }
    };
    let t = spawn().map_err(io_err("sink thread"))?;
    Ok((
        kind,
        SinkHandle {
            wal,
            stats,
            stop,
            thread: Some(t),
            spawn: SinkSpawner(Box::new(spawn)),
            live: Liveness::new(thread),
        },
    ))
}

/// Gives the supervisor duplicates of both pipes and of new staging pipes
/// (created here), so that neither dies with this process. Without a
/// staging pipe for both streams, the streams splice straight into the file.
fn hand_to_supervisor(control: &OwnedFd, key: &str, streams: &mut [StreamState]) {
    let stages: Vec<_> = streams.iter().map(|_| stream::stage_pipe()).collect();
    let mut fds: Vec<RawFd> = streams
        .iter()
        .filter_map(|s| s.pipe.as_ref().map(AsRawFd::as_raw_fd))
        .collect();
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

/// Tells the supervisor to hold `fds` for container `key` (replacing what it held).
fn send_add(control: &OwnedFd, key: &str, fds: &[RawFd]) {
    if let Err(e) = proto::send_with_fds(control.as_fd(), format!("add\n{key}").as_bytes(), fds) {
        tracing::error!(
            "supervisor unreachable ({e}): a restart of this worker would close container {key}"
        );
    }
}

/// A container key as the module makes them (a flat, reversible file name).
fn valid_key(key: &str) -> bool {
    rein_core::container::ContainerId::from_file_name(key).is_some() && !key.contains('/')
}

/// `checkpoint.json` of a container's two streams.
fn checkpoint_body(streams: &[ParseStream]) -> Vec<u8> {
    let cp = Checkpoint {
        stdout: streams[0].checkpoint(),
        stderr: streams[1].checkpoint(),
    };
    serde_json::to_vec(&cp).unwrap_or_default()
}

/// Writes `path` only if it does not exist yet (an existing one is newer);
/// Ok in both cases.
fn write_new(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    crate::private::write_atomic(&tmp, data)?;
    let res = nix::fcntl::renameat2(
        None,
        &tmp,
        None,
        path,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    );
    match res {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EEXIST) => {
            let _ = std::fs::remove_file(&tmp);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Bytes waiting in a pipe.
fn pipe_pending(p: &OwnedFd) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer we pass.
    if unsafe { libc::ioctl(p.as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
        return 0;
    }
    n
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
