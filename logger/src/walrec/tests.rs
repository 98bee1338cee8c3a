use super::*;

#[test]
fn roundtrip() {
    let r = WalRecord {
        stream: Stream::Stderr,
        ts_ms: -5,
        id: b"abc-e-1",
        container: b"root.child",
        route: b"",
        doc: b"{\"a\":1}",
    };
    let mut out = Vec::new();
    r.encode_into(&mut out);
    assert_eq!(WalRecord::decode(&out), Some(r));
    assert_eq!(WalRecord::decode(&out[..5]), None);
}

pub(crate) mod differential {
    //! The same records framed whole (version 1) and compact (version 2,
    //! meta frames) give the same records back, byte for byte.
    use super::*;
    use crate::record::pipeline::Encoded;
    use crate::record::{
        BinaryMode, EncodeOptions, MultilineConfig, SourceMeta, StartRule, StreamEncoder,
        StreamPipeline,
    };
    use crate::wal::{meta_key, Wal, META_REF};
    use std::time::{Duration, Instant};

    /// A record as a sink gets it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(crate) struct Owned {
        pub stream: Stream,
        pub ts_ms: i64,
        pub id: Vec<u8>,
        pub container: Vec<u8>,
        pub route: Vec<u8>,
        pub doc: Vec<u8>,
    }

    impl From<WalRecord<'_>> for Owned {
        fn from(r: WalRecord<'_>) -> Self {
            Owned {
                stream: r.stream,
                ts_ms: r.ts_ms,
                id: r.id.to_vec(),
                container: r.container.to_vec(),
                route: r.route.to_vec(),
                doc: r.doc.to_vec(),
            }
        }
    }

    fn meta(chain: &[&str]) -> SourceMeta {
        SourceMeta {
            container_chain: chain.iter().map(|s| s.to_string()).collect(),
            agent_id: Some("agent-1".into()),
            framework_id: Some("fw-1".into()),
            executor_id: Some("exec \"quoted\"".into()),
            task_id: Some("task.1".into()),
            task_name: Some("web".into()),
            executor_labels: vec![("team".into(), "core".into())],
            task_labels: vec![
                ("app.tier".into(), "front ünïcode".into()),
                ("team".into(), "edge".into()),
            ],
            sandbox: "/var/lib/mesos/slaves/agent-1/frameworks/fw-1/executors/e/runs/r".into(),
        }
    }

    fn opts(binary: BinaryMode) -> EncodeOptions {
        let mut extra = serde_json::Map::new();
        extra.insert("dc".into(), serde_json::json!("eu-1"));
        extra.insert("cluster".into(), serde_json::json!({"n": 3}));
        EncodeOptions {
            host_name: Some("host-a".into()),
            extra_fields: extra,
            binary,
            ..Default::default()
        }
    }

    /// Input of every kind a stream carries: plain lines with and without a
    /// time, JSON lines (reserved keys, levels, own times, nested values), a
    /// stack trace, an overlong line, empty lines, invalid UTF-8, `\r\n`.
    pub(crate) fn input(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..n {
            let line = match i % 9 {
                0 => format!("plain line {i} with some words in it"),
                1 => format!("2024-05-01T12:00:0{}Z INFO started {i}", i % 10),
                2 => format!(
                    r#"{{"msg":"json {i}","level":"warn","ts":1714564800,"user":{{"id":{i}}}}}"#
                ),
                3 => format!(
                    r#"{{"message":"m{i}","container":"spoof","log":{{"x":1}},"stream":"x","dc":"no"}}"#
                ),
                4 => format!("Exception in thread {i}\n\tat a.B(C.java:1)\n\tat d.E(F.java:2)"),
                5 => format!("long {} end", "x".repeat(300 + i % 7)),
                6 => String::new(),
                7 => format!("carriage {i}\r"),
                _ => format!("[ERROR] level in brackets {i}"),
            };
            v.extend_from_slice(line.as_bytes());
            if i % 9 == 8 {
                v.extend_from_slice(b" \xff\xfe bad utf8");
            }
            v.push(b'\n');
        }
        v
    }

    /// Feeds `input` to `p` in reads of `chunk` bytes (runs), then flushes.
    fn feed(p: &mut StreamPipeline, input: &[u8], chunk: usize, out: &mut dyn FnMut(Encoded<'_>)) {
        let mut off = 0;
        while off < input.len() {
            let end = (off + chunk).min(input.len());
            let flush = end == input.len();
            let used = p.feed(
                &input[off..end],
                off as u64,
                flush,
                Instant::now(),
                1_714_564_800_000,
                out,
            );
            assert!(used > 0 || flush);
            off += used.max(if flush { end - off } else { 0 });
            if used == 0 {
                break;
            }
        }
        p.poll(Instant::now(), 1_714_564_800_000, true, out);
    }

    /// Gets a record with its stream, container id and route.
    pub(crate) type RecordSink<'f> = dyn FnMut(Stream, &[u8], &[u8], &Encoded<'_>) + 'f;

    /// Every kind of pipeline the shipper runs, each fed `input(n)`: `f`
    /// gets each record with its stream, container id and route.
    pub(crate) fn each_record(n: usize, f: &mut RecordSink<'_>) {
        let ml = || MultilineConfig {
            rule: StartRule::Indented,
            max_lines: 50,
            max_bytes: 64 << 10,
            timeout: Duration::from_secs(60),
        };
        let data = input(n);
        let m = meta(&["root", "child-7"]);
        let cases: Vec<(Stream, &[u8], StreamPipeline, usize)> = vec![
            (
                Stream::Stdout,
                b"team-x-%Y",
                StreamPipeline::new(&m, Stream::Stdout, &opts(BinaryMode::Text), 4096, None),
                1000,
            ),
            (
                Stream::Stderr,
                b"",
                StreamPipeline::new(&m, Stream::Stderr, &opts(BinaryMode::Text), 128, Some(ml())),
                777,
            ),
            (
                Stream::Stdout,
                b"",
                StreamPipeline::new(
                    &meta(&["solo"]),
                    Stream::Stdout,
                    &opts(BinaryMode::Base64),
                    200,
                    None,
                ),
                4096,
            ),
            (
                Stream::File,
                b"files",
                StreamPipeline::with_encoder(
                    StreamEncoder::for_file(&m, b"logs/app.log", "app", 3, &opts(BinaryMode::Text)),
                    4096,
                    Some(ml()),
                ),
                1500,
            ),
        ];
        for (stream, route, mut p, chunk) in cases {
            let cid = if stream == Stream::Stdout && route.is_empty() {
                b"solo".to_vec()
            } else {
                b"root.child-7".to_vec()
            };
            feed(&mut p, &data, chunk, &mut |e| f(stream, &cid, route, &e));
        }
    }

    /// The records of `each_record(n)` framed whole, and framed compact.
    pub(crate) fn both(n: usize) -> (Vec<u8>, Vec<u8>, Vec<Owned>) {
        let (mut full, mut compact, mut want) = (Vec::new(), Vec::new(), Vec::new());
        each_record(n, &mut |stream, cid, route, e| {
            let r = WalRecord {
                stream,
                ts_ms: e.ts_ms,
                id: e.id,
                container: cid,
                route,
                doc: e.doc,
            };
            Wal::frame_into(&mut full, |out| r.encode_into(out));
            frame_encoded(&mut compact, stream, cid, route, e);
            want.push(Owned::from(r));
        });
        (full, compact, want)
    }

    #[test]
    fn compact_frames_expand_to_exactly_the_whole_records() {
        let (full, compact, want) = both(500);
        assert!(want.len() > 1500, "{}", want.len());
        let mut x = Expander::default();
        x.push_frames(&full).unwrap();
        let got_full: Vec<Owned> = x.records().into_iter().map(Owned::from).collect();
        x.clear();
        x.push_frames(&compact).unwrap();
        let got: Vec<Owned> = x.records().into_iter().map(Owned::from).collect();
        assert_eq!(got_full, want);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{}", String::from_utf8_lossy(&w.doc));
        }
        let payloads: Vec<&[u8]> = Wal::frames(&compact).collect();
        let v2 = payloads.iter().filter(|p| p[0] == META_REF).count();
        let metas = payloads.iter().filter(|p| meta_key(p).is_some()).count();
        assert_eq!(v2, want.len(), "every record is compact");
        let ts_head = payloads
            .iter()
            .filter(|p| p[0] == META_REF && p[1] & 0x80 != 0)
            .count();
        assert_eq!(
            ts_head, v2,
            "every encoder document's timestamp head is left out"
        );
        assert!(
            metas > 0 && metas * 5 < v2,
            "one meta frame per run: {metas}"
        );
        assert!(
            compact.len() * 2 < full.len(),
            "compact {} vs whole {}",
            compact.len(),
            full.len()
        );
    }

    /// Frames `input`'s records as the parser does, each document first
    /// changed by `edit` (given its stream offset); the framed bytes and the
    /// documents framed.
    fn framed_edited(
        input: &[u8],
        mut edit: impl FnMut(u64, &Encoded<'_>, &mut Vec<u8>),
    ) -> (Vec<u8>, Vec<Vec<u8>>) {
        let m = meta(&["c"]);
        let mut p = StreamPipeline::new(&m, Stream::Stdout, &opts(BinaryMode::Text), 4096, None);
        let (mut framed, mut want) = (Vec::new(), Vec::new());
        p.feed(input, 0, true, Instant::now(), 0, &mut |e: Encoded<'_>| {
            let mut doc = e.doc.to_vec();
            edit(e.offset, &e, &mut doc);
            let e2 = Encoded { doc: &doc, ..e };
            frame_encoded(&mut framed, Stream::Stdout, b"c", b"", &e2);
            want.push(doc);
        });
        (framed, want)
    }

    #[test]
    fn a_timestamp_head_not_made_from_ts_ms_is_stored_as_it_is() {
        // The second record's timestamp a millisecond off its `ts_ms`.
        let (framed, want) = framed_edited(b"one\ntwo\n", |off, _, doc| {
            if off == 4 {
                doc[37] = if doc[37] == b'0' { b'1' } else { b'0' };
            }
        });
        let payloads: Vec<&[u8]> = Wal::frames(&framed).filter(|p| p[0] == META_REF).collect();
        let flags: Vec<bool> = payloads.iter().map(|p| p[1] & 0x80 != 0).collect();
        assert_eq!(flags, [true, false]);
        assert!(payloads[1].len() > payloads[0].len() + 40);
        assert_eq!(expanded(&framed), want);
    }

    /// The documents `framed` expands to.
    fn expanded(framed: &[u8]) -> Vec<Vec<u8>> {
        let mut x = Expander::default();
        x.push_frames(framed).unwrap();
        x.records().iter().map(|r| r.doc.to_vec()).collect()
    }

    #[test]
    fn a_document_not_holding_its_parts_is_framed_whole() {
        // The second document loses its tail (an encoder that changed).
        let (framed, want) = framed_edited(b"one\ntwo\nthree\n", |off, e, doc| {
            if off == 4 {
                doc.truncate(e.parts.unwrap().tail_at);
                doc.push(b'}');
            }
        });
        let kinds: Vec<u8> = Wal::frames(&framed).map(|p| p[0]).collect();
        assert_eq!(kinds, [3, 2, 1, 2]);
        assert_eq!(expanded(&framed), want);
    }

    #[test]
    fn compact_records_and_metas_round_trip_and_reject_damage() {
        let m = Meta {
            id_prefix: b"00ff-o-",
            container: b"root.c",
            route: b"r",
            log_head: b"\"log\":{\"offset\":",
            tail: b",\"x\":1",
        };
        let mut b = Vec::new();
        m.encode_into(&mut b);
        assert_eq!(Meta::decode(&b), Some(m));
        assert_eq!(Meta::decode(&b[..b.len() - 1]), None);
        let r = CompactRecord {
            stream: Stream::Stderr,
            ts_head: true,
            key: 42,
            ts_ms: -1,
            id_suffix: b"17",
            head_at: 3,
            tail_at: 5,
            body: b"{a,7b}",
        };
        let mut p = Vec::new();
        r.encode_into(&mut p);
        assert_eq!(CompactRecord::decode(&p), Some(r));
        let mut doc = Vec::new();
        r.expand_doc(&m, &mut Default::default(), &mut doc);
        // The timestamp head made again from `ts_ms` (-1: a millisecond before 1970).
        assert_eq!(
            std::str::from_utf8(&doc).unwrap(),
            "{\"@timestamp\":\"1969-12-31T23:59:59.999Z\",\"message\":{a,\"log\":{\"offset\":7b,\"x\":1}"
        );
        // Cut positions past the body: not a record.
        let bad = CompactRecord { tail_at: 99, ..r };
        let mut p = Vec::new();
        bad.encode_into(&mut p);
        assert_eq!(CompactRecord::decode(&p), None);
        let mut x = Expander::default();
        assert_eq!(x.push(&p, |_| None), Err(ExpandError::Undecodable));
        let mut p = Vec::new();
        r.encode_into(&mut p);
        assert_eq!(x.push(&p, |_| None), Err(ExpandError::MissingMeta(42)));
        assert_eq!(x.push(&p, |_| Some(b"junk")), Err(ExpandError::BadMeta(42)));
        assert_eq!(x.push(&p, |_| Some(&b[..])), Ok(()));
        assert_eq!(x.records()[0].id, b"00ff-o-17");
        assert!(x.push(b"\xffnot a record", |_| None).is_err());
    }
}
