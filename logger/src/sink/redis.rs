//! The Redis Streams sink: each record is appended with `XADD` to its stream
//! (the task's `log.redis_stream` or the operator's `redis_stream`), fields
//! `id`, `container`, `stream`, `doc`.
//!
//! No duplicates on a resend: one Lua script per batch (one round trip)
//! adds a record only if its marker `<prefix>:<record id>` is absent and
//! then sets the marker with a TTL; a script runs atomically, so a batch
//! resent after a lost reply, a timeout or a worker restart is recognised
//! record by record. The script stops at the first error that retrying may
//! cure (OOM, a failover's READONLY...), so the records after it are resent
//! in order; `WRONGTYPE` or `NOPERM` on a stream key can never succeed: the
//! script goes on, and the stream's records are handled by the route policy
//! (`route_failure`). One call per stream of a batch: Redis checks the ACL of
//! every key of a script call before running it, so a stream outside the ACL
//! fails its own call only. Nothing is given up by
//! timeout: until every record of a batch is stored or dead-lettered the
//! batch stays in the disk buffer and is sent again after a backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo, Script, Value};

use super::backoff::Backoff;
use super::deliver::{Delivery, Sink, SinkCore};
use super::redis_conn::BoundedConn;
use super::route;
use super::{SinkError, SinkStats};
use crate::http::Refusal;
use crate::redact;
use crate::walrec::WalRecord;

use super::redis_config::read_auth;
pub use super::redis_config::RedisConfig;

/// KEYS: per record its marker and its stream key. ARGV: ttl seconds, maxlen
/// (0: no trimming), then per record id, container, stream name, document.
/// Returns one entry per record handled: 1 added, 0 already there, or the
/// error text; it stops after the first error other than WRONGTYPE and
/// NOPERM (the stream's own, permanent).
const SCRIPT: &str = r"
local ttl = ARGV[1]
local maxlen = tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS / 2 do
  local marker, key = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 2 + 4 * (i - 1)
  if redis.call('EXISTS', marker) == 1 then
    out[i] = 0
  else
    local r
    if maxlen > 0 then
      r = redis.pcall('XADD', key, 'MAXLEN', '~', maxlen, '*',
        'id', ARGV[a + 1], 'container', ARGV[a + 2], 'stream', ARGV[a + 3], 'doc', ARGV[a + 4])
    else
      r = redis.pcall('XADD', key, '*',
        'id', ARGV[a + 1], 'container', ARGV[a + 2], 'stream', ARGV[a + 3], 'doc', ARGV[a + 4])
    end
    if type(r) == 'table' and r.err then
      out[i] = r.err
      if string.sub(r.err, 1, 9) ~= 'WRONGTYPE' and string.sub(r.err, 1, 6) ~= 'NOPERM' then
        return out
      end
    else
      redis.call('SET', marker, r, 'EX', ttl)
      out[i] = 1
    end
  end
end
return out
";

/// What Redis answered for one record.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Added,
    Duplicate,
    /// Its stream refuses it for good (the reason): up to the route policy.
    Refused(String),
    /// Refused for now (the reason); resent after a backoff.
    Later(String),
    /// Not handled (the script stopped before it).
    NotReached,
}

/// Errors a stream answers the same way forever: a key of another type, a
/// key outside the shipper's ACL.
/// Why a script call gave no answer for its records.
#[derive(Debug, thiserror::Error)]
enum CallError {
    /// Connecting, or the call itself, failed (the client's words).
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// The credentials file could not be read.
    #[error(transparent)]
    Auth(#[from] SinkError),
    /// The server answered something other than the script's array.
    #[error("not an answer to the script: {0:.200}")]
    NotAnAnswer(String),
    /// The server refused the call for its stream (WRONGTYPE, NOPERM): the code
    /// first, so that [`route_refusal`] recognises it.
    #[error("{code} {error}")]
    Refused {
        /// The server's error code.
        code: String,
        /// The whole error.
        error: redis::RedisError,
    },
}

fn route_refusal(reason: &str) -> bool {
    reason.starts_with("WRONGTYPE") || reason.starts_with("NOPERM")
}

/// The class of an error that is the server's answer misbehaving (not a
/// connection that could not be made, not an error reply).
fn refusal_of(e: &redis::RedisError) -> Option<Refusal> {
    if e.is_timeout() {
        return Some(Refusal::Slow);
    }
    match e.kind() {
        redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => {
            Some(Refusal::Malformed)
        }
        // Cut off mid-answer (refused connections are no answer at all).
        redis::ErrorKind::Io if e.is_connection_dropped() && !e.is_connection_refusal() => {
            Some(Refusal::Truncated)
        }
        _ => None,
    }
}

/// Maps the script's answer to one outcome per record.
fn outcomes(v: &Value, n: usize) -> Vec<Outcome> {
    let items: &[Value] = match v {
        Value::Array(a) => a,
        _ => &[],
    };
    let mut out: Vec<Outcome> = items
        .iter()
        .take(n)
        .map(|x| match x {
            Value::Int(1) => Outcome::Added,
            Value::Int(0) => Outcome::Duplicate,
            Value::BulkString(b) => {
                let reason = String::from_utf8_lossy(b).into_owned();
                if route_refusal(&reason) {
                    Outcome::Refused(reason)
                } else {
                    Outcome::Later(reason)
                }
            }
            other => Outcome::Later(format!("unexpected answer {other:?}")),
        })
        .collect();
    out.resize_with(n, || Outcome::NotReached);
    out
}

/// The Redis Streams sink.
pub struct RedisSink {
    cfg: RedisConfig,
    script: Script,
    conn: Option<BoundedConn>,
    core: SinkCore,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink")
            .field("url", &self.cfg.url)
            .finish_non_exhaustive()
    }
}

impl RedisSink {
    /// Checks the settings (no connection is made yet).
    pub fn new(cfg: RedisConfig, stats: Arc<SinkStats>) -> Result<RedisSink, SinkError> {
        let bad = |reason: String| SinkError::Value {
            key: "redis_url",
            value: cfg.url.to_string(),
            reason,
        };
        let info = cfg
            .url
            .expose()
            .into_connection_info()
            .map_err(|e| bad(redact::scrub(&e.to_string(), &cfg.url.secrets())))?;
        if matches!(info.addr(), ConnectionAddr::Unix(_)) {
            return Err(bad("only redis:// and rediss:// are supported".into()));
        }
        if matches!(info.addr(), ConnectionAddr::TcpTls { insecure: true, .. }) {
            return Err(bad(
                "certificate checks cannot be turned off (#insecure); set redis_ca_file".into(),
            ));
        }
        Ok(RedisSink {
            core: SinkCore::new(
                "redis",
                stats,
                &cfg.dead_letter,
                Backoff::new(Duration::from_millis(100), cfg.backoff_max),
                cfg.route_failure,
                (cfg.batch_records, cfg.batch_bytes),
            ),
            script: Script::new(SCRIPT),
            conn: None,
            cfg,
        })
    }

    /// A new connection with the current credentials and timeouts, for a
    /// call of `records`.
    fn connect(&self, records: usize) -> Result<BoundedConn, CallError> {
        let mut info = self.cfg.url.expose().into_connection_info()?;
        if let Some(path) = &self.cfg.auth_file {
            let auth = read_auth(path)?;
            let mut r = info.redis_settings().clone().set_password(&auth.password);
            if let Some(u) = &auth.user {
                r = r.set_username(u);
            }
            info = info.set_redis_settings(r);
        }
        // The handshake (AUTH, SELECT) reads answers too.
        BoundedConn::connect(&info, self.cfg.ca_file.as_deref(), self.cfg.timeout).map_err(
            |(e, cut)| {
                if let Some(refusal) = cut.or_else(|| refusal_of(&e)) {
                    self.refused(refusal, records, &e.to_string());
                }
                CallError::Redis(e)
            },
        )
    }

    /// One script call for the records of one stream: their outcomes.
    fn send_stream(&mut self, records: &[&WalRecord<'_>], ttl: u64, maxlen: u64) -> Vec<Delivery> {
        let answer = match self.call(records, ttl, maxlen) {
            Ok(v) => v,
            // The whole call was refused for its stream (ACL on a key).
            Err(e) if route_refusal(&e.to_string()) => {
                Value::Array(vec![
                    Value::BulkString(e.to_string().into_bytes());
                    records.len()
                ])
            }
            Err(e) => {
                let e = redact::scrub(&e.to_string(), &self.cfg.url.secrets());
                tracing::warn!("redis sink ({}): {e}; will resend", self.cfg.url);
                self.core.count_failed_request();
                return vec![Delivery::Resend; records.len()];
            }
        };
        let out: Vec<Delivery> = outcomes(&answer, records.len())
            .into_iter()
            .map(|o| match o {
                Outcome::Added => Delivery::Stored,
                Outcome::Duplicate => Delivery::Duplicate,
                Outcome::Refused(reason) => Delivery::RouteRefused { status: 0, reason },
                Outcome::Later(reason) => Delivery::Transient { status: 0, reason },
                Outcome::NotReached => Delivery::Resend,
            })
            .collect();
        // The script stopped at an error retrying may cure: a failed call.
        if out.iter().any(Delivery::is_failure) {
            self.core.count_failed_request();
        }
        out
    }

    /// One script call for `records` (connecting first if needed).
    /// A transport error drops the connection: its state is unknown.
    fn call(
        &mut self,
        records: &[&WalRecord<'_>],
        ttl: u64,
        maxlen: u64,
    ) -> Result<Value, CallError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect(records.len())?);
        }
        let mut call = self.script.prepare_invoke();
        call.arg(ttl).arg(maxlen);
        for r in records {
            let mut marker = Vec::with_capacity(self.cfg.dedup_prefix.len() + 1 + r.id.len());
            marker.extend_from_slice(self.cfg.dedup_prefix.as_bytes());
            marker.push(b':');
            marker.extend_from_slice(r.id);
            call.key(marker)
                .key(self.stream_of(r).as_bytes())
                .arg(r.id)
                .arg(r.container)
                .arg(r.stream.name())
                .arg(r.doc);
        }
        self.core.stats.requests.fetch_add(1, Ordering::Relaxed);
        let conn = self.conn.as_mut().expect("connected above");
        match call.invoke::<Value>(conn) {
            // One entry per record handled, never more.
            Ok(Value::Array(a)) if a.len() <= records.len() => Ok(Value::Array(a)),
            Ok(v) => {
                // Not an answer to this call: what else the server sent is unknown.
                self.conn = None;
                let why = CallError::NotAnAnswer(format!("{v:?}"));
                self.refused(Refusal::Unusable, records.len(), &why.to_string());
                Err(why)
            }
            Err(e) => {
                // A limit of the connection, or what the error says.
                let refusal = conn.cut.or_else(|| refusal_of(&e));
                // Only an error reply of the server leaves the connection in
                // step; after anything else (garbage, a cut or late answer)
                // the next reply read could belong to this call.
                if e.code().is_none() {
                    self.conn = None;
                }
                if let Some(refusal) = refusal {
                    self.refused(refusal, records.len(), &e.to_string());
                }
                // The code first, so that `route_refusal` recognises it.
                match e.code() {
                    Some(code) if route_refusal(code) => Err(CallError::Refused {
                        code: code.to_owned(),
                        error: e,
                    }),
                    _ => Err(CallError::Redis(e)),
                }
            }
        }
    }

    /// Counts and logs (rate-limited) an answer refused for a call of `records`.
    fn refused(&self, refusal: Refusal, records: usize, reason: &str) {
        let reason = redact::scrub(reason, &self.cfg.url.secrets());
        self.core
            .stats
            .responses_refused
            .record("redis", refusal, records, &reason);
    }

    fn stream_of<'r>(&'r self, r: &WalRecord<'r>) -> &'r str {
        if r.route.is_empty() {
            &self.cfg.stream
        } else {
            std::str::from_utf8(r.route).unwrap_or(&self.cfg.stream)
        }
    }
}

impl Sink for RedisSink {
    fn core(&self) -> &SinkCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut SinkCore {
        &mut self.core
    }

    /// A stream no task may use (the shipper's own namespace, buffered
    /// before a rule existed).
    fn check_route(&self, route: &[u8]) -> Result<(), route::BadRoute> {
        route::check_redis_stream(route, &self.cfg.dedup_prefix)
    }

    fn target(&self, r: &WalRecord<'_>) -> String {
        if r.route.is_empty() {
            self.cfg.stream.clone()
        } else {
            String::from_utf8_lossy(r.route).into_owned()
        }
    }

    /// One script call per stream, in order of first appearance.
    fn send(&mut self, records: &[WalRecord<'_>]) -> Vec<Delivery> {
        let ttl = self.cfg.dedup_ttl.as_secs().max(1);
        let maxlen = self.cfg.maxlen.unwrap_or(0);
        let mut streams: Vec<String> = Vec::new();
        for r in records {
            let st = self.stream_of(r);
            if !streams.iter().any(|s| s == st) {
                streams.push(st.to_string());
            }
        }
        let mut out = vec![Delivery::Resend; records.len()];
        for stream in &streams {
            let group: Vec<usize> = (0..records.len())
                .filter(|&i| self.stream_of(&records[i]) == stream)
                .collect();
            let recs: Vec<&WalRecord<'_>> = group.iter().map(|&i| &records[i]).collect();
            for (&i, d) in group.iter().zip(self.send_stream(&recs, ttl, maxlen)) {
                out[i] = d;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_outcomes() {
        let v = Value::Array(vec![
            Value::Int(1),
            Value::Int(0),
            Value::BulkString(b"WRONGTYPE Operation against a key".to_vec()),
            Value::BulkString(b"OOM command not allowed".to_vec()),
        ]);
        let o = outcomes(&v, 5);
        assert_eq!(o[0], Outcome::Added);
        assert_eq!(o[1], Outcome::Duplicate);
        assert!(matches!(&o[2], Outcome::Refused(r) if r.starts_with("WRONGTYPE")));
        assert!(matches!(&o[3], Outcome::Later(r) if r.starts_with("OOM")));
        assert_eq!(o[4], Outcome::NotReached);
        assert!(outcomes(&Value::Nil, 2)
            .iter()
            .all(|o| *o == Outcome::NotReached));
    }
}
