//! The first isolator's own `prepare` may answer, and the agent ask the next
//! isolator, before the caller's thread has gone on from queueing that call: the
//! next one must still be answered from its early `prepare`, and no isolator may be
//! prepared twice. Forced here: every thread on one CPU, the caller's thread at
//! `SCHED_IDLE`, so the worker thread it wakes runs the whole chain before the
//! caller's thread takes the CPU back. Its own process: the worker threads must be
//! the ones this test starts.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use rein_modules::{
    early_isolator_prepares, Completer, ContainerChain, ContainerConfigView, IsolatorHandle,
    Outcome,
};

mod common;

use common::{journaling_in_agent, Journal};

/// The agent's chain of `prepare`s: each answer asks the next isolator, from the
/// thread that completed it; the last sends every answer.
struct Chain {
    handles: Arc<Vec<IsolatorHandle>>,
    next: usize,
    config: ContainerConfigView,
    answers: Vec<Outcome>,
    done: mpsc::Sender<Vec<Outcome>>,
}

impl Chain {
    fn ask_next(mut self: Box<Self>) {
        if self.next == self.handles.len() {
            let _ = self.done.send(std::mem::take(&mut self.answers));
            return;
        }
        let handles = self.handles.clone();
        let i = self.next;
        self.next += 1;
        let config = self.config.clone();
        handles[i].prepare_with(config, self);
    }
}

impl Completer for Chain {
    fn complete(mut self: Box<Self>, outcome: Outcome) {
        self.answers.push(outcome);
        self.ask_next();
    }
}

/// Pins this thread (and the threads it starts) to its first allowed CPU.
fn pin_to_one_cpu() {
    let allowed = sched_getaffinity(Pid::from_raw(0)).expect("affinity");
    let cpu = (0..CpuSet::count())
        .find(|&c| allowed.is_set(c).unwrap_or(false))
        .expect("an allowed CPU");
    let mut one = CpuSet::new();
    one.set(cpu).expect("cpu in range");
    sched_setaffinity(Pid::from_raw(0), &one).expect("pinning");
}

/// This thread gives way to any other thread that becomes runnable.
fn idle_priority() {
    let param = nix::libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid
    // sched_param that outlives the call; SCHED_IDLE needs no privilege.
    let rc = unsafe { nix::libc::sched_setscheduler(0, nix::libc::SCHED_IDLE, &param) };
    assert_eq!(rc, 0, "SCHED_IDLE: {}", std::io::Error::last_os_error());
}

#[test]
fn the_next_isolator_asked_before_the_caller_goes_on_is_answered_from_its_early_prepare() {
    pin_to_one_cpu();
    let journal = Journal::default();
    // Started before the caller's thread drops to SCHED_IDLE: the worker threads
    // keep the ordinary policy.
    let handles = Arc::new(journaling_in_agent(&["one", "two", "three"], &journal));
    idle_priority();
    let containers: u64 = 50;
    for i in 0..containers {
        let id = format!("c{i}");
        let config = ContainerConfigView::new(ContainerChain::new([id.as_str()]), "/tmp/sandbox");
        let (tx, rx) = mpsc::channel();
        Box::new(Chain {
            handles: handles.clone(),
            next: 0,
            config,
            answers: Vec::new(),
            done: tx,
        })
        .ask_next();
        let answers = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("container {id}: the chain did not finish"));
        for (name, answer) in ["one", "two", "three"].iter().zip(&answers) {
            assert!(
                matches!(answer, Outcome::LaunchInfo(_)),
                "container {id}: {name} answered {answer:?}; journal {:?}",
                journal.lock().unwrap()
            );
        }
    }
    let log = journal.lock().unwrap().clone();
    for i in 0..containers {
        for name in ["one", "two", "three"] {
            let entry = format!("{name} prepare c{i} ");
            let times = log.iter().filter(|e| **e == entry).count();
            assert_eq!(times, 1, "'{entry}' {times} times: {log:?}");
        }
    }
    let (started, claimed, dropped) = early_isolator_prepares();
    assert_eq!(
        (started, claimed, dropped),
        (2 * containers, 2 * containers, 0),
        "early prepares started, claimed, dropped"
    );
}
