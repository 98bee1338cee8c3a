//! The agent's rein isolators' `prepare`s started together by the first one asked:
//! the others' answers are then taken from their early `prepare` (run once, before
//! the agent asked them); a differing config undoes the early one; a launch that
//! ends before an isolator is asked drops its answer and its cleanup releases it;
//! nested containers are prepared as usual. One test: the early prepares are per
//! process.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use rein_modules::{
    early_isolator_prepares, ContainerChain, ContainerConfigView, IsolatorHandle, KeyValue, Outcome,
};

mod common;

use common::{completer, journaling_in_agent, Journal};

fn config(chain: &[&str], label: &str) -> ContainerConfigView {
    ContainerConfigView {
        task_labels: vec![KeyValue::new("app", label)],
        ..ContainerConfigView::new(ContainerChain::new(chain.iter().copied()), "/tmp/sandbox")
    }
}

fn wait(rx: &mpsc::Receiver<Outcome>) -> Outcome {
    rx.recv_timeout(Duration::from_secs(30))
        .expect("call completed")
}

fn prepare(handle: &IsolatorHandle, config: &ContainerConfigView) -> String {
    let (done, rx) = completer();
    handle.prepare_with(config.clone(), done);
    match wait(&rx) {
        Outcome::LaunchInfo(info) => info.environment[0].key.clone(),
        other => panic!("expected launch info, got {other:?}"),
    }
}

fn cleanup(handle: &IsolatorHandle, chain: &[&str]) {
    let (answered, rx) = completer();
    let (settled, work) = completer();
    handle.cleanup_reporting(
        ContainerChain::new(chain.iter().copied()),
        answered,
        settled,
    );
    assert!(matches!(wait(&rx), Outcome::Nothing));
    assert!(matches!(wait(&work), Outcome::Nothing));
}

/// Waits (up to 10 s) until the journal holds `entry`.
fn wait_for(journal: &Journal, entry: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !journal.lock().unwrap().iter().any(|e| e == entry) {
        assert!(
            Instant::now() < deadline,
            "no '{entry}' in {:?}",
            journal.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn count(journal: &Journal, entry: &str) -> usize {
    journal
        .lock()
        .unwrap()
        .iter()
        .filter(|e| *e == entry)
        .count()
}

#[test]
fn the_first_isolator_asked_starts_the_others_prepares() {
    let journal = Journal::default();
    let handles = journaling_in_agent(&["one", "two", "three"], &journal);
    let (one, two, three) = (&handles[0], &handles[1], &handles[2]);

    // The agent's chain: the first one asked starts the others, which run before
    // the agent asks them and are answered from that one prepare.
    let a = config(&["a"], "x");
    assert_eq!(prepare(one, &a), "ONE");
    wait_for(&journal, "two prepare a x");
    wait_for(&journal, "three prepare a x");
    assert_eq!(prepare(two, &a), "TWO");
    assert_eq!(prepare(three, &a), "THREE");
    for name in ["one", "two", "three"] {
        assert_eq!(count(&journal, &format!("{name} prepare a x")), 1);
    }
    assert_eq!(early_isolator_prepares(), (2, 2, 0));
    for h in [three, two, one] {
        cleanup(h, &["a"]);
    }

    // The agent's call to the second differs: its early prepare is undone first.
    let b = config(&["b"], "x");
    assert_eq!(prepare(one, &b), "ONE");
    wait_for(&journal, "two prepare b x");
    assert_eq!(prepare(two, &config(&["b"], "y")), "TWO");
    let log = journal.lock().unwrap().clone();
    let at = |e: &str| log.iter().position(|x| x == e).unwrap();
    assert!(at("two prepare b x") < at("two cleanup b"), "{log:?}");
    assert!(at("two cleanup b") < at("two prepare b y"), "{log:?}");
    assert_eq!(prepare(three, &b), "THREE");
    assert_eq!(early_isolator_prepares(), (4, 3, 1));
    for h in [three, two, one] {
        cleanup(h, &["b"]);
    }

    // A launch that fails before the others are asked: their cleanup drops the
    // answers and releases what the early prepares set up.
    let c = config(&["c"], "x");
    assert_eq!(prepare(one, &c), "ONE");
    wait_for(&journal, "two prepare c x");
    wait_for(&journal, "three prepare c x");
    for h in [three, two, one] {
        cleanup(h, &["c"]);
    }
    for name in ["two", "three"] {
        assert_eq!(count(&journal, &format!("{name} cleanup c")), 1);
    }
    assert_eq!(early_isolator_prepares(), (6, 3, 3));

    // A nested container: every isolator is prepared by the agent's own call.
    let nested = config(&["a", "n"], "x");
    assert_eq!(prepare(one, &nested), "ONE");
    assert_eq!(count(&journal, "two prepare a.n x"), 0);
    assert_eq!(prepare(two, &nested), "TWO");
    assert_eq!(count(&journal, "two prepare a.n x"), 1);
    assert_eq!(early_isolator_prepares(), (6, 3, 3));
}
