//! The harness's own record of each container, so a restarted harness can drive
//! `recover()` the way a restarted agent does.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What the harness remembers of a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Id chain.
    pub chain: Vec<String>,
    /// Init process.
    pub pid: i32,
    /// Its start time, to detect pid reuse.
    pub start_time: Option<u64>,
    /// Sandbox directory.
    pub sandbox: PathBuf,
    /// The command.
    pub argv: Vec<String>,
}

impl ContainerRecord {
    /// The id chain as the bridge takes it.
    pub fn container(&self) -> rein_modules::ContainerChain {
        rein_modules::ContainerChain::new(self.chain.iter().map(String::as_str))
    }

    /// The container id.
    pub fn id(&self) -> Result<rein_core::ContainerId, rein_core::container::InvalidContainerId> {
        rein_core::ContainerId::new(self.chain.clone())
    }

    /// Whether the container's process is still the one we started.
    pub fn is_alive(&self) -> bool {
        self.start_time.is_some() && crate::process::start_time(self.pid) == self.start_time
    }
}
