//! The containers Mesos still knows when an isolator recovers.

use rein_core::{ContainerId, RecoveredContainer};

/// What the agent reported at `recover()`: its live containers and the orphans
/// it destroys right after (calling `cleanup()` for each). A recorded container
/// it does not know lost its cleanup.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Known<'a> {
    containers: &'a [RecoveredContainer],
    orphans: &'a [ContainerId],
}

impl<'a> Known<'a> {
    pub(crate) fn new(containers: &'a [RecoveredContainer], orphans: &'a [ContainerId]) -> Self {
        Self {
            containers,
            orphans,
        }
    }

    /// Whether Mesos knows `id`, live or orphan.
    pub(crate) fn contains(&self, id: &ContainerId) -> bool {
        self.live(id).is_some() || self.is_orphan(id)
    }

    /// The live container `id`, if it is one.
    pub(crate) fn live(&self, id: &ContainerId) -> Option<&'a RecoveredContainer> {
        self.containers.iter().find(|c| &c.id == id)
    }

    /// Every live container.
    pub(crate) fn live_containers(&self) -> &'a [RecoveredContainer] {
        self.containers
    }

    /// Whether `id` is an orphan Mesos destroys after recovery.
    pub(crate) fn is_orphan(&self, id: &ContainerId) -> bool {
        self.orphans.contains(id)
    }
}
