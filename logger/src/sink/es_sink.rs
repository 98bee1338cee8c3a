//! The Elasticsearch sink: one `_bulk` request per attempt (halved after a
//! 413), its answer mapped to one [`Delivery`] per record; the delivery loop
//! (`deliver`) does the rest.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::backoff::Backoff;
use super::deliver::{Delivery, Sink, SinkCore};
use super::es::{encode_bulk, index_name, validate_index, EsConfig};
use super::es_answer::{classify, ItemOutcome, Outcome};
use super::es_auth::Auth;
use super::route;
use super::{SinkError, SinkStats};
use crate::http::{Client, ClientError, HttpError, Limits, Refusal};
use crate::walrec::WalRecord;

/// The sink: one connection, one batch in flight.
pub struct EsSink {
    cfg: EsConfig,
    client: Client,
    auth: Option<String>,
    /// Records per request in this batch (halved after a 413).
    chunk: usize,
    core: SinkCore,
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
    /// Builds the sink; fails on a bad index pattern, unreadable auth or CA files.
    pub fn new(cfg: EsConfig, stats: Arc<SinkStats>) -> Result<EsSink, SinkError> {
        validate_index(&cfg.index).map_err(|e| SinkError::Value {
            key: "es_index",
            value: cfg.index.clone(),
            reason: e.to_string(),
        })?;
        let limits = Limits {
            io_timeout: cfg.timeout,
            request_timeout: cfg.request_timeout,
            max_response_bytes: cfg.max_response_bytes,
            ..Limits::default()
        };
        let client = Client::new(&cfg.url, Some(&cfg.ca_file), limits).map_err(|e| match e {
            ClientError::CaFile { path, reason } => SinkError::file("es_ca_file", &path, reason),
            e @ ClientError::NoCaFile { .. } => SinkError::Client {
                key: "es_ca_file",
                reason: e.to_string(),
            },
        })?;
        let auth = match &cfg.auth_file {
            Some(p) => Some(Auth::load(p)?.header()),
            None => None,
        };
        Ok(EsSink {
            client,
            auth,
            chunk: 1,
            core: SinkCore::new(
                "elasticsearch",
                stats,
                &cfg.dead_letter,
                Backoff::new(cfg.backoff_base, cfg.backoff_max),
                cfg.route_failure,
                (cfg.batch_records, cfg.batch_bytes),
            ),
            cfg,
        })
    }

    /// Counts and logs (rate-limited) an answer refused for a request of `records`.
    fn refused(&self, refusal: Refusal, records: usize, reason: &str) {
        self.core
            .stats
            .responses_refused
            .record("elasticsearch", refusal, records, reason);
    }

    fn reload_auth(&mut self) {
        if let Some(p) = &self.cfg.auth_file {
            match Auth::load(p) {
                Ok(a) => self.auth = Some(a.header()),
                Err(e) => tracing::error!("elasticsearch auth: {e}"),
            }
        }
    }

    /// Sends the `_bulk` request for `records`: its answer, or a refusal
    /// (counted and logged once, here) turned into a resend.
    fn request(&mut self, records: &[WalRecord<'_>]) -> (Outcome, bool) {
        let mut body = Vec::new();
        encode_bulk(records, &self.cfg.index, &mut body);
        if self.cfg.gzip {
            let mut gz = Vec::with_capacity(body.len() / 4);
            let mut enc = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
            let _ = enc.write_all(&body);
            let _ = enc.finish();
            body = gz;
        }
        let mut headers = vec![("Content-Type", "application/x-ndjson")];
        if self.cfg.gzip {
            headers.push(("Content-Encoding", "gzip"));
        }
        let auth = self.auth.clone();
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let path = if self.cfg.refresh {
            "/_bulk?refresh=true"
        } else {
            "/_bulk"
        };
        self.core.stats.requests.fetch_add(1, Ordering::Relaxed);
        let n = records.len();
        let (outcome, refusal) = match self.client.request("POST", path, &headers, &body) {
            Ok(resp) => match classify(resp.status, &resp.body, n) {
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
            self.refused(*r, n, why);
        }
        (outcome, refusal.is_some())
    }
}

impl Sink for EsSink {
    fn core(&self) -> &SinkCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut SinkCore {
        &mut self.core
    }

    fn check_route(&self, route: &[u8]) -> Result<(), route::BadRoute> {
        route::check_es_index(route)
    }

    /// The index a record goes to: its route (a pattern), or the default.
    fn target(&self, r: &WalRecord<'_>) -> String {
        let mut idx = Vec::new();
        let pattern = if r.route.is_empty() {
            self.cfg.index.as_bytes()
        } else {
            r.route
        };
        index_name(pattern, r.ts_ms, &mut idx);
        String::from_utf8_lossy(&idx).into_owned()
    }

    fn start_batch(&mut self) {
        self.chunk = usize::MAX;
    }

    fn send(&mut self, records: &[WalRecord<'_>]) -> Vec<Delivery> {
        let take = self.chunk.min(records.len()).max(1);
        let (outcome, refused) = self.request(&records[..take]);
        let mut out = match outcome {
            Outcome::RetryAll(status, reason) | Outcome::Unusable(status, reason) => {
                self.core.count_failed_request();
                if !refused {
                    tracing::warn!(
                        status,
                        items = take,
                        "elasticsearch _bulk failed, will resend: {reason}"
                    );
                }
                if status == 413 && take > 1 {
                    self.chunk = take.div_ceil(2);
                }
                if matches!(status, 401 | 403) {
                    self.reload_auth();
                }
                vec![Delivery::Resend; take]
            }
            Outcome::DeadAll(status, reason) => {
                tracing::error!(
                    status,
                    items = take,
                    "elasticsearch refused a _bulk request as a whole; its records are in the dead-letter file: {reason}"
                );
                vec![Delivery::Dead { status, reason }; take]
            }
            Outcome::Items(items) => items
                .into_iter()
                .map(|o| match o {
                    ItemOutcome::Stored => Delivery::Stored,
                    ItemOutcome::Duplicate => Delivery::Duplicate,
                    ItemOutcome::Retry(status) => Delivery::Transient {
                        status,
                        reason: format!("per-item {status}"),
                    },
                    ItemOutcome::RouteRefused(status, reason) => {
                        Delivery::RouteRefused { status, reason }
                    }
                    ItemOutcome::Dead(status, reason) => Delivery::Dead { status, reason },
                })
                .collect(),
        };
        out.resize(records.len(), Delivery::Unsent);
        out
    }
}
