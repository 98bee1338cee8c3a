//! The isolators of one harness run, driven through the same bridge handles the
//! agent's shim uses: each call goes to the isolator's own thread and completes
//! through a [`Completer`], here a channel, or, where the containerizer chains
//! calls, the next call itself: libprocess runs a `then` continuation on the thread
//! that completes the future, so Mesos asks the next isolator's `prepare` from the
//! thread that answered the previous one, and continues after the parallel
//! `isolate` calls once the last one answered.

use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Duration;

use std::os::fd::{FromRawFd, OwnedFd};

use rein_modules::{
    Completer, ContainerChain, ContainerConfigView, IsolatorHandle, KeyValue, LimitationView,
    LoggerHandle, Outcome, RecoveredView, StatisticsView, StatusView,
};

use crate::config::Config;
use crate::error::HarnessError;
use crate::process::Stdio;

/// How long one call may take before the harness gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

struct Channel(mpsc::Sender<Outcome>);

impl Completer for Channel {
    fn complete(self: Box<Self>, outcome: Outcome) {
        let _ = self.0.send(outcome);
    }
}

/// A limitation reported by one isolator's `watch()`.
pub struct Limited {
    /// The isolator kind.
    pub kind: String,
    /// The limitation.
    pub limitation: LimitationView,
}

/// The loaded isolators, in configuration order, and the logger.
pub struct Modules {
    isolators: Arc<[(String, IsolatorHandle)]>,
    logger: Option<LoggerHandle>,
    limits_tx: mpsc::Sender<(String, Outcome)>,
    limits_rx: mpsc::Receiver<(String, Outcome)>,
}

/// The error of one call: which module, which call, and its message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{module} {call}: {message}")]
pub struct CallError {
    /// The isolator kind, or `logger`.
    pub module: String,
    /// The call (`prepare`, `isolate`, ...).
    pub call: &'static str,
    /// What the module answered.
    pub message: String,
}

impl Modules {
    /// Creates every configured isolator and the logger. One that cannot start
    /// fails the run, naming it and the reason: running a container without an
    /// isolator the configuration asks for would look isolated and not be.
    pub fn load(config: &Config) -> Result<Self, HarnessError> {
        let mut isolators = Vec::new();
        for iso in &config.isolators {
            let handle = rein_modules::create_isolator(&iso.kind, &key_values(&iso.parameters))
                .map_err(|reason| HarnessError::CannotStart {
                    what: format!("isolator '{}'", iso.kind),
                    reason,
                })?;
            isolators.push((iso.kind.clone(), *handle));
        }
        let logger = match &config.logger {
            Some(logger) => Some(
                *rein_modules::create_logger(&key_values(&logger.parameters)).map_err(
                    |reason| HarnessError::CannotStart {
                        what: "the container logger".into(),
                        reason,
                    },
                )?,
            ),
            None => None,
        };
        let (limits_tx, limits_rx) = mpsc::channel();
        Ok(Self {
            isolators: isolators.into(),
            logger,
            limits_tx,
            limits_rx,
        })
    }

    /// The kinds loaded.
    pub fn kinds(&self) -> Vec<&str> {
        self.isolators.iter().map(|(k, _)| k.as_str()).collect()
    }

    fn call_one(
        handle: &IsolatorHandle,
        start: impl FnOnce(&IsolatorHandle, Box<dyn Completer>),
    ) -> Outcome {
        let (tx, rx) = mpsc::channel();
        start(handle, Box::new(Channel(tx)));
        rx.recv_timeout(CALL_TIMEOUT)
            .unwrap_or_else(|_| Outcome::Failed("no answer within the call timeout".into()))
    }

    /// `recover()` on every isolator.
    pub fn recover(
        &self,
        live: &[RecoveredView],
        orphans: &[ContainerChain],
    ) -> Result<(), CallError> {
        for (kind, handle) in self.isolators.iter() {
            let outcome = Self::call_one(handle, |h, d| {
                h.recover_with(live.to_vec(), orphans.to_vec(), d)
            });
            expect_nothing(kind, "recover", outcome)?;
        }
        Ok(())
    }

    /// `prepare()` in order, each asked by the answer of the one before
    /// ([`PrepareChain`]); the first failure stops (the caller cleans up).
    /// Returns the environment to add, from every launch info.
    pub fn prepare(
        &self,
        config: &ContainerConfigView,
    ) -> Result<Vec<(String, String)>, CallError> {
        let (tx, rx) = mpsc::channel();
        PrepareChain {
            isolators: self.isolators.clone(),
            next: 0,
            config: config.clone(),
            environment: Vec::new(),
            done: tx,
        }
        .ask_next();
        rx.recv_timeout(CALL_TIMEOUT)
            .unwrap_or_else(|_| Err(unanswered("prepare")))
    }

    /// The logger's `prepare()`: the container's stdout and stderr, or `None` when
    /// no logger is configured (output stays on the terminal).
    pub fn logger_prepare(&self, config: &ContainerConfigView) -> Result<Option<Stdio>, CallError> {
        let Some(logger) = &self.logger else {
            return Ok(None);
        };
        let (tx, rx) = mpsc::channel();
        logger.prepare_with(config.clone(), Box::new(Channel(tx)));
        match rx.recv_timeout(CALL_TIMEOUT) {
            // SAFETY: prepare hands over freshly created descriptors that nothing
            // else owns; they are wrapped exactly once, here.
            Ok(Outcome::ContainerIo(io)) => Ok(Some(unsafe {
                Stdio {
                    stdout: OwnedFd::from_raw_fd(io.stdout_fd),
                    stderr: OwnedFd::from_raw_fd(io.stderr_fd),
                }
            })),
            Ok(other) => Err(describe("logger", "prepare", other)),
            Err(_) => Err(describe(
                "logger",
                "prepare",
                Outcome::Failed("no answer within the call timeout".into()),
            )),
        }
    }

    /// `watch()` on every isolator; limitations arrive on [`Modules::limitation`].
    pub fn watch(&self, container: &ContainerChain) {
        for (kind, handle) in self.isolators.iter() {
            let tx = self.limits_tx.clone();
            let kind = kind.clone();
            handle.watch_with(container.clone(), Box::new(Tagged(kind, tx)));
        }
    }

    /// `isolate()` on every isolator, all queued before any answers (Mesos runs
    /// them in parallel and goes on once the last one answered: [`Collect`]).
    pub fn isolate(&self, container: &ContainerChain, pid: i32) -> Result<(), CallError> {
        let (tx, rx) = mpsc::channel();
        let collect = Arc::new(Collect {
            left: Mutex::new((self.isolators.len(), Vec::new())),
            done: tx,
        });
        for (kind, handle) in self.isolators.iter() {
            let part = Part(collect.clone(), kind.clone());
            handle.isolate_with(container.clone(), pid, Box::new(part));
        }
        drop(collect);
        let answers = rx.recv_timeout(CALL_TIMEOUT).unwrap_or_default();
        if answers.len() < self.isolators.len() {
            return Err(unanswered("isolate"));
        }
        answers
            .into_iter()
            .try_for_each(|(kind, outcome)| expect_nothing(&kind, "isolate", outcome))
    }

    /// A limitation, if one arrived within `wait`.
    pub fn limitation(&self, wait: Duration) -> Option<Limited> {
        match self.limits_rx.recv_timeout(wait) {
            Ok((kind, Outcome::Limitation(limitation))) => Some(Limited { kind, limitation }),
            Ok((kind, other)) => {
                eprintln!("rein-run: {}", describe(&kind, "watch", other));
                None
            }
            Err(_) => None,
        }
    }

    /// Asks every isolator the same question; answers and errors per isolator.
    fn ask_all<T>(
        &self,
        call: &'static str,
        start: impl Fn(&IsolatorHandle, Box<dyn Completer>),
        answer: impl Fn(Outcome) -> Result<T, Outcome>,
    ) -> (Vec<(String, T)>, Vec<CallError>) {
        let mut answers = Vec::new();
        let mut errors = Vec::new();
        for (kind, handle) in self.isolators.iter() {
            match answer(Self::call_one(handle, &start)) {
                Ok(value) => answers.push((kind.clone(), value)),
                Err(other) => errors.push(describe(kind, call, other)),
            }
        }
        (answers, errors)
    }

    /// `usage()` of every isolator, with per-isolator errors.
    pub fn usage(
        &self,
        container: &ContainerChain,
    ) -> (Vec<(String, StatisticsView)>, Vec<CallError>) {
        self.ask_all(
            "usage",
            |h, d| h.usage_with(container.clone(), d),
            |o| match o {
                Outcome::Statistics(s) => Ok(s),
                other => Err(other),
            },
        )
    }

    /// `status()` of every isolator, with per-isolator errors.
    pub fn status(
        &self,
        container: &ContainerChain,
    ) -> (Vec<(String, StatusView)>, Vec<CallError>) {
        self.ask_all(
            "status",
            |h, d| h.status_with(container.clone(), d),
            |o| match o {
                Outcome::Status(s) => Ok(s),
                other => Err(other),
            },
        )
    }

    /// `cleanup()` in reverse order; every isolator is cleaned even if one fails
    /// (Mesos tolerates cleanup failures too), and all errors of the isolators'
    /// work are returned once it is done.
    pub fn cleanup(&self, container: &ContainerChain) -> Vec<CallError> {
        self.cleanup_answered(container).settle()
    }

    /// `cleanup()` in reverse order, each asked by the answer of the one before
    /// ([`CleanupChain`], as Mesos chains them); returns when the last one
    /// answered, with the isolators' work still to settle ([`Cleanups::settle`]).
    pub fn cleanup_answered(&self, container: &ContainerChain) -> Cleanups {
        let (tx, rx) = mpsc::channel();
        CleanupChain {
            isolators: self.isolators.clone(),
            left: self.isolators.len(),
            container: container.clone(),
            done: Cleanups(Vec::new()),
            settled: None,
            to: tx,
        }
        .ask_next();
        rx.recv_timeout(CALL_TIMEOUT).unwrap_or_else(|_| {
            Cleanups(vec![(
                "isolators".into(),
                Outcome::Failed("no answer within the call timeout".into()),
                mpsc::channel().1,
            )])
        })
    }
}

/// The containerizer's chain of `cleanup` calls, in reverse order: each answer
/// asks the next isolator, on the thread that answered.
struct CleanupChain {
    isolators: Arc<[(String, IsolatorHandle)]>,
    /// Isolators not asked yet (the first `left`).
    left: usize,
    container: ContainerChain,
    done: Cleanups,
    /// Where the work of the isolator asked last reports.
    settled: Option<mpsc::Receiver<Outcome>>,
    to: mpsc::Sender<Cleanups>,
}

impl CleanupChain {
    fn ask_next(mut self) {
        if self.left == 0 {
            let _ = self.to.send(self.done);
            return;
        }
        self.left -= 1;
        let isolators = self.isolators.clone();
        let (kind_settled, settled) = mpsc::channel();
        self.settled = Some(settled);
        let container = self.container.clone();
        isolators[self.left].1.cleanup_reporting(
            container,
            Box::new(self),
            Box::new(Channel(kind_settled)),
        );
    }
}

impl Completer for CleanupChain {
    fn complete(mut self: Box<Self>, outcome: Outcome) {
        let kind = self.isolators[self.left].0.clone();
        let settled = self.settled.take().unwrap_or_else(|| mpsc::channel().1);
        self.done.0.push((kind, outcome, settled));
        self.ask_next();
    }
}

/// The isolators' cleanups of one container, answered, their work perhaps still
/// running.
pub struct Cleanups(Vec<(String, Outcome, mpsc::Receiver<Outcome>)>);

impl Cleanups {
    /// Waits for the isolators' work; returns every failure, of an answer or of
    /// the work.
    pub fn settle(self) -> Vec<CallError> {
        let mut errors = Vec::new();
        for (kind, answer, settled) in self.0 {
            let work = settled
                .recv_timeout(CALL_TIMEOUT)
                .unwrap_or_else(|_| Outcome::Failed("not done within the call timeout".into()));
            for outcome in [answer, work] {
                if let Err(e) = expect_nothing(&kind, "cleanup", outcome) {
                    errors.push(e);
                }
            }
        }
        errors
    }
}

/// The containerizer's chain of `prepare` calls: each answer asks the next
/// isolator, on the thread that answered.
struct PrepareChain {
    isolators: Arc<[(String, IsolatorHandle)]>,
    next: usize,
    config: ContainerConfigView,
    environment: Vec<(String, String)>,
    done: mpsc::Sender<Result<Vec<(String, String)>, CallError>>,
}

impl PrepareChain {
    fn ask_next(mut self) {
        let isolators = self.isolators.clone();
        match isolators.get(self.next) {
            Some((_, handle)) => {
                self.next += 1;
                handle.prepare_with(self.config.clone(), Box::new(self));
            }
            None => {
                let _ = self.done.send(Ok(self.environment));
            }
        }
    }
}

impl Completer for PrepareChain {
    fn complete(mut self: Box<Self>, outcome: Outcome) {
        match outcome {
            Outcome::LaunchInfo(info) => {
                self.environment
                    .extend(info.environment.into_iter().map(|kv| (kv.key, kv.value)));
                self.ask_next();
            }
            other => {
                let kind = &self.isolators[self.next - 1].0;
                let _ = self.done.send(Err(describe(kind, "prepare", other)));
            }
        }
    }
}

/// The answers of calls made in parallel, handed on together once the last one
/// arrived.
struct Collect {
    left: Mutex<(usize, Vec<(String, Outcome)>)>,
    done: mpsc::Sender<Vec<(String, Outcome)>>,
}

/// One of the calls a [`Collect`] waits for, and its isolator.
struct Part(Arc<Collect>, String);

impl Completer for Part {
    fn complete(self: Box<Self>, outcome: Outcome) {
        let Part(collect, kind) = *self;
        let mut left = collect.left.lock().unwrap_or_else(PoisonError::into_inner);
        left.1.push((kind, outcome));
        left.0 -= 1;
        if left.0 == 0 {
            let _ = collect.done.send(std::mem::take(&mut left.1));
        }
    }
}

/// A chain of calls to the isolators that did not end within [`CALL_TIMEOUT`].
fn unanswered(call: &'static str) -> CallError {
    CallError {
        module: "isolators".into(),
        call,
        message: "no answer within the call timeout".into(),
    }
}

/// Module parameters as the bridge takes them.
fn key_values(pairs: &[(String, String)]) -> Vec<KeyValue> {
    pairs
        .iter()
        .map(|(key, value)| KeyValue::new(key.as_str(), value.as_str()))
        .collect()
}

struct Tagged(String, mpsc::Sender<(String, Outcome)>);

impl Completer for Tagged {
    fn complete(self: Box<Self>, outcome: Outcome) {
        let _ = self.1.send((self.0, outcome));
    }
}

fn expect_nothing(kind: &str, call: &'static str, outcome: Outcome) -> Result<(), CallError> {
    match outcome {
        Outcome::Nothing => Ok(()),
        other => Err(describe(kind, call, other)),
    }
}

fn describe(kind: &str, call: &'static str, outcome: Outcome) -> CallError {
    let message = match outcome {
        Outcome::Failed(message) => message,
        other => format!("unexpected answer {other:?}"),
    };
    CallError {
        module: kind.to_owned(),
        call,
        message,
    }
}
