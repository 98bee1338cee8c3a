//! The one label schema shared by every module.
//!
//! A key such as `net.egress.rate` is read from the label `rein.net.egress.rate`
//! (in `TaskInfo.labels` or `ExecutorInfo.labels`) and from the variable
//! `REIN_NET_EGRESS_RATE` in `CommandInfo.environment`. Each module group owns the
//! file that lists its keys; the parser knows them all, so a misspelt key in our
//! namespace is an error whichever modules the agent loads.

pub mod blkio;
pub mod disk;
pub mod log;
pub mod net;

/// The kind of value a key takes; see [`crate::units`] for the syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Network bandwidth, stored as bits per second.
    Bandwidth,
    /// Disk throughput, stored as bytes per second.
    ByteRate,
    /// A size in bytes.
    Bytes,
    /// A whole number.
    Count,
    /// A duration.
    Duration,
    /// `true` or `false`.
    Bool,
    /// Free text of at most this many bytes, printable characters only.
    Text(usize),
    /// One of the listed words.
    Enum(&'static [&'static str]),
    /// `VALUE` for the default device, or `DEVICE=VALUE,DEVICE=VALUE` where a device is
    /// a block device path or the keyword `sandbox`; the inner kind gives VALUE.
    PerDevice(&'static Kind),
}

/// One key of the schema.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    /// The key, without namespace (`net.egress.rate`).
    pub key: &'static str,
    /// What it takes.
    pub kind: Kind,
    /// One line for the README and for error messages.
    pub help: &'static str,
}

/// Namespace prefix of labels.
pub const LABEL_PREFIX: &str = "rein.";
/// Namespace prefix of environment variables.
pub const ENV_PREFIX: &str = "REIN_";

/// Keys that are not specific to one module.
pub const COMMON_KEYS: &[KeySpec] = &[KeySpec {
    key: "debug.panic",
    kind: Kind::Bool,
    help: "Makes the module panic in prepare(); honoured only when the operator sets \
           the module parameter allow_debug_panic=true (used to prove panics never \
           reach the agent).",
}];

/// Every key of every module.
pub fn all_keys() -> impl Iterator<Item = &'static KeySpec> {
    COMMON_KEYS
        .iter()
        .chain(net::KEYS)
        .chain(blkio::KEYS)
        .chain(disk::KEYS)
        .chain(log::KEYS)
}

/// Finds a key of the schema.
pub fn lookup(key: &str) -> Option<&'static KeySpec> {
    all_keys().find(|k| k.key == key)
}

/// The module that reads a key's group (`blkio.weight`: the `blkio` isolator), as
/// errors name it; `None` for keys every module reads (`debug.*`) and unknown groups.
pub fn owner_of(key: &str) -> Option<&'static str> {
    match key.split(['.', '_']).next()? {
        "net" => Some("net_cls"),
        "blkio" => Some("blkio"),
        "disk" => Some("disk"),
        "log" => Some("logger"),
        _ => None,
    }
}

/// The label that carries `key`.
pub fn label_name(key: &str) -> String {
    format!("{LABEL_PREFIX}{key}")
}

/// The environment variable that carries `key`.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase().replace('.', "_"))
}

/// Finds the key an environment variable stands for.
pub fn lookup_env(var: &str) -> Option<&'static KeySpec> {
    all_keys().find(|k| env_name(k.key) == var)
}

/// How a kind's values are written, for documentation.
pub fn kind_syntax(kind: Kind) -> String {
    match kind {
        Kind::Bandwidth => "bandwidth (`100mbit`, `1gbit`, `10MB/s`)".into(),
        Kind::ByteRate => "byte rate (`10MiB/s`)".into(),
        Kind::Bytes => "size (`64KiB`, `2GiB`)".into(),
        Kind::Count => "whole number".into(),
        Kind::Duration => "duration (`500ms`, `5s`)".into(),
        Kind::Bool => "`true` / `false`".into(),
        Kind::Text(max) => format!("text (at most {max} bytes)"),
        Kind::Enum(words) => words
            .iter()
            .map(|w| format!("`{w}`"))
            .collect::<Vec<_>>()
            .join(" / "),
        Kind::PerDevice(inner) => format!(
            "{}, or `DEVICE=VALUE,...` per device (`sandbox` or `/dev/...`)",
            kind_syntax(*inner)
        ),
    }
}

/// The whole schema as a Markdown table (label, variable, value, meaning).
pub fn markdown_table() -> String {
    let mut out = String::from("| label | variable | value | meaning |\n|---|---|---|---|\n");
    for spec in all_keys() {
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} |\n",
            label_name(spec.key),
            env_name(spec.key),
            kind_syntax(spec.kind),
            spec.help.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn keys_are_unique_and_map_to_distinct_variables() {
        let mut keys = HashSet::new();
        let mut vars = HashSet::new();
        for spec in all_keys() {
            assert!(keys.insert(spec.key), "duplicate key {}", spec.key);
            assert!(
                vars.insert(env_name(spec.key)),
                "variable clash for {}",
                spec.key
            );
            assert!(
                spec.key.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'.'
                    || b == b'_'),
                "key {} must be lowercase ascii",
                spec.key
            );
            assert!(!spec.help.is_empty());
        }
    }

    #[test]
    fn readme_documents_every_key() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        for spec in all_keys() {
            assert!(
                readme.contains(&format!("`{}`", label_name(spec.key))),
                "README lacks {}",
                spec.key
            );
        }
    }

    #[test]
    fn every_group_but_the_common_one_has_an_owner() {
        for spec in all_keys() {
            let common = COMMON_KEYS.iter().any(|c| c.key == spec.key);
            assert_eq!(owner_of(spec.key).is_none(), common, "{}", spec.key);
        }
        assert_eq!(owner_of("net.egress.rate"), Some("net_cls"));
        assert_eq!(owner_of("blkio_read_bps"), Some("blkio"));
    }

    #[test]
    fn names() {
        assert_eq!(label_name("net.egress.rate"), "rein.net.egress.rate");
        assert_eq!(env_name("net.egress.rate"), "REIN_NET_EGRESS_RATE");
        assert_eq!(lookup_env("REIN_DEBUG_PANIC").unwrap().key, "debug.panic");
    }
}
