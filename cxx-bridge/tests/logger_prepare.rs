//! The logger's `prepare` through the bridge, without C++: launches against a
//! shipper socket that takes connections and never answers run side by side
//! (not one after another on one thread), all fall back to sandbox files, and
//! once the shipper is known wedged the later ones do not wait at all.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rein_modules::{
    create_logger, Completer, ContainerChain, ContainerConfigView, KeyValue, Outcome,
};

struct Channel(mpsc::Sender<(String, Outcome)>, String);

impl Completer for Channel {
    fn complete(self: Box<Self>, outcome: Outcome) {
        let _ = self.0.send((self.1, outcome));
    }
}

fn config(id: &str, sandbox: &std::path::Path) -> ContainerConfigView {
    ContainerConfigView::new(
        ContainerChain::new([id]),
        sandbox.as_os_str().as_encoded_bytes(),
    )
}

/// Launches `ids` at once; returns how long until all completed.
fn launch(handle: &rein_modules::LoggerHandle, dir: &std::path::Path, ids: &[String]) -> Duration {
    let (tx, rx) = mpsc::channel();
    let t = Instant::now();
    for id in ids {
        let sandbox = dir.join(id);
        std::fs::create_dir_all(&sandbox).unwrap();
        handle.prepare_with(
            config(id, &sandbox),
            Box::new(Channel(tx.clone(), id.clone())),
        );
    }
    for _ in ids {
        let (id, outcome) = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("prepare completed");
        let Outcome::ContainerIo(io) = &outcome else {
            panic!("{id}: {outcome:?}");
        };
        // SAFETY: the descriptors are ours now (as the containerizer's would be).
        drop(unsafe {
            (
                OwnedFd::from_raw_fd(io.stdout_fd),
                OwnedFd::from_raw_fd(io.stderr_fd),
            )
        });
        assert!(
            dir.join(&id).join("stdout").exists(),
            "{id}: no fallback file"
        );
    }
    t.elapsed()
}

#[test]
fn launches_against_a_silent_shipper_do_not_queue_behind_one_another() {
    use nix::sys::socket::{bind, listen, Backlog, UnixAddr};
    let d = tempfile::tempdir().unwrap();
    let socket = d.path().join("silent.sock");
    // Listening, never accepting: connections wait in the backlog, unanswered.
    let s = rein_log_module::proto::seqpacket_socket().unwrap();
    bind(s.as_raw_fd(), &UnixAddr::new(&socket).unwrap()).unwrap();
    listen(&s, Backlog::new(1024).unwrap()).unwrap();
    let handle = create_logger(&[
        KeyValue::new("shipper_socket", socket.display().to_string()),
        KeyValue::new("shipper_timeout", "1s"),
    ])
    .unwrap();
    // Threads start as calls wait for one: one to begin with.
    assert_eq!(handle.prepare_threads(), 1);
    let first: Vec<String> = (0..50).map(|i| format!("c{i}")).collect();
    let took = launch(&handle, d.path(), &first);
    let threads = handle.prepare_threads();
    eprintln!("50 launches against a silent shipper: {took:?}, {threads} threads");
    assert!(
        took < Duration::from_millis(3500),
        "50 launches took {took:?} on {threads} threads: they queued behind one another"
    );
    assert!(
        (2..=rein_modules::PREPARE_THREADS).contains(&threads),
        "{threads} threads"
    );
    let later: Vec<String> = (0..50).map(|i| format!("later{i}")).collect();
    let took = launch(&handle, d.path(), &later);
    eprintln!("50 more with the shipper known wedged: {took:?}");
    assert!(took < Duration::from_millis(900), "took {took:?}");
}
