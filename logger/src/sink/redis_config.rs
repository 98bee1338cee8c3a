//! Settings of the Redis Streams sink (module-independent, so the shipper's
//! settings parse whether or not the sink is compiled in).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SinkError;
use crate::redact::SecretUrl;

/// Settings of the Redis Streams sink (shipper keys `redis_*`).
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis_url`: `redis://host:port[/db]` or `rediss://` (TLS); shown
    /// without its password wherever it is displayed.
    pub url: SecretUrl,
    /// `redis_stream`: default stream key (default `rein-logs`).
    pub stream: String,
    /// `redis_batch_records` / `redis_batch_bytes`: records per batch from the
    /// buffer, sent as one script call (one round trip).
    pub batch_records: usize,
    /// Bytes per batch.
    pub batch_bytes: usize,
    /// `redis_dedup_ttl`: how long the marker of a stored record is kept; a
    /// resend within this window is recognised and not added again (default 1h;
    /// each marker costs ~240 bytes of Redis memory for that long).
    pub dedup_ttl: Duration,
    /// `redis_dedup_prefix`: markers are `<prefix>:<record id>` (default `rein:dedup`).
    pub dedup_prefix: String,
    /// `redis_maxlen`: `XADD ... MAXLEN ~ N` trimming of each stream (none by default).
    pub maxlen: Option<u64>,
    /// `redis_auth_file`: first line `PASSWORD` (default user) or `USER PASSWORD`
    /// (ACL user); re-read at every connection.
    pub auth_file: Option<PathBuf>,
    /// `redis_ca_file`: CAs for `rediss://` (default: the system's).
    pub ca_file: Option<PathBuf>,
    /// `redis_timeout`: connect, read and write timeout (default 10s); a
    /// whole reply must arrive within 4 times it (a trickling server is cut
    /// off). A timed-out batch is sent again, never dropped.
    pub timeout: Duration,
    /// `redis_backoff_max`: longest delay between attempts (default 30s).
    pub backoff_max: Duration,
    /// `redis_dead_letter`: records Redis can never accept.
    pub dead_letter: PathBuf,
    /// `route_failure`: what becomes of the records of a stream that refuses them for good.
    pub route_failure: super::route::RouteFailure,
}

/// Credentials read from `redis_auth_file`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisAuth {
    /// ACL user; `None` for the default user.
    pub user: Option<String>,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAuth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// An auth file whose first line holds no credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("empty first line (expected `PASSWORD` or `USER PASSWORD`)")]
pub struct EmptyAuth;

/// Parses the first line of an auth file: `PASSWORD` or `USER PASSWORD`.
pub fn parse_auth(text: &str) -> Result<RedisAuth, EmptyAuth> {
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(EmptyAuth);
    }
    Ok(match line.split_once(' ') {
        Some((user, password)) if !password.trim().is_empty() => RedisAuth {
            user: Some(user.to_string()),
            password: password.trim().to_string(),
        },
        _ => RedisAuth {
            user: None,
            password: line.to_string(),
        },
    })
}

/// Reads an auth file; the error names the setting and the file.
pub fn read_auth(path: &Path) -> Result<RedisAuth, SinkError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| SinkError::file("redis_auth_file", path, e))?;
    parse_auth(&text).map_err(|e| SinkError::file("redis_auth_file", path, e))
}

pub use rein_log_module::route::{validate_key, validate_stream};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_file_forms() {
        assert_eq!(
            parse_auth("s3cret\n").unwrap(),
            RedisAuth {
                user: None,
                password: "s3cret".into()
            }
        );
        assert_eq!(
            parse_auth("logs pass word:x\nignored").unwrap(),
            RedisAuth {
                user: Some("logs".into()),
                password: "pass word:x".into()
            }
        );
        assert!(parse_auth("\n").is_err());
        assert!(!format!("{:?}", parse_auth("u hunter2").unwrap()).contains("hunter2"));
    }

    #[test]
    fn stream_keys() {
        assert!(validate_stream("team-a:logs.v1").is_ok());
        assert!(validate_stream("").is_err());
        assert!(validate_stream("a b").is_err());
        assert!(validate_stream("logs*").is_err());
        assert!(validate_stream(&"x".repeat(129)).is_err());
    }
}
