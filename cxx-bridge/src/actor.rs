//! A module's calls, queued to the worker threads, and how an outcome reaches the
//! C++ promise.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use cxx::UniquePtr;
use rein_core::state::{defer_removals, defer_saves, Saves};

use crate::bridge::ffi::{
    Completion, ContainerIoView, LaunchInfoView, LimitationView, StatisticsView, StatusView,
};
use crate::pool::Mailbox;

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

/// A module instance `S` whose calls run one at a time, in order, on the shared
/// worker threads ([`crate::pool`]), never on the caller's.
pub(crate) struct Actor<S: ?Sized + Send + 'static> {
    mailbox: Arc<Mailbox<S>>,
    name: &'static str,
}

impl<S: ?Sized + Send + 'static> Actor<S> {
    /// Takes the module in (and adds a worker thread for it).
    pub(crate) fn spawn(name: &'static str, state: Box<S>) -> std::io::Result<Self> {
        Ok(Self {
            mailbox: Mailbox::start(name, state)?,
            name,
        })
    }

    /// Queues `work` and completes `done` with its outcome, or with a failure if it
    /// panics. `span` names the call and the container in every log line it makes.
    /// With [`Records::RemoveAfterAnswer`], the state records `work` removes are
    /// removed only after `done` is completed ([`run_call_removing_after`]); with
    /// [`Records::SaveAfterAnswer`], those it saves are written after `done` is
    /// completed and before the module's next call ([`run_call_deferring_saves`],
    /// [`write_saves`]).
    pub(crate) fn call(
        &self,
        method: &'static str,
        container: String,
        done: Box<dyn Completer>,
        records: Records,
        work: impl FnOnce(&mut S) -> Outcome + Send + 'static,
    ) {
        let name = self.name;
        let mailbox = Arc::downgrade(&self.mailbox);
        self.mailbox.send(Box::new(move |state: &mut S| {
            let work = || work(state);
            match records {
                Records::InCall => run_call(name, method, &container, done, work),
                Records::RemoveAfterAnswer => {
                    run_call_removing_after(name, method, &container, done, work);
                }
                Records::SaveAfterAnswer(unsaved) => {
                    let saves = run_call_deferring_saves(name, method, &container, done, work);
                    if saves.is_empty() {
                        unsaved(None);
                        return;
                    }
                    let write =
                        move |_: &mut S| write_saves(name, method, &container, saves, unsaved);
                    match mailbox.upgrade() {
                        Some(mailbox) => mailbox.send_first(Box::new(write)),
                        // The pool holds the mailbox while its call runs: not reached.
                        None => write(state),
                    }
                }
            }
        }));
    }
}

impl<S: ?Sized + Send + 'static> Actor<S> {
    /// Queues `work` that answers nobody (what a call leaves to do after its
    /// answer, e.g. [`rein_core::Isolator::after_answer`]); a panic in it is
    /// contained and logged.
    pub(crate) fn after(&self, what: &'static str, work: impl FnOnce(&mut S) + Send + 'static) {
        let name = self.name;
        self.mailbox.send(Box::new(move |state: &mut S| {
            let _ = after_answer_lane(|| guarded(name, what, "", || work(state)));
        }));
    }
}

/// Runs work left for after an answer, one at a time in the process: such work
/// (records written, spare cgroups made) keeps at most one CPU busy, so the thread
/// an answer woke (the agent's continuation) finds another free rather than
/// waiting behind it; the calls themselves still run side by side.
fn after_answer_lane<R>(work: impl FnOnce() -> R) -> R {
    static LANE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = LANE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    work()
}

/// When a call's writes and removals of state records happen.
pub(crate) enum Records {
    /// As the module makes them.
    InCall,
    /// Removals after the answer ([`run_call_removing_after`]).
    RemoveAfterAnswer,
    /// Writes after the answer ([`run_call_deferring_saves`]); what could not be
    /// written is handed to the function, as one message ([`write_saves`]).
    SaveAfterAnswer(Box<dyn FnOnce(Option<String>) + Send>),
}

impl<S: ?Sized + Send + 'static> Drop for Actor<S> {
    /// The module is dropped after the calls already queued, on a worker thread.
    fn drop(&mut self) {
        self.mailbox.close();
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
    let outcome = guarded(name, method, container, work).unwrap_or_else(Outcome::Failed);
    deliver(done, outcome);
}

/// Runs a module's work inside a span naming the module, the call and the
/// container; a panic becomes `Err` with the message the agent is given (and logged).
pub(crate) fn guarded<T>(
    name: &'static str,
    method: &'static str,
    container: &str,
    work: impl FnOnce() -> T,
) -> Result<T, String> {
    let span = tracing::info_span!("rein", module = name, call = method, container = %container);
    let _entered = span.enter();
    catch_unwind(AssertUnwindSafe(work)).map_err(|panic| {
        let message = format!(
            "rein {name} panicked in {method}: {}",
            panic_message(&*panic)
        );
        tracing::error!("{message}");
        message
    })
}

/// As [`run_call`], with the removal of the state records the call removes put off
/// until its answer is delivered ([`defer_removals`]) and handed to the janitor: an
/// unlink on a busy disk costs hundreds of microseconds that neither the agent nor
/// the module's next call need wait for. One that fails is logged; the record is
/// then one of a container the agent no longer knows, released by `recover()`.
pub(crate) fn run_call_removing_after(
    name: &'static str,
    method: &'static str,
    container: &str,
    done: Box<dyn Completer>,
    work: impl FnOnce() -> Outcome,
) {
    let mut removals = None;
    run_call(name, method, container, done, || {
        let (outcome, noted) = defer_removals(work);
        removals = Some(noted);
        outcome
    });
    let Some(removals) = removals.filter(|r| !r.is_empty()) else {
        return;
    };
    let container = container.to_owned();
    let remove = move || {
        for error in removals.run() {
            tracing::warn!(module = name, call = method, container = %container, "removing a state record after answering: {error}");
        }
    };
    match janitor() {
        Some(janitor) => janitor.send(Box::new(move |()| remove())),
        None => remove(),
    }
}

/// As [`run_call`], with the writing of the state records the call saves put off
/// until its answer is delivered ([`defer_saves`]); returns them, for
/// [`write_saves`] as the module's next work ([`Mailbox::send_first`]): creating a
/// file on a busy disk costs tens to hundreds of microseconds that neither the
/// agent nor the next module of a chain need wait for.
fn run_call_deferring_saves(
    name: &'static str,
    method: &'static str,
    container: &str,
    done: Box<dyn Completer>,
    work: impl FnOnce() -> Outcome,
) -> Saves {
    let mut saves = Saves::default();
    run_call(name, method, container, done, || {
        let (outcome, noted) = defer_saves(work);
        saves = noted;
        outcome
    });
    saves
}

/// Writes records a call left to write after its answer, then tells `unsaved`
/// how it went: `None`, or the reason those that could not be written were not
/// (also logged), for the container's next call to fail with: no container runs
/// without the record its recovery needs.
fn write_saves(
    name: &'static str,
    method: &'static str,
    container: &str,
    saves: Saves,
    unsaved: Box<dyn FnOnce(Option<String>) + Send>,
) {
    let errors = after_answer_lane(|| saves.run());
    if errors.is_empty() {
        unsaved(None);
        return;
    }
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    tracing::warn!(module = name, call = method, container = %container, "writing a state record after answering: {message}; the container's next call fails");
    unsaved(Some(message));
}

/// Waits (up to 5 s each) until the modules dropped so far are gone (a module is
/// dropped on a worker thread, and its drop removes what it keeps, such as spare
/// cgroups), then until the state records whose removal was put off until after an
/// answer are removed: a short-lived process (`rein-run`) calls it before it exits,
/// so that none is left for the next `recover()` or refill to remove. The records
/// are counted before the answer is delivered, so one whose removal has not reached
/// the janitor yet is waited for too.
pub fn flush_removals() {
    if !crate::pool::wait_for_closed(std::time::Duration::from_secs(5)) {
        tracing::warn!("rein: modules still being dropped after 5 s; what they kept (spare cgroups) is removed by the next run");
    }
    if !rein_core::state::wait_for_deferred_removals(std::time::Duration::from_secs(5)) {
        tracing::warn!(
            "rein: state records still being removed after 5 s; recover() releases those left"
        );
    }
}

/// The mailbox that removes state records after the answers (its own thread in the
/// pool); `None` if its thread could not start (they are removed in place then).
fn janitor() -> Option<&'static Arc<Mailbox<()>>> {
    static JANITOR: OnceLock<Option<Arc<Mailbox<()>>>> = OnceLock::new();
    JANITOR
        .get_or_init(|| {
            Mailbox::start("state-janitor", Box::new(()))
                .map_err(|e| tracing::warn!("rein: starting the state janitor: {e}"))
                .ok()
        })
        .as_ref()
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
