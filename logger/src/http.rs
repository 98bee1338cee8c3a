//! A small blocking HTTP/1.1 client (keep-alive, Content-Length and chunked
//! responses, optional TLS with rustls) and the server-side helpers the test
//! proxy uses. Enough for `_bulk`; no redirects, no proxies.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

/// Errors of a request; all are retried by the sinks.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connection, TLS or transfer error.
    #[error("{url}: {source}")]
    Io {
        /// Target.
        url: String,
        /// Cause.
        source: io::Error,
    },
    /// Malformed response.
    #[error("{url}: bad response: {reason}")]
    Protocol {
        /// Target.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

/// A parsed `http(s)://host:port/prefix` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `true` for https.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path prefix without trailing slash ("" for none).
    pub prefix: String,
}

impl Url {
    /// Parses `http://h:p/prefix` or `https://h[:p]`.
    pub fn parse(s: &str) -> Result<Url, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!(
                "`{s}`: the URL must start with http:// or https://"
            ));
        };
        let (hostport, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse().map_err(|_| format!("`{s}`: bad port `{p}`"))?)
            }
            _ => (hostport, if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(format!("`{s}`: no host"));
        }
        Ok(Url {
            tls,
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            prefix: prefix.into(),
        })
    }
}

/// Builds a rustls client configuration that verifies servers against the
/// CA certificates in `ca_file` (PEM).
pub fn tls_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| format!("{}: {e}", ca_file.display()))?;
    for c in certs {
        let c = c.map_err(|e| format!("{}: {e}", ca_file.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CA certificate found", ca_file.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

enum Conn {
    Plain(BufReader<TcpStream>),
    Tls(Box<BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>>),
}

impl Conn {
    fn reader(&mut self) -> &mut dyn BufRead {
        match self {
            Conn::Plain(r) => r,
            Conn::Tls(r) => r.as_mut(),
        }
    }
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(r) => r.get_mut().write_all(b),
            Conn::Tls(r) => {
                let s = r.get_mut();
                s.write_all(b)?;
                s.flush()
            }
        }
    }
}

/// A response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body (decoded from chunked transfer if needed).
    pub body: Vec<u8>,
}

/// A keep-alive connection to one server.
pub struct Client {
    url: Url,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    conn: Option<Conn>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("url", &self.url).finish()
    }
}

impl Client {
    /// A client for `url`; https needs a TLS configuration.
    pub fn new(url: Url, tls: Option<Arc<rustls::ClientConfig>>, timeout: Duration) -> Self {
        Client {
            url,
            tls,
            timeout,
            conn: None,
        }
    }

    fn err(&self, source: io::Error) -> HttpError {
        HttpError::Io {
            url: format!("{}:{}", self.url.host, self.url.port),
            source,
        }
    }

    fn proto(&self, reason: impl Into<String>) -> HttpError {
        HttpError::Protocol {
            url: format!("{}:{}", self.url.host, self.url.port),
            reason: reason.into(),
        }
    }

    fn connect(&self) -> Result<Conn, HttpError> {
        let addrs = (self.url.host.as_str(), self.url.port)
            .to_socket_addrs()
            .map_err(|e| self.err(e))?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.timeout) {
                Ok(s) => {
                    s.set_read_timeout(Some(self.timeout))
                        .map_err(|e| self.err(e))?;
                    s.set_write_timeout(Some(self.timeout))
                        .map_err(|e| self.err(e))?;
                    let _ = s.set_nodelay(true);
                    if !self.url.tls {
                        return Ok(Conn::Plain(BufReader::new(s)));
                    }
                    let cfg = self
                        .tls
                        .clone()
                        .ok_or_else(|| self.proto("https without TLS settings"))?;
                    let name = ServerName::try_from(self.url.host.clone())
                        .map_err(|e| self.proto(format!("server name: {e}")))?;
                    let c = rustls::ClientConnection::new(cfg, name)
                        .map_err(|e| self.proto(format!("TLS: {e}")))?;
                    return Ok(Conn::Tls(Box::new(BufReader::new(
                        rustls::StreamOwned::new(c, s),
                    ))));
                }
                Err(e) => last = e,
            }
        }
        Err(self.err(last))
    }

    /// Sends one request and reads the response. A failure closes the
    /// connection (the next call reconnects).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let r = self.request_once(method, path, headers, body);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn request_once(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Length: {}\r\n",
            self.url.prefix,
            self.url.host,
            self.url.port,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        msg.extend_from_slice(body);
        let conn = self.conn.as_mut().expect("connected");
        if let Err(e) = conn.write_all(&msg) {
            return Err(self.err(e));
        }
        let conn = self.conn.as_mut().expect("connected");
        let (status, hdrs, body) = match read_message(conn.reader(), true) {
            Ok(Some(m)) => m,
            Ok(None) => return Err(self.err(io::ErrorKind::UnexpectedEof.into())),
            Err(e) => return Err(self.err(e)),
        };
        let status: u16 = status
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.proto(format!("status line `{status}`")))?;
        if header(&hdrs, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            self.conn = None;
        }
        Ok(Response { status, body })
    }
}

/// Value of header `name` (case-insensitive).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

type Message = (String, Vec<(String, String)>, Vec<u8>);

/// Reads one HTTP message (request or response): start line, headers and
/// body. `Ok(None)` at a clean EOF before the start line.
pub fn read_message(r: &mut dyn BufRead, is_response: bool) -> io::Result<Option<Message>> {
    let mut start = String::new();
    if r.read_line(&mut start)? == 0 {
        return Ok(None);
    }
    let start = start.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        if headers.len() > 200 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many headers",
            ));
        }
    }
    let mut body = Vec::new();
    if header(&headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut l = String::new();
            r.read_line(&mut l)?;
            let n = usize::from_str_radix(l.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if n == 0 {
                let mut crlf = String::new();
                r.read_line(&mut crlf)?;
                break;
            }
            let at = body.len();
            body.resize(at + n, 0);
            r.read_exact(&mut body[at..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(n) = header(&headers, "content-length") {
        let n: usize = n
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad length"))?;
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if is_response && !start.contains(" 204 ") && !start.contains(" 304 ") {
        r.read_to_end(&mut body)?;
    }
    Ok(Some((start, headers, body)))
}

/// Writes a response with a body (server side, for tests and tools).
pub fn write_response(w: &mut dyn Write, status: u16, reason: &str, body: &[u8]) -> io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    w.write_all(body)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("https://es.example:9243/base/").unwrap();
        assert_eq!(
            u,
            Url {
                tls: true,
                host: "es.example".into(),
                port: 9243,
                prefix: "/base".into()
            }
        );
        assert_eq!(Url::parse("http://127.0.0.1").unwrap().port, 80);
        assert!(Url::parse("ftp://x").is_err());
    }

    #[test]
    fn reads_chunked_and_length_messages() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nHTTP/1.1 429 Too Many\r\nContent-Length: 2\r\n\r\n{}";
        let mut r = io::BufReader::new(&raw[..]);
        let (s, _, b) = read_message(&mut r, true).unwrap().unwrap();
        assert_eq!(
            (s.as_str(), b.as_slice()),
            ("HTTP/1.1 200 OK", &b"hello world"[..])
        );
        let (s, _, b) = read_message(&mut r, true).unwrap().unwrap();
        assert_eq!(
            (s.as_str(), b.as_slice()),
            ("HTTP/1.1 429 Too Many", &b"{}"[..])
        );
        assert!(read_message(&mut r, true).unwrap().is_none());
    }
}
