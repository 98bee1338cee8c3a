//! The names a task may pick as its route (an Elasticsearch index pattern, a
//! Kafka topic, a Redis stream, an S3 key prefix) and the operator's prefixes around them:
//! checked by the module at `prepare` (a bad name fails that container only)
//! and again by the shipper before it uses a buffered route.

/// Prefix of every Redis key the shipper writes for itself (its default
/// dedup markers are `rein:dedup:<id>`): no task stream may start with it.
pub const RESERVED_REDIS_PREFIX: &str = "rein:";

/// First token of the reply subjects the shipper receives JetStream's
/// acknowledgements on: no task subject may start with it.
pub const RESERVED_NATS_INBOX: &str = "_INBOX";

/// Why a route name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// An index pattern of the wrong length.
    #[error("index `{0}`: must be 1 to 200 bytes")]
    IndexLength(String),
    /// An index pattern starting with a character Elasticsearch refuses there.
    #[error("index `{0}`: must not start with - _ + or .")]
    IndexStart(String),
    /// `%` followed by anything but a date field.
    #[error("index `{0}`: only %Y, %m and %d may follow %")]
    IndexPercent(String),
    /// A character Elasticsearch refuses in an index name.
    #[error("index `{index}`: `{c}` is not allowed (lower-case letters, digits, - _ .)")]
    IndexChar {
        /// The pattern.
        index: String,
        /// The refused character.
        c: char,
    },
    /// A topic of the wrong length or with a refused character.
    #[error("a topic has 1 to 249 of [a-zA-Z0-9._-]")]
    TopicChars,
    /// `.` or `..`.
    #[error("`.` and `..` are not topic names")]
    TopicDots,
    /// A `__` topic (the broker's internal ones).
    #[error("topics starting with `__` are the broker's own")]
    TopicInternal,
    /// A Redis key of the wrong length or with a refused character.
    #[error("a stream key has 1 to 128 of [a-zA-Z0-9._:-]")]
    KeyChars,
    /// A stream inside the shipper's own key namespace.
    #[error("stream keys starting with `{RESERVED_REDIS_PREFIX}` are reserved for the shipper's own keys")]
    StreamReserved,
    /// A NATS subject of the wrong length, with an empty token or a refused character.
    #[error("a subject has 1 to 128 bytes: tokens of [a-zA-Z0-9_:-] separated by single dots (no wildcards `*` `>`)")]
    SubjectChars,
    /// A subject of the server's or the shipper's own (`$JS.`, `$SYS.`, `_INBOX.`).
    #[error("subjects starting with `$` or `{RESERVED_NATS_INBOX}` are the server's and the shipper's own")]
    SubjectReserved,
    /// An S3 key prefix of the wrong length or with a refused character.
    #[error(
        "an S3 key prefix has 1 to {MAX_S3_PREFIX} of [a-zA-Z0-9._-] in `/`-separated segments"
    )]
    S3PrefixChars,
    /// An S3 key prefix with an empty, `.` or `..` segment (or a leading or
    /// trailing `/`).
    #[error("an S3 key prefix has no empty, `.` or `..` segment and no leading or trailing `/`")]
    S3PrefixSegment,
    /// A name outside the operator's allowed prefixes.
    #[error("must start with one of: {}", .0.join(", "))]
    Prefix(Vec<String>),
}

/// Checks an index pattern: Elasticsearch index-name rules, with `%Y %m %d`.
pub fn validate_index(p: &str) -> Result<(), RouteError> {
    if p.is_empty() || p.len() > 200 {
        return Err(RouteError::IndexLength(p.into()));
    }
    if p.starts_with(['-', '_', '+', '.']) {
        return Err(RouteError::IndexStart(p.into()));
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        match c {
            'a'..='z' | '0'..='9' | '-' | '_' | '.' => {}
            '%' => match chars.next() {
                Some('Y' | 'm' | 'd') => {}
                _ => return Err(RouteError::IndexPercent(p.into())),
            },
            _ => return Err(RouteError::IndexChar { index: p.into(), c }),
        }
    }
    Ok(())
}

/// Kafka topic rules: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`, and
/// not `__`-prefixed (the broker's internal topics).
pub fn validate_topic(t: &str) -> Result<(), RouteError> {
    if t.is_empty()
        || t.len() > 249
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(RouteError::TopicChars);
    }
    if t == "." || t == ".." {
        return Err(RouteError::TopicDots);
    }
    if t.starts_with("__") {
        return Err(RouteError::TopicInternal);
    }
    Ok(())
}

/// A stream key a task or the operator may use: 1 to 128 of `[a-zA-Z0-9._:-]`
/// (no spaces, braces or globbing characters).
pub fn validate_stream(s: &str) -> Result<(), RouteError> {
    validate_key(s)?;
    if s.starts_with(RESERVED_REDIS_PREFIX) {
        return Err(RouteError::StreamReserved);
    }
    Ok(())
}

/// A key the shipper writes: 1 to 128 of `[a-zA-Z0-9._:-]`.
pub fn validate_key(s: &str) -> Result<(), RouteError> {
    if s.is_empty()
        || s.len() > 128
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err(RouteError::KeyChars);
    }
    Ok(())
}

/// A NATS subject a task or the operator may publish to: 1 to 128 bytes of
/// dot-separated tokens of `[a-zA-Z0-9_:-]` (no wildcard, space or control
/// byte can appear), not `_INBOX` (the shipper's acknowledgements) and never
/// a `$` subject (`$JS.API.` would be a JetStream command).
pub fn validate_subject(s: &str) -> Result<(), RouteError> {
    let token_ok = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_:-".contains(&b))
    };
    if s.starts_with('$') {
        return Err(RouteError::SubjectReserved);
    }
    if s.is_empty() || s.len() > 128 || !s.split('.').all(token_ok) {
        return Err(RouteError::SubjectChars);
    }
    if s.split('.').next() == Some(RESERVED_NATS_INBOX) {
        return Err(RouteError::SubjectReserved);
    }
    Ok(())
}

/// Longest S3 key prefix: keys stay far below S3's 1024 bytes.
pub const MAX_S3_PREFIX: usize = 200;

/// An S3 key prefix a task or the operator may use: 1 to [`MAX_S3_PREFIX`]
/// bytes of `[a-zA-Z0-9._-]` in segments separated by single `/` (no empty,
/// `.` or `..` segment: every tool lists such keys differently).
pub fn validate_s3_prefix(p: &str) -> Result<(), RouteError> {
    if p.is_empty()
        || p.len() > MAX_S3_PREFIX
        || !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
    {
        return Err(RouteError::S3PrefixChars);
    }
    if p.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(RouteError::S3PrefixSegment);
    }
    Ok(())
}

/// `v` starts with one of the operator's `prefixes` (none: any name).
pub fn check_prefix(v: &str, prefixes: &[String]) -> Result<(), RouteError> {
    if prefixes.is_empty() || prefixes.iter().any(|p| v.starts_with(p.as_str())) {
        Ok(())
    } else {
        Err(RouteError::Prefix(prefixes.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_value_and_the_rule() {
        assert_eq!(
            validate_index("Logs").unwrap_err().to_string(),
            "index `Logs`: `L` is not allowed (lower-case letters, digits, - _ .)"
        );
        assert_eq!(
            validate_stream("rein:x").unwrap_err().to_string(),
            "stream keys starting with `rein:` are reserved for the shipper's own keys"
        );
        assert_eq!(
            validate_topic("__x").unwrap_err(),
            RouteError::TopicInternal
        );
    }

    #[test]
    fn nats_subjects() {
        for ok in ["logs", "team-a.logs", "a.b_c.d:e-1"] {
            assert!(validate_subject(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(129);
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a.*",
            "a.>",
            ">",
            "a b",
            "a\tb",
            "a\r\nPUB x",
            "é",
            &long,
        ] {
            assert_eq!(
                validate_subject(bad),
                Err(RouteError::SubjectChars),
                "{bad:?}"
            );
        }
        for bad in [
            "$JS.API.STREAM.DELETE.LOGS",
            "$SYS.x",
            "_INBOX.abc.1",
            "_INBOX",
        ] {
            assert_eq!(
                validate_subject(bad),
                Err(RouteError::SubjectReserved),
                "{bad}"
            );
        }
        assert!(validate_subject("_INBOXES").is_ok());
    }

    #[test]
    fn s3_prefixes() {
        for ok in ["logs", "team-a/app.v1", "a/b/c_d"] {
            assert_eq!(validate_s3_prefix(ok), Ok(()), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "a/../b", ".", "a b", "a%2f", "é"] {
            assert!(validate_s3_prefix(bad).is_err(), "{bad}");
        }
        assert!(validate_s3_prefix(&"x".repeat(MAX_S3_PREFIX + 1)).is_err());
    }

    #[test]
    fn prefixes_bound_a_name_when_the_operator_sets_any() {
        assert!(check_prefix("anything", &[]).is_ok());
        let allowed = ["team-a".to_string(), "team-b".to_string()];
        assert!(check_prefix("team-b-logs", &allowed).is_ok());
        assert_eq!(
            check_prefix("team-c", &allowed).unwrap_err().to_string(),
            "must start with one of: team-a, team-b"
        );
    }
}
