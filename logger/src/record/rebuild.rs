//! Rebuilding the exact bytes a task wrote from its `rein.log.binary=base64`
//! records, as read back from any sink.
//!
//! In base64 mode every line is a record (empty ones too), and a record's
//! bytes are `log.original_bytes` (base64) when present, else `message`
//! (which is then exactly them). In `log.offset` order, each record's bytes
//! followed by a `\n`, except after a record flagged `unterminated`, are the
//! stream.

use base64::Engine as _;

/// Why records do not rebuild a stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RebuildError {
    /// A document has no `log.offset`.
    #[error("a record has no log.offset")]
    NoOffset,
    /// A document has neither `log.original_bytes` nor a string `message`.
    #[error("the record at offset {0} has neither log.original_bytes nor a message")]
    NoBytes(u64),
    /// `log.original_bytes` is not standard padded base64.
    #[error("log.original_bytes of the record at offset {offset} is not base64: {reason}")]
    BadBase64 {
        /// The record's `log.offset`.
        offset: u64,
        /// The decoder's reason.
        reason: base64::DecodeError,
    },
    /// Records are missing (or overlap) before `found`.
    #[error("the record at offset {found} does not follow the previous one (expected offset {expected}): records are missing or repeated")]
    Gap {
        /// Where the next record should start.
        expected: u64,
        /// Where it starts.
        found: u64,
    },
}

/// A stretch of a stream rebuilt from its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Stream offset of the first byte (the first record's `log.offset`).
    pub offset: u64,
    /// The bytes, newlines included.
    pub bytes: Vec<u8>,
}

/// One record's bytes and whether a `\n` followed them.
fn record_bytes(doc: &serde_json::Value) -> Result<(u64, Vec<u8>, bool), RebuildError> {
    let log = &doc["log"];
    let offset = log["offset"].as_u64().ok_or(RebuildError::NoOffset)?;
    let bytes = match log["original_bytes"].as_str() {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|reason| RebuildError::BadBase64 { offset, reason })?,
        None => doc["message"]
            .as_str()
            .ok_or(RebuildError::NoBytes(offset))?
            .as_bytes()
            .to_vec(),
    };
    let unterminated = log["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == "unterminated"));
    Ok((offset, bytes, !unterminated))
}

/// Rebuilds the bytes of one stream (one container's stdout, say) from its
/// base64-mode documents, in any order; every record from the first to the
/// last must be there exactly once.
pub fn rebuild<'a>(
    docs: impl IntoIterator<Item = &'a serde_json::Value>,
) -> Result<Rebuilt, RebuildError> {
    let mut records = docs
        .into_iter()
        .map(record_bytes)
        .collect::<Result<Vec<_>, _>>()?;
    records.sort_by_key(|r| r.0);
    let offset = records.first().map_or(0, |r| r.0);
    let mut bytes = Vec::new();
    for (at, b, terminated) in records {
        let expected = offset + bytes.len() as u64;
        if at != expected {
            return Err(RebuildError::Gap {
                expected,
                found: at,
            });
        }
        bytes.extend_from_slice(&b);
        if terminated {
            bytes.push(b'\n');
        }
    }
    Ok(Rebuilt { offset, bytes })
}

#[cfg(test)]
#[path = "rebuild_tests.rs"]
mod tests;
