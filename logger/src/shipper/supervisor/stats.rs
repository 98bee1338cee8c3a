//! The supervisor's own counters, in `state_dir/supervisor.json` (kept
//! across restarts of the supervisor: they count since the state directory
//! was created).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The supervisor's state file name in `state_dir`.
pub const STATS_FILE: &str = "supervisor.json";

/// See the module's doc.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SupervisorStats {
    /// This supervisor's pid.
    pub pid: u32,
    /// The current worker's pid (0 while none runs).
    pub worker_pid: i32,
    /// Workers started.
    pub worker_starts: u64,
    /// Workers that exited without being asked to (crash, kill).
    pub worker_exits: u64,
    /// Failed attempts to start a worker (binary missing or not executable,
    /// exec or fork failure); retried with backoff, pipes held meanwhile.
    pub spawn_failures: u64,
    /// Workers ended because the list of containers could not be handed to
    /// them; the next worker gets the whole list.
    pub adoption_failures: u64,
    /// SIGHUP restarts put off because the binary on disk was not executable
    /// (the running worker stays until it is).
    pub restarts_deferred: u64,
    /// Messages of a worker handled after it died (registrations it had
    /// sent just before).
    pub messages_after_exit: u64,
    /// Messages of a worker not understood or out of place (each logged;
    /// nothing held changed).
    pub messages_refused: u64,
    /// Orphaned workers taken over after a supervisor died.
    pub handovers: u64,
    /// Containers whose pipes this supervisor holds now.
    pub containers_held: u64,
    /// The last error, and when (seconds since the epoch).
    pub last_error: String,
    /// See `last_error`.
    pub last_error_unix: u64,
}

impl SupervisorStats {
    /// The counters left in `state_dir` (zero when there are none yet).
    pub fn load(state_dir: &Path) -> SupervisorStats {
        std::fs::read(state_dir.join(STATS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes them to `state_dir`; a failure is logged (the counters stay in
    /// memory and are written again with the next change).
    pub fn save(&self, state_dir: &Path) {
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        if let Err(e) = crate::private::write_atomic(&state_dir.join(STATS_FILE), &json) {
            tracing::warn!("writing {STATS_FILE}: {e}");
        }
    }
}
