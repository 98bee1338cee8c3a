//! The module's settings: its parameters (checked when the agent loads it)
//! and, from a task's labels and variables, a container's options within
//! the operator's caps. A bad label fails that container only, with an error
//! naming the label and the reason.

use std::path::PathBuf;
use std::time::Duration;

use rein_core::config::{ConfigError, TaskConfig};
use rein_core::params::{ParamError, Params};

use crate::file_spec::{self, FileCaps, SpecCaps};
use crate::module::LoggerError;
use crate::proto::{BinaryMode, ContainerOptions, MultilineSpec, SinkKind};
use crate::route::{
    check_prefix, validate_index, validate_s3_prefix, validate_stream, validate_subject,
    validate_topic, RouteError,
};

/// Default path of the shipper's socket.
pub const DEFAULT_SOCKET: &str = "/run/rein/log-shipper.sock";

/// Longest `shipper_timeout` accepted: a launch never waits longer for the
/// shipper (and `0s` would mean waiting forever).
pub const MAX_SHIPPER_TIMEOUT: Duration = Duration::from_secs(60);

/// Every module parameter (see the README for each).
pub const PARAMS: &[&str] = &[
    "shipper_socket",
    "shipper_timeout",
    "default_sink",
    "allowed_sinks",
    "allowed_index_prefixes",
    "allowed_topic_prefixes",
    "allowed_redis_stream_prefixes",
    "allowed_nats_subject_prefixes",
    "allowed_s3_prefixes",
    "default_rate_limit",
    "max_rate_limit",
    "multiline_max_lines",
    "multiline_max_bytes",
    "multiline_max_timeout",
    "pipe_buffer_bytes",
    "max_log_file_globs",
    "max_log_file_depth",
    "max_log_files",
    "max_log_dir_entries",
    "log_file_max_backlog",
    "allow_binary",
];

/// Operator settings of the module.
#[derive(Clone, Debug)]
pub struct ModuleConfig {
    /// `shipper_socket`: the shipper's unix socket.
    pub socket: PathBuf,
    /// `shipper_timeout`: longest wait for the shipper in `prepare`, all steps
    /// together (default 1s, above 0 and at most [`MAX_SHIPPER_TIMEOUT`]).
    pub timeout: Duration,
    /// `default_sink`: sink of containers that choose none (default elasticsearch).
    pub default_sink: SinkKind,
    /// `allowed_sinks`: sinks a task may choose (default elasticsearch,none).
    pub allowed_sinks: Vec<SinkKind>,
    /// `allowed_index_prefixes`: a task's `log.index` must start with one (empty: any).
    pub index_prefixes: Vec<String>,
    /// `allowed_topic_prefixes`: a task's `log.topic` must start with one (empty: any).
    pub topic_prefixes: Vec<String>,
    /// `allowed_redis_stream_prefixes`: a task's `log.redis_stream` must start with one (empty: any).
    pub redis_stream_prefixes: Vec<String>,
    /// `allowed_nats_subject_prefixes`: a task's `log.nats_subject` must start with one (empty: any).
    pub nats_subject_prefixes: Vec<String>,
    /// `allowed_s3_prefixes`: a task's `log.s3_prefix` must start with one (empty: any).
    pub s3_prefixes: Vec<String>,
    /// `default_rate_limit`: bytes/s per container when the task sets none (0: unlimited).
    pub default_rate_limit: u64,
    /// `max_rate_limit`: cap of `log.rate_limit` (none by default).
    pub max_rate_limit: Option<u64>,
    /// `multiline_max_lines`: cap of `log.multiline.max_lines` (default 500).
    pub ml_max_lines: u64,
    /// `multiline_max_bytes`: cap of `log.multiline.max_bytes` (default 1MiB).
    pub ml_max_bytes: u64,
    /// `multiline_max_timeout`: cap of `log.multiline.timeout` (default 10s).
    pub ml_max_timeout: Duration,
    /// `pipe_buffer_bytes`: capacity asked for each pipe (default 1MiB; best effort).
    pub pipe_buffer: u64,
    /// `max_log_file_globs`, `max_log_file_depth`: bounds of `log.files` (default 8, 4).
    pub file_spec_caps: SpecCaps,
    /// `max_log_files`, `max_log_dir_entries`, `log_file_max_backlog`: what the
    /// shipper does for one container's log files at most (default 32, 4096, 256MiB).
    pub file_caps: FileCaps,
    /// `allow_binary`: whether a task may choose `log.binary=base64` (default true).
    pub allow_binary: bool,
}

impl ModuleConfig {
    /// Reads and checks the parameters.
    pub fn from_params(pairs: &[(String, String)]) -> Result<Self, LoggerError> {
        let p = Params::new(pairs, PARAMS)?;
        let sink = |name: &str, v: &str| {
            SinkKind::parse(v).ok_or_else(|| {
                p.error(
                    name,
                    "expected elasticsearch, kafka, redis, nats, s3 or none",
                )
            })
        };
        let default_sink = sink(
            "default_sink",
            p.raw("default_sink").unwrap_or("elasticsearch"),
        )?;
        let mut allowed_sinks = Vec::new();
        let list = p.list("allowed_sinks");
        if list.is_empty() {
            allowed_sinks = vec![SinkKind::Elasticsearch, SinkKind::None];
        }
        for s in &list {
            allowed_sinks.push(sink("allowed_sinks", s)?);
        }
        if !allowed_sinks.contains(&default_sink) {
            return Err(p.error("default_sink", "not among allowed_sinks").into());
        }
        Ok(ModuleConfig {
            socket: p
                .path("shipper_socket")?
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            timeout: shipper_timeout(&p)?,
            default_sink,
            allowed_sinks,
            index_prefixes: p.list("allowed_index_prefixes"),
            topic_prefixes: p.list("allowed_topic_prefixes"),
            redis_stream_prefixes: p.list("allowed_redis_stream_prefixes"),
            nats_subject_prefixes: p.list("allowed_nats_subject_prefixes"),
            s3_prefixes: p.list("allowed_s3_prefixes"),
            default_rate_limit: p.byte_rate("default_rate_limit")?.unwrap_or(0),
            max_rate_limit: p.byte_rate("max_rate_limit")?,
            ml_max_lines: p.u64("multiline_max_lines")?.unwrap_or(500),
            ml_max_bytes: p.bytes("multiline_max_bytes")?.unwrap_or(1 << 20),
            ml_max_timeout: p
                .duration("multiline_max_timeout")?
                .unwrap_or(Duration::from_secs(10)),
            pipe_buffer: p.bytes("pipe_buffer_bytes")?.unwrap_or(1 << 20),
            file_spec_caps: SpecCaps {
                max_globs: count_param(&p, "max_log_file_globs", 8)?,
                max_depth: count_param(&p, "max_log_file_depth", 4)?,
            },
            file_caps: FileCaps {
                max_files: u32::try_from(count_param(&p, "max_log_files", 32)?).unwrap_or(u32::MAX),
                max_dir_entries: u32::try_from(count_param(&p, "max_log_dir_entries", 4096)?)
                    .unwrap_or(u32::MAX),
                max_backlog: p
                    .bytes("log_file_max_backlog")?
                    .unwrap_or(FileCaps::default().max_backlog),
            },
            allow_binary: p.bool("allow_binary")?.unwrap_or(true),
        })
    }

    /// The container's options from its labels/variables, within the caps.
    pub fn options(&self, cfg: &TaskConfig) -> Result<ContainerOptions, ConfigError> {
        let sink = match cfg.get("log.sink") {
            Some(s) => {
                let k = SinkKind::parse(&s.raw).ok_or_else(|| s.error("unknown sink"))?;
                if !self.allowed_sinks.contains(&k) {
                    let names: Vec<&str> = self.allowed_sinks.iter().map(|k| k.name()).collect();
                    return Err(s.error(format!("this agent allows only: {}", names.join(", "))));
                }
                k
            }
            None => self.default_sink,
        };
        // The route label of the chosen sink (the others' are ignored).
        type Validate = fn(&str) -> Result<(), RouteError>;
        let routes: [(&str, SinkKind, Validate, &[String]); 5] = [
            (
                "log.index",
                SinkKind::Elasticsearch,
                validate_index,
                &self.index_prefixes,
            ),
            (
                "log.topic",
                SinkKind::Kafka,
                validate_topic,
                &self.topic_prefixes,
            ),
            (
                "log.redis_stream",
                SinkKind::Redis,
                validate_stream,
                &self.redis_stream_prefixes,
            ),
            (
                "log.nats_subject",
                SinkKind::Nats,
                validate_subject,
                &self.nats_subject_prefixes,
            ),
            (
                "log.s3_prefix",
                SinkKind::S3,
                validate_s3_prefix,
                &self.s3_prefixes,
            ),
        ];
        let mut route = String::new();
        for (label, kind, validate, prefixes) in &routes {
            if let Some(s) = cfg.get(label).filter(|_| sink == *kind) {
                validate(&s.raw).map_err(|e| s.error(e))?;
                check_prefix(&s.raw, prefixes).map_err(|e| s.error(e))?;
                route = s.raw.clone();
            }
        }
        let files = match cfg.get("log.files") {
            Some(s) => {
                let sink_ok = |v: &str| -> Result<SinkKind, String> {
                    let k = SinkKind::parse(v).ok_or("unknown sink")?;
                    if !self.allowed_sinks.contains(&k) {
                        let names: Vec<&str> =
                            self.allowed_sinks.iter().map(|k| k.name()).collect();
                        return Err(format!("this agent allows only: {}", names.join(", ")));
                    }
                    Ok(k)
                };
                let route_ok = |k: SinkKind, r: &str| -> Result<(), String> {
                    let (_, _, validate, prefixes) = routes
                        .iter()
                        .find(|(_, kind, _, _)| *kind == k)
                        .ok_or_else(|| format!("the {} sink takes no route", k.name()))?;
                    validate(r).map_err(|e| e.to_string())?;
                    check_prefix(r, prefixes).map_err(|e| e.to_string())
                };
                let indented = || self.multiline_limits(cfg).map_err(|e| e.to_string());
                file_spec::parse(
                    &s.raw,
                    self.file_spec_caps,
                    sink,
                    &sink_ok,
                    &route_ok,
                    &indented,
                )
                .map_err(|e| s.error(e))?
            }
            None => Vec::new(),
        };
        let pattern = cfg.get("log.multiline.pattern");
        let mode = cfg.get("log.multiline");
        let multiline = match (mode.map(|m| m.raw.as_str()), pattern) {
            (Some("off"), _) | (None, None) => None,
            (_, pattern) => {
                if let Some(p) = pattern {
                    compile_pattern(&p.raw).map_err(|e| p.error(e))?;
                }
                Some(MultilineSpec {
                    pattern: pattern.map(|p| p.raw.clone()),
                    ..self.multiline_limits(cfg)?
                })
            }
        };
        let rate_limit = match cfg.get("log.rate_limit") {
            Some(s) => {
                s.ensure_at_most(self.max_rate_limit, |v| format!("{v} bytes/s"))?;
                cfg.u64("log.rate_limit").unwrap_or(0)
            }
            None => self.default_rate_limit,
        };
        let binary = match cfg.get("log.binary") {
            Some(s) => {
                let mode =
                    BinaryMode::parse(&s.raw).ok_or_else(|| s.error("expected text or base64"))?;
                if mode != BinaryMode::Text && !self.allow_binary {
                    return Err(s.error("this agent allows only: text (allow_binary=false)"));
                }
                mode
            }
            None => BinaryMode::Text,
        };
        Ok(ContainerOptions {
            sink,
            route,
            multiline,
            rate_limit,
            files,
            file_caps: self.file_caps,
            binary,
        })
    }
}

impl ModuleConfig {
    /// The multiline limits of `log.multiline.*` (defaults 100 lines, 64KiB,
    /// 1s), each within the operator's cap; no pattern.
    fn multiline_limits(&self, cfg: &TaskConfig) -> Result<MultilineSpec, ConfigError> {
        let mut spec = MultilineSpec {
            pattern: None,
            max_lines: 100,
            max_bytes: 64 * 1024,
            timeout_ms: 1000,
        };
        if let Some(s) = cfg.get("log.multiline.max_lines") {
            s.ensure_at_most(Some(self.ml_max_lines), |v| v.to_string())?;
            spec.max_lines = u32::try_from(cfg.u64("log.multiline.max_lines").unwrap_or(1).max(1))
                .unwrap_or(u32::MAX);
        }
        if let Some(s) = cfg.get("log.multiline.max_bytes") {
            s.ensure_at_most(Some(self.ml_max_bytes), |v| format!("{v} bytes"))?;
            spec.max_bytes = cfg.u64("log.multiline.max_bytes").unwrap_or(1).max(1);
        }
        if let Some(s) = cfg.get("log.multiline.timeout") {
            if let rein_core::config::Value::Duration(d) = s.value {
                if d > self.ml_max_timeout {
                    return Err(s.error(format!(
                        "above the operator's cap of {:?}",
                        self.ml_max_timeout
                    )));
                }
                spec.timeout_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
            }
        }
        spec.max_lines = spec
            .max_lines
            .min(u32::try_from(self.ml_max_lines).unwrap_or(u32::MAX));
        spec.max_bytes = spec.max_bytes.min(self.ml_max_bytes);
        Ok(spec)
    }
}

/// `shipper_timeout`: refused when 0 (it would make launches wait forever
/// for a wedged shipper) or above [`MAX_SHIPPER_TIMEOUT`].
fn shipper_timeout(p: &Params) -> Result<Duration, ParamError> {
    let t = p
        .duration("shipper_timeout")?
        .unwrap_or(Duration::from_secs(1));
    if t.is_zero() || t > MAX_SHIPPER_TIMEOUT {
        return Err(p.error(
            "shipper_timeout",
            format!(
                "must be above 0 and at most {MAX_SHIPPER_TIMEOUT:?} (a launch waits that long at most for the shipper)"
            ),
        ));
    }
    Ok(t)
}

/// A whole-number parameter above 0, `default` when unset.
fn count_param(p: &Params, name: &str, default: u64) -> Result<usize, ParamError> {
    match p.u64(name)? {
        Some(0) => Err(p.error(name, "must be at least 1")),
        Some(v) => Ok(usize::try_from(v).unwrap_or(usize::MAX)),
        None => Ok(usize::try_from(default).unwrap_or(usize::MAX)),
    }
}

/// A task's multiline pattern that does not compile within the limits.
#[derive(Debug, thiserror::Error)]
#[error("invalid pattern: {0}")]
pub struct PatternError(#[from] regex::Error);

/// Compiles a task's multiline pattern with size limits (linear-time engine).
pub fn compile_pattern(p: &str) -> Result<regex::bytes::Regex, PatternError> {
    Ok(regex::bytes::RegexBuilder::new(p)
        .size_limit(256 * 1024)
        .dfa_size_limit(512 * 1024)
        .nest_limit(32)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rein_core::container::ContainerSpec;

    fn config(params: &[(&str, &str)]) -> Result<ModuleConfig, LoggerError> {
        let pairs: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ModuleConfig::from_params(&pairs)
    }

    fn options(
        cfg: &ModuleConfig,
        labels: &[(&str, &str)],
    ) -> Result<ContainerOptions, ConfigError> {
        let spec = ContainerSpec {
            task_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ContainerSpec::default()
        };
        cfg.options(&TaskConfig::parse(&spec)?)
    }

    #[test]
    fn parameters_default_and_refuse_what_makes_no_sense() {
        let c = config(&[]).unwrap();
        assert_eq!(c.default_sink, SinkKind::Elasticsearch);
        assert_eq!(c.timeout, Duration::from_secs(1));
        let e = config(&[("default_sink", "kafka")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not among allowed_sinks"), "{e}");
        let e = config(&[("shipper_timeout", "0s")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("above 0 and at most"), "{e}");
    }

    #[test]
    fn a_log_file_s_indented_multiline_stays_within_the_operator_s_caps() {
        use crate::proto::FileMultiline;
        let c = config(&[
            ("multiline_max_lines", "50"),
            ("multiline_max_bytes", "4KiB"),
        ])
        .unwrap();
        let o = options(&c, &[("rein.log.files", "gc=gc.log;multiline=indented")]).unwrap();
        let FileMultiline::Indented(spec) = &o.files[0].multiline else {
            panic!("{:?}", o.files[0].multiline);
        };
        assert_eq!((spec.max_lines, spec.max_bytes), (50, 4096));
        assert_eq!((spec.pattern.as_deref(), spec.timeout_ms), (None, 1000));
        // The container's own limits apply to it too.
        let o = options(
            &c,
            &[
                ("rein.log.files", "gc=gc.log;multiline=indented"),
                ("rein.log.multiline.max_lines", "20"),
            ],
        )
        .unwrap();
        assert!(matches!(&o.files[0].multiline, FileMultiline::Indented(s) if s.max_lines == 20));
        let e = options(
            &c,
            &[
                ("rein.log.files", "gc=gc.log;multiline=indented"),
                ("rein.log.multiline.max_lines", "60"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rein.log.files") && e.contains("log.multiline.max_lines"),
            "{e}"
        );
    }

    #[test]
    fn a_container_s_options_stay_within_the_operator_s_caps() {
        let c = config(&[
            ("allowed_sinks", "elasticsearch,kafka,none"),
            ("allowed_index_prefixes", "team-"),
            ("max_rate_limit", "1MB/s"),
        ])
        .unwrap();
        let o = options(&c, &[("rein.log.index", "team-a-%Y")]).unwrap();
        assert_eq!(
            (o.sink, o.route.as_str()),
            (SinkKind::Elasticsearch, "team-a-%Y")
        );
        let e = options(&c, &[("rein.log.index", "other")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("team-"), "{e}");
        let e = options(&c, &[("rein.log.sink", "redis")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("allows only"), "{e}");
        let e = options(&c, &[("rein.log.rate_limit", "2MB/s")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.rate_limit"), "{e}");
        let c = config(&[
            ("allowed_sinks", "nats,none"),
            ("default_sink", "nats"),
            ("allowed_nats_subject_prefixes", "team-a."),
        ])
        .unwrap();
        let o = options(&c, &[("rein.log.nats_subject", "team-a.logs")]).unwrap();
        assert_eq!((o.sink, o.route.as_str()), (SinkKind::Nats, "team-a.logs"));
        for (bad, why) in [
            ("team-b.logs", "team-a."),
            ("team-a.>", "no wildcards"),
            ("$JS.API.STREAM.DELETE.X", "server's and the shipper's own"),
        ] {
            let e = options(&c, &[("rein.log.nats_subject", bad)])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("rein.log.nats_subject") && e.contains(why),
                "{e}"
            );
        }
        // A log file's own subject follows the same rules.
        let o = options(&c, &[("rein.log.files", "gc=gc.log;route=team-a.gc")]).unwrap();
        assert_eq!(o.files[0].route.as_deref(), Some("team-a.gc"));
        for bad in ["gc=gc.log;route=team-b.gc", "gc=gc.log;route=team-a.>"] {
            let e = options(&c, &[("rein.log.files", bad)])
                .unwrap_err()
                .to_string();
            assert!(e.contains("rein.log.files"), "{e}");
        }
        let c3 = config(&[
            ("allowed_sinks", "s3,none"),
            ("default_sink", "s3"),
            ("allowed_s3_prefixes", "team-a/"),
        ])
        .unwrap();
        let o = options(&c3, &[("rein.log.s3_prefix", "team-a/app")]).unwrap();
        assert_eq!((o.sink, o.route.as_str()), (SinkKind::S3, "team-a/app"));
        for bad in ["team-b/app", "team-a/../b", "team-a//x"] {
            let e = options(&c3, &[("rein.log.s3_prefix", bad)])
                .unwrap_err()
                .to_string();
            assert!(e.contains("log.s3_prefix"), "{e}");
        }
        let e = options(&c, &[("rein.log.multiline.pattern", "(")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid pattern"), "{e}");
    }

    #[test]
    fn binary_records_are_a_task_s_choice_the_operator_can_refuse() {
        let c = config(&[]).unwrap();
        assert_eq!(options(&c, &[]).unwrap().binary, BinaryMode::Text);
        let o = options(&c, &[("rein.log.binary", "base64")]).unwrap();
        assert_eq!(o.binary, BinaryMode::Base64);
        let e = options(&c, &[("rein.log.binary", "hex")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rein.log.binary"), "{e}");
        let c = config(&[("allow_binary", "false")]).unwrap();
        assert_eq!(
            options(&c, &[("rein.log.binary", "text")]).unwrap().binary,
            BinaryMode::Text
        );
        let e = options(&c, &[("rein.log.binary", "base64")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rein.log.binary") && e.contains("allow_binary=false"),
            "{e}"
        );
    }
}
