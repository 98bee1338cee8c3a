//! A TCP proxy in front of a real server that can lose one answer: the
//! request was carried out, the client never hears so.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rein_logger::sink::{Control, Sink};
use rein_logger::wal::Wal;

/// Forwards to a server; when armed, discards the next answer from it and
/// closes the connection (the command was executed, its reply is lost).
pub struct ReplyDropper {
    pub port: u16,
    pub armed: Arc<AtomicBool>,
    pub dropped: Arc<AtomicBool>,
}

impl ReplyDropper {
    /// Listens on a free port of 127.0.0.1, forwarding to `upstream` there.
    pub fn start(upstream: u16) -> ReplyDropper {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicBool::new(false));
        let (a, dr) = (armed.clone(), dropped.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { return };
                let Ok(u) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (c2, u2) = (c.try_clone().unwrap(), u.try_clone().unwrap());
                std::thread::spawn(move || pump(c2, u2, None));
                let (a, dr) = (a.clone(), dr.clone());
                std::thread::spawn(move || pump(u, c, Some((a, dr))));
            }
        });
        ReplyDropper {
            port,
            armed,
            dropped,
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, drop: Option<(Arc<AtomicBool>, Arc<AtomicBool>)>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((armed, dropped)) = &drop {
            if armed.swap(false, Ordering::SeqCst) {
                dropped.store(true, Ordering::SeqCst);
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Ships 100 records of container `la` through `sink` (connected through
/// `proxy`) and acknowledges them; then 400 more with the proxy armed: the
/// server carries the second batch out, its answer is lost, and the sink
/// sends the batch again until it is done.
pub fn ship_a_batch_whose_answer_is_lost<S: Sink>(sink: &mut S, w: &Wal, proxy: &ReplyDropper) {
    let stop = Control::new();
    super::fill_wal(w, "la", "", 0, 100);
    let first = w.read_batch(1000, 8 << 20, Duration::ZERO).unwrap();
    assert!(sink.ship(&first, &stop).is_ok());
    w.ack(first.end, first.len() as u64).unwrap();
    super::fill_wal(w, "la", "", 100, 400);
    let second = w.read_batch(1000, 8 << 20, Duration::ZERO).unwrap();
    assert_eq!(second.len(), 400);
    proxy.armed.store(true, Ordering::SeqCst);
    assert!(sink.ship(&second, &stop).is_ok());
    assert!(
        proxy.dropped.load(Ordering::SeqCst),
        "an answer was dropped"
    );
}
