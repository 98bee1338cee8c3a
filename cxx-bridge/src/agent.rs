//! What Rust knows of the agent that loaded the library: this Mesos's enum tables
//! (handed over by the shim, once) and the agent's own isolation flags and
//! capability bounding set (read here, at the same moment). Unset outside an agent
//! (`rein-run`, tests).

use std::sync::OnceLock;

use rein_core::launch_policy::{self, AgentCapabilities, MesosCapability};

use crate::bridge::ffi::MesosEnumValue;

/// The agent, as the limitation decisions need it (capability drops are decided
/// against `rein_core::launch_policy::installed()`).
#[derive(Debug)]
pub struct Agent {
    /// `TaskStatus::Reason` names and numbers.
    reasons: Vec<(String, i32)>,
}

static AGENT: OnceLock<Agent> = OnceLock::new();

fn table(values: Vec<MesosEnumValue>) -> Vec<(String, i32)> {
    values
        .into_iter()
        .map(|v| (String::from_utf8_lossy(&v.name).into_owned(), v.number))
        .collect()
}

/// Called by the shim, once per loaded library; later calls change nothing.
pub fn install_mesos_enums(capabilities: Vec<MesosEnumValue>, reasons: Vec<MesosEnumValue>) {
    AGENT.get_or_init(|| {
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
        let isolation = std::env::var("MESOS_ISOLATION").ok();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let capabilities = AgentCapabilities {
            agent_sets_capabilities: launch_policy::agent_sets_capabilities(
                &cmdline,
                isolation.as_deref(),
            ),
            bounding: launch_policy::bounding_set(&status),
            mesos: table(capabilities)
                .into_iter()
                .map(|(name, number)| MesosCapability { name, number })
                .collect(),
        };
        tracing::info!(
            agent_sets_capabilities = capabilities.agent_sets_capabilities,
            bounding = ?capabilities.bounding.map(|mask| format!("{mask:#x}")),
            mesos_capabilities = capabilities.mesos.len(),
            "rein: capability drops are decided against this agent"
        );
        launch_policy::install(capabilities);
        Agent {
            reasons: table(reasons),
        }
    });
}

/// The agent, once the shim installed it.
pub(crate) fn get() -> Option<&'static Agent> {
    AGENT.get()
}

impl Agent {
    /// The number this Mesos gives a `TaskStatus::Reason` name.
    pub(crate) fn reason_number(&self, name: &str) -> Option<i32> {
        self.reasons
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, number)| *number)
    }

    #[cfg(test)]
    pub(crate) fn for_tests(reasons: &[(&str, i32)]) -> Self {
        Self {
            reasons: reasons.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect(),
        }
    }
}
