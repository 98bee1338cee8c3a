//! Routes: a route is one sink's target (an Elasticsearch index, a Kafka
//! topic, a Redis stream), which a task may pick with a label. A target that
//! refuses records for good (a write block on the index, an unknown topic, a
//! stream outside the shipper's ACL) is one route's problem: without a bound,
//! the batch holding its records would be resent forever and every container
//! behind it would stop shipping. The operator's `route_failure` says what
//! happens to such a route's records; counters are kept per route.
//!
//! Errors are classified by the sinks: *permanent for the route* (a per-item
//! 4xx other than 429 and 409-on-create, an unknown or invalid topic, Redis
//! `NOPERM` or `WRONGTYPE`) go through [`Routes::refused`]; *transient*
//! (429, 5xx, connection, timeout) are resent with backoff as before; a
//! record the destination can never parse (a mapping error) is dead-lettered
//! at once.
//!
//! A route answering *transient* per-item errors forever (a red index,
//! per-item 429 for one index) while other routes of the same request are
//! stored is also one route's problem: [`RouteTable::transient`] counts such
//! requests against the same `route_failure` bound. A request where nothing
//! was stored (the whole destination busy or down) stays a sink-wide retry.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What happens to the records of a route that refuses them for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteFailure {
    /// Resend until the route accepts them. Holds the sink's batch in flight,
    /// so every route of that sink waits too: only for destinations whose
    /// routes the operator alone controls.
    Wait,
    /// Resend until the route has refused this many records (or one record
    /// this many times), then the route is marked failing and its records go
    /// to the dead-letter file at their first refusal, until one of its
    /// records is stored again.
    DeadLetterAfterAttempts(u32),
    /// The same with a time since the route's first refusal.
    DeadLetterAfter(Duration),
}

/// Default `route_failure`: `dead_letter_after:3`.
pub const DEFAULT_ROUTE_FAILURE: RouteFailure = RouteFailure::DeadLetterAfterAttempts(3);

/// Why a `route_failure` value is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteFailureError {
    /// Neither form.
    #[error(
        "expected `wait`, `dead_letter_after:REFUSALS` or `dead_letter_after:DURATION` (e.g. 30s)"
    )]
    Form,
    /// A count of refusals out of range.
    #[error("refusals must be 1 to 1000")]
    Refusals,
    /// Not a duration.
    #[error("{0}")]
    Duration(String),
    /// A duration over the bound.
    #[error("a duration of at most 24h")]
    TooLong,
}

/// For callers that report errors as text.
impl From<RouteFailureError> for String {
    fn from(e: RouteFailureError) -> String {
        e.to_string()
    }
}

impl std::str::FromStr for RouteFailure {
    type Err = RouteFailureError;
    fn from_str(s: &str) -> Result<Self, RouteFailureError> {
        let s = s.trim();
        if s == "wait" {
            return Ok(RouteFailure::Wait);
        }
        let Some(b) = s.strip_prefix("dead_letter_after:") else {
            return Err(RouteFailureError::Form);
        };
        if let Ok(n) = b.parse::<u32>() {
            return if (1..=1000).contains(&n) {
                Ok(RouteFailure::DeadLetterAfterAttempts(n))
            } else {
                Err(RouteFailureError::Refusals)
            };
        }
        let d =
            rein_core::units::parse_duration(b).map_err(|e| RouteFailureError::Duration(e.0))?;
        if d > Duration::from_secs(24 * 3600) {
            return Err(RouteFailureError::TooLong);
        }
        Ok(RouteFailure::DeadLetterAfter(d))
    }
}

/// Counters of one route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteCounters {
    /// Records the route stored.
    pub shipped: u64,
    /// Refusals for good (one per record and attempt).
    pub refused: u64,
    /// Records of the route written to the dead-letter file after refusals.
    pub dead_lettered: u64,
    /// 1 while the route is marked failing.
    pub failing: u64,
    /// Records answered with a transient error (429, 5xx) while other routes
    /// of the same request were stored.
    pub stalled: u64,
}

/// Routes tracked per sink; beyond, they are counted under [`OTHER_ROUTES`]
/// (a task cannot grow the shipper's memory by naming routes).
pub const MAX_ROUTES: usize = 1000;
/// Name under which routes past [`MAX_ROUTES`] are counted.
pub const OTHER_ROUTES: &str = "(other)";

#[derive(Debug, Default)]
struct RouteState {
    first_refusal: Option<Instant>,
    attempts: u32,
    counters: RouteCounters,
}

impl RouteState {
    /// Counts one more failed attempt of the route (the first one starts its
    /// clock): true once `policy` gives up on it.
    fn attempt_gives_up(&mut self, policy: RouteFailure) -> bool {
        let now = Instant::now();
        let first = *self.first_refusal.get_or_insert(now);
        self.attempts = self.attempts.saturating_add(1);
        match policy {
            RouteFailure::Wait => false,
            RouteFailure::DeadLetterAfterAttempts(n) => self.attempts >= n,
            RouteFailure::DeadLetterAfter(d) => now.duration_since(first) >= d,
        }
    }
}

/// Failure state and counters of every route of one sink.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Mutex<BTreeMap<String, RouteState>>,
}

impl RouteTable {
    /// A snapshot of every route's counters.
    pub fn snapshot(&self) -> BTreeMap<String, RouteCounters> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.counters.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RouteState>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<T>(&self, route: &str, f: impl FnOnce(&mut RouteState) -> T) -> T {
        let mut m = self.lock();
        let key = if m.contains_key(route) || m.len() < MAX_ROUTES {
            route
        } else {
            OTHER_ROUTES
        };
        f(m.entry(key.to_string()).or_default())
    }

    /// A record of `route` was stored: a failing route recovers.
    pub fn stored(&self, sink: &str, route: &str) {
        self.with(route, |s| {
            s.counters.shipped += 1;
            if s.first_refusal.take().is_some() && s.counters.failing == 1 {
                tracing::warn!(sink, route, "route accepts records again");
            }
            s.attempts = 0;
            s.counters.failing = 0;
        });
    }

    /// A record of `route` was refused for good (`reason`); true if it must
    /// go to the dead-letter file now, false to resend it.
    pub fn refused(&self, sink: &str, route: &str, policy: RouteFailure, reason: &str) -> bool {
        self.with(route, |s| {
            s.counters.refused += 1;
            if s.counters.failing == 1 {
                s.counters.dead_lettered += 1;
                return true;
            }
            let give_up = s.attempt_gives_up(policy);
            if give_up {
                s.counters.failing = 1;
                s.counters.dead_lettered += 1;
                tracing::error!(
                    sink,
                    route,
                    "route refuses records for good ({reason}): its records go to the \
                     dead-letter file until it accepts one again; other routes ship on"
                );
            } else if s.attempts == 1 {
                tracing::warn!(
                    sink,
                    route,
                    ?policy,
                    "route refused a record for good ({reason}); resending"
                );
            }
            give_up
        })
    }

    /// `items` records of `route` got a transient error in a request where
    /// other routes' records were stored (`others_stored`), or the route is
    /// already failing: true if they must go to the dead-letter file now.
    /// One call per request and route: the bound counts requests (attempts)
    /// or the time since the first such request. Without other routes stored
    /// and while not failing, false (a sink-wide retry, nothing counted).
    pub fn transient(
        &self,
        sink: &str,
        route: &str,
        policy: RouteFailure,
        others_stored: bool,
        items: u64,
        reason: &str,
    ) -> bool {
        self.with(route, |s| {
            if s.counters.failing == 1 {
                s.counters.dead_lettered += items;
                if others_stored {
                    s.counters.stalled += items;
                }
                return true;
            }
            if !others_stored {
                return false;
            }
            s.counters.stalled += items;
            let give_up = s.attempt_gives_up(policy);
            if give_up {
                s.counters.failing = 1;
                s.counters.dead_lettered += items;
                tracing::error!(
                    sink,
                    route,
                    attempts = s.attempts,
                    "route keeps failing ({reason}) while other routes are stored: its \
                     records go to the dead-letter file until it accepts one again; \
                     other routes ship on"
                );
            } else if s.attempts == 1 {
                tracing::warn!(
                    sink,
                    route,
                    ?policy,
                    "route failed ({reason}) while other routes were stored; resending"
                );
            }
            give_up
        })
    }

    /// A record whose route no destination can have (a name the rules refuse)
    /// went to the dead-letter file.
    pub fn invalid(&self, sink: &str, route: &str, reason: &str) {
        self.with(route, |s| {
            s.counters.refused += 1;
            s.counters.dead_lettered += 1;
            if s.counters.refused == 1 {
                tracing::error!(
                    sink,
                    route,
                    "refused route ({reason}): its records go to the dead-letter file"
                );
            }
        });
    }

    /// True while `route` is marked failing.
    pub fn is_failing(&self, route: &str) -> bool {
        self.lock()
            .get(route)
            .is_some_and(|s| s.counters.failing == 1)
    }
}

/// The routes of the batch a sink is shipping: which stored records, and
/// which answered transient errors in the last attempt. [`BatchRoutes::settle`]
/// decides, once per attempt, which of those go to the dead-letter file
/// (their route keeps failing while others of the batch are stored, past
/// `route_failure`) and which are resent.
#[derive(Debug)]
pub struct BatchRoutes<T> {
    stored: std::collections::HashSet<String>,
    transient: BTreeMap<String, (String, Vec<T>)>,
}

impl<T> Default for BatchRoutes<T> {
    fn default() -> Self {
        BatchRoutes {
            stored: Default::default(),
            transient: BTreeMap::new(),
        }
    }
}

impl<T> BatchRoutes<T> {
    /// A record of `route` was stored (or already was).
    pub fn stored(&mut self, route: &str) {
        if !self.stored.contains(route) {
            self.stored.insert(route.to_string());
        }
    }

    /// `item` of `route` got a transient error (`reason` of the first is kept).
    pub fn transient(&mut self, route: String, reason: impl FnOnce() -> String, item: T) {
        self.transient
            .entry(route)
            .or_insert_with(|| (reason(), Vec::new()))
            .1
            .push(item);
    }

    /// Ends one attempt: the items to dead-letter now (with the reason) and
    /// the items to resend. A route that stored records in this batch is
    /// resent (the destination is merely busy); so is everything when no
    /// other route stored any (nothing tells a route from the destination).
    pub fn settle(
        &mut self,
        table: &RouteTable,
        sink: &str,
        policy: RouteFailure,
    ) -> (Vec<(T, String)>, Vec<T>) {
        let (mut dead, mut again) = (Vec::new(), Vec::new());
        for (route, (reason, items)) in std::mem::take(&mut self.transient) {
            let ours = self.stored.contains(&route);
            let others = self.stored.len() > usize::from(ours);
            if !ours && table.transient(sink, &route, policy, others, items.len() as u64, &reason) {
                let why = format!(
                    "{reason}, while other routes were stored: route failing (route_failure)"
                );
                dead.extend(items.into_iter().map(|i| (i, why.clone())));
            } else {
                again.extend(items);
            }
        }
        (dead, again)
    }
}

/// Why a task-chosen (or buffered) route can never be used by a sink; the
/// same rules as at `prepare`, checked again by the shipper before use.
pub fn check_es_index(route: &[u8]) -> Result<(), String> {
    if route.is_empty() {
        return Ok(());
    }
    let s = std::str::from_utf8(route).map_err(|_| "index name is not UTF-8".to_string())?;
    super::es::validate_index(s)
}

/// [`validate_topic`] of a buffered route (empty: the default topic).
pub fn check_kafka_topic(route: &[u8]) -> Result<(), String> {
    if route.is_empty() {
        return Ok(());
    }
    validate_topic(std::str::from_utf8(route).map_err(|_| "topic is not UTF-8".to_string())?)
}

/// Kafka topic rules: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`, and
/// not `__`-prefixed (the broker's internal topics).
pub fn validate_topic(t: &str) -> Result<(), String> {
    if t.is_empty()
        || t.len() > 249
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err("a topic has 1 to 249 of [a-zA-Z0-9._-]".into());
    }
    if t == "." || t == ".." {
        return Err("`.` and `..` are not topic names".into());
    }
    if t.starts_with("__") {
        return Err("topics starting with `__` are the broker's own".into());
    }
    Ok(())
}

/// Prefix of every Redis key the shipper writes for itself (its default
/// dedup markers are `rein:dedup:<id>`): no task stream may start with it.
pub const RESERVED_REDIS_PREFIX: &str = "rein:";

/// A task's Redis stream must stay out of the shipper's own key namespace
/// (`rein:` and the configured `dedup_prefix`): a stream named like a marker
/// would make the shipper take a neighbour's records for duplicates.
pub fn check_redis_stream(stream: &[u8], dedup_prefix: &str) -> Result<(), String> {
    if stream.is_empty() {
        return Ok(());
    }
    let s = std::str::from_utf8(stream).map_err(|_| "stream key is not UTF-8".to_string())?;
    super::redis_config::validate_stream(s)?;
    if s == dedup_prefix || s.starts_with(&format!("{dedup_prefix}:")) {
        return Err(format!(
            "stream key is inside the shipper's dedup marker namespace `{dedup_prefix}:`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_policies() {
        assert_eq!("wait".parse(), Ok(RouteFailure::Wait));
        assert_eq!(
            "dead_letter_after:5".parse(),
            Ok(RouteFailure::DeadLetterAfterAttempts(5))
        );
        assert_eq!(
            "dead_letter_after:30s".parse(),
            Ok(RouteFailure::DeadLetterAfter(Duration::from_secs(30)))
        );
        for bad in [
            "",
            "never",
            "dead_letter_after:0",
            "dead_letter_after:2d",
            "dead_letter_after:48h",
        ] {
            assert!(bad.parse::<RouteFailure>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_route_fails_after_its_bound_and_recovers() {
        let t = RouteTable::default();
        let p = RouteFailure::DeadLetterAfterAttempts(2);
        assert!(!t.refused("es", "bad", p, "403"));
        assert!(t.refused("es", "bad", p, "403"));
        assert!(t.is_failing("bad"));
        // Failing: dead-lettered at the first refusal.
        assert!(t.refused("es", "bad", p, "403"));
        t.stored("es", "good");
        assert!(!t.is_failing("good"));
        t.stored("es", "bad");
        assert!(!t.is_failing("bad"));
        assert!(!t.refused("es", "bad", p, "403"));
        let snap = t.snapshot();
        assert_eq!(snap["bad"].refused, 4);
        assert_eq!(snap["bad"].dead_lettered, 2);
        assert_eq!(snap["good"].shipped, 1);
        assert!(!t.refused("es", "w", RouteFailure::Wait, "x"));
        assert!(!t.refused("es", "w", RouteFailure::Wait, "x"));
    }

    #[test]
    fn a_route_failing_transiently_beside_others_fails_after_its_bound() {
        let t = RouteTable::default();
        let p = RouteFailure::DeadLetterAfterAttempts(3);
        // Nothing else stored: the destination as a whole, not counted.
        for _ in 0..10 {
            assert!(!t.transient("es", "red", p, false, 5, "503"));
        }
        assert!(!t.transient("es", "red", p, true, 5, "503"));
        assert!(!t.transient("es", "red", p, true, 5, "503"));
        assert!(t.transient("es", "red", p, true, 5, "503"));
        assert!(t.is_failing("red"));
        // Failing: at once, even alone in a request.
        assert!(t.transient("es", "red", p, false, 2, "503"));
        let snap = t.snapshot();
        assert_eq!(snap["red"].stalled, 15);
        assert_eq!(snap["red"].dead_lettered, 7);
        t.stored("es", "red");
        assert!(!t.is_failing("red"));
        assert!(!t.transient("es", "red", p, true, 1, "503"));
        let w = RouteFailure::Wait;
        for _ in 0..10 {
            assert!(!t.transient("es", "w", w, true, 1, "429"));
        }
    }

    #[test]
    fn a_batch_settles_per_route() {
        let t = RouteTable::default();
        let p = RouteFailure::DeadLetterAfterAttempts(2);
        let mut b = BatchRoutes::default();
        // Alone: resent, not counted.
        b.transient("red".into(), || "503".into(), 1);
        assert_eq!(b.settle(&t, "es", p), (vec![], vec![1]));
        b.stored("ok");
        // A route busy in part (some of its records stored) is resent.
        b.stored("busy");
        b.transient("busy".into(), || "429".into(), 5);
        b.transient("red".into(), || "503".into(), 1);
        assert_eq!(b.settle(&t, "es", p), (vec![], vec![5, 1]));
        b.transient("red".into(), || "503".into(), 1);
        b.transient("red".into(), || "503".into(), 2);
        let (dead, again) = b.settle(&t, "es", p);
        assert_eq!(dead.iter().map(|d| d.0).collect::<Vec<_>>(), [1, 2]);
        assert!(dead[0].1.contains("503"), "{}", dead[0].1);
        assert!(again.is_empty());
        assert!(t.is_failing("red"));
    }

    #[test]
    fn routes_are_bounded() {
        let t = RouteTable::default();
        for i in 0..MAX_ROUTES + 10 {
            t.stored("es", &format!("r{i}"));
        }
        let snap = t.snapshot();
        assert_eq!(snap.len(), MAX_ROUTES + 1);
        assert_eq!(snap[OTHER_ROUTES].shipped, 10);
    }

    #[test]
    fn reserved_names() {
        assert!(validate_topic("team-a.logs").is_ok());
        for bad in ["", ".", "..", "__consumer_offsets", "a b", &"x".repeat(250)] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
        assert!(check_redis_stream(b"team:a", "rein:dedup").is_ok());
        for bad in [
            &b"rein:dedup:abc-o-1"[..],
            b"rein:x",
            b"ops:m",
            b"ops:m:1",
            b"a\xff",
        ] {
            assert!(check_redis_stream(bad, "ops:m").is_err());
        }
        assert!(check_redis_stream(b"ops:m:1", "ops:m").is_err());
        assert!(check_redis_stream(b"rein:dedup:x", "rein:dedup").is_err());
        assert!(check_es_index(b".security").is_err());
        assert!(check_es_index(b"team-a-%Y").is_ok());
    }
}
