//! The per-module worker thread and how an outcome reaches the C++ promise.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread;

use cxx::UniquePtr;

use crate::bridge::ffi::{
    Completion, ContainerIoView, LaunchInfoView, LimitationView, StatisticsView, StatusView,
};

/// The answer to one call.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// `process::Failure` with this message.
    Failed(String),
    /// `Nothing`.
    Nothing,
    /// `Option<ContainerLaunchInfo>`.
    LaunchInfo(LaunchInfoView),
    /// `ResourceStatistics`.
    Statistics(StatisticsView),
    /// `ContainerStatus`.
    Status(StatusView),
    /// `ContainerLimitation`.
    Limitation(LimitationView),
    /// `ContainerIO`.
    ContainerIo(ContainerIoView),
}

/// Something that can be completed once with an outcome: the shim's promise, or a
/// channel in tests and in the local harness.
pub trait Completer: Send + 'static {
    /// Delivers the outcome.
    fn complete(self: Box<Self>, outcome: Outcome);
}

/// The shim's completion object, moved to the worker thread.
pub(crate) struct CxxCompleter(UniquePtr<Completion>);

// SAFETY: the shim's Completion only fulfils a process::Promise (thread-safe by
// libprocess's contract) and is used by exactly one thread at a time: it is moved,
// never shared.
unsafe impl Send for CxxCompleter {}

impl CxxCompleter {
    pub(crate) fn boxed(done: UniquePtr<Completion>) -> Box<dyn Completer> {
        Box::new(Self(done))
    }
}

impl Completer for CxxCompleter {
    fn complete(mut self: Box<Self>, outcome: Outcome) {
        let Some(done) = self.0.as_mut() else { return };
        match &outcome {
            Outcome::Failed(message) => done.fail(message),
            Outcome::Nothing => done.nothing(),
            // `None` for a launch info that asks nothing: decided here, not in the shim.
            Outcome::LaunchInfo(info) if info.is_empty() => done.nothing(),
            Outcome::LaunchInfo(info) => done.launch_info(info),
            Outcome::Statistics(stats) => done.statistics(stats),
            Outcome::Status(status) => done.status(status),
            Outcome::Limitation(limitation) => done.limitation(limitation),
            Outcome::ContainerIo(io) => done.container_io(io),
        }
    }
}

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A thread owning a module instance `S`; calls run one at a time, in order.
pub(crate) struct Actor<S: ?Sized> {
    tx: mpsc::Sender<Job<S>>,
    name: &'static str,
}

impl<S: ?Sized + Send + 'static> Actor<S> {
    /// Starts the thread.
    pub(crate) fn spawn(name: &'static str, mut state: Box<S>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job<S>>();
        thread::Builder::new()
            .name(format!("rein-{name}"))
            .spawn(move || {
                for job in rx {
                    job(&mut state);
                }
            })?;
        Ok(Self { tx, name })
    }

    /// Queues `work` and completes `done` with its outcome, or with a failure if it
    /// panics. `span` names the call and the container in every log line it makes.
    pub(crate) fn call(
        &self,
        method: &'static str,
        container: String,
        done: Box<dyn Completer>,
        work: impl FnOnce(&mut S) -> Outcome + Send + 'static,
    ) {
        let name = self.name;
        let job: Job<S> = Box::new(move |state: &mut S| {
            run_call(name, method, &container, done, || work(state));
        });
        if let Err(mpsc::SendError(job)) = self.tx.send(job) {
            // The worker is gone (it never is, short of process exit); fail the call
            // rather than leave the agent waiting.
            drop(job);
            tracing::error!(module = name, call = method, "rein worker thread is gone");
        }
    }
}

/// Runs one call: inside a span naming the module, the call and the
/// container; a panic becomes a failure; the outcome completes `done`.
pub(crate) fn run_call(
    name: &'static str,
    method: &'static str,
    container: &str,
    done: Box<dyn Completer>,
    work: impl FnOnce() -> Outcome,
) {
    let span = tracing::info_span!("rein", module = name, call = method, container = %container);
    let _entered = span.enter();
    let outcome = catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let message = format!(
            "rein {name} panicked in {method}: {}",
            panic_message(&*panic)
        );
        tracing::error!("{message}");
        Outcome::Failed(message)
    });
    deliver(done, outcome);
}

/// Completes, containing a panic in the completion itself.
pub(crate) fn deliver(done: Box<dyn Completer>, outcome: Outcome) {
    if catch_unwind(AssertUnwindSafe(|| done.complete(outcome))).is_err() {
        tracing::error!("rein: completing a call panicked");
    }
}

/// Runs a module's constructor; a panic or an error becomes the message the shim
/// reports to the agent (text: it crosses the bridge as a `rust::String`),
/// prefixed with the module's name and with the error's causes.
pub(crate) fn construct<T, E>(
    name: &str,
    build: impl FnOnce() -> Result<T, E> + std::panic::UnwindSafe,
) -> Result<T, String>
where
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    catch_unwind(build)
        .map_err(|panic| {
            format!(
                "rein {name}: panicked while starting: {}",
                panic_message(&*panic)
            )
        })?
        .map_err(|err| format!("rein {name}: {}", error_chain(&*err.into())))
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// An error's message with its causes, as one line.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
