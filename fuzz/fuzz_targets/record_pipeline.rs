//! Fuzzes the record pipeline: arbitrary stream bytes and labels through
//! framing, multiline, enrichment and every sink's encoding. Whatever the
//! input, each record must encode to exactly one well-formed unit: one
//! `_bulk` action line and one document line (both JSON, no raw line break),
//! one Kafka record payload and one Redis stream entry value (a JSON
//! document each), and a route a sink accepts only when its rules do. In
//! `rein.log.binary=base64` mode the records rebuild the input exactly.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rein_logger::record::{
    rebuild, BinaryMode, EncodeOptions, MultilineConfig, SourceMeta, StartRule, Stream,
    StreamPipeline,
};
use rein_logger::sink::es::encode_bulk;
use rein_logger::sink::route;
use rein_logger::walrec::{frame_encoded, Expander, WalRecord};

const READ_MS: i64 = 1_714_564_800_000;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check_doc(doc: &[u8]) {
    assert!(
        !doc.contains(&b'\n') && !doc.contains(&b'\r'),
        "raw line break in {}",
        text(doc)
    );
    let v: serde_json::Value = serde_json::from_slice(doc)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(doc)));
    assert!(v.is_object(), "not an object: {}", text(doc));
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    // Header: max line, multiline mode, time skew, max lines (low bits) and
    // binary mode (high bit); then labels \0 route \0 stream bytes.
    let max_line = 16 + usize::from(data[0]) * 8;
    let multiline = match data[1] % 3 {
        0 => None,
        1 => Some(StartRule::Indented),
        _ => regex::bytes::Regex::new("^[0-9{]").ok().map(StartRule::Pattern),
    };
    let past = i64::from(data[2]) * 3_600_000;
    let mut parts = data[4..].splitn(3, |&b| b == 0);
    let labels = parts.next().unwrap_or_default();
    let route_raw = parts.next().unwrap_or_default();
    let input = parts.next().unwrap_or_default();
    let task_labels: Vec<(String, String)> = labels
        .split(|&b| b == b'\n')
        .filter_map(|l| {
            let l = text(l);
            l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let meta = SourceMeta {
        container_chain: vec!["root".into(), text(labels.get(..8).unwrap_or(labels))],
        task_name: task_labels.first().map(|l| l.1.clone()),
        task_id: Some(text(route_raw)),
        task_labels,
        ..Default::default()
    };
    let ml = multiline.map(|rule| MultilineConfig {
        rule,
        max_lines: u32::from(data[3] % 8) + 1,
        max_bytes: max_line * 2,
        timeout: Duration::from_secs(1),
    });
    let binary = if data[3] & 0x80 != 0 {
        BinaryMode::Base64
    } else {
        BinaryMode::Text
    };
    let opts = EncodeOptions {
        max_ts_past_ms: past,
        binary,
        ..Default::default()
    };
    let mut p = StreamPipeline::new(&meta, Stream::Stdout, &opts, max_line, ml);
    // Routes the sinks accept are those their rules accept; others never reach a request.
    let es_route = route::check_es_index(route_raw).is_ok();
    let _ = route::check_kafka_topic(route_raw);
    let _ = route::check_redis_stream(route_raw, "rein:dedup");
    let route: &[u8] = if es_route { route_raw } else { b"" };

    let mut docs: Vec<(Vec<u8>, Vec<u8>, i64)> = Vec::new();
    // The same records as the disk buffer holds them (compact, meta frames).
    let mut framed = Vec::new();
    let mut sink = |e: rein_logger::record::Encoded<'_>| {
        docs.push((e.id.to_vec(), e.doc.to_vec(), e.ts_ms));
        frame_encoded(&mut framed, Stream::Stdout, b"root.c", route, &e);
    };
    // Two reads, as a stream arrives; the rest flushed at the end.
    let cut = input.len() / 2;
    let used = p.feed(&input[..cut], 0, false, Instant::now(), READ_MS, &mut sink);
    let rest = &input[used..];
    let used2 = p.feed(rest, used as u64, true, Instant::now(), READ_MS, &mut sink);
    assert_eq!(used + used2, input.len(), "a flushed feed consumes everything");
    p.poll(Instant::now(), READ_MS, true, &mut sink);
    if binary == BinaryMode::Base64 {
        let parsed: Vec<serde_json::Value> = docs
            .iter()
            .map(|d| serde_json::from_slice(&d.1).unwrap())
            .collect();
        let got = rebuild(&parsed).unwrap_or_else(|e| panic!("{e}"));
        assert!(got.bytes == input, "base64 records do not rebuild the input");
    }

    // The buffer's records expand to exactly the documents.
    let mut whole = Expander::default();
    whole.push_frames(&framed).expect("framed records expand");
    let expanded = whole.records();
    assert_eq!(expanded.len(), docs.len());
    for (r, (id, doc, ts)) in expanded.iter().zip(&docs) {
        assert!(r.id == &id[..] && r.doc == &doc[..] && r.ts_ms == *ts);
        assert!(r.container == b"root.c" && r.route == route);
    }

    for (id, doc, ts) in &docs {
        // Elasticsearch, Kafka payload, Redis entry: one JSON document.
        check_doc(doc);
        assert!(
            *ts >= READ_MS - past && *ts <= READ_MS + 5 * 60_000,
            "index date outside the skew: {ts}"
        );
        // The buffer envelope round-trips.
        let rec = WalRecord {
            stream: Stream::Stdout,
            ts_ms: *ts,
            id,
            container: b"root.c",
            route,
            doc,
        };
        let mut payload = Vec::new();
        rec.encode_into(&mut payload);
        assert_eq!(WalRecord::decode(&payload), Some(rec));
        // `_bulk`: exactly two lines per record, each one JSON value.
        let mut body = Vec::new();
        encode_bulk(&[rec], "logs-%Y.%m.%d", &mut body);
        let lines: Vec<&[u8]> = body.strip_suffix(b"\n").unwrap().split(|&b| b == b'\n').collect();
        assert_eq!(lines.len(), 2, "{}", text(&body));
        for l in lines {
            serde_json::from_slice::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("bad _bulk line ({e}): {}", text(l)));
        }
    }
});
