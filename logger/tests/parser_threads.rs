//! Several parser threads (`parser_threads`): containers parsed on different
//! threads at once each deliver every line once and in order; a panic on one
//! thread leaves the others delivering; checkpoints saved by several threads
//! survive worker kills (-9) with nothing lost. The records are read back
//! from the disk buffer (the sink is down).

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;

use std::collections::BTreeMap;
use std::process::Child;
use std::time::Duration;

use common::lines::{check_lines, reader, wait_exit, wait_for};
use common::shipper::{buffered_seqs, run_loadgen, spec, Shipper};

/// A dead Elasticsearch: records stay in the disk buffer, which the tests read.
const NO_ES: &str = "es_url = http://127.0.0.1:9\nes_timeout = 200ms\npartial_flush = 300ms";

/// Starts `names.len()` containers writing `n` loadgen lines each (`rate`
/// lines a second, `None`: flat out), one record a line.
fn containers(
    sh: &Shipper,
    dir: &std::path::Path,
    names: &[String],
    n: u64,
    rate: Option<u32>,
) -> Vec<Child> {
    let m = sh.module();
    let labels = [("rein.log.multiline", "off")];
    names
        .iter()
        .map(|name| run_loadgen(&m, &spec(name, &dir.join(name), &labels), n, rate, name))
        .collect()
}

/// Every line of each container's records in the buffer: each once at least
/// (`exact`: exactly once), and per container in order (`exact`), or never
/// going back past a line it had not delivered yet (after a kill, a
/// container's lines since its last checkpoint come again, in order).
fn check_buffer(
    dir: &std::path::Path,
    names: &[String],
    n: u64,
    exact: bool,
    c: &serde_json::Value,
) {
    let got = buffered_seqs(&dir.join("state/buffer/elasticsearch"));
    let expected: Vec<(&str, u64)> = names.iter().map(|p| (p.as_str(), n)).collect();
    check_lines(&got, &expected, exact).unwrap_or_else(|e| panic!("buffer: {e}; counters: {c}"));
    let mut next: BTreeMap<&str, u64> = BTreeMap::new();
    for (p, s) in &got {
        let want = next.entry(p.as_str()).or_insert(0);
        let in_order = if exact { *s == *want } else { *s <= *want };
        assert!(
            in_order,
            "{p} seq={s} after seq={} (exact: {exact}); counters: {c}",
            *want as i64 - 1
        );
        *want = (*want).max(s + 1);
    }
}

/// CPU ticks of each thread of `pid` named `parser-N`, by N.
fn parser_ticks(pid: i32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let name = name.trim();
        if !name.starts_with("parser-") {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let after = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
        let ticks: u64 = after
            .split(' ')
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse::<u64>().ok())
            .sum();
        out.insert(name.to_string(), ticks);
    }
    out
}

fn names(prefix: &str, k: usize) -> Vec<String> {
    (0..k).map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn containers_on_several_parser_threads_each_deliver_every_line_once_in_order() {
    let d = tempfile::tempdir().unwrap();
    let mut sh = Shipper::start(d.path(), &format!("{NO_ES}\nparser_threads = 3"));
    let (k, n) = (6, 20_000u64);
    let names = names("p", k);
    let mut kids = containers(&sh, d.path(), &names, n, None);
    for (name, kid) in names.iter().zip(kids.iter_mut()) {
        wait_exit(&sh, name, kid, Duration::from_secs(120));
    }
    sh.wait_idle(Duration::from_secs(120));
    wait_for(&sh, "every line counted", Duration::from_secs(10), || {
        reader(&sh, "lines_read") == k as u64 * n
    });
    let ticks = parser_ticks(sh.worker_pid());
    let c = sh.counters();
    assert_eq!(c["reader"]["parser_threads"], 3, "{c}");
    assert_eq!(ticks.len(), 3, "parser threads {ticks:?}");
    // Two containers each: every thread parsed.
    assert!(
        ticks.values().all(|t| *t > 0),
        "CPU ticks per parser thread {ticks:?}; counters {c}"
    );
    sh.stop();
    check_buffer(d.path(), &names, n, true, &c);
}

#[test]
fn a_panic_on_one_parser_thread_leaves_the_others_delivering() {
    let d = tempfile::tempdir().unwrap();
    // Thread parser-0 (the first container's) panics at its first eight
    // stream turns: restarted after 0.1 + 0.2 + ... + 6.4 + 10 s of backoff,
    // it parses nothing for 22.7 s (the eighth panic 12.7 s after the
    // first); parser-1 goes on meanwhile.
    let panics = 8;
    let plan: Vec<String> = (1..=panics)
        .map(|i| format!("parser@parser-0:{i}"))
        .collect();
    let mut sh = Shipper::start_env(
        d.path(),
        &format!("{NO_ES}\nparser_threads = 2"),
        &[("REIN_FAULT_PANIC", &plan.join(",")), ("RUST_LOG", "error")],
    );
    let n = 3000u64;
    let names = names("q", 2);
    let mut kids = containers(&sh, d.path(), &names[..1], n, None);
    // The second container goes to the thread following fewer: parser-1.
    wait_for(&sh, "parser-0 panicking", Duration::from_secs(10), || {
        reader(&sh, "thread_panics_parser") >= 1
    });
    kids.extend(containers(&sh, d.path(), &names[1..], n, None));
    for (name, kid) in names.iter().zip(kids.iter_mut()) {
        wait_exit(&sh, name, kid, Duration::from_secs(60));
    }
    wait_for(&sh, "q1 parsed and let go", Duration::from_secs(60), || {
        reader(&sh, "containers_live") == 1
    });
    // q1 finished while parser-0 was still in its series of panics.
    let c = sh.counters();
    assert!(
        reader(&sh, "thread_panics_parser") < panics,
        "q1 was held up by the panics of the other thread; counters {c}"
    );
    wait_for(
        &sh,
        "q0 parsed after the panics",
        Duration::from_secs(60),
        || reader(&sh, "containers_live") == 0 && reader(&sh, "thread_panics_parser") == panics,
    );
    let c = sh.counters();
    assert_eq!(reader(&sh, "lines_read"), 2 * n, "{c}");
    sh.stop();
    // A panic before a turn loses and repeats nothing.
    check_buffer(d.path(), &names, n, true, &c);
}

#[test]
fn checkpoints_of_several_parser_threads_survive_worker_kills() {
    let d = tempfile::tempdir().unwrap();
    let mut sh = Shipper::start(
        d.path(),
        &format!("{NO_ES}\nparser_threads = 3\ncheckpoint_interval = 50ms"),
    );
    let (k, n) = (6, 6000u64);
    let names = names("k", k);
    let mut kids = containers(&sh, d.path(), &names, n, Some(3000));
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(700));
        sh.kill_worker();
    }
    for (name, kid) in names.iter().zip(kids.iter_mut()) {
        wait_exit(&sh, name, kid, Duration::from_secs(120));
    }
    sh.wait_idle(Duration::from_secs(120));
    wait_for(
        &sh,
        "the counters of the last worker",
        Duration::from_secs(10),
        || reader(&sh, "containers_registered") > 0,
    );
    let c = sh.counters();
    sh.stop();
    // Lines since a container's last checkpoint come again; none is lost.
    check_buffer(d.path(), &names, n, false, &c);
}
