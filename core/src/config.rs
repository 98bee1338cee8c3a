//! Per-task configuration: labels and prefixed variables parsed against the schema.
//!
//! Precedence, most specific first: a `REIN_*` variable of `CommandInfo.environment`
//! (the only channel that reaches tasks of a task group), then `TaskInfo.labels`,
//! then `ExecutorInfo.labels`. Labels outside our namespace are ignored; anything
//! inside it must be a known key with a well-formed value, or the container's launch
//! fails with a message naming the label or variable, the value and the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::container::ContainerSpec;
use crate::schema::{self, KeySpec, Kind, ENV_PREFIX, LABEL_PREFIX};
use crate::units;

/// Longest value accepted for any key, before kind-specific checks.
pub const MAX_VALUE_LEN: usize = 4096;

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A variable of `CommandInfo.environment`.
    Environment(String),
    /// A label of `TaskInfo.labels`.
    TaskLabel(String),
    /// A label of `ExecutorInfo.labels`.
    ExecutorLabel(String),
    /// An operator default (module parameter).
    Default(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Environment(name) => write!(f, "variable '{name}'"),
            Origin::TaskLabel(name) => write!(f, "task label '{name}'"),
            Origin::ExecutorLabel(name) => write!(f, "executor label '{name}'"),
            Origin::Default(name) => write!(f, "module parameter '{name}'"),
        }
    }
}

/// A configuration error, naming the label or variable, the value, the reason and
/// the module that reads the key (`(blkio isolator)`), so an error raised while
/// another module prepares the container still points at the right one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin} = '{value}': {reason}{}", owner.map(|o| format!(" ({})", module_title(o))).unwrap_or_default())]
pub struct ConfigError {
    /// Where the bad value came from.
    pub origin: Origin,
    /// The value as written (truncated when very long).
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
    /// The module whose key it is (see [`schema::owner_of`]); `None` for common keys
    /// and operator parameters.
    pub owner: Option<&'static str>,
}

/// How a module is named in messages.
fn module_title(module: &str) -> String {
    match module {
        "logger" => "logger".to_owned(),
        isolator => format!("{isolator} isolator"),
    }
}

impl Origin {
    /// The schema key the label or variable stands for (lower case, as written).
    fn key(&self) -> Option<String> {
        match self {
            Origin::TaskLabel(name) | Origin::ExecutorLabel(name) => {
                name.strip_prefix(LABEL_PREFIX).map(str::to_owned)
            }
            Origin::Environment(name) => name.strip_prefix(ENV_PREFIX).map(str::to_ascii_lowercase),
            Origin::Default(_) => None,
        }
    }
}

impl ConfigError {
    fn new(origin: Origin, value: &str, reason: impl std::fmt::Display) -> Self {
        let owner = origin.key().and_then(|k| schema::owner_of(&k));
        let mut value = value.to_owned();
        if value.len() > 80 {
            let mut cut = 80;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
            value.push('…');
        }
        Self {
            origin,
            value,
            reason: reason.to_string(),
            owner,
        }
    }
}

/// A device a per-device value applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeviceRef {
    /// The block device holding the container's sandbox.
    Sandbox,
    /// A block device path such as `/dev/sdb`.
    Path(String),
}

/// A parsed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Bits per second.
    Bandwidth(u64),
    /// Bytes per second.
    ByteRate(u64),
    /// Bytes.
    Bytes(u64),
    /// A whole number.
    Count(u64),
    /// A duration.
    Duration(Duration),
    /// A boolean.
    Bool(bool),
    /// Text or an enum word.
    Text(String),
    /// Values per device.
    PerDevice(Vec<(DeviceRef, Value)>),
}

impl Value {
    /// The number inside a numeric value (bits/s, bytes/s, bytes or count).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Bandwidth(v) | Value::ByteRate(v) | Value::Bytes(v) | Value::Count(v) => {
                Some(*v)
            }
            _ => None,
        }
    }
}

/// One key's value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The parsed value.
    pub value: Value,
    /// Its source.
    pub origin: Origin,
    /// The value as written.
    pub raw: String,
}

impl Setting {
    /// An error about this setting.
    pub fn error(&self, reason: impl std::fmt::Display) -> ConfigError {
        ConfigError::new(self.origin.clone(), &self.raw, reason)
    }

    /// Checks a numeric value against an operator cap.
    pub fn ensure_at_most(
        &self,
        cap: Option<u64>,
        shown: impl Fn(u64) -> String,
    ) -> Result<(), ConfigError> {
        match (self.value.as_u64(), cap) {
            (Some(v), Some(cap)) if v > cap => {
                Err(self.error(format!("above the operator's cap of {}", shown(cap))))
            }
            _ => Ok(()),
        }
    }
}

/// The parsed configuration of one container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskConfig {
    settings: BTreeMap<&'static str, Setting>,
    /// The module parsing, when others' values are left to them.
    reader: Option<&'static str>,
}

impl TaskConfig {
    /// Parses the labels and variables of a container against the whole schema.
    pub fn parse(spec: &ContainerSpec) -> Result<Self, ConfigError> {
        Self::parse_as(spec, None)
    }

    /// Parses like [`TaskConfig::parse`] for the module `reader`: a malformed value
    /// of a key another module reads is left to that module (logged, and absent
    /// from the result), so each module's launch error names its own keys. Unknown
    /// keys in the namespace are an error to every module.
    pub fn parse_for(spec: &ContainerSpec, reader: &'static str) -> Result<Self, ConfigError> {
        Self::parse_as(spec, Some(reader))
    }

    fn parse_as(spec: &ContainerSpec, reader: Option<&'static str>) -> Result<Self, ConfigError> {
        let mut config = TaskConfig {
            reader,
            ..TaskConfig::default()
        };
        // Lowest precedence first; later sources overwrite.
        for (name, value) in &spec.executor_labels {
            config.take_label(name, value, Origin::ExecutorLabel(name.clone()))?;
        }
        for (name, value) in &spec.task_labels {
            config.take_label(name, value, Origin::TaskLabel(name.clone()))?;
        }
        for (name, value) in &spec.environment {
            if !name.starts_with(ENV_PREFIX) {
                continue;
            }
            let origin = Origin::Environment(name.clone());
            let spec =
                schema::lookup_env(name).ok_or_else(|| unknown(origin.clone(), value, name))?;
            config.insert(spec, value, origin)?;
        }
        Ok(config)
    }

    fn take_label(&mut self, name: &str, value: &str, origin: Origin) -> Result<(), ConfigError> {
        let Some(key) = name.strip_prefix(LABEL_PREFIX) else {
            return Ok(());
        };
        let spec = schema::lookup(key).ok_or_else(|| unknown(origin.clone(), value, name))?;
        self.insert(spec, value, origin)
    }

    fn insert(
        &mut self,
        spec: &'static KeySpec,
        raw: &str,
        origin: Origin,
    ) -> Result<(), ConfigError> {
        let value = match parse_value(spec.kind, raw) {
            Ok(value) => value,
            Err(reason) => {
                let err = ConfigError::new(origin.clone(), raw, reason);
                return match (self.reader, err.owner) {
                    (Some(reader), Some(owner)) if owner != reader => {
                        tracing::info!("{err}: left to the {owner} module (not read by {reader})");
                        Ok(())
                    }
                    _ => Err(err),
                };
            }
        };
        self.settings.insert(
            spec.key,
            Setting {
                value,
                origin,
                raw: raw.to_owned(),
            },
        );
        Ok(())
    }

    /// Adds an operator default for a key the task did not set.
    pub fn default_from(
        &mut self,
        key: &str,
        raw: &str,
        parameter: &str,
    ) -> Result<(), ConfigError> {
        let spec = schema::lookup(key).ok_or_else(|| {
            ConfigError::new(
                Origin::Default(parameter.into()),
                raw,
                format!("'{key}' is not a rein key"),
            )
        })?;
        if !self.settings.contains_key(spec.key) {
            self.insert(spec, raw, Origin::Default(parameter.to_owned()))?;
        }
        Ok(())
    }

    /// The setting for a key, if the task (or a default) gave one.
    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.settings.get(key)
    }

    /// A numeric setting's value.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|s| s.value.as_u64())
    }

    /// A boolean setting's value.
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)?.value {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// A text or enum setting's value.
    pub fn text(&self, key: &str) -> Option<&str> {
        match &self.get(key)?.value {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// All settings of a group (`net`, `blkio`, ...).
    pub fn group<'a>(
        &'a self,
        group: &'a str,
    ) -> impl Iterator<Item = (&'static str, &'a Setting)> + 'a {
        self.settings
            .iter()
            .filter(move |(k, _)| k.split('.').next() == Some(group))
            .map(|(k, v)| (*k, v))
    }

    /// Whether nothing was set.
    pub fn is_empty(&self) -> bool {
        self.settings.is_empty()
    }
}

fn unknown(origin: Origin, value: &str, name: &str) -> ConfigError {
    let key = name
        .strip_prefix(LABEL_PREFIX)
        .map(str::to_owned)
        .unwrap_or_else(|| name.trim_start_matches(ENV_PREFIX).to_ascii_lowercase());
    let group = key.split(['.', '_']).next().unwrap_or_default();
    let known: Vec<&str> = schema::all_keys()
        .filter(|k| k.key.split('.').next() == Some(group))
        .map(|k| k.key)
        .collect();
    let reason = if known.is_empty() {
        "not a rein setting (groups: debug, net, blkio, disk, log)".to_owned()
    } else {
        format!(
            "not a rein setting (known in '{group}': {})",
            known.join(", ")
        )
    };
    ConfigError::new(origin, value, reason)
}

/// Why one value is refused. The message is the reason alone: the caller adds the
/// key (or module parameter) it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Over the length bound (of every value, or of this text kind).
    #[error("longer than {0} bytes")]
    TooLong(usize),
    /// A number, size, rate, duration or boolean that does not parse.
    #[error(transparent)]
    Unit(#[from] units::UnitError),
    /// A text value with control characters.
    #[error("contains control characters")]
    ControlCharacters,
    /// A word outside the allowed ones.
    #[error("expected one of {}", .0.join(", "))]
    NotOneOf(&'static [&'static str]),
    /// A device that is neither `sandbox` nor under `/dev/`.
    #[error("'{0}' is neither 'sandbox' nor a /dev/ path")]
    Device(String),
    /// The same device twice in one per-device value.
    #[error("device {0:?} given twice")]
    DeviceTwice(DeviceRef),
}

/// Parses one value of a kind.
pub fn parse_value(kind: Kind, raw: &str) -> Result<Value, ValueError> {
    if raw.len() > MAX_VALUE_LEN {
        return Err(ValueError::TooLong(MAX_VALUE_LEN));
    }
    Ok(match kind {
        Kind::Bandwidth => Value::Bandwidth(units::parse_bandwidth(raw)?),
        Kind::ByteRate => Value::ByteRate(units::parse_byte_rate(raw)?),
        Kind::Bytes => Value::Bytes(units::parse_bytes(raw)?),
        Kind::Count => Value::Count(units::parse_count(raw)?),
        Kind::Duration => Value::Duration(units::parse_duration(raw)?),
        Kind::Bool => Value::Bool(units::parse_bool(raw)?),
        Kind::Text(max) => {
            if raw.len() > max {
                return Err(ValueError::TooLong(max));
            }
            if raw.chars().any(char::is_control) {
                return Err(ValueError::ControlCharacters);
            }
            Value::Text(raw.to_owned())
        }
        Kind::Enum(words) => {
            let word = raw.trim();
            if !words.contains(&word) {
                return Err(ValueError::NotOneOf(words));
            }
            Value::Text(word.to_owned())
        }
        Kind::PerDevice(inner) => Value::PerDevice(parse_per_device(*inner, raw)?),
    })
}

fn parse_per_device(inner: Kind, raw: &str) -> Result<Vec<(DeviceRef, Value)>, ValueError> {
    let mut out: Vec<(DeviceRef, Value)> = Vec::new();
    for item in raw.split(',') {
        let item = item.trim();
        let (device, value) = match item.split_once('=') {
            None => (DeviceRef::Sandbox, item),
            Some((dev, value)) => {
                let dev = dev.trim();
                let device = if dev == "sandbox" {
                    DeviceRef::Sandbox
                } else if dev.starts_with("/dev/") && !dev.contains("/../") && !dev.ends_with("/..")
                {
                    DeviceRef::Path(dev.to_owned())
                } else {
                    return Err(ValueError::Device(dev.to_owned()));
                };
                (device, value)
            }
        };
        if out.iter().any(|(d, _)| *d == device) {
            return Err(ValueError::DeviceTwice(device));
        }
        out.push((device, parse_value(inner, value)?));
    }
    Ok(out)
}

/// Parses a container's configuration at `prepare()` for the module `reader`
/// (see [`TaskConfig::parse_for`]: its launch error names its own keys, never
/// another module's), honouring the `debug.panic` key: it panics on purpose only
/// where the operator allowed it (the module parameter `allow_debug_panic`), and
/// is refused otherwise.
pub fn parse_for_module(
    spec: &ContainerSpec,
    reader: &'static str,
    allow_debug_panic: bool,
) -> Result<TaskConfig, ConfigError> {
    honour_debug_panic(
        TaskConfig::parse_for(spec, reader)?,
        spec,
        allow_debug_panic,
    )
}

fn honour_debug_panic(
    config: TaskConfig,
    spec: &ContainerSpec,
    allow_debug_panic: bool,
) -> Result<TaskConfig, ConfigError> {
    if let Some(setting) = config.get("debug.panic") {
        if setting.value == Value::Bool(true) {
            if !allow_debug_panic {
                return Err(setting.error(
                    "debug panics are not allowed on this agent (allow_debug_panic=false)",
                ));
            }
            panic!("debug.panic requested for container {}", spec.id);
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(task: &[(&str, &str)], exec: &[(&str, &str)], env: &[(&str, &str)]) -> ContainerSpec {
        let own = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect()
        };
        ContainerSpec {
            task_labels: own(task),
            executor_labels: own(exec),
            environment: own(env),
            ..ContainerSpec::default()
        }
    }

    #[test]
    fn precedence_env_over_task_over_executor() {
        let s = spec(
            &[("rein.net.egress.rate", "20mbit")],
            &[
                ("rein.net.egress.rate", "10mbit"),
                ("rein.net.egress.ceil", "50mbit"),
            ],
            &[],
        );
        let c = TaskConfig::parse(&s).unwrap();
        assert_eq!(c.u64("net.egress.rate"), Some(20_000_000));
        assert_eq!(c.u64("net.egress.ceil"), Some(50_000_000));
        assert_eq!(
            c.get("net.egress.ceil").unwrap().origin,
            Origin::ExecutorLabel("rein.net.egress.ceil".into())
        );

        let s = spec(
            &[("rein.net.egress.rate", "20mbit")],
            &[],
            &[("REIN_NET_EGRESS_RATE", "30mbit")],
        );
        assert_eq!(
            TaskConfig::parse(&s).unwrap().u64("net.egress.rate"),
            Some(30_000_000)
        );
    }

    #[test]
    fn foreign_labels_ignored_own_namespace_strict() {
        let s = spec(
            &[("owner", "team-a"), ("HAPROXY_GROUP", "x")],
            &[],
            &[("PATH", "/bin")],
        );
        assert!(TaskConfig::parse(&s).unwrap().is_empty());

        let err =
            TaskConfig::parse(&spec(&[("rein.net.egres.rate", "1mbit")], &[], &[])).unwrap_err();
        assert_eq!(err.origin, Origin::TaskLabel("rein.net.egres.rate".into()));
        assert!(err.to_string().contains("not a rein setting"), "{err}");
        assert!(err.to_string().contains("net.egress.rate"), "{err}");

        let err = TaskConfig::parse(&spec(&[], &[], &[("REIN_NET_SPEED", "1mbit")])).unwrap_err();
        assert_eq!(err.origin, Origin::Environment("REIN_NET_SPEED".into()));
    }

    #[test]
    fn malformed_value_names_label_value_reason() {
        let err =
            TaskConfig::parse(&spec(&[("rein.net.egress.rate", "fast")], &[], &[])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("task label 'rein.net.egress.rate' = 'fast': "),
            "{msg}"
        );
        assert!(msg.contains("number"), "{msg}");
    }

    #[test]
    fn caps() {
        let c = TaskConfig::parse(&spec(&[("rein.net.egress.rate", "2gbit")], &[], &[])).unwrap();
        let s = c.get("net.egress.rate").unwrap();
        let err = s
            .ensure_at_most(Some(1_000_000_000), units::format_bandwidth)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("above the operator's cap of 1Gbit"),
            "{err}"
        );
        assert!(s
            .ensure_at_most(Some(4_000_000_000), units::format_bandwidth)
            .is_ok());
        assert!(s.ensure_at_most(None, units::format_bandwidth).is_ok());
    }

    #[test]
    fn per_device_values() {
        let c = TaskConfig::parse(&spec(
            &[
                ("rein.blkio.write_bps", "sandbox=10MiB/s, /dev/sdb=5MiB/s"),
                ("rein.blkio.read_iops", "100"),
            ],
            &[],
            &[],
        ))
        .unwrap();
        assert_eq!(
            c.get("blkio.write_bps").unwrap().value,
            Value::PerDevice(vec![
                (DeviceRef::Sandbox, Value::ByteRate(10 << 20)),
                (DeviceRef::Path("/dev/sdb".into()), Value::ByteRate(5 << 20)),
            ])
        );
        assert_eq!(
            c.get("blkio.read_iops").unwrap().value,
            Value::PerDevice(vec![(DeviceRef::Sandbox, Value::Count(100))])
        );
        for bad in [
            "/etc/passwd=1MiB/s",
            "sandbox=1MiB/s,sandbox=2MiB/s",
            "/dev/../etc=1MiB/s",
        ] {
            assert!(
                TaskConfig::parse(&spec(&[("rein.blkio.write_bps", bad)], &[], &[])).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn enums_text_and_defaults() {
        let mut c = TaskConfig::parse(&spec(&[("rein.log.sink", "kafka")], &[], &[])).unwrap();
        assert_eq!(c.text("log.sink"), Some("kafka"));
        assert!(TaskConfig::parse(&spec(&[("rein.log.sink", "syslog")], &[], &[])).is_err());
        assert!(TaskConfig::parse(&spec(&[("rein.log.index", "a\nb")], &[], &[])).is_err());
        c.default_from("net.egress.rate", "5mbit", "egress_default_rate")
            .unwrap();
        c.default_from("log.sink", "none", "default_sink").unwrap();
        assert_eq!(c.text("log.sink"), Some("kafka"));
        assert_eq!(
            c.get("net.egress.rate").unwrap().origin,
            Origin::Default("egress_default_rate".into())
        );
        assert_eq!(c.group("net").count(), 1);
    }

    #[test]
    fn long_values_are_refused_and_truncated_in_errors() {
        let long = "9".repeat(MAX_VALUE_LEN + 1);
        let err = TaskConfig::parse(&spec(&[("rein.log.index", &long)], &[], &[])).unwrap_err();
        assert!(err.value.chars().count() <= 81);
    }

    #[test]
    fn a_value_error_names_the_module_that_reads_the_key_and_is_left_to_it() {
        let s = spec(
            &[
                ("rein.blkio.read_bps", "fast"),
                ("rein.net.egress.rate", "1mbit"),
            ],
            &[],
            &[],
        );
        let err = TaskConfig::parse(&s).unwrap_err();
        assert_eq!(err.owner, Some("blkio"));
        let msg = err.to_string();
        assert!(
            msg.starts_with("task label 'rein.blkio.read_bps' = 'fast': ")
                && msg.ends_with(" (blkio isolator)"),
            "{msg}"
        );
        // net_cls prepares first: the blkio value is not its error.
        let c = TaskConfig::parse_for(&s, "net_cls").unwrap();
        assert_eq!(c.u64("net.egress.rate"), Some(1_000_000));
        assert!(c.get("blkio.read_bps").is_none());
        let err = TaskConfig::parse_for(&s, "blkio").unwrap_err();
        assert_eq!(err.owner, Some("blkio"), "{err}");
        // A variable names its reader too.
        let env = spec(&[], &[], &[("REIN_DISK_MODE", "sometimes")]);
        let msg = parse_for_module(&env, "disk", false)
            .unwrap_err()
            .to_string();
        assert!(msg.ends_with("(disk isolator)"), "{msg}");
        assert!(parse_for_module(&env, "blkio", false).is_ok());
        // An unknown key is everyone's error, still naming the group's module.
        let typo = spec(&[("rein.blkio.read_bsp", "1MiB/s")], &[], &[]);
        let err = TaskConfig::parse_for(&typo, "net_cls").unwrap_err();
        assert_eq!(err.owner, Some("blkio"), "{err}");
        // Common keys belong to no module in particular.
        let debug = spec(&[("rein.debug.panic", "maybe")], &[], &[]);
        let err = TaskConfig::parse_for(&debug, "disk").unwrap_err();
        assert_eq!(err.owner, None);
        assert!(!err.to_string().contains("isolator"), "{err}");
    }
}
