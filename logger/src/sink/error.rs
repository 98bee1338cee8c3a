//! Why a sink cannot be built from its settings: the error names the setting
//! (its shipper key) and the reason, never a secret (values that may hold
//! one are scrubbed before they get here).

use std::path::PathBuf;

/// A setting a sink refuses.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A value the sink cannot use.
    #[error("{key} `{value}`: {reason}")]
    Value {
        /// The shipper key (`redis_url`, `es_index`, ...).
        key: &'static str,
        /// The value as shown (secrets scrubbed).
        value: String,
        /// Why.
        reason: String,
    },
    /// A file a setting names that cannot be read or used.
    #[error("{key} {}: {reason}", path.display())]
    File {
        /// The shipper key (`es_auth_file`, `redis_auth_file`, ...).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The client library refused the settings as a whole.
    #[error("{key}: {reason}")]
    Client {
        /// The settings it was given (`kafka_properties`, ...).
        key: &'static str,
        /// Its message (secrets scrubbed).
        reason: String,
    },
}

impl SinkError {
    /// The error of the file `path` named by setting `key`.
    pub fn file(key: &'static str, path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        SinkError::File {
            key,
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}
