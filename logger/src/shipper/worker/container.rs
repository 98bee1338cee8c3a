//! What the worker keeps of one attached container.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::bucket::Bucket;
use crate::shipper::stream::StreamState;
use crate::wal::Wal;

/// One attached container: the reader halves of its two streams and what
/// decides whether they are read.
#[derive(Debug)]
pub(super) struct Container {
    pub(super) key: String,
    /// Its private state directory.
    pub(super) dir: PathBuf,
    pub(super) streams: Vec<StreamState>,
    /// Its sink's disk buffer (`None`: sandbox files only).
    pub(super) wal: Option<Arc<Wal>>,
    /// Reading paused while the disk buffer is full.
    pub(super) paused: bool,
    /// Its rate limit, if any.
    pub(super) bucket: Option<Bucket>,
    /// The parser thread following it (woken when its files grow).
    pub(super) parser: usize,
    /// Set by the parser once everything is parsed and synced after EOF.
    pub(super) finished: Arc<AtomicBool>,
    /// State the state directory did not take yet (retried every second).
    pub(super) unsaved: Unsaved,
    /// The previous worker's staging pipes while their bytes are not all in
    /// the files (the sandbox disk refused them): the container's pipes are
    /// not read until they are, and the supervisor holds these.
    pub(super) old_stages: Option<Vec<OwnedFd>>,
}

/// A container's state that could not be saved when it was attached (a full
/// or failing state directory): the container is attached all the same.
#[derive(Debug, Default)]
pub(super) struct Unsaved {
    /// The registration message, for `registration.json` and its copy.
    pub(super) registration: Option<Vec<u8>>,
    /// The first checkpoint (only written if the parser has not saved one).
    pub(super) checkpoint: Option<Vec<u8>>,
}

impl Unsaved {
    pub(super) fn any(&self) -> bool {
        self.registration.is_some() || self.checkpoint.is_some()
    }
}
