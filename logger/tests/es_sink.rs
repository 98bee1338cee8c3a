//! The Elasticsearch sink against a real ES-compatible server (osmem-server,
//! PyPI osmem-server==0.1.6) behind the fault-injecting proxy.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy};
use common::sinks::{buffer, run_es};
use common::{skip, EsServer, WalAppender};
use rein_logger::http::Url;
use rein_logger::record::{EncodeOptions, SourceMeta, Stream, StreamPipeline};
use rein_logger::sink::es::EsConfig;
use rein_logger::wal::Wal;

const READ_MS: i64 = 1_714_564_800_000; // 2024-05-01

fn wal(dir: &Path) -> Arc<Wal> {
    buffer(dir, 1 << 20, 256 << 20)
}

/// Encodes `n` lines of one container into the buffer; lines in `poison`
/// carry a field of the wrong type, which the server refuses with a 400.
fn fill(w: &Wal, n: usize, poison: &[usize]) {
    let meta = SourceMeta {
        container_chain: vec!["c1".into()],
        task_id: Some("t1".into()),
        ..Default::default()
    };
    let mut p = StreamPipeline::new(&meta, Stream::Stdout, &EncodeOptions::default(), 4096, None);
    let mut input = Vec::new();
    for i in 0..n {
        let l = if i == 0 {
            r#"{"msg":"line 0","pct":1}"#.to_string()
        } else if poison.contains(&i) {
            format!(r#"{{"msg":"line {i}","pct":"not a number"}}"#)
        } else {
            format!("line {i} {}", "x".repeat(150))
        };
        input.extend_from_slice(l.as_bytes());
        input.push(b'\n');
    }
    let mut out = WalAppender::new(w, "c1", "");
    p.feed(&input, 0, true, Instant::now(), READ_MS, &mut |e| {
        out.push(e)
    });
    w.commit().unwrap();
}

fn config(url: &str, dir: &Path) -> EsConfig {
    EsConfig {
        url: Url::parse(url).unwrap(),
        index: "rein-test-%Y.%m.%d".into(),
        auth_file: None,
        gzip: true,
        ca_file: "/etc/ssl/certs/ca-certificates.crt".into(),
        batch_records: 200,
        batch_bytes: 1 << 20,
        timeout: Duration::from_millis(1500),
        request_timeout: Duration::from_secs(20),
        max_response_bytes: 1 << 20,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        dead_letter: dir.join("dead-letter.ndjson"),
        refresh: false,
        route_failure: rein_logger::sink::route::DEFAULT_ROUTE_FAILURE,
    }
}

#[test]
fn every_record_arrives_once_through_injected_faults() {
    let Some(es) = EsServer::start() else {
        return skip(
            "every_record_arrives_once_through_injected_faults",
            "osmem-server not installed (pip install osmem-server==0.1.6)",
        );
    };
    let proxy = Proxy::start(es.addr, None);
    for f in [
        Fault::Status(503),
        Fault::Status(429),
        Fault::Partial {
            every: 3,
            status: 429,
        },
        Fault::DropBeforeForward,
        Fault::Partial {
            every: 2,
            status: 503,
        },
        Fault::DropAfterForward,
        Fault::Slow(Duration::from_millis(2500)), // longer than the client timeout
        Fault::Pass,
        Fault::Slow(Duration::from_millis(300)),
        Fault::Status(502),
    ] {
        proxy.push(f);
    }
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    // A mapped numeric field: documents with text in it are refused (400).
    let (st, body) = es
        .put(
            "/rein-test-2024.05.01",
            r#"{"mappings":{"properties":{"pct":{"type":"long"}}}}"#,
        )
        .unwrap();
    assert_eq!(st, 200, "{body}");
    let n = 2000;
    let poison = [10, 500, 1999];
    fill(&w, n, &poison);
    let auth = d.path().join("auth");
    std::fs::write(&auth, "basic rein:secret\n").unwrap();
    let mut cfg = config(&format!("http://{}", proxy.addr), d.path());
    cfg.auth_file = Some(auth);
    let total = n as u64;
    let stats = run_es(
        cfg,
        w.clone(),
        |s| s.shipped.load(Ordering::Relaxed) + s.dead_lettered.load(Ordering::Relaxed) >= total,
        Duration::from_secs(90),
    );
    let shipped = stats.shipped.load(Ordering::Relaxed);
    let dead = stats.dead_lettered.load(Ordering::Relaxed);
    eprintln!("{stats:?}");
    assert_eq!(
        dead,
        poison.len() as u64,
        "only the refused records are dead-lettered"
    );
    assert_eq!(shipped, total - dead);
    assert!(stats.retried.load(Ordering::Relaxed) > 0);
    assert!(
        stats.duplicates.load(Ordering::Relaxed) > 0,
        "the dropped-after-forward request was resent as duplicates"
    );
    // In the server: every record exactly once (no duplicates despite resends).
    let index = "rein-test-2024.05.01";
    assert_eq!(es.count(index), total - dead);
    let mut msgs = es.messages(index);
    msgs.sort();
    msgs.dedup();
    assert_eq!(msgs.len() as u64, total - dead);
    // The dead letters carry the server's reason and the document.
    let dl = std::fs::read_to_string(d.path().join("dead-letter.ndjson")).unwrap();
    assert_eq!(dl.lines().count(), poison.len());
    for l in dl.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["status"], 400);
        assert!(
            v["reason"]
                .as_str()
                .unwrap()
                .contains("mapper_parsing_exception"),
            "{l}"
        );
        assert!(v["document"].as_str().unwrap().contains("not a number"));
    }
    // The buffer is fully acknowledged; gzip and auth reached the server side.
    assert!(w
        .read_batch(10, 1 << 20, Duration::ZERO)
        .unwrap()
        .is_empty());
    let seen = proxy.seen();
    assert!(seen.iter().all(|s| s.gzip));
    assert!(seen
        .iter()
        .all(|s| s.auth.as_deref() == Some("Basic cmVpbjpzZWNyZXQ=")));
    for f in ["Status(503)", "Partial", "DropAfterForward", "Slow"] {
        assert!(
            seen.iter().any(|s| format!("{:?}", s.fault).starts_with(f)),
            "fault {f} not exercised"
        );
    }
}

#[test]
fn tls_is_verified_by_default() {
    let Some(es) = EsServer::start() else {
        return skip(
            "tls_is_verified_by_default",
            "osmem-server not installed (pip install osmem-server==0.1.6)",
        );
    };
    let d = tempfile::tempdir().unwrap();
    let Some((ca, cert, key)) = common::openssl_cert(d.path()) else {
        return skip("tls_is_verified_by_default", "openssl not found");
    };
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let scfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let proxy = Proxy::start(es.addr, Some(Arc::new(scfg)));
    let w = wal(d.path());
    fill(&w, 50, &[]);
    // 1. The system CAs do not know this self-signed server: nothing is sent, nothing lost.
    let cfg = config(
        &format!("https://localhost:{}", proxy.addr.port()),
        d.path(),
    );
    let stats = run_es(
        cfg.clone(),
        w.clone(),
        |s| s.failed_requests.load(Ordering::Relaxed) >= 2,
        Duration::from_secs(20),
    );
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 0);
    assert!(stats.failed_requests.load(Ordering::Relaxed) >= 2);
    assert_eq!(
        w.read_batch(100, 1 << 20, Duration::ZERO).unwrap().len(),
        50,
        "records stay in the buffer"
    );
    // 2. With the server's CA configured, everything arrives.
    let mut cfg = cfg;
    cfg.ca_file = ca;
    let stats = run_es(
        cfg,
        w.clone(),
        |s| s.shipped.load(Ordering::Relaxed) >= 50,
        Duration::from_secs(30),
    );
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 50);
    assert_eq!(es.count("rein-test-2024.05.01"), 50);
}
