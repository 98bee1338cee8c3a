//! The Redis sink's connection: a TCP or TLS (rustls) stream the sink owns,
//! with the redis crate's command encoding, script handling and reply parser
//! on top (it implements the crate's `ConnectionLike`). The crate's own
//! connection bounds neither the size of a reply nor the time it takes (its
//! parser keeps what a server sends while it announces a reply of 1 TiB, and
//! a server trickling one byte per read timeout holds it forever); here every
//! reply is read through a limit of bytes and a deadline, and a connection
//! that broke either is closed.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionInfo, ConnectionLike, RedisResult, Value};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

use super::SinkError;
use crate::http::Refusal;

/// Largest reply accepted: the script answers one short entry per record.
pub const MAX_REPLY_BYTES: u64 = 16 << 20;

/// The deadline of one reply, in units of `redis_timeout` (the longest
/// wait for each read): a batch's script runs in milliseconds in Redis.
pub const CALL_TIMEOUT_FACTOR: u32 = 4;

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Reads of one reply: at most `left` bytes, none after `deadline`.
struct Bounded<'a> {
    stream: &'a mut Stream,
    left: u64,
    deadline: Instant,
    io_timeout: Duration,
    cut: &'a mut Option<Refusal>,
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            *self.cut = Some(Refusal::TooLarge);
            return Err(io::Error::other(format!(
                "reply over {MAX_REPLY_BYTES} bytes"
            )));
        }
        let Some(rest) = self.deadline.checked_duration_since(Instant::now()) else {
            *self.cut = Some(Refusal::Slow);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "reply not complete before the deadline",
            ));
        };
        let wait = rest.min(self.io_timeout).max(Duration::from_millis(1));
        self.stream.tcp().set_read_timeout(Some(wait))?;
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.stream.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// A connection whose replies are bounded.
pub struct BoundedConn {
    stream: Stream,
    parser: redis::Parser,
    io_timeout: Duration,
    db: i64,
    open: bool,
    /// Why the last reply was cut off by a limit (not by the server).
    pub cut: Option<Refusal>,
}

/// The CA certificates a `rediss://` server is verified against.
fn tls_roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, SinkError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(ca) => {
            let bad = |e: &dyn std::fmt::Display| SinkError::file("redis_ca_file", ca, e);
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
                roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            if roots.is_empty() {
                return Err(bad(&"no CA certificate found"));
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(SinkError::Client {
                    key: "redis_ca_file",
                    reason: "unset, and the system has no CA certificate for rediss://".into(),
                });
            }
        }
    }
    Ok(roots)
}

fn io_err(e: impl std::fmt::Display) -> redis::RedisError {
    redis::RedisError::from(io::Error::other(e.to_string()))
}

impl BoundedConn {
    /// Connects to `info` (TLS verified against `ca_file`, else the system's
    /// CA certificates), then authenticates and selects the database. On
    /// failure, the error and the limit the handshake's reply broke, if any.
    pub fn connect(
        info: &ConnectionInfo,
        ca_file: Option<&Path>,
        io_timeout: Duration,
    ) -> Result<BoundedConn, (redis::RedisError, Option<Refusal>)> {
        let mut conn = Self::open(info, ca_file, io_timeout).map_err(|e| (e, None))?;
        conn.handshake(info).map_err(|e| (e, conn.cut))?;
        Ok(conn)
    }

    fn open(
        info: &ConnectionInfo,
        ca_file: Option<&Path>,
        io_timeout: Duration,
    ) -> RedisResult<BoundedConn> {
        let (host, port, tls) = match info.addr() {
            ConnectionAddr::Tcp(h, p) => (h.clone(), *p, false),
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                ..
            } => (host.clone(), *port, true),
            ConnectionAddr::TcpTls { .. } => {
                return Err(io_err(
                    "rediss:// without certificate checks is not supported",
                ))
            }
            _ => return Err(io_err("only redis:// and rediss:// are supported")),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address"));
        let mut tcp = None;
        for a in (host.as_str(), port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, io_timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or(last)?;
        tcp.set_nodelay(true)?;
        tcp.set_write_timeout(Some(io_timeout))?;
        tcp.set_read_timeout(Some(io_timeout))?;
        let stream = if tls {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(io_err)?
                .with_root_certificates(tls_roots(ca_file).map_err(io_err)?)
                .with_no_client_auth();
            let name = ServerName::try_from(host.clone()).map_err(io_err)?;
            let c = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(io_err)?;
            Stream::Tls(Box::new(rustls::StreamOwned::new(c, tcp)))
        } else {
            Stream::Plain(tcp)
        };
        Ok(BoundedConn {
            stream,
            parser: redis::Parser::new(),
            io_timeout,
            db: info.redis_settings().db(),
            open: true,
            cut: None,
        })
    }

    fn handshake(&mut self, info: &ConnectionInfo) -> RedisResult<()> {
        let r = info.redis_settings();
        if r.protocol().supports_resp3() {
            redis::cmd("HELLO").arg(3).query::<Value>(self)?;
        }
        if let Some(pw) = r.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(u) = r.username() {
                auth.arg(u);
            }
            auth.arg(pw).query::<()>(self)?;
        }
        if r.db() != 0 {
            redis::cmd("SELECT").arg(r.db()).query::<()>(self)?;
        }
        Ok(())
    }

    fn send(&mut self, cmd: &[u8]) -> RedisResult<()> {
        self.cut = None;
        if !self.open {
            return Err(io::Error::from(io::ErrorKind::NotConnected).into());
        }
        let r = self
            .stream
            .write_all(cmd)
            .and_then(|()| self.stream.flush());
        if r.is_err() {
            self.open = false;
        }
        Ok(r?)
    }

    /// One reply (push messages skipped), within the size and time limits.
    fn reply(&mut self) -> RedisResult<Value> {
        loop {
            let deadline = Instant::now() + self.io_timeout * CALL_TIMEOUT_FACTOR;
            let mut bounded = Bounded {
                stream: &mut self.stream,
                left: MAX_REPLY_BYTES,
                deadline,
                io_timeout: self.io_timeout,
                cut: &mut self.cut,
            };
            match self.parser.parse_value(&mut bounded) {
                Ok(Value::Push { .. }) => continue,
                Ok(v) => return Ok(v),
                Err(e) => {
                    // What else the server sent is unknown: never read again.
                    self.open = false;
                    return Err(e);
                }
            }
        }
    }
}

impl ConnectionLike for BoundedConn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.send(cmd)?;
        self.reply()
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.send(cmd)?;
        let mut out = Vec::with_capacity(count.min(1024));
        for i in 0..offset + count {
            let v = self.reply()?;
            if i >= offset {
                out.push(v);
            }
        }
        Ok(out)
    }

    fn get_db(&self) -> i64 {
        self.db
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        self.open
    }
}
