//! Settings of the S3 sink and its credentials file (module-independent, so
//! the shipper's settings parse whether or not the sink is compiled in).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rein_core::params::{ParamError, Params};

use super::route::RouteFailure;
use super::SinkError;
use crate::http::Url;

pub use rein_log_module::route::{validate_s3_prefix, MAX_S3_PREFIX};

/// The smallest part S3 accepts in a multipart upload (all but the last).
pub const MIN_PART_BYTES: u64 = 5 << 20;

/// The largest part, and the largest object stored with one `PUT`.
pub const MAX_PART_BYTES: u64 = 5 << 30;

/// Settings of the S3 sink (shipper keys `s3_*`).
#[derive(Clone, Debug)]
pub struct S3Config {
    /// `s3_endpoint`: `https://host[:port]` of the service (`http://` only
    /// with `s3_allow_http`).
    pub endpoint: Url,
    /// `s3_bucket`: the bucket every object goes to.
    pub bucket: String,
    /// `s3_region`: the region requests are signed for (default `us-east-1`).
    pub region: String,
    /// `s3_path_style`: `endpoint/bucket/key` instead of `bucket.endpoint/key`
    /// (test servers, most S3-compatible stores; default false).
    pub path_style: bool,
    /// `s3_credentials_file`: `access_key_id = ...` and `secret_access_key =
    /// ...` lines (optionally `session_token = ...`); refused when other
    /// users may read it; read again after every 403.
    pub credentials_file: PathBuf,
    /// `s3_ca_file`: CA certificates (PEM) an https endpoint is verified
    /// against (default: the system's bundle).
    pub ca_file: PathBuf,
    /// `s3_prefix`: key prefix of containers that choose none (default `rein-logs`).
    pub prefix: String,
    /// `s3_batch_records` / `s3_batch_bytes`: records per batch read from the
    /// disk buffer; one object per prefix, day and container of a batch.
    pub batch_records: usize,
    /// Bytes of documents per batch.
    pub batch_bytes: usize,
    /// `s3_flush_interval`: longest a record waits for its batch to fill
    /// before it is uploaded (default 10s): fewer, larger objects.
    pub flush_interval: Duration,
    /// `s3_part_bytes`: objects larger than this (compressed) are sent as a
    /// multipart upload in parts of this size (default 8MiB, at least 5MiB).
    pub part_bytes: u64,
    /// `s3_gzip_level`: 1 (fastest, the default) to 9 (smallest).
    pub gzip_level: u32,
    /// `s3_timeout`: connect timeout, and the longest wait for each read or write.
    pub timeout: Duration,
    /// `s3_request_timeout`: one request (a whole object or part), from
    /// connecting to the last byte of the answer.
    pub request_timeout: Duration,
    /// `s3_backoff_max`: longest delay between attempts (default 30s).
    pub backoff_max: Duration,
    /// `s3_dead_letter`: records no object could take.
    pub dead_letter: PathBuf,
    /// Where the sink keeps what it has stored (`<state_dir>/s3-shipped`):
    /// records parsed again after a worker restart are not stored twice.
    pub shipped_file: PathBuf,
    /// Multipart uploads in progress (`<state_dir>/s3-uploads`): those a
    /// killed worker left are aborted by the next.
    pub uploads_file: PathBuf,
    /// `route_failure`: what becomes of the records of a prefix that keeps failing.
    pub route_failure: RouteFailure,
}

/// Default `s3_gzip_level`: level 1 compresses typical logs about 12:1 at
/// 150k to 200k records/s per core; level 6, 14:1 at about 40% of that.
pub const DEFAULT_GZIP_LEVEL: u32 = 1;

/// Most parts of a multipart upload.
const MAX_PARTS: u64 = 10_000;

impl S3Config {
    /// The sink's settings, if `s3_endpoint` is set; the error names the key.
    pub fn from_params(
        p: &Params,
        state_dir: &Path,
        route_failure: RouteFailure,
    ) -> Result<Option<S3Config>, ParamError> {
        let Some(raw) = p.raw("s3_endpoint") else {
            return Ok(None);
        };
        if !cfg!(feature = "s3") {
            return Err(p.error(
                "s3_endpoint",
                "this shipper was built without the s3 feature",
            ));
        }
        let endpoint = Url::parse(raw).map_err(|e| p.error("s3_endpoint", e))?;
        if !endpoint.prefix.is_empty() || raw.contains('@') || raw.contains('?') {
            return Err(p.error(
                "s3_endpoint",
                "expected scheme://host[:port] only (the bucket is s3_bucket, credentials are in s3_credentials_file)",
            ));
        }
        if !endpoint.tls && p.bool("s3_allow_http")? != Some(true) {
            return Err(p.error(
                "s3_endpoint",
                "http:// sends objects unencrypted: use https://, or set s3_allow_http = true (test servers)",
            ));
        }
        let bucket = p
            .string("s3_bucket")
            .ok_or_else(|| p.error("s3_bucket", "required with s3_endpoint"))?;
        if bucket.len() < 3
            || bucket.len() > 63
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
        {
            return Err(p.error("s3_bucket", "3 to 63 of [a-z0-9.-]"));
        }
        let credentials_file = p
            .path("s3_credentials_file")?
            .ok_or_else(|| p.error("s3_credentials_file", "required with s3_endpoint"))?;
        let prefix = p.string("s3_prefix").unwrap_or_else(|| "rein-logs".into());
        validate_s3_prefix(&prefix).map_err(|e| p.error("s3_prefix", e))?;
        let part_bytes = p.bytes("s3_part_bytes")?.unwrap_or(8 << 20);
        if !(MIN_PART_BYTES..=MAX_PART_BYTES).contains(&part_bytes) {
            return Err(p.error(
                "s3_part_bytes",
                "5MiB to 5GiB (S3's smallest part and largest single upload)",
            ));
        }
        let batch_bytes = p.bytes("s3_batch_bytes")?.unwrap_or(32 << 20).max(1024);
        if batch_bytes / part_bytes >= MAX_PARTS {
            return Err(p.error(
                "s3_batch_bytes",
                "at most 9999 times s3_part_bytes (S3 takes 10000 parts at most)",
            ));
        }
        let gzip_level = match p.u64("s3_gzip_level")? {
            None => DEFAULT_GZIP_LEVEL,
            Some(l @ 1..=9) => u32::try_from(l).unwrap_or(DEFAULT_GZIP_LEVEL),
            Some(_) => return Err(p.error("s3_gzip_level", "1 (fastest) to 9 (smallest)")),
        };
        let timeout = p.duration("s3_timeout")?.unwrap_or(Duration::from_secs(30));
        if timeout.is_zero() {
            return Err(p.error("s3_timeout", "must be more than 0s"));
        }
        let request_timeout = p
            .duration("s3_request_timeout")?
            .unwrap_or(Duration::from_secs(300));
        if request_timeout < Duration::from_secs(1) {
            return Err(p.error("s3_request_timeout", "must be at least 1s"));
        }
        let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Ok(Some(S3Config {
            endpoint,
            bucket,
            region: p.string("s3_region").unwrap_or_else(|| "us-east-1".into()),
            path_style: p.bool("s3_path_style")?.unwrap_or(false),
            credentials_file,
            ca_file: p
                .path("s3_ca_file")?
                .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into()),
            prefix,
            batch_records: to_usize(p.u64("s3_batch_records")?.unwrap_or(100_000).max(1)),
            batch_bytes: to_usize(batch_bytes),
            flush_interval: p
                .duration("s3_flush_interval")?
                .unwrap_or(Duration::from_secs(10)),
            part_bytes,
            gzip_level,
            timeout,
            request_timeout,
            backoff_max: p
                .duration("s3_backoff_max")?
                .unwrap_or(Duration::from_secs(30)),
            dead_letter: p
                .path("s3_dead_letter")?
                .unwrap_or_else(|| state_dir.join("dead-letter/s3.ndjson")),
            shipped_file: state_dir.join("s3-shipped"),
            uploads_file: state_dir.join("s3-uploads"),
            route_failure,
        }))
    }
}

/// Keys read from `s3_credentials_file`.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// `access_key_id`.
    pub access_key_id: String,
    /// `secret_access_key`.
    pub secret_access_key: String,
    /// `session_token` (temporary credentials), if any.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Why a credentials file cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// Other users may read it (the secret would not be one).
    #[error("readable by other users (mode {0:o}): chmod 600 it")]
    Exposed(u32),
    /// A line that is not `key = value` with a known key.
    #[error("line {0}: expected `access_key_id = ...`, `secret_access_key = ...` or `session_token = ...`")]
    Line(usize),
    /// A required key is missing or empty.
    #[error("no {0}")]
    Missing(&'static str),
}

/// Parses the credentials file's text (`#` comments and blank lines skipped).
pub fn parse_credentials(text: &str) -> Result<S3Credentials, CredentialsError> {
    let (mut id, mut secret, mut token) = (None, None, None);
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or(CredentialsError::Line(i + 1))?;
        let v = Some(v.trim().to_string()).filter(|v| !v.is_empty());
        match k.trim() {
            "access_key_id" => id = v,
            "secret_access_key" => secret = v,
            "session_token" => token = v,
            _ => return Err(CredentialsError::Line(i + 1)),
        }
    }
    Ok(S3Credentials {
        access_key_id: id.ok_or(CredentialsError::Missing("access_key_id"))?,
        secret_access_key: secret.ok_or(CredentialsError::Missing("secret_access_key"))?,
        session_token: token,
    })
}

/// Reads the credentials file; refuses one that other users may read. The
/// error names the setting and the file, never the secret.
pub fn read_credentials(path: &Path) -> Result<S3Credentials, SinkError> {
    let bad = |e: &dyn std::fmt::Display| SinkError::file("s3_credentials_file", path, e);
    let meta = std::fs::metadata(path).map_err(|e| bad(&e))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(bad(&CredentialsError::Exposed(mode)));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(&e))?;
    parse_credentials(&text).map_err(|e| bad(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<S3Config>, ParamError> {
        let pairs: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let p = Params::new(&pairs, crate::shipper::config::KEYS)?;
        S3Config::from_params(
            &p,
            Path::new("/s"),
            crate::sink::route::DEFAULT_ROUTE_FAILURE,
        )
    }

    #[cfg(feature = "s3")]
    #[test]
    fn settings_and_their_bounds() {
        assert!(parse("").unwrap().is_none());
        let c = parse(
            "s3_endpoint = https://s3.eu-west-1.amazonaws.com
s3_bucket = logs
s3_credentials_file = /etc/rein/s3
",
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.prefix, "rein-logs");
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.part_bytes, 8 << 20);
        assert_eq!(c.dead_letter, PathBuf::from("/s/dead-letter/s3.ndjson"));
        let ok = "s3_bucket = logs\ns3_credentials_file = /c\n";
        for (bad, key, why) in [
            (
                "s3_endpoint = http://127.0.0.1:9000\n",
                "s3_endpoint",
                "s3_allow_http",
            ),
            (
                "s3_endpoint = https://h/bucket\n",
                "s3_endpoint",
                "host[:port] only",
            ),
            (
                "s3_endpoint = https://h\ns3_part_bytes = 1MiB\n",
                "s3_part_bytes",
                "5MiB to 5GiB",
            ),
            (
                "s3_endpoint = https://h\ns3_part_bytes = 6GiB\n",
                "s3_part_bytes",
                "5MiB to 5GiB",
            ),
            (
                "s3_endpoint = https://h\ns3_gzip_level = 0\n",
                "s3_gzip_level",
                "1 (fastest)",
            ),
            (
                "s3_endpoint = https://h\ns3_prefix = a//b\n",
                "s3_prefix",
                "segment",
            ),
            (
                "s3_endpoint = https://h\ns3_batch_bytes = 60GiB\ns3_part_bytes = 5MiB\n",
                "s3_batch_bytes",
                "10000",
            ),
        ] {
            let e = parse(&format!("{bad}{ok}")).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(why), "{e}");
        }
        let e = parse("s3_endpoint = https://h\n").unwrap_err().to_string();
        assert!(e.contains("s3_bucket"), "{e}");
        let c = parse(&format!(
            "s3_endpoint = http://127.0.0.1:9000\ns3_allow_http = true\n{ok}"
        ))
        .unwrap()
        .unwrap();
        assert!(!c.endpoint.tls);
    }

    #[test]
    fn credentials_file_forms_and_permissions() {
        let c = parse_credentials(
            "# logs\naccess_key_id = AKIAEXAMPLE\nsecret_access_key = s3cr=t/x\n",
        )
        .unwrap();
        assert_eq!(c.access_key_id, "AKIAEXAMPLE");
        assert_eq!(c.secret_access_key, "s3cr=t/x");
        assert_eq!(c.session_token, None);
        assert!(!format!("{c:?}").contains("s3cr"));
        assert_eq!(
            parse_credentials("access_key_id = a\n"),
            Err(CredentialsError::Missing("secret_access_key"))
        );
        assert_eq!(
            parse_credentials("password: x\n"),
            Err(CredentialsError::Line(1))
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s3.cred");
        std::fs::write(&p, "access_key_id = a\nsecret_access_key = hunter2\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_credentials(&p).unwrap_err().to_string();
        assert!(
            e.contains("s3_credentials_file") && e.contains("readable by other users"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_credentials(&p).unwrap().secret_access_key, "hunter2");
    }
}
