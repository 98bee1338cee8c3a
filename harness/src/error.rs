//! What can end a harness run, each naming the object and the reason.

use std::io;
use std::path::PathBuf;

use rein_core::container::InvalidContainerId;
use rein_core::state::StateError;

/// An error that ends the run (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// `--config` cannot be read.
    #[error("reading {}: {source}", path.display())]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The configuration is not valid JSON of the expected shape.
    #[error("parsing the configuration: {0}")]
    ParseConfig(#[from] serde_json::Error),
    /// A configured isolator or the logger refused to start.
    #[error(
        "{what} cannot start: {reason} (fix its module parameters, or remove it from the \
         configuration to run without it)"
    )]
    CannotStart {
        /// `isolator 'KIND'` or `the container logger`.
        what: String,
        /// The module's message.
        reason: String,
    },
    /// The harness's own state (its container records).
    #[error(transparent)]
    State(#[from] StateError),
    /// A container id that is not one.
    #[error(transparent)]
    ContainerId(#[from] InvalidContainerId),
    /// An isolator's `recover()` failed.
    #[error(transparent)]
    Recover(crate::modules::CallError),
    /// `wait ID` / `destroy ID` of a container that is not live.
    #[error("no live container '{0}'")]
    NoLiveContainer(String),
    /// A file-system or process step of the harness itself.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming its object.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// A call of the lifecycle benchmark failed.
    #[error("container {index}: {message}")]
    Bench {
        /// Which lifecycle.
        index: usize,
        /// The isolator's error.
        message: String,
    },
}

impl HarnessError {
    /// An I/O step's error, saying what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| HarnessError::Io { what, source }
    }
}
