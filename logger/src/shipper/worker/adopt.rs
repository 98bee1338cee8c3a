//! Taking back, after a restart, the containers the supervisor holds.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use super::control::{self, Adoption};
use super::register::valid_key;
use super::{Worker, WorkerError};
use crate::record::Stream;
use crate::shipper::parser::Checkpoint;
use crate::shipper::registration::{self, Loaded};
use crate::shipper::stream;

impl Worker {
    /// Takes back the containers the supervisor holds (after a restart).
    /// A container is released (the supervisor closes its pipes) only when
    /// its output can go nowhere at all: an unreadable registration or a
    /// failed attach leaves it writing into its sandbox files, or into the
    /// shipper's own state, never blocked on a pipe nobody reads.
    pub fn adopt(&mut self) -> Result<(), WorkerError> {
        loop {
            match control::next_adoption(&self.control)? {
                Adoption::Done => return Ok(()),
                Adoption::Other => {}
                Adoption::Container { key, fds } => {
                    if !matches!(fds.len(), 2 | 4) || !valid_key(&key) {
                        let why = format!("bad key or {} descriptors", fds.len());
                        self.release(&key, &why);
                        continue;
                    }
                    self.adopt_one(&key, fds);
                }
            }
        }
    }

    fn adopt_one(&mut self, key: &str, fds: Vec<OwnedFd>) {
        let dir = self.container_dir(key);
        let cp = std::fs::read(dir.join("checkpoint.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Checkpoint>(&b).ok());
        let records = || [Stream::Stdout, Stream::Stderr].map(|s| stream::load_record(&dir, s));
        // Spares of the descriptors: a failed attach drops the ones it was given.
        let spare: Vec<OwnedFd> = fds.iter().filter_map(|f| f.try_clone().ok()).collect();
        let failed = match registration::load(&dir, key) {
            Loaded::Full { reg, problem } => {
                if let Some(p) = problem {
                    self.unreadable(key, &p, "taken back from the copy");
                } else {
                    // Written by an older version without the copy: make it now.
                    let copy = dir.join(registration::COPY);
                    if !copy.exists() {
                        if let Ok(b) = std::fs::read(dir.join(registration::FILE)) {
                            let _ = self.reserve.save(&dir, b.len() as u64, || {
                                crate::private::write_atomic(&copy, &b)
                            });
                        }
                    }
                }
                match self.attach(*reg, fds, cp, records(), None, true) {
                    Ok(_) => return,
                    Err(e) => e.to_string(),
                }
            }
            Loaded::SandboxOnly { sandbox, problem } => {
                self.unreadable(key, &problem, "its output goes to its sandbox files only");
                let reg = registration::files_only(key, sandbox);
                match self.attach(reg, fds, None, records(), None, false) {
                    Ok(_) => return,
                    Err(e) => e.to_string(),
                }
            }
            Loaded::Nothing { problem } => {
                self.unreadable(key, &problem, "no sandbox known");
                drop(fds);
                problem
            }
        };
        // Last resort: the shipper's own state, so that the container never blocks.
        let spill = self.cfg.state_dir.join("unregistered").join(key);
        tracing::error!(
            container = key,
            "cannot take the container back ({failed}): its output goes to {}",
            spill.display()
        );
        let res = match crate::private::create_dir(&spill) {
            Ok(()) => {
                let reg = registration::files_only(key, spill.clone());
                self.attach(reg, spare, None, [None, None], None, false)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("{}: {e}", spill.display())),
        };
        if let Err(e) = res {
            self.release(key, &e);
        }
    }

    fn unreadable(&self, key: &str, problem: &str, outcome: &str) {
        self.counters
            .registrations_unreadable
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            container = key,
            "registration unreadable ({problem}): {outcome}"
        );
    }

    /// Tells the supervisor to close the container's pipes (its output can go nowhere).
    fn release(&self, key: &str, why: &str) {
        self.counters
            .containers_released
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            container = key,
            "cannot take the container back ({why}); releasing it"
        );
        control::send_del(&self.control, key);
    }
}
