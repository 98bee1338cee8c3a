//! Launches against a wedged shipper: a real shipper whose worker is stopped
//! (SIGSTOP) and a socket that takes connections and never answers. Launches
//! must not queue behind one another, fall back to intact sandbox files,
//! stop waiting at all once the shipper is known wedged (the breaker), hand
//! containers to it again once it answers (SIGCONT), and every fallen-back
//! container is recorded and counted. Also: messages cut by the kernel
//! (`MSG_TRUNC`, `MSG_CTRUNC`) are refused and their descriptors closed.

mod common;

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use common::shipper::{buffered_seqs, spec, Shipper};
use rein_logger::module::LoggerModule;
use rein_logger::proto;

fn module(socket: &Path, timeout: &str) -> LoggerModule {
    LoggerModule::new(&[
        ("shipper_socket".to_string(), socket.display().to_string()),
        ("shipper_timeout".to_string(), timeout.to_string()),
    ])
    .unwrap()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool, info: impl Fn() -> String) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < limit,
            "timed out waiting for {what}: {}",
            info()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) of a process this test started (through the supervisor).
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

fn n(c: &serde_json::Value, path: &str) -> u64 {
    path.split('.')
        .fold(c, |v, k| &v[k])
        .as_u64()
        .unwrap_or_default()
}

/// A container's lines, written through its descriptor as the task would.
fn write_lines(fd: &OwnedFd, name: &str, seqs: std::ops::Range<u32>) {
    let mut f = std::fs::File::from(fd.try_clone().unwrap());
    for i in seqs {
        writeln!(f, "{name} seq={i} {}", "x".repeat(40)).unwrap();
    }
}

/// `data` is exactly lines `name seq=0..n`.
fn assert_lines(data: &[u8], name: &str, n: u32) {
    let text = String::from_utf8_lossy(data);
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(
        got.len(),
        n as usize,
        "{name}: {} lines, {n} expected",
        got.len()
    );
    for (i, l) in got.iter().enumerate() {
        assert_eq!(*l, format!("{name} seq={i} {}", "x".repeat(40)), "{name}");
    }
}

/// Names in `dir` starting with `prefix.` (moved-aside copies of a file).
fn moved_aside(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{prefix}.")))
        .collect()
}

struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        // Never leave a stopped worker behind a failed assertion.
        // SAFETY: kill(2) of a process this test started.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[test]
fn concurrent_launches_against_a_stopped_shipper_take_one_timeout_and_keep_their_files() {
    const N: usize = 50;
    let d = tempfile::tempdir().unwrap();
    let mut sh = Shipper::start(d.path(), "");
    let m = Arc::new(module(&sh.socket, "1s"));
    let worker = sh.worker_pid();
    signal(worker, libc::SIGSTOP);
    let stopped = Stopped(worker);

    let gate = Arc::new(Barrier::new(N + 1));
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let (m, gate) = (Arc::clone(&m), Arc::clone(&gate));
            let sandbox = d.path().join(format!("s{i}"));
            std::thread::spawn(move || {
                let sp = spec(&format!("c{i}"), &sandbox, &[]);
                gate.wait();
                let t = Instant::now();
                let io = m.prepare(&sp).unwrap();
                (sandbox, io, t.elapsed())
            })
        })
        .collect();
    gate.wait();
    let t = Instant::now();
    let got: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let total = t.elapsed();
    let slowest = got.iter().map(|g| g.2).max().unwrap();
    eprintln!("{N} concurrent prepares against a stopped shipper: {total:?} (slowest {slowest:?})");
    assert!(
        total < Duration::from_secs(3),
        "{N} launches took {total:?}: they queued behind one another"
    );
    assert!(
        got.iter().all(|g| !g.1.shipped),
        "a stopped shipper took a container"
    );
    assert!(m.breaker_open(), "a timeout must open the breaker");
    for (i, (_, io, _)) in got.iter().enumerate() {
        write_lines(&io.stdout, &format!("c{i}"), 0..10);
    }

    // The shipper wakes up and finds 50 registrations whose modules gave up.
    signal(worker, libc::SIGCONT);
    drop(stopped);
    wait_for(
        "the breaker to close",
        Duration::from_secs(20),
        || !m.breaker_open(),
        String::new,
    );
    wait_for(
        "the worker to refuse the abandoned registrations and count the fallbacks",
        Duration::from_secs(20),
        || {
            let c = sh.counters();
            n(&c, "reader.registrations_refused") == N as u64
                && n(&c, "reader.fallback_containers") == N as u64
        },
        || sh.counters()["reader"].to_string(),
    );
    let c = sh.counters();
    assert_eq!(n(&c, "reader.containers_registered"), 0, "{c}");
    assert_eq!(n(&c, "reader.fallback_reported"), N as u64, "{c}");

    // Every container's own file is intact at its name, written on after.
    for (i, (sandbox, io, _)) in got.iter().enumerate() {
        write_lines(&io.stdout, &format!("c{i}"), 10..20);
        assert_lines(
            &std::fs::read(sandbox.join("stdout")).unwrap(),
            &format!("c{i}"),
            20,
        );
        assert!(
            moved_aside(sandbox, "stdout").is_empty() && moved_aside(sandbox, "stderr").is_empty(),
            "a late registration moved the container's files aside: {:?}",
            moved_aside(sandbox, "stdout")
        );
    }

    // Each is recorded (root-only), naming its sandbox and the reason.
    let dir = rein_logger::fallback::dir_for(&sh.socket);
    let recs = rein_logger::fallback::list(&dir);
    assert_eq!(recs.len(), N);
    for (path, rec) in &recs {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(path).unwrap().mode() & 0o777, 0o600);
        assert!(rec.sandbox.starts_with(d.path()), "{rec:?}");
        assert!(rec.reason.contains("no answer within"), "{rec:?}");
    }
    // And listed for the operator, one line each.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rein-log-shipper"))
        .args(["fallbacks", "--config"])
        .arg(d.path().join("shipper.conf"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), N);
    assert!(listed.iter().all(
        |l| l["container"].as_str().unwrap().starts_with("parent-1.c")
            && l["reason"].as_str().unwrap().contains("no answer within")
    ));
    // A gone sandbox takes its record with it, counted.
    std::fs::remove_dir_all(&got[0].0).unwrap();
    wait_for(
        "the record of a removed sandbox to go",
        Duration::from_secs(20),
        || n(&sh.counters(), "reader.fallback_records_removed") == 1,
        || sh.counters()["reader"].to_string(),
    );
    wait_for(
        "the gauge to follow",
        Duration::from_secs(20),
        || n(&sh.counters(), "reader.fallback_containers") == N as u64 - 1,
        || sh.counters()["reader"].to_string(),
    );
    sh.stop();
}

#[test]
fn the_breaker_makes_later_launches_fall_back_at_once_and_closes_when_the_shipper_answers() {
    let d = tempfile::tempdir().unwrap();
    // The sink is unreachable: records stay in the disk buffer.
    let mut sh = Shipper::start(d.path(), "es_url = http://127.0.0.1:9\nes_timeout = 200ms");
    let m = module(&sh.socket, "2s");
    let worker = sh.worker_pid();
    signal(worker, libc::SIGSTOP);
    let stopped = Stopped(worker);

    let t = Instant::now();
    let first = m
        .prepare(&spec("first", &d.path().join("first"), &[]))
        .unwrap();
    let waited = t.elapsed();
    assert!(!first.shipped);
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_millis(4000),
        "the first launch waits about shipper_timeout, all steps together: {waited:?}"
    );
    assert!(m.breaker_open());
    // Later launches: no wait at all.
    let t = Instant::now();
    let later: Vec<_> = (0..20)
        .map(|i| {
            let sandbox = d.path().join(format!("later{i}"));
            let io = m
                .prepare(&spec(&format!("later{i}"), &sandbox, &[]))
                .unwrap();
            (sandbox, io)
        })
        .collect();
    let took = t.elapsed();
    eprintln!("20 launches with the breaker open: {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "20 launches with the breaker open took {took:?} (more than one shipper_timeout): they waited for the shipper"
    );
    assert!(later.iter().all(|(_, io)| !io.shipped));
    for (i, (_, io)) in later.iter().enumerate() {
        write_lines(&io.stdout, &format!("later{i}"), 0..5);
        write_lines(&io.stderr, &format!("later{i}err"), 0..3);
    }
    write_lines(&first.stdout, "first", 0..4);

    signal(worker, libc::SIGCONT);
    drop(stopped);
    wait_for(
        "the probe to close the breaker",
        Duration::from_secs(20),
        || !m.breaker_open(),
        String::new,
    );
    // Handed to the shipper again, and shipped.
    let sandbox = d.path().join("after");
    let io = m
        .prepare(&spec(
            "after",
            &sandbox,
            &[("rein.log.sink", "elasticsearch")],
        ))
        .unwrap();
    assert!(io.shipped, "the breaker closed but the launch fell back");
    write_lines(&io.stdout, "after", 0..7);
    drop(io);
    // The fallen-back containers' files are followed while they still run...
    let buffered = |want: u64| {
        move |c: &serde_json::Value| {
            n(c, "reader.lines_read") == want && n(c, "reader.records_buffered") == want
        }
    };
    let (after, fallen) = (7, 4 + 20 * (5 + 3));
    let done = buffered(after + fallen);
    wait_for(
        "every line so far in the disk buffer",
        Duration::from_secs(30),
        || done(&sh.counters()),
        || sh.counters()["reader"].to_string(),
    );
    // ... and what they write later too, a last line without newline included.
    for (i, (_, io)) in later.iter().enumerate() {
        write_lines(&io.stdout, &format!("later{i}"), 5..10);
    }
    write!(
        std::fs::File::from(first.stdout.try_clone().unwrap()),
        "first seq=4 {}",
        "x".repeat(40)
    )
    .unwrap();
    let fallen = fallen + 20 * 5 + 1;
    let done = buffered(after + fallen);
    wait_for(
        "the later lines in the disk buffer",
        Duration::from_secs(30),
        || done(&sh.counters()),
        || sh.counters()["reader"].to_string(),
    );
    assert_eq!(n(&sh.counters(), "reader.fallback_containers"), 21);
    // The containers end: their records go, counted.
    drop(later);
    drop(first);
    wait_for(
        "the fallen-back containers to be done",
        Duration::from_secs(30),
        || {
            let c = sh.counters();
            n(&c, "reader.fallback_shipped") == 21 && n(&c, "reader.fallback_containers") == 0
        },
        || sh.counters()["reader"].to_string(),
    );
    let dir = rein_logger::fallback::dir_for(&sh.socket);
    assert!(rein_logger::fallback::list(&dir).is_empty());
    assert_lines(&std::fs::read(sandbox.join("stdout")).unwrap(), "after", 7);
    let c = sh.counters();
    // The first launch's registration was queued, then refused; the probes
    // are answered and count nothing.
    assert_eq!(n(&c, "reader.registrations_refused"), 1, "{c}");
    assert_eq!(n(&c, "reader.containers_registered"), 1, "{c}");
    assert_eq!(n(&c, "reader.fallback_files_lost"), 0, "{c}");
    sh.stop();
    // Every line exactly once in the disk buffer.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    expected.insert("after".into(), 7);
    expected.insert("first".into(), 5);
    for i in 0..20 {
        expected.insert(format!("later{i}"), 10);
        expected.insert(format!("later{i}err"), 3);
    }
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (prefix, seq) in buffered_seqs(&d.path().join("state/buffer/elasticsearch")) {
        got.entry(prefix).or_default().push(seq);
    }
    for (prefix, n) in &expected {
        let mut seqs = got.remove(prefix).unwrap_or_default();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (0..*n).collect::<Vec<_>>(),
            "{prefix}: every line once"
        );
    }
    assert!(got.is_empty(), "unexpected records: {got:?}");
}

/// A socket that takes every connection and never answers.
struct Silent {
    socket: PathBuf,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Silent {
    fn start(dir: &Path) -> Silent {
        use nix::sys::socket::{bind, listen, Backlog, UnixAddr};
        let socket = dir.join("silent.sock");
        let s = proto::seqpacket_socket().unwrap();
        bind(s.as_raw_fd(), &UnixAddr::new(&socket).unwrap()).unwrap();
        listen(&s, Backlog::new(1024).unwrap()).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if proto::wait_readable(s.as_fd(), Duration::from_millis(20)).unwrap() {
                    if let Ok(c) = nix::sys::socket::accept(s.as_raw_fd()) {
                        // SAFETY: a new descriptor from accept, owned by nobody else.
                        held.push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(c) });
                    }
                }
            }
            held.len()
        });
        Silent {
            socket,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

#[test]
fn a_shipper_that_accepts_and_never_answers_costs_one_timeout_then_nothing() {
    let d = tempfile::tempdir().unwrap();
    let mut silent = Silent::start(d.path());
    let m = Arc::new(module(&silent.socket, "1s"));
    let t = Instant::now();
    // Two waves of 25: the second starts while the first still waits.
    let mut threads = Vec::new();
    for i in 0..50 {
        if i == 25 {
            std::thread::sleep(Duration::from_millis(100));
        }
        let m = Arc::clone(&m);
        let sandbox = d.path().join(format!("s{i}"));
        threads.push(std::thread::spawn(move || {
            let io = m.prepare(&spec(&format!("c{i}"), &sandbox, &[])).unwrap();
            write_lines(&io.stdout, &format!("c{i}"), 0..3);
            (sandbox, io.shipped)
        }));
    }
    let got: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let total = t.elapsed();
    eprintln!("50 prepares against a silent socket: {total:?}");
    assert!(total < Duration::from_millis(3500), "took {total:?}");
    for (i, (sandbox, shipped)) in got.iter().enumerate() {
        assert!(!shipped);
        assert_lines(
            &std::fs::read(sandbox.join("stdout")).unwrap(),
            &format!("c{i}"),
            3,
        );
    }
    // Once open, nothing more waits (and nothing more connects but the probe).
    assert!(m.breaker_open());
    let t = Instant::now();
    for i in 0..10 {
        let io = m
            .prepare(&spec(
                &format!("x{i}"),
                &d.path().join(format!("x{i}")),
                &[],
            ))
            .unwrap();
        assert!(!io.shipped);
    }
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let held = silent.stop();
    eprintln!("connections the silent socket took: {held}");
    let recs = rein_logger::fallback::list(&rein_logger::fallback::dir_for(&silent.socket));
    assert_eq!(recs.len(), 60, "one record per fallen-back container");
}

#[test]
fn shipper_timeout_of_zero_or_beyond_the_cap_is_refused() {
    for bad in ["0s", "0ms", "61s", "1h"] {
        let e = LoggerModule::new(&[("shipper_timeout".to_string(), bad.to_string())])
            .err()
            .unwrap_or_else(|| panic!("shipper_timeout={bad} accepted"))
            .to_string();
        assert!(e.contains("shipper_timeout"), "{bad}: {e}");
        assert!(e.contains("above 0 and at most"), "{bad}: {e}");
    }
    for good in ["1ms", "1s", "60s"] {
        LoggerModule::new(&[("shipper_timeout".to_string(), good.to_string())]).unwrap();
    }
}

// ---- Messages cut by the kernel ----

fn pair() -> (OwnedFd, OwnedFd) {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap()
}

/// Room for a message of `bytes` on `s` (root may exceed `wmem_max`).
fn make_room(s: &OwnedFd, bytes: usize) -> bool {
    use nix::sys::socket::{setsockopt, sockopt};
    let want = bytes * 2 + 4096;
    if setsockopt(s, sockopt::SndBufForce, &want).is_err() {
        let _ = setsockopt(s, sockopt::SndBuf, &want);
    }
    nix::sys::socket::getsockopt(s, sockopt::SndBuf).unwrap_or(0) > bytes + 1024
}

/// True when nothing but us holds the write end we drop: its pipe's read end
/// then sees end-of-file (a leaked copy anywhere in this process, or in the
/// shipper, would keep it open).
fn no_copy_left(read_end: &OwnedFd) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if proto::wait_readable(read_end.as_fd(), Duration::from_millis(100)).unwrap() {
            let mut b = [0u8; 16];
            return nix::unistd::read(read_end.as_raw_fd(), &mut b).unwrap() == 0;
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

#[test]
fn an_oversized_message_is_refused_and_its_descriptors_closed() {
    let (a, b) = pair();
    let big = vec![b'x'; proto::MAX_MESSAGE + 1];
    if !make_room(&a, big.len()) {
        common::skip(
            "an_oversized_message_is_refused_and_its_descriptors_closed",
            "cannot make a socket buffer big enough for an oversized message",
        );
        return;
    }
    let (r, w) = rein_logger::module::pipe(0).unwrap();
    proto::send_with_fds(a.as_fd(), &big, &[w.as_raw_fd()]).unwrap();
    drop(w);
    let got = proto::recv_with_fds(b.as_fd()).map(|(m, fds)| (m.len(), fds.len()));
    assert_eq!(got, Err(nix::errno::Errno::EMSGSIZE), "(bytes, fds) kept");
    assert!(no_copy_left(&r), "the descriptor of a cut message was kept");
    // The largest allowed message still passes whole.
    let max = vec![b'y'; proto::MAX_MESSAGE];
    proto::send_with_fds(a.as_fd(), &max, &[]).unwrap();
    let (got, fds) = proto::recv_with_fds(b.as_fd()).unwrap();
    assert_eq!(got.len(), proto::MAX_MESSAGE);
    assert!(fds.is_empty());
}

#[test]
fn more_descriptors_than_the_control_buffer_holds_are_refused_and_closed() {
    let (a, b) = pair();
    let (r, w) = rein_logger::module::pipe(0).unwrap();
    // The same write end, many times: each copy the kernel installs must go.
    let many = vec![w.as_raw_fd(); proto::MAX_FDS + 12];
    proto::send_with_fds(a.as_fd(), b"many", &many).unwrap();
    let exact = vec![w.as_raw_fd(); proto::MAX_FDS];
    proto::send_with_fds(a.as_fd(), b"exact", &exact).unwrap();
    drop(w);
    let got = proto::recv_with_fds(b.as_fd()).map(|(m, fds)| (m.len(), fds.len()));
    assert_eq!(
        got,
        Err(nix::errno::Errno::ETOOMANYREFS),
        "(bytes, fds) kept"
    );
    let (msg, fds) = proto::recv_with_fds(b.as_fd()).unwrap();
    assert_eq!(msg, b"exact");
    assert_eq!(fds.len(), proto::MAX_FDS);
    drop(fds);
    assert!(no_copy_left(&r), "descriptors of a cut message were kept");
}

#[test]
fn the_shipper_refuses_cut_registrations_and_keeps_none_of_their_descriptors() {
    let test = "the_shipper_refuses_cut_registrations_and_keeps_none_of_their_descriptors";
    if !make_room(&pair().0, proto::MAX_MESSAGE + 100) {
        common::skip(
            test,
            "cannot make a socket buffer big enough for an oversized message",
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut sh = Shipper::start(d.path(), "");
    let send = |msg: &[u8], copies: usize| -> (String, OwnedFd) {
        let s = proto::seqpacket_socket().unwrap();
        nix::sys::socket::connect(
            s.as_raw_fd(),
            &nix::sys::socket::UnixAddr::new(&sh.socket).unwrap(),
        )
        .unwrap();
        assert!(make_room(&s, msg.len()), "socket buffer");
        let (r, w) = rein_logger::module::pipe(0).unwrap();
        proto::send_with_fds(s.as_fd(), msg, &vec![w.as_raw_fd(); copies]).unwrap();
        drop(w);
        assert!(proto::wait_readable(s.as_fd(), Duration::from_secs(10)).unwrap());
        let (reply, _) = proto::recv_with_fds(s.as_fd()).unwrap();
        (String::from_utf8_lossy(&reply).into_owned(), r)
    };
    // A valid registration followed by padding beyond MAX_MESSAGE: cut, the
    // kept part would parse.
    let reg = serde_json::to_vec(
        &LoggerModule::new(&[])
            .unwrap()
            .registration(&spec("cut", &d.path().join("cut"), &[]))
            .unwrap(),
    )
    .unwrap();
    let mut big = reg.clone();
    big.resize(proto::MAX_MESSAGE + 100, b' ');
    let (reply, r) = send(&big, 2);
    assert!(
        reply.starts_with("error") && reply.contains("EMSGSIZE"),
        "{reply}"
    );
    assert!(
        no_copy_left(&r),
        "the shipper kept a descriptor of a cut message"
    );
    let (reply, r) = send(&reg, proto::MAX_FDS + 3);
    assert!(
        reply.starts_with("error") && reply.contains("ETOOMANYREFS"),
        "{reply}"
    );
    assert!(
        no_copy_left(&r),
        "the shipper kept a descriptor of a cut message"
    );
    wait_for(
        "the refusals to be counted",
        Duration::from_secs(10),
        || n(&sh.counters(), "reader.registrations_refused") == 2,
        || sh.counters()["reader"].to_string(),
    );
    assert_eq!(n(&sh.counters(), "reader.containers_registered"), 0);
    sh.stop();
}

#[test]
fn a_launch_without_any_shipper_is_recorded_root_only_next_to_the_socket() {
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    // The socket's directory does not exist yet (no shipper ever started).
    let socket = d.path().join("run/rein/log-shipper.sock");
    let m = module(&socket, "1s");
    let sandbox = d.path().join("s");
    let t = Instant::now();
    let io = m
        .prepare(&spec("lonely", &sandbox, &[("rein.log.sink", "none")]))
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "nothing to wait for"
    );
    assert!(
        !io.shipped && !m.breaker_open(),
        "only a timeout opens the breaker"
    );
    write_lines(&io.stdout, "lonely", 0..4);
    assert_lines(&std::fs::read(sandbox.join("stdout")).unwrap(), "lonely", 4);
    let dir = d.path().join("run/rein/log-shipper.fallback");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&dir), 0o700);
    // Made as the shipper makes it: its socket group must still reach it.
    assert_eq!(mode(&d.path().join("run/rein")), 0o755);
    let recs = rein_logger::fallback::list(&dir);
    assert_eq!(recs.len(), 1);
    let (path, rec) = &recs[0];
    assert_eq!(mode(path), 0o600);
    assert_eq!(rec.key, "parent-1.lonely");
    assert_eq!(rec.sandbox, sandbox);
    assert!(rec.reason.contains("unreachable"), "{rec:?}");
    assert_eq!(rec.registration.key, rec.key);
    assert_eq!(rec.registration.options.sink, proto::SinkKind::None);
    // The identities recorded are the files the container writes.
    let ino = |n: &str| std::fs::metadata(sandbox.join(n)).unwrap().ino();
    assert_eq!(
        [rec.files[0].ino, rec.files[1].ino],
        [ino("stdout"), ino("stderr")]
    );
}

#[test]
fn fallen_back_files_are_shipped_once_through_a_worker_kill_and_a_replaced_name_is_not_followed() {
    let d = tempfile::tempdir().unwrap();
    // No shipper yet: every launch falls back (at once: nothing listens).
    let m = module(&d.path().join("shipper.sock"), "1s");
    let launch = |name: &str| {
        let sandbox = d.path().join(name);
        let io = m.prepare(&spec(name, &sandbox, &[])).unwrap();
        assert!(!io.shipped);
        (sandbox, io)
    };
    let (a_box, a) = launch("a");
    let (b_box, b) = launch("b");
    let (_, v) = launch("v");
    // Beyond one turn of the follower (4 MiB): caught up without a pause.
    let (_, big) = launch("big");
    write_lines(&big.stdout, "big", 0..100_000);
    write_lines(&a.stdout, "a", 0..1000);
    write_lines(&v.stdout, "v", 0..50);
    write_lines(&b.stdout, "b", 0..10);
    write_lines(&b.stderr, "berr", 0..10);
    // Task b replaces its stdout by a link to a file it must never get shipped.
    std::fs::rename(b_box.join("stdout"), b_box.join("stdout.moved")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", b_box.join("stdout")).unwrap();

    let mut sh = Shipper::start(d.path(), "es_url = http://127.0.0.1:9\nes_timeout = 200ms");
    let progress = sh.state.join("fallback/parent-1.a.json");
    let size = std::fs::metadata(a_box.join("stdout")).unwrap().len();
    wait_for(
        "a's file parsed to its end and the offset saved",
        Duration::from_secs(30),
        || {
            std::fs::read(&progress)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|p| p["offsets"][0] == size)
        },
        || sh.counters()["reader"].to_string(),
    );
    sh.kill_worker();
    write_lines(&a.stdout, "a", 1000..2000);
    drop((a, b, v, big));
    wait_for(
        "every fallen-back container done",
        Duration::from_secs(60),
        || n(&sh.counters(), "reader.fallback_shipped") == 4,
        || sh.counters()["reader"].to_string(),
    );
    let c = sh.counters();
    assert_eq!(n(&c, "reader.fallback_files_lost"), 1, "{c}");
    sh.stop();
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (prefix, seq) in buffered_seqs(&d.path().join("state/buffer/elasticsearch")) {
        got.entry(prefix).or_default().push(seq);
    }
    for (prefix, n) in [("a", 2000), ("v", 50), ("berr", 10), ("big", 100_000)] {
        let mut seqs = got.remove(prefix).unwrap_or_default();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (0..n).collect::<Vec<_>>(),
            "{prefix}: every line once"
        );
    }
    assert!(
        got.is_empty(),
        "records of a name the task replaced: {got:?}"
    );
}

/// A listening socket with room for `backlog` waiting connections, never accepting.
fn never_accepting(path: &Path, backlog: i32) -> OwnedFd {
    use nix::sys::socket::{bind, listen, Backlog, UnixAddr};
    let s = proto::seqpacket_socket().unwrap();
    bind(s.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    listen(&s, Backlog::new(backlog).unwrap()).unwrap();
    s
}

#[test]
fn a_full_backlog_costs_one_timeout_not_a_blocked_connect() {
    let d = tempfile::tempdir().unwrap();
    let socket = d.path().join("full.sock");
    let _listener = never_accepting(&socket, 0);
    // Fill the backlog.
    let mut held = Vec::new();
    loop {
        let s = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            nix::sys::socket::SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        match nix::sys::socket::connect(
            s.as_raw_fd(),
            &nix::sys::socket::UnixAddr::new(&socket).unwrap(),
        ) {
            Ok(()) => held.push(s),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(held.len() < 100, "the backlog never filled");
    }
    let m = module(&socket, "500ms");
    let sandbox = d.path().join("s");
    let t = Instant::now();
    let io = m.prepare(&spec("full", &sandbox, &[])).unwrap();
    let waited = t.elapsed();
    assert!(!io.shipped);
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_millis(2000),
        "{waited:?}"
    );
    assert!(m.breaker_open());
    let recs = rein_logger::fallback::list(&rein_logger::fallback::dir_for(&socket));
    assert!(
        recs[0].1.reason.contains("backlog is full"),
        "{:?}",
        recs[0].1
    );
    write_lines(&io.stdout, "full", 0..3);
    assert_lines(&std::fs::read(sandbox.join("stdout")).unwrap(), "full", 3);
}

#[test]
fn a_shipper_that_hangs_up_or_answers_garbage_fails_fast_and_opens_no_breaker() {
    use nix::sys::socket::accept;
    let d = tempfile::tempdir().unwrap();
    let socket = d.path().join("rude.sock");
    let listener = never_accepting(&socket, 16);
    // Reads each request, then hangs up (odd ones) or answers garbage (even ones).
    let server = std::thread::spawn(move || {
        for i in 0..4 {
            // SAFETY: a new descriptor from accept, owned by nobody else.
            let c = unsafe {
                <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(
                    accept(listener.as_raw_fd()).unwrap(),
                )
            };
            let _ = proto::recv_with_fds(c.as_fd());
            if i % 2 == 0 {
                proto::send_with_fds(c.as_fd(), b"\xff\x00garbage", &[]).unwrap();
            }
        }
    });
    let m = module(&socket, "5s");
    for i in 0..4 {
        let sandbox = d.path().join(format!("r{i}"));
        let t = Instant::now();
        let io = m.prepare(&spec(&format!("r{i}"), &sandbox, &[])).unwrap();
        assert!(!io.shipped);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(!m.breaker_open(), "an answer, even a bad one, is no wedge");
        write_lines(&io.stdout, &format!("r{i}"), 0..2);
        assert_lines(
            &std::fs::read(sandbox.join("stdout")).unwrap(),
            &format!("r{i}"),
            2,
        );
    }
    server.join().unwrap();
    let mut reasons: Vec<String> =
        rein_logger::fallback::list(&rein_logger::fallback::dir_for(&socket))
            .into_iter()
            .map(|(_, r)| r.reason)
            .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 4);
    assert!(
        reasons.iter().filter(|r| r.contains("refused")).count() == 2,
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .filter(|r| r.contains("without answering"))
            .count()
            == 2,
        "{reasons:?}"
    );
}
