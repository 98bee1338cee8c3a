//! A worker whose supervisor died holds every pipe alone: it offers the
//! listening socket and every container's descriptors to a new supervisor
//! (see `handover`) and stops once one took them.

use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

use super::Worker;
use crate::shipper::handover;

impl Worker {
    /// Without a supervisor: gives the listening socket and every
    /// container's descriptors to a new one once it waits for them (see
    /// `handover`). True when handed over: this worker must stop reading.
    pub(super) fn hand_over_if_asked(&mut self) -> bool {
        let Some(last) = self.orphaned else {
            return false;
        };
        if last.elapsed() < handover::OFFER_INTERVAL {
            return false;
        }
        self.orphaned = Some(Instant::now());
        // A stream at EOF is handed over as a pipe at EOF (the supervisor
        // holds two pipes per container).
        let mut at_eof = Vec::new();
        let mut list = Vec::with_capacity(self.containers.len());
        for c in self.containers.values() {
            let mut fds = Vec::with_capacity(4);
            for st in &c.streams {
                match &st.pipe {
                    Some(p) => fds.push(p.as_raw_fd()),
                    None => match crate::module::pipe(0) {
                        Ok((r, _)) => {
                            fds.push(r.as_raw_fd());
                            at_eof.push(r);
                        }
                        Err(e) => {
                            tracing::warn!("handover: {e}; trying again");
                            return false;
                        }
                    },
                }
            }
            if c.streams.iter().all(|s| s.stage.is_some()) {
                fds.extend(
                    c.streams
                        .iter()
                        .filter_map(|s| s.stage.as_ref().map(|(r, _)| r.as_raw_fd())),
                );
            }
            list.push((c.key.clone(), fds));
        }
        match handover::offer(&self.cfg.state_dir, self.listen.as_fd(), &list) {
            Ok(done) => {
                if done {
                    tracing::warn!(
                        containers = list.len(),
                        "handed every container to a new supervisor; stopping"
                    );
                }
                done
            }
            Err(e) => {
                tracing::error!("handing over to a new supervisor: {e}; still reading every pipe");
                false
            }
        }
    }
}
