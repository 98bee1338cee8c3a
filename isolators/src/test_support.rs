//! Fixtures shared by the isolators' unit tests.

use std::path::Path;

use rein_core::params::CommonParams;

/// Module parameters of a test whose state and (fake) cgroup hierarchies live
/// under `dir`, with the agent's `mesos` root and no mount table.
pub(crate) fn common_in(dir: &Path) -> CommonParams {
    CommonParams {
        state_dir: dir.join("state"),
        cgroups_hierarchy: dir.to_owned(),
        cgroups_root: "mesos".into(),
        mountinfo: "/nonexistent".into(),
        allow_debug_panic: false,
        spare_cgroups: 0,
    }
}
