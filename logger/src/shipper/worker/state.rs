//! A container's state the state directory did not take at attach (full or
//! failing): the container stays attached and the state is saved later.

use std::sync::atomic::Ordering;

use super::Worker;
use crate::shipper::registration;

impl Worker {
    pub(super) fn state_unsaved(&self, key: &str, what: &str, e: &std::io::Error) {
        self.counters
            .state_save_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            container = key,
            "saving the {what}: {e}; the container stays attached and it is saved once the state directory takes it"
        );
    }

    /// Retries the state the state directory did not take at attach.
    pub(super) fn save_pending_state(&mut self) {
        let mut left = 0u64;
        let reserve = &self.reserve;
        for c in self.containers.values_mut() {
            if let Some(msg) = &c.unsaved.registration {
                let need = 2 * msg.len() as u64;
                if reserve
                    .save(&c.dir, need, || registration::save(&c.dir, msg))
                    .is_ok()
                {
                    c.unsaved.registration = None;
                }
            }
            if let Some(body) = &c.unsaved.checkpoint {
                // The parser's own checkpoint, once saved, is newer: kept.
                let path = c.dir.join("checkpoint.json");
                if reserve
                    .save(&c.dir, body.len() as u64, || {
                        crate::private::write_new(&path, body)
                    })
                    .is_ok()
                {
                    c.unsaved.checkpoint = None;
                }
            }
            if c.unsaved.any() {
                left += 1;
            }
        }
        let before = self
            .counters
            .containers_state_unsaved
            .swap(left, Ordering::Relaxed);
        if left < before {
            tracing::info!(
                containers = before - left,
                "container state saved after all"
            );
        }
    }
}
