//! `LoggerHandle`: what the shim's `ContainerLogger` subclass holds and forwards to.
//!
//! Unlike the isolators' single thread, `prepare` calls run on a small pool:
//! each may wait up to `shipper_timeout` for the shipper, and launches must
//! not queue behind one another while it does (the module's breaker then
//! makes the later ones fall back without waiting at all).

use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use cxx::UniquePtr;
use rein_log_module::module::LoggerModule;

use crate::actor::{construct, error_chain, run_call, Completer, CxxCompleter, Outcome};
use crate::bridge::ffi::{Completion, ContainerConfigView, ContainerIoView, KeyValue};
use crate::convert;
use crate::logger_ahead::{self, Job};

/// Threads running `prepare` calls side by side.
pub const PREPARE_THREADS: usize = 16;

/// One logger instance (the Docker containerizer makes a second one in the same
/// process; instances share nothing but the shipper they talk to).
pub struct LoggerHandle {
    jobs: mpsc::Sender<Job>,
    /// This instance, for [`logger_ahead`].
    instance: u64,
    /// Its module parameters: an early registration made by another instance
    /// is only taken with the same ones.
    params: Vec<(String, String)>,
}

/// Creates the logger; a bad parameter is an error the shim reports to the agent.
pub fn create_logger(parameters: &[KeyValue]) -> Result<Box<LoggerHandle>, String> {
    let params = convert::parameters(parameters).map_err(|e| format!("rein logger: {e}"))?;
    let module = construct("logger", || LoggerModule::new(&params))?;
    let module = Arc::new(module);
    let (jobs, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..PREPARE_THREADS {
        let (module, rx) = (Arc::clone(&module), Arc::clone(&rx));
        std::thread::Builder::new()
            .name(format!("rein-logger-{i}"))
            .spawn(move || loop {
                // The lock is held only while taking a job, never while running it.
                let job = rx
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .recv();
                match job {
                    Ok(job) => job(&module),
                    Err(mpsc::RecvError) => return,
                }
            })
            .map_err(|e| format!("rein logger: starting its threads: {e}"))?;
    }
    static INSTANCES: AtomicU64 = AtomicU64::new(0);
    let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
    logger_ahead::offer(instance, &params, &jobs);
    Ok(Box::new(LoggerHandle {
        jobs,
        instance,
        params,
    }))
}

impl Drop for LoggerHandle {
    fn drop(&mut self) {
        logger_ahead::withdraw(self.instance);
    }
}

impl LoggerHandle {
    /// `prepare()`, completing any [`Completer`] with the container's descriptors.
    /// Answered at once when the isolators started it early ([`logger_ahead`]).
    pub fn prepare_with(&self, config: ContainerConfigView, done: Box<dyn Completer>) {
        let Err(done) = logger_ahead::claim(&self.params, &config, done) else {
            return;
        };
        let text = config.container.text();
        let job: Job = Box::new(move |logger: &LoggerModule| {
            run_call("logger", "prepare", &text, done, || {
                let spec = match convert::container_spec(config) {
                    Ok(spec) => spec,
                    Err(e) => return Outcome::Failed(e.to_string()),
                };
                match logger.prepare(&spec) {
                    Ok(io) => Outcome::ContainerIo(ContainerIoView {
                        stdout_fd: io.stdout.into_raw_fd(),
                        stderr_fd: io.stderr.into_raw_fd(),
                    }),
                    Err(e) => Outcome::Failed(error_chain(&e)),
                }
            });
        });
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            // The threads are gone (they never are, short of process exit):
            // dropping the completion fails the call rather than leave the
            // agent waiting.
            drop(job);
            tracing::error!(
                module = "logger",
                call = "prepare",
                "rein logger threads are gone"
            );
        }
    }

    pub(crate) fn prepare(&self, config: ContainerConfigView, done: UniquePtr<Completion>) {
        self.prepare_with(config, CxxCompleter::boxed(done));
    }
}
