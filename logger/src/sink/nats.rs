//! The NATS JetStream sink: each record is published to its subject (the
//! task's `log.nats_subject` or the operator's `nats_subject`) with its
//! document as payload and headers `Nats-Msg-Id: <record id>`,
//! `Rein-Container`, `Rein-Stream`; the JetStream stream taking the subject
//! acknowledges it (`PubAck`).
//!
//! No duplicates on a resend: JetStream drops a message whose `Nats-Msg-Id`
//! it stored within the stream's `duplicate_window` (default 2 minutes) and
//! answers `"duplicate": true`; a batch resent after a lost acknowledgement,
//! a timeout or a worker restart is recognised record by record as long as
//! it comes within that window. The stream is the operator's (created with
//! their tools, with the retention, limits and window they choose): the
//! shipper only publishes, so its credentials need no JetStream API rights.
//!
//! A batch is published back to back, then its acknowledgements are read
//! (one reply subject per message), all within `nats_timeout`. Per record:
//! stored or duplicate; `no responders` (no stream takes the subject), a
//! permission violation or a 4xx JetStream error are the subject's problem
//! (route policy, `route_failure`); a message over the server's
//! `max_payload` or the stream's `max_msg_size` goes to the dead-letter file
//! at once; a 5xx (a stream full, no leader) or a missing acknowledgement is
//! resent after a backoff. Subjects are independent: one failing never
//! holds another's records, every record has its own answer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backoff::Backoff;
use super::deliver::{Delivery, Sink, SinkCore};
use super::nats_conn::{ConnError, NatsConn};
use super::nats_proto::{header_block_len, header_safe, Msg};
use super::route;
use super::{SinkError, SinkStats};
use crate::http::Refusal;
use crate::walrec::WalRecord;

pub use super::nats_config::NatsConfig;

/// Queued bytes written out at once while a batch is published.
const WRITE_CHUNK: usize = 1 << 20;

/// JetStream's error code of a message over the stream's `max_msg_size`.
const JS_MESSAGE_TOO_LARGE: u64 = 10054;

/// An answer on the inbox that is not a JetStream acknowledgement the sink
/// can take.
#[derive(Debug, thiserror::Error)]
enum AckError {
    /// Not JSON.
    #[error("acknowledgement is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// JSON without a stream and a sequence (the payload's start).
    #[error("not an acknowledgement: {0:.120}")]
    NotAnAck(String),
    /// From a stream other than `nats_stream`.
    #[error("acknowledged by stream `{got}`, not `{want}`")]
    OtherStream {
        /// The stream that answered.
        got: String,
        /// `nats_stream`.
        want: String,
    },
}

/// What one acknowledgement says of its record.
fn outcome(msg: &Msg, expected_stream: Option<&str>) -> Result<Delivery, AckError> {
    if msg.status == Some(503) {
        return Ok(Delivery::RouteRefused {
            status: 503,
            reason: "no responders: no JetStream stream takes this subject".into(),
        });
    }
    if let Some(status) = msg.status {
        return Ok(Delivery::Transient {
            status,
            reason: format!("status {status} {}", msg.description),
        });
    }
    let v: serde_json::Value = serde_json::from_slice(&msg.payload)?;
    if let Some(err) = v.get("error") {
        let code = err["code"].as_u64().unwrap_or(0);
        let status = u16::try_from(code).unwrap_or(0);
        let reason = format!(
            "{} (err_code {})",
            err["description"].as_str().unwrap_or("error"),
            err["err_code"].as_u64().unwrap_or(0)
        );
        return Ok(if err["err_code"].as_u64() == Some(JS_MESSAGE_TOO_LARGE) {
            Delivery::Dead { status, reason }
        } else if (400..500).contains(&code) {
            Delivery::RouteRefused { status, reason }
        } else {
            Delivery::Transient { status, reason }
        });
    }
    let (Some(stream), Some(_seq)) = (v["stream"].as_str(), v["seq"].as_u64()) else {
        return Err(AckError::NotAnAck(
            String::from_utf8_lossy(&msg.payload).into_owned(),
        ));
    };
    if let Some(want) = expected_stream.filter(|w| *w != stream) {
        return Err(AckError::OtherStream {
            got: stream.to_owned(),
            want: want.to_owned(),
        });
    }
    Ok(if v["duplicate"].as_bool() == Some(true) {
        Delivery::Duplicate
    } else {
        Delivery::Stored
    })
}

/// The subject of a `-ERR 'Permissions Violation for Publish to "S"'`.
fn denied_subject(err: &str) -> Option<&str> {
    let rest = err.strip_prefix("Permissions Violation for Publish to ")?;
    Some(rest.trim_matches(|c| c == '"' || c == '\''))
}

/// Logs the duplicate window of `stream` (the span within which a resend is
/// recognised), asking the JetStream API once. Without the right to ask
/// (a publish-only user) the sink goes on without it; any other failure
/// leaves the connection's state unknown: an error.
fn log_window(conn: &mut NatsConn, stream: &str) -> Result<(), ConnError> {
    let answer = match conn.request(&format!("$JS.API.STREAM.INFO.{stream}"), b"") {
        Ok(m) => m,
        Err(ConnError::Server(e)) => {
            tracing::info!(
                stream,
                "nats sink: the stream's duplicate window is unknown ({e})"
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let v: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
    match v["config"]["duplicate_window"].as_u64() {
        Some(ns) => tracing::info!(
            stream,
            "nats sink: a record resent within the stream's duplicate window of {:?} is \
             recognised; one resent later (after a longer outage) is stored again",
            Duration::from_nanos(ns)
        ),
        None => tracing::warn!(
            stream,
            "nats sink: no stream information ({:.200}); does the stream exist?",
            String::from_utf8_lossy(&answer.payload)
        ),
    }
    Ok(())
}

/// The NATS JetStream sink.
pub struct NatsSink {
    cfg: NatsConfig,
    conn: Option<NatsConn>,
    /// The server of `servers` to connect to (modulo its length).
    next_server: usize,
    /// The duplicate window of `nats_stream` was looked up.
    window_logged: bool,
    core: SinkCore,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("server", self.server())
            .finish_non_exhaustive()
    }
}

impl NatsSink {
    /// Checks the settings (no connection is made yet).
    pub fn new(cfg: NatsConfig, stats: Arc<SinkStats>) -> Result<NatsSink, SinkError> {
        if cfg.servers.is_empty() {
            return Err(SinkError::Value {
                key: "nats_url",
                value: String::new(),
                reason: "no server".into(),
            });
        }
        super::nats_config::validate_subject(&cfg.subject).map_err(|e| SinkError::Value {
            key: "nats_subject",
            value: cfg.subject.clone(),
            reason: e.to_string(),
        })?;
        Ok(NatsSink {
            core: SinkCore::new(
                "nats",
                stats,
                &cfg.dead_letter,
                Backoff::new(Duration::from_millis(100), cfg.backoff_max),
                cfg.route_failure,
                (cfg.batch_records, cfg.batch_bytes),
            ),
            conn: None,
            next_server: 0,
            window_logged: false,
            cfg,
        })
    }

    /// The server connected to, or to connect to next.
    fn server(&self) -> &super::nats_config::NatsUrl {
        &self.cfg.servers[self.next_server % self.cfg.servers.len()]
    }

    fn subject_of<'r>(&'r self, r: &WalRecord<'r>) -> &'r str {
        if r.route.is_empty() {
            &self.cfg.subject
        } else {
            std::str::from_utf8(r.route).unwrap_or(&self.cfg.subject)
        }
    }

    /// The connection, made first if there is none.
    fn connection(&mut self) -> Result<&mut NatsConn, ConnError> {
        if self.conn.is_none() {
            let auth = match &self.cfg.auth_file {
                Some(path) => Some(super::nats_config::read_auth(path)?),
                None => None,
            };
            let mut c = NatsConn::connect(
                self.server(),
                &self.cfg.ca_file,
                auth.as_ref(),
                self.cfg.timeout,
            )?;
            if let Some(stream) = self.cfg.stream.as_deref().filter(|_| !self.window_logged) {
                self.window_logged = true;
                log_window(&mut c, stream)?;
            }
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Counts and logs (rate-limited) a refused answer of the server.
    fn refused(&self, e: &ConnError, records: usize) {
        if let Some(refusal) = e.refusal() {
            self.count_refusal(refusal, records, &e.to_string());
        }
    }

    fn count_refusal(&self, refusal: Refusal, records: usize, reason: &str) {
        self.core
            .stats
            .responses_refused
            .record("nats", refusal, records, reason);
    }

    /// A failure of the whole exchange: the connection is dropped (what the
    /// server sent after it is unknown) and the records without an answer
    /// are resent.
    fn failed(&mut self, e: &ConnError, unanswered: usize) {
        self.conn = None;
        self.refused(e, unanswered);
        self.core.count_failed_request();
        tracing::warn!("nats sink ({}): {e}; will resend", self.server());
    }

    /// Publishes every record that fits, then reads the acknowledgements.
    fn publish_batch(&mut self, records: &[WalRecord<'_>], out: &mut [Delivery]) {
        let max_payload = match self.connection() {
            Ok(c) => c.info().max_payload,
            Err(e) => {
                self.failed(&e, records.len());
                // The next server of the list is tried next time.
                self.next_server += 1;
                return;
            }
        };
        let expected = self.cfg.stream.clone();
        let mut waiting: HashMap<u64, usize> = HashMap::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let mut headers: Vec<(&str, &[u8])> = vec![("Nats-Msg-Id", r.id)];
            if header_safe(r.container) {
                headers.push(("Rein-Container", r.container));
            }
            headers.push(("Rein-Stream", r.stream.name().as_bytes()));
            if let Some(s) = &expected {
                headers.push(("Nats-Expected-Stream", s.as_bytes()));
            }
            if !header_safe(r.id) {
                out[i] = Delivery::Dead {
                    status: 0,
                    reason: "record id is not a header value".into(),
                };
                continue;
            }
            let size = header_block_len(&headers) + r.doc.len();
            if size as u64 > max_payload {
                out[i] = Delivery::Dead {
                    status: 0,
                    reason: format!(
                        "message of {size} bytes over the server's max_payload of {max_payload} bytes"
                    ),
                };
                continue;
            }
            let subject = self.subject_of(r).to_owned();
            let conn = self.conn.as_mut().expect("connected above");
            waiting.insert(conn.publish(&subject, &headers, r.doc), i);
            if conn.queued() >= WRITE_CHUNK {
                if let Err(e) = conn.flush() {
                    return self.failed(&e, waiting.len());
                }
            }
        }
        if waiting.is_empty() {
            return;
        }
        self.core.stats.requests.fetch_add(1, Ordering::Relaxed);
        let conn = self.conn.as_mut().expect("connected above");
        if let Err(e) = conn.flush() {
            return self.failed(&e, waiting.len());
        }
        let deadline = Instant::now() + self.cfg.timeout;
        let mut answered = 0usize;
        while !waiting.is_empty() {
            let conn = self.conn.as_mut().expect("connected above");
            match conn.next_reply(deadline) {
                Ok(reply) => {
                    let Some(i) = waiting.remove(&reply.id) else {
                        continue; // a late answer to an earlier attempt
                    };
                    answered += 1;
                    out[i] = outcome(&reply.msg, expected.as_deref()).unwrap_or_else(|e| {
                        let reason = e.to_string();
                        self.count_refusal(Refusal::Unusable, 1, &reason);
                        Delivery::Transient { status: 0, reason }
                    });
                }
                // The server stays connected after a permission violation:
                // the records of that subject are refused, the rest goes on.
                Err(ConnError::Server(e)) if denied_subject(&e).is_some() => {
                    let subject = denied_subject(&e).unwrap_or_default().to_owned();
                    waiting.retain(|_, &mut i| {
                        let denied = self.subject_of(&records[i]) == subject;
                        if denied {
                            out[i] = Delivery::RouteRefused {
                                status: 0,
                                reason: e.clone(),
                            };
                        }
                        !denied
                    });
                    answered += 1;
                }
                Err(e) => {
                    let timed_out = e.refusal() == Some(Refusal::Slow);
                    let left = waiting.len();
                    self.failed(&e, left);
                    // Others of this batch were acknowledged: these records'
                    // subjects are the slow ones (route policy).
                    if timed_out && answered > 0 {
                        for &i in waiting.values() {
                            out[i] = Delivery::Transient {
                                status: 0,
                                reason: "no acknowledgement within nats_timeout".into(),
                            };
                        }
                    }
                    return;
                }
            }
        }
    }
}

impl Sink for NatsSink {
    fn core(&self) -> &SinkCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut SinkCore {
        &mut self.core
    }

    /// A subject no task may use (a wildcard, a `$` or `_INBOX` subject,
    /// buffered before a rule existed).
    fn check_route(&self, route: &[u8]) -> Result<(), route::BadRoute> {
        route::check_nats_subject(route)
    }

    fn target(&self, r: &WalRecord<'_>) -> String {
        self.subject_of(r).to_owned()
    }

    fn send(&mut self, records: &[WalRecord<'_>]) -> Vec<Delivery> {
        let mut out = vec![Delivery::Resend; records.len()];
        self.publish_batch(records, &mut out);
        if out.iter().any(Delivery::is_failure) && self.conn.is_some() {
            self.core.count_failed_request();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(status: Option<u16>, payload: &str) -> Msg {
        Msg {
            subject: "_INBOX.x.1".into(),
            sid: 1,
            status,
            description: String::new(),
            payload: payload.as_bytes().to_vec(),
        }
    }

    #[test]
    fn acknowledgements_map_to_outcomes() {
        let o = |m: Msg| outcome(&m, None);
        assert_eq!(
            o(msg(None, r#"{"stream":"L","seq":4}"#)).unwrap(),
            Delivery::Stored
        );
        assert_eq!(
            o(msg(None, r#"{"stream":"L","seq":4,"duplicate":true}"#)).unwrap(),
            Delivery::Duplicate
        );
        assert!(matches!(
            o(msg(Some(503), "")),
            Ok(Delivery::RouteRefused { status: 503, .. })
        ));
        let err = |code, err_code| {
            format!(
                r#"{{"error":{{"code":{code},"err_code":{err_code},"description":"d"}},"stream":"L"}}"#
            )
        };
        assert!(matches!(
            o(msg(None, &err(400, 10054))),
            Ok(Delivery::Dead { status: 400, .. })
        ));
        assert!(matches!(
            o(msg(None, &err(400, 10060))),
            Ok(Delivery::RouteRefused { status: 400, .. })
        ));
        assert!(matches!(
            o(msg(None, &err(503, 10077))),
            Ok(Delivery::Transient { status: 503, .. })
        ));
        assert!(o(msg(None, "garbage")).is_err());
        assert!(o(msg(None, r#"{"seq":1}"#)).is_err());
        let want = outcome(&msg(None, r#"{"stream":"OTHER","seq":1}"#), Some("LOGS"));
        assert!(want.unwrap_err().to_string().contains("OTHER"));
    }

    #[test]
    fn permission_errors_name_their_subject() {
        assert_eq!(
            denied_subject("Permissions Violation for Publish to \"team-b.logs\""),
            Some("team-b.logs")
        );
        assert_eq!(denied_subject("Authorization Violation"), None);
    }
}
