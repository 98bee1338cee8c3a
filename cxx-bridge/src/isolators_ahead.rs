//! The agent's rein isolators' `prepare`, started together.
//!
//! Mesos prepares a container's isolators one after another, each asked once the
//! one before has answered. The first of the agent's rein isolators to be asked
//! therefore queues the `prepare` of every other one as well, with the same
//! container config: they run side by side on the worker threads, and when the
//! agent's chain reaches one of them its answer is usually ready and is given on
//! the caller's thread, without a hop or a wait.
//!
//! Only top-level containers that are not DEBUG ones (as [`crate::logger_ahead`]):
//! a nested container goes to the isolators that support nesting only. The agent's
//! own call must carry the same config, field by field; otherwise the early
//! `prepare` is undone (the isolator's `cleanup`, queued before the agent's call)
//! and the call runs as usual, with a warning. An answer the agent never asks for
//! (an isolator before it failed the launch) is dropped at the isolator's
//! `cleanup()`, which Mesos calls on every isolator of a container it destroys, or
//! after [`UNCLAIMED_FOR`]; what the early `prepare` set up is released by that
//! `cleanup()` as for any prepared container.
//!
//! An isolator's early `prepare` may run before a Mesos isolator listed ahead of
//! it in `--isolation` has prepared: none of the rein isolators depends on what
//! Mesos's own do at `prepare` (the sandbox exists before any isolator is asked).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rein_core::ContainerId;

use crate::actor::{deliver, Completer, Outcome};
use crate::bridge::ffi::ContainerConfigView;
use crate::logger_ahead::same_config;
use crate::{convert, early};

/// An answer nobody asked for is dropped after this long.
pub(crate) const UNCLAIMED_FOR: Duration = Duration::from_secs(600);

/// Queues a member's `prepare` of a config, completing the completer.
pub(crate) type Start = Arc<dyn Fn(ContainerConfigView, Box<dyn Completer>) + Send + Sync>;

enum State {
    /// The member whose call started the others: nothing to claim.
    Starter,
    /// On the worker threads; the agent's call, if it came, waits here.
    Running(Option<Box<dyn Completer>>),
    /// Answered, not yet asked for.
    Done(Outcome),
}

/// One container's early `prepare`s, by member.
struct Group {
    config: ContainerConfigView,
    members: HashMap<u64, State>,
    since: Instant,
}

impl Group {
    /// No answer left to claim.
    fn settled(&self) -> bool {
        self.members.values().all(|s| matches!(s, State::Starter))
    }
}

#[derive(Default)]
struct Ahead {
    next_member: u64,
    members: Vec<(u64, Start)>,
    groups: HashMap<ContainerId, Group>,
}

fn ahead() -> MutexGuard<'static, Ahead> {
    static AHEAD: OnceLock<Mutex<Ahead>> = OnceLock::new();
    early::registry(&AHEAD)
}

static COUNTS: early::Counts = early::Counts::new();

/// Early `prepare`s so far in this process: started, claimed by the agent's call,
/// dropped (never asked for, or the agent's call differed).
pub fn counts() -> (u64, u64, u64) {
    COUNTS.get()
}

/// One of the agent's isolators joins; returns its member number.
pub(crate) fn join(start: Start) -> u64 {
    let mut a = ahead();
    a.next_member += 1;
    let member = a.next_member;
    a.members.push((member, start));
    member
}

/// An isolator going away: none of its answers is kept any longer.
pub(crate) fn leave(member: u64) {
    let mut a = ahead();
    a.members.retain(|(m, _)| *m != member);
    let mut dropped = Vec::new();
    for group in a.groups.values_mut() {
        if let Some(state) = group.members.remove(&member) {
            dropped.push(state);
        }
    }
    a.groups.retain(|_, g| !g.settled());
    drop(a);
    drop(dropped);
}

/// The container a config is for, if its `prepare`s may start together.
fn eligible(config: &ContainerConfigView) -> Option<ContainerId> {
    if config.container.ids.len() != 1 || config.debug {
        return None;
    }
    convert::container_id(config.container.clone()).ok()
}

/// What [`claim`] did with the agent's call.
pub(crate) enum Claimed {
    /// Answered (now, or when the early `prepare` finishes).
    Answered,
    /// No early `prepare` of this member: the call runs as usual.
    NotStarted(Box<dyn Completer>),
    /// The early `prepare` had another config: it is to be undone, and the call
    /// run as usual.
    Differed(Box<dyn Completer>),
}

/// The agent's `prepare` call for `member`.
pub(crate) fn claim(
    member: u64,
    config: &ContainerConfigView,
    done: Box<dyn Completer>,
) -> Claimed {
    let Some(id) = eligible(config) else {
        return Claimed::NotStarted(done);
    };
    let mut a = ahead();
    let Some(group) = a.groups.get_mut(&id) else {
        return Claimed::NotStarted(done);
    };
    let same = same_config(&group.config, config);
    let state = match group.members.get_mut(&member) {
        None | Some(State::Starter) => return Claimed::NotStarted(done),
        Some(State::Running(waiter)) if same => {
            *waiter = Some(done);
            return Claimed::Answered;
        }
        Some(_) => group.members.remove(&member).expect("looked up"),
    };
    let settled = group.settled();
    if settled {
        a.groups.remove(&id);
    }
    drop(a);
    if !same {
        // One still running is counted when it finishes.
        if matches!(state, State::Done(_)) {
            COUNTS.dropped(1);
        }
        tracing::warn!(container = %id, "an isolator's prepare differs from the first one's: its early prepare is undone");
        return Claimed::Differed(done);
    }
    let State::Done(outcome) = state else {
        unreachable!("a running one is waited for above")
    };
    COUNTS.claimed();
    deliver(done, outcome);
    Claimed::Answered
}

/// The others' early `prepare`s of one container, registered and not yet queued
/// ([`reserve_others`]).
pub(crate) struct Others {
    id: ContainerId,
    config: ContainerConfigView,
    starts: Vec<(u64, Start)>,
}

/// The first of the agent's rein isolators to be asked (`member`, whose own call
/// runs as usual) registers every other one's early `prepare` of `config`, before
/// its own call is queued: that call may answer, and the agent ask the next
/// isolator, before the caller's thread goes on, and the next one must find its
/// early `prepare` registered (else it would run the agent's call as well as an
/// early one). [`Others::start`] queues them once the caller's own call is queued.
pub(crate) fn reserve_others(member: u64, config: &ContainerConfigView) -> Option<Others> {
    let id = eligible(config)?;
    let mut a = ahead();
    if a.groups.contains_key(&id) || a.members.len() < 2 {
        return None;
    }
    sweep(&mut a);
    let starts: Vec<(u64, Start)> = a
        .members
        .iter()
        .filter(|(m, _)| *m != member)
        .cloned()
        .collect();
    let mut states: HashMap<u64, State> = starts
        .iter()
        .map(|(m, _)| (*m, State::Running(None)))
        .collect();
    states.insert(member, State::Starter);
    a.groups.insert(
        id.clone(),
        Group {
            config: config.clone(),
            members: states,
            since: Instant::now(),
        },
    );
    Some(Others {
        id,
        config: config.clone(),
        starts,
    })
}

impl Others {
    /// Queues the others' early `prepare`s; an agent's call that came meanwhile
    /// already waits for its answer. One the agent's call or cleanup took back
    /// meanwhile (another config, a launch that ended) is not started.
    pub(crate) fn start(mut self) {
        self.start_now();
    }

    fn start_now(&mut self) {
        let reserved = std::mem::take(&mut self.starts);
        if reserved.is_empty() {
            return;
        }
        let starts: Vec<(u64, Start)> = {
            let a = ahead();
            let group = a.groups.get(&self.id);
            reserved
                .into_iter()
                .filter(|(m, _)| {
                    group.is_some_and(|g| matches!(g.members.get(m), Some(State::Running(_))))
                })
                .collect()
        };
        for (other, start) in starts {
            COUNTS.started();
            start(
                self.config.clone(),
                Box::new(Finish {
                    member: other,
                    id: self.id.clone(),
                }),
            );
        }
    }
}

impl Drop for Others {
    /// Registered early `prepare`s are started even if the caller's thread
    /// unwinds before [`Others::start`]: an agent's call may already wait for one.
    fn drop(&mut self) {
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.start_now()));
        if started.is_err() {
            tracing::error!(container = %self.id, "starting the isolators' early prepares panicked");
        }
    }
}

/// Completes a member's early `prepare`: to the agent's call if it waits, else
/// kept for it.
struct Finish {
    member: u64,
    id: ContainerId,
}

impl Completer for Finish {
    fn complete(self: Box<Self>, outcome: Outcome) {
        let mut a = ahead();
        let Some(group) = a.groups.get_mut(&self.id) else {
            drop(a);
            unclaimed(&self.id, "its launch ended first");
            return;
        };
        let waiter = match group.members.get_mut(&self.member) {
            Some(State::Running(waiter)) => waiter.take(),
            _ => {
                drop(a);
                unclaimed(&self.id, "its launch ended first");
                return;
            }
        };
        match waiter {
            Some(done) => {
                group.members.remove(&self.member);
                if group.settled() {
                    a.groups.remove(&self.id);
                }
                drop(a);
                COUNTS.claimed();
                deliver(done, outcome);
            }
            None => {
                group.members.insert(self.member, State::Done(outcome));
            }
        }
    }
}

/// The member's `cleanup()` of `id`: an answer the agent never asked for is
/// dropped (one still running is dropped when it finishes).
pub(crate) fn discard(member: u64, id: &ContainerId) {
    let mut a = ahead();
    let Some(group) = a.groups.get_mut(id) else {
        return;
    };
    let dropped = match group.members.get(&member) {
        Some(State::Done(_) | State::Running(None) | State::Starter) => {
            group.members.remove(&member)
        }
        _ => None,
    };
    if group.settled() {
        a.groups.remove(id);
    }
    drop(a);
    if matches!(dropped, Some(State::Done(_))) {
        unclaimed(id, "its launch ended first");
    }
}

/// Drops the answers of groups unclaimed for [`UNCLAIMED_FOR`] (one still
/// running stays: the agent's call may be waiting for it).
fn sweep(a: &mut Ahead) {
    let mut dropped = 0;
    a.groups.retain(|id, group| {
        if group.since.elapsed() <= UNCLAIMED_FOR {
            return true;
        }
        group.members.retain(|_, state| {
            let done = matches!(state, State::Done(_));
            if done {
                dropped += 1;
                tracing::info!(container = %id, "an isolator's early prepare was not asked for (never asked for); its cleanup releases it");
            }
            !done
        });
        !group.settled()
    });
    COUNTS.dropped(dropped);
}

fn unclaimed(id: &ContainerId, why: &str) {
    COUNTS.dropped(1);
    tracing::info!(container = %id, "an isolator's early prepare was not asked for ({why}); its cleanup releases it");
}
