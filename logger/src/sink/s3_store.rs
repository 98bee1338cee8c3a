//! Talking to the object store: one object stored with a `PUT`, or, above
//! the part size, with a multipart upload (create, parts, complete; aborted
//! when a step fails, and, after a crash, by the next worker: `s3_uploads`). Requests are signed (SigV4, presigned URLs) by
//! `rusty-s3`, a maintained sans-IO crate, and sent by the shipper's bounded
//! HTTP client (`crate::http`: ureq, rustls, response limits).

use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::s3_config::{read_credentials, S3Config};
use super::s3_uploads::Uploads;
use super::SinkError;
use crate::http::{Client, ClientError, HttpError, Limits, Refusal, Response, Url};

/// How long a signed request stays valid (it is sent at once; this only
/// bounds the clock skew and a slow start tolerated).
const SIGNATURE_VALIDITY: Duration = Duration::from_secs(15 * 60);

/// Largest answer accepted: S3 answers with short XML documents.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// What the store answered for one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored under its key (replacing what was there).
    Stored,
    /// No answer: the connection failed or timed out.
    NoAnswer(String),
    /// An answer the client does not accept (too large, malformed, slow...).
    Refused(Refusal, String),
    /// An error answer: status, S3 error code (empty if none) and message.
    Error {
        /// HTTP status.
        status: u16,
        /// `<Code>` of the error document.
        code: String,
        /// `<Message>`, or the start of the body.
        message: String,
    },
}

/// An object store: the seam between the sink's policy and the network.
pub trait ObjectStore: Send {
    /// Stores `body` under `key`, replacing any object there.
    fn put(&mut self, key: &str, body: &[u8]) -> PutOutcome;
    /// Reads the credentials again (after the store refused them).
    fn reload_credentials(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// The text of element `tag` in a small XML document (S3 error answers).
pub fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(&xml[start..start + len])
}

/// The outcome of an answer to a request storing data: 2xx without an
/// error document is success (S3 may answer a complete-upload with 200
/// and an `<Error>` body).
fn outcome(resp: &Response) -> PutOutcome {
    let body = String::from_utf8_lossy(&resp.body);
    let error_doc = body.contains("<Error>");
    if (200..300).contains(&resp.status) && !error_doc {
        return PutOutcome::Stored;
    }
    PutOutcome::Error {
        // An error inside a 200: a server error, resent.
        status: if error_doc && resp.status < 300 {
            500
        } else {
            resp.status
        },
        code: xml_text(&body, "Code").unwrap_or("").to_owned(),
        message: xml_text(&body, "Message")
            .map(str::to_owned)
            .unwrap_or_else(|| {
                // Not an S3 error document (a proxy's page...): its start, on one line.
                body.chars()
                    .take(200)
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect()
            }),
    }
}

/// The S3 API over HTTP(S).
pub struct S3Store {
    bucket: Bucket,
    credentials: Credentials,
    credentials_file: std::path::PathBuf,
    client: Client,
    part_bytes: usize,
    uploads: Uploads,
    /// Uploads a previous run left are aborted (before the first object).
    leftovers_aborted: bool,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket.base_url().as_str())
            .field("access_key_id", &self.credentials.key())
            .finish_non_exhaustive()
    }
}

fn credentials(path: &std::path::Path) -> Result<Credentials, SinkError> {
    let c = read_credentials(path)?;
    Ok(match c.session_token {
        Some(t) => Credentials::new_with_token(c.access_key_id, c.secret_access_key, t),
        None => Credentials::new(c.access_key_id, c.secret_access_key),
    })
}

impl S3Store {
    /// Checks the settings, reads the credentials and builds the client (no
    /// connection is made yet).
    pub fn new(cfg: &S3Config) -> Result<S3Store, SinkError> {
        let bad = |reason: String| SinkError::Value {
            key: "s3_endpoint",
            value: cfg.endpoint.base(),
            reason,
        };
        let endpoint = url::Url::parse(&cfg.endpoint.base()).map_err(|e| bad(e.to_string()))?;
        let style = if cfg.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(endpoint, style, cfg.bucket.clone(), cfg.region.clone())
            .map_err(|e| bad(format!("{e:?}")))?;
        let base = bucket.base_url();
        let server = Url {
            tls: base.scheme() == "https",
            host: base.host_str().unwrap_or_default().to_owned(),
            port: base.port_or_known_default().unwrap_or(443),
            prefix: String::new(),
        };
        let limits = Limits {
            io_timeout: cfg.timeout,
            request_timeout: cfg.request_timeout,
            max_response_bytes: MAX_ANSWER_BYTES,
            ..Limits::default()
        };
        let client = Client::new(&server, Some(&cfg.ca_file), limits).map_err(|e| match e {
            ClientError::CaFile { path, reason } => SinkError::file("s3_ca_file", &path, reason),
            e @ ClientError::NoCaFile { .. } => SinkError::Client {
                key: "s3_ca_file",
                reason: e.to_string(),
            },
        })?;
        Ok(S3Store {
            bucket,
            credentials: credentials(&cfg.credentials_file)?,
            credentials_file: cfg.credentials_file.clone(),
            client,
            part_bytes: usize::try_from(cfg.part_bytes).unwrap_or(usize::MAX),
            uploads: Uploads::load(&cfg.uploads_file),
            leftovers_aborted: false,
        })
    }

    /// Sends a signed request; `Err` carries the outcome of a request that
    /// got no usable answer.
    fn send(
        &mut self,
        method: &str,
        url: &url::Url,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, PutOutcome> {
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        self.client
            .request(method, &path, headers, body)
            .map_err(|e| match e {
                HttpError::Transport { .. } => PutOutcome::NoAnswer(e.to_string()),
                HttpError::Refused {
                    refusal, reason, ..
                } => PutOutcome::Refused(refusal, reason),
            })
    }

    fn put_single(&mut self, key: &str, body: &[u8]) -> PutOutcome {
        let url = self
            .bucket
            .put_object(Some(&self.credentials), key)
            .sign(SIGNATURE_VALIDITY);
        match self.send("PUT", &url, &[("Content-Type", "application/gzip")], body) {
            Ok(resp) => outcome(&resp),
            Err(o) => o,
        }
    }

    fn put_multipart(&mut self, key: &str, body: &[u8]) -> PutOutcome {
        let url = self
            .bucket
            .create_multipart_upload(Some(&self.credentials), key)
            .sign(SIGNATURE_VALIDITY);
        let resp = match self.send("POST", &url, &[("Content-Type", "application/gzip")], b"") {
            Ok(r) => r,
            Err(o) => return o,
        };
        if outcome(&resp) != PutOutcome::Stored {
            return outcome(&resp);
        }
        // Read without regard to the XML namespace: some S3-compatible
        // stores declare another one than S3's.
        let text = String::from_utf8_lossy(&resp.body);
        let Some(upload_id) = xml_text(&text, "UploadId").filter(|id| !id.is_empty()) else {
            return PutOutcome::Refused(
                Refusal::Unusable,
                format!(
                    "create-multipart-upload answer without an upload id: {:.200}",
                    text
                ),
            );
        };
        let upload_id = upload_id.to_owned();
        self.uploads.started(&upload_id, key);
        let result = self.upload_parts(key, &upload_id, body);
        if result == PutOutcome::Stored || self.abort(key, &upload_id) {
            self.uploads.finished(&upload_id);
        }
        result
    }

    /// Aborts the uploads a killed worker left (see `s3_uploads`); one the
    /// store does not answer for is tried again before the next object.
    fn abort_leftovers(&mut self) {
        let mut all_answered = true;
        for (id, key) in self.uploads.open() {
            if self.abort(&key, &id) {
                self.uploads.finished(&id);
            } else {
                all_answered = false;
            }
        }
        self.leftovers_aborted = all_answered;
    }

    /// The parts and the completion of upload `upload_id`.
    fn upload_parts(&mut self, key: &str, upload_id: &str, body: &[u8]) -> PutOutcome {
        let mut etags = Vec::new();
        for (i, part) in body.chunks(self.part_bytes.max(1)).enumerate() {
            let Ok(number) = u16::try_from(i + 1) else {
                return PutOutcome::Error {
                    status: 400,
                    code: "TooManyParts".into(),
                    message: "over 10000 parts".into(),
                };
            };
            crate::fault::point("s3_part");
            let url = self
                .bucket
                .upload_part(Some(&self.credentials), key, number, upload_id)
                .sign(SIGNATURE_VALIDITY);
            let resp = match self.send("PUT", &url, &[], part) {
                Ok(r) => r,
                Err(o) => return o,
            };
            match (outcome(&resp), resp.etag) {
                (PutOutcome::Stored, Some(etag)) => etags.push(etag),
                (PutOutcome::Stored, None) => {
                    return PutOutcome::Refused(
                        Refusal::Unusable,
                        format!("no ETag for part {number}"),
                    )
                }
                (o, _) => return o,
            }
        }
        let action = self.bucket.complete_multipart_upload(
            Some(&self.credentials),
            key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGNATURE_VALIDITY);
        let xml = action.body();
        match self.send(
            "POST",
            &url,
            &[("Content-Type", "application/xml")],
            xml.as_bytes(),
        ) {
            Ok(resp) => outcome(&resp),
            Err(o) => o,
        }
    }

    /// Aborts upload `upload_id` (its parts are deleted): true once the store
    /// answered (done, already gone, or refused for good: a bucket lifecycle
    /// rule removes what is left), false without an answer.
    fn abort(&mut self, key: &str, upload_id: &str) -> bool {
        let url = self
            .bucket
            .abort_multipart_upload(Some(&self.credentials), key, upload_id)
            .sign(SIGNATURE_VALIDITY);
        let (answered, result) = match self.send("DELETE", &url, &[], b"") {
            Ok(resp) if (200..300).contains(&resp.status) || resp.status == 404 => return true,
            Ok(resp) => (true, format!("{:?}", outcome(&resp))),
            Err(o) => (false, format!("{o:?}")),
        };
        tracing::warn!(
            key,
            "s3 sink: aborting an incomplete multipart upload failed ({result}); \
             a lifecycle rule (AbortIncompleteMultipartUpload) removes it"
        );
        answered
    }
}

impl ObjectStore for S3Store {
    fn put(&mut self, key: &str, body: &[u8]) -> PutOutcome {
        if !self.leftovers_aborted {
            self.abort_leftovers();
        }
        if body.len() > self.part_bytes {
            self.put_multipart(key, body)
        } else {
            self.put_single(key, body)
        }
    }

    fn reload_credentials(&mut self) -> Result<(), SinkError> {
        self.credentials = credentials(&self.credentials_file)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The presigned `PUT` of an object, as the sink signs it, has the
    /// signature botocore (the AWS SDK for Python) computes for the same
    /// request: `S3SigV4QueryAuth` with these credentials at this time.
    #[test]
    fn signatures_match_botocore() {
        let endpoint = url::Url::parse("http://127.0.0.1:45130").unwrap();
        let bucket = Bucket::new(endpoint, UrlStyle::Path, "logs", "us-east-1").unwrap();
        // AWS's documentation example credentials.
        let creds = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        let key = "rein-logs/2024/05/01/!/!/xs/08f14507b58dda1c-o-0.ndjson.gz";
        let time: jiff::Timestamp = "2026-11-30T04:06:29Z".parse().unwrap();
        let url = bucket
            .put_object(Some(&creds), key)
            .sign_with_time(SIGNATURE_VALIDITY, &time);
        assert_eq!(
            url.path(),
            "/logs/rein-logs/2024/05/01/%21/%21/xs/08f14507b58dda1c-o-0.ndjson.gz"
        );
        let signature = url
            .query_pairs()
            .find(|(k, _)| k == "X-Amz-Signature")
            .map(|(_, v)| v.into_owned());
        assert_eq!(
            signature.as_deref(),
            Some("afc09497eeb71891c08cecdc4e23b9ad6bec086296b51cb83a5549b509f41904")
        );
    }

    #[test]
    fn error_documents_and_errors_inside_a_200() {
        let r = |status, body: &str| Response {
            status,
            body: body.as_bytes().to_vec(),
            etag: None,
        };
        assert_eq!(outcome(&r(200, "")), PutOutcome::Stored);
        let denied = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        assert_eq!(
            outcome(&r(403, denied)),
            PutOutcome::Error {
                status: 403,
                code: "AccessDenied".into(),
                message: "Access Denied".into()
            }
        );
        assert!(matches!(
            outcome(&r(200, "<Error><Code>InternalError</Code></Error>")),
            PutOutcome::Error { status: 500, .. }
        ));
        assert!(matches!(
            outcome(&r(502, "bad gateway")),
            PutOutcome::Error { status: 502, ref code, ref message } if code.is_empty() && message == "bad gateway"
        ));
    }
}
