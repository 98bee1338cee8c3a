//! A test isolator (feature `probe`) that misbehaves on purpose.

use rein_core::isolator::Error;
use rein_core::{ContainerId, ContainerSpec, Isolator, LaunchInfo, RecoveredContainer};

/// Panics in `prepare()`, fails `isolate()`, succeeds otherwise.
pub(crate) struct Probe;

impl Isolator for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn recover(&mut self, _: &[RecoveredContainer], _: &[ContainerId]) -> Result<(), Error> {
        Ok(())
    }

    fn prepare(&mut self, spec: &ContainerSpec) -> Result<LaunchInfo, Error> {
        panic!("probe panics in prepare for {}", spec.id);
    }

    fn isolate(&mut self, id: &ContainerId, pid: i32) -> Result<(), Error> {
        Err(format!("probe refuses to isolate {id} (pid {pid})").into())
    }

    fn cleanup(&mut self, _: &ContainerId) -> Result<(), Error> {
        Ok(())
    }
}
