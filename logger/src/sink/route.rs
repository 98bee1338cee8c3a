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
//! `NOPERM` or `WRONGTYPE`) go through [`RouteTable::refused`]; *transient*
//! (429, 5xx, connection, timeout) are resent with backoff as before; a
//! record the destination can never parse (a mapping error) is dead-lettered
//! at once.
//!
//! A route answering *transient* per-item errors forever (a red index,
//! per-item 429 for one index) while other routes of the same request are
//! stored is also one route's problem: [`RouteTable::transient`] counts such
//! requests against the same `route_failure` bound. A request where nothing
//! was stored (the whole destination busy or down) stays a sink-wide retry.

use std::time::Duration;

pub use super::route_table::{BatchRoutes, RouteCounters, RouteTable, MAX_ROUTES, OTHER_ROUTES};

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

/// Why a buffered route can never be used by its sink.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRoute {
    /// The route's bytes are not text (`what`: index name, topic, stream key).
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// Refused by the rules `prepare` applies.
    #[error(transparent)]
    Rule(#[from] RouteError),
    /// A Redis stream named like the shipper's dedup markers.
    #[error("stream key is inside the shipper's dedup marker namespace `{0}:`")]
    DedupNamespace(String),
}

/// Why a task-chosen (or buffered) route can never be used by a sink; the
/// same rules as at `prepare`, checked again by the shipper before use.
pub fn check_es_index(route: &[u8]) -> Result<(), BadRoute> {
    if route.is_empty() {
        return Ok(());
    }
    let s = std::str::from_utf8(route).map_err(|_| BadRoute::NotUtf8("index name"))?;
    Ok(super::es::validate_index(s)?)
}

/// [`validate_topic`] of a buffered route (empty: the default topic).
pub fn check_kafka_topic(route: &[u8]) -> Result<(), BadRoute> {
    if route.is_empty() {
        return Ok(());
    }
    Ok(validate_topic(
        std::str::from_utf8(route).map_err(|_| BadRoute::NotUtf8("topic"))?,
    )?)
}

pub use rein_log_module::route::{validate_topic, RouteError};

/// [`super::s3_config::validate_s3_prefix`] of a buffered route (empty: the default prefix).
pub fn check_s3_prefix(route: &[u8]) -> Result<(), BadRoute> {
    if route.is_empty() {
        return Ok(());
    }
    let s = std::str::from_utf8(route).map_err(|_| BadRoute::NotUtf8("S3 key prefix"))?;
    Ok(super::s3_config::validate_s3_prefix(s)?)
}

pub use rein_log_module::route::RESERVED_REDIS_PREFIX;

/// A task's Redis stream must stay out of the shipper's own key namespace
/// (`rein:` and the configured `dedup_prefix`): a stream named like a marker
/// would make the shipper take a neighbour's records for duplicates.
pub fn check_redis_stream(stream: &[u8], dedup_prefix: &str) -> Result<(), BadRoute> {
    if stream.is_empty() {
        return Ok(());
    }
    let s = std::str::from_utf8(stream).map_err(|_| BadRoute::NotUtf8("stream key"))?;
    super::redis_config::validate_stream(s)?;
    if s == dedup_prefix || s.starts_with(&format!("{dedup_prefix}:")) {
        return Err(BadRoute::DedupNamespace(dedup_prefix.to_owned()));
    }
    Ok(())
}

/// [`validate_subject`](rein_log_module::route::validate_subject) of a
/// buffered route (empty: the default subject).
pub fn check_nats_subject(route: &[u8]) -> Result<(), BadRoute> {
    if route.is_empty() {
        return Ok(());
    }
    let s = std::str::from_utf8(route).map_err(|_| BadRoute::NotUtf8("subject"))?;
    Ok(rein_log_module::route::validate_subject(s)?)
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
        assert!(check_nats_subject(b"").is_ok());
        assert!(check_nats_subject(b"team-a.logs").is_ok());
        for bad in [
            &b"a.>"[..],
            b"$JS.API.STREAM.DELETE.L",
            b"_INBOX.x.1",
            b"a\xff",
        ] {
            assert!(check_nats_subject(bad).is_err());
        }
        assert!(check_s3_prefix(b"team-a/app").is_ok());
        assert!(check_s3_prefix(b"team-a/../b").is_err());
        assert!(check_s3_prefix(b"a\xff").is_err());
    }
}
