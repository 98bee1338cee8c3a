//! JSON lines encoded by the scanner path against the encoding they had when
//! lines were parsed into a `serde_json` map (kept here as the oracle): the
//! same documents, byte for byte, over random and adversarial lines.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::*;
use crate::record::json::differential_tests::{mutate, object_line, Rng};
use crate::record::json::push_compact;

type OldFields<'a> = BTreeMap<Cow<'a, str>, &'a RawValue>;

fn old_parse_object(text: &[u8]) -> Option<OldFields<'_>> {
    let t = text.trim_ascii();
    if t.len() < 2 || t[0] != b'{' || t[t.len() - 1] != b'}' {
        return None;
    }
    let s = std::str::from_utf8(t).ok()?;
    serde_json::from_str::<OldFields<'_>>(s).ok()
}

/// The encoding of a JSON line before the scanner, as it was.
fn old_encode_json(
    e: &mut StreamEncoder,
    rec: &Record<'_>,
    fields: &OldFields<'_>,
    read_ms: i64,
    out: &mut Vec<u8>,
) -> i64 {
    let mut ts = None;
    let mut msg = None;
    let mut level = None;
    let mut used: [Option<&str>; 3] = [None; 3];
    for k in TIME_KEYS {
        if let Some(v) = fields.get(*k) {
            if let Some(t) = json_time(v.get()) {
                ts = Some(t);
                used[0] = Some(k);
                break;
            }
        }
    }
    for k in MESSAGE_KEYS {
        if let Some(s) = fields.get(*k).and_then(|v| raw_as_str(v.get())) {
            msg = Some(s);
            used[1] = Some(k);
            break;
        }
    }
    for k in LEVEL_KEYS {
        if let Some(s) = fields.get(*k).and_then(|v| raw_as_str(v.get())) {
            level = Some(
                normalize_level(&s)
                    .map(str::to_string)
                    .unwrap_or(s.to_lowercase()),
            );
            used[2] = Some(k);
            break;
        }
    }
    let time = e.bound_time(ts, read_ms);
    out.extend_from_slice(b"{\"@timestamp\":\"");
    e.ts.push(time.ms, out);
    out.extend_from_slice(b"\",\"message\":");
    push_str(out, msg.as_deref().map(str::as_bytes).unwrap_or(rec.text));
    out.push(b',');
    let exact = e.exact(rec, msg.is_none());
    e.push_log(rec, level.as_deref().map(str::as_bytes), time, exact, out);
    out.extend_from_slice(&e.tail);
    let mut nested = Vec::new();
    for (k, v) in fields {
        if used.contains(&Some(k.as_ref())) {
            continue;
        }
        let dst = if e.is_reserved(k) {
            &mut nested
        } else {
            &mut *out
        };
        dst.push(b',');
        push_str(dst, k.as_bytes());
        dst.push(b':');
        push_compact(dst, v.get().as_bytes());
    }
    if !nested.is_empty() {
        out.extend_from_slice(b",\"json\":{");
        out.extend_from_slice(&nested[1..]);
        out.push(b'}');
    }
    out.push(b'}');
    time.ms
}

fn encoders(mode: BinaryMode) -> (StreamEncoder, StreamEncoder) {
    let meta = SourceMeta {
        container_chain: vec!["c".into(), "d".into()],
        task_name: Some("web".into()),
        task_labels: vec![("tier".into(), "x".into())],
        ..Default::default()
    };
    let mut opts = EncodeOptions::default().with_binary(mode);
    opts.extra_fields
        .insert("cluster".into(), serde_json::json!({"name": "eu"}));
    opts.host_name = Some("h".into());
    let e = StreamEncoder::new(&meta, Stream::Stdout, &opts);
    let old = StreamEncoder::new(&meta, Stream::Stdout, &opts);
    (e, old)
}

fn same_document(new: &mut StreamEncoder, old: &mut StreamEncoder, text: &[u8], n: u64) {
    let rec = Record {
        offset: n * 201,
        text,
        exact: text,
        terminated: !n.is_multiple_of(7),
        lines: if n.is_multiple_of(5) { 3 } else { 1 },
        split: None,
    };
    // A fixed receive time: some task times are within the skew, some refused.
    let read_ms = 1_714_564_800_000;
    let (mut got, mut want) = (Vec::new(), Vec::new());
    let got_ms = new.encode(&rec, read_ms, &mut got);
    let want_ms = match old_parse_object(text) {
        Some(f) => old_encode_json(old, &rec, &f, read_ms, &mut want),
        None => old.encode(&rec, read_ms, &mut want),
    };
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want),
        "line {:?}",
        String::from_utf8_lossy(text)
    );
    assert_eq!(got_ms, want_ms);
}

#[test]
fn json_lines_encode_as_before() {
    for mode in [BinaryMode::Text, BinaryMode::Base64] {
        let (mut new, mut old) = encoders(mode);
        let mut r = Rng(0x2545_f491_4f6c_dd1d);
        for n in 0..20_000 {
            let line = object_line(&mut r);
            same_document(&mut new, &mut old, &line, n);
            let bad = mutate(&mut r, line);
            same_document(&mut new, &mut old, &bad, n);
        }
        for line in [
            &br#"{"time":"2024-05-01T12:00:00Z","time":1714564700,"ts":"x","msg":1,"message":"m","level":"WARNING","lvl":"x"}"#[..],
            br#"{"level":"\u0130NFO","msg":"\ud800","message":"ok"}"#,
            br#"{"log.level":"Notice","log":{"a":1},"json":2,"cluster.name":3,"labels.x":"y"}"#,
            br#"{"ts":0,"timestamp":-5,"time":1e400,"@timestamp":"2024-05-01T12:00:00.5+02:00"}"#,
            br#"{"m\u0073g":"escaped key","lev\u0065l":"error"}"#,
        ] {
            same_document(&mut new, &mut old, line, 1);
        }
    }
}
