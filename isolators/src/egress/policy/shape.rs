//! A container's shape (rate, ceiling, burst): from its labels, its cpus and the
//! operator's defaults, always within the operator's caps.

use serde::{Deserialize, Serialize};

use rein_core::config::{ConfigError, TaskConfig};
use rein_core::units::format_bandwidth;

use super::params::{format_bytes, EgressParams, MIN_BURST};

impl EgressParams {
    /// The default burst for a rate: the parameter, else 10 ms at the rate (at least
    /// one full-size frame plus headroom), never above the cap.
    fn burst_for(&self, rate: u64) -> u64 {
        self.default_burst
            .unwrap_or((rate / 8 / 100).max(MIN_BURST))
            .min(self.max_burst)
    }

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
