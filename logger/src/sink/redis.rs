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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, IntoConnectionInfo, Script, Value};

use super::backoff::Backoff;
use super::deadletter::DeadLetter;
use super::redis_conn::BoundedConn;
use super::route;
use super::SinkStats;
use crate::http::Refusal;
use crate::redact;
use crate::wal::{Batch, Wal};
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
    dead: DeadLetter,
    backoff: Backoff,
    /// Counters.
    pub stats: Arc<SinkStats>,
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
    pub fn new(cfg: RedisConfig, stats: Arc<SinkStats>) -> Result<RedisSink, String> {
        let info = cfg.url.expose().into_connection_info().map_err(|e| {
            let e = redact::scrub(&e.to_string(), &cfg.url.secrets());
            format!("redis_url `{}`: {e}", cfg.url)
        })?;
        if matches!(info.addr(), ConnectionAddr::Unix(_)) {
            return Err(format!(
                "redis_url `{}`: only redis:// and rediss:// are supported",
                cfg.url
            ));
        }
        if matches!(info.addr(), ConnectionAddr::TcpTls { insecure: true, .. }) {
            return Err(format!(
                "redis_url `{}`: certificate checks cannot be turned off (#insecure); set redis_ca_file",
                cfg.url
            ));
        }
        Ok(RedisSink {
            dead: DeadLetter::new(&cfg.dead_letter, stats.clone()),
            backoff: Backoff::new(Duration::from_millis(100), cfg.backoff_max),
            script: Script::new(SCRIPT),
            conn: None,
            cfg,
            stats,
        })
    }

    /// A new connection with the current credentials and timeouts, for a
    /// call of `records`.
    fn connect(&self, records: usize) -> Result<BoundedConn, String> {
        let mut info = self
            .cfg
            .url
            .expose()
            .into_connection_info()
            .map_err(|e| e.to_string())?;
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
                e.to_string()
            },
        )
    }

    /// Ships batches from `wal` until `stop` is set.
    pub fn run(&mut self, wal: &Wal, stop: &AtomicBool) {
        let (records, bytes) = (self.cfg.batch_records, self.cfg.batch_bytes);
        super::run_batches("redis", wal, stop, records, bytes, |batch, stop| {
            self.ship(batch, stop)
        });
    }

    /// Sends one batch until every record is stored (or was already) or
    /// dead-lettered; false if stopped first (the batch is then sent again
    /// after a restart, and recognised).
    pub fn ship(&mut self, batch: &Batch, stop: &AtomicBool) -> bool {
        let (recs, mut pending) = super::decode_batch(batch, "redis", &mut self.dead, &self.stats);
        let ttl = self.cfg.dedup_ttl.as_secs().max(1);
        let maxlen = self.cfg.maxlen.unwrap_or(0);
        // A stream no task may use (the shipper's own namespace, buffered before
        // a rule existed): to the dead-letter file at once.
        pending.retain(|&i| {
            let Some(r) = recs[i] else { return false };
            match route::check_redis_stream(r.route, &self.cfg.dedup_prefix) {
                Ok(()) => true,
                Err(e) => {
                    let target = String::from_utf8_lossy(r.route).into_owned();
                    let why = format!("refused route: {e}");
                    self.dead.add(
                        "redis",
                        &target,
                        r.container,
                        r.id,
                        0,
                        why.as_bytes(),
                        r.doc,
                    );
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    self.stats.routes.invalid("redis", &target, &e);
                    false
                }
            }
        });
        // Streams stored in this batch (see `route::BatchRoutes`).
        let mut batch_routes = route::BatchRoutes::default();
        while !pending.is_empty() {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            let mut again = Vec::new();
            let mut reason = None;
            // In order of first appearance, one call per stream.
            let mut streams: Vec<&str> = Vec::new();
            for &i in &pending {
                if let Some(r) = recs[i] {
                    let st = self.stream_of(&r);
                    if !streams.contains(&st) {
                        streams.push(st);
                    }
                }
            }
            let streams: Vec<String> = streams.into_iter().map(str::to_string).collect();
            for stream in &streams {
                let group: Vec<usize> = pending
                    .iter()
                    .copied()
                    .filter(|&i| recs[i].is_some_and(|r| self.stream_of(&r) == stream))
                    .collect();
                let answer = match self.send(&recs, &group, ttl, maxlen) {
                    Ok(v) => v,
                    // The whole call was refused for its stream (ACL on a key).
                    Err(e) if route_refusal(&e) => {
                        Value::Array(vec![Value::BulkString(e.into_bytes()); group.len()])
                    }
                    Err(e) => {
                        let e = redact::scrub(&e, &self.cfg.url.secrets());
                        tracing::warn!("redis sink ({}): {e}; will resend", self.cfg.url);
                        self.stats.failed_requests.fetch_add(1, Ordering::Relaxed);
                        reason = Some(e);
                        again.extend_from_slice(&group);
                        continue;
                    }
                };
                for (&i, o) in group.iter().zip(outcomes(&answer, group.len())) {
                    let Some(r) = recs[i] else { continue };
                    match o {
                        Outcome::Added => {
                            self.stats.shipped.fetch_add(1, Ordering::Relaxed);
                            self.stats.routes.stored("redis", stream);
                            batch_routes.stored(stream);
                        }
                        Outcome::Duplicate => {
                            self.stats.shipped.fetch_add(1, Ordering::Relaxed);
                            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            batch_routes.stored(stream);
                        }
                        Outcome::Refused(why) => {
                            let policy = self.cfg.route_failure;
                            if self.stats.routes.refused("redis", stream, policy, &why) {
                                self.dead.add(
                                    "redis",
                                    stream,
                                    r.container,
                                    r.id,
                                    0,
                                    why.as_bytes(),
                                    r.doc,
                                );
                                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                            } else {
                                reason = Some(why);
                                again.push(i);
                            }
                        }
                        Outcome::Later(why) => {
                            batch_routes.transient(stream.clone(), || why.clone(), i);
                            reason = Some(why);
                        }
                        Outcome::NotReached => again.push(i),
                    }
                }
            }
            // A stream failing while others of the batch are stored is that
            // stream's problem (route policy); else Redis's: resend.
            let policy = self.cfg.route_failure;
            let (dead, resend) = batch_routes.settle(&self.stats.routes, "redis", policy);
            for (i, why) in dead {
                if let Some(r) = recs[i] {
                    let stream = self.stream_of(&r).to_string();
                    self.dead.add(
                        "redis",
                        &stream,
                        r.container,
                        r.id,
                        0,
                        why.as_bytes(),
                        r.doc,
                    );
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                }
            }
            again.extend(resend);
            again.sort_unstable();
            pending = again;
            if pending.is_empty() {
                self.backoff.reset();
            } else {
                tracing::warn!(
                    "redis sink: {} records refused for now ({}); will resend",
                    pending.len(),
                    reason.as_deref().unwrap_or("no answer")
                );
                self.stats.failed_requests.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .retried
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                self.pause(stop);
            }
        }
        while let Err(e) = self.dead.flush() {
            tracing::error!("dead-letter file {}: {e}", self.dead.path().display());
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        true
    }

    /// One script call for the `pending` records (connecting first if needed).
    /// A transport error drops the connection: its state is unknown.
    fn send(
        &mut self,
        recs: &[Option<WalRecord<'_>>],
        pending: &[usize],
        ttl: u64,
        maxlen: u64,
    ) -> Result<Value, String> {
        if self.conn.is_none() {
            self.conn = Some(self.connect(pending.len())?);
        }
        let mut call = self.script.prepare_invoke();
        call.arg(ttl).arg(maxlen);
        for &i in pending {
            let Some(r) = recs[i] else { continue };
            let mut marker = Vec::with_capacity(self.cfg.dedup_prefix.len() + 1 + r.id.len());
            marker.extend_from_slice(self.cfg.dedup_prefix.as_bytes());
            marker.push(b':');
            marker.extend_from_slice(r.id);
            call.key(marker)
                .key(self.stream_of(&r).as_bytes())
                .arg(r.id)
                .arg(r.container)
                .arg(r.stream.name())
                .arg(r.doc);
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let conn = self.conn.as_mut().expect("connected above");
        match call.invoke::<Value>(conn) {
            // One entry per record handled, never more.
            Ok(Value::Array(a)) if a.len() <= pending.len() => Ok(Value::Array(a)),
            Ok(v) => {
                // Not an answer to this call: what else the server sent is unknown.
                self.conn = None;
                let why = format!("not an answer to the script: {:.200}", format!("{v:?}"));
                self.refused(Refusal::Unusable, pending.len(), &why);
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
                    self.refused(refusal, pending.len(), &e.to_string());
                }
                // The code first, so that `route_refusal` recognises it.
                match e.code() {
                    Some(code) if route_refusal(code) => Err(format!("{code} {e}")),
                    _ => Err(e.to_string()),
                }
            }
        }
    }

    /// Counts and logs (rate-limited) an answer refused for a call of `records`.
    fn refused(&self, refusal: Refusal, records: usize, reason: &str) {
        let reason = redact::scrub(reason, &self.cfg.url.secrets());
        self.stats
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

    /// Sleeps one backoff delay (shorter if stopped).
    fn pause(&mut self, stop: &AtomicBool) {
        let end = Instant::now() + self.backoff.next_delay();
        while Instant::now() < end && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
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
