//! `LoggerHandle`: what the shim's `ContainerLogger` subclass holds and forwards to.
//!
//! Unlike the isolators' calls, `prepare` calls run on a small pool of their own:
//! each may wait up to `shipper_timeout` for the shipper, and launches must
//! not queue behind one another while it does (the module's breaker then
//! makes the later ones fall back without waiting at all). Its threads start as
//! calls wait for one, up to [`PREPARE_THREADS`]: an agent launching one task
//! at a time keeps one or two, not sixteen idle threads in its process.

use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use cxx::UniquePtr;
use rein_log_module::module::{ContainerIo, LoggerModule};

use crate::actor::{construct, error_chain, run_call, Completer, CxxCompleter, Outcome};
use crate::bridge::ffi::{Completion, ContainerConfigView, ContainerIoView, KeyValue};
use crate::convert;
use crate::logger_ahead::{self, Job};

/// Threads running `prepare` calls side by side, at most.
pub const PREPARE_THREADS: usize = 16;

/// One logger instance (the Docker containerizer makes a second one in the same
/// process; instances share nothing but the shipper they talk to).
pub struct LoggerHandle {
    pool: Arc<PreparePool>,
    /// This instance, for [`logger_ahead`].
    instance: u64,
    /// Its module parameters: an early registration made by another instance
    /// is only taken with the same ones.
    params: Vec<(String, String)>,
}

/// The threads running a logger's `prepare` calls.
pub(crate) struct PreparePool {
    jobs: mpsc::Sender<Job>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    module: Arc<LoggerModule>,
    /// Jobs sent and not yet taken by a thread.
    waiting: Arc<AtomicUsize>,
    /// Threads waiting for a job.
    idle: Arc<AtomicUsize>,
    started: AtomicUsize,
}

impl PreparePool {
    fn new(module: LoggerModule) -> Result<Self, String> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let pool = PreparePool {
            jobs,
            rx: Arc::new(Mutex::new(rx)),
            module: Arc::new(module),
            waiting: Arc::default(),
            idle: Arc::default(),
            started: AtomicUsize::new(0),
        };
        pool.add_thread()
            .map_err(|e| format!("rein logger: starting its thread: {e}"))?;
        Ok(pool)
    }

    /// Queues `job`; starts a thread if the jobs waiting outnumber the idle
    /// threads (more than needed in a race, never fewer).
    pub(crate) fn submit(&self, job: Job) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            // The threads are gone (they never are, short of process exit):
            // dropping the completion fails the call rather than leave the
            // agent waiting.
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            drop(job);
            tracing::error!(module = "logger", "rein logger threads are gone");
            return;
        }
        if self.waiting.load(Ordering::SeqCst) > self.idle.load(Ordering::SeqCst)
            && self.started.load(Ordering::SeqCst) < PREPARE_THREADS
        {
            if let Err(e) = self.add_thread() {
                // The job waits for a thread already running.
                tracing::warn!(module = "logger", "starting another prepare thread: {e}");
            }
        }
    }

    fn add_thread(&self) -> std::io::Result<()> {
        let i = self.started.fetch_add(1, Ordering::SeqCst);
        if i >= PREPARE_THREADS {
            self.started.fetch_sub(1, Ordering::SeqCst);
            return Ok(());
        }
        let (rx, module) = (Arc::clone(&self.rx), Arc::clone(&self.module));
        let (waiting, idle) = (Arc::clone(&self.waiting), Arc::clone(&self.idle));
        let spawned = std::thread::Builder::new()
            .name(format!("rein-logger-{i}"))
            .spawn(move || loop {
                idle.fetch_add(1, Ordering::SeqCst);
                // The lock is held only while taking a job, never while running it.
                let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                idle.fetch_sub(1, Ordering::SeqCst);
                match job {
                    Ok(job) => {
                        waiting.fetch_sub(1, Ordering::SeqCst);
                        job(&module);
                    }
                    Err(mpsc::RecvError) => return,
                }
            });
        if spawned.is_err() {
            self.started.fetch_sub(1, Ordering::SeqCst);
        }
        spawned.map(drop)
    }

    /// Threads started so far.
    pub(crate) fn threads(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

/// The logger's `prepare` for `config`: the container's descriptors, or why not.
pub(crate) fn prepare_io(
    logger: &LoggerModule,
    config: ContainerConfigView,
) -> Result<ContainerIo, String> {
    let spec = convert::container_spec(config).map_err(|e| e.to_string())?;
    logger.prepare(&spec).map_err(|e| error_chain(&e))
}

/// The answer to the shim: the descriptors pass to the containerizer.
pub(crate) fn io_outcome(result: Result<ContainerIo, String>) -> Outcome {
    match result {
        Ok(io) => Outcome::ContainerIo(ContainerIoView {
            stdout_fd: io.stdout.into_raw_fd(),
            stderr_fd: io.stderr.into_raw_fd(),
        }),
        Err(message) => Outcome::Failed(message),
    }
}

/// Creates the logger; a bad parameter is an error the shim reports to the agent.
pub fn create_logger(parameters: &[KeyValue]) -> Result<Box<LoggerHandle>, String> {
    let params = convert::parameters(parameters).map_err(|e| format!("rein logger: {e}"))?;
    let module = construct("logger", || LoggerModule::new(&params))?;
    let pool = Arc::new(PreparePool::new(module)?);
    static INSTANCES: AtomicU64 = AtomicU64::new(0);
    let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
    logger_ahead::offer(instance, &params, &pool);
    Ok(Box::new(LoggerHandle {
        pool,
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
                io_outcome(prepare_io(logger, config))
            });
        });
        self.pool.submit(job);
    }

    /// Threads its `prepare` calls have started so far.
    pub fn prepare_threads(&self) -> usize {
        self.pool.threads()
    }

    pub(crate) fn prepare(&self, config: ContainerConfigView, done: UniquePtr<Completion>) {
        self.prepare_with(config, CxxCompleter::boxed(done));
    }
}
