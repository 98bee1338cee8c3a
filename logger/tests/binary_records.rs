//! `rein.log.binary=base64` end to end: a task writes every byte value (and
//! invalid UTF-8, CR LF, empty lines, a JSON line, a line longer than
//! `max_line_bytes`, a last line without newline) to its stdout and to a log
//! file (`rein.log.files`), through the module into a real shipper process
//! and a real `redis-server`; the test reads the records back from Redis and
//! rebuilds the bytes of each exactly. The same output
//! in text mode does not rebuild (U+FFFD, no empty lines); random bytes
//! joined by multiline still rebuild across a `kill -9` of the worker; an
//! operator's `allow_binary=false` refuses the label.
#![cfg(feature = "redis")]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::redis_server::{xlen, xrange, Entry, RedisServer};
use common::rng::Rng;
use common::shipper::{sandbox_stream, spec, Shipper};
use rein_logger::record::rebuild;
use serde_json::Value;

/// Every byte value alone on a line, all 256 in one line, invalid and
/// overlong UTF-8, surrogates, CR LF, empty lines, a JSON line, a long line
/// of every byte value but `\n`, and a last line without newline.
fn task_output() -> Vec<u8> {
    let mut out = Vec::new();
    for b in 0..=255u8 {
        out.extend_from_slice(&[b, b'\n']);
    }
    out.extend(0..=255u8);
    out.push(b'\n');
    out.extend_from_slice(b"\xc0\xaf overlong \xed\xa0\x80 surrogate \xf0\x9f\x98 cut\r\n\r\n\n");
    out.extend_from_slice(b"{\"msg\":\"json \\u00e9\",\"n\":1}\r\n");
    for i in 0..3000u32 {
        let b = u8::try_from(i % 255).unwrap();
        out.push(if b == b'\n' { 0xff } else { b });
    }
    out.extend_from_slice(b"\nlast line \xff without newline");
    out
}

fn field<'a>(e: &'a Entry, name: &str) -> &'a [u8] {
    &e.1.iter().find(|(k, _)| k == name).unwrap().1
}

/// Which of a container's outputs a document is from.
type Pick = fn(&Value) -> bool;

fn is_stdout(d: &Value) -> bool {
    d["stream"] == "stdout"
}

fn is_app_log(d: &Value) -> bool {
    d["log"]["file"]["path"] == "app.log"
}

/// The documents of Redis stream `key` that `pick` keeps.
fn docs_of(srv: &RedisServer, key: &str, pick: Pick) -> Vec<Value> {
    xrange(&mut srv.conn(), key)
        .iter()
        .map(|e| serde_json::from_slice(field(e, "doc")).unwrap())
        .filter(pick)
        .collect()
}

/// Runs container `name` (sandbox `root/name`) with `labels`: it writes
/// `input` to `app.log` in its sandbox, then `cat`s it to its stdout.
fn run_task(sh: &Shipper, root: &Path, name: &str, labels: &[(&str, &str)], input: &Path) {
    let m = sh.module_with(&[("allowed_sinks", "elasticsearch,redis,none")]);
    let io = m.prepare(&spec(name, &root.join(name), labels)).unwrap();
    assert!(io.shipped, "the shipper did not take the container");
    std::fs::copy(input, root.join(name).join("app.log")).unwrap();
    let status = Command::new("cat")
        .arg(input)
        .stdin(Stdio::null())
        .stdout(Stdio::from(io.stdout))
        .stderr(Stdio::from(io.stderr))
        .status()
        .unwrap();
    assert!(status.success());
}

/// A `redis-server` and a shipper sending to it (lines split at 1 KiB), with
/// its state in a temporary directory; `None` (a visible skip of `test`)
/// without redis-server.
fn redis_and_shipper(test: &str) -> Option<(RedisServer, tempfile::TempDir, Shipper)> {
    let srv = RedisServer::start_or_skip(test)?;
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(
        d.path(),
        &format!(
            "redis_url = {}\nredis_stream = rein-default\nredis_backoff_max = 300ms\nmax_line_bytes = 1KiB\n",
            srv.url()
        ),
    );
    Some((srv, d, sh))
}

/// Waits until the records of Redis stream `key` that `pick` keeps rebuild
/// `want` bytes (or more); returns them rebuilt.
fn rebuilt_from_redis(
    srv: &RedisServer,
    sh: &Shipper,
    key: &str,
    pick: Pick,
    want: usize,
) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let docs = docs_of(srv, key, pick);
        let got = rebuild(&docs);
        match &got {
            Ok(r) if r.bytes.len() >= want => {
                assert_eq!(r.offset, 0);
                return got.unwrap().bytes;
            }
            _ => assert!(
                Instant::now() < deadline,
                "records missing from Redis stream {key}: {} entries, rebuild: {:?}; counters {}",
                xlen(&mut srv.conn(), key),
                got.map(|r| r.bytes.len()),
                sh.counters()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_byte_value_is_recovered_exactly_from_redis() {
    let Some((srv, d, sh)) = redis_and_shipper("every_byte_value_is_recovered_exactly_from_redis")
    else {
        return;
    };
    let input = task_output();
    let file = d.path().join("output.bin");
    std::fs::write(&file, &input).unwrap();
    for (name, mode) in [("b64", "base64"), ("txt", "text")] {
        let stream = format!("bin:{name}");
        let labels = [
            ("rein.log.sink", "redis"),
            ("rein.log.redis_stream", stream.as_str()),
            ("rein.log.binary", mode),
            ("rein.log.files", "app=app.log"),
        ];
        run_task(&sh, d.path(), name, &labels, &file);
    }
    // Both containers ended: their outputs are read to the end and flushed.
    sh.wait_idle(Duration::from_secs(60));
    // The sandbox files keep every byte; the records give back the same.
    assert_eq!(sandbox_stream(&d.path().join("b64"), "stdout"), input);
    for (what, pick) in [("stdout", is_stdout as Pick), ("app.log", is_app_log)] {
        let rebuilt = rebuilt_from_redis(&srv, &sh, "bin:b64", pick, input.len());
        assert!(
            rebuilt == input,
            "the bytes rebuilt from {what} differ from what the task wrote"
        );
    }
    let docs = docs_of(&srv, "bin:b64", is_stdout);
    let with_bytes = docs
        .iter()
        .filter(|d| d["log"].get("original_bytes").is_some())
        .count();
    let invalid = docs
        .iter()
        .filter(|d| {
            d["log"]["flags"]
                .as_array()
                .is_some_and(|f| f.contains(&"invalid_utf8".into()))
        })
        .count();
    println!(
        "base64 mode: {} records, {with_bytes} with log.original_bytes, {invalid} flagged invalid_utf8, {} bytes rebuilt",
        docs.len(),
        input.len()
    );
    // 128 single non-UTF-8 bytes, the 256-byte line, the line of invalid
    // sequences, the long line's non-ASCII parts, the last line.
    assert!(invalid >= 128 + 4, "{invalid}");
    // Text mode: the same output is shipped as today's lossy text.
    let text = docs_of(&srv, "bin:txt", is_stdout);
    assert!(!text.is_empty());
    assert!(text
        .iter()
        .all(|d| d["log"].get("original_bytes").is_none()));
    assert!(text.len() < docs.len(), "text mode ships no empty line");
    assert_ne!(rebuild(&text).map(|r| r.bytes).ok(), Some(input));
}

/// Random bytes (every value, lines joined by the `indented` rule) written
/// while the worker is killed: replayed records, multiline ones included,
/// still rebuild the output exactly (Redis keeps one entry per record id).
#[test]
fn random_bytes_rebuild_exactly_across_a_worker_kill() {
    let Some((srv, d, sh)) = redis_and_shipper("random_bytes_rebuild_exactly_across_a_worker_kill")
    else {
        return;
    };
    let m = sh.module_with(&[("allowed_sinks", "elasticsearch,redis,none")]);
    let labels = [
        ("rein.log.sink", "redis"),
        ("rein.log.redis_stream", "bin:kill"),
        ("rein.log.binary", "base64"),
        ("rein.log.multiline", "indented"),
    ];
    let io = m
        .prepare(&spec("kill", &d.path().join("kill"), &labels))
        .unwrap();
    assert!(io.shipped);
    let seed = 0x5eed_b1e5;
    println!("seed {seed:#x}");
    let mut rng = Rng(seed);
    // Chunks of random bytes, each ending with a newline: no partial line
    // waits long enough to be flushed on its own.
    let mut chunks = Vec::new();
    for _ in 0..600 {
        let mut c: Vec<u8> = (0..rng.range(1, 400))
            .map(|_| match rng.range(0, 9) {
                0 => b'\n',
                1 => b' ',
                _ => rng.next().to_le_bytes()[0],
            })
            .collect();
        c.push(b'\n');
        chunks.push(c);
    }
    let input = chunks.concat();
    let mut out = std::fs::File::from(io.stdout);
    drop(io.stderr);
    let writer = std::thread::spawn(move || {
        for c in chunks {
            out.write_all(&c).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    std::thread::sleep(Duration::from_millis(400));
    sh.kill_worker();
    writer.join().unwrap();
    sh.wait_idle(Duration::from_secs(60));
    let rebuilt = rebuilt_from_redis(&srv, &sh, "bin:kill", is_stdout, input.len());
    assert!(
        rebuilt == input,
        "the rebuilt bytes differ from what the task wrote ({} vs {} bytes)",
        rebuilt.len(),
        input.len()
    );
    assert_eq!(sandbox_stream(&d.path().join("kill"), "stdout"), input);
}

#[test]
fn an_operator_can_refuse_binary_records() {
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(d.path(), "");
    let m = sh.module_with(&[("allow_binary", "false")]);
    let e = m
        .prepare(&spec(
            "no",
            &d.path().join("no"),
            &[("rein.log.binary", "base64")],
        ))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rein.log.binary") && e.contains("allow_binary=false"),
        "{e}"
    );
    let io = m
        .prepare(&spec(
            "yes",
            &d.path().join("yes"),
            &[("rein.log.binary", "text")],
        ))
        .unwrap();
    assert!(io.shipped);
}
