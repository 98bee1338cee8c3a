//! Real faults of the shipper's processes while containers write: the worker
//! binary missing or not executable during an upgrade, `kill -9` of the
//! worker at random moments (while control messages are in flight too),
//! `kill -9` of the supervisor and a new one started. After each: no
//! container saw EPIPE, every line is in the (fake) Elasticsearch exactly
//! once, the supervisor's counters say what happened.
//!
//! Random moments come from a seed printed in every failure message; replay
//! with `REIN_FAULT_SEED=<seed>`.

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;
#[path = "common/fake_es.rs"]
mod fake_es;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::rng::Rng;
use common::shipper::{run_container, spec, terminate, Shipper};
use fake_es::FakeEs;

/// The generator of this run: `REIN_FAULT_SEED` replays one.
fn rng_from_env() -> (Rng, u64) {
    let seed = std::env::var("REIN_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("REIN_FAULT_SEED={seed}");
    (Rng(seed), seed)
}

fn es_settings(es: &FakeEs) -> String {
    format!(
        "es_url = http://{}\nes_backoff_max = 300ms\nrotate_max_bytes = 256KiB\nrotate_keep = 1000\npartial_flush = 300ms",
        es.addr
    )
}

fn supervisor_stats(state: &Path) -> serde_json::Value {
    std::fs::read_to_string(state.join("supervisor.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

fn stat(state: &Path, name: &str) -> u64 {
    supervisor_stats(state)[name].as_u64().unwrap_or(0)
}

fn worker_pid(state: &Path) -> i32 {
    std::fs::read_to_string(state.join("worker.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0 && !rein_logger::shipper::handover::ended(pid)
}

fn kill(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) of a process of the shipper this test started.
    unsafe { libc::kill(pid, sig) };
}

/// Polls `cond` until true; panics with `what()` after `limit`.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {}", what());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Containers writing numbered lines (`<name> seq=<n>`), some on stderr.
struct Writers {
    kids: Vec<(String, Child)>,
    lines: u64,
}

impl Writers {
    fn start(sh: &Shipper, names: &[&str], lines: u64, rate: u64) -> Writers {
        // These tests are about the take-over, not the launch's patience: on a
        // loaded machine a restarting worker may answer after the default 1 s,
        // and the launch would (rightly) fall back to the sandbox files.
        let m = sh.module_with(&[("shipper_timeout", "30s")]);
        let kids = names
            .iter()
            .map(|name| {
                let sandbox = sh.dir.join(format!("sandbox-{name}"));
                let c = run_container(
                    &m,
                    &spec(name, &sandbox, &[("rein.log.multiline", "off")]),
                    &[
                        "--lines",
                        &lines.to_string(),
                        "--rate",
                        &rate.to_string(),
                        "--prefix",
                        name,
                        "--stderr-every",
                        "7",
                    ],
                );
                (name.to_string(), c)
            })
            .collect();
        Writers { kids, lines }
    }

    /// Waits for every container; none may fail (exit 32 is EPIPE).
    fn finish(&mut self, ctx: &dyn Fn() -> String) {
        for (name, c) in &mut self.kids {
            let st = c.wait().unwrap();
            assert!(
                st.success(),
                "container {name} failed ({st}; exit 32 is EPIPE, 101 EPIPE on stderr too); {}",
                ctx()
            );
        }
    }

    /// Waits until every line is in the sink, then checks: each exactly once.
    fn check_delivered(&self, es: &FakeEs, ctx: &dyn Fn() -> String) {
        let names: Vec<&str> = self.kids.iter().map(|(n, _)| n.as_str()).collect();
        // Lines stored once so far (no name can pass its own count).
        let arrived = || {
            es.with(|s| {
                names
                    .iter()
                    .map(|n| s.tally(n, self.lines).once)
                    .sum::<u64>()
            })
        };
        let total = self.lines * names.len() as u64;
        // Waits as long as lines keep arriving (a loaded machine ships slowly);
        // a minute without one ends the wait, and the tally below tells.
        let (mut last, mut since) = (arrived(), Instant::now());
        while last < total && since.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(200));
            let now = arrived();
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
        // A late resend would show now.
        std::thread::sleep(Duration::from_millis(500));
        for n in &names {
            let t = es.with(|s| s.tally(n, self.lines));
            assert!(
                t.lost == 0 && t.duplicates == 0 && t.unexpected == 0,
                "container {n}: {t:?} of {} lines; {}",
                self.lines,
                ctx()
            );
        }
    }
}

fn context(seed: u64, state: &Path, es: &FakeEs) -> String {
    format!(
        "seed {seed} (REIN_FAULT_SEED={seed}); supervisor {}; worker counters {}; sink: {} docs, {} resends, {} requests",
        supervisor_stats(state),
        common::shipper::counters_in(state),
        es.with(fake_es::Stored::docs),
        es.with(|s| s.resends),
        es.with(|s| s.requests),
    )
}

/// A copy of the shipper binary, so that the test can remove and restore it.
fn own_binary(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("rein-log-shipper");
    std::fs::copy(env!("CARGO_BIN_EXE_rein-log-shipper"), &exe).unwrap();
    exe
}

/// Starts a supervisor from `exe` with the settings file `Shipper::start` wrote.
fn start_supervisor(exe: &Path, dir: &Path) -> Child {
    common::supervisor_cmd::supervisor_command(exe, dir)
        .spawn()
        .unwrap()
}

#[test]
fn worker_binary_missing_or_not_executable_during_an_upgrade_never_epipes() {
    let es = FakeEs::start();
    let (mut rng, seed) = rng_from_env();
    let d = tempfile::tempdir().unwrap();
    // The first shipper only writes the settings; ours runs from a copy of the binary.
    let mut sh = Shipper::start(d.path(), &es_settings(&es));
    sh.stop();
    let _ = std::fs::remove_dir_all(&sh.state);
    let exe = own_binary(d.path());
    sh.child = start_supervisor(&exe, d.path());
    wait_for(
        Duration::from_secs(10),
        || worker_pid(&sh.state) > 0 && sh.socket.exists(),
        || "the shipper did not start".into(),
    );
    let sup = sh.child.id() as i32;
    let state = sh.state.clone();
    let ctx = || context(seed, &state, &es);
    let mut w = Writers::start(&sh, &["m0", "m1", "m2"], 20_000, 4000);
    std::thread::sleep(rng.ms(200, 800));

    // 1. Upgrade with the binary missing: the running worker stays.
    let saved = exe.with_extension("saved");
    std::fs::rename(&exe, &saved).unwrap();
    let worker = worker_pid(&sh.state);
    kill(sup, libc::SIGHUP);
    wait_for(
        Duration::from_secs(10),
        || stat(&sh.state, "restarts_deferred") >= 1,
        || format!("SIGHUP with no binary was not put off; {}", ctx()),
    );
    assert_eq!(
        worker_pid(&sh.state),
        worker,
        "the worker was kept; {}",
        ctx()
    );
    assert!(alive(worker), "the worker was kept running; {}", ctx());

    // 2. The worker dies while the binary is missing: starts fail, retried.
    kill(worker, libc::SIGKILL);
    wait_for(
        Duration::from_secs(10),
        || stat(&sh.state, "spawn_failures") >= 2,
        || format!("no failed start counted; {}", ctx()),
    );
    // 3. A non-executable file in its place: still failing, still up.
    std::fs::write(&exe, b"not a program").unwrap();
    let before = stat(&sh.state, "spawn_failures");
    wait_for(
        Duration::from_secs(15),
        || stat(&sh.state, "spawn_failures") > before,
        || format!("no failed start of a non-executable file; {}", ctx()),
    );
    // An in-place upgrade of the supervisor fails the same way: it carries on.
    kill(sup, libc::SIGUSR2);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sh.child.try_wait().unwrap().is_none(),
        "the supervisor exited while holding pipes; {}",
        ctx()
    );
    let stats = supervisor_stats(&sh.state);
    assert!(
        stats["containers_held"].as_u64().unwrap_or(0) >= 3,
        "the supervisor holds every container: {stats}"
    );
    assert!(
        stats["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("rein-log-shipper"),
        "the last error names the binary: {stats}"
    );
    // 4. A file that is executable but no program (exec fails: ENOEXEC),
    //    then a program that exits at once: still up, every failure counted.
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(&exe, b"\x7fELF garbage").unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = stat(&sh.state, "spawn_failures");
    kill(sup, libc::SIGHUP);
    wait_for(
        Duration::from_secs(15),
        || stat(&sh.state, "spawn_failures") > before,
        || format!("no failed start of a file exec refuses; {}", ctx()),
    );
    let tmp = exe.with_extension("tmp");
    std::fs::write(&tmp, b"#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &exe).unwrap();
    let exits = stat(&sh.state, "worker_exits") + stat(&sh.state, "adoption_failures");
    kill(sup, libc::SIGHUP);
    wait_for(
        Duration::from_secs(15),
        || stat(&sh.state, "worker_exits") + stat(&sh.state, "adoption_failures") > exits,
        || format!("a worker exiting at once was not counted; {}", ctx()),
    );
    assert!(
        sh.child.try_wait().unwrap().is_none(),
        "the supervisor exited while holding pipes; {}",
        ctx()
    );
    // 5. The binary is back, and the supervisor is upgraded in place while
    //    no worker (or one exiting at once) runs: the new image keeps every
    //    pipe, starts a worker, and everything is shipped, once.
    std::fs::rename(&saved, &exe).unwrap();
    kill(sup, libc::SIGUSR2);
    wait_for(
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(sh.state.join("supervisor.execs"))
                .is_ok_and(|s| s.trim() == "1")
        },
        || format!("no in-place upgrade; {}", ctx()),
    );
    assert!(
        sh.child.try_wait().unwrap().is_none(),
        "same supervisor process; {}",
        ctx()
    );
    wait_for(
        Duration::from_secs(40),
        || stat(&sh.state, "worker_pid") > 0 && worker_pid(&sh.state) != worker,
        || format!("no worker once the binary was back; {}", ctx()),
    );
    w.finish(&ctx);
    w.check_delivered(&es, &ctx);
    eprintln!("{}", ctx());
    terminate(&mut sh.child);
}

#[test]
fn kill_9_of_the_worker_at_random_moments_every_line_once() {
    let es = FakeEs::start();
    let (mut rng, seed) = rng_from_env();
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(d.path(), &es_settings(&es));
    let state = sh.state.clone();
    let ctx = || context(seed, &state, &es);
    let names = ["k0", "k1", "k2", "k3"];
    let mut w = Writers::start(&sh, &names, 25_000, 3000);
    let mut kills = 0;
    let t = Instant::now();
    // ~8 s of output; kills at random moments, some right after a worker
    // started (while it adopts), some while it ships.
    while t.elapsed() < Duration::from_secs(7) {
        let pid = worker_pid(&sh.state);
        let pause = if rng.next().is_multiple_of(3) {
            rng.ms(0, 40)
        } else {
            rng.ms(150, 900)
        };
        std::thread::sleep(pause);
        if alive(pid) {
            kill(pid, libc::SIGKILL);
            kills += 1;
        }
        wait_for(
            Duration::from_secs(20),
            || worker_pid(&sh.state) != pid,
            || format!("no new worker; {}", ctx()),
        );
    }
    w.finish(&ctx);
    w.check_delivered(&es, &ctx);
    // A worker killed while the supervisor was still handing it the
    // containers is counted as an adoption failure, not as an exit.
    let ended = || stat(&sh.state, "worker_exits") + stat(&sh.state, "adoption_failures");
    wait_for(
        Duration::from_secs(30),
        || ended() >= kills,
        || {
            format!(
                "{kills} kills, {} exits or adoption failures counted; {}",
                ended(),
                ctx()
            )
        },
    );
    eprintln!("{kills} kills; {}", ctx());
}

#[test]
fn control_messages_queued_when_the_worker_dies_are_all_handled() {
    let es = FakeEs::start();
    let (_, seed) = rng_from_env();
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(d.path(), &es_settings(&es));
    let state = sh.state.clone();
    let ctx = || context(seed, &state, &es);
    let sup = sh.child.id() as i32;
    // The supervisor is stopped: the worker's messages for the new
    // containers (with their pipes) wait in the channel when it is killed.
    kill(sup, libc::SIGSTOP);
    let names = ["q0", "q1", "q2", "q3", "q4", "q5"];
    let mut w = Writers::start(&sh, &names, 3000, 3000);
    let worker = worker_pid(&sh.state);
    kill(worker, libc::SIGKILL);
    wait_for(
        Duration::from_secs(10),
        || rein_logger::shipper::handover::ended(worker),
        || "the worker did not die".into(),
    );
    kill(sup, libc::SIGCONT);
    wait_for(
        Duration::from_secs(20),
        || worker_pid(&sh.state) != worker,
        || format!("no new worker; {}", ctx()),
    );
    w.finish(&ctx);
    w.check_delivered(&es, &ctx);
    // The first may be read before the exit is noticed.
    assert!(
        stat(&sh.state, "messages_after_exit") >= names.len() as u64 - 1,
        "the queued registrations were handled after the worker died; {}",
        ctx()
    );
}

#[test]
fn kill_9_of_the_supervisor_then_a_new_one_takes_every_container_over() {
    let es = FakeEs::start();
    let (mut rng, seed) = rng_from_env();
    let d = tempfile::tempdir().unwrap();
    let mut sh = Shipper::start(d.path(), &es_settings(&es));
    let state = sh.state.clone();
    let ctx = || context(seed, &state, &es);
    let mut w = Writers::start(&sh, &["s0", "s1", "s2"], 20_000, 3000);
    std::thread::sleep(rng.ms(100, 1000));
    let orphan = worker_pid(&sh.state);
    kill(sh.child.id() as i32, libc::SIGKILL);
    let _ = sh.child.wait();
    // The orphaned worker goes on reading; a container registered now is
    // handed over too.
    std::thread::sleep(rng.ms(100, 1000));
    assert!(alive(orphan), "the worker outlives its supervisor");
    let mut late = Writers::start(&sh, &["s3"], 5000, 2000);
    // The next supervisor (systemd's restart) takes everything over.
    sh.child = start_supervisor(Path::new(env!("CARGO_BIN_EXE_rein-log-shipper")), d.path());
    wait_for(
        Duration::from_secs(40),
        || stat(&sh.state, "handovers") >= 1 && worker_pid(&sh.state) != orphan,
        || format!("no handover; {}", ctx()),
    );
    assert!(
        rein_logger::shipper::handover::ended(orphan),
        "the orphaned worker stopped before the new one started; {}",
        ctx()
    );
    assert!(
        stat(&sh.state, "containers_held") >= 3,
        "the new supervisor holds the containers; {}",
        ctx()
    );
    // It holds them for real: a worker kill now loses nothing either.
    std::thread::sleep(rng.ms(100, 600));
    sh.kill_worker();
    // And it serves new registrations.
    let mut after = Writers::start(&sh, &["s4"], 3000, 2000);
    w.finish(&ctx);
    late.finish(&ctx);
    after.finish(&ctx);
    w.check_delivered(&es, &ctx);
    late.check_delivered(&es, &ctx);
    after.check_delivered(&es, &ctx);
    eprintln!("{}", ctx());
}

#[test]
fn a_second_supervisor_beside_a_live_one_refuses_to_start_and_takes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(d.path(), "");
    let worker = worker_pid(&sh.state);
    let t = Instant::now();
    let mut second = start_supervisor(Path::new(env!("CARGO_BIN_EXE_rein-log-shipper")), d.path());
    let st = second.wait().unwrap();
    assert!(!st.success(), "a second supervisor must not start");
    assert!(
        t.elapsed() >= Duration::from_secs(5),
        "it waited for a handover first"
    );
    assert_eq!(
        worker_pid(&sh.state),
        worker,
        "the first one's worker stays"
    );
    assert!(alive(worker));
    assert!(!rein_logger::shipper::handover::socket_path(&sh.state).exists());
}
