//! End to end against a real ES-compatible server (osmem-server 0.1.6) behind
//! the fault-injecting proxy: containers write through `LoggerModule`, the
//! sink is down for a while, the worker is killed with SIGKILL mid-stream,
//! and every line must be in the index exactly once.

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy};
use common::shipper::{run_container, spec, Shipper};
use common::EsServer;

fn es_index_today() -> String {
    let (y, m, d) = rein_logger::record::time::ymd(rein_logger::shipper::stream::now_ms());
    format!("rein-e2e-{y:04}.{m:02}.{d:02}")
}

#[test]
fn sink_down_and_worker_killed_every_line_once_in_elasticsearch() {
    let test = "sink_down_and_worker_killed_every_line_once_in_elasticsearch";
    let Some(es) = EsServer::start_or_skip(test) else {
        return;
    };
    let proxy = Proxy::start(es.addr, None);
    // The sink is "down" (503 to every request) until the test lets it up.
    for _ in 0..10_000 {
        proxy.push(Fault::Status(503));
    }
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(
        d.path(),
        &format!(
            "es_url = http://{}\nes_index = rein-e2e-%Y.%m.%d\nes_backoff_max = 300ms\nes_batch_records = 1000\nextra_fields = {{\"cluster\":\"test\"}}\nhost_name = agent-host",
            proxy.addr
        ),
    );
    let m = sh.module();
    let n = 4000u64;
    let names = ["c0", "c1", "c2"];
    let mut kids = Vec::new();
    for name in names {
        let sandbox = d.path().join(name);
        let labels = [("team", "payments")];
        let mut s = spec(name, &sandbox, &[]);
        s.executor_labels = labels
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        kids.push(run_container(
            &m,
            &s,
            &[
                "--lines",
                &n.to_string(),
                "--rate",
                "2000",
                "--prefix",
                name,
                "--stderr-every",
                "100",
            ],
        ));
    }
    std::thread::sleep(Duration::from_millis(700));
    sh.kill_worker();
    std::thread::sleep(Duration::from_millis(700));
    for k in kids.iter_mut() {
        assert!(k.wait().unwrap().success(), "a container saw an error");
    }
    // Everything is in the disk buffer; nothing reached the index while it was down.
    assert_eq!(es.count(&es_index_today()), 0);
    let t = Instant::now();
    let failed = loop {
        let f = sh.counters()["sinks"]["elasticsearch"]["failed_requests"]
            .as_u64()
            .unwrap_or(0);
        if f > 0 || t.elapsed() > Duration::from_secs(5) {
            break f;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(failed > 0, "the sink must have been refused");
    // Up again; kill the worker once more while it ships.
    proxy.script.lock().unwrap().clear();
    std::thread::sleep(Duration::from_millis(1500));
    sh.kill_worker();
    let total = n * names.len() as u64;
    // A loaded machine ships slowly: the deadline only bounds a failing run, whose
    // counters then tell a slow drain (records still buffered) from a loss.
    let deadline = Instant::now() + Duration::from_secs(300);
    let index = es_index_today();
    while es.count(&index) < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let got = es.count(&index);
    assert_eq!(
        got,
        total,
        "documents in the index; shipper counters: {}",
        sh.counters()
    );
    let msgs: BTreeSet<String> = es.messages(&index).into_iter().collect();
    // Unique messages == documents: no line twice; and every expected line is there.
    assert_eq!(msgs.len() as u64, total.min(10_000));
    // One document, checked field by field (ECS names and Mesos metadata).
    let (_, body) = es
        .post(
            &format!("/{index}/_search"),
            r#"{"size":1,"query":{"match":{"message":"c1 seq=199"}}}"#,
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let hit = v["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| {
            h["_source"]["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("c1 seq=199 ")
        })
        .expect("c1 seq=199 indexed");
    let doc = &hit["_source"];
    assert_eq!(doc["stream"], "stderr");
    assert_eq!(doc["container"]["id"], "parent-1.c1");
    assert_eq!(doc["mesos"]["container"]["parent"], "parent-1");
    assert_eq!(doc["mesos"]["task"]["id"], "task-c1");
    assert_eq!(doc["mesos"]["framework"]["id"], "fw-1");
    assert_eq!(doc["mesos"]["agent"]["id"], "agent-1");
    assert_eq!(doc["labels"]["team"], "payments");
    assert_eq!(doc["host"]["name"], "agent-host");
    assert_eq!(doc["cluster"], "test");
    assert_eq!(doc["ecs"]["version"], "8.11.0");
    assert!(doc["log"]["file"]["path"]
        .as_str()
        .unwrap()
        .ends_with("c1/stderr"));
    eprintln!("counters after the run: {}", sh.counters());
}

/// Through the shipper to Kafka (Tansu): a task chooses the sink and its topic by label.
#[cfg(feature = "kafka")]
#[test]
fn task_label_routes_records_to_its_kafka_topic() {
    use rdkafka::message::Message;
    let Some(broker) =
        common::Broker::start_or_skip("task_label_routes_records_to_its_kafka_topic")
    else {
        return;
    };
    broker.create_topic("team-a-logs", 1);
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(
        d.path(),
        &format!(
            "kafka_brokers = 127.0.0.1:{}\nkafka_topic = rein-default\n",
            broker.port
        ),
    );
    let m = sh.module_with(&[
        ("allowed_sinks", "elasticsearch,kafka,none"),
        ("allowed_topic_prefixes", "team-a-"),
    ]);
    let labels = [
        ("rein.log.sink", "kafka"),
        ("rein.log.topic", "team-a-logs"),
    ];
    let mut c = run_container(
        &m,
        &spec("k1", &d.path().join("k1"), &labels),
        &["--lines", "500", "--prefix", "k1"],
    );
    assert!(c.wait().unwrap().success());
    let consumer = broker.consumer("rein-e2e", "team-a-logs", 1);
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seqs.len() < 500 && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.unwrap();
        assert_eq!(m.key(), Some(&b"parent-1.k1"[..]));
        let doc: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(doc["mesos"]["task"]["id"], "task-k1");
        let msg = doc["message"].as_str().unwrap().to_string();
        seqs.push(msg.split(' ').nth(1).unwrap()[4..].parse::<u64>().unwrap());
    }
    let mut u = seqs.clone();
    u.dedup();
    assert_eq!(u, (0..500).collect::<Vec<u64>>(), "every line, in order");
}

/// The sink down for a long time at thousands of lines per second, the worker killed
/// and restarted meanwhile: every line arrives exactly once when the sink returns.
/// `REIN_CHAOS_SECS` sets the outage (default 8 s; the README figure used 120 s).
/// Uses the id-counting stand-in (`FakeEs`): the ES-compatible test servers keep
/// every document in memory and ingest ~1k docs/s, too little for this volume.
#[test]
fn long_sink_outage_with_worker_kills_loses_nothing() {
    use common::proxy::FakeEs;
    let secs: u64 = std::env::var("REIN_CHAOS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let es = FakeEs::start();
    es.down.store(true, std::sync::atomic::Ordering::Relaxed);
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(
        d.path(),
        &format!("es_url = http://{}\nes_backoff_max = 1s\nrotate_max_bytes = 4MiB\nrotate_keep = 10000\nbuffer_max_bytes = 8GiB", es.addr),
    );
    let m = sh.module();
    let rate = 1000u64;
    let n = rate * secs;
    let names = ["o0", "o1", "o2"];
    let mut kids = Vec::new();
    for name in names {
        let sandbox = d.path().join(name);
        kids.push((
            name,
            sandbox.clone(),
            run_container(
                &m,
                &spec(name, &sandbox, &[]),
                &[
                    "--lines",
                    &n.to_string(),
                    "--rate",
                    &rate.to_string(),
                    "--prefix",
                    name,
                ],
            ),
        ));
    }
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs) / 3);
    sh.kill_worker();
    std::thread::sleep(Duration::from_secs(secs) / 3);
    sh.restart_worker();
    for (name, _, k) in kids.iter_mut() {
        assert!(
            k.wait().unwrap().success(),
            "{name}: the container saw an error"
        );
    }
    let outage = start.elapsed();
    assert_eq!(es.count(), 0);
    es.down.store(false, std::sync::atomic::Ordering::Relaxed);
    let total = (n as usize) * names.len();
    let deadline = Instant::now() + Duration::from_secs(120 + secs);
    let mut killed_while_shipping = false;
    while es.count() < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        if !killed_while_shipping && es.count() > total / 3 {
            sh.kill_worker();
            killed_while_shipping = true;
        }
    }
    assert_eq!(es.count(), total, "unique documents");
    eprintln!(
        "outage {outage:?} at {} lines/s: {total} lines, all arrived once ({} resends answered 409) in {:?} after the sink came back",
        rate * names.len() as u64,
        es.conflicts.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed() - outage
    );
}
