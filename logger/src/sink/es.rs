//! The Elasticsearch sink: `_bulk` with `create` actions and deterministic
//! ids (a resend is answered 409 and counted as a duplicate, never stored
//! twice), dated indices, gzip, basic or API-key auth read from a file, TLS
//! verified against a CA file. Only items answered 429 or 5xx are resent, with
//! backoff; other 4xx items go to the dead-letter file with their reason.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::backoff::Backoff;
use super::deadletter::DeadLetter;
use super::route::{self, RouteFailure};
use super::SinkStats;
use crate::http::{Client, HttpError, Limits, Refusal, Url};
use crate::record::json::{one_line, push_str};
use crate::record::time::ymd;
use crate::wal::{Batch, Wal};
use crate::walrec::WalRecord;

/// Credentials read from the operator's auth file.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// `basic USER:PASSWORD`
    Basic(String),
    /// `apikey KEY` (the base64 `id:key` form ES returns as `encoded`), or `apikey ID:KEY`.
    ApiKey(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::Basic(_) => "Auth::Basic(<redacted>)",
            Auth::ApiKey(_) => "Auth::ApiKey(<redacted>)",
        })
    }
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Auth {
    /// Reads `basic USER:PASSWORD` or `apikey KEY` from the first line of `path`.
    pub fn load(path: &Path) -> Result<Auth, String> {
        let s = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let line = s.lines().next().unwrap_or("").trim();
        match line.split_once(char::is_whitespace) {
            Some(("basic", v)) if v.trim().contains(':') => Ok(Auth::Basic(v.trim().to_string())),
            Some(("apikey", v)) if !v.trim().is_empty() => Ok(Auth::ApiKey(v.trim().to_string())),
            _ => Err(format!(
                "{}: expected `basic USER:PASSWORD` or `apikey KEY` on the first line",
                path.display()
            )),
        }
    }

    /// The `Authorization` header value.
    pub fn header(&self) -> String {
        match self {
            Auth::Basic(up) => format!("Basic {}", base64(up.as_bytes())),
            Auth::ApiKey(k) if k.contains(':') => format!("ApiKey {}", base64(k.as_bytes())),
            Auth::ApiKey(k) => format!("ApiKey {k}"),
        }
    }
}

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
                b'Y' => out.extend_from_slice(format!("{y:04}").as_bytes()),
                b'm' => out.extend_from_slice(format!("{m:02}").as_bytes()),
                b'd' => out.extend_from_slice(format!("{d:02}").as_bytes()),
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

/// What became of one item of a `_bulk` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Stored (200/201).
    Stored,
    /// Already stored under the same id (409 on `create`): a resend.
    Duplicate,
    /// Resend later (429, 5xx).
    Retry(u16),
    /// The target index refuses it (a write block, a missing or closed index,
    /// no permission...): up to the route policy.
    RouteRefused(u16, String),
    /// The document itself can never be stored (mapping or parse error, too
    /// large): to the dead-letter file with this reason.
    Dead(u16, String),
}

/// What to do with a `_bulk` response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Per-item results, in request order.
    Items(Vec<ItemOutcome>),
    /// The request failed as a whole and is resent (reason for the log).
    RetryAll(u16, String),
    /// The request was refused as a whole for good (a 4xx such as 400).
    DeadAll(u16, String),
    /// A success status with a body that is no answer to the request (not
    /// JSON, items missing or extra): nothing is known stored, resend all.
    Unusable(u16, String),
}

#[derive(Deserialize)]
struct BulkResponse {
    #[serde(default)]
    errors: bool,
    items: Vec<HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

fn short(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

/// Classifies a `_bulk` response to a request of `n` items.
pub fn classify(status: u16, body: &[u8], n: usize) -> Outcome {
    match status {
        200..=299 => {}
        // 401/403: credentials or permissions; 404: wrong URL; 408/413/429/5xx: transient
        // or too large. None of these is the records' fault: keep them.
        401 | 403 | 404 | 408 | 413 | 429 | 500..=599 => {
            return Outcome::RetryAll(status, short(body));
        }
        _ => return Outcome::DeadAll(status, short(body)),
    }
    let resp: BulkResponse = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return Outcome::Unusable(status, format!("unreadable _bulk response: {e}")),
    };
    if resp.items.len() != n {
        return Outcome::Unusable(
            status,
            format!("{} items in the response for {n} sent", resp.items.len()),
        );
    }
    // Each item is `{"<action>": {...}}`: one result per record sent.
    if let Some(i) = resp.items.iter().position(|m| m.len() != 1) {
        return Outcome::Unusable(
            status,
            format!(
                "item {i} of the response has {} results",
                resp.items[i].len()
            ),
        );
    }
    if !resp.errors
        && resp
            .items
            .iter()
            .all(|i| i.values().all(|v| v.status < 300))
    {
        return Outcome::Items(vec![ItemOutcome::Stored; n]);
    }
    let items = resp
        .items
        .into_iter()
        .map(|m| {
            let Some(item) = m.into_values().next() else {
                return ItemOutcome::Retry(0);
            };
            let etype = item
                .error
                .as_ref()
                .and_then(|e| e.get("type"))
                .and_then(|t| t.as_str())
                .unwrap_or("")
                .to_string();
            let reason = |e: Option<serde_json::Value>, s: u16| {
                e.map(|e| e.to_string())
                    .unwrap_or_else(|| format!("status {s}"))
            };
            match item.status {
                200..=299 => ItemOutcome::Stored,
                409 if etype == "version_conflict_engine_exception" => ItemOutcome::Duplicate,
                429 | 500..=599 => ItemOutcome::Retry(item.status),
                // The document's own fault: the same answer from any index.
                s @ (400 | 409 | 413)
                    if !etype.starts_with("index_") && etype != "invalid_index_name_exception" =>
                {
                    ItemOutcome::Dead(s, reason(item.error, s))
                }
                // The index's: a write block (which a flood-stage watermark lifts by
                // itself, or an operator's block never does), missing, closed, forbidden.
                s => ItemOutcome::RouteRefused(s, reason(item.error, s)),
            }
        })
        .collect();
    Outcome::Items(items)
}

/// Why shipping a batch stopped before it was acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The shipper is stopping; the batch is resent after the restart.
    #[error("stopping")]
    Stopped,
}

/// The sink: one connection, one batch in flight.
pub struct EsSink {
    cfg: EsConfig,
    client: Client,
    auth: Option<String>,
    dead: DeadLetter,
    backoff: Backoff,
    /// Counters.
    pub stats: Arc<SinkStats>,
}

/// Without the `Authorization` header (it carries the credentials).
impl std::fmt::Debug for EsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EsSink")
            .field("cfg", &self.cfg)
            .field("auth", &self.auth.as_ref().map(|_| crate::redact::REDACTED))
            .finish_non_exhaustive()
    }
}

impl EsSink {
    /// Builds the sink; fails on unreadable auth or CA files.
    pub fn new(cfg: EsConfig, stats: Arc<SinkStats>) -> Result<EsSink, String> {
        validate_index(&cfg.index)?;
        let limits = Limits {
            io_timeout: cfg.timeout,
            request_timeout: cfg.request_timeout,
            max_response_bytes: cfg.max_response_bytes,
            ..Limits::default()
        };
        let client = Client::new(&cfg.url, Some(&cfg.ca_file), limits)?;
        let auth = match &cfg.auth_file {
            Some(p) => Some(Auth::load(p)?.header()),
            None => None,
        };
        Ok(EsSink {
            client,
            auth,
            dead: DeadLetter::new(&cfg.dead_letter, stats.clone()),
            backoff: Backoff::new(cfg.backoff_base, cfg.backoff_max),
            cfg,
            stats,
        })
    }

    /// Ships batches from `wal` until `stop` is set.
    pub fn run(&mut self, wal: &Wal, stop: &AtomicBool) {
        let (records, bytes) = (self.cfg.batch_records, self.cfg.batch_bytes);
        super::run_batches("elasticsearch", wal, stop, records, bytes, |batch, stop| {
            self.ship(batch, stop).is_ok()
        });
    }

    fn sleep(&self, stop: &AtomicBool, d: Duration) {
        let end = std::time::Instant::now() + d;
        while !stop.load(Ordering::Relaxed) {
            let now = std::time::Instant::now();
            if now >= end {
                return;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(50)));
        }
    }

    fn retry_wait(&mut self, stop: &AtomicBool) -> Result<(), ShipError> {
        let d = self.backoff.next_delay();
        self.sleep(stop, d);
        if stop.load(Ordering::Relaxed) {
            Err(ShipError::Stopped)
        } else {
            Ok(())
        }
    }

    /// Ships one batch until every record is stored or dead-lettered.
    pub fn ship(&mut self, batch: &Batch, stop: &AtomicBool) -> Result<(), ShipError> {
        let (all, _) = super::decode_batch(batch, "elasticsearch", &mut self.dead, &self.stats);
        let mut recs: Vec<WalRecord<'_>> = all.into_iter().flatten().collect();
        // A route no index can have (buffered before a rule existed): at once.
        recs.retain(|r| match route::check_es_index(r.route) {
            Ok(()) => true,
            Err(e) => {
                self.dead_letter(r, 0, &format!("refused route: {e}"));
                let target = String::from_utf8_lossy(r.route);
                self.stats.routes.invalid("elasticsearch", &target, &e);
                false
            }
        });
        let mut pending: Vec<usize> = (0..recs.len()).collect();
        // Indices stored while shipping this batch: evidence that an index
        // failing transiently all along is its own problem, not the cluster's.
        let mut batch_routes = route::BatchRoutes::default();
        let mut chunk = pending.len().max(1);
        let mut body = Vec::new();
        let mut gz = Vec::new();
        let mut subset = Vec::new();
        let path = if self.cfg.refresh {
            "/_bulk?refresh=true"
        } else {
            "/_bulk"
        };
        while !pending.is_empty() {
            let take = chunk.min(pending.len());
            subset.clear();
            subset.extend(pending[..take].iter().map(|&i| recs[i]));
            body.clear();
            encode_bulk(&subset, &self.cfg.index, &mut body);
            let payload: &[u8] = if self.cfg.gzip {
                gz.clear();
                let mut enc = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
                let _ = enc.write_all(&body);
                let _ = enc.finish();
                &gz
            } else {
                &body
            };
            let mut headers = vec![("Content-Type", "application/x-ndjson")];
            if self.cfg.gzip {
                headers.push(("Content-Encoding", "gzip"));
            }
            let auth = self.auth.clone();
            if let Some(a) = &auth {
                headers.push(("Authorization", a));
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            // A refused answer is counted and logged (rate-limited) once, here.
            let (outcome, refusal) = match self.client.request("POST", path, &headers, payload) {
                Ok(resp) => match classify(resp.status, &resp.body, take) {
                    Outcome::Unusable(status, reason) => (
                        Outcome::RetryAll(status, reason.clone()),
                        Some((Refusal::Unusable, reason)),
                    ),
                    o => (o, None),
                },
                Err(HttpError::Refused {
                    refusal, reason, ..
                }) => (
                    Outcome::RetryAll(0, reason.clone()),
                    Some((refusal, reason)),
                ),
                Err(e @ HttpError::Transport { .. }) => (Outcome::RetryAll(0, e.to_string()), None),
            };
            if let Some((r, why)) = &refusal {
                self.refused(*r, take, why);
            }
            match outcome {
                Outcome::RetryAll(status, reason) | Outcome::Unusable(status, reason) => {
                    self.stats.failed_requests.fetch_add(1, Ordering::Relaxed);
                    self.stats.retried.fetch_add(take as u64, Ordering::Relaxed);
                    if refusal.is_none() {
                        tracing::warn!(
                            status,
                            items = take,
                            "elasticsearch _bulk failed, will resend: {reason}"
                        );
                    }
                    if status == 413 && chunk > 1 {
                        chunk = take.div_ceil(2);
                    }
                    if matches!(status, 401 | 403) {
                        self.reload_auth();
                    }
                    self.retry_wait(stop)?;
                }
                Outcome::DeadAll(status, reason) => {
                    for r in &subset {
                        self.dead_letter(r, status, &reason);
                    }
                    tracing::error!(
                        status,
                        items = take,
                        "elasticsearch refused a _bulk request as a whole; its records are in the dead-letter file: {reason}"
                    );
                    pending.drain(..take);
                }
                Outcome::Items(items) => {
                    let mut again = Vec::new();
                    for (j, o) in items.iter().enumerate() {
                        match o {
                            ItemOutcome::Stored => {
                                self.stats.shipped.fetch_add(1, Ordering::Relaxed);
                                let idx = self.index_of(&subset[j]);
                                self.stats.routes.stored("elasticsearch", &idx);
                                batch_routes.stored(&idx);
                            }
                            ItemOutcome::Duplicate => {
                                self.stats.shipped.fetch_add(1, Ordering::Relaxed);
                                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                                batch_routes.stored(&self.index_of(&subset[j]));
                            }
                            ItemOutcome::Retry(status) => batch_routes.transient(
                                self.index_of(&subset[j]),
                                || format!("per-item {status}"),
                                (j, *status),
                            ),
                            ItemOutcome::RouteRefused(status, reason) => {
                                let idx = self.index_of(&subset[j]);
                                let policy = self.cfg.route_failure;
                                let refused = format!("{status} {reason}");
                                if self.stats.routes.refused(
                                    "elasticsearch",
                                    &idx,
                                    policy,
                                    &refused,
                                ) {
                                    self.dead_letter(&subset[j], *status, reason);
                                } else {
                                    again.push(pending[j]);
                                }
                            }
                            ItemOutcome::Dead(status, reason) => {
                                self.dead_letter(&subset[j], *status, reason);
                            }
                        }
                    }
                    // An index failing while others of the batch are stored is
                    // that index's problem (route policy); when nothing was
                    // stored, the whole destination is busy: resend everything.
                    let policy = self.cfg.route_failure;
                    let (dead, resend) =
                        batch_routes.settle(&self.stats.routes, "elasticsearch", policy);
                    for ((j, status), why) in dead {
                        self.dead_letter(&subset[j], status, &why);
                    }
                    again.extend(resend.into_iter().map(|(j, _)| pending[j]));
                    again.sort_unstable();
                    let retry = again.len();
                    again.extend_from_slice(&pending[take..]);
                    pending = again;
                    if retry > 0 {
                        self.stats
                            .retried
                            .fetch_add(retry as u64, Ordering::Relaxed);
                        tracing::warn!(
                            items = retry,
                            "elasticsearch rejected items (429/5xx or a refusing index), will resend"
                        );
                        self.retry_wait(stop)?;
                    } else {
                        self.backoff.reset();
                    }
                }
            }
        }
        while let Err(e) = self.dead.flush() {
            tracing::error!("dead-letter file {}: {e}", self.dead.path().display());
            self.retry_wait(stop)?;
        }
        Ok(())
    }

    /// Counts and logs (rate-limited) an answer refused for a request of `records`.
    fn refused(&self, refusal: Refusal, records: usize, reason: &str) {
        self.stats
            .responses_refused
            .record("elasticsearch", refusal, records, reason);
    }

    /// The index a record goes to: its route (a pattern), or the default.
    fn index_of(&self, r: &WalRecord<'_>) -> String {
        let mut idx = Vec::new();
        index_name(
            if r.route.is_empty() {
                self.cfg.index.as_bytes()
            } else {
                r.route
            },
            r.ts_ms,
            &mut idx,
        );
        String::from_utf8_lossy(&idx).into_owned()
    }

    fn dead_letter(&mut self, r: &WalRecord<'_>, status: u16, reason: &str) {
        let idx = self.index_of(r);
        self.dead.add(
            "elasticsearch",
            &idx,
            r.container,
            r.id,
            status,
            reason.as_bytes(),
            r.doc,
        );
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    fn reload_auth(&mut self) {
        if let Some(p) = &self.cfg.auth_file {
            match Auth::load(p) {
                Ok(a) => self.auth = Some(a.header()),
                Err(e) => tracing::error!("elasticsearch auth: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Stream;

    #[test]
    fn base64_and_auth() {
        assert_eq!(base64(b"elastic:changeme"), "ZWxhc3RpYzpjaGFuZ2VtZQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("auth");
        std::fs::write(&p, "basic elastic:changeme\n").unwrap();
        assert_eq!(
            Auth::load(&p).unwrap().header(),
            "Basic ZWxhc3RpYzpjaGFuZ2VtZQ=="
        );
        std::fs::write(
            &p,
            "apikey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==",
        )
        .unwrap();
        assert_eq!(
            Auth::load(&p).unwrap().header(),
            "ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
        );
        std::fs::write(&p, "password").unwrap();
        assert!(Auth::load(&p).is_err());
        assert!(!format!("{:?}", Auth::Basic("u:p".into())).contains("u:p"));
    }

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

    // Bodies as returned by Elasticsearch 8 / the ES-compatible test servers.
    const MIXED: &str = r#"{"errors":true,"took":3,"items":[
      {"create":{"_index":"logs","_id":"a","_version":1,"result":"created","status":201}},
      {"create":{"_index":"logs","_id":"b","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[b]: version conflict, document already exists (current version [1])","index":"logs"}}},
      {"create":{"_index":"logs","_id":"c","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, coordinating_operation_bytes=1048576, max_coordinating_and_primary_bytes=0]"}}},
      {"create":{"_index":"logs","_id":"d","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [pct] of type [long] in document with id 'd'. Preview of field's value: 'x'","caused_by":{"type":"illegal_argument_exception","reason":"For input string: \"x\""}}}},
      {"create":{"_index":"logs","_id":"e","status":503,"error":{"type":"unavailable_shards_exception","reason":"[logs][0] primary shard is not active Timeout: [1m]"}}},
      {"create":{"_index":"logs","_id":"f","status":403,"error":{"type":"cluster_block_exception","reason":"index [logs] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];"}}},
      {"create":{"_index":"logs","_id":"g","status":404,"error":{"type":"index_not_found_exception","reason":"no such index [logs] and [action.auto_create_index] is [false]"}}}
    ]}"#;

    #[test]
    fn classifies_real_bodies() {
        let Outcome::Items(items) = classify(200, MIXED.as_bytes(), 7) else {
            panic!()
        };
        assert_eq!(items[0], ItemOutcome::Stored);
        assert_eq!(items[1], ItemOutcome::Duplicate);
        assert_eq!(items[2], ItemOutcome::Retry(429));
        assert!(
            matches!(&items[3], ItemOutcome::Dead(400, r) if r.contains("mapper_parsing_exception"))
        );
        assert_eq!(items[4], ItemOutcome::Retry(503));
        assert!(
            matches!(&items[5], ItemOutcome::RouteRefused(403, r) if r.contains("cluster_block_exception"))
        );
        assert!(matches!(&items[6], ItemOutcome::RouteRefused(404, _)));
        let ok = r#"{"errors":false,"items":[{"create":{"status":201}},{"index":{"status":200}}]}"#;
        assert_eq!(
            classify(200, ok.as_bytes(), 2),
            Outcome::Items(vec![ItemOutcome::Stored; 2])
        );
        // Whole-request failures.
        let rejected = r#"{"error":{"root_cause":[{"type":"es_rejected_execution_exception","reason":"rejected execution"}],"type":"es_rejected_execution_exception","reason":"rejected execution"},"status":429}"#;
        assert!(matches!(
            classify(429, rejected.as_bytes(), 2),
            Outcome::RetryAll(429, _)
        ));
        assert!(matches!(classify(503, b"", 2), Outcome::RetryAll(503, _)));
        assert!(matches!(classify(413, b"", 2), Outcome::RetryAll(413, _)));
        assert!(matches!(classify(401, b"", 2), Outcome::RetryAll(401, _)));
        let bad = r#"{"error":{"type":"illegal_argument_exception","reason":"The bulk request must be terminated by a newline [\\n]"},"status":400}"#;
        assert!(matches!(
            classify(400, bad.as_bytes(), 2),
            Outcome::DeadAll(400, _)
        ));
        // A truncated or mismatched response never loses items.
        for bad in [
            &b"{\"errors\":fal"[..],
            b"\x00\xff garbage",
            b"",
            b"{\"errors\":false}",
            br#"{"errors":false,"items":[{},{}]}"#,
            br#"{"errors":false,"items":[{"create":{"status":201},"index":{"status":201}},{"create":{"status":201}}]}"#,
        ] {
            assert!(
                matches!(classify(200, bad, 2), Outcome::Unusable(200, _)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            classify(200, ok.as_bytes(), 3),
            Outcome::Unusable(..)
        ));
    }
}
