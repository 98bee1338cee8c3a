//! The worker threads that run the modules' calls.
//!
//! Each module keeps its own queue of calls, run one at a time and in order (a
//! [`Mailbox`]), as with a thread per module; the threads are shared instead, one
//! added per module, so a module stuck in a long call holds one thread and the others
//! still find a free one (at most one thread runs a module at a time, so there is
//! always one thread per busy module).
//!
//! What sharing buys is the hand-off: a lifecycle is a chain of calls to different
//! modules (Mesos prepares isolators one after the other, each asked from the
//! thread that completed the previous one's future), and waking a parked thread for
//! each costs a scheduler round trip, milliseconds on a loaded machine. A call
//! queued by a pool thread is left to that thread, which takes it as soon as its
//! own call returns ([`Pool::schedule`]); threads park as soon as nothing is ready
//! (a spin before parking only took the CPU from the threads about to be woken).
//!
//! Callers (libprocess threads) only take the queues' locks, which are held for a
//! push or a pop, never across a module's work.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;

thread_local! {
    /// Set on the pool's threads.
    static WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Inside [`holding_wakes`] on this thread: how deep, and whether a wake-up
    /// was put off.
    static HELD: std::cell::Cell<(u32, bool)> = const { std::cell::Cell::new((0, false)) };
}

/// Runs `f` with the wake-ups its calls would cause put off until it returns: a
/// call answered on the caller's thread before its work (`cleanup()`) queues the
/// work, then answers, and the agent's continuation goes on from there (the next
/// isolator's `cleanup`, the terminal status update). A thread woken for the work
/// meanwhile could take the caller's CPU in the middle of that chain.
pub(crate) fn holding_wakes<R>(f: impl FnOnce() -> R) -> R {
    /// Ends the hold, also if `f` panics: the outermost one wakes a thread if
    /// one was put off.
    struct Hold;
    impl Drop for Hold {
        fn drop(&mut self) {
            let (depth, owed) = HELD.with(std::cell::Cell::get);
            if depth > 1 {
                HELD.with(|h| h.set((depth - 1, owed)));
                return;
            }
            HELD.with(|h| h.set((0, false)));
            if owed {
                pool().wake_one();
            }
        }
    }
    HELD.with(|h| {
        let (depth, owed) = h.get();
        h.set((depth + 1, owed));
    });
    let _hold = Hold;
    f()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A module with calls queued, as the pool's threads see it.
trait Ready: Send + Sync {
    /// Runs the module's next call.
    fn run_next(self: Arc<Self>);
}

/// What a mailbox holds: a call, or the order to drop the module.
enum Task<S: ?Sized> {
    Run(Box<dyn FnOnce(&mut S) + Send>),
    Close,
}

struct Queue<S: ?Sized> {
    tasks: VecDeque<Task<S>>,
    /// In the pool's run queue or running: the module is not queued twice.
    scheduled: bool,
}

/// A module instance `S` and its calls, run one at a time, in order, by the pool.
pub(crate) struct Mailbox<S: ?Sized> {
    queue: Mutex<Queue<S>>,
    /// Locked only by the thread running the module's call (never by a caller);
    /// `None` once closed.
    state: Mutex<Option<Box<S>>>,
}

impl<S: ?Sized + Send + 'static> Mailbox<S> {
    /// Takes `state` in and adds a thread to the pool for it.
    pub(crate) fn start(name: &'static str, state: Box<S>) -> std::io::Result<Arc<Self>> {
        pool().add_worker(name)?;
        Ok(Arc::new(Self {
            queue: Mutex::new(Queue {
                tasks: VecDeque::new(),
                scheduled: false,
            }),
            state: Mutex::new(Some(state)),
        }))
    }

    /// Queues a call.
    pub(crate) fn send(self: &Arc<Self>, job: Box<dyn FnOnce(&mut S) + Send>) {
        self.push(Task::Run(job));
    }

    /// Queues work to run before every call queued so far: what a call leaves to
    /// do after its answer, which the module's next call must find done. The
    /// thread that answered goes on with whatever the answer started elsewhere (the
    /// next module of a chain) before it.
    pub(crate) fn send_first(self: &Arc<Self>, job: Box<dyn FnOnce(&mut S) + Send>) {
        self.queue_task(Task::Run(job), true);
    }

    /// Drops the module after the calls already queued, on a pool thread (a module's
    /// drop may do kernel work), and takes its thread out of the pool.
    pub(crate) fn close(self: &Arc<Self>) {
        *lock(&CLOSING) += 1;
        self.push(Task::Close);
    }

    fn push(self: &Arc<Self>, task: Task<S>) {
        self.queue_task(task, false);
    }

    /// Queues `task` (`first`: before the others) and hands the module to the pool
    /// if it is not there yet.
    fn queue_task(self: &Arc<Self>, task: Task<S>, first: bool) {
        let schedule = {
            let mut queue = lock(&self.queue);
            if first {
                queue.tasks.push_front(task);
            } else {
                queue.tasks.push_back(task);
            }
            !std::mem::replace(&mut queue.scheduled, true)
        };
        if schedule {
            pool().schedule(self.clone());
        }
    }
}

impl<S: ?Sized + Send + 'static> Ready for Mailbox<S> {
    fn run_next(self: Arc<Self>) {
        let task = lock(&self.queue).tasks.pop_front();
        match task {
            Some(Task::Run(job)) => {
                if let Some(state) = lock(&self.state).as_deref_mut() {
                    job(state);
                }
            }
            Some(Task::Close) => {
                drop(lock(&self.state).take());
                pool().retire_worker();
                *lock(&CLOSING) -= 1;
                CLOSED.notify_all();
            }
            None => {}
        }
        let more = {
            let mut queue = lock(&self.queue);
            queue.scheduled = !queue.tasks.is_empty();
            queue.scheduled
        };
        if more {
            // Behind the modules already waiting: one busy module does not starve the rest.
            pool().schedule(self);
        }
    }
}

/// Modules closed whose drop has not run yet ([`wait_for_closed`]).
static CLOSING: Mutex<usize> = Mutex::new(0);
static CLOSED: Condvar = Condvar::new();

/// Waits (up to `timeout`) until every module closed so far has been dropped;
/// whether they all were.
pub(crate) fn wait_for_closed(timeout: std::time::Duration) -> bool {
    let (_closing, waited) = CLOSED
        .wait_timeout_while(lock(&CLOSING), timeout, |closing| *closing > 0)
        .unwrap_or_else(PoisonError::into_inner);
    !waited.timed_out()
}

struct RunQueue {
    ready: VecDeque<Arc<dyn Ready>>,
    /// Threads parked on `wake`.
    sleepers: usize,
    /// Threads to end (their modules were closed).
    retiring: usize,
}

struct Pool {
    run: Mutex<RunQueue>,
    wake: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        run: Mutex::new(RunQueue {
            ready: VecDeque::new(),
            sleepers: 0,
            retiring: 0,
        }),
        wake: Condvar::new(),
    })
}

impl Pool {
    fn add_worker(&'static self, name: &'static str) -> std::io::Result<()> {
        thread::Builder::new()
            .name(format!("rein-{name}"))
            .spawn(move || self.work())
            .map(drop)
    }

    fn retire_worker(&self) {
        lock(&self.run).retiring += 1;
        self.wake.notify_one();
    }

    fn schedule(&self, module: Arc<dyn Ready>) {
        let mut run = lock(&self.run);
        run.ready.push_back(module);
        // A call queued by a pool thread (a call's answer asking the next module
        // of a chain, or the work it leaves for after its answer) is taken by that
        // thread as soon as its own call returns, which is about to happen: it
        // wakes a parked thread then only for what is left beyond that one
        // ([`Pool::work`]). Waking one now would cost a scheduler round trip for
        // a call this thread reaches sooner.
        if run.sleepers > 0 && !WORKER.with(std::cell::Cell::get) {
            let (depth, _) = HELD.with(std::cell::Cell::get);
            if depth > 0 {
                HELD.with(|h| h.set((depth, true)));
            } else {
                self.wake.notify_one();
            }
        }
    }

    /// Wakes a parked thread if a module is ready (the one woken wakes another
    /// for what it leaves: [`Pool::work`]).
    fn wake_one(&self) {
        let run = lock(&self.run);
        if run.sleepers > 0 && !run.ready.is_empty() {
            self.wake.notify_one();
        }
    }

    /// A worker thread: runs modules' calls, parks when none is ready. One that
    /// takes a module and leaves others ready wakes a parked thread for them (the
    /// calls pool threads queued without waking anyone, or a burst of callers').
    fn work(&self) {
        WORKER.with(|w| w.set(true));
        let mut run = lock(&self.run);
        loop {
            if let Some(module) = run.ready.pop_front() {
                if run.sleepers > 0 && !run.ready.is_empty() {
                    self.wake.notify_one();
                }
                drop(run);
                module.run_next();
                run = lock(&self.run);
                continue;
            }
            if run.retiring > 0 {
                run.retiring -= 1;
                return;
            }
            run.sleepers += 1;
            run = self.wake.wait(run).unwrap_or_else(PoisonError::into_inner);
            run.sleepers -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn calls_of_one_module_run_in_order_and_modules_run_side_by_side() {
        let slow = Mailbox::start("test-slow", Box::new(Vec::<u32>::new())).unwrap();
        let fast = Mailbox::start("test-fast", Box::new(Vec::<u32>::new())).unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        // The slow module is stuck in a call until released...
        slow.send(Box::new(move |_: &mut Vec<u32>| {
            let _ = lock(&release_rx).recv_timeout(Duration::from_secs(60));
        }));
        // ...and the other module's calls still run, in order.
        let (tx, rx) = mpsc::channel();
        for i in 0..100 {
            let tx = tx.clone();
            fast.send(Box::new(move |seen: &mut Vec<u32>| {
                seen.push(i);
                if i == 99 {
                    let _ = tx.send(seen.clone());
                }
            }));
        }
        let seen = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        release_tx.send(()).unwrap();
        let (tx, rx) = mpsc::channel();
        slow.send(Box::new(move |_| {
            let _ = tx.send(());
        }));
        rx.recv_timeout(Duration::from_secs(60)).unwrap();
        slow.close();
        fast.close();
    }

    #[test]
    fn calls_queued_while_wakes_are_held_run_once_the_hold_ends() {
        let module = Mailbox::start("test-held", Box::new(())).unwrap();
        let (tx, rx) = mpsc::channel();
        holding_wakes(|| {
            holding_wakes(|| {
                let tx = tx.clone();
                module.send(Box::new(move |_| {
                    let _ = tx.send(1);
                }));
            });
            module.send(Box::new(move |_| {
                let _ = tx.send(2);
            }));
        });
        let got: Vec<i32> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(60)).unwrap())
            .collect();
        assert_eq!(got, vec![1, 2]);
        let (depth, owed) = HELD.with(std::cell::Cell::get);
        assert_eq!((depth, owed), (0, false), "the hold is over");
        module.close();
    }

    #[test]
    fn bursts_of_calls_from_callers_and_pool_threads_all_run_beside_a_stuck_module() {
        // Calls queued by pool threads wake nobody: a burst must still reach
        // every ready module, also while one module holds its thread and calls
        // arrive both from outside the pool and from calls running on it.
        let stuck = Mailbox::start("test-stuck", Box::new(())).unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        stuck.send(Box::new(move |()| {
            let _ = lock(&release_rx).recv_timeout(Duration::from_secs(120));
        }));
        let modules: Vec<_> = (0..6)
            .map(|_| Mailbox::start("test-burst", Box::new(0u64)).unwrap())
            .collect();
        let modules = Arc::new(modules);
        let (tx, rx) = mpsc::channel();
        let rounds = 2_000;
        let callers: Vec<_> = (0..3)
            .map(|c| {
                let modules = modules.clone();
                let tx = tx.clone();
                thread::spawn(move || {
                    for round in 0..rounds {
                        let i = (round + c) % modules.len();
                        let next = modules[(i + 1) % modules.len()].clone();
                        let tx = tx.clone();
                        // Each call queues another from its pool thread.
                        modules[i].send(Box::new(move |n: &mut u64| {
                            *n += 1;
                            next.send(Box::new(move |n: &mut u64| {
                                *n += 1;
                                let _ = tx.send(());
                            }));
                        }));
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.join().unwrap();
        }
        let mut got = 0;
        while got < 3 * rounds {
            assert!(
                rx.recv_timeout(Duration::from_secs(60)).is_ok(),
                "{got} of {} chains finished; the rest waited with threads parked",
                3 * rounds
            );
            got += 1;
        }
        release_tx.send(()).unwrap();
        stuck.close();
        for module in modules.iter() {
            module.close();
        }
    }

    struct Dropped(mpsc::Sender<thread::ThreadId>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            let _ = self.0.send(thread::current().id());
        }
    }

    /// Its drop waits for a message.
    struct SlowDrop(Mutex<mpsc::Receiver<()>>);
    impl Drop for SlowDrop {
        fn drop(&mut self) {
            let _ = lock(&self.0).recv_timeout(Duration::from_secs(60));
        }
    }

    #[test]
    fn closed_modules_are_waited_for_until_dropped() {
        let (release, rx) = mpsc::channel();
        let module = Mailbox::start("test-slow-drop", Box::new(SlowDrop(Mutex::new(rx)))).unwrap();
        module.close();
        assert!(
            !wait_for_closed(Duration::from_millis(50)),
            "its drop is still running"
        );
        release.send(()).unwrap();
        assert!(wait_for_closed(Duration::from_secs(60)));
    }

    #[test]
    fn a_closed_module_is_dropped_on_a_pool_thread_after_its_calls() {
        let (tx, rx) = mpsc::channel();
        let module = Mailbox::start("test-drop", Box::new(Dropped(tx))).unwrap();
        let (ran_tx, ran_rx) = mpsc::channel();
        module.send(Box::new(move |_| {
            let _ = ran_tx.send(());
        }));
        module.close();
        ran_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        let dropped_on = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_ne!(dropped_on, thread::current().id());
    }
}
