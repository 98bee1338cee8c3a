//! Keys of the container logger.

use super::{KeySpec, Kind};

/// Keys of the `log` group.
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        key: "log.sink",
        kind: Kind::Enum(&["elasticsearch", "kafka", "none"]),
        help: "Where the container's records go (within the sinks the operator enabled).",
    },
    KeySpec {
        key: "log.index",
        kind: Kind::Text(128),
        help:
            "Elasticsearch index pattern for this container (within the operator's allowed prefix).",
    },
    KeySpec {
        key: "log.topic",
        kind: Kind::Text(128),
        help: "Kafka topic for this container (within the operator's allowed prefix).",
    },
];
