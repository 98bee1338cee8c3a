//! The HTTP client of the Elasticsearch sink: `ureq` (a maintained blocking
//! HTTP/1.1 client, rustls for TLS) held to limits, so that no answer of a
//! server can make the shipper allocate without bound or wait forever. Every
//! response is bounded in header size, body size and total time; one that
//! breaks a limit or the protocol is refused with a [`Refusal`] the sink
//! counts, and the request is retried like any failed one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Why an answer of the server was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Headers or body over their limit (announced or actually sent).
    TooLarge,
    /// Not HTTP: a bad status line, header, length or chunk.
    Malformed,
    /// The connection ended before the whole body arrived.
    Truncated,
    /// The answer did not arrive within the request deadline.
    Slow,
    /// Valid HTTP, but a body the sink cannot take as an answer to what it
    /// sent (not JSON, the wrong number of items...).
    Unusable,
}

impl Refusal {
    /// Every reason, in the order of the counters.
    pub const ALL: [Refusal; 5] = [
        Refusal::TooLarge,
        Refusal::Malformed,
        Refusal::Truncated,
        Refusal::Slow,
        Refusal::Unusable,
    ];

    /// The name in counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::TooLarge => "too_large",
            Refusal::Malformed => "malformed",
            Refusal::Truncated => "truncated",
            Refusal::Slow => "slow",
            Refusal::Unusable => "unusable",
        }
    }
}

/// Errors of a request; all are retried by the sinks.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No answer: connection refused or reset, TLS failure, connect timeout.
    #[error("{target}: {reason}")]
    Transport {
        /// `host:port`.
        target: String,
        /// Cause.
        reason: String,
    },
    /// The server answered something the client does not accept.
    #[error("{target}: response refused ({}): {reason}", refusal.name())]
    Refused {
        /// `host:port`.
        target: String,
        /// Class of the fault.
        refusal: Refusal,
        /// Details.
        reason: String,
    },
}

/// Why a URL is refused (the message quotes it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Neither `http://` nor `https://`.
    #[error("`{0}`: the URL must start with http:// or https://")]
    Scheme(String),
    /// A port that is not a number from 0 to 65535.
    #[error("`{url}`: bad port `{port}`")]
    Port {
        /// The URL.
        url: String,
        /// The port as written.
        port: String,
    },
    /// Nothing between the scheme and the port or path.
    #[error("`{0}`: no host")]
    NoHost(String),
}

/// Why a client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An https server without a CA file to verify it against.
    #[error("{target}: https needs a CA file")]
    NoCaFile {
        /// `host:port`.
        target: String,
    },
    /// The CA file cannot be read or holds no certificate.
    #[error("{}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
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
    pub fn parse(s: &str) -> Result<Url, UrlError> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(UrlError::Scheme(s.into()));
        };
        let (hostport, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse().map_err(|_| UrlError::Port {
                    url: s.into(),
                    port: p.into(),
                })?,
            ),
            _ => (hostport, if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(s.into()));
        }
        Ok(Url {
            tls,
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            prefix: prefix.into(),
        })
    }

    /// `host:port`, for messages.
    pub fn target(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `scheme://host:port/prefix` (IPv6 addresses in brackets).
    pub fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}{}", self.host, self.port, self.prefix)
        } else {
            format!("{scheme}://{}:{}{}", self.host, self.port, self.prefix)
        }
    }
}

/// The bounds every exchange is held to.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connecting, and each read or write: a server that stops sending.
    pub io_timeout: Duration,
    /// The whole exchange, from connecting to the last byte of the body: a
    /// server that trickles.
    pub request_timeout: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: u64,
    /// Largest status line plus headers accepted.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            io_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_header_bytes: MAX_HEADER_BYTES,
        }
    }
}

/// Default body limit: a `_bulk` answer with a long error for every item of
/// the largest batch fits many times over.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// Status line and headers: Elasticsearch sends a few hundred bytes.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// Reads the CA certificates (PEM) servers are verified against.
fn load_roots(ca_file: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, ClientError> {
    let bad = |reason: String| ClientError::CaFile {
        path: ca_file.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(ca_file).map_err(|e| bad(e.to_string()))?;
    let mut roots = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|e| bad(e.to_string()))? {
            ureq::tls::PemItem::Certificate(c) => roots.push(c),
            _ => continue,
        }
    }
    if roots.is_empty() {
        return Err(bad("no CA certificate found".into()));
    }
    Ok(roots)
}

/// A response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body, at most `max_response_bytes`.
    pub body: Vec<u8>,
    /// The `ETag` header, if any (an object store names an uploaded part by it).
    pub etag: Option<String>,
}

/// Keep-alive connections to one server.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    target: String,
    limits: Limits,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.target)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Client {
    /// A client for `url`; https servers are verified against `ca_file`.
    pub fn new(url: &Url, ca_file: Option<&Path>, limits: Limits) -> Result<Client, ClientError> {
        let mut tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()));
        if url.tls {
            let ca = ca_file.ok_or_else(|| ClientError::NoCaFile {
                target: url.target(),
            })?;
            let roots = load_roots(ca)?;
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls.build())
            // The operator names the server: no proxy from the environment, no redirects.
            .proxy(None)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("rein-log-shipper/", env!("CARGO_PKG_VERSION")))
            .max_response_header_size(limits.max_header_bytes)
            .timeout_connect(Some(limits.io_timeout))
            .timeout_per_read(Some(limits.io_timeout))
            .timeout_per_write(Some(limits.io_timeout))
            .timeout_per_call(Some(limits.request_timeout))
            .max_idle_connections_per_host(2)
            .build()
            .new_agent();
        Ok(Client {
            agent,
            base: url.base(),
            target: url.target(),
            limits,
        })
    }

    /// The limits responses are held to.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn transport(&self, reason: impl std::fmt::Display) -> HttpError {
        HttpError::Transport {
            target: self.target.clone(),
            reason: reason.to_string(),
        }
    }

    fn refused(&self, refusal: Refusal, reason: impl std::fmt::Display) -> HttpError {
        HttpError::Refused {
            target: self.target.clone(),
            refusal,
            reason: reason.to_string(),
        }
    }

    /// An error while sending or reading the status line and headers.
    fn head_error(&self, e: ureq::Error) -> HttpError {
        use ureq::Timeout as T;
        match e {
            ureq::Error::Timeout(T::Resolve | T::Connect) => self.transport(e),
            ureq::Error::Timeout(_) => self.refused(Refusal::Slow, e),
            ureq::Error::LargeResponseHeader(..)
            | ureq::Error::Protocol(ureq_proto::Error::HttpParseTooManyHeaders) => {
                self.refused(Refusal::TooLarge, e)
            }
            ureq::Error::Protocol(_) | ureq::Error::BadUri(_) | ureq::Error::Http(_) => {
                self.refused(Refusal::Malformed, e)
            }
            _ => self.transport(e),
        }
    }

    /// An error while reading the body: the server answered, then misbehaved.
    fn body_error(&self, e: ureq::Error) -> HttpError {
        match e {
            ureq::Error::Timeout(_) => self.refused(Refusal::Slow, e),
            ureq::Error::BodyExceedsLimit(_) => self.refused(
                Refusal::TooLarge,
                format!("body over {} bytes", self.limits.max_response_bytes),
            ),
            ureq::Error::Io(io) => match io.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    self.refused(Refusal::Slow, io)
                }
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                    self.refused(Refusal::Malformed, io)
                }
                _ => self.refused(Refusal::Truncated, io),
            },
            e => self.refused(Refusal::Malformed, e),
        }
    }

    /// Sends one request and reads the whole response within the limits.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let sent = if body.is_empty() && matches!(method, "GET" | "HEAD" | "DELETE") {
            req.body(())
                .map_err(|e| self.transport(e))
                .and_then(|r| self.agent.run(r).map_err(|e| self.head_error(e)))
        } else {
            req.body(body)
                .map_err(|e| self.transport(e))
                .and_then(|r| self.agent.run(r).map_err(|e| self.head_error(e)))
        };
        let mut resp = sent?;
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .body_mut()
            .with_config()
            .limit(self.limits.max_response_bytes)
            .read_to_vec()
            .map_err(|e| self.body_error(e))?;
        Ok(Response { status, body, etag })
    }
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
        assert_eq!(u.base(), "https://es.example:9243/base");
        assert_eq!(Url::parse("http://127.0.0.1").unwrap().port, 80);
        assert_eq!(
            Url::parse("http://[::1]:9200").unwrap().base(),
            "http://[::1]:9200"
        );
        assert!(Url::parse("ftp://x").is_err());
    }

    /// A server answering `answer` to one request, `gap` between its bytes.
    fn canned(answer: &'static [u8], gap: Duration) -> Url {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            if gap.is_zero() {
                let _ = s.write_all(answer);
                return;
            }
            for b in answer {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(gap);
            }
        });
        url
    }

    fn ask(url: &Url) -> Result<Response, HttpError> {
        let limits = Limits {
            io_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(1),
            max_response_bytes: 1024,
            max_header_bytes: 1024,
        };
        Client::new(url, None, limits)
            .unwrap()
            .request("POST", "/_bulk", &[], b"{}\n")
    }

    #[test]
    fn hostile_answers_are_refused_by_class() {
        let ok = ask(&canned(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            Duration::ZERO,
        ))
        .unwrap();
        assert_eq!((ok.status, ok.body.as_slice()), (200, &b"{}"[..]));
        let mut long_header = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long_header.resize(2048, b'a');
        let long_header: &'static [u8] = long_header.leak();
        let cases: [(&'static [u8], Duration, Refusal); 5] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n{",
                Duration::ZERO,
                Refusal::Truncated,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n",
                Duration::ZERO,
                Refusal::Truncated,
            ),
            (&[b'x'; 3000], Duration::ZERO, Refusal::Malformed),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
                Duration::from_millis(100),
                Refusal::Slow,
            ),
            (long_header, Duration::ZERO, Refusal::TooLarge),
        ];
        for (answer, gap, want) in cases {
            match ask(&canned(answer, gap)) {
                Err(HttpError::Refused { refusal, .. }) if refusal == want => {}
                other => panic!(
                    "{:.60}: expected {want:?}, got {other:?}",
                    String::from_utf8_lossy(answer)
                ),
            }
        }
        let mut big = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n".to_vec();
        big.resize(big.len() + 4096, b' ');
        let big: &'static [u8] = big.leak();
        assert!(matches!(
            ask(&canned(big, Duration::ZERO)),
            Err(HttpError::Refused {
                refusal: Refusal::TooLarge,
                ..
            })
        ));
    }

    #[test]
    fn https_needs_a_readable_ca_file() {
        let u = Url::parse("https://es.example:9243").unwrap();
        assert!(Client::new(&u, None, Limits::default()).is_err());
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let e = Client::new(&u, Some(&ca), Limits::default()).unwrap_err();
        assert!(matches!(e, ClientError::CaFile { .. }), "{e}");
        assert!(e.to_string().contains("no CA certificate"), "{e}");
        assert_eq!(
            Url::parse("http://h:x").unwrap_err().to_string(),
            "`http://h:x`: bad port `x`"
        );
    }
}
