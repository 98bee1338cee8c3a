//! The operator's module parameters of egress shaping, parsed and checked.

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

    /// The cap on rate and ceiling: `egress_max_rate`, else the line rate.
    pub fn rate_cap(&self) -> u64 {
        self.max_rate.unwrap_or(self.line_rate).min(self.line_rate)
    }

    /// A derived or default rate within the line rate and the cap.
    pub(super) fn clamp(&self, rate: u64) -> u64 {
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
}
