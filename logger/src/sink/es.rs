//! The Elasticsearch sink: `_bulk` with `create` actions and deterministic
//! ids (a resend is answered 409 and counted as a duplicate, never stored
//! twice), dated indices, gzip, basic or API-key auth read from a file, TLS
//! verified against a CA file. Only items answered 429 or 5xx are resent, with
//! backoff; other 4xx items go to the dead-letter file with their reason.
//!
//! This file holds its settings and the request it sends (index names, the
//! `_bulk` body); the answer is read in `es_answer`, the credentials in
//! `es_auth`, and the sink itself is `es_sink`.

use std::path::PathBuf;
use std::time::Duration;

use super::route::RouteFailure;
use crate::http::Url;
use crate::record::encode::push_u64_padded;
use crate::record::json::{one_line, push_str};
use crate::record::time::ymd;
use crate::walrec::WalRecord;

pub use super::deliver::ShipError;
pub use super::es_answer::{classify, ItemOutcome, Outcome};
pub use super::es_auth::{base64, Auth};
pub use super::es_sink::EsSink;

/// Settings of the Elasticsearch sink (module parameters `es_*`).
#[derive(Clone, Debug)]
pub struct EsConfig {
    /// Base URL, `http(s)://host:port[/prefix]`.
    pub url: Url,
    /// Default index pattern; `%Y`, `%m`, `%d` are replaced from the record's UTC date.
    pub index: String,
    /// Auth file (re-read before each retry after a 401/403).
    pub auth_file: Option<PathBuf>,
    /// Compress request bodies.
    pub gzip: bool,
    /// CA certificates (PEM) used to verify https servers.
    pub ca_file: PathBuf,
    /// Records per request.
    pub batch_records: usize,
    /// Bytes of documents per request.
    pub batch_bytes: usize,
    /// Connect timeout, and the longest wait for each read or write.
    pub timeout: Duration,
    /// `es_request_timeout`: the whole request, from connecting to the last
    /// byte of the answer (a server trickling its answer is cut off here).
    pub request_timeout: Duration,
    /// `es_max_response_bytes`: the largest answer body accepted.
    pub max_response_bytes: u64,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Dead-letter file.
    pub dead_letter: PathBuf,
    /// Add `?refresh=true` (tests only: makes documents searchable at once).
    pub refresh: bool,
    /// `route_failure`: what becomes of the records of an index that refuses them for good.
    pub route_failure: RouteFailure,
}

pub use rein_log_module::route::validate_index;

/// The index of a record with timestamp `ts_ms` under `pattern`.
pub fn index_name(pattern: &[u8], ts_ms: i64, out: &mut Vec<u8>) {
    let (y, m, d) = ymd(ts_ms);
    let mut i = 0;
    while i < pattern.len() {
        if pattern[i] == b'%' && i + 1 < pattern.len() {
            match pattern[i + 1] {
                b'Y' => push_u64_padded(out, y.unsigned_abs(), 4),
                b'm' => push_u64_padded(out, u64::from(m), 2),
                b'd' => push_u64_padded(out, u64::from(d), 2),
                other => out.extend_from_slice(&[b'%', other]),
            }
            i += 2;
        } else {
            out.push(pattern[i]);
            i += 1;
        }
    }
}

/// Appends the `_bulk` body for `records` (NDJSON, `create` actions).
pub fn encode_bulk(records: &[WalRecord<'_>], default_index: &str, out: &mut Vec<u8>) {
    let mut idx = Vec::with_capacity(64);
    for r in records {
        idx.clear();
        let pattern = if r.route.is_empty() {
            default_index.as_bytes()
        } else {
            r.route
        };
        index_name(pattern, r.ts_ms, &mut idx);
        out.extend_from_slice(b"{\"create\":{\"_index\":");
        push_str(out, &idx);
        out.extend_from_slice(b",\"_id\":");
        push_str(out, r.id);
        out.extend_from_slice(b"}}\n");
        // One line per document, whatever the buffer holds: the framing of
        // every other record of the request depends on it.
        out.extend_from_slice(&one_line(r.doc));
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Stream;

    #[test]
    fn index_patterns() {
        let mut o = Vec::new();
        index_name(b"logs-rein-%Y.%m.%d", 1_714_564_800_000, &mut o);
        assert_eq!(o, b"logs-rein-2024.05.01");
        assert!(validate_index("logs-%Y.%m.%d").is_ok());
        assert!(validate_index("Logs").is_err());
        assert!(validate_index("a/b").is_err());
        assert!(validate_index("_x").is_err());
        assert!(validate_index("x-%H").is_err());
    }

    #[test]
    fn bulk_body_golden() {
        let recs = [
            WalRecord {
                stream: Stream::Stdout,
                ts_ms: 1_714_564_800_000,
                id: b"abc-o-0",
                container: b"c",
                route: b"",
                doc: b"{\"message\":\"a\"}",
            },
            WalRecord {
                stream: Stream::Stderr,
                ts_ms: 1_714_651_200_000,
                id: b"abc-e-7",
                container: b"c",
                route: b"team-x-%Y",
                doc: b"{\"message\":\"b\"}",
            },
        ];
        let mut out = Vec::new();
        encode_bulk(&recs, "logs-%Y.%m.%d", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"create\":{\"_index\":\"logs-2024.05.01\",\"_id\":\"abc-o-0\"}}\n{\"message\":\"a\"}\n\
             {\"create\":{\"_index\":\"team-x-2024\",\"_id\":\"abc-e-7\"}}\n{\"message\":\"b\"}\n"
        );
    }
}
