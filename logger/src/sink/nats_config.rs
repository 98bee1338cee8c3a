//! Settings of the NATS JetStream sink (shipper keys `nats_*`) and its
//! credentials file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SinkError;

pub use rein_log_module::route::validate_subject;

/// Settings of the NATS JetStream sink.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// `nats_url`: `nats://HOST:PORT` or `tls://HOST:PORT` (TLS required and
    /// verified), or several separated by commas (the servers of a cluster:
    /// after a failure the sink connects to the next). Credentials never go
    /// in the URL: `nats_auth_file`.
    pub servers: Vec<NatsUrl>,
    /// `nats_subject`: default subject (default `rein.logs`); a JetStream
    /// stream the operator created must take it.
    pub subject: String,
    /// `nats_stream`: the JetStream stream every subject must belong to
    /// (optional): sent as `Nats-Expected-Stream`, so a subject of another
    /// stream is refused, and an acknowledgement from another stream is not
    /// taken as one.
    pub stream: Option<String>,
    /// `nats_batch_records` / `nats_batch_bytes`: records per batch from the
    /// buffer, published back to back before their acknowledgements are read.
    pub batch_records: usize,
    /// Bytes per batch.
    pub batch_bytes: usize,
    /// `nats_auth_file`: first line `TOKEN` or `USER PASSWORD`; re-read at
    /// every connection; refused if other users may read it.
    pub auth_file: Option<PathBuf>,
    /// `nats_ca_file`: CAs a `tls://` server is verified against (default
    /// `/etc/ssl/certs/ca-certificates.crt`).
    pub ca_file: PathBuf,
    /// `nats_timeout`: connect, each read and write, and the wait for the
    /// acknowledgements of a batch (default 10s). Records without one are resent.
    pub timeout: Duration,
    /// `nats_backoff_max`: longest delay between attempts (default 30s).
    pub backoff_max: Duration,
    /// `nats_dead_letter`: records the stream can never accept.
    pub dead_letter: PathBuf,
    /// `route_failure`: what becomes of the records of a subject that refuses them for good.
    pub route_failure: super::route::RouteFailure,
}

/// A `nats://` or `tls://` server address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsUrl {
    /// Host name or address.
    pub host: String,
    /// Port (default 4222).
    pub port: u16,
    /// `tls://`: TLS required.
    pub tls: bool,
}

impl std::fmt::Display for NatsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "tls" } else { "nats" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// Why a `nats_url` is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NatsUrlError {
    /// Another scheme.
    #[error("expected nats://HOST:PORT or tls://HOST:PORT")]
    Scheme,
    /// `user:pass@` in the URL.
    #[error("credentials in the URL are not accepted (they would show in logs): put them in nats_auth_file")]
    Credentials,
    /// No host, a path, or a bad port.
    #[error("expected HOST or HOST:PORT after the scheme, nothing else")]
    Address,
}

impl std::str::FromStr for NatsUrl {
    type Err = NatsUrlError;
    fn from_str(s: &str) -> Result<Self, NatsUrlError> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("nats://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("tls://") {
            (true, r)
        } else {
            return Err(NatsUrlError::Scheme);
        };
        if rest.contains('@') {
            return Err(NatsUrlError::Credentials);
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| NatsUrlError::Address)?)
            }
            _ => (rest, 4222),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 || host.contains(['/', '?', '#', ' ']) {
            return Err(NatsUrlError::Address);
        }
        Ok(NatsUrl {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

/// Parses `nats_url`: one URL or several separated by commas.
pub fn parse_servers(s: &str) -> Result<Vec<NatsUrl>, NatsUrlError> {
    s.split(',').map(|u| u.trim().parse()).collect()
}

/// Credentials read from `nats_auth_file`.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// A token (`auth_token`).
    Token(String),
    /// A user and password.
    User {
        /// User.
        user: String,
        /// Password.
        password: String,
    },
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::Token(_) => f.write_str("Token(..)"),
            NatsAuth::User { user, .. } => f
                .debug_struct("User")
                .field("user", user)
                .finish_non_exhaustive(),
        }
    }
}

/// Why `nats_auth_file` cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthFileError {
    /// The first line holds nothing.
    #[error("empty first line (expected `TOKEN` or `USER PASSWORD`)")]
    Empty,
    /// Other users may read it.
    #[error("other users may read it (mode {0:o}): chmod 600 it")]
    Readable(u32),
}

/// Parses the first line of an auth file: `TOKEN` or `USER PASSWORD`.
pub fn parse_auth(text: &str) -> Result<NatsAuth, AuthFileError> {
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(AuthFileError::Empty);
    }
    Ok(match line.split_once(' ') {
        Some((user, password)) if !password.trim().is_empty() => NatsAuth::User {
            user: user.to_string(),
            password: password.trim().to_string(),
        },
        _ => NatsAuth::Token(line.to_string()),
    })
}

/// Reads an auth file, refused if other users may read it; the error names
/// the setting and the file.
pub fn read_auth(path: &Path) -> Result<NatsAuth, SinkError> {
    let bad = |e: &dyn std::fmt::Display| SinkError::file("nats_auth_file", path, e);
    let mode = std::fs::metadata(path)
        .map_err(|e| bad(&e))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o007 != 0 {
        return Err(bad(&AuthFileError::Readable(mode)));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(&e))?;
    parse_auth(&text).map_err(|e| bad(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u: NatsUrl = "nats://127.0.0.1:4333".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("127.0.0.1", 4333, false));
        let u: NatsUrl = "tls://nats.example".parse().unwrap();
        assert_eq!((u.port, u.tls), (4222, true));
        assert_eq!(u.to_string(), "tls://nats.example:4222");
        let u: NatsUrl = "nats://[::1]:5".parse().unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!("http://x".parse::<NatsUrl>(), Err(NatsUrlError::Scheme));
        assert_eq!(
            "nats://u:p@x:1".parse::<NatsUrl>(),
            Err(NatsUrlError::Credentials)
        );
        let list = parse_servers("nats://a:1, tls://b:2").unwrap();
        assert_eq!(
            list.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["nats://a:1", "tls://b:2"]
        );
        assert_eq!(parse_servers("nats://a:1,"), Err(NatsUrlError::Scheme));
        for bad in ["nats://", "nats://x:0", "nats://x:port", "nats://x/path"] {
            assert_eq!(bad.parse::<NatsUrl>(), Err(NatsUrlError::Address), "{bad}");
        }
    }

    #[test]
    fn auth_file_forms_and_mode() {
        assert_eq!(parse_auth("tok3n\n"), Ok(NatsAuth::Token("tok3n".into())));
        assert_eq!(
            parse_auth("logs pass word\nignored"),
            Ok(NatsAuth::User {
                user: "logs".into(),
                password: "pass word".into()
            })
        );
        assert_eq!(parse_auth(" \n"), Err(AuthFileError::Empty));
        assert!(!format!("{:?}", parse_auth("u hunter2").unwrap()).contains("hunter2"));
        assert!(!format!("{:?}", parse_auth("hunter2").unwrap()).contains("hunter2"));
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("auth");
        std::fs::write(&f, "u p\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_auth(&f).unwrap_err().to_string();
        assert!(e.contains("nats_auth_file") && e.contains("644"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_auth(&f).is_ok());
    }
}
