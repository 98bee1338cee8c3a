//! The launch info the shim copies, decided here: the environment the isolator
//! asked for and, when it asks to drop capabilities, the container's whole
//! bounding set or a refusal (`rein_core::launch_policy`).

use rein_core::isolator::LaunchInfo;
use rein_core::launch_policy::{AgentCapabilities, Refusal};

use crate::bridge::ffi::{BoundingSet, LaunchInfoView, LaunchVariable};

/// The launch info of one `prepare()`, or why it is refused.
pub(crate) fn decide(info: LaunchInfo) -> Result<LaunchInfoView, Refusal> {
    decide_for(rein_core::launch_policy::installed(), info)
}

fn decide_for(
    agent: Option<&AgentCapabilities>,
    info: LaunchInfo,
) -> Result<LaunchInfoView, Refusal> {
    let bounding = match agent {
        Some(agent) => agent.bounding_without(&info.drop_capabilities)?,
        None => {
            if !info.drop_capabilities.is_empty() {
                tracing::warn!(
                    "not in an agent: no bounding set applied for dropping {}",
                    info.drop_capabilities.join(", ")
                );
            }
            None
        }
    };
    Ok(LaunchInfoView {
        environment: info
            .environment
            .into_iter()
            .map(|(key, value)| LaunchVariable { key, value })
            .collect(),
        bounding_capabilities: bounding
            .map(|capabilities| BoundingSet { capabilities })
            .into_iter()
            .collect(),
    })
}

impl LaunchInfoView {
    /// Asks nothing of the launch: the shim answers `None`.
    pub fn is_empty(&self) -> bool {
        self.environment.is_empty() && self.bounding_capabilities.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rein_core::launch_policy::MesosCapability;

    fn agent(sets: bool) -> AgentCapabilities {
        AgentCapabilities {
            agent_sets_capabilities: sets,
            bounding: Some(1 | 1 << 24),
            mesos: vec![
                MesosCapability {
                    name: "CHOWN".into(),
                    number: 1000,
                },
                MesosCapability {
                    name: "SYS_RESOURCE".into(),
                    number: 1024,
                },
            ],
        }
    }

    fn info(env: &[(&str, &str)], drops: &[&str]) -> LaunchInfo {
        LaunchInfo {
            environment: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            drop_capabilities: drops.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    #[test]
    fn nothing_asked_is_empty() {
        assert!(decide_for(Some(&agent(true)), info(&[], &[]))
            .unwrap()
            .is_empty());
        let view = decide_for(None, info(&[("REIN_X", "1")], &[])).unwrap();
        assert!(!view.is_empty());
        assert_eq!(view.environment[0].key, "REIN_X");
        assert!(view.bounding_capabilities.is_empty());
    }

    #[test]
    fn a_drop_becomes_one_whole_bounding_set() {
        let view = decide_for(Some(&agent(false)), info(&[], &["CAP_SYS_RESOURCE"])).unwrap();
        assert_eq!(
            view.bounding_capabilities,
            vec![BoundingSet {
                capabilities: vec![1000]
            }]
        );
        assert!(!view.is_empty());
    }

    #[test]
    fn a_refused_drop_is_an_error_and_outside_an_agent_nothing_applies() {
        let err = decide_for(Some(&agent(true)), info(&[], &["CAP_SYS_RESOURCE"])).unwrap_err();
        assert!(matches!(err, Refusal::AgentSetsCapabilities(_)), "{err}");
        let view = decide_for(None, info(&[], &["CAP_SYS_RESOURCE"])).unwrap();
        assert!(view.is_empty());
    }
}
