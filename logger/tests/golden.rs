//! Golden test of the whole record pipeline: the fixture input must encode to
//! exactly the expected documents. Set REIN_BLESS=1 to rewrite the expectation.

use std::time::{Duration, Instant};

use rein_logger::record::{
    EncodeOptions, MultilineConfig, SourceMeta, StartRule, Stream, StreamPipeline,
};

fn meta() -> SourceMeta {
    SourceMeta {
        container_chain: vec!["c0ffee".into(), "debug-1".into()],
        agent_id: Some("agent-S1".into()),
        framework_id: Some("fw-1".into()),
        executor_id: Some("exec-1".into()),
        task_id: Some("web.7".into()),
        task_name: Some("web".into()),
        executor_labels: vec![
            ("team".into(), "pay".into()),
            ("tier".into(), "exec".into()),
        ],
        task_labels: vec![
            ("tier".into(), "frontend".into()),
            ("app.version".into(), "1.2".into()),
        ],
        sandbox: "/var/lib/mesos/slaves/S1/sandbox".into(),
    }
}

fn run(chunk: usize) -> String {
    let input = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/golden-input.log"
    ))
    .unwrap();
    let mut opts = EncodeOptions {
        host_name: Some("agent-host-1".into()),
        ..Default::default()
    };
    opts.extra_fields
        .insert("cluster".into(), serde_json::json!({"name": "prod-eu"}));
    let ml = MultilineConfig {
        rule: StartRule::Indented,
        max_lines: 50,
        max_bytes: 10_000,
        timeout: Duration::from_millis(100),
    };
    let mut p = StreamPipeline::new(&meta(), Stream::Stdout, &opts, 160, Some(ml));
    let mut out = String::new();
    let now = Instant::now();
    let read_ms = 1_714_564_800_000; // 2024-05-01T12:00:00Z
    let mut sink = |e: rein_logger::record::Encoded<'_>| {
        out.push_str(std::str::from_utf8(e.id).unwrap());
        out.push('\t');
        out.push_str(std::str::from_utf8(e.doc).unwrap());
        out.push('\n');
    };
    // Feed in small chunks, as reads of a pipe would arrive.
    let mut pending: Vec<u8> = Vec::new();
    let mut base = 0u64;
    for c in input.chunks(chunk) {
        pending.extend_from_slice(c);
        let used = p.feed(&pending, base, false, now, read_ms, &mut sink);
        pending.drain(..used);
        base += used as u64;
    }
    let used = p.feed(&pending, base, true, now, read_ms, &mut sink);
    assert_eq!(used, pending.len());
    p.poll(now, read_ms, true, &mut sink);
    out
}

#[test]
fn golden_documents() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/golden-expected.ndjson"
    );
    let got = run(7);
    if std::env::var_os("REIN_BLESS").is_some() {
        std::fs::write(path, &got).unwrap();
    }
    let want = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        got, want,
        "pipeline output changed (REIN_BLESS=1 to accept)"
    );
    // Every document is valid JSON without duplicate keys at the top level.
    for line in got.lines() {
        let doc = line.split_once('\t').unwrap().1;
        let v: serde_json::Value = serde_json::from_str(doc).unwrap();
        assert!(v["@timestamp"].is_string() && v["message"].is_string());
    }
    // Chunking never changes the result.
    for chunk in [1, 3, 64, 4096] {
        assert_eq!(run(chunk), want, "chunk size {chunk}");
    }
}
