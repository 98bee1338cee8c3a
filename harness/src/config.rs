//! The harness configuration: which isolators run, with which module parameters.
//! The same parameters as in the agent's `--modules` manifest.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::HarnessError;

/// One isolator and its module parameters.
#[derive(Debug, Clone, Deserialize)]
pub struct IsolatorConfig {
    /// Kind (`net_cls`, `blkio`, `disk`).
    pub kind: String,
    /// Module parameters, as in the manifest.
    #[serde(default)]
    pub parameters: Vec<(String, String)>,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Where the harness and the isolators keep their state.
    pub state_dir: PathBuf,
    /// Where sandboxes are made (a disk-backed filesystem, as the agent's work_dir, so
    /// that disk and block I/O isolation have a real device to work on).
    #[serde(default = "default_sandbox_dir")]
    pub sandbox_dir: PathBuf,
    /// Isolators, in `--isolation` order.
    pub isolators: Vec<IsolatorConfig>,
    /// The container logger's module parameters; absent: output goes to the terminal.
    #[serde(default)]
    pub logger: Option<LoggerConfig>,
}

/// The container logger and its module parameters.
#[derive(Debug, Clone, Deserialize)]
pub struct LoggerConfig {
    /// Module parameters, as in the manifest.
    #[serde(default)]
    pub parameters: Vec<(String, String)>,
}

/// The embedded default: every isolator this library has, with parameters that
/// work on a stock Linux host (as root), under the cgroups root `rein-run`.
pub const DEFAULT: &str = r#"{
  "state_dir": "/var/run/rein-run",
  "isolators": [
    { "kind": "net_cls", "parameters": [
        ["net_cls_primary_handle", "0xe"],
        ["net_cls_secondary_handles", "0x1,0xffff"],
        ["mount_net_cls", "true"] ] },
    { "kind": "blkio", "parameters": [
        ["allowed_devices", "sandbox"] ] },
    { "kind": "disk", "parameters": [
        ["default_mode", "account"],
        ["allowed_modes", "account,enforce,kill"] ] }
  ]
}"#;

fn default_sandbox_dir() -> PathBuf {
    PathBuf::from("/var/lib/rein-run/sandboxes")
}

impl Config {
    /// Loads a file, or the embedded default.
    pub fn load(path: Option<&Path>) -> Result<Self, HarnessError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| HarnessError::ReadConfig {
                path: p.to_owned(),
                source,
            })?,
            None => DEFAULT.to_owned(),
        };
        let mut config: Config = serde_json::from_str(&text)?;
        config.fill_shared_parameters();
        Ok(config)
    }

    /// Gives every isolator the harness's state directory and cgroups root unless
    /// the configuration sets them.
    fn fill_shared_parameters(&mut self) {
        let state = self
            .state_dir
            .join("isolators")
            .to_string_lossy()
            .into_owned();
        for iso in &mut self.isolators {
            for (name, value) in [("state_dir", state.as_str()), ("cgroups_root", "rein-run")] {
                if !iso.parameters.iter().any(|(k, _)| k == name) {
                    iso.parameters.push((name.to_owned(), value.to_owned()));
                }
            }
        }
    }

    /// Overrides the state directory (tests, unprivileged runs).
    pub fn with_state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = dir.to_owned();
        self.sandbox_dir = dir.join("sandboxes");
        for iso in &mut self.isolators {
            iso.parameters.retain(|(k, _)| k != "state_dir");
        }
        self.fill_shared_parameters();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_parses_and_gets_shared_parameters() {
        let c = Config::load(None).unwrap();
        assert!(!c.isolators.is_empty());
        for iso in &c.isolators {
            assert!(iso
                .parameters
                .iter()
                .any(|(k, v)| k == "cgroups_root" && v == "rein-run"));
            assert!(iso.parameters.iter().any(|(k, _)| k == "state_dir"));
        }
        let c = c.with_state_dir(Path::new("/tmp/x"));
        let state: Vec<_> = c.isolators[0]
            .parameters
            .iter()
            .filter(|(k, _)| k == "state_dir")
            .collect();
        assert_eq!(state.len(), 1);
        assert_eq!(state[0].1, "/tmp/x/isolators");
    }
}
