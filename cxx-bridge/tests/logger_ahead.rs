//! The logger's registration started by the isolators' `prepare` (as the agent
//! calls them: isolators first, the logger last), against a shipper socket served
//! by this test: the agent's own call is then answered with that registration
//! (one registration per container, the same pipes); a launch that ends before the
//! logger is asked closes its pipes; a differing config or a nested container gets
//! the usual call. One test: the early registrations are per process.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::completer;
use rein_log_module::proto;
use rein_modules::{
    create_logger, early_logger_registrations, ContainerChain, ContainerConfigView, IsolatorHandle,
    KeyValue, Outcome,
};

/// What the test's shipper received: per container key, the stdout read end of
/// each registration; keys held are answered only once released.
#[derive(Default)]
struct Received {
    pipes: HashMap<String, Vec<OwnedFd>>,
    held: Vec<String>,
}

struct Shipper {
    state: Arc<(Mutex<Received>, Condvar)>,
}

impl Shipper {
    fn start(socket: &std::path::Path) -> Shipper {
        use nix::sys::socket::{accept4, bind, listen, Backlog, SockFlag, UnixAddr};
        let s = proto::seqpacket_socket().unwrap();
        bind(s.as_raw_fd(), &UnixAddr::new(socket).unwrap()).unwrap();
        listen(&s, Backlog::new(64).unwrap()).unwrap();
        let state: Arc<(Mutex<Received>, Condvar)> = Arc::default();
        let st = state.clone();
        std::thread::spawn(move || loop {
            let Ok(fd) = accept4(s.as_raw_fd(), SockFlag::SOCK_CLOEXEC) else {
                continue;
            };
            // SAFETY: a new descriptor from accept4, owned by nobody else.
            let conn = unsafe { OwnedFd::from_raw_fd(fd) };
            let st = st.clone();
            std::thread::spawn(move || {
                let Ok((msg, mut fds)) = proto::recv_with_fds(conn.as_fd()) else {
                    return;
                };
                let key = match proto::Request::decode(&msg) {
                    Ok(proto::Request::Register(reg)) => reg.key,
                    _ => String::new(),
                };
                let (lock, cond) = &*st;
                let mut r = lock.lock().unwrap();
                if !fds.is_empty() {
                    r.pipes.entry(key.clone()).or_default().push(fds.remove(0));
                }
                cond.notify_all();
                while r.held.contains(&key) {
                    r = cond.wait(r).unwrap();
                }
                drop(r);
                let _ = proto::send_with_fds(conn.as_fd(), &proto::Reply::Ok.encode(), &[]);
            });
        });
        Shipper { state }
    }

    fn hold(&self, key: &str) {
        self.state.0.lock().unwrap().held.push(key.into());
    }

    fn release(&self, key: &str) {
        let (lock, cond) = &*self.state;
        lock.lock().unwrap().held.retain(|k| k != key);
        cond.notify_all();
    }

    fn registrations(&self, key: &str) -> usize {
        self.state
            .0
            .lock()
            .unwrap()
            .pipes
            .get(key)
            .map_or(0, Vec::len)
    }

    /// Waits (up to 10 s) until `key` has `n` registrations.
    fn wait_for(&self, key: &str, n: usize) -> bool {
        self.wait_for_within(key, n, Duration::from_secs(10))
    }

    /// Waits (up to `limit`) until `key` has `n` registrations.
    fn wait_for_within(&self, key: &str, n: usize, limit: Duration) -> bool {
        let (lock, cond) = &*self.state;
        let deadline = Instant::now() + limit;
        let mut r = lock.lock().unwrap();
        while r.pipes.get(key).map_or(0, Vec::len) < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            r = cond.wait_timeout(r, left).unwrap().0;
        }
        true
    }

    /// Reads what arrived on registration `i` of `key` (until its writers close).
    fn read_all(&self, key: &str, i: usize) -> String {
        let fd = self.state.0.lock().unwrap().pipes[key][i]
            .try_clone()
            .unwrap();
        let mut text = String::new();
        std::fs::File::from(fd).read_to_string(&mut text).unwrap();
        text
    }
}

fn config(chain: &[&str], sandbox: &std::path::Path, label: &str) -> ContainerConfigView {
    std::fs::create_dir_all(sandbox).unwrap();
    ContainerConfigView {
        task_labels: vec![KeyValue::new("team", label)],
        ..ContainerConfigView::new(
            ContainerChain::new(chain.iter().copied()),
            sandbox.as_os_str().as_encoded_bytes(),
        )
    }
}

/// Takes the descriptors of a logger answer; writes `line` to its stdout.
fn write_to(outcome: Outcome, line: &str) {
    let Outcome::ContainerIo(io) = outcome else {
        panic!("expected descriptors, got {outcome:?}");
    };
    // SAFETY: the descriptors were just handed over by prepare and are ours.
    let (out, err) = unsafe {
        (
            OwnedFd::from_raw_fd(io.stdout_fd),
            OwnedFd::from_raw_fd(io.stderr_fd),
        )
    };
    drop(err);
    std::fs::File::from(out).write_all(line.as_bytes()).unwrap();
}

fn prepare_isolators(isolators: &[IsolatorHandle], view: &ContainerConfigView) {
    for iso in isolators {
        let (done, rx) = completer();
        iso.prepare_with(view.clone(), done);
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            Outcome::LaunchInfo(_)
        ));
    }
}

/// A disk isolator whose `prepare` waits until its gate opens (or 30 s).
struct Gated(std::sync::Mutex<std::sync::mpsc::Receiver<()>>);

impl rein_core::Isolator for Gated {
    fn name(&self) -> &'static str {
        "disk"
    }
    fn recover(
        &mut self,
        _: &[rein_core::RecoveredContainer],
        _: &[rein_core::ContainerId],
    ) -> Result<(), rein_core::isolator::Error> {
        Ok(())
    }
    fn prepare(
        &mut self,
        _: &rein_core::ContainerSpec,
    ) -> Result<rein_core::LaunchInfo, rein_core::isolator::Error> {
        let _ = self.0.lock().unwrap().recv_timeout(Duration::from_secs(30));
        Ok(rein_core::LaunchInfo::default())
    }
    fn isolate(
        &mut self,
        _: &rein_core::ContainerId,
        _: i32,
    ) -> Result<(), rein_core::isolator::Error> {
        Ok(())
    }
    fn cleanup(&mut self, _: &rein_core::ContainerId) -> Result<(), rein_core::isolator::Error> {
        Ok(())
    }
}

#[test]
fn the_isolators_start_the_loggers_registration_and_the_agents_call_takes_it() {
    let d = tempfile::tempdir().unwrap();
    let socket = d.path().join("shipper.sock");
    let shipper = Shipper::start(&socket);
    let logger = create_logger(&[
        KeyValue::new("shipper_socket", socket.display().to_string()),
        KeyValue::new("shipper_timeout", "10s"),
    ])
    .unwrap();
    let isolators: Vec<IsolatorHandle> = (0..3)
        .map(|_| IsolatorHandle::start_in_agent(Box::<common::Quiet>::default()).unwrap())
        .collect();
    let counts = || {
        let (started, claimed, dropped) = early_logger_registrations();
        format!("early registrations: started {started}, claimed {claimed}, dropped {dropped}")
    };

    // 1. Registered while the isolators prepare; the agent's call takes it.
    let view = config(&["c1"], &d.path().join("c1"), "a");
    prepare_isolators(&isolators, &view);
    assert!(
        shipper.wait_for("c1", 1),
        "no registration before the logger's call; {}",
        counts()
    );
    let (done, rx) = completer();
    logger.prepare_with(view, done);
    write_to(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "one\n");
    assert_eq!(shipper.registrations("c1"), 1, "{}", counts());
    assert_eq!(shipper.read_all("c1", 0), "one\n");

    // 2. The agent's call arrives while the shipper has not answered yet: it waits
    //    for that answer, and there is still one registration.
    shipper.hold("c2");
    let view = config(&["c2"], &d.path().join("c2"), "a");
    prepare_isolators(&isolators, &view);
    assert!(shipper.wait_for("c2", 1), "{}", counts());
    let (done, rx) = completer();
    logger.prepare_with(view, done);
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "answered before the shipper did"
    );
    shipper.release("c2");
    write_to(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "two\n");
    assert_eq!(shipper.registrations("c2"), 1, "{}", counts());
    assert_eq!(shipper.read_all("c2", 0), "two\n");

    // 3. The launch ends before the logger is asked: cleanup closes the pipes.
    let view = config(&["c3"], &d.path().join("c3"), "a");
    prepare_isolators(&isolators, &view);
    assert!(shipper.wait_for("c3", 1), "{}", counts());
    let (_, dropped_before, _) = early_logger_registrations();
    for iso in &isolators {
        let (done, rx) = completer();
        iso.cleanup_with(ContainerChain::new(["c3"]), done);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    // End of file only once every write end is closed.
    assert_eq!(shipper.read_all("c3", 0), "", "{}", counts());
    let _ = dropped_before;

    // 4. The agent's call differs (another label): the early registration is
    //    dropped and the call registers anew; its pipes are the second ones.
    let view = config(&["c4"], &d.path().join("c4"), "a");
    prepare_isolators(&isolators, &view);
    assert!(shipper.wait_for("c4", 1), "{}", counts());
    let (done, rx) = completer();
    logger.prepare_with(config(&["c4"], &d.path().join("c4"), "b"), done);
    write_to(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "four\n");
    assert_eq!(shipper.registrations("c4"), 2, "{}", counts());
    assert_eq!(shipper.read_all("c4", 0), "", "the dropped one is closed");
    assert_eq!(shipper.read_all("c4", 1), "four\n");

    // 5. A nested container: nothing early; the agent's call registers it.
    let view = config(&["c5", "n"], &d.path().join("c5"), "a");
    prepare_isolators(&isolators, &view);
    let (done, rx) = completer();
    logger.prepare_with(view, done);
    write_to(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "five\n");
    assert_eq!(shipper.registrations("c5.n"), 1, "{}", counts());

    let (started, claimed, dropped) = early_logger_registrations();
    assert_eq!((started, claimed, dropped), (4, 2, 2), "{}", counts());
    // One launch at a time needs one thread (two in a race of its counters).
    assert!(
        logger.prepare_threads() <= 2,
        "{} threads",
        logger.prepare_threads()
    );

    // 6. With a disk isolator in the agent, only its prepare starts the
    //    registration (the shipper's sandbox files are made once the sandbox is
    //    tagged with the project id), not the isolators before it, even though its
    //    prepare starts early, with theirs (a disk isolator held in its prepare).
    let (gate, held) = std::sync::mpsc::channel::<()>();
    let disk =
        IsolatorHandle::start_in_agent(Box::new(Gated(std::sync::Mutex::new(held)))).unwrap();
    let view = config(&["c6"], &d.path().join("c6"), "a");
    prepare_isolators(&isolators, &view);
    assert!(
        !shipper.wait_for_within("c6", 1, Duration::from_millis(200)),
        "registered before the disk isolator's prepare; {}",
        counts()
    );
    assert_eq!(early_logger_registrations().0, started, "{}", counts());
    gate.send(()).unwrap();
    assert!(shipper.wait_for("c6", 1), "{}", counts());
    prepare_isolators(std::slice::from_ref(&disk), &view);
    let (done, rx) = completer();
    logger.prepare_with(view, done);
    write_to(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "six\n");
    assert_eq!(shipper.registrations("c6"), 1, "{}", counts());
    assert_eq!(shipper.read_all("c6", 0), "six\n");
    assert_eq!(early_logger_registrations().1, claimed + 1, "{}", counts());
}
