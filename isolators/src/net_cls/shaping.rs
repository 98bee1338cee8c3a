//! Egress shaping of the net_cls isolator's containers: their classes set at
//! `isolate()`, changed at `update()`, read at `usage()`, re-adopted at recovery;
//! classes no container claims are removed (and retried while the kernel refuses).
//! Every kernel effect goes through [`EgressKernel`].

use std::collections::HashMap;

use tracing::{info, warn};

use rein_core::isolator::{Error, NetTx};
use rein_core::{ContainerId, RecoveredContainer, Resources, Statistics};

use crate::egress::{self, EgressKernel, EgressParams, Shape};

use super::{EgressRecord, Handle, NetClsIsolator, Record};

/// Shaping policy and the kernel seam, when enabled.
#[derive(Debug)]
pub(super) struct Egress {
    pub(super) params: EgressParams,
    pub(super) kernel: Box<dyn EgressKernel>,
}

/// A host class left behind that could not be removed, or a device whose classes
/// could not be listed (the whole look-up is retried then).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum StaleClass {
    Scan,
    Class(u32),
}

/// The shaping and the record of a shaped top-level container.
fn shaped<'a>(
    egress: &'a mut Option<Egress>,
    containers: &'a mut HashMap<ContainerId, Record>,
    id: &ContainerId,
) -> Option<(&'a mut Egress, &'a mut Record, EgressRecord)> {
    let egress = egress.as_mut()?;
    let record = containers.get_mut(id)?;
    let e = record.egress?;
    Some((egress, record, e))
}

impl NetClsIsolator {
    /// Enables egress shaping on `kernel` (the real [`egress::Shaper`], or a fake);
    /// the tree's link and default classes' handles are never given to containers.
    pub fn with_egress(
        mut self,
        params: EgressParams,
        kernel: impl EgressKernel + 'static,
    ) -> Self {
        let primary = self.allocator.primary();
        for minor in [egress::LINK_MINOR, egress::DEFAULT_MINOR] {
            // Outside the secondary range, they cannot be handed out anyway.
            let _ = self.allocator.reserve(Handle {
                primary,
                secondary: minor,
            });
        }
        self.egress = Some(Egress {
            params,
            kernel: Box::new(kernel),
        });
        self
    }

    /// The shaping kernel, when egress shaping is on (tests, harness).
    pub fn shaper(&mut self) -> Option<&mut (dyn EgressKernel + 'static)> {
        self.egress.as_mut().map(|e| e.kernel.as_mut())
    }

    /// A container's egress shape, if it is shaped.
    pub fn egress_shape(&self, id: &ContainerId) -> Option<Shape> {
        self.containers
            .get(&id.root())
            .and_then(|r| r.egress)
            .map(|e| e.shape)
    }

    /// Creates the container's class: inside its own network namespace if it has
    /// one, on the host's devices otherwise.
    pub(super) fn shape(&mut self, id: &ContainerId, pid: i32) -> Result<(), Error> {
        let Some((egress, record, mut e)) = shaped(&mut self.egress, &mut self.containers, id)
        else {
            return Ok(());
        };
        let kernel = &mut egress.kernel;
        let classid = record.handle.classid();
        let own_netns = kernel.has_own_netns(pid)?;
        let result = if own_netns {
            kernel.add_netns(classid, &e.shape, pid).map(|n| {
                if n == 0 {
                    warn!(container = %id, "own network namespace has no device to shape yet");
                }
            })
        } else {
            kernel.add_host(classid, &e.shape, e.cgroup_id)
        };
        if let Err(err) = result {
            // Leave no half-made class behind; the launch fails.
            let _ = kernel.remove(classid, e.cgroup_id);
            return Err(err.into());
        }
        e.netns = own_netns;
        e.active = true;
        record.egress = Some(e);
        info!(container = %id, class = %record.handle, rate = e.shape.rate, ceil = e.shape.ceil, own_netns, "shaping egress");
        Ok(())
    }

    /// Follows a change of the container's cpus, for a rate derived from them.
    pub(super) fn reshape(&mut self, id: &ContainerId, resources: &Resources) -> Result<(), Error> {
        let Some((egress, record, mut e)) = shaped(&mut self.egress, &mut self.containers, id)
        else {
            return Ok(());
        };
        let shape = e.shape.updated(&egress.params, resources.cpus);
        if shape == e.shape {
            return Ok(());
        }
        if e.active {
            egress.kernel.change(record.handle.classid(), &shape)?;
        }
        e.shape = shape;
        record.egress = Some(e);
        self.store.save(id, &*record)?;
        info!(container = %id, rate = shape.rate, "egress rate follows the container's cpus");
        Ok(())
    }

    /// The container's egress counters and shape, as the kernel holds them.
    pub(super) fn egress_usage(&mut self, id: &ContainerId) -> Result<Statistics, Error> {
        let Some((egress, record, e)) = shaped(&mut self.egress, &mut self.containers, &id.root())
        else {
            return Ok(Statistics::default());
        };
        if !e.active {
            return Ok(Statistics::default());
        }
        let stats = egress.kernel.stats(record.handle.classid())?;
        // What the kernel holds, read back; computed with its rounding when no
        // device had the class (a namespace without devices yet).
        let held = stats
            .held
            .unwrap_or_else(|| egress::expected_held(&e.shape));
        Ok(Statistics {
            net_tx: Some(NetTx {
                bytes: stats.bytes,
                packets: stats.packets,
                dropped: stats.drops,
                rate_limit: held.rate,
                burst_rate_limit: held.ceil,
                burst_size: held.burst,
            }),
            ..Statistics::default()
        })
    }

    /// Brings a recovered shape within the operator's current caps (saved when changed).
    pub(super) fn recap_egress(&mut self, id: &ContainerId, record: &mut Record) {
        let recapped = match (&self.egress, &mut record.egress) {
            (Some(egress), Some(e)) => {
                let capped = e.shape.within_caps(&egress.params);
                let changed = capped != e.shape;
                if changed {
                    warn!(container = %id, recorded = ?e.shape, now = ?capped,
                          "recovered egress shaping above the operator's current caps; brought within them");
                    e.shape = capped;
                }
                changed
            }
            _ => false,
        };
        if recapped {
            if let Err(err) = self.store.save(id, &*record) {
                warn!(container = %id, "saving net_cls state: {err}");
            }
        }
    }

    /// Re-adopts a recovered container's class where it was shaped: in its own
    /// namespace if its init process lives in one, on the host otherwise.
    pub(super) fn adopt_egress(
        &mut self,
        id: &ContainerId,
        record: &mut Record,
        live: Option<&RecoveredContainer>,
    ) {
        if let (Some(egress), Some(e)) = (&mut self.egress, &mut record.egress) {
            let classid = record.handle.classid();
            // Where it was shaped follows from where its init process lives.
            let pid = live.and_then(|c| c.pid);
            let own_netns = match pid {
                Some(pid) => egress.kernel.has_own_netns(pid).unwrap_or(false),
                None => false,
            };
            let adopted = match pid {
                Some(pid) if own_netns => egress.kernel.adopt_netns(classid, &e.shape, pid),
                _ => egress.kernel.adopt_host(classid, &e.shape, e.cgroup_id),
            };
            match adopted {
                Ok(()) => {
                    e.netns = own_netns;
                    e.active = true;
                }
                Err(err) => {
                    self.counters.recover_failures += 1;
                    warn!(container = %id, "cannot re-adopt the egress class: {err}");
                }
            }
        }
    }

    /// Removes host classes no container claims; one that fails keeps its handle
    /// out of use and is retried later.
    pub(super) fn remove_unclaimed_classes(&mut self) {
        let Some(egress) = &mut self.egress else {
            return;
        };
        // Active host classes are claimed; so are those of containers whose own
        // cleanup is pending (it removes their class, and reports it once).
        let held: Vec<u32> = self
            .containers
            .iter()
            .filter(|(id, r)| {
                r.egress.is_some_and(|e| e.active && !e.netns) || self.pending.contains(id)
            })
            .map(|(_, r)| r.handle.classid())
            .collect();
        let report = egress.kernel.remove_unclaimed(&|c| held.contains(&c));
        for classid in report.removed {
            self.stale_class_gone(StaleClass::Class(classid));
        }
        if !report.failed.iter().any(|f| f.classid.is_none()) {
            self.stale_class_gone(StaleClass::Scan);
        }
        for failure in report.failed {
            self.counters.cleanup_failures += 1;
            let key = match failure.classid {
                Some(classid) => {
                    let handle = Handle::from_classid(classid);
                    if self.allocator.reserve(handle).is_ok() {
                        self.held_for_stale.insert(handle);
                    }
                    StaleClass::Class(classid)
                }
                None => StaleClass::Scan,
            };
            let retry_in = self.stale_classes.failed(key, failure.error.to_string());
            match failure.classid {
                Some(classid) => warn!(device = failure.device, class = %Handle::from_classid(classid), ?retry_in,
                    "removing an unclaimed egress class failed: {}; its handle is kept out of use and the removal retried", failure.error),
                None => warn!(device = failure.device, ?retry_in,
                    "listing the device's egress classes failed: {}; unclaimed classes are looked for again later", failure.error),
            }
        }
    }

    pub(super) fn retry_stale_class(&mut self, classid: u32) {
        let Some(egress) = &mut self.egress else {
            self.stale_classes.forget(&StaleClass::Class(classid));
            return;
        };
        match egress.kernel.remove_host_class(classid) {
            Ok(()) => self.stale_class_gone(StaleClass::Class(classid)),
            Err(err) => {
                self.counters.cleanup_failures += 1;
                let retry_in = self
                    .stale_classes
                    .failed(StaleClass::Class(classid), err.to_string());
                warn!(class = %Handle::from_classid(classid), ?retry_in, "removing an unclaimed egress class failed again: {err}");
            }
        }
    }

    pub(super) fn stale_class_gone(&mut self, key: StaleClass) {
        if self.stale_classes.succeeded(&key) == 0 {
            return;
        }
        self.counters.cleanups_retried += 1;
        if let StaleClass::Class(classid) = key {
            let handle = Handle::from_classid(classid);
            info!(class = %handle, "unclaimed egress class removed on a retry");
            if self.held_for_stale.remove(&handle) {
                self.release_handle(handle);
            }
        }
    }
}
