//! `IsolatorHandle`: what the shim's `Isolator` subclass holds and forwards to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cxx::UniquePtr;

use rein_core::isolator::{Error, LimitationNotifier};
use rein_core::{ContainerId, Isolator};

use crate::actor::{
    construct, deliver, error_chain, run_call, Actor, Completer, CxxCompleter, Outcome, Records,
};
use crate::bridge::ffi::{
    Completion, ContainerChain, ContainerConfigView, KeyValue, RecoveredView, ResourceEntry,
};
use crate::{convert, isolators_ahead, launch, logger_ahead, pool};

/// One isolator instance, run by the bridge's worker threads.
pub struct IsolatorHandle {
    actor: Arc<Actor<dyn Isolator>>,
    name: &'static str,
    nesting: bool,
    /// [`Isolator::isolate_does_nothing`], asked once at the start.
    isolate_does_nothing: bool,
    /// Started with [`IsolatorHandle::start_in_agent`].
    in_agent: bool,
    /// Its number among the agent's isolators whose `prepare`s start together
    /// ([`isolators_ahead`]), when started in the agent.
    member: Option<u64>,
    watches: Watches,
    statuses: Statuses,
    unsaved: Unsaved,
}

/// Containers whose state record could not be written after `prepare` answered
/// ([`Records::SaveAfterAnswer`]), by container text, with the reason: their
/// `isolate()` fails with it, so no container runs without the record its
/// recovery needs. Dropped at `cleanup()`. Also counts the `prepare`s queued
/// whose records' outcome is not known yet.
#[derive(Clone, Default)]
struct Unsaved {
    failed: Arc<Mutex<HashMap<String, String>>>,
    unsettled: Arc<AtomicUsize>,
}

impl Unsaved {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a `prepare` of `container` about to be queued; returns what to call
    /// once its records are written (`None`) or could not be (the reason). A
    /// `prepare` dropped unrun stays counted: [`Unsaved::settled`] is then never
    /// true again, and `isolate` always waits for the isolator's thread.
    fn sink(&self, container: String) -> Box<dyn FnOnce(Option<String>) + Send> {
        self.unsettled.fetch_add(1, Ordering::SeqCst);
        let unsaved = self.clone();
        Box::new(move |reason| {
            if let Some(reason) = reason {
                unsaved.map().insert(container, reason);
            }
            unsaved.unsettled.fetch_sub(1, Ordering::SeqCst);
        })
    }

    /// Whether every `prepare` queued so far has its records' outcome known (so
    /// the map holds every failure there is).
    fn settled(&self) -> bool {
        self.unsettled.load(Ordering::SeqCst) == 0
    }
}

/// Each container's `status()` as the isolator last gave it (after `prepare`,
/// `update` or a `status` call), so that the agent's `status()` on every task
/// status update is answered on the caller's thread without a hop to the worker
/// threads. An isolator's status changes only through its own calls, so the copy
/// kept after them is its answer. Dropped at `cleanup()`.
#[derive(Clone, Default)]
struct Statuses(Arc<Mutex<HashMap<ContainerId, rein_core::Status>>>);

impl Statuses {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ContainerId, rein_core::Status>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the isolator (on its worker thread) and keeps the answer.
    fn refresh(
        &self,
        iso: &mut dyn Isolator,
        id: &ContainerId,
    ) -> Result<rein_core::Status, Error> {
        let status = iso.status(id);
        match &status {
            Ok(s) => {
                self.map().insert(id.clone(), s.clone());
            }
            Err(_) => {
                self.map().remove(id);
            }
        }
        status
    }
}

/// The pending `watch()` completions, by container, owned here until the
/// container's `cleanup()`: a limitation completes one; dropping it at cleanup ends
/// the shim's future unanswered (the containerizer is destroying the container and
/// ignores it). An isolator that drops its notifier early (a container it does not
/// track) thus still leaves the future pending, which is "no limitation".
#[derive(Clone, Default)]
struct Watches(Arc<Mutex<HashMap<ContainerId, Box<dyn Completer>>>>);

impl Watches {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ContainerId, Box<dyn Completer>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `done` for `id` and returns the notifier that completes it.
    fn register(&self, id: &ContainerId, done: Box<dyn Completer>) -> LimitationNotifier {
        self.map().insert(id.clone(), done);
        let (watches, id) = (self.clone(), id.clone());
        LimitationNotifier::new(move |limitation| {
            // Taken out before completing: the completion runs without the lock.
            let done = watches.map().remove(&id);
            if let Some(done) = done {
                deliver(done, Outcome::Limitation(convert::limitation(limitation)));
            }
        })
    }

    /// Ends `id`'s watch unanswered.
    fn end(&self, id: &ContainerId) {
        let done = self.map().remove(id);
        drop(done);
    }
}

/// The disk isolator's name: its `prepare` tags the sandbox ([`logger_ahead`]).
const DISK: &str = "disk";

impl Drop for IsolatorHandle {
    fn drop(&mut self) {
        if self.in_agent && self.name == DISK {
            logger_ahead::disk_isolator(false);
        }
        if let Some(member) = self.member {
            isolators_ahead::leave(member);
        }
    }
}

/// Queues an isolator's `prepare` (see [`IsolatorHandle::prepare_with`]): the launch
/// info is decided here ([`launch::decide`]); a launch the policy refuses is undone
/// at once (the isolator's `cleanup()`) before the failure is answered; the state
/// records are written after the answer ([`Records::SaveAfterAnswer`]). One of the
/// agent's isolators also starts the logger's registration ([`logger_ahead`]): the
/// disk isolator once its `prepare` has tagged the sandbox, the others at once.
fn queue_prepare(
    actor: &Actor<dyn Isolator>,
    name: &'static str,
    in_agent: bool,
    statuses: &Statuses,
    unsaved: &Unsaved,
    config: ContainerConfigView,
    done: Box<dyn Completer>,
) {
    let tags_sandbox = in_agent && name == DISK;
    if in_agent && !tags_sandbox {
        logger_ahead::start_from(false, &config);
    }
    let early = tags_sandbox.then(|| config.clone());
    let statuses = statuses.clone();
    let text = config.container.text();
    let unsaved = unsaved.sink(text.clone());
    actor.call(
        "prepare",
        text,
        done,
        Records::SaveAfterAnswer(unsaved),
        move |iso| {
            let spec = match convert::container_spec(config) {
                Ok(spec) => spec,
                Err(e) => return failed(&e),
            };
            let info = match iso.prepare(&spec) {
                Ok(info) => info,
                Err(e) => return failed(&*e),
            };
            match launch::decide(info) {
                Ok(view) => {
                    // Kept for the agent's status() calls; a failure here is
                    // the isolator's own answer when the agent asks.
                    let _ = statuses.refresh(iso, &spec.id);
                    if let Some(config) = &early {
                        logger_ahead::start_from(true, config);
                    }
                    Outcome::LaunchInfo(view)
                }
                Err(refusal) => {
                    if let Err(e) = iso.cleanup(&spec.id) {
                        tracing::warn!("undoing the refused launch: {}", error_chain(&*e));
                    }
                    failed(&refusal)
                }
            }
        },
    );
    // Behind the records the answer leaves to write, which go first.
    actor.after("after_answer", |iso| iso.after_answer());
}

/// Creates an isolator; a bad parameter is an error the shim reports to the agent.
pub fn create_isolator(kind: &str, parameters: &[KeyValue]) -> Result<Box<IsolatorHandle>, String> {
    let params = convert::parameters(parameters).map_err(|e| format!("rein {kind}: {e}"))?;
    let isolator = construct(kind, || build(kind, &params))?;
    IsolatorHandle::start_in_agent(isolator)
        .map(Box::new)
        .map_err(|e| format!("rein {kind}: starting its thread: {e}"))
}

fn build(kind: &str, params: &[(String, String)]) -> Result<Box<dyn Isolator>, Error> {
    #[cfg(feature = "probe")]
    if kind == "probe" {
        return Ok(Box::new(crate::probe::Probe));
    }
    rein_isolators::create(kind, params)
}

fn failed(err: &(dyn std::error::Error + 'static)) -> Outcome {
    Outcome::Failed(error_chain(err))
}

/// Keeps what decodes; each container that does not is logged and left out: its id
/// or directory is not UTF-8, so `prepare()` refused it and no module holds state
/// for it, and one such container must not fail the agent's recovery.
fn decodable<V, T>(
    views: Vec<V>,
    what: &str,
    decode: impl Fn(V) -> Result<T, rein_core::container::InvalidField>,
) -> Vec<T> {
    views
        .into_iter()
        .filter_map(|view| {
            decode(view)
                .map_err(|e| tracing::warn!("recover: skipping a {what}: {e}"))
                .ok()
        })
        .collect()
}

impl IsolatorHandle {
    /// Runs an isolator on the bridge's worker threads, on its own.
    pub fn start(isolator: Box<dyn Isolator>) -> std::io::Result<Self> {
        Self::spawn(isolator, false)
    }

    /// As [`start`](Self::start), one of the agent's isolators: its `prepare`
    /// starts the logger's registration early ([`logger_ahead`]), and the first of
    /// them to be asked starts the others' ([`isolators_ahead`]).
    pub fn start_in_agent(isolator: Box<dyn Isolator>) -> std::io::Result<Self> {
        Self::spawn(isolator, true)
    }

    fn spawn(isolator: Box<dyn Isolator>, in_agent: bool) -> std::io::Result<Self> {
        let nesting = isolator.supports_nesting();
        let isolate_does_nothing = isolator.isolate_does_nothing();
        let name = isolator.name();
        let actor = Arc::new(Actor::spawn(name, isolator)?);
        let statuses = Statuses::default();
        let unsaved = Unsaved::default();
        let member = in_agent.then(|| {
            let (actor, statuses, unsaved) =
                (Arc::downgrade(&actor), statuses.clone(), unsaved.clone());
            let start: isolators_ahead::Start =
                Arc::new(move |config, done| match actor.upgrade() {
                    Some(actor) => {
                        queue_prepare(&actor, name, true, &statuses, &unsaved, config, done)
                    }
                    None => deliver(done, Outcome::Failed(format!("rein {name}: gone"))),
                });
            isolators_ahead::join(start)
        });
        if in_agent && name == DISK {
            logger_ahead::disk_isolator(true);
        }
        Ok(Self {
            actor,
            name,
            nesting,
            isolate_does_nothing,
            in_agent,
            member,
            watches: Watches::default(),
            statuses,
            unsaved,
        })
    }

    /// `Isolator::supportsNesting()`.
    pub fn supports_nesting(&self) -> bool {
        self.nesting
    }

    /// `recover()`, completing any [`Completer`].
    pub fn recover_with(
        &self,
        containers: Vec<RecoveredView>,
        orphans: Vec<ContainerChain>,
        done: Box<dyn Completer>,
    ) {
        self.actor.call(
            "recover",
            String::new(),
            done,
            Records::InCall,
            move |iso| {
                let containers = decodable(containers, "container", convert::recovered);
                let orphans = decodable(orphans, "orphan", convert::container_id);
                match iso.recover(&containers, &orphans) {
                    Ok(()) => Outcome::Nothing,
                    Err(e) => failed(&*e),
                }
            },
        );
        self.actor.after("after_answer", |iso| iso.after_answer());
    }

    /// `prepare()` ([`queue_prepare`]). For one of the agent's isolators: the
    /// answer of an early `prepare` started by the first of them to be asked, if
    /// there is one for the same config; otherwise the call, which, for the first,
    /// starts the others' ([`isolators_ahead`]).
    pub fn prepare_with(&self, config: ContainerConfigView, done: Box<dyn Completer>) {
        let mut others = None;
        let done = match self.member {
            Some(member) => match isolators_ahead::claim(member, &config, done) {
                isolators_ahead::Claimed::Answered => return,
                isolators_ahead::Claimed::NotStarted(done) => {
                    others = isolators_ahead::reserve_others(member, &config);
                    done
                }
                isolators_ahead::Claimed::Differed(done) => {
                    self.undo_early_prepare(&config);
                    done
                }
            },
            None => done,
        };
        queue_prepare(
            &self.actor,
            self.name,
            self.in_agent,
            &self.statuses,
            &self.unsaved,
            config,
            done,
        );
        if let Some(others) = others {
            others.start();
        }
    }

    /// Queues the isolator's `cleanup` of an early `prepare` the agent's call
    /// differed from, before that call runs.
    fn undo_early_prepare(&self, config: &ContainerConfigView) {
        let container = config.container.clone();
        let settled = Box::new(LogFailure {
            name: self.name,
            container: container.text(),
        });
        self.queue_cleanup(container, settled);
    }

    /// `isolate()`; fails, placing nothing, for a container whose state record
    /// could not be written after `prepare` ([`Unsaved`]).
    pub fn isolate_with(&self, container: ContainerChain, pid: i32, done: Box<dyn Completer>) {
        let unsaved = self.unsaved.clone();
        let (name, text) = (self.name, container.text());
        let record_failure = move || {
            unsaved.map().remove(&text).map(|reason| {
                Outcome::Failed(format!(
                    "rein {name}: the container's state record could not be written after prepare: {reason}"
                ))
            })
        };
        if self.isolate_does_nothing && self.unsaved.settled() {
            // Nothing to place, and prepare's records are written (their outcome
            // is known): answered here, without waking a worker thread.
            let outcome = match convert::container_id(container) {
                Ok(_) => record_failure().unwrap_or(Outcome::Nothing),
                Err(e) => failed(&e),
            };
            deliver(done, outcome);
            return;
        }
        self.with_id("isolate", container, done, move |iso, id| {
            if let Some(failure) = record_failure() {
                return Ok(failure);
            }
            iso.isolate(id, pid).map(|()| Outcome::Nothing)
        });
    }

    /// `watch()`: completes only when the isolator reports a limitation; kept
    /// pending until `cleanup()` otherwise (see [`Watches`]).
    pub fn watch_with(&self, container: ContainerChain, done: Box<dyn Completer>) {
        let text = container.text();
        let watches = self.watches.clone();
        // The completer is kept in `watches`; the call itself completes nothing.
        self.actor.call(
            "watch",
            text,
            Box::new(Discard),
            Records::InCall,
            move |iso| {
                match convert::container_id(container) {
                    Ok(id) => iso.watch(&id, watches.register(&id, done)),
                    Err(e) => deliver(done, failed(&e)),
                }
                Outcome::Nothing
            },
        );
    }

    /// `update()`.
    pub fn update_with(
        &self,
        container: ContainerChain,
        resources: Vec<ResourceEntry>,
        done: Box<dyn Completer>,
    ) {
        let resources = convert::resources(resources);
        let statuses = self.statuses.clone();
        self.with_id("update", container, done, move |iso, id| {
            iso.update(id, &resources)?;
            let _ = statuses.refresh(iso, id);
            Ok(Outcome::Nothing)
        });
    }

    /// `usage()`.
    pub fn usage_with(&self, container: ContainerChain, done: Box<dyn Completer>) {
        self.with_id("usage", container, done, |iso, id| {
            iso.usage(id)
                .map(|s| Outcome::Statistics(convert::statistics(s)))
        });
    }

    /// `status()`: answered here from the copy kept after the isolator's last
    /// call for the container ([`Statuses`]); asked on the worker threads otherwise.
    pub fn status_with(&self, container: ContainerChain, done: Box<dyn Completer>) {
        if let Ok(id) = convert::container_id(container.clone()) {
            let kept = self.statuses.map().get(&id).cloned();
            if let Some(status) = kept {
                run_call(self.name, "status", &container.text(), done, || {
                    Outcome::Status(convert::status(status))
                });
                return;
            }
        }
        let statuses = self.statuses.clone();
        self.with_id("status", container, done, move |iso, id| {
            statuses
                .refresh(iso, id)
                .map(|s| Outcome::Status(convert::status(s)))
        });
    }

    /// `cleanup()`, answered at once on the caller's thread; the isolator's work
    /// follows on the worker threads ([`IsolatorHandle::cleanup_reporting`]).
    /// Mesos sends a task's terminal status update only after every isolator's
    /// cleanup, one after the other, and treats a failed one as a container it
    /// cannot finish destroying; the isolators instead keep what they could not
    /// release, log and count it, and retry it ([`rein_core::isolator::PendingCleanups`]),
    /// which is what the agent would need anyway. The work's outcome is logged.
    pub fn cleanup_with(&self, container: ContainerChain, done: Box<dyn Completer>) {
        let settled = Box::new(LogFailure {
            name: self.name,
            container: container.text(),
        });
        self.cleanup_reporting(container, done, settled);
    }

    /// `cleanup()`: queues the isolator's work, then completes `answered` at once;
    /// `settled` gets the work's outcome. An id that does not decode was refused by
    /// `prepare()`, so there is nothing to clean up. The work runs after every call
    /// already queued for the isolator and before any later one (its records
    /// removed after it: [`Records::RemoveAfterAnswer`]); a record or kernel object
    /// outliving the answer by a moment is what a crash just before `cleanup()`
    /// leaves too, and `recover()` handles it.
    pub fn cleanup_reporting(
        &self,
        container: ContainerChain,
        answered: Box<dyn Completer>,
        settled: Box<dyn Completer>,
    ) {
        let text = container.text();
        if let Ok(id) = convert::container_id(container.clone()) {
            if self.in_agent {
                logger_ahead::discard(&id);
            }
            if let Some(member) = self.member {
                isolators_ahead::discard(member, &id);
            }
            self.statuses.map().remove(&id);
        }
        self.unsaved.map().remove(&text);
        // The agent's chain of cleanups and its terminal status update run from
        // the answer: the thread for the work is woken once they have.
        pool::holding_wakes(|| {
            self.queue_cleanup(container, settled);
            deliver(answered, Outcome::Nothing);
        });
    }

    /// Queues the isolator's `cleanup` of `container`, its outcome to `settled`
    /// (its records removed after it: [`Records::RemoveAfterAnswer`]).
    fn queue_cleanup(&self, container: ContainerChain, settled: Box<dyn Completer>) {
        let watches = self.watches.clone();
        let statuses = self.statuses.clone();
        self.actor.call(
            "cleanup",
            container.text(),
            settled,
            Records::RemoveAfterAnswer,
            move |iso| match convert::container_id(container) {
                Ok(id) => {
                    // The container is being destroyed: its limitation no longer matters.
                    watches.end(&id);
                    // A status() asked before this call may have kept one again.
                    statuses.map().remove(&id);
                    iso.cleanup(&id)
                        .map_or_else(|e| failed(&*e), |()| Outcome::Nothing)
                }
                Err(e) => {
                    tracing::warn!("cleanup: nothing to clean up for a refused container: {e}");
                    Outcome::Nothing
                }
            },
        );
    }

    fn with_id(
        &self,
        method: &'static str,
        container: ContainerChain,
        done: Box<dyn Completer>,
        work: impl FnOnce(&mut dyn Isolator, &rein_core::ContainerId) -> Result<Outcome, Error>
            + Send
            + 'static,
    ) {
        self.actor.call(
            method,
            container.text(),
            done,
            Records::InCall,
            move |iso| match convert::container_id(container) {
                Ok(id) => work(iso, &id).unwrap_or_else(|e| failed(&*e)),
                Err(e) => failed(&e),
            },
        );
    }

    // The cxx entry points: the same calls, completing the shim's promise.

    pub(crate) fn recover(
        &self,
        containers: Vec<RecoveredView>,
        orphans: Vec<ContainerChain>,
        done: UniquePtr<Completion>,
    ) {
        self.recover_with(containers, orphans, CxxCompleter::boxed(done));
    }
    pub(crate) fn prepare(&self, config: ContainerConfigView, done: UniquePtr<Completion>) {
        self.prepare_with(config, CxxCompleter::boxed(done));
    }
    pub(crate) fn isolate(&self, container: ContainerChain, pid: i32, done: UniquePtr<Completion>) {
        self.isolate_with(container, pid, CxxCompleter::boxed(done));
    }
    pub(crate) fn watch(&self, container: ContainerChain, done: UniquePtr<Completion>) {
        self.watch_with(container, CxxCompleter::boxed(done));
    }
    pub(crate) fn update(
        &self,
        container: ContainerChain,
        resources: Vec<ResourceEntry>,
        done: UniquePtr<Completion>,
    ) {
        self.update_with(container, resources, CxxCompleter::boxed(done));
    }
    pub(crate) fn usage(&self, container: ContainerChain, done: UniquePtr<Completion>) {
        self.usage_with(container, CxxCompleter::boxed(done));
    }
    pub(crate) fn status(&self, container: ContainerChain, done: UniquePtr<Completion>) {
        self.status_with(container, CxxCompleter::boxed(done));
    }
    pub(crate) fn cleanup(&self, container: ContainerChain, done: UniquePtr<Completion>) {
        self.cleanup_with(container, CxxCompleter::boxed(done));
    }
}

/// Logs a failed outcome: the work of a call answered before it ran.
struct LogFailure {
    name: &'static str,
    container: String,
}

impl Completer for LogFailure {
    fn complete(self: Box<Self>, outcome: Outcome) {
        if let Outcome::Failed(message) = outcome {
            tracing::warn!(module = self.name, container = %self.container,
                           "cleanup after answering: {message}");
        }
    }
}

/// Completes nothing: for calls whose real completion is handed on elsewhere.
struct Discard;

impl Completer for Discard {
    fn complete(self: Box<Self>, _outcome: Outcome) {}
}
