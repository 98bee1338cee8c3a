//! The logger's `prepare`, started ahead of the agent's call.
//!
//! The agent prepares a container's isolators one after another and asks the
//! container logger last (Mesos's `io/switchboard` comes after them). The first
//! rein isolator's `prepare` therefore starts the logger's registration with the
//! shipper on the logger's threads, with the same container config; when the agent
//! then calls the logger, its answer is usually ready and is given on the caller's
//! thread: no thread hop and no wait for the shipper's round trip on the launch path.
//!
//! Only top-level containers: a nested one may share its parent's sandbox and the
//! agent, not us, decides whether the logger sees it. The agent's own call must
//! carry the same config (field by field) and reach a logger with the same module
//! parameters, or the early registration is dropped and the call runs as usual.
//! An answer the agent never asks for (a later isolator failed the launch) is
//! dropped at the isolators' `cleanup()`, or after [`UNCLAIMED_FOR`]: closing its
//! pipes ends the container at the shipper as one that exited at once.
//!
//! The shipper creates the sandbox's `stdout` and `stderr` while it registers, and
//! the disk isolator gives the sandbox's files its project id by walking it: a file
//! made under a temporary name and renamed while the walk runs could miss the id
//! and the container's quota. With a rein disk isolator in the agent, its
//! `prepare` (after the walk, which leaves the sandbox passing the id on to every
//! new file) is what starts the registration; since the first rein isolator the
//! agent asks starts every rein isolator's `prepare` ([`crate::isolators_ahead`]),
//! that is early wherever it is listed in `--isolation`. Mesos's own `disk/xfs`
//! walks the sandbox too: list it before the rein isolators.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use rein_core::ContainerId;
use rein_log_module::module::{ContainerIo, LoggerModule};

use crate::actor::{guarded, run_call, Completer};
use crate::bridge::ffi::{ContainerConfigView, KeyValue, ResourceEntry};
use crate::logger::{io_outcome, prepare_io, PreparePool};
use crate::{convert, early};

/// A job for the logger's threads.
pub(crate) type Job = Box<dyn FnOnce(&LoggerModule) + Send>;

/// An answer nobody asked for is dropped after this long (a launch whose later
/// isolators take longer than this is asked for as usual, only not early).
pub(crate) const UNCLAIMED_FOR: Duration = Duration::from_secs(600);

/// The logger instance early registrations go to (the first one created; the
/// Docker containerizer makes a second, which never sees our isolators' containers).
struct Target {
    instance: u64,
    params: Vec<(String, String)>,
    pool: Weak<PreparePool>,
}

enum State {
    /// On the logger's threads; the agent's call, if it came, waits here.
    Running(Option<(Box<dyn Completer>, String)>),
    /// Answered, not yet asked for.
    Done(Result<ContainerIo, String>),
}

struct Entry {
    config: ContainerConfigView,
    params: Vec<(String, String)>,
    state: State,
    since: Instant,
}

#[derive(Default)]
struct Ahead {
    target: Option<Target>,
    entries: HashMap<ContainerId, Entry>,
}

fn ahead() -> MutexGuard<'static, Ahead> {
    static AHEAD: OnceLock<Mutex<Ahead>> = OnceLock::new();
    early::registry(&AHEAD)
}

static COUNTS: early::Counts = early::Counts::new();

/// Early registrations so far in this process: started, claimed by the agent's
/// call, dropped (unclaimed, or the agent's call differed).
pub fn counts() -> (u64, u64, u64) {
    COUNTS.get()
}

/// A new logger instance; the first becomes the target of early registrations.
pub(crate) fn offer(instance: u64, params: &[(String, String)], pool: &Arc<PreparePool>) {
    let mut a = ahead();
    if a.target.is_none() {
        a.target = Some(Target {
            instance,
            params: params.to_vec(),
            pool: Arc::downgrade(pool),
        });
    }
}

/// A logger instance going away stops being the target.
pub(crate) fn withdraw(instance: u64) {
    let mut a = ahead();
    if a.target.as_ref().is_some_and(|t| t.instance == instance) {
        a.target = None;
    }
}

static DISK_ISOLATORS: AtomicU64 = AtomicU64::new(0);

/// A rein disk isolator joins (`true`) or leaves (`false`) the agent: while one is
/// there, only its `prepare` starts registrations.
pub(crate) fn disk_isolator(present: bool) {
    if present {
        DISK_ISOLATORS.fetch_add(1, Ordering::SeqCst);
    } else {
        DISK_ISOLATORS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Called by each of the agent's rein isolators' `prepare`: `tags_sandbox` for the
/// disk isolator, once its `prepare` has tagged the sandbox; the others, on the
/// caller's thread, only when the agent has no disk isolator. The first call for a
/// container starts its registration (cheap: a copy of the config and a message).
pub(crate) fn start_from(tags_sandbox: bool, config: &ContainerConfigView) {
    if tags_sandbox || DISK_ISOLATORS.load(Ordering::SeqCst) == 0 {
        start(config);
    }
}

fn start(config: &ContainerConfigView) {
    if config.container.ids.len() != 1 || config.debug {
        return;
    }
    let Ok(id) = convert::container_id(config.container.clone()) else {
        return;
    };
    let mut a = ahead();
    let Some(target) = &a.target else {
        return;
    };
    if a.entries.contains_key(&id) {
        return;
    }
    let Some(pool) = target.pool.upgrade() else {
        return;
    };
    let params = target.params.clone();
    sweep(&mut a);
    a.entries.insert(
        id.clone(),
        Entry {
            config: config.clone(),
            params,
            state: State::Running(None),
            since: Instant::now(),
        },
    );
    drop(a);
    let view = config.clone();
    let text = config.container.text();
    let job_id = id.clone();
    let unfinished = Unfinished(Some(id));
    let job: Job = Box::new(move |logger: &LoggerModule| {
        unfinished.disarm();
        let result =
            guarded("logger", "prepare", &text, || prepare_io(logger, view)).and_then(|io| io);
        finish(&job_id, result);
    });
    COUNTS.started();
    pool.submit(job);
}

/// Finishes an early registration whose job was dropped unrun (the logger's
/// threads are gone), so that the agent's call waiting for it fails instead.
struct Unfinished(Option<ContainerId>);

impl Unfinished {
    /// The job runs: it finishes the registration itself.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(id) = self.0.take() {
            finish(&id, Err("rein logger: its prepare threads are gone".into()));
        }
    }
}

/// The early registration is done: to the agent's call if it waits, else kept.
fn finish(id: &ContainerId, result: Result<ContainerIo, String>) {
    let mut a = ahead();
    let waiting = match a.entries.get_mut(id) {
        None => {
            drop(a);
            unclaimed(id, "its launch ended first", result);
            return;
        }
        Some(entry) => match &mut entry.state {
            State::Running(waiter) => waiter.take(),
            State::Done(_) => None,
        },
    };
    match waiting {
        Some((done, text)) => {
            a.entries.remove(id);
            drop(a);
            COUNTS.claimed();
            run_call("logger", "prepare", &text, done, || io_outcome(result));
        }
        None => {
            if let Some(entry) = a.entries.get_mut(id) {
                entry.state = State::Done(result);
            }
        }
    }
}

/// The agent's `prepare` call for the logger `instance` with `params`: answered
/// here (now, or when the early registration finishes) if one was started for
/// the same config; otherwise `done` comes back for the usual call.
pub(crate) fn claim(
    params: &[(String, String)],
    config: &ContainerConfigView,
    done: Box<dyn Completer>,
) -> Result<(), Box<dyn Completer>> {
    let mut a = ahead();
    if a.entries.is_empty() {
        return Err(done);
    }
    let Ok(id) = convert::container_id(config.container.clone()) else {
        return Err(done);
    };
    let Some(entry) = a.entries.get_mut(&id) else {
        return Err(done);
    };
    if entry.params != params || !same_config(&entry.config, config) {
        let entry = a.entries.remove(&id).expect("looked up");
        drop(a);
        tracing::warn!(
            container = %id,
            "the logger's prepare differs from the isolators' (config or module parameters): its early registration is dropped"
        );
        // One still running is dropped (and counted) when it finishes.
        if let State::Done(result) = entry.state {
            unclaimed(&id, "the agent's call differed", result);
        }
        return Err(done);
    }
    match &mut entry.state {
        State::Running(waiter) => {
            *waiter = Some((done, config.container.text()));
            Ok(())
        }
        State::Done(_) => {
            let Some(Entry {
                state: State::Done(result),
                ..
            }) = a.entries.remove(&id)
            else {
                unreachable!("looked up as done");
            };
            drop(a);
            COUNTS.claimed();
            run_call("logger", "prepare", &config.container.text(), done, || {
                io_outcome(result)
            });
            Ok(())
        }
    }
}

/// The isolators' `cleanup()`: an answer the agent never asked for is dropped. One
/// the agent waits for is left to finish.
pub(crate) fn discard(id: &ContainerId) {
    let mut a = ahead();
    if !matches!(
        a.entries.get(id),
        Some(Entry {
            state: State::Done(_) | State::Running(None),
            ..
        })
    ) {
        return;
    }
    let entry = a.entries.remove(id).expect("looked up");
    drop(a);
    match entry.state {
        State::Done(result) => unclaimed(id, "its launch ended first", result),
        // Dropped when it finishes (no entry then).
        State::Running(_) => {}
    }
}

/// Drops answers unclaimed for [`UNCLAIMED_FOR`].
fn sweep(a: &mut Ahead) {
    let stale: Vec<ContainerId> = a
        .entries
        .iter()
        .filter(|(_, e)| matches!(e.state, State::Done(_)) && e.since.elapsed() > UNCLAIMED_FOR)
        .map(|(id, _)| id.clone())
        .collect();
    for id in stale {
        if let Some(Entry {
            state: State::Done(result),
            ..
        }) = a.entries.remove(&id)
        {
            unclaimed(&id, "never asked for", result);
        }
    }
}

fn unclaimed(id: &ContainerId, why: &str, result: Result<ContainerIo, String>) {
    COUNTS.dropped(1);
    tracing::info!(
        module = "logger",
        container = %id,
        "early registration dropped ({why}); its pipes are closed"
    );
    drop(result);
}

/// Every field the bridge copies, byte for byte.
pub(crate) fn same_config(a: &ContainerConfigView, b: &ContainerConfigView) -> bool {
    fn pairs(a: &[KeyValue], b: &[KeyValue]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.key == y.key && x.value == y.value)
    }
    fn resources(a: &[ResourceEntry], b: &[ResourceEntry]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.name == y.name
                    && x.scalar.to_bits() == y.scalar.to_bits()
                    && x.has_disk_info == y.has_disk_info
            })
    }
    a.container.ids.len() == b.container.ids.len()
        && a.container
            .ids
            .iter()
            .zip(&b.container.ids)
            .all(|(x, y)| x.value == y.value)
        && a.directory == b.directory
        && a.user == b.user
        && a.task_id == b.task_id
        && a.task_name == b.task_name
        && a.executor_id == b.executor_id
        && a.framework_id == b.framework_id
        && pairs(&a.task_labels, &b.task_labels)
        && pairs(&a.executor_labels, &b.executor_labels)
        && pairs(&a.environment, &b.environment)
        && resources(&a.resources, &b.resources)
        && a.debug == b.debug
}
