//! Module parameters: the operator's settings from the `--modules` manifest.
//!
//! Modules get no agent flags, so everything (work dirs, cgroup roots, defaults and
//! caps) is a parameter. An unknown or malformed parameter is a configuration error
//! of the agent and fails module creation with a message naming it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::units;

/// A parameter error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("module parameter '{name}' = '{value}': {reason}")]
pub struct ParamError {
    /// Parameter name.
    pub name: String,
    /// Its value.
    pub value: String,
    /// What is wrong.
    pub reason: String,
}

/// The parameters of one module instance, checked against the names it knows.
#[derive(Debug, Clone, Default)]
pub struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    /// Takes the raw pairs; refuses names outside `known` and repeated names.
    pub fn new(pairs: &[(String, String)], known: &[&str]) -> Result<Self, ParamError> {
        let mut values = BTreeMap::new();
        for (name, value) in pairs {
            if !known.contains(&name.as_str()) {
                return Err(ParamError {
                    name: name.clone(),
                    value: value.clone(),
                    reason: format!("unknown parameter (known: {})", known.join(", ")),
                });
            }
            if values.insert(name.clone(), value.clone()).is_some() {
                return Err(ParamError {
                    name: name.clone(),
                    value: value.clone(),
                    reason: "given twice".into(),
                });
            }
        }
        Ok(Self { values })
    }

    /// The raw value.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn parse<T>(
        &self,
        name: &str,
        f: impl Fn(&str) -> Result<T, ValueError>,
    ) -> Result<Option<T>, ParamError> {
        self.raw(name)
            .map(|v| {
                f(v).map_err(|reason| ParamError {
                    name: name.into(),
                    value: v.into(),
                    reason: reason.to_string(),
                })
            })
            .transpose()
    }

    /// A string parameter.
    pub fn string(&self, name: &str) -> Option<String> {
        self.raw(name).map(str::to_owned)
    }

    /// An absolute path parameter.
    pub fn path(&self, name: &str) -> Result<Option<PathBuf>, ParamError> {
        self.parse(name, |v| {
            let p = PathBuf::from(v);
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(ValueError::NotAbsolute)
            }
        })
    }

    /// A boolean parameter.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ParamError> {
        self.parse(name, |v| Ok(units::parse_bool(v)?))
    }

    /// A whole number (decimal, or hexadecimal with `0x`).
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ParamError> {
        self.parse(name, parse_int)
    }

    /// A bandwidth in bits per second.
    pub fn bandwidth(&self, name: &str) -> Result<Option<u64>, ParamError> {
        self.parse(name, |v| Ok(units::parse_bandwidth(v)?))
    }

    /// A byte rate in bytes per second.
    pub fn byte_rate(&self, name: &str) -> Result<Option<u64>, ParamError> {
        self.parse(name, |v| Ok(units::parse_byte_rate(v)?))
    }

    /// A size in bytes.
    pub fn bytes(&self, name: &str) -> Result<Option<u64>, ParamError> {
        self.parse(name, |v| Ok(units::parse_bytes(v)?))
    }

    /// A duration.
    pub fn duration(&self, name: &str) -> Result<Option<Duration>, ParamError> {
        self.parse(name, |v| Ok(units::parse_duration(v)?))
    }

    /// An inclusive range `[a-b]` or `a-b` of whole numbers.
    pub fn range(&self, name: &str) -> Result<Option<(u64, u64)>, ParamError> {
        self.parse(name, |v| {
            let t = v.trim().trim_start_matches('[').trim_end_matches(']');
            let (a, b) = t
                .split_once('-')
                .or_else(|| t.split_once(','))
                .ok_or(ValueError::RangeForm)?;
            let (a, b) = (parse_int(a)?, parse_int(b)?);
            if a > b {
                return Err(ValueError::RangeOrder);
            }
            Ok((a, b))
        })
    }

    /// A comma-separated list.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.raw(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Builds an error about a parameter, for checks the module makes itself.
    pub fn error(&self, name: &str, reason: impl std::fmt::Display) -> ParamError {
        ParamError {
            name: name.into(),
            value: self.raw(name).unwrap_or_default().into(),
            reason: reason.to_string(),
        }
    }
}

/// Why a parameter's value does not parse (the `reason` of its [`ParamError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ValueError {
    #[error("must be an absolute path")]
    NotAbsolute,
    #[error("'{0}' is not a whole number")]
    NotWholeNumber(String),
    #[error("expected a range such as [5000-10000] or 0x1,0xffff")]
    RangeForm,
    #[error("range start is above its end")]
    RangeOrder,
    #[error(transparent)]
    Unit(#[from] units::UnitError),
}

fn parse_int(v: &str) -> Result<u64, ValueError> {
    let t = v.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| ValueError::NotWholeNumber(t.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)], known: &[&str]) -> Result<Params, ParamError> {
        let pairs: Vec<_> = pairs
            .iter()
            .map(|(a, b)| ((*a).into(), (*b).into()))
            .collect();
        Params::new(&pairs, known)
    }

    #[test]
    fn typed_getters() {
        let ps = p(
            &[
                ("h", "0x10"),
                ("r", "[5-10]"),
                ("w", "/var/run"),
                ("b", "1gbit"),
                ("l", "a, b,,c"),
            ],
            &["h", "r", "w", "b", "l"],
        )
        .unwrap();
        assert_eq!(ps.u64("h").unwrap(), Some(16));
        assert_eq!(ps.range("r").unwrap(), Some((5, 10)));
        assert_eq!(ps.path("w").unwrap(), Some(PathBuf::from("/var/run")));
        assert_eq!(ps.bandwidth("b").unwrap(), Some(1_000_000_000));
        assert_eq!(ps.list("l"), vec!["a", "b", "c"]);
        assert_eq!(ps.u64("missing").unwrap(), None);
    }

    #[test]
    fn errors_name_the_parameter() {
        let err = p(&[("bogus", "1")], &["h"]).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("module parameter 'bogus' = '1': unknown parameter"));
        assert!(p(&[("h", "1"), ("h", "2")], &["h"]).is_err());
        let ps = p(&[("r", "10-5"), ("w", "rel/path")], &["r", "w"]).unwrap();
        assert!(ps.range("r").is_err());
        assert!(ps.path("w").unwrap_err().to_string().contains("absolute"));
    }
}

/// Parameters every isolator takes.
pub const COMMON_PARAMS: &[&str] = &[
    "state_dir",
    "cgroups_hierarchy",
    "cgroups_root",
    "mountinfo",
    "allow_debug_panic",
    "spare_cgroups",
];

/// Default directory of per-container state (survives agent restarts, not reboots,
/// like the agent's own `--runtime_dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/run/mesos/isolators/rein";

/// The most spare cgroups an isolator keeps (each holds a net_cls handle).
pub const MAX_SPARE_CGROUPS: u64 = 64;

/// The parameters every isolator takes, with their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonParams {
    /// `state_dir`: where per-container state is kept for `recover()`.
    pub state_dir: PathBuf,
    /// `cgroups_hierarchy`: where cgroup hierarchies are (agent's `--cgroups_hierarchy`).
    pub cgroups_hierarchy: PathBuf,
    /// `cgroups_root`: the agent's `--cgroups_root` (`mesos`).
    pub cgroups_root: PathBuf,
    /// `mountinfo`: the mount table to read (tests point it elsewhere).
    pub mountinfo: PathBuf,
    /// `allow_debug_panic`: honour the `debug.panic` label.
    pub allow_debug_panic: bool,
    /// `spare_cgroups`: how many cgroup v1 directories an isolator keeps made
    /// ahead for the next containers ([`crate::cgroupfs::Spares`]); 0 turns
    /// them off.
    pub spare_cgroups: usize,
}

impl CommonParams {
    /// Reads the common parameters.
    pub fn from_params(params: &Params) -> Result<Self, ParamError> {
        let cgroups_root = PathBuf::from(params.raw("cgroups_root").unwrap_or("mesos"));
        if cgroups_root.is_absolute()
            || cgroups_root
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(params.error("cgroups_root", "must be a relative path without '..'"));
        }
        Ok(Self {
            state_dir: params
                .path("state_dir")?
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            cgroups_hierarchy: params
                .path("cgroups_hierarchy")?
                .unwrap_or_else(|| "/sys/fs/cgroup".into()),
            cgroups_root,
            mountinfo: params
                .path("mountinfo")?
                .unwrap_or_else(|| "/proc/self/mountinfo".into()),
            allow_debug_panic: params.bool("allow_debug_panic")?.unwrap_or(false),
            spare_cgroups: match params.u64("spare_cgroups")? {
                None => crate::cgroupfs::spares::DEFAULT_STOCK,
                Some(n) if n <= MAX_SPARE_CGROUPS => usize::try_from(n).unwrap_or(0),
                Some(_) => {
                    return Err(
                        params.error("spare_cgroups", format!("at most {MAX_SPARE_CGROUPS}"))
                    )
                }
            },
        })
    }
}
