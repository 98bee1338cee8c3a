//! Keys of the container logger (`rein-logger`).

use super::{KeySpec, Kind};

/// Keys of the `log` group.
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        key: "log.sink",
        kind: Kind::Enum(&["elasticsearch", "kafka", "redis", "nats", "s3", "none"]),
        help: "Where the container's records go (within the sinks the operator allows); \
               `none` keeps only the sandbox files.",
    },
    KeySpec {
        key: "log.index",
        kind: Kind::Text(128),
        help: "Elasticsearch index pattern for this container, e.g. `team-a-%Y.%m.%d` \
               (lower-case, digits, `-_.`, `%Y %m %d`; must start with one of the \
               operator's allowed prefixes).",
    },
    KeySpec {
        key: "log.topic",
        kind: Kind::Text(128),
        help: "Kafka topic for this container (within the operator's allowed prefixes).",
    },
    KeySpec {
        key: "log.redis_stream",
        kind: Kind::Text(128),
        help: "Redis stream key for this container (`[a-zA-Z0-9._:-]`, within the \
               operator's allowed prefixes).",
    },
    KeySpec {
        key: "log.nats_subject",
        kind: Kind::Text(128),
        help: "NATS JetStream subject for this container (dot-separated tokens of \
               `[a-zA-Z0-9_:-]`, no wildcards, within the operator's allowed prefixes).",
    },
    KeySpec {
        key: "log.s3_prefix",
        kind: Kind::Text(200),
        help: "S3 key prefix for this container's objects (`/`-separated segments of \
               `[a-zA-Z0-9._-]`, within the operator's allowed prefixes); objects are \
               `<prefix>/<yyyy>/<mm>/<dd>/<framework>/<task>/<container>/<first record id>.ndjson.gz`.",
    },
    KeySpec {
        key: "log.multiline",
        kind: Kind::Enum(&["off", "indented"]),
        help: "Join continuation lines into one record: `indented` joins lines starting \
               with a space or tab, `Caused by:`, `at ` or `...` (stack traces).",
    },
    KeySpec {
        key: "log.multiline.pattern",
        kind: Kind::Text(256),
        help: "Regular expression (RE2 syntax, linear time, size-limited) matching the \
               first line of a record; other lines are joined to the previous record.",
    },
    KeySpec {
        key: "log.multiline.max_lines",
        kind: Kind::Count,
        help: "A joined record is emitted once it has this many lines (operator cap applies).",
    },
    KeySpec {
        key: "log.multiline.max_bytes",
        kind: Kind::Bytes,
        help: "A joined record is emitted before it would exceed this size (operator cap applies).",
    },
    KeySpec {
        key: "log.multiline.timeout",
        kind: Kind::Duration,
        help: "A pending joined record is emitted after this long without a new line.",
    },
    KeySpec {
        key: "log.files",
        kind: Kind::Text(1024),
        help: "Log files in the sandbox to ship besides stdout and stderr: `[TAG=]GLOB` entries \
               separated by `,` (e.g. `app=logs/*.log,gc=gc.log;multiline=off`), each with \
               options `;multiline=` (`off`, `indented` or `inherit`), `;sink=SINK` (within the \
               allowed sinks) and `;route=ROUTE` (for the file's sink); `*` and `?` \
               within a component; within the operator's max_log_file_globs and \
               max_log_file_depth.",
    },
    KeySpec {
        key: "log.rate_limit",
        kind: Kind::ByteRate,
        help: "Most bytes per second read from the container's stdout+stderr; above it the \
               container's writes block (nothing is dropped). Capped by the operator.",
    },
    KeySpec {
        key: "log.binary",
        kind: Kind::Enum(&["text", "base64"]),
        help: "`text` (default): records hold text, invalid UTF-8 becomes U+FFFD. `base64`: \
               every line is a record and one whose `message` is not exactly its bytes carries \
               them in `log.original_bytes`, so the output can be rebuilt byte for byte \
               (where the operator allows it).",
    },
];
