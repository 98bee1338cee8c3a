//! Shipper settings: a `key = value` file (one per line, `#` comments),
//! checked like module parameters (unknown or malformed keys are errors).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rein_core::params::{ParamError, Params};

use crate::choice::UnknownChoice;
use crate::http::Url;
use crate::peercred;
use crate::record::EncodeOptions;
use crate::redact;
use crate::sink::deadletter::{DeadLetterLimits, DEFAULT_MAX_BYTES_PER_CONTAINER};
use crate::sink::es::{validate_index, EsConfig};
use crate::sink::kafka_config::KafkaConfig;
use crate::sink::nats_config::NatsConfig;
use crate::sink::redis_config::{validate_key, validate_stream, RedisConfig};
use crate::sink::route::{RouteFailure, DEFAULT_ROUTE_FAILURE};
use crate::sink::s3_config::S3Config;
use crate::wal::FullPolicy;

/// Every setting of the shipper (see the README).
pub const KEYS: &[&str] = &[
    "socket",
    "socket_group",
    "max_dead_letter_bytes",
    "dead_letter_full_policy",
    "max_dead_letter_bytes_per_container",
    "state_dir",
    "buffer_max_bytes",
    "buffer_segment_bytes",
    "buffer_fsync_interval",
    "buffer_full_policy",
    "max_line_bytes",
    "max_unparsed_bytes",
    "rotate_max_bytes",
    "parser_burst_bytes",
    "parser_burst_time",
    "parser_threads",
    "rotate_keep",
    "partial_flush",
    "checkpoint_interval",
    "thread_stall_timeout",
    "state_reserve_bytes",
    "host_name",
    "extra_fields",
    "max_timestamp_past",
    "max_timestamp_future",
    "route_failure",
    "es_url",
    "es_index",
    "es_auth_file",
    "es_gzip",
    "es_ca_file",
    "es_batch_records",
    "es_batch_bytes",
    "es_timeout",
    "es_backoff_max",
    "es_dead_letter",
    "es_refresh",
    "es_request_timeout",
    "es_max_response_bytes",
    "kafka_brokers",
    "kafka_topic",
    "kafka_compression",
    "kafka_message_timeout",
    "kafka_batch_records",
    "kafka_batch_bytes",
    "kafka_backoff_max",
    "kafka_dead_letter",
    "kafka_properties",
    "redis_url",
    "redis_stream",
    "redis_batch_records",
    "redis_batch_bytes",
    "redis_dedup_ttl",
    "redis_dedup_prefix",
    "redis_maxlen",
    "redis_auth_file",
    "redis_ca_file",
    "redis_timeout",
    "redis_backoff_max",
    "redis_dead_letter",
    "nats_url",
    "nats_subject",
    "nats_stream",
    "nats_batch_records",
    "nats_batch_bytes",
    "nats_auth_file",
    "nats_ca_file",
    "nats_timeout",
    "nats_backoff_max",
    "nats_dead_letter",
    "s3_endpoint",
    "s3_bucket",
    "s3_region",
    "s3_path_style",
    "s3_allow_http",
    "s3_credentials_file",
    "s3_ca_file",
    "s3_prefix",
    "s3_batch_records",
    "s3_batch_bytes",
    "s3_flush_interval",
    "s3_part_bytes",
    "s3_gzip_level",
    "s3_timeout",
    "s3_request_timeout",
    "s3_backoff_max",
    "s3_dead_letter",
    "cgroup",
    "cgroup_root",
    "cgroup_memory_max",
    "cgroup_cpu_max",
];

/// The shipper's settings.
#[derive(Clone, Debug)]
pub struct ShipperConfig {
    /// `socket`: unix socket the modules connect to (default /run/rein/log-shipper.sock).
    pub socket: PathBuf,
    /// `socket_group`: group (name or gid) whose members may use the socket
    /// besides root (socket mode 0660 instead of 0600; none by default).
    pub socket_group: Option<u32>,
    /// `max_dead_letter_bytes` (default 1GiB) and `dead_letter_full_policy`
    /// (`pause`, default, or `drop`): bound of every dead-letter file;
    /// `max_dead_letter_bytes_per_container` (default 16MiB, at most the
    /// former): one container's share of it.
    pub dead_letter: DeadLetterLimits,
    /// `state_dir`: checkpoints, registrations, disk buffers, counters (default /var/lib/rein/log-shipper).
    pub state_dir: PathBuf,
    /// `buffer_max_bytes`: bound of each sink's disk buffer (default 1GiB).
    pub buffer_max_bytes: u64,
    /// `buffer_segment_bytes`: segment size (default 64MiB, at most a quarter of the bound).
    pub buffer_segment_bytes: u64,
    /// `buffer_fsync_interval`: longest time between an append and its fsync (default 200ms).
    pub buffer_fsync_interval: Duration,
    /// `buffer_full_policy`: `pause` (default) or `drop_oldest`.
    pub buffer_full_policy: FullPolicy,
    /// `max_line_bytes`: longer lines are split into marked parts (default 64KiB).
    pub max_line_bytes: usize,
    /// `max_unparsed_bytes`: per stream, bytes spliced into the sandbox files
    /// but not parsed yet, beyond which the container's pipe is no longer read
    /// (it blocks; default 1GiB, at least 1MiB).
    pub max_unparsed_bytes: u64,
    /// `parser_burst_bytes`: while every stream is less than this far behind
    /// (and for at most `parser_burst_time`), the parser runs only on idle CPU
    /// (`SCHED_IDLE`), so a burst costs the writing container nothing; beyond,
    /// it competes like any thread. `0B`: always compete. Default 256MiB, at most
    /// half of `max_unparsed_bytes`.
    pub parser_burst_bytes: u64,
    /// `parser_burst_time`: see `parser_burst_bytes` (default 5s).
    pub parser_burst_time: Duration,
    /// `parser_threads`: threads parsing containers, each container on one
    /// of them (default `auto`: the CPUs this process may use, at most
    /// [`DEFAULT_MAX_PARSER_THREADS`]; 1 to [`MAX_PARSER_THREADS`]).
    pub parser_threads: usize,
    /// `rotate_max_bytes`: sandbox `stdout`/`stderr` are rotated at this size (default 10MiB).
    pub rotate_max_bytes: u64,
    /// `rotate_keep`: rotated files kept (`stdout.1` ... `stdout.N`, default 5).
    pub rotate_keep: u32,
    /// `partial_flush`: a line without newline is shipped after this long (default 2s).
    pub partial_flush: Duration,
    /// `checkpoint_interval`: how often read offsets are saved (default 200ms).
    pub checkpoint_interval: Duration,
    /// `thread_stall_timeout`: a worker thread (parser, sink) that makes no
    /// progress this long while it has work is logged and counted as stalled
    /// (default 2min, at least 1s).
    pub thread_stall_timeout: Duration,
    /// `state_reserve_bytes`: room kept allocated in `state_dir/reserve` for
    /// registrations and first checkpoints when the state directory's file
    /// system is full (default 4MiB, about 300 containers; `0B`: none).
    pub state_reserve_bytes: u64,
    /// `host_name` and `extra_fields` (a JSON object) of every record.
    pub encode: EncodeOptions,
    /// `es_*`: the Elasticsearch sink, if `es_url` is set.
    pub es: Option<EsConfig>,
    /// `kafka_*`: the Kafka sink, if `kafka_brokers` is set.
    pub kafka: Option<KafkaConfig>,
    /// `redis_*`: the Redis Streams sink, if `redis_url` is set.
    pub redis: Option<RedisConfig>,
    /// `nats_*`: the NATS JetStream sink, if `nats_url` is set.
    pub nats: Option<NatsConfig>,
    /// `s3_*`: the S3 sink, if `s3_endpoint` is set.
    pub s3: Option<S3Config>,
    /// `cgroup`: name of the cgroup the shipper moves into (created under
    /// `cgroup_root`, in each v1 hierarchy or the v2 tree; none by default).
    pub cgroup: Option<String>,
    /// `cgroup_root`: where the cgroup hierarchies are (default /sys/fs/cgroup).
    pub cgroup_root: PathBuf,
    /// `cgroup_memory_max`: written to `memory.max` of that cgroup.
    pub cgroup_memory_max: Option<u64>,
    /// `cgroup_cpu_max`: written to `cpu.max` (`QUOTA PERIOD`, e.g. `50000 100000`).
    pub cgroup_cpu_max: Option<String>,
}

/// Reads `key = value` lines.
pub fn parse_pairs(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Why the settings file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The settings file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A setting is wrong (the error names it).
    #[error("{}: {source}", path.display())]
    Invalid {
        /// The settings file.
        path: PathBuf,
        /// The setting and why.
        source: ParamError,
    },
}

impl ShipperConfig {
    /// Reads the settings file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pairs(&parse_pairs(&text)).map_err(|source| ConfigError::Invalid {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Builds the settings from pairs. An error never shows a secret: the
    /// value it quotes goes through [`redact::setting`] (unknown keys: hidden).
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Self, ParamError> {
        Self::build(pairs).map_err(|mut e| {
            e.value = if KEYS.contains(&e.name.as_str()) {
                redact::setting(&e.name, &e.value)
            } else {
                redact::REDACTED.into()
            };
            e
        })
    }

    fn build(pairs: &[(String, String)]) -> Result<Self, ParamError> {
        let p = Params::new(pairs, KEYS)?;
        let state_dir = p
            .path("state_dir")?
            .unwrap_or_else(|| "/var/lib/rein/log-shipper".into());
        let buffer_max_bytes = p.bytes("buffer_max_bytes")?.unwrap_or(1 << 30);
        let buffer_segment_bytes = p
            .bytes("buffer_segment_bytes")?
            .unwrap_or(64 << 20)
            .min(buffer_max_bytes / 4)
            .max(4096);
        let buffer_full_policy = match p.raw("buffer_full_policy") {
            None => FullPolicy::Pause,
            Some(v) => v
                .parse()
                .map_err(|e: UnknownChoice| p.error("buffer_full_policy", e.to_string()))?,
        };
        let mut encode = EncodeOptions {
            host_name: p.string("host_name"),
            ..Default::default()
        };
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let day = Duration::from_secs(24 * 3600);
        if let Some(d) = p.duration("max_timestamp_past")? {
            if d > 366 * day {
                return Err(p.error("max_timestamp_past", "at most 366 days"));
            }
            encode.max_ts_past_ms = ms(d);
        }
        if let Some(d) = p.duration("max_timestamp_future")? {
            if d > day {
                return Err(p.error("max_timestamp_future", "at most 24h"));
            }
            encode.max_ts_future_ms = ms(d);
        }
        let route_failure = match p.raw("route_failure") {
            None => DEFAULT_ROUTE_FAILURE,
            Some(v) => v
                .parse::<RouteFailure>()
                .map_err(|e| p.error("route_failure", e))?,
        };
        if let Some(raw) = p.raw("extra_fields") {
            match serde_json::from_str::<serde_json::Value>(raw) {
                Ok(serde_json::Value::Object(m)) => encode.extra_fields = m,
                _ => return Err(p.error("extra_fields", "expected a JSON object")),
            }
        }
        let es = match p.raw("es_url") {
            None => None,
            Some(u) => {
                if u.split("://")
                    .nth(1)
                    .is_some_and(|r| r.split(['/', '?']).next().is_some_and(|a| a.contains('@')))
                {
                    return Err(p.error(
                        "es_url",
                        "credentials in the URL are not accepted (they would show in logs): put them in es_auth_file",
                    ));
                }
                let url = Url::parse(u).map_err(|e| p.error("es_url", e))?;
                let index = p
                    .string("es_index")
                    .unwrap_or_else(|| "logs-rein-%Y.%m.%d".into());
                validate_index(&index).map_err(|e| p.error("es_index", e))?;
                let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
                let timeout = p.duration("es_timeout")?.unwrap_or(Duration::from_secs(30));
                if timeout.is_zero() {
                    return Err(p.error("es_timeout", "must be more than 0s"));
                }
                let request_timeout = p
                    .duration("es_request_timeout")?
                    .unwrap_or(Duration::from_secs(120));
                if request_timeout < Duration::from_secs(1) {
                    return Err(p.error("es_request_timeout", "must be at least 1s"));
                }
                let max_response_bytes = p
                    .bytes("es_max_response_bytes")?
                    .unwrap_or(crate::http::DEFAULT_MAX_RESPONSE_BYTES);
                let batch_records = p.u64("es_batch_records")?.unwrap_or(2000).max(1);
                // An answer with an error for every item of a full batch must
                // fit, or such a batch would be refused at every resend.
                let needed = (batch_records.saturating_mul(1 << 10)).max(64 << 10);
                if max_response_bytes < needed {
                    return Err(p.error(
                        "es_max_response_bytes",
                        format!(
                            "must be at least 64KiB and 1KiB per record of es_batch_records ({needed} bytes): the _bulk answer of a full batch must fit"
                        ),
                    ));
                }
                Some(EsConfig {
                    url,
                    index,
                    auth_file: p.path("es_auth_file")?,
                    gzip: p.bool("es_gzip")?.unwrap_or(true),
                    ca_file: p
                        .path("es_ca_file")?
                        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into()),
                    batch_records: to_usize(batch_records),
                    batch_bytes: to_usize(p.bytes("es_batch_bytes")?.unwrap_or(5 << 20).max(1024)),
                    timeout,
                    request_timeout,
                    max_response_bytes,
                    backoff_base: Duration::from_millis(100),
                    backoff_max: p
                        .duration("es_backoff_max")?
                        .unwrap_or(Duration::from_secs(30)),
                    dead_letter: p
                        .path("es_dead_letter")?
                        .unwrap_or_else(|| state_dir.join("dead-letter/elasticsearch.ndjson")),
                    refresh: p.bool("es_refresh")?.unwrap_or(false),
                    route_failure,
                })
            }
        };
        let kafka = match p.raw("kafka_brokers") {
            None => None,
            Some(b) => {
                if !cfg!(feature = "kafka") {
                    return Err(p.error(
                        "kafka_brokers",
                        "this shipper was built without the kafka feature",
                    ));
                }
                let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
                let mut properties = Vec::new();
                for kv in p
                    .raw("kafka_properties")
                    .unwrap_or("")
                    .split(';')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                {
                    let (k, v) = kv.split_once('=').ok_or_else(|| {
                        p.error("kafka_properties", "expected key=value;key=value")
                    })?;
                    properties.push((k.trim().to_string(), v.trim().to_string()));
                }
                Some(KafkaConfig {
                    brokers: b.to_string(),
                    topic: p
                        .string("kafka_topic")
                        .unwrap_or_else(|| "rein-logs".into()),
                    compression: p
                        .string("kafka_compression")
                        .unwrap_or_else(|| "none".into()),
                    message_timeout: p
                        .duration("kafka_message_timeout")?
                        .unwrap_or(Duration::from_secs(30)),
                    batch_records: to_usize(p.u64("kafka_batch_records")?.unwrap_or(5000).max(1)),
                    batch_bytes: to_usize(
                        p.bytes("kafka_batch_bytes")?.unwrap_or(8 << 20).max(1024),
                    ),
                    backoff_max: p
                        .duration("kafka_backoff_max")?
                        .unwrap_or(Duration::from_secs(30)),
                    dead_letter: p
                        .path("kafka_dead_letter")?
                        .unwrap_or_else(|| state_dir.join("dead-letter/kafka.ndjson")),
                    properties,
                    route_failure,
                })
            }
        };
        let redis = match p.raw("redis_url") {
            None => None,
            Some(u) => {
                if !cfg!(feature = "redis") {
                    return Err(p.error(
                        "redis_url",
                        "this shipper was built without the redis feature",
                    ));
                }
                if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                    return Err(p.error("redis_url", "expected redis://HOST:PORT or rediss://"));
                }
                let stream = p
                    .string("redis_stream")
                    .unwrap_or_else(|| "rein-logs".into());
                validate_stream(&stream).map_err(|e| p.error("redis_stream", e))?;
                let dedup_prefix = p
                    .string("redis_dedup_prefix")
                    .unwrap_or_else(|| "rein:dedup".into());
                validate_key(&dedup_prefix).map_err(|e| p.error("redis_dedup_prefix", e))?;
                crate::sink::route::check_redis_stream(stream.as_bytes(), &dedup_prefix)
                    .map_err(|e| p.error("redis_stream", e))?;
                let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
                Some(RedisConfig {
                    url: u.into(),
                    stream,
                    batch_records: to_usize(p.u64("redis_batch_records")?.unwrap_or(1000).max(1)),
                    batch_bytes: to_usize(
                        p.bytes("redis_batch_bytes")?.unwrap_or(4 << 20).max(1024),
                    ),
                    dedup_ttl: p
                        .duration("redis_dedup_ttl")?
                        .unwrap_or(Duration::from_secs(3600))
                        .max(Duration::from_secs(1)),
                    dedup_prefix,
                    maxlen: p.u64("redis_maxlen")?.filter(|n| *n > 0),
                    auth_file: p.path("redis_auth_file")?,
                    ca_file: p.path("redis_ca_file")?,
                    timeout: p
                        .duration("redis_timeout")?
                        .unwrap_or(Duration::from_secs(10)),
                    backoff_max: p
                        .duration("redis_backoff_max")?
                        .unwrap_or(Duration::from_secs(30)),
                    dead_letter: p
                        .path("redis_dead_letter")?
                        .unwrap_or_else(|| state_dir.join("dead-letter/redis.ndjson")),
                    route_failure,
                })
            }
        };
        let nats = nats_config(&p, &state_dir, route_failure)?;
        let s3 = S3Config::from_params(&p, &state_dir, route_failure)?;
        let max_dead_letter_bytes = p
            .bytes("max_dead_letter_bytes")?
            .unwrap_or(1 << 30)
            .max(64 << 10);
        let max_bytes_per_container = match p.bytes("max_dead_letter_bytes_per_container")? {
            None => DEFAULT_MAX_BYTES_PER_CONTAINER.min(max_dead_letter_bytes),
            Some(n) if n > max_dead_letter_bytes => {
                return Err(p.error(
                    "max_dead_letter_bytes_per_container",
                    "must not exceed max_dead_letter_bytes",
                ))
            }
            Some(n) => n.max(4 << 10),
        };
        let dead_letter = DeadLetterLimits {
            max_bytes: max_dead_letter_bytes,
            max_bytes_per_container,
            policy: match p.raw("dead_letter_full_policy") {
                None => DeadLetterLimits::default().policy,
                Some(v) => v
                    .parse()
                    .map_err(|e: UnknownChoice| p.error("dead_letter_full_policy", e))?,
            },
        };
        let socket_group = match p.raw("socket_group") {
            None => None,
            Some(g) => Some(peercred::resolve_group(g).map_err(|e| p.error("socket_group", e))?),
        };
        Ok(ShipperConfig {
            kafka,
            redis,
            nats,
            s3,
            socket_group,
            dead_letter,
            socket: p
                .path("socket")?
                .unwrap_or_else(|| crate::module::DEFAULT_SOCKET.into()),
            buffer_max_bytes,
            buffer_segment_bytes,
            buffer_fsync_interval: p
                .duration("buffer_fsync_interval")?
                .unwrap_or(Duration::from_millis(200)),
            buffer_full_policy,
            max_line_bytes: usize::try_from(
                p.bytes("max_line_bytes")?
                    .unwrap_or(64 * 1024)
                    .clamp(1024, 8 << 20),
            )
            .unwrap_or(65536),
            max_unparsed_bytes: p
                .bytes("max_unparsed_bytes")?
                .unwrap_or(1 << 30)
                .max(1 << 20),
            parser_burst_bytes: p.bytes("parser_burst_bytes")?.unwrap_or(256 << 20),
            parser_burst_time: p
                .duration("parser_burst_time")?
                .unwrap_or(Duration::from_secs(5)),
            parser_threads: parser_threads(&p)?,
            rotate_max_bytes: p.bytes("rotate_max_bytes")?.unwrap_or(10 << 20).max(4096),
            rotate_keep: u32::try_from(p.u64("rotate_keep")?.unwrap_or(5).clamp(1, 1000))
                .unwrap_or(5),
            partial_flush: p
                .duration("partial_flush")?
                .unwrap_or(Duration::from_secs(2)),
            checkpoint_interval: p
                .duration("checkpoint_interval")?
                .unwrap_or(Duration::from_millis(200)),
            thread_stall_timeout: p
                .duration("thread_stall_timeout")?
                .unwrap_or(Duration::from_secs(120))
                .max(Duration::from_secs(1)),
            state_reserve_bytes: p.bytes("state_reserve_bytes")?.unwrap_or(4 << 20),
            encode,
            es,
            cgroup: p.string("cgroup"),
            cgroup_root: p
                .path("cgroup_root")?
                .unwrap_or_else(|| "/sys/fs/cgroup".into()),
            cgroup_memory_max: p.bytes("cgroup_memory_max")?,
            cgroup_cpu_max: p.string("cgroup_cpu_max"),
            state_dir,
        })
    }
}

/// Most parser threads (`parser_threads`): each keeps a read window and
/// scratch buffers, and more threads than cores only add switches.
pub const MAX_PARSER_THREADS: usize = 16;
/// Most parser threads `auto` starts: past them the shared disk buffers'
/// writers, not parsing, bound the rate.
pub const DEFAULT_MAX_PARSER_THREADS: usize = 8;

/// `parser_threads`: 1 to [`MAX_PARSER_THREADS`], or `auto` (the default): the
/// CPUs this process may use (affinity and cgroup quota, as
/// `available_parallelism` sees them) up to [`DEFAULT_MAX_PARSER_THREADS`].
fn parser_threads(p: &Params) -> Result<usize, ParamError> {
    if p.raw("parser_threads").map(str::trim) == Some("auto") {
        return Ok(auto_parser_threads());
    }
    match p.u64("parser_threads")? {
        Some(0) => Err(p.error("parser_threads", "must be at least 1")),
        Some(n) if n > MAX_PARSER_THREADS as u64 => {
            Err(p.error("parser_threads", format!("at most {MAX_PARSER_THREADS}")))
        }
        Some(n) => Ok(usize::try_from(n).unwrap_or(1)),
        None => Ok(auto_parser_threads()),
    }
}

/// `parser_threads = auto`: the CPUs this process may use, at most
/// [`DEFAULT_MAX_PARSER_THREADS`].
fn auto_parser_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(DEFAULT_MAX_PARSER_THREADS)
}

/// The `nats_*` settings, if `nats_url` is set.
fn nats_config(
    p: &Params,
    state_dir: &Path,
    route_failure: RouteFailure,
) -> Result<Option<NatsConfig>, ParamError> {
    let Some(u) = p.raw("nats_url") else {
        return Ok(None);
    };
    let servers = crate::sink::nats_config::parse_servers(u).map_err(|e| p.error("nats_url", e))?;
    let subject = p
        .string("nats_subject")
        .unwrap_or_else(|| "rein.logs".into());
    crate::sink::nats_config::validate_subject(&subject).map_err(|e| p.error("nats_subject", e))?;
    let stream = p.string("nats_stream");
    if let Some(s) = &stream {
        if s.is_empty()
            || s.len() > 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        {
            return Err(p.error("nats_stream", "a stream name has 1 to 64 of [a-zA-Z0-9_-]"));
        }
    }
    let timeout = p
        .duration("nats_timeout")?
        .unwrap_or(Duration::from_secs(10));
    if timeout < Duration::from_millis(100) {
        return Err(p.error("nats_timeout", "must be at least 100ms"));
    }
    let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    Ok(Some(NatsConfig {
        servers,
        subject,
        stream,
        batch_records: to_usize(
            p.u64("nats_batch_records")?
                .unwrap_or(1000)
                .clamp(1, 100_000),
        ),
        batch_bytes: to_usize(p.bytes("nats_batch_bytes")?.unwrap_or(4 << 20).max(1024)),
        auth_file: p.path("nats_auth_file")?,
        ca_file: p
            .path("nats_ca_file")?
            .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into()),
        timeout,
        backoff_max: p
            .duration("nats_backoff_max")?
            .unwrap_or(Duration::from_secs(30)),
        dead_letter: p
            .path("nats_dead_letter")?
            .unwrap_or_else(|| state_dir.join("dead-letter/nats.ndjson")),
        route_failure,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_and_refuses_unknown_keys() {
        let pairs = parse_pairs(
            "# shipper\nstate_dir = /tmp/x\nes_url = https://es:9200\nbuffer_full_policy = drop_oldest\nextra_fields = {\"dc\":\"eu-1\"}\n",
        );
        let c = ShipperConfig::from_pairs(&pairs).unwrap();
        assert_eq!(c.buffer_full_policy, FullPolicy::DropOldest);
        assert!(c.es.as_ref().unwrap().url.tls);
        assert_eq!(c.encode.extra_fields["dc"], "eu-1");
        let bad = parse_pairs("es_urll = http://x\n");
        assert!(ShipperConfig::from_pairs(&bad)
            .unwrap_err()
            .to_string()
            .contains("es_urll"));
        let bad = parse_pairs("es_url = http://x\nes_index = Bad/Index\n");
        assert!(ShipperConfig::from_pairs(&bad).is_err());
        assert_eq!(c.es.as_ref().unwrap().route_failure, DEFAULT_ROUTE_FAILURE);
        assert_eq!(
            c.encode.max_ts_past_ms,
            crate::record::encode::DEFAULT_TS_PAST_MS
        );
        let c = ShipperConfig::from_pairs(&parse_pairs(
            "es_url = http://x\nroute_failure = wait\nmax_timestamp_past = 2h\nmax_timestamp_future = 1m\n",
        ))
        .unwrap();
        assert_eq!(c.es.unwrap().route_failure, RouteFailure::Wait);
        assert_eq!(c.encode.max_ts_past_ms, 7_200_000);
        assert_eq!(c.encode.max_ts_future_ms, 60_000);
        for (bad, key) in [
            ("route_failure = sometimes\n", "route_failure"),
            ("max_timestamp_future = 2d\n", "max_timestamp_future"),
            ("max_timestamp_future = 48h\n", "max_timestamp_future"),
        ] {
            let e = ShipperConfig::from_pairs(&parse_pairs(bad)).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn parser_threads_default_to_the_cpus_and_are_bounded() {
        let cpus = auto_parser_threads();
        let of = |text: &str| ShipperConfig::from_pairs(&parse_pairs(text));
        assert_eq!(of("").unwrap().parser_threads, cpus);
        assert_eq!(of("parser_threads = auto\n").unwrap().parser_threads, cpus);
        assert_eq!(of("parser_threads = 3\n").unwrap().parser_threads, 3);
        for bad in [
            "parser_threads = 0\n",
            "parser_threads = 17\n",
            "parser_threads = many\n",
        ] {
            let e = of(bad).unwrap_err().to_string();
            assert!(e.contains("parser_threads"), "{e}");
        }
    }

    #[test]
    fn errors_and_debug_never_show_secrets() {
        for text in [
            "redis_url = redis://u:hunter2@\nredis_stream = a b\n",
            "redis_url = http://u:hunter2@x\n",
            "kafka_brokers = b:1\nkafka_properties = sasl.password=hunter2;junk\n",
            "es_url = https://elastic:hunter2@es:9200\n",
            "es_urll = https://elastic:hunter2@es:9200\n",
        ] {
            let e = ShipperConfig::from_pairs(&parse_pairs(text)).unwrap_err();
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        let c = ShipperConfig::from_pairs(&parse_pairs(
            "kafka_brokers = b:1\nkafka_properties = sasl.username=u;sasl.password=hunter2\nredis_url = redis://u:hunter3@r:1\n",
        ));
        if let Ok(c) = c {
            let shown = format!("{c:?}{c:#?}");
            assert!(!shown.contains("hunter"), "{shown}");
        }
    }

    #[test]
    fn socket_and_dead_letter_settings() {
        let c = ShipperConfig::from_pairs(&parse_pairs("")).unwrap();
        assert_eq!(c.socket_group, None);
        assert_eq!(c.dead_letter, DeadLetterLimits::default());
        let c = ShipperConfig::from_pairs(&parse_pairs(
            "socket_group = root\nmax_dead_letter_bytes = 10MiB\ndead_letter_full_policy = drop\n",
        ))
        .unwrap();
        assert_eq!(c.socket_group, Some(0));
        assert_eq!(c.dead_letter.max_bytes, 10 << 20);
        assert_eq!(c.dead_letter.max_bytes_per_container, 10 << 20);
        let c =
            ShipperConfig::from_pairs(&parse_pairs("max_dead_letter_bytes_per_container = 1MiB\n"))
                .unwrap();
        assert_eq!(c.dead_letter.max_bytes_per_container, 1 << 20);
        assert_eq!(c.dead_letter.max_bytes, 1 << 30);
        for bad in [
            "socket_group = no-such-group-rein\n",
            "dead_letter_full_policy = later\n",
            "max_dead_letter_bytes_per_container = 2GiB\n",
        ] {
            let e = ShipperConfig::from_pairs(&parse_pairs(bad)).unwrap_err();
            assert!(
                e.to_string().contains(bad.split(' ').next().unwrap()),
                "{e}"
            );
        }
    }

    #[test]
    fn nats_settings() {
        let pairs =
            parse_pairs("state_dir = /s\nnats_url = nats://127.0.0.1:4222\nnats_stream = LOGS\n");
        let n = ShipperConfig::from_pairs(&pairs).unwrap().nats.unwrap();
        assert_eq!(n.subject, "rein.logs");
        assert_eq!(n.stream.as_deref(), Some("LOGS"));
        assert_eq!(n.timeout, Duration::from_secs(10));
        assert_eq!(n.dead_letter, PathBuf::from("/s/dead-letter/nats.ndjson"));
        assert!(ShipperConfig::from_pairs(&parse_pairs(""))
            .unwrap()
            .nats
            .is_none());
        for bad in [
            "nats_url = http://x\n",
            "nats_url = nats://u:hunter2@x\n",
            "nats_url = nats://x\nnats_subject = a.*\n",
            "nats_url = nats://x\nnats_subject = $JS.API.INFO\n",
            "nats_url = nats://x\nnats_stream = a.b\n",
            "nats_url = nats://x\nnats_timeout = 1ms\n",
        ] {
            let e = ShipperConfig::from_pairs(&parse_pairs(bad)).unwrap_err();
            assert!(e.to_string().contains("nats_"), "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_settings() {
        let pairs = parse_pairs(
            "state_dir = /s\nredis_url = redis://127.0.0.1:6379/2\nredis_maxlen = 100000\nredis_dedup_ttl = 2h\n",
        );
        let r = ShipperConfig::from_pairs(&pairs).unwrap().redis.unwrap();
        assert_eq!(r.stream, "rein-logs");
        assert_eq!(r.maxlen, Some(100_000));
        assert_eq!(r.dedup_ttl, Duration::from_secs(7200));
        assert_eq!(r.dead_letter, PathBuf::from("/s/dead-letter/redis.ndjson"));
        for bad in [
            "redis_url = http://x\n",
            "redis_url = redis://x\nredis_stream = a b\n",
            "redis_url = redis://x\nredis_maxlen = lots\n",
            "redis_url = redis://x\nredis_stream = rein:logs\n",
            "redis_url = redis://x\nredis_dedup_prefix = m\nredis_stream = m:1\n",
        ] {
            let e = ShipperConfig::from_pairs(&parse_pairs(bad)).unwrap_err();
            assert!(e.to_string().contains("redis_"), "{e}");
        }
    }
}
