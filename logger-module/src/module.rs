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

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use rein_core::config::{ConfigError, TaskConfig};
use rein_core::container::{ids_from_sandbox, ContainerSpec};
use rein_core::params::ParamError;

use crate::breaker::Breaker;
use crate::fallback::FallbackRecord;
pub use crate::handoff::{register, HandoffError};
use crate::proto::{Registration, SourceMeta};
use crate::sandbox::{FileId, SandboxDir};
pub use crate::settings::{
    compile_pattern, ModuleConfig, PatternError, DEFAULT_SOCKET, MAX_SHIPPER_TIMEOUT, PARAMS,
};

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
