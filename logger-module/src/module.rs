//! The agent side: `LoggerModule::prepare` gives a container the write ends
//! of two pipes and hands the read ends to the per-agent shipper over its
//! unix socket. The module keeps no container in memory: an agent restart
//! changes nothing for running containers, and two instances (the Docker
//! containerizer makes its own) share no state.
//!
//! If the shipper does not take the container within `shipper_timeout` (one
//! deadline for connecting, sending and the answer), the container still
//! gets working descriptors: new sandbox `stdout`/`stderr` files, created
//! relative to the sandbox directory (no task-planted name followed) and
//! opened for appending. A warning and a root-only record next to the
//! shipper's socket say so (`fallback`); from that record the shipper follows
//! and ships those files once it runs (`shipper::fallback`). A timeout opens
//! the module's circuit breaker (`breaker`): later launches fall back at once,
//! without waiting, until a background probe finds the shipper answering
//! again. `prepare` may run on many threads at once: nothing in it waits for
//! another launch.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use rein_core::config::{ConfigError, TaskConfig};
use rein_core::container::{ids_from_sandbox, ContainerSpec};
use rein_core::params::{ParamError, Params};

use crate::breaker::Breaker;
use crate::fallback::FallbackRecord;
pub use crate::handoff::{register, HandoffError};
use crate::proto::{ContainerOptions, MultilineSpec, Registration, SinkKind, SourceMeta};
use crate::route::{check_prefix, validate_index, validate_stream, validate_topic};
use crate::sandbox::{FileId, SandboxDir};

/// Default path of the shipper's socket.
pub const DEFAULT_SOCKET: &str = "/run/rein/log-shipper.sock";

/// Longest `shipper_timeout` accepted: a launch never waits longer for the
/// shipper (and `0s` would mean waiting forever).
pub const MAX_SHIPPER_TIMEOUT: Duration = Duration::from_secs(60);

/// Every module parameter (see the README for each).
pub const PARAMS: &[&str] = &[
    "shipper_socket",
    "shipper_timeout",
    "default_sink",
    "allowed_sinks",
    "allowed_index_prefixes",
    "allowed_topic_prefixes",
    "allowed_redis_stream_prefixes",
    "default_rate_limit",
    "max_rate_limit",
    "multiline_max_lines",
    "multiline_max_bytes",
    "multiline_max_timeout",
    "pipe_buffer_bytes",
];

/// Errors of the module.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// A module parameter is wrong.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// A label or variable of the task is wrong or above a cap.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The container's descriptors could not be made.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// The container's output descriptors (write ends; ownership passes to Mesos).
#[derive(Debug)]
pub struct ContainerIo {
    /// Standard output.
    pub stdout: OwnedFd,
    /// Standard error.
    pub stderr: OwnedFd,
    /// True when the shipper took the container; false when the descriptors
    /// are the sandbox files themselves (shipper unreachable).
    pub shipped: bool,
}

/// Operator settings of the module.
#[derive(Clone, Debug)]
pub struct ModuleConfig {
    /// `shipper_socket`: the shipper's unix socket.
    pub socket: PathBuf,
    /// `shipper_timeout`: longest wait for the shipper in `prepare`, all steps
    /// together (default 1s, above 0 and at most [`MAX_SHIPPER_TIMEOUT`]).
    pub timeout: Duration,
    /// `default_sink`: sink of containers that choose none (default elasticsearch).
    pub default_sink: SinkKind,
    /// `allowed_sinks`: sinks a task may choose (default elasticsearch,none).
    pub allowed_sinks: Vec<SinkKind>,
    /// `allowed_index_prefixes`: a task's `log.index` must start with one (empty: any).
    pub index_prefixes: Vec<String>,
    /// `allowed_topic_prefixes`: a task's `log.topic` must start with one (empty: any).
    pub topic_prefixes: Vec<String>,
    /// `allowed_redis_stream_prefixes`: a task's `log.redis_stream` must start with one (empty: any).
    pub redis_stream_prefixes: Vec<String>,
    /// `default_rate_limit`: bytes/s per container when the task sets none (0: unlimited).
    pub default_rate_limit: u64,
    /// `max_rate_limit`: cap of `log.rate_limit` (none by default).
    pub max_rate_limit: Option<u64>,
    /// `multiline_max_lines`: cap of `log.multiline.max_lines` (default 500).
    pub ml_max_lines: u64,
    /// `multiline_max_bytes`: cap of `log.multiline.max_bytes` (default 1MiB).
    pub ml_max_bytes: u64,
    /// `multiline_max_timeout`: cap of `log.multiline.timeout` (default 10s).
    pub ml_max_timeout: Duration,
    /// `pipe_buffer_bytes`: capacity asked for each pipe (default 1MiB; best effort).
    pub pipe_buffer: u64,
}

impl ModuleConfig {
    /// Reads and checks the parameters.
    pub fn from_params(pairs: &[(String, String)]) -> Result<Self, LoggerError> {
        let p = Params::new(pairs, PARAMS)?;
        let sink = |name: &str, v: &str| {
            SinkKind::parse(v)
                .ok_or_else(|| p.error(name, "expected elasticsearch, kafka, redis or none"))
        };
        let default_sink = sink(
            "default_sink",
            p.raw("default_sink").unwrap_or("elasticsearch"),
        )?;
        let mut allowed_sinks = Vec::new();
        let list = p.list("allowed_sinks");
        if list.is_empty() {
            allowed_sinks = vec![SinkKind::Elasticsearch, SinkKind::None];
        }
        for s in &list {
            allowed_sinks.push(sink("allowed_sinks", s)?);
        }
        if !allowed_sinks.contains(&default_sink) {
            return Err(p.error("default_sink", "not among allowed_sinks").into());
        }
        Ok(ModuleConfig {
            socket: p
                .path("shipper_socket")?
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            timeout: shipper_timeout(&p)?,
            default_sink,
            allowed_sinks,
            index_prefixes: p.list("allowed_index_prefixes"),
            topic_prefixes: p.list("allowed_topic_prefixes"),
            redis_stream_prefixes: p.list("allowed_redis_stream_prefixes"),
            default_rate_limit: p.byte_rate("default_rate_limit")?.unwrap_or(0),
            max_rate_limit: p.byte_rate("max_rate_limit")?,
            ml_max_lines: p.u64("multiline_max_lines")?.unwrap_or(500),
            ml_max_bytes: p.bytes("multiline_max_bytes")?.unwrap_or(1 << 20),
            ml_max_timeout: p
                .duration("multiline_max_timeout")?
                .unwrap_or(Duration::from_secs(10)),
            pipe_buffer: p.bytes("pipe_buffer_bytes")?.unwrap_or(1 << 20),
        })
    }

    /// The container's options from its labels/variables, within the caps.
    pub fn options(&self, cfg: &TaskConfig) -> Result<ContainerOptions, ConfigError> {
        let sink = match cfg.get("log.sink") {
            Some(s) => {
                let k = SinkKind::parse(&s.raw).ok_or_else(|| s.error("unknown sink"))?;
                if !self.allowed_sinks.contains(&k) {
                    let names: Vec<&str> = self.allowed_sinks.iter().map(|k| k.name()).collect();
                    return Err(s.error(format!("this agent allows only: {}", names.join(", "))));
                }
                k
            }
            None => self.default_sink,
        };
        let mut route = String::new();
        if let Some(s) = cfg
            .get("log.index")
            .filter(|_| sink == SinkKind::Elasticsearch)
        {
            validate_index(&s.raw).map_err(|e| s.error(e))?;
            check_prefix(&s.raw, &self.index_prefixes).map_err(|e| s.error(e))?;
            route = s.raw.clone();
        }
        if let Some(s) = cfg.get("log.topic").filter(|_| sink == SinkKind::Kafka) {
            validate_topic(&s.raw).map_err(|e| s.error(e))?;
            check_prefix(&s.raw, &self.topic_prefixes).map_err(|e| s.error(e))?;
            route = s.raw.clone();
        }
        if let Some(s) = cfg
            .get("log.redis_stream")
            .filter(|_| sink == SinkKind::Redis)
        {
            validate_stream(&s.raw).map_err(|e| s.error(e))?;
            check_prefix(&s.raw, &self.redis_stream_prefixes).map_err(|e| s.error(e))?;
            route = s.raw.clone();
        }
        let pattern = cfg.get("log.multiline.pattern");
        let mode = cfg.get("log.multiline");
        let multiline = match (mode.map(|m| m.raw.as_str()), pattern) {
            (Some("off"), _) | (None, None) => None,
            (_, pattern) => {
                if let Some(p) = pattern {
                    compile_pattern(&p.raw).map_err(|e| p.error(e))?;
                }
                let mut spec = MultilineSpec {
                    pattern: pattern.map(|p| p.raw.clone()),
                    max_lines: 100,
                    max_bytes: 64 * 1024,
                    timeout_ms: 1000,
                };
                if let Some(s) = cfg.get("log.multiline.max_lines") {
                    s.ensure_at_most(Some(self.ml_max_lines), |v| v.to_string())?;
                    spec.max_lines =
                        u32::try_from(cfg.u64("log.multiline.max_lines").unwrap_or(1).max(1))
                            .unwrap_or(u32::MAX);
                }
                if let Some(s) = cfg.get("log.multiline.max_bytes") {
                    s.ensure_at_most(Some(self.ml_max_bytes), |v| format!("{v} bytes"))?;
                    spec.max_bytes = cfg.u64("log.multiline.max_bytes").unwrap_or(1).max(1);
                }
                if let Some(s) = cfg.get("log.multiline.timeout") {
                    if let rein_core::config::Value::Duration(d) = s.value {
                        if d > self.ml_max_timeout {
                            return Err(s.error(format!(
                                "above the operator's cap of {:?}",
                                self.ml_max_timeout
                            )));
                        }
                        spec.timeout_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
                    }
                }
                spec.max_lines = spec
                    .max_lines
                    .min(u32::try_from(self.ml_max_lines).unwrap_or(u32::MAX));
                spec.max_bytes = spec.max_bytes.min(self.ml_max_bytes);
                Some(spec)
            }
        };
        let rate_limit = match cfg.get("log.rate_limit") {
            Some(s) => {
                s.ensure_at_most(self.max_rate_limit, |v| format!("{v} bytes/s"))?;
                cfg.u64("log.rate_limit").unwrap_or(0)
            }
            None => self.default_rate_limit,
        };
        Ok(ContainerOptions {
            sink,
            route,
            multiline,
            rate_limit,
        })
    }
}

/// `shipper_timeout`: refused when 0 (it would make launches wait forever
/// for a wedged shipper) or above [`MAX_SHIPPER_TIMEOUT`].
fn shipper_timeout(p: &Params) -> Result<Duration, ParamError> {
    let t = p
        .duration("shipper_timeout")?
        .unwrap_or(Duration::from_secs(1));
    if t.is_zero() || t > MAX_SHIPPER_TIMEOUT {
        return Err(p.error(
            "shipper_timeout",
            format!(
                "must be above 0 and at most {MAX_SHIPPER_TIMEOUT:?} (a launch waits that long at most for the shipper)"
            ),
        ));
    }
    Ok(t)
}

/// A task's multiline pattern that does not compile within the limits.
#[derive(Debug, thiserror::Error)]
#[error("invalid pattern: {0}")]
pub struct PatternError(#[from] regex::Error);

/// The label's error takes the same message.
impl From<PatternError> for String {
    fn from(e: PatternError) -> String {
        e.to_string()
    }
}

/// Compiles a task's multiline pattern with size limits (linear-time engine).
pub fn compile_pattern(p: &str) -> Result<regex::bytes::Regex, PatternError> {
    Ok(regex::bytes::RegexBuilder::new(p)
        .size_limit(256 * 1024)
        .dfa_size_limit(512 * 1024)
        .nest_limit(32)
        .build()?)
}

/// The container logger module (one per `--container_logger` instance).
#[derive(Debug)]
pub struct LoggerModule {
    cfg: ModuleConfig,
    breaker: Breaker,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LoggerError {
    let what = what.into();
    move |source| LoggerError::Io { what, source }
}

impl LoggerModule {
    /// Creates the module from its parameters.
    pub fn new(params: &[(String, String)]) -> Result<Self, LoggerError> {
        let cfg = ModuleConfig::from_params(params)?;
        let breaker = Breaker::new(cfg.socket.clone(), cfg.timeout);
        Ok(LoggerModule { cfg, breaker })
    }

    /// The operator settings.
    pub fn config(&self) -> &ModuleConfig {
        &self.cfg
    }

    /// True while the shipper is taken as wedged (launches fall back at once).
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Builds the registration of a container (labels parsed and checked).
    pub fn registration(&self, spec: &ContainerSpec) -> Result<Registration, LoggerError> {
        let cfg = TaskConfig::parse(spec)?;
        let options = self.cfg.options(&cfg)?;
        let from_path = ids_from_sandbox(&spec.sandbox);
        let meta = SourceMeta {
            container_chain: spec.id.chain().to_vec(),
            agent_id: spec
                .agent_id
                .clone()
                .or_else(|| from_path.as_ref().map(|p| p.0.clone())),
            framework_id: spec
                .framework_id
                .clone()
                .or_else(|| from_path.as_ref().map(|p| p.1.clone())),
            executor_id: spec
                .executor_id
                .clone()
                .or_else(|| from_path.as_ref().map(|p| p.2.clone())),
            task_id: spec.task_id.clone(),
            task_name: spec.task_name.clone(),
            executor_labels: spec.executor_labels.clone(),
            task_labels: spec.task_labels.clone(),
            sandbox: spec.sandbox.clone(),
        };
        Ok(Registration {
            version: 1,
            key: spec.id.file_name(),
            meta,
            options,
            sandbox: spec.sandbox.clone(),
        })
    }

    /// Gives the container its stdout/stderr. Never blocks longer than
    /// `shipper_timeout`, and not at all while the breaker is open; fails only
    /// on bad labels or when no descriptor at all can be made.
    pub fn prepare(&self, spec: &ContainerSpec) -> Result<ContainerIo, LoggerError> {
        let reg = self.registration(spec)?;
        let (out_r, out_w) = pipe(self.cfg.pipe_buffer).map_err(io("creating the stdout pipe"))?;
        let (err_r, err_w) = pipe(self.cfg.pipe_buffer).map_err(io("creating the stderr pipe"))?;
        let why = match self.breaker.open_reason() {
            Some(why) => why,
            None => {
                let outcome = register(&self.cfg.socket, &reg, &out_r, &err_r, self.cfg.timeout);
                self.breaker.observe(&outcome);
                match outcome {
                    Ok(()) => {
                        return Ok(ContainerIo {
                            stdout: out_w,
                            stderr: err_w,
                            shipped: true,
                        })
                    }
                    Err(e) => format!("log shipper: {e}"),
                }
            }
        };
        drop((out_r, out_w, err_r, err_w));
        self.fall_back(spec, reg, why)
    }

    /// The container writes new sandbox files of its own; recorded and logged.
    fn fall_back(
        &self,
        spec: &ContainerSpec,
        registration: Registration,
        why: String,
    ) -> Result<ContainerIo, LoggerError> {
        let dir = SandboxDir::open(&spec.sandbox).map_err(io(format!(
            "opening the sandbox {}",
            spec.sandbox.display()
        )))?;
        let (stdout, out_id) = new_sandbox_file(&dir, "stdout")?;
        let (stderr, err_id) = new_sandbox_file(&dir, "stderr")?;
        let rec = FallbackRecord {
            version: crate::fallback::VERSION,
            key: registration.key.clone(),
            sandbox: spec.sandbox.clone(),
            reason: why.clone(),
            at_ms: crate::fallback::now_ms(),
            files: [out_id, err_id],
            registration,
        };
        let recorded = crate::fallback::record(&self.cfg.socket, &rec);
        tracing::warn!(
            container = %spec.id,
            socket = %self.cfg.socket.display(),
            record = %recorded.as_deref().map_or_else(|| "none".into(), |p| p.display().to_string()),
            fallbacks_so_far = {
                let (recorded, unrecorded) = crate::fallback::module_counts();
                recorded + unrecorded
            },
            "{why}; the container writes its sandbox files directly and its records are not shipped"
        );
        Ok(ContainerIo {
            stdout,
            stderr,
            shipped: false,
        })
    }
}

/// A new file of the agent's at `name` in the sandbox, opened for appending:
/// whatever a task put at that name is refused, never followed (the agent
/// runs as root).
fn new_sandbox_file(dir: &SandboxDir, name: &str) -> Result<(OwnedFd, FileId), LoggerError> {
    let what = || format!("creating {}", dir.path().join(name).display());
    let (f, id) = dir.create(name, &mut |_, _| {}).map_err(io(what()))?;
    let fd = OwnedFd::from(f);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_APPEND)).map_err(|e| io(what())(e.into()))?;
    Ok((fd, id))
}

/// A close-on-exec pipe with (best effort) `size` bytes of buffer.
pub fn pipe(size: u64) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    if size > 0 {
        let sz = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // Failure (above the system limit) is harmless: the default size stays.
        let _ = fcntl(w.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(sz));
    }
    Ok((r, w))
}
