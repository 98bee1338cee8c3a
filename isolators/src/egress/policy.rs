//! Egress shaping policy: the operator's module parameters and the per-container
//! rate, ceiling and burst derived from them and from the task's labels.

use serde::{Deserialize, Serialize};

use rein_core::config::{ConfigError, TaskConfig};
use rein_core::params::{ParamError, Params};
use rein_core::units::format_bandwidth;

/// Module parameters of egress shaping (of the `net_cls` isolator kind).
///
/// - `egress_shaping` (bool, default `false`): shape egress traffic per container.
/// - `egress_devices` (comma list of device names, default: the device of the
///   default route): the devices whose egress is shaped; `none` shapes no host
///   device (only containers with their own network namespace are shaped then).
/// - `egress_default_rate` (bandwidth, e.g. `100mbit`; default none): the rate of
///   tasks that ask for none. Without it (and without `egress_rate_per_cpu`) such
///   tasks are not shaped: their traffic goes to the default class at line rate.
/// - `egress_rate_per_cpu` (bandwidth; default none): derive the default rate from
///   the container's `cpus` (as port_mapping's `--egress_rate_per_cpu`); a derived
///   rate follows the container's resources on `update()`. Takes precedence over
///   `egress_default_rate`.
/// - `egress_max_rate` (bandwidth; default: `egress_line_rate`): the cap on
///   `rein.net.egress.rate` and `rein.net.egress.ceil`. A task asking for more fails
///   to launch; derived and default rates are clamped to it.
/// - `egress_default_burst` (bytes, e.g. `64KiB`; default: 10 ms at the rate, at
///   least 1600 bytes, at most `egress_max_burst`): the burst of tasks that ask for
///   none.
/// - `egress_max_burst` (bytes, default `16MiB`, from 1600 to 1GiB): the cap on
///   `rein.net.egress.burst`. A task asking for more fails to launch with a message
///   naming the label and the cap; default bursts are clamped to it. The burst is
///   what a class may send at line speed before its rate applies again (HTB's burst
///   and cburst), so it bounds how long a container can hold the link at once.
/// - `egress_line_rate` (bandwidth, default `10gbit`): the rate of the tree's link
///   class and of the default class that carries all traffic that is not ours.
/// - `egress_classifier` (`auto`, `net_cls` or `cgroup2`; default `auto`): how
///   packets find their container's class: by net_cls classid (cgroup v1) or by the
///   container's cgroup v2 id; `auto` takes net_cls where a net_cls hierarchy is
///   mounted (or `mount_net_cls=true`), cgroup2 otherwise.
/// - `egress_leaf_qdisc` (`fq_codel`, `pfifo` or `default`; default `fq_codel`): the
///   queue below each container's class; where the kernel lacks it, HTB's built-in
///   FIFO stays in place (logged once).
/// - `egress_filter_prio` (1-65535, default 49): priority of the tc filter rein
///   installs on the root qdisc; filters of the operator at other priorities stay.
pub const PARAMS: &[&str] = &[
    "egress_shaping",
    "egress_devices",
    "egress_default_rate",
    "egress_rate_per_cpu",
    "egress_max_rate",
    "egress_default_burst",
    "egress_max_burst",
    "egress_line_rate",
    "egress_classifier",
    "egress_leaf_qdisc",
    "egress_filter_prio",
];

/// The smallest burst: one full-size Ethernet frame plus headroom.
pub const MIN_BURST: u64 = 1600;
/// Default of `egress_max_burst`: 13 ms of a 10gbit link, 1.3 s of 100mbit.
pub const DEFAULT_MAX_BURST: u64 = 16 << 20;
/// The largest `egress_max_burst` accepted.
const MAX_BURST_CAP: u64 = 1 << 30;

/// A byte count as the parameters and labels write it (`16MiB`, `1600B`).
pub fn format_bytes(bytes: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// Stands in [`EgressParams::devices`] for the device of the default route.
pub const DEFAULT_ROUTE: &str = "@default-route";

/// How packets are mapped to their container's class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassifierChoice {
    /// net_cls where available, cgroup2 otherwise.
    Auto,
    /// By net_cls classid (cgroup v1).
    NetCls,
    /// By the cgroup v2 id of the sending socket.
    Cgroup2,
}

/// The parsed egress parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressParams {
    /// Device names ([`DEFAULT_ROUTE`] stands for the default route's device; empty:
    /// no host device).
    pub devices: Vec<String>,
    /// Rate of tasks that ask for none, bits/s.
    pub default_rate: Option<u64>,
    /// Rate per cpu, bits/s.
    pub rate_per_cpu: Option<u64>,
    /// Cap on rate and ceiling, bits/s.
    pub max_rate: Option<u64>,
    /// Burst of tasks that ask for none, bytes.
    pub default_burst: Option<u64>,
    /// Cap on the burst, bytes.
    pub max_burst: u64,
    /// Line rate, bits/s.
    pub line_rate: u64,
    /// Classifier choice.
    pub classifier: ClassifierChoice,
    /// Leaf qdisc kind (`None`: keep HTB's default FIFO).
    pub leaf_qdisc: Option<String>,
    /// tc filter priority.
    pub filter_prio: u16,
}

/// Device names as the kernel accepts them (`IFNAMSIZ`, no `/`, no whitespace).
fn valid_device_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

impl EgressParams {
    /// Reads the egress parameters; `None` when shaping is off.
    pub fn from_params(params: &Params) -> Result<Option<Self>, ParamError> {
        if !params.bool("egress_shaping")?.unwrap_or(false) {
            for name in PARAMS.iter().skip(1) {
                if params.raw(name).is_some() {
                    return Err(params.error(name, "set, but egress_shaping is not true"));
                }
            }
            return Ok(None);
        }
        let mut devices = params.list("egress_devices");
        if devices == ["none"] {
            devices.clear();
        } else if devices.is_empty() {
            devices.push(DEFAULT_ROUTE.to_owned());
        }
        if let Some(bad) = devices
            .iter()
            .find(|d| *d != DEFAULT_ROUTE && !valid_device_name(d))
        {
            return Err(params.error(
                "egress_devices",
                format!("'{bad}' is not a network device name"),
            ));
        }
        let classifier = match params.raw("egress_classifier").unwrap_or("auto") {
            "auto" => ClassifierChoice::Auto,
            "net_cls" => ClassifierChoice::NetCls,
            "cgroup2" => ClassifierChoice::Cgroup2,
            _ => return Err(params.error("egress_classifier", "expected auto, net_cls or cgroup2")),
        };
        let leaf_qdisc = match params.raw("egress_leaf_qdisc").unwrap_or("fq_codel") {
            "default" => None,
            k @ ("fq_codel" | "pfifo") => Some(k.to_owned()),
            _ => {
                return Err(params.error("egress_leaf_qdisc", "expected fq_codel, pfifo or default"))
            }
        };
        let filter_prio = params.u64("egress_filter_prio")?.unwrap_or(49);
        let filter_prio = u16::try_from(filter_prio)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| params.error("egress_filter_prio", "must be within 1-65535"))?;
        let positive = |name: &str, v: Option<u64>| -> Result<Option<u64>, ParamError> {
            match v {
                Some(0) => Err(params.error(name, "must be above 0")),
                other => Ok(other),
            }
        };
        let out = Self {
            devices,
            default_rate: positive(
                "egress_default_rate",
                params.bandwidth("egress_default_rate")?,
            )?,
            rate_per_cpu: positive(
                "egress_rate_per_cpu",
                params.bandwidth("egress_rate_per_cpu")?,
            )?,
            max_rate: positive("egress_max_rate", params.bandwidth("egress_max_rate")?)?,
            default_burst: positive(
                "egress_default_burst",
                params.bytes("egress_default_burst")?,
            )?,
            max_burst: params
                .bytes("egress_max_burst")?
                .unwrap_or(DEFAULT_MAX_BURST),
            line_rate: positive("egress_line_rate", params.bandwidth("egress_line_rate")?)?
                .unwrap_or(10_000_000_000),
            classifier,
            leaf_qdisc,
            filter_prio,
        };
        if !(MIN_BURST..=MAX_BURST_CAP).contains(&out.max_burst) {
            return Err(params.error(
                "egress_max_burst",
                format!(
                    "must be within {} and {}",
                    format_bytes(MIN_BURST),
                    format_bytes(MAX_BURST_CAP)
                ),
            ));
        }
        if let Some(b) = out.default_burst {
            if !(MIN_BURST..=out.max_burst).contains(&b) {
                return Err(params.error(
                    "egress_default_burst",
                    format!(
                        "must be within {} and egress_max_burst ({})",
                        format_bytes(MIN_BURST),
                        format_bytes(out.max_burst)
                    ),
                ));
            }
        }
        if let (Some(cap), Some(line)) = (out.max_rate, Some(out.line_rate)) {
            if cap > line {
                return Err(params.error(
                    "egress_max_rate",
                    format!("above egress_line_rate ({})", format_bandwidth(line)),
                ));
            }
        }
        Ok(Some(out))
    }

    /// The default burst for a rate: the parameter, else 10 ms at the rate (at least
    /// one full-size frame plus headroom), never above the cap.
    fn burst_for(&self, rate: u64) -> u64 {
        self.default_burst
            .unwrap_or((rate / 8 / 100).max(MIN_BURST))
            .min(self.max_burst)
    }

    /// The cap on rate and ceiling: `egress_max_rate`, else the line rate.
    pub fn rate_cap(&self) -> u64 {
        self.max_rate.unwrap_or(self.line_rate).min(self.line_rate)
    }

    fn clamp(&self, rate: u64) -> u64 {
        let rate = rate.min(self.line_rate);
        self.max_rate.map_or(rate, |cap| rate.min(cap)).max(8)
    }

    /// The rate derived from `cpus`, when `egress_rate_per_cpu` is set.
    pub fn rate_from_cpus(&self, cpus: Option<f64>) -> Option<u64> {
        let (per_cpu, cpus) = (self.rate_per_cpu?, cpus?);
        if !(cpus.is_finite() && cpus > 0.0) {
            return None;
        }
        // A bandwidth in bits/s is far below 2^53: the float round trip is exact enough.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rate = (per_cpu as f64 * cpus).round() as u64;
        Some(self.clamp(rate))
    }

    /// The shape of a container, from its labels, its cpus and the defaults; `None`
    /// leaves it unshaped. Errors name the label, its value and the reason.
    pub fn shape_for(
        &self,
        config: &TaskConfig,
        cpus: Option<f64>,
    ) -> Result<Option<Shape>, ConfigError> {
        let rate_param = if self.max_rate.is_some() {
            "egress_max_rate"
        } else {
            "egress_line_rate"
        };
        let shown_rate = |v: u64| format!("{} ({rate_param})", format_bandwidth(v));
        for key in ["net.egress.rate", "net.egress.ceil"] {
            if let Some(s) = config.get(key) {
                s.ensure_at_most(Some(self.rate_cap()), shown_rate)?;
                if s.value.as_u64() == Some(0) {
                    return Err(s.error("must be above 0"));
                }
            }
        }
        let asked_burst = match config.get("net.egress.burst") {
            Some(s) => {
                s.ensure_at_most(Some(self.max_burst), |v| {
                    format!("{} (egress_max_burst)", format_bytes(v))
                })?;
                match s.value.as_u64() {
                    Some(b) if b >= MIN_BURST => Some(b),
                    _ => return Err(s.error("must be at least 1600 bytes (one full frame)")),
                }
            }
            None => None,
        };
        let asked_rate = config.u64("net.egress.rate");
        let asked_ceil = config.u64("net.egress.ceil");
        let (rate, from_cpus) = match (asked_rate, self.rate_from_cpus(cpus), self.default_rate) {
            (Some(r), _, _) => (r, false),
            (None, Some(r), _) => (r, true),
            (None, None, Some(r)) => (self.clamp(r), false),
            (None, None, None) => match asked_ceil {
                // A ceiling alone: the task is shaped at its ceiling.
                Some(c) => (c, false),
                None => return Ok(None),
            },
        };
        let ceil = match asked_ceil {
            Some(c) if c < rate => {
                let s = config
                    .get("net.egress.ceil")
                    .expect("asked ceil has a setting");
                return Err(s.error(format!(
                    "below the egress rate of {}",
                    format_bandwidth(rate)
                )));
            }
            Some(c) => c,
            None => rate,
        };
        Ok(Some(Shape {
            rate,
            ceil,
            burst: asked_burst.unwrap_or_else(|| self.burst_for(rate)),
            from_cpus,
        }))
    }
}

/// A container's shaping, as persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Guaranteed rate, bits/s.
    pub rate: u64,
    /// Ceiling, bits/s.
    pub ceil: u64,
    /// Burst, bytes.
    pub burst: u64,
    /// Whether the rate follows the container's cpus.
    pub from_cpus: bool,
}

impl Shape {
    /// The shape within the operator's current caps (a record from before a cap was
    /// lowered or introduced, found at recovery).
    pub fn within_caps(&self, params: &EgressParams) -> Shape {
        let cap = params.rate_cap();
        let rate = self.rate.min(cap);
        Shape {
            rate,
            ceil: self.ceil.min(cap).max(rate),
            burst: self.burst.min(params.max_burst),
            from_cpus: self.from_cpus,
        }
    }

    /// The shape after the container's cpus changed (derived rates only).
    pub fn updated(&self, params: &EgressParams, cpus: Option<f64>) -> Shape {
        if !self.from_cpus {
            return *self;
        }
        match params.rate_from_cpus(cpus) {
            Some(rate) => Shape {
                rate,
                // A ceiling the task asked for stays, unless the new rate passes it.
                ceil: if self.ceil > self.rate {
                    self.ceil.max(rate)
                } else {
                    rate
                },
                burst: params.burst_for(rate),
                from_cpus: true,
            },
            None => *self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rein_core::ContainerSpec;

    fn params(pairs: &[(&str, &str)]) -> Result<Option<EgressParams>, ParamError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(a, b)| ((*a).into(), (*b).into()))
            .collect();
        EgressParams::from_params(&Params::new(&pairs, PARAMS).unwrap())
    }

    fn on(extra: &[(&str, &str)]) -> EgressParams {
        let mut all = vec![("egress_shaping", "true")];
        all.extend_from_slice(extra);
        params(&all).unwrap().unwrap()
    }

    fn config(labels: &[(&str, &str)]) -> TaskConfig {
        TaskConfig::parse(&ContainerSpec {
            task_labels: labels
                .iter()
                .map(|(a, b)| ((*a).into(), (*b).into()))
                .collect(),
            ..ContainerSpec::default()
        })
        .unwrap()
    }

    #[test]
    fn parameters_default_and_validate() {
        assert_eq!(params(&[]).unwrap(), None);
        let err = params(&[("egress_max_rate", "1gbit")]).unwrap_err();
        assert!(err.to_string().contains("egress_shaping"), "{err}");
        let p = on(&[]);
        assert_eq!(p.devices, vec![DEFAULT_ROUTE.to_owned()]);
        assert_eq!(p.line_rate, 10_000_000_000);
        assert_eq!(p.classifier, ClassifierChoice::Auto);
        assert_eq!(p.leaf_qdisc.as_deref(), Some("fq_codel"));
        assert!(on(&[("egress_devices", "none")]).devices.is_empty());
        for (name, value, reason) in [
            ("egress_devices", "eth0,../x", "not a network device"),
            ("egress_classifier", "iptables", "expected auto"),
            ("egress_leaf_qdisc", "cake", "expected fq_codel"),
            ("egress_filter_prio", "0", "1-65535"),
            ("egress_default_rate", "0mbit", "above 0"),
            ("egress_max_rate", "20gbit", "egress_line_rate"),
            ("egress_max_burst", "1000B", "1600B"),
            ("egress_max_burst", "2GiB", "1GiB"),
            ("egress_default_burst", "32MiB", "egress_max_burst (16MiB)"),
        ] {
            let err = params(&[("egress_shaping", "true"), (name, value)]).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(name) && msg.contains(reason), "{msg}");
        }
    }

    #[test]
    fn labels_give_rate_ceiling_and_burst() {
        let p = on(&[("egress_max_rate", "1gbit")]);
        let s = p
            .shape_for(
                &config(&[
                    ("rein.net.egress.rate", "10mbit"),
                    ("rein.net.egress.ceil", "50mbit"),
                    ("rein.net.egress.burst", "64KiB"),
                ]),
                None,
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            s,
            Shape {
                rate: 10_000_000,
                ceil: 50_000_000,
                burst: 65536,
                from_cpus: false
            }
        );
        // Ceiling defaults to the rate; burst to 10 ms at the rate, at least 1600 bytes.
        let s = p
            .shape_for(&config(&[("rein.net.egress.rate", "100mbit")]), None)
            .unwrap()
            .unwrap();
        assert_eq!((s.ceil, s.burst), (100_000_000, 125_000));
        let s = p
            .shape_for(&config(&[("rein.net.egress.rate", "1mbit")]), None)
            .unwrap()
            .unwrap();
        assert_eq!(s.burst, 1600);
    }

    #[test]
    fn bad_labels_name_the_label_value_and_reason() {
        let p = on(&[("egress_max_rate", "100mbit")]);
        for (labels, needle) in [
            (vec![("rein.net.egress.rate", "200mbit")], "cap"),
            (vec![("rein.net.egress.ceil", "1gbit")], "cap"),
            (
                vec![
                    ("rein.net.egress.rate", "20mbit"),
                    ("rein.net.egress.ceil", "10mbit"),
                ],
                "below the egress rate",
            ),
            (vec![("rein.net.egress.burst", "100B")], "1600"),
            (vec![("rein.net.egress.rate", "0mbit")], "above 0"),
        ] {
            let err = p.shape_for(&config(&labels), None).unwrap_err().to_string();
            let (label, value) = labels.last().unwrap();
            assert!(
                err.contains(label) && err.contains(value) && err.contains(needle),
                "{err}"
            );
        }
    }

    #[test]
    fn every_shaping_label_is_capped_by_an_operator_setting() {
        // Without egress_max_rate, the line rate caps rate and ceiling.
        let p = on(&[("egress_line_rate", "1gbit")]);
        assert_eq!(p.max_burst, DEFAULT_MAX_BURST);
        for (label, value, needle) in [
            (
                "rein.net.egress.rate",
                "2gbit",
                "above the operator's cap of 1Gbit (egress_line_rate)",
            ),
            (
                "rein.net.egress.ceil",
                "2gbit",
                "above the operator's cap of 1Gbit (egress_line_rate)",
            ),
            (
                "rein.net.egress.burst",
                "1TiB",
                "above the operator's cap of 16MiB (egress_max_burst)",
            ),
        ] {
            let err = p
                .shape_for(&config(&[(label, value)]), None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(label) && err.contains(value) && err.contains(needle),
                "{err}"
            );
        }
        let p = on(&[("egress_max_rate", "100mbit"), ("egress_max_burst", "1MiB")]);
        let err = p
            .shape_for(
                &config(&[
                    ("rein.net.egress.rate", "100mbit"),
                    ("rein.net.egress.burst", "1048577B"),
                ]),
                None,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("cap of 1MiB (egress_max_burst)"), "{err}");
        assert!(err.contains("rein.net.egress.burst"), "{err}");
        let s = p
            .shape_for(
                &config(&[
                    ("rein.net.egress.rate", "100mbit"),
                    ("rein.net.egress.burst", "1MiB"),
                ]),
                None,
            )
            .unwrap()
            .unwrap();
        assert_eq!(s.burst, 1 << 20, "at the cap is accepted");
        // Default bursts (10 ms at the rate) are clamped to the cap, not refused.
        let p = on(&[("egress_max_burst", "64KiB")]);
        let s = p
            .shape_for(&config(&[("rein.net.egress.rate", "1gbit")]), None)
            .unwrap()
            .unwrap();
        assert_eq!(s.burst, 64 << 10);
        let p = on(&[
            ("egress_max_burst", "64KiB"),
            ("egress_rate_per_cpu", "1gbit"),
        ]);
        let s = p.shape_for(&config(&[]), Some(1.0)).unwrap().unwrap();
        assert_eq!(s.updated(&p, Some(4.0)).burst, 64 << 10);
        assert_eq!(format_bytes(1600), "1600B");
        assert_eq!(format_bytes(3 << 30), "3GiB");
    }

    #[test]
    fn recovered_shapes_are_brought_within_the_caps() {
        let p = on(&[("egress_max_rate", "100mbit"), ("egress_max_burst", "1MiB")]);
        let old = Shape {
            rate: 200_000_000,
            ceil: 1_000_000_000,
            burst: 1 << 40,
            from_cpus: false,
        };
        let s = old.within_caps(&p);
        assert_eq!(
            (s.rate, s.ceil, s.burst),
            (100_000_000, 100_000_000, 1 << 20)
        );
        let fine = Shape {
            rate: 10_000_000,
            ceil: 50_000_000,
            burst: 65536,
            from_cpus: true,
        };
        assert_eq!(fine.within_caps(&p), fine);
    }

    #[test]
    fn defaults_come_from_cpus_then_the_default_rate() {
        let p = on(&[
            ("egress_rate_per_cpu", "10mbit"),
            ("egress_default_rate", "5mbit"),
            ("egress_max_rate", "25mbit"),
        ]);
        let s = p.shape_for(&config(&[]), Some(1.5)).unwrap().unwrap();
        assert_eq!((s.rate, s.from_cpus), (15_000_000, true));
        // Derived rates are clamped to the cap, not refused.
        let s = p.shape_for(&config(&[]), Some(4.0)).unwrap().unwrap();
        assert_eq!(s.rate, 25_000_000);
        let s = p.shape_for(&config(&[]), None).unwrap().unwrap();
        assert_eq!((s.rate, s.from_cpus), (5_000_000, false));
        assert_eq!(on(&[]).shape_for(&config(&[]), Some(2.0)).unwrap(), None);
        // An asked rate wins over the derived one and does not follow cpus.
        let s = p
            .shape_for(&config(&[("rein.net.egress.rate", "1mbit")]), Some(2.0))
            .unwrap()
            .unwrap();
        assert_eq!(s.updated(&p, Some(8.0)), s);
    }

    #[test]
    fn derived_rates_follow_cpus_and_keep_an_asked_ceiling() {
        let p = on(&[("egress_rate_per_cpu", "10mbit")]);
        let s = p
            .shape_for(&config(&[("rein.net.egress.ceil", "50mbit")]), Some(1.0))
            .unwrap()
            .unwrap();
        let u = s.updated(&p, Some(2.0));
        assert_eq!(
            (u.rate, u.ceil, u.from_cpus),
            (20_000_000, 50_000_000, true)
        );
        let u = s.updated(&p, Some(8.0));
        assert_eq!((u.rate, u.ceil), (80_000_000, 80_000_000));
        assert_eq!(s.updated(&p, None), s);
    }
}
