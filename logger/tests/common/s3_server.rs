//! A real S3-compatible server: s3rver 3.7.1 (npm, pinned with integrity
//! hashes in tests/logger/s3rver/package-lock.json, installed by
//! `.ci/logger-servers.sh`), on 127.0.0.1, objects on disk in a temporary
//! directory (they survive a restart), killed on drop. It checks the access
//! key id (`S3RVER`), not the SigV4 signature.

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rein_logger::http::Url;
use rein_logger::sink::route::RouteFailure;
use rein_logger::sink::s3_config::S3Config;
use rein_logger::sink::s3_store::xml_text;
use rusty_s3::actions::ListObjectsV2;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

/// The access key id (and secret) s3rver knows.
pub const ACCESS_KEY: &str = "S3RVER";
/// The bucket the tests use (created at every start).
pub const BUCKET: &str = "logs";
/// Why a test skips.
pub const MISSING: &str = "s3rver not installed (.ci/logger-servers.sh install)";

/// `$REIN_S3RVER_BIN`, or the one `npm ci` put in tests/logger/s3rver.
pub fn s3rver_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("REIN_S3RVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/logger/s3rver/node_modules/s3rver/bin/s3rver.js")
        });
    bin.exists().then_some(bin)
}

/// A running s3rver (stopped and started again on the same port and files
/// by [`S3Server::stop`] and [`S3Server::start_again`]).
pub struct S3Server {
    child: Option<Child>,
    bin: PathBuf,
    pub port: u16,
    /// Its files (objects, uploads in progress).
    pub dir: tempfile::TempDir,
    tls: Option<(PathBuf, PathBuf)>,
}

impl S3Server {
    /// [`S3Server::start`], or a visible skip of `test` (None).
    pub fn start_or_skip(test: &str) -> Option<S3Server> {
        let s = S3Server::start(None);
        if s.is_none() {
            super::skip(test, MISSING);
        }
        s
    }

    /// Starts s3rver on a free port (with TLS: `(certificate, key)`).
    pub fn start(tls: Option<(PathBuf, PathBuf)>) -> Option<S3Server> {
        let bin = s3rver_bin()?;
        let mut s = S3Server {
            child: None,
            bin,
            port: super::free_port(),
            dir: tempfile::tempdir().ok()?,
            tls,
        };
        s.start_again();
        Some(s)
    }

    /// Starts it (again) on its port, with its files.
    pub fn start_again(&mut self) {
        let mut cmd = Command::new("node");
        cmd.arg(&self.bin)
            .arg("-d")
            .arg(self.dir.path())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["--configure-bucket", BUCKET, "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((cert, key)) = &self.tls {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        self.child = Some(cmd.spawn().expect("node runs s3rver"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3rver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills it (kill -9: an outage); its files stay.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `http://127.0.0.1:PORT` (`https` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn bucket(&self) -> Bucket {
        let url = format!("http://127.0.0.1:{}", self.port).parse().unwrap();
        Bucket::new(url, UrlStyle::Path, BUCKET, "us-east-1").unwrap()
    }

    fn get_url(&self, url: &url::Url) -> Vec<u8> {
        let mut resp = ureq::get(url.as_str()).call().unwrap();
        let mut body = Vec::new();
        resp.body_mut()
            .with_config()
            .limit(1 << 30)
            .reader()
            .read_to_end(&mut body)
            .unwrap();
        body
    }

    /// Every object: (key, ETag), listed through the S3 API (ListObjectsV2).
    pub fn list(&self) -> Vec<(String, String)> {
        let bucket = self.bucket();
        let creds = Credentials::new(ACCESS_KEY, ACCESS_KEY);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = ListObjectsV2::new(&bucket, Some(&creds));
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let url = action.sign(Duration::from_secs(60));
            // s3rver declares another XML namespace than S3's (which
            // rusty-s3's parser insists on): read the elements by name.
            let text = String::from_utf8(self.get_url(&url)).unwrap();
            for item in text.split("<Contents>").skip(1) {
                let key = xml_text(item, "Key").unwrap_or_else(|| panic!("{text:.300}"));
                let etag = xml_text(item, "ETag").unwrap_or_default();
                out.push((unescape(key), unescape(etag)));
            }
            match xml_text(&text, "NextContinuationToken") {
                Some(t) => token = Some(unescape(t)),
                None => return out,
            }
        }
    }

    /// The object `key`, downloaded (GetObject).
    pub fn get(&self, key: &str) -> Vec<u8> {
        let bucket = self.bucket();
        let creds = Credentials::new(ACCESS_KEY, ACCESS_KEY);
        let url = bucket
            .get_object(Some(&creds), key)
            .sign(Duration::from_secs(60));
        self.get_url(&url)
    }

    /// Every object, gunzipped: (key, lines).
    pub fn objects(&self) -> Vec<(String, Vec<String>)> {
        self.list()
            .into_iter()
            .map(|(k, _)| {
                let gz = self.get(&k);
                let mut text = String::new();
                flate2::read::GzDecoder::new(gz.as_slice())
                    .read_to_string(&mut text)
                    .unwrap_or_else(|e| panic!("{k}: not gzip: {e}"));
                (k, text.lines().map(str::to_owned).collect())
            })
            .collect()
    }

    /// Parts received of multipart uploads not complete yet (s3rver keeps
    /// them as `<bucket>/._S3rver_uploads/<upload id>/<part number>`): a
    /// kill can be timed on it.
    pub fn parts_in_progress(&self) -> usize {
        fn count(p: &Path) -> usize {
            std::fs::read_dir(p).map_or(0, |d| {
                d.flatten()
                    .map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if e.path().is_dir() {
                            count(&e.path())
                        } else {
                            usize::from(name.bytes().all(|b| b.is_ascii_digit()))
                        }
                    })
                    .sum()
            })
        }
        count(&self.dir.path().join(BUCKET).join("._S3rver_uploads"))
    }
}

/// XML text with its five entities replaced.
fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes a credentials file (mode 0600) with access key id `key` in `dir`.
pub fn credentials_file(dir: &Path, key: &str) -> PathBuf {
    let p = dir.join("s3.credentials");
    std::fs::write(
        &p,
        format!("access_key_id = {key}\nsecret_access_key = {ACCESS_KEY}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// The S3 sink's settings the tests start from: s3rver at `endpoint`,
/// path-style, right credentials, short waits, files in `dir`.
pub fn sink_config(endpoint: &str, dir: &Path) -> S3Config {
    S3Config {
        endpoint: Url::parse(endpoint).unwrap(),
        bucket: BUCKET.into(),
        region: "us-east-1".into(),
        path_style: true,
        credentials_file: credentials_file(dir, ACCESS_KEY),
        ca_file: "/etc/ssl/certs/ca-certificates.crt".into(),
        prefix: "rein-logs".into(),
        batch_records: 2000,
        batch_bytes: 8 << 20,
        flush_interval: Duration::from_millis(200),
        part_bytes: 5 << 20,
        gzip_level: rein_logger::sink::s3_config::DEFAULT_GZIP_LEVEL,
        timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        backoff_max: Duration::from_millis(300),
        dead_letter: dir.join("dead-letter-s3.ndjson"),
        shipped_file: dir.join("s3-shipped"),
        uploads_file: dir.join("s3-uploads"),
        route_failure: RouteFailure::DeadLetterAfterAttempts(3),
    }
}

/// The shipper settings for s3rver at `endpoint`, credentials in `dir`.
pub fn shipper_settings(endpoint: &str, dir: &Path) -> String {
    format!(
        "s3_endpoint = {endpoint}\ns3_allow_http = true\ns3_path_style = true\ns3_bucket = {BUCKET}\n\
         s3_credentials_file = {}\ns3_prefix = rein-default\ns3_backoff_max = 300ms\n",
        credentials_file(dir, ACCESS_KEY).display()
    )
}
