//! Faults inside the worker, for real: panics injected into the parser and a
//! sink thread mid-stream (the binaries are built with the
//! `fault-injection` feature), a full state directory at registration and
//! at adoption (a small tmpfs), unreadable registrations at a worker
//! restart, and registrations in the format of the previous version.

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use rein_logger::module::LoggerModule;

use common::lines::{check_lines, reader, seqs_of, wait_exit, wait_for};
use common::shipper::{buffered_seqs, run_loadgen, sandbox_stream, spec, Shipper};
use common::tmpfs::Tmpfs;
use common::{skip, EsServer};

/// A dead Elasticsearch: records stay in the disk buffer, which the tests read.
const NO_ES: &str = "es_url = http://127.0.0.1:9\nes_timeout = 200ms\npartial_flush = 300ms";

/// (prefix, seq) of every loadgen line in the messages of Redis stream `key`.
#[cfg(feature = "redis")]
fn redis_seqs(con: &mut redis::Connection, key: &str) -> Vec<(String, u64)> {
    common::redis_server::xrange(con, key)
        .iter()
        .flat_map(|e| {
            let doc = &e.1.iter().find(|(k, _)| k == "doc").unwrap().1;
            let v: serde_json::Value = serde_json::from_slice(doc).unwrap();
            seqs_of(v["message"].as_str().unwrap())
        })
        .collect()
}

/// A container writing `n` loadgen lines `name seq=N ...`, one record a line.
fn loadgen_plain(m: &LoggerModule, sandbox: &Path, name: &str, n: u64, rate: Option<u32>) -> Child {
    let labels = [("rein.log.multiline", "off")];
    run_loadgen(m, &spec(name, sandbox, &labels), n, rate, name)
}

/// Checks that the Elasticsearch disk buffer under `dir` holds every line of
/// `expected` (re-sends allowed); the shipper must be stopped.
fn check_buffer(dir: &Path, expected: &[(&str, u64)], counters: &serde_json::Value) {
    let got = buffered_seqs(&dir.join("state/buffer/elasticsearch"));
    check_lines(&got, expected, false)
        .unwrap_or_else(|e| panic!("buffer: {e}; counters: {counters}"));
}

/// Checks that the stdout file in `sandbox` holds every line `name seq=0..n`
/// exactly once.
fn check_sandbox(sandbox: &Path, name: &str, n: u64, counters: &serde_json::Value) {
    let text = String::from_utf8(sandbox_stream(sandbox, "stdout")).unwrap();
    check_lines(&seqs_of(&text), &[(name, n)], true)
        .unwrap_or_else(|e| panic!("sandbox of {name}: {e}; counters: {counters}"));
}

#[test]
fn panics_in_the_parser_and_a_sink_mid_stream_ship_every_line_once() {
    let test = "panics_in_the_parser_and_a_sink_mid_stream_ship_every_line_once";
    let Some(es) = EsServer::start_or_skip(test) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start_env(
        d.path(),
        &format!(
            "es_url = http://{}\nes_index = rein-fault-%Y.%m.%d\nes_batch_records = 200\nes_backoff_max = 300ms\npartial_flush = 300ms",
            es.addr
        ),
        &[
            // Early passes: how many parse passes a stream takes depends on timing.
            ("REIN_FAULT_PANIC", "parser:4,parser:12,sink:3,sink:9"),
            ("RUST_LOG", "error"),
        ],
    );
    let pid = sh.worker_pid();
    let m = sh.module();
    let n = 3000u64;
    let names = ["p0", "p1"];
    let mut kids: Vec<Child> = names
        .iter()
        .map(|name| {
            let sandbox = d.path().join(name);
            loadgen_plain(&m, &sandbox, name, n, Some(1500))
        })
        .collect();
    for (name, k) in names.iter().zip(kids.iter_mut()) {
        wait_exit(&sh, name, k, Duration::from_secs(60));
    }
    sh.wait_idle(Duration::from_secs(60));
    let index = format!("rein-fault-{}", common::today());
    wait_for(
        &sh,
        "every line in Elasticsearch",
        Duration::from_secs(60),
        || es.count(&index) >= 2 * n,
    );
    // The thread stats are written every second: wait for the last panics.
    wait_for(
        &sh,
        "both panics of each thread counted",
        Duration::from_secs(10),
        || reader(&sh, "thread_panics_parser") == 2 && reader(&sh, "thread_panics_sink") == 2,
    );
    let unique = |sh: &Shipper| {
        let s = &sh.counters()["sinks"]["elasticsearch"];
        s["shipped"].as_u64().unwrap_or(0) - s["duplicates"].as_u64().unwrap_or(0)
    };
    wait_for(
        &sh,
        "shipped = lines + re-sent duplicates",
        Duration::from_secs(10),
        || unique(&sh) == 2 * n,
    );
    let c = sh.counters();
    eprintln!("counters: {c}");
    let got = seqs_of(&es.messages(&index).join("\n"));
    let expected: Vec<(&str, u64)> = names.iter().map(|p| (*p, n)).collect();
    check_lines(&got, &expected, true).unwrap_or_else(|e| panic!("{e}; counters: {c}"));
    // The counters add up: every line read once, buffered once, acknowledged once.
    wait_for(
        &sh,
        "every record acknowledged",
        Duration::from_secs(10),
        || sh.counters()["buffers"]["elasticsearch"]["acked_records"].as_u64() == Some(2 * n),
    );
    for k in ["lines_read", "records_buffered"] {
        assert_eq!(reader(&sh, k), 2 * n, "{k}: {}", sh.counters());
    }
    assert_eq!(
        sh.worker_pid(),
        pid,
        "the worker was restarted: a thread panic must not end it"
    );
}

/// A shipper configured with `conf` and one thread stalled as `stall`
/// (`thread:nth:ms`), with one container `name` writing `n` lines: waits
/// until the stall is reported and the container exited cleanly.
fn run_with_stall(conf: &str, stall: &str, name: &str, n: u64) -> (tempfile::TempDir, Shipper) {
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start_env(d.path(), conf, &[("REIN_FAULT_STALL", stall)]);
    let m = sh.module();
    let mut c = loadgen_plain(&m, &d.path().join(name), name, n, Some(1000));
    let thread = stall.split(':').next().unwrap();
    wait_for(
        &sh,
        &format!("the {thread} stall reported"),
        Duration::from_secs(30),
        || reader(&sh, &format!("thread_stalls_{thread}")) >= 1,
    );
    wait_exit(&sh, name, &mut c, Duration::from_secs(60));
    (d, sh)
}

#[test]
fn a_stalled_parser_is_reported_and_resumes() {
    let n = 4000u64;
    let conf = format!("{NO_ES}\nthread_stall_timeout = 1s");
    let (d, sh) = run_with_stall(&conf, "parser:100:3000", "s0", n);
    sh.wait_idle(Duration::from_secs(60));
    let c = sh.counters();
    eprintln!("counters: {c}");
    drop(sh);
    check_buffer(d.path(), &[("s0", n)], &c);
}

#[test]
fn a_stalled_sink_is_reported_and_resumes() {
    let test = "a_stalled_sink_is_reported_and_resumes";
    let Some(es) = EsServer::start_or_skip(test) else {
        return;
    };
    let n = 3000u64;
    let conf = format!(
        "es_url = http://{}\nes_index = rein-stall-%Y.%m.%d\nes_batch_records = 200\nthread_stall_timeout = 1s",
        es.addr
    );
    let (_d, sh) = run_with_stall(&conf, "sink:2:3000", "k0", n);
    let index = format!("rein-stall-{}", common::today());
    wait_for(
        &sh,
        "every line in Elasticsearch",
        Duration::from_secs(60),
        || es.count(&index) >= n,
    );
    let c = sh.counters();
    eprintln!("counters: {c}");
    let got = seqs_of(&es.messages(&index).join("\n"));
    check_lines(&got, &[("k0", n)], true).unwrap_or_else(|e| panic!("{e}; counters: {c}"));
}

#[test]
#[ignore = "needs root"]
fn a_full_state_dir_at_registration_and_adoption_keeps_every_container_flowing() {
    let test = "a_full_state_dir_at_registration_and_adoption_keeps_every_container_flowing";
    if !common::is_root() {
        return skip(test, "needs root (mounts a tmpfs)");
    }
    let d = tempfile::tempdir().unwrap();
    // The containers' state on a small file system; the disk buffer elsewhere.
    let fs = Tmpfs::mount(&d.path().join("state/containers"), "1m");
    let sh = Shipper::start(d.path(), NO_ES);
    let m = sh.module();
    let n = 8000u64;
    let sb = |name: &str| d.path().join(name);
    // Adopted while the state directory is full.
    let mut adopted = loadgen_plain(&m, &sb("adopted"), "adopted", n, Some(2000));
    wait_for(&sh, "some lines read", Duration::from_secs(20), || {
        reader(&sh, "lines_read") > 500
    });
    fs.fill();
    sh.kill_worker();
    // Registered while the state directory is full: taken all the same.
    let mut registered = loadgen_plain(&m, &sb("registered"), "registered", n, Some(2000));
    wait_for(
        &sh,
        "the failed saves counted",
        Duration::from_secs(20),
        || reader(&sh, "state_save_errors") >= 2 && reader(&sh, "containers_state_unsaved") >= 1,
    );
    // Both keep writing while the state directory stays full.
    let before = reader(&sh, "bytes_read");
    wait_for(
        &sh,
        "the containers write on",
        Duration::from_secs(20),
        || reader(&sh, "bytes_read") > before + 200_000,
    );
    fs.free();
    wait_for(
        &sh,
        "the state saved once space returned",
        Duration::from_secs(20),
        || reader(&sh, "containers_state_unsaved") == 0,
    );
    assert!(d
        .path()
        .join("state/containers/parent-1.registered/registration.json")
        .exists());
    wait_exit(&sh, "adopted", &mut adopted, Duration::from_secs(60));
    wait_exit(&sh, "registered", &mut registered, Duration::from_secs(60));
    sh.wait_idle(Duration::from_secs(60));
    for name in ["adopted", "registered"] {
        check_sandbox(&sb(name), name, n, &sh.counters());
    }
    let c = sh.counters();
    eprintln!("counters: {c}");
    drop(sh);
    check_buffer(d.path(), &[("adopted", n), ("registered", n)], &c);
}

#[test]
#[ignore = "needs root"]
fn a_registration_in_a_full_state_dir_is_saved_from_the_reserve_and_survives_a_kill() {
    let test = "a_registration_in_a_full_state_dir_is_saved_from_the_reserve_and_survives_a_kill";
    if !common::is_root() {
        return skip(test, "needs root (mounts a tmpfs)");
    }
    let d = tempfile::tempdir().unwrap();
    // The whole state directory on a small file system, the disk buffer apart
    // (a full buffer is another case).
    let small = Tmpfs::mount(&d.path().join("state"), "4m");
    let _buffer = Tmpfs::mount(&d.path().join("state/buffer"), "64m");
    let sh = Shipper::start(d.path(), &format!("{NO_ES}\nstate_reserve_bytes = 512KiB"));
    let m = sh.module();
    small.fill();
    let n = 6000u64;
    let sandbox = d.path().join("kept");
    let mut c = loadgen_plain(&m, &sandbox, "kept", n, Some(2000));
    let state = d.path().join("state/containers/parent-1.kept");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("registration.json")).unwrap()).unwrap();
    assert_eq!(
        saved["key"], "parent-1.kept",
        "saved from the reserve while full"
    );
    // Killed while the state directory is still full, then space returns.
    let old = sh.worker_pid();
    // SAFETY: kill(2) of a process this test started (through the supervisor).
    unsafe { libc::kill(old, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(500));
    small.free();
    sh.wait_new_worker(old);
    wait_exit(&sh, "kept", &mut c, Duration::from_secs(60));
    sh.wait_idle(Duration::from_secs(60));
    let counters = sh.counters();
    eprintln!("counters: {counters}");
    assert!(
        !d.path().join("state/unregistered").exists(),
        "the registration was lost: the output left the sandbox; counters: {counters}"
    );
    check_sandbox(&sandbox, "kept", n, &counters);
    drop(sh);
    check_buffer(d.path(), &[("kept", n)], &counters);
}

#[test]
#[ignore = "needs root"]
fn a_full_sandbox_at_adoption_makes_the_container_wait_then_resume_in_its_sandbox() {
    let test = "a_full_sandbox_at_adoption_makes_the_container_wait_then_resume_in_its_sandbox";
    if !common::is_root() {
        return skip(test, "needs root (mounts a tmpfs)");
    }
    let d = tempfile::tempdir().unwrap();
    let sandbox = d.path().join("sandbox");
    let fs = Tmpfs::mount(&sandbox, "1m");
    let sh = Shipper::start(
        d.path(),
        &format!("{NO_ES}\nrotate_max_bytes = 256KiB\nrotate_keep = 1000"),
    );
    let m = sh.module();
    // 3 MB of output into a 1 MiB sandbox: the reader stalls with bytes staged.
    let n = 15_000u64;
    let mut c = loadgen_plain(&m, &sandbox, "full", n, None);
    wait_for(
        &sh,
        "a sandbox write error",
        Duration::from_secs(20),
        || reader(&sh, "write_errors") > 0,
    );
    // Not a byte of room left; a new worker must write the staged bytes
    // first and cannot: it waits too.
    fs.fill();
    sh.kill_worker();
    // Counters of the new worker only.
    let _ = std::fs::remove_file(d.path().join("state/counters.json"));
    wait_for(
        &sh,
        "the new worker waiting on the sandbox",
        Duration::from_secs(20),
        || reader(&sh, "write_errors") > 0 && reader(&sh, "containers_live") == 1,
    );
    assert!(
        c.try_wait().unwrap().is_none(),
        "the container should wait on its full pipe"
    );
    fs.resize("16m");
    wait_exit(&sh, "full", &mut c, Duration::from_secs(60));
    sh.wait_idle(Duration::from_secs(60));
    let text = String::from_utf8(sandbox_stream(&sandbox, "stdout")).unwrap();
    let c = sh.counters();
    let got = seqs_of(&text);
    assert_eq!(
        got.iter().map(|(_, s)| *s).collect::<Vec<u64>>(),
        (0..n).collect::<Vec<u64>>(),
        "the sandbox file holds every line once, in order; counters: {c}"
    );
    assert!(
        !d.path().join("state/unregistered").exists(),
        "the container must stay in its sandbox; counters: {c}"
    );
    drop(sh);
    check_buffer(d.path(), &[("full", n)], &c);
}

#[test]
fn unreadable_registrations_at_a_worker_restart_never_release_a_container() {
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(d.path(), NO_ES);
    let m = sh.module();
    let n = 6000u64;
    let sb = |name: &str| d.path().join(name);
    let state = |name: &str| d.path().join(format!("state/containers/parent-1.{name}"));
    // copy: the file is garbage, its copy is fine; sandbox: both lost all but
    // the sandbox path; nothing: both garbage.
    let names = ["copy", "sandbox", "nothing"];
    let mut kids: Vec<Child> = names
        .iter()
        .map(|name| loadgen_plain(&m, &sb(name), name, n, Some(2000)))
        .collect();
    wait_for(&sh, "some lines read", Duration::from_secs(20), || {
        reader(&sh, "lines_read") > 1500
    });
    std::fs::write(
        state("copy").join("registration.json"),
        b"{\"version\":1,\"key\":",
    )
    .unwrap();
    for name in ["sandbox", "nothing"] {
        for f in ["registration.json", "registration.copy.json"] {
            let p = state(name).join(f);
            let body = if name == "sandbox" {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                serde_json::json!({ "version": 1, "sandbox": v["sandbox"] }).to_string()
            } else {
                "\u{0}garbage".to_string()
            };
            std::fs::write(&p, body).unwrap();
        }
    }
    sh.kill_worker();
    for (name, k) in names.iter().zip(kids.iter_mut()) {
        wait_exit(&sh, name, k, Duration::from_secs(60));
    }
    sh.wait_idle(Duration::from_secs(60));
    wait_for(
        &sh,
        "the unreadable registrations counted",
        Duration::from_secs(10),
        || reader(&sh, "registrations_unreadable") == 3,
    );
    let c = sh.counters();
    eprintln!("counters: {c}");
    assert_eq!(reader(&sh, "containers_released"), 0, "{c}");
    for name in ["copy", "sandbox"] {
        check_sandbox(&sb(name), name, n, &c);
    }
    // With nothing known, the rest of the output is in the shipper's state.
    let mut text = String::from_utf8(sandbox_stream(&sb("nothing"), "stdout")).unwrap();
    text.push_str(
        &String::from_utf8(sandbox_stream(
            &d.path().join("state/unregistered/parent-1.nothing"),
            "stdout",
        ))
        .unwrap(),
    );
    check_lines(&seqs_of(&text), &[("nothing", n)], true)
        .unwrap_or_else(|e| panic!("nothing: {e}; counters: {c}"));
    drop(sh);
    // The one taken back from the copy is still shipped whole.
    let got: Vec<_> = buffered_seqs(&d.path().join("state/buffer/elasticsearch"))
        .into_iter()
        .filter(|(p, _)| p == "copy")
        .collect();
    check_lines(&got, &[("copy", n)], false)
        .unwrap_or_else(|e| panic!("buffer: {e}; counters: {c}"));
}

#[test]
fn registrations_written_by_the_previous_version_are_adopted() {
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(d.path(), NO_ES);
    let m = sh.module();
    let n = 6000u64;
    let sandbox = d.path().join("c-v1");
    let mut c = run_loadgen(
        &m,
        &spec(
            "c-v1",
            &sandbox,
            &[("team", "payments"), ("rein.log.multiline", "off")],
        ),
        n,
        Some(2000),
        "c-v1",
    );
    let state = d.path().join("state/containers/parent-1.c-v1");
    let fixture = |name: &str| {
        let f = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let json = sandbox
            .to_str()
            .unwrap()
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        std::fs::read_to_string(f)
            .unwrap()
            .replace("/SANDBOX", &json)
    };
    for (round, name) in ["registration-v1.json", "registration-v1-newer.json"]
        .iter()
        .enumerate()
    {
        wait_for(&sh, "some lines read", Duration::from_secs(20), || {
            reader(&sh, "lines_read") > 1000 * (round as u64 + 1)
        });
        // As the previous version left it: the file alone, no copy.
        std::fs::write(state.join("registration.json"), fixture(name)).unwrap();
        let _ = std::fs::remove_file(state.join("registration.copy.json"));
        if round == 0 {
            sh.restart_worker();
        } else {
            sh.kill_worker();
        }
        wait_for(
            &sh,
            "the container taken back (its copy made)",
            // A worker restart on a loaded machine: start, adopt, copy.
            Duration::from_secs(30),
            || state.join("registration.copy.json").exists(),
        );
    }
    wait_exit(&sh, "c-v1", &mut c, Duration::from_secs(60));
    sh.wait_idle(Duration::from_secs(60));
    let counters = sh.counters();
    eprintln!("counters: {counters}");
    assert_eq!(reader(&sh, "registrations_unreadable"), 0, "{counters}");
    drop(sh);
    check_buffer(d.path(), &[("c-v1", n)], &counters);
    check_sandbox(&sandbox, "c-v1", n, &counters);
}

/// A shipper configured with `conf`, its sink thread panicking at its 3rd
/// and 7th batch, and one container `name` routed to `sink` that wrote `n`
/// lines and exited cleanly: (its directory, the shipper, the worker's pid).
#[cfg(any(feature = "redis", feature = "kafka"))]
fn run_with_sink_panics(
    conf: &str,
    sink: &str,
    name: &str,
    n: u64,
) -> (tempfile::TempDir, Shipper, i32) {
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start_env(d.path(), conf, &[("REIN_FAULT_PANIC", "sink:3,sink:7")]);
    let pid = sh.worker_pid();
    let allowed = format!("elasticsearch,{sink},none");
    let m = sh.module_with(&[("allowed_sinks", &allowed)]);
    let labels = [("rein.log.sink", sink), ("rein.log.multiline", "off")];
    let mut c = run_loadgen(
        &m,
        &spec(name, &d.path().join(name), &labels),
        n,
        Some(1500),
        name,
    );
    wait_exit(&sh, name, &mut c, Duration::from_secs(60));
    (d, sh, pid)
}

#[cfg(feature = "redis")]
#[test]
fn a_panic_in_the_redis_sink_thread_ships_every_line_once() {
    use common::redis_server::{xlen, RedisServer};
    let test = "a_panic_in_the_redis_sink_thread_ships_every_line_once";
    let Some(srv) = RedisServer::start_or_skip(test) else {
        return;
    };
    let conf = format!(
        "redis_url = {}\nredis_stream = rein-default\nredis_backoff_max = 300ms\nredis_batch_records = 200\npartial_flush = 300ms",
        srv.url()
    );
    let n = 3000u64;
    let (_d, sh, pid) = run_with_sink_panics(&conf, "redis", "r1", n);
    let mut con = srv.conn();
    wait_for(
        &sh,
        "every line in the Redis stream",
        Duration::from_secs(60),
        || xlen(&mut con, "rein-default") >= n,
    );
    wait_for(
        &sh,
        "both sink panics counted",
        Duration::from_secs(10),
        || reader(&sh, "thread_panics_sink") == 2,
    );
    let counters = sh.counters();
    eprintln!("counters: {counters}");
    let got = redis_seqs(&mut con, "rein-default");
    check_lines(&got, &[("r1", n)], true).unwrap_or_else(|e| panic!("{e}; counters: {counters}"));
    assert_eq!(sh.worker_pid(), pid, "a sink panic must not end the worker");
}

#[cfg(feature = "kafka")]
#[test]
fn a_panic_in_the_kafka_sink_thread_ships_every_line_at_least_once() {
    use rdkafka::message::Message;
    let test = "a_panic_in_the_kafka_sink_thread_ships_every_line_at_least_once";
    let Some(broker) = common::Broker::start_or_skip(test) else {
        return;
    };
    broker.create_topic("rein-default", 1);
    let conf = format!(
        "kafka_brokers = 127.0.0.1:{}\nkafka_topic = rein-default\nkafka_batch_records = 200\npartial_flush = 300ms",
        broker.port
    );
    let n = 3000u64;
    let (_d, sh, pid) = run_with_sink_panics(&conf, "kafka", "k1", n);
    wait_for(
        &sh,
        "both sink panics counted",
        Duration::from_secs(30),
        || reader(&sh, "thread_panics_sink") == 2,
    );
    let consumer = broker.consumer("rein-fault", "rein-default", 1);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while check_lines(&got, &[("k1", n)], false).is_err() && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let doc: serde_json::Value = serde_json::from_slice(m.unwrap().payload().unwrap()).unwrap();
        got.extend(seqs_of(doc["message"].as_str().unwrap()));
    }
    let counters = sh.counters();
    eprintln!("counters: {counters}; {} messages for {n} lines", got.len());
    check_lines(&got, &[("k1", n)], false).unwrap_or_else(|e| panic!("{e}; counters: {counters}"));
    assert_eq!(sh.worker_pid(), pid, "a sink panic must not end the worker");
}

/// Panics inside parse turns (after a record was framed, before the turn's
/// batch reached its buffer) with two containers routed to two sinks: the
/// cut turn's records go to their own buffer once, no line is read or
/// buffered twice, and a multiline record being joined is rebuilt whole.
#[test]
fn panics_inside_parse_turns_put_every_record_in_its_own_sink_once() {
    use common::redis_server::RedisServer;
    let test = "panics_inside_parse_turns_put_every_record_in_its_own_sink_once";
    let Some(es) = EsServer::start_or_skip(test) else {
        return;
    };
    let Some(srv) = RedisServer::start_or_skip(test) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    // `parser_record` counts records framed by the parser (both containers).
    let panics = [150u64, 800, 1500, 2200, 2900];
    let plan: Vec<String> = panics
        .iter()
        .map(|n| format!("parser_record:{n}"))
        .collect();
    let sh = Shipper::start_env(
        d.path(),
        &format!(
            "es_url = http://{}\nes_index = rein-turn-%Y.%m.%d\nes_backoff_max = 300ms\n\
             redis_url = {}\nredis_stream = rein-turn\nredis_backoff_max = 300ms\npartial_flush = 300ms",
            es.addr,
            srv.url()
        ),
        &[("REIN_FAULT_PANIC", &plan.join(",")), ("RUST_LOG", "error")],
    );
    let pid = sh.worker_pid();
    let m = sh.module_with(&[("allowed_sinks", "elasticsearch,redis,none")]);
    let n = 3000u64;
    // Ten lines to a record: `e1 seq=N0 ...` starts one.
    let es_labels = [("rein.log.multiline.pattern", r"^e1 seq=[0-9]*0 ")];
    let redis_labels = [("rein.log.sink", "redis"), ("rein.log.multiline", "off")];
    let mut kids: Vec<(&str, Child)> = [("e1", &es_labels[..]), ("r1", &redis_labels[..])]
        .into_iter()
        .map(|(name, labels)| {
            let c = run_loadgen(
                &m,
                &spec(name, &d.path().join(name), labels),
                n,
                Some(1500),
                name,
            );
            (name, c)
        })
        .collect();
    for (name, k) in &mut kids {
        wait_exit(&sh, name, k, Duration::from_secs(60));
    }
    sh.wait_idle(Duration::from_secs(60));
    let index = format!("rein-turn-{}", common::today());
    let mut con = srv.conn();
    wait_for(
        &sh,
        "every record in its sink",
        Duration::from_secs(60),
        || es.count(&index) >= n / 10 && redis_seqs(&mut con, "rein-turn").len() as u64 >= n,
    );
    // counters.json is written every second: wait for the one after the end.
    wait_for(
        &sh,
        "every parser panic counted, no container left",
        Duration::from_secs(10),
        || {
            reader(&sh, "thread_panics_parser") == panics.len() as u64
                && reader(&sh, "containers_live") == 0
        },
    );
    let c = sh.counters();
    eprintln!("counters: {c}");
    let got = seqs_of(&es.messages(&index).join("\n"));
    check_lines(&got, &[("e1", n)], true)
        .unwrap_or_else(|e| panic!("Elasticsearch: {e}; counters: {c}"));
    let got = redis_seqs(&mut con, "rein-turn");
    check_lines(&got, &[("r1", n)], true).unwrap_or_else(|e| panic!("Redis: {e}; counters: {c}"));
    // Exactly once in the buffers too (the sinks' id checks hide nothing):
    // every line read once, every record (n / 10 joined + n) buffered once.
    assert_eq!(
        reader(&sh, "lines_read"),
        2 * n,
        "lines_read; counters: {c}"
    );
    assert_eq!(
        reader(&sh, "records_buffered"),
        n / 10 + n,
        "records_buffered; counters: {c}"
    );
    for (sink, records) in [("elasticsearch", n / 10), ("redis", n)] {
        let b = &c["buffers"][sink];
        assert_eq!(
            b["appended_records"].as_u64(),
            Some(records),
            "{sink} buffer; counters: {c}"
        );
    }
    assert_eq!(
        sh.worker_pid(),
        pid,
        "a parser panic must not end the worker"
    );
}
