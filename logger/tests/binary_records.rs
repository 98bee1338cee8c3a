//! `rein.log.binary=base64` end to end: a task writes every byte value (and
//! invalid UTF-8, CR LF, empty lines, a JSON line, a line longer than
//! `max_line_bytes`, a last line without newline) through the module into
//! a real shipper process and a real `redis-server`; the test reads the
//! records back from Redis and rebuilds the bytes exactly. The same output
//! in text mode does not rebuild (U+FFFD, no empty lines); an operator's
//! `allow_binary=false` refuses the label.
#![cfg(feature = "redis")]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::redis_server::{xlen, xrange, Entry, RedisServer};
use common::shipper::{sandbox_stream, spec, Shipper};
use rein_logger::record::rebuild;

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

/// The `stdout` documents of Redis stream `key`.
fn stdout_docs(srv: &RedisServer, key: &str) -> Vec<serde_json::Value> {
    xrange(&mut srv.conn(), key)
        .iter()
        .filter(|e| field(e, "stream") == b"stdout")
        .map(|e| serde_json::from_slice(field(e, "doc")).unwrap())
        .collect()
}

/// Runs container `name` (sandbox `root/name`, stdout: `cat input`) with `labels`.
fn run_task(sh: &Shipper, root: &Path, name: &str, labels: &[(&str, &str)], input: &Path) {
    let m = sh.module_with(&[("allowed_sinks", "elasticsearch,redis,none")]);
    let io = m.prepare(&spec(name, &root.join(name), labels)).unwrap();
    assert!(io.shipped, "the shipper did not take the container");
    let status = Command::new("cat")
        .arg(input)
        .stdin(Stdio::null())
        .stdout(Stdio::from(io.stdout))
        .stderr(Stdio::from(io.stderr))
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn every_byte_value_is_recovered_exactly_from_redis() {
    let Some(srv) = RedisServer::start_or_skip("every_byte_value_is_recovered_exactly_from_redis")
    else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(
        d.path(),
        &format!(
            "redis_url = {}\nredis_stream = rein-default\nredis_backoff_max = 300ms\nmax_line_bytes = 1KiB\n",
            srv.url()
        ),
    );
    let input = task_output();
    let file = d.path().join("output.bin");
    std::fs::write(&file, &input).unwrap();
    for (name, mode) in [("b64", "base64"), ("txt", "text")] {
        let stream = format!("bin:{name}");
        let labels = [
            ("rein.log.sink", "redis"),
            ("rein.log.redis_stream", stream.as_str()),
            ("rein.log.binary", mode),
        ];
        run_task(&sh, d.path(), name, &labels, &file);
    }
    // Both containers ended: their streams are read to the end and flushed.
    sh.wait_idle(Duration::from_secs(60));
    let mut con = srv.conn();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut docs = stdout_docs(&srv, "bin:b64");
    while rebuild(&docs).map(|r| r.bytes.len()).unwrap_or(0) < input.len() {
        assert!(
            Instant::now() < deadline,
            "records missing from Redis: {} entries in bin:b64, {} in bin:txt; counters {}",
            xlen(&mut con, "bin:b64"),
            xlen(&mut con, "bin:txt"),
            sh.counters()
        );
        std::thread::sleep(Duration::from_millis(100));
        docs = stdout_docs(&srv, "bin:b64");
    }
    // The sandbox file keeps every byte; the records give back the same.
    assert_eq!(sandbox_stream(&d.path().join("b64"), "stdout"), input);
    let got = rebuild(&docs).unwrap();
    assert_eq!(got.offset, 0);
    assert!(
        got.bytes == input,
        "the rebuilt bytes differ from what the task wrote"
    );
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
        got.bytes.len()
    );
    // 128 single non-UTF-8 bytes, the 256-byte line, the line of invalid
    // sequences, the long line's non-ASCII parts, the last line.
    assert!(invalid >= 128 + 4, "{invalid}");
    // Text mode: the same output is shipped as today's lossy text.
    let text = stdout_docs(&srv, "bin:txt");
    assert!(!text.is_empty());
    assert!(text
        .iter()
        .all(|d| d["log"].get("original_bytes").is_none()));
    assert!(text.len() < docs.len(), "text mode ships no empty line");
    assert_ne!(rebuild(&text).map(|r| r.bytes).ok(), Some(input));
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
