//! Whether a container's launch may drop capabilities, and the bounding set that
//! does it.
//!
//! Mesos's `ContainerLaunchInfo` can only express a *whole* bounding set, so a drop
//! becomes the agent's own bounding set (a container can never exceed it) minus the
//! dropped capabilities, in the numbers this Mesos gives them (it numbers them from
//! 1000; capabilities it cannot name are left out). When the agent runs its own
//! `linux/capabilities` isolator, Mesos merges the two launch infos' bounding sets
//! by concatenation (a union), so a drop of ours could silently widen the
//! operator's set: a drop is refused there.
//!
//! Everything here is a pure function of its inputs (the agent's command line and
//! `MESOS_ISOLATION`, its bounding set, the Mesos capability table); the bridge
//! reads them once, when the agent loads the modules, and [`install`]s the result
//! for the process, so that an isolator can also ask [`check_drops`] before it
//! changes anything.

use std::sync::OnceLock;

use thiserror::Error;

/// Mesos numbers `CapabilityInfo::Capability` from here: `CHOWN` (0) is 1000.
pub const MESOS_CAPABILITY_BASE: i32 = 1000;

/// One value of this Mesos's `CapabilityInfo::Capability` enum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MesosCapability {
    /// Its name without `CAP_`, e.g. `SYS_RESOURCE`.
    pub name: String,
    /// Its number, e.g. 1024.
    pub number: i32,
}

/// What the agent process is, as far as dropping capabilities goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCapabilities {
    /// The agent runs Mesos's `linux/capabilities` isolator.
    pub agent_sets_capabilities: bool,
    /// The agent's bounding set (bit n: capability n), `None` when it could not be
    /// read.
    pub bounding: Option<u64>,
    /// The capabilities this Mesos can name.
    pub mesos: Vec<MesosCapability>,
}

/// Why a launch that drops capabilities is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// A module asked to drop a capability this Mesos has no name for.
    #[error("rein: cannot drop capability '{0}': this Mesos has no such capability")]
    UnknownCapability(String),
    /// The agent's `linux/capabilities` isolator also sets the bounding set.
    #[error(
        "rein: cannot drop {0}: the agent's linux/capabilities isolator also sets capabilities \
         and Mesos would merge the two bounding sets into their union"
    )]
    AgentSetsCapabilities(String),
    /// The agent's own bounding set could not be read, so no set can be derived.
    #[error("rein: cannot drop {0}: the agent's capability bounding set could not be read")]
    BoundingUnknown(String),
}

/// Whether the agent's isolation (its `--isolation` flag, else `MESOS_ISOLATION`)
/// names `linux/capabilities`. `cmdline` is `/proc/self/cmdline`: arguments each
/// ending in a NUL. Modules get no agent flags, so this is how they learn them.
pub fn agent_sets_capabilities(cmdline: &[u8], env_isolation: Option<&str>) -> bool {
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    let mut isolation = env_isolation.unwrap_or_default().to_owned();
    for (i, arg) in args.iter().enumerate() {
        if let Some(value) = arg.strip_prefix("--isolation=") {
            isolation = value.to_owned();
        } else if arg == "--isolation" {
            if let Some(next) = args.get(i + 1) {
                isolation.clone_from(next);
            }
        }
    }
    isolation.contains("linux/capabilities")
}

/// The `CapBnd:` mask of a `/proc/<pid>/status` text.
pub fn bounding_set(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

impl AgentCapabilities {
    /// The whole bounding set a container launched without `drops` gets, as Mesos
    /// capability numbers; `None` when nothing is dropped (the launch leaves the
    /// bounding set alone). `drops` are names as modules give them (`CAP_SYS_RESOURCE`).
    pub fn bounding_without(&self, drops: &[String]) -> Result<Option<Vec<i32>>, Refusal> {
        if drops.is_empty() {
            return Ok(None);
        }
        let mut dropped = Vec::with_capacity(drops.len());
        for raw in drops {
            let name = raw.strip_prefix("CAP_").unwrap_or(raw);
            let known = self.mesos.iter().find(|cap| cap.name == name);
            dropped.push(
                known
                    .ok_or_else(|| Refusal::UnknownCapability(raw.clone()))?
                    .number,
            );
        }
        let names = drops.join(", ");
        if self.agent_sets_capabilities {
            return Err(Refusal::AgentSetsCapabilities(names));
        }
        let held = self.bounding.ok_or(Refusal::BoundingUnknown(names))?;
        let mut kept: Vec<i32> = (0..64)
            .filter(|bit| held & (1u64 << bit) != 0)
            .map(|bit| MESOS_CAPABILITY_BASE + bit)
            .filter(|number| !dropped.contains(number))
            .filter(|number| self.mesos.iter().any(|cap| cap.number == *number))
            .collect();
        kept.sort_unstable();
        Ok(Some(kept))
    }
}

static AGENT: OnceLock<AgentCapabilities> = OnceLock::new();

/// Records the agent this process is (once; later calls change nothing).
pub fn install(agent: AgentCapabilities) -> &'static AgentCapabilities {
    AGENT.get_or_init(|| agent)
}

/// The agent, once installed; `None` outside an agent (`rein-run`, tests), where
/// no launch applies a bounding set.
pub fn installed() -> Option<&'static AgentCapabilities> {
    AGENT.get()
}

/// Whether dropping `drops` would be refused in this agent: what an isolator
/// asks before its side effects. Always allowed outside an agent.
pub fn check_drops(drops: &[String]) -> Result<(), Refusal> {
    installed().map_or(Ok(()), |agent| agent.bounding_without(drops).map(drop))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesos() -> Vec<MesosCapability> {
        // CHOWN .. AUDIT_READ (0 .. 37), as Mesos 1.x names them; a few suffice.
        [
            ("CHOWN", 0),
            ("KILL", 5),
            ("SYS_ADMIN", 21),
            ("SYS_RESOURCE", 24),
        ]
        .into_iter()
        .map(|(name, bit)| MesosCapability {
            name: name.into(),
            number: MESOS_CAPABILITY_BASE + bit,
        })
        .collect()
    }

    fn agent(sets: bool, bounding: Option<u64>) -> AgentCapabilities {
        AgentCapabilities {
            agent_sets_capabilities: sets,
            bounding,
            mesos: mesos(),
        }
    }

    fn drops(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn isolation_comes_from_the_flag_else_the_environment() {
        let cmd = |args: &[&str]| -> Vec<u8> {
            args.iter()
                .flat_map(|a| a.bytes().chain(std::iter::once(0)))
                .collect()
        };
        let caps = "cgroups/cpu,linux/capabilities";
        assert!(agent_sets_capabilities(
            &cmd(&["mesos-agent", &format!("--isolation={caps}")]),
            None
        ));
        assert!(agent_sets_capabilities(
            &cmd(&["mesos-agent", "--isolation", caps]),
            None
        ));
        assert!(agent_sets_capabilities(&cmd(&["mesos-agent"]), Some(caps)));
        // The flag overrides the environment, in both directions.
        assert!(!agent_sets_capabilities(
            &cmd(&["mesos-agent", "--isolation=cgroups/cpu"]),
            Some(caps)
        ));
        assert!(!agent_sets_capabilities(
            &cmd(&["mesos-agent", "--isolation"]),
            None
        ));
        assert!(!agent_sets_capabilities(b"", None));
    }

    #[test]
    fn bounding_set_is_read_from_the_status_text() {
        let status = "Name:\tmesos-agent\nCapInh:\t0000000000000000\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(bounding_set(status), Some(0x1ff_ffff_ffff));
        assert_eq!(bounding_set("Name:\tx\n"), None);
        assert_eq!(bounding_set("CapBnd:\tzz\n"), None);
    }

    #[test]
    fn nothing_dropped_leaves_the_bounding_set_alone() {
        assert_eq!(agent(true, None).bounding_without(&[]), Ok(None));
    }

    #[test]
    fn a_drop_is_the_agents_set_without_it_named_as_mesos_names_it() {
        // The agent holds CHOWN, KILL, SYS_RESOURCE and capability 40, which this
        // Mesos cannot name (so it is left out too).
        let held = 1 | 1 << 5 | 1 << 24 | 1 << 40;
        let set = agent(false, Some(held))
            .bounding_without(&drops(&["CAP_SYS_RESOURCE"]))
            .unwrap();
        assert_eq!(set, Some(vec![1000, 1005]));
        // Names are accepted with or without CAP_.
        let set = agent(false, Some(held))
            .bounding_without(&drops(&["KILL"]))
            .unwrap();
        assert_eq!(set, Some(vec![1000, 1024]));
    }

    #[test]
    fn an_isolator_can_ask_before_its_side_effects() {
        // The only test that installs: before it, this process is no agent.
        let sys_resource = drops(&["CAP_SYS_RESOURCE"]);
        assert_eq!(installed(), None);
        assert_eq!(check_drops(&sys_resource), Ok(()));
        install(agent(true, Some(!0)));
        assert!(matches!(
            check_drops(&sys_resource),
            Err(Refusal::AgentSetsCapabilities(_))
        ));
        assert_eq!(check_drops(&[]), Ok(()));
    }

    #[test]
    fn refusals_name_the_capabilities() {
        assert_eq!(
            agent(false, Some(!0))
                .bounding_without(&drops(&["CAP_SYS_RESOURCE", "CAP_PERFMON"]))
                .unwrap_err()
                .to_string(),
            "rein: cannot drop capability 'CAP_PERFMON': this Mesos has no such capability"
        );
        assert_eq!(
            agent(true, Some(!0))
                .bounding_without(&drops(&["CAP_SYS_RESOURCE", "CAP_KILL"]))
                .unwrap_err()
                .to_string(),
            "rein: cannot drop CAP_SYS_RESOURCE, CAP_KILL: the agent's linux/capabilities \
             isolator also sets capabilities and Mesos would merge the two bounding sets into \
             their union"
        );
        assert_eq!(
            agent(false, None).bounding_without(&drops(&["CAP_SYS_RESOURCE"])),
            Err(Refusal::BoundingUnknown("CAP_SYS_RESOURCE".into()))
        );
    }
}
