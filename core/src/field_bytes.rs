//! Bytes copied out of Mesos protobufs: Mesos does not check that protobuf strings
//! are UTF-8, so any framework can send any bytes. What must be exact is refused
//! (naming the field and the offending byte), what is only shown is carried lossily,
//! and every rendering in a message is escaped (no log injection).

use crate::container::InvalidContainerId;

/// A field copied out of a Mesos protobuf that cannot be used as given: Mesos does
/// not check that protobuf strings are UTF-8, so any framework can send any bytes.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// Which field, as an operator finds it (`task label 'rein.net.egress.rate'`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidField {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<InvalidContainerId> for InvalidField {
    fn from(e: InvalidContainerId) -> Self {
        Self::new(
            "container id",
            format!("{}: {}", shown(e.id.as_bytes()), e.reason),
        )
    }
}

/// Where `bytes` stop being UTF-8, as operators read it: `byte 0xff at offset 3`.
pub fn utf8_problem(bytes: &[u8]) -> Option<String> {
    let err = std::str::from_utf8(bytes).err()?;
    let at = err.valid_up_to();
    let end = if err.error_len().is_some() {
        ""
    } else {
        ", an incomplete sequence at the end"
    };
    Some(format!("byte 0x{:02x} at offset {at}{end}", bytes[at]))
}

/// Longest rendering of a name in messages, in characters.
pub(crate) const SHOWN_MAX: usize = 128;

/// Bytes rendered for a message: invalid UTF-8 as `\xNN`, control characters
/// escaped (no log injection), at most [`SHOWN_MAX`] characters.
pub fn shown(bytes: &[u8]) -> String {
    render(bytes, SHOWN_MAX)
}

/// As [`shown`], whole: for ids in log lines, which must stay searchable.
pub fn escaped(bytes: &[u8]) -> String {
    render(bytes, usize::MAX)
}

fn render(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if count == max {
                out.push('…');
                return out;
            }
            count += 1;
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            if count == max {
                out.push('…');
                return out;
            }
            count += 1;
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Text that must be exact (an id, a path, a user, one of our settings): refused
/// when it is not UTF-8 rather than altered.
pub fn exact_text(field: impl FnOnce() -> String, bytes: Vec<u8>) -> Result<String, InvalidField> {
    String::from_utf8(bytes).map_err(|e| {
        let reason = utf8_problem(e.as_bytes()).unwrap_or_default();
        InvalidField::new(field(), format!("not valid UTF-8 ({reason})"))
    })
}

/// A key/value pair that must be exact (one of our labels or variables, a module
/// parameter); `what` names its kind in the error (`task label`).
pub fn exact_pair(
    what: &str,
    key: Vec<u8>,
    value: Vec<u8>,
) -> Result<(String, String), InvalidField> {
    let field = || format!("{what} '{}'", shown(&key));
    if let Some(problem) = utf8_problem(&key) {
        return Err(InvalidField::new(
            field(),
            format!("name is not valid UTF-8 ({problem})"),
        ));
    }
    if let Some(problem) = utf8_problem(&value) {
        return Err(InvalidField::new(
            field(),
            format!("value is not valid UTF-8 ({problem})"),
        ));
    }
    // Both checked above: no copy, no replacement.
    Ok((
        String::from_utf8(key).unwrap_or_default(),
        String::from_utf8(value).unwrap_or_default(),
    ))
}

/// Text only displayed or shipped: invalid UTF-8 becomes U+FFFD. Returns whether it
/// was altered, so the caller can say so.
pub fn lossy_text(bytes: Vec<u8>) -> (String, bool) {
    match String::from_utf8(bytes) {
        Ok(text) => (text, false),
        Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_escapes_and_bounds() {
        assert_eq!(shown(b"a\nb\xff\xc3\xa9"), "a\\nb\\xff\u{e9}");
        assert_eq!(shown(&[b'x'; 500]).chars().count(), SHOWN_MAX + 1);
        assert_eq!(escaped(&[b'x'; 500]).len(), 500);
    }
}
