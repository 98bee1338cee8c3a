//! One connection of the NATS sink: TCP, or TLS through rustls (verified
//! against `nats_ca_file`) after the server's `INFO`; the `CONNECT`
//! handshake with the credentials of `nats_auth_file`; one subscription to
//! a reply inbox of its own (`_INBOX.<random>.*`) on which JetStream's
//! acknowledgements arrive, one reply subject per published message.
//!
//! Every read has a deadline (a server trickling bytes is cut off) and goes
//! through [`OpReader`]'s bounds; a connection that broke either, or whose
//! server answered something that is not NATS, is never read again.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

use super::nats_config::{NatsAuth, NatsUrl};
use super::nats_proto::{self, Msg, OpReader, ProtoError, ServerOp};
use crate::http::Refusal;

/// The subscription id of the reply inbox.
const INBOX_SID: u64 = 1;

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// What the server said of itself in `INFO`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// Largest message (headers and payload) it takes.
    pub max_payload: u64,
    /// It understands headers (`HPUB`): needed for `Nats-Msg-Id`.
    pub headers: bool,
    /// It requires TLS.
    pub tls_required: bool,
    /// Its version, for logs.
    pub version: String,
}

impl ServerInfo {
    fn parse(json: &[u8]) -> Result<ServerInfo, ConnError> {
        let v: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| ConnError::Handshake(format!("INFO is not JSON: {e}")))?;
        Ok(ServerInfo {
            max_payload: v["max_payload"].as_u64().unwrap_or(1 << 20),
            headers: v["headers"].as_bool().unwrap_or(false),
            tls_required: v["tls_required"].as_bool().unwrap_or(false),
            version: v["version"]
                .as_str()
                .unwrap_or("?")
                .chars()
                .take(40)
                .collect(),
        })
    }
}

/// Why a connection, or an exchange on it, failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Connecting, writing or TLS failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server's bytes were not what the protocol allows, or broke a bound.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The server answered `-ERR`.
    #[error("server error: {0}")]
    Server(String),
    /// The server cannot serve the sink (no headers, TLS disagreement, ...).
    #[error("{0}")]
    Handshake(String),
    /// TLS could not be set up (the CA file, the server name).
    #[error("TLS: {0}")]
    Tls(String),
    /// The credentials file could not be used.
    #[error(transparent)]
    Credentials(#[from] super::SinkError),
}

impl ConnError {
    /// The class of an answer refused (not a connection that could not be
    /// made, not a `-ERR`): counted per reason by the sink.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            ConnError::Proto(ProtoError::TooLarge { .. }) => Some(Refusal::TooLarge),
            ConnError::Proto(ProtoError::Malformed(_)) => Some(Refusal::Malformed),
            ConnError::Proto(ProtoError::Io(e)) => match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Some(Refusal::Slow),
                io::ErrorKind::UnexpectedEof => Some(Refusal::Truncated),
                _ => None,
            },
            ConnError::Handshake(_) => Some(Refusal::Unusable),
            _ => None,
        }
    }
}

/// A reply on the inbox: the publish (or request) it answers, and the message.
#[derive(Debug)]
pub struct Reply {
    /// The number of the reply subject (see [`NatsConn::publish`]).
    pub id: u64,
    /// The message.
    pub msg: Msg,
}

/// Reads of one exchange: none after `deadline`, each at most `io_timeout`.
struct Deadlined<'a> {
    io: &'a mut dyn ReadWrite,
    tcp: &'a TcpStream,
    deadline: Instant,
    io_timeout: Duration,
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(rest) = self.deadline.checked_duration_since(Instant::now()) else {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete answer before the deadline",
            ));
        };
        let wait = rest.min(self.io_timeout).max(Duration::from_millis(1));
        self.tcp.set_read_timeout(Some(wait))?;
        self.io.read(buf)
    }
}

/// A connection to a NATS server, subscribed to its reply inbox.
pub struct NatsConn {
    io: Box<dyn ReadWrite>,
    tcp: TcpStream,
    reader: OpReader,
    info: ServerInfo,
    inbox: String,
    next_id: u64,
    io_timeout: Duration,
    out: Vec<u8>,
}

impl std::fmt::Debug for NatsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConn")
            .field("info", &self.info)
            .field("inbox", &self.inbox)
            .finish_non_exhaustive()
    }
}

/// A reply inbox no other connection has: `_INBOX.<random hex>`.
fn new_inbox() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let a = h.finish();
    h.write_u64(a);
    format!("_INBOX.{a:016x}{:016x}", h.finish())
}

/// The CA certificates a `tls://` server is verified against.
fn tls_config(ca_file: &Path) -> Result<rustls::ClientConfig, ConnError> {
    let bad = |e: &dyn std::fmt::Display| ConnError::Tls(format!("{}: {e}", ca_file.display()));
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(&e))? {
        roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no CA certificate found"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl NatsConn {
    /// Connects to `url`, upgrades to TLS for `tls://` (verified against
    /// `ca_file`), authenticates with `auth` and subscribes to a new inbox.
    pub fn connect(
        url: &NatsUrl,
        ca_file: &Path,
        auth: Option<&NatsAuth>,
        io_timeout: Duration,
    ) -> Result<NatsConn, ConnError> {
        // The first address that answers.
        let mut last = None;
        let tcp = (url.host.as_str(), url.port)
            .to_socket_addrs()?
            .find_map(|a| {
                TcpStream::connect_timeout(&a, io_timeout)
                    .map_err(|e| last = Some(e))
                    .ok()
            })
            .ok_or_else(|| {
                last.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("{}: no address", url.host))
                })
            })?;
        tcp.set_nodelay(true)?;
        tcp.set_write_timeout(Some(io_timeout))?;
        let mut conn = NatsConn {
            io: Box::new(tcp.try_clone()?),
            tcp,
            reader: OpReader::default(),
            info: ServerInfo::default(),
            inbox: new_inbox(),
            next_id: 0,
            io_timeout,
            out: Vec::new(),
        };
        let deadline = Instant::now() + io_timeout;
        match conn.read_op(deadline)? {
            ServerOp::Info(json) => conn.info = ServerInfo::parse(&json)?,
            other => {
                return Err(ConnError::Handshake(format!(
                    "expected INFO first, got {other:?}"
                )))
            }
        }
        if url.tls != conn.info.tls_required {
            return Err(ConnError::Handshake(if url.tls {
                "tls:// asked for, but the server does not offer TLS".into()
            } else {
                "the server requires TLS: use tls://".into()
            }));
        }
        if url.tls {
            if conn.reader.pending() > 0 {
                return Err(ConnError::Handshake("bytes after INFO before TLS".into()));
            }
            let cfg = tls_config(ca_file)?;
            let name = ServerName::try_from(url.host.clone())
                .map_err(|e| ConnError::Tls(format!("server name {}: {e}", url.host)))?;
            let c = rustls::ClientConnection::new(Arc::new(cfg), name)
                .map_err(|e| ConnError::Tls(e.to_string()))?;
            conn.io = Box::new(rustls::StreamOwned::new(c, conn.tcp.try_clone()?));
        }
        if !conn.info.headers {
            return Err(ConnError::Handshake(format!(
                "server {} does not support headers (Nats-Msg-Id needs NATS 2.2 or later)",
                conn.info.version
            )));
        }
        let mut hello = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "tls_required": url.tls,
            "name": "rein-log-shipper",
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "headers": true,
            "no_responders": true,
        });
        match auth {
            Some(NatsAuth::Token(t)) => hello["auth_token"] = t.as_str().into(),
            Some(NatsAuth::User { user, password }) => {
                hello["user"] = user.as_str().into();
                hello["pass"] = password.as_str().into();
            }
            None => {}
        }
        conn.out
            .extend_from_slice(format!("CONNECT {hello}\r\nPING\r\n").as_bytes());
        conn.flush()?;
        // The first PONG says the CONNECT was accepted.
        let deadline = Instant::now() + io_timeout;
        loop {
            match conn.read_op(deadline)? {
                ServerOp::Pong => break,
                ServerOp::Err(e) => return Err(ConnError::Server(e)),
                ServerOp::Ping => conn.out.extend_from_slice(b"PONG\r\n"),
                ServerOp::Info(json) => {
                    conn.info.max_payload = ServerInfo::parse(&json)?.max_payload
                }
                ServerOp::Ok => {}
                ServerOp::Msg(_) => {
                    return Err(ConnError::Handshake(
                        "a message before any subscription".into(),
                    ))
                }
            }
        }
        let sub = format!("SUB {}.* {INBOX_SID}\r\n", conn.inbox);
        conn.out.extend_from_slice(sub.as_bytes());
        conn.flush()?;
        Ok(conn)
    }

    /// What the server said of itself.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// Queues `HPUB subject <inbox>.<id>` with `headers` and `payload`; the
    /// returned id names the reply. Sent by the next [`NatsConn::flush`].
    pub fn publish(&mut self, subject: &str, headers: &[(&str, &[u8])], payload: &[u8]) -> u64 {
        let id = self.take_id();
        let reply = format!("{}.{id}", self.inbox);
        nats_proto::hpub(&mut self.out, subject, &reply, headers, payload);
        id
    }

    fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Bytes queued and not flushed yet.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Writes what was queued.
    pub fn flush(&mut self) -> Result<(), ConnError> {
        let r = self.io.write_all(&self.out).and_then(|()| self.io.flush());
        self.out.clear();
        Ok(r?)
    }

    /// The next reply on the inbox, before `deadline`. `PING` is answered,
    /// `INFO` updates `max_payload`; a `-ERR` is returned as an error (the
    /// server closes the connection after most of them).
    pub fn next_reply(&mut self, deadline: Instant) -> Result<Reply, ConnError> {
        loop {
            match self.read_op(deadline)? {
                ServerOp::Msg(msg) => {
                    let id = msg
                        .subject
                        .strip_prefix(self.inbox.as_str())
                        .and_then(|s| s.strip_prefix('.'))
                        .and_then(|s| s.parse::<u64>().ok());
                    match id {
                        Some(id) if msg.sid == INBOX_SID => return Ok(Reply { id, msg }),
                        // Not ours (no other subscription exists): ignored.
                        _ => continue,
                    }
                }
                ServerOp::Ping => {
                    self.out.extend_from_slice(b"PONG\r\n");
                    self.flush()?;
                }
                ServerOp::Info(json) => {
                    self.info.max_payload = ServerInfo::parse(&json)?.max_payload
                }
                ServerOp::Pong | ServerOp::Ok => {}
                ServerOp::Err(e) => return Err(ConnError::Server(e)),
            }
        }
    }

    /// A request (`PUB subject <inbox>.<id>`) and its reply, within the
    /// connection's timeout: the JetStream API (`$JS.API.*`).
    pub fn request(&mut self, subject: &str, payload: &[u8]) -> Result<Msg, ConnError> {
        let id = self.take_id();
        let reply = format!("{}.{id}", self.inbox);
        nats_proto::publish(&mut self.out, subject, &reply, payload);
        self.flush()?;
        let deadline = Instant::now() + self.io_timeout;
        loop {
            let r = self.next_reply(deadline)?;
            if r.id == id {
                return Ok(r.msg);
            }
        }
    }

    fn read_op(&mut self, deadline: Instant) -> Result<ServerOp, ConnError> {
        let mut r = Deadlined {
            io: &mut *self.io,
            tcp: &self.tcp,
            deadline,
            io_timeout: self.io_timeout,
        };
        Ok(self.reader.next(&mut r)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server that sends `script` once a client connects, then reads until it closes.
    fn fake_server(script: &'static [u8]) -> NatsUrl {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let _ = s.write_all(script);
                let mut sink = [0u8; 4096];
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            }
        });
        NatsUrl {
            host: "127.0.0.1".into(),
            port,
            tls: false,
        }
    }

    fn connect(url: &NatsUrl) -> Result<NatsConn, ConnError> {
        NatsConn::connect(
            url,
            Path::new("/nonexistent"),
            None,
            Duration::from_millis(500),
        )
    }

    #[test]
    fn handshake_refusals_are_classified() {
        let e = connect(&fake_server(b"HELLO\r\n")).unwrap_err();
        assert_eq!(e.refusal(), Some(Refusal::Malformed), "{e}");
        let e = connect(&fake_server(b"INFO {\"headers\":false}\r\n")).unwrap_err();
        assert!(e.to_string().contains("headers"), "{e}");
        let e = connect(&fake_server(b"INFO {\"headers\":true}\r\n")).unwrap_err();
        assert_eq!(e.refusal(), Some(Refusal::Slow), "no PONG: {e}");
        let e = connect(&fake_server(
            b"INFO {\"headers\":true}\r\n-ERR 'Authorization Violation'\r\n",
        ))
        .unwrap_err();
        assert!(
            matches!(e, ConnError::Server(ref s) if s == "Authorization Violation"),
            "{e}"
        );
        let e = connect(&fake_server(
            b"INFO {\"headers\":true,\"tls_required\":true}\r\n",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("use tls://"), "{e}");
        let c = connect(&fake_server(
            b"INFO {\"headers\":true,\"max_payload\":4096}\r\nPONG\r\nMSG other 9 1\r\nx\r\n",
        ))
        .unwrap();
        assert_eq!(c.info().max_payload, 4096);
        assert!(c.inbox.starts_with("_INBOX.") && c.inbox.len() == 7 + 32);
        assert_ne!(c.inbox, new_inbox());
    }
}
