//! A container's saved registration, which a restarted worker needs to take
//! the container back: `registration.json` and an identical copy, so that one
//! unreadable file costs nothing. What cannot be read at all never releases
//! the container: its sandbox path, if any copy still names one, keeps its
//! output flowing into its sandbox files; failing that, the output goes to a
//! directory of the shipper's own state (see the worker's `adopt`).

use std::io;
use std::path::{Path, PathBuf};

use crate::proto::{ContainerOptions, Registration, SinkKind, REGISTRATION_VERSION};
use crate::record::SourceMeta;

/// The registration.
pub const FILE: &str = "registration.json";
/// Its copy.
pub const COPY: &str = "registration.copy.json";

/// Saves the registration message `msg` (as the module sent it) and its copy.
pub fn save(dir: &Path, msg: &[u8]) -> io::Result<()> {
    crate::private::write_atomic(&dir.join(FILE), msg)?;
    crate::private::write_atomic(&dir.join(COPY), msg)
}

/// What could be read back of a container's registration.
#[derive(Debug)]
pub enum Loaded {
    /// All of it; `problem` says why the file itself was not used (the
    /// copy was).
    Full {
        /// The registration.
        reg: Box<Registration>,
        /// Why `registration.json` was unusable, if it was.
        problem: Option<String>,
    },
    /// Only the sandbox path: the container's output goes to its sandbox
    /// files and is not shipped.
    SandboxOnly {
        /// The sandbox directory.
        sandbox: PathBuf,
        /// Why the rest could not be used.
        problem: String,
    },
    /// Nothing usable.
    Nothing {
        /// Why.
        problem: String,
    },
}

/// Why one registration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// [`FILE`] or [`COPY`].
        file: &'static str,
        /// Why.
        source: io::Error,
    },
    /// Not a registration.
    #[error("{file}: unreadable: {source}")]
    Malformed {
        /// [`FILE`] or [`COPY`].
        file: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// A format this worker does not know.
    #[error("{file}: format version {version} not supported")]
    Version {
        /// [`FILE`] or [`COPY`].
        file: &'static str,
        /// The version it states.
        version: u32,
    },
    /// The registration of another container.
    #[error("{file}: names container {found:?}")]
    OtherKey {
        /// [`FILE`] or [`COPY`].
        file: &'static str,
        /// The key it names.
        found: String,
    },
    /// A relative sandbox path.
    #[error("{file}: sandbox {} is not absolute", sandbox.display())]
    RelativeSandbox {
        /// [`FILE`] or [`COPY`].
        file: &'static str,
        /// The path it names.
        sandbox: PathBuf,
    },
}

/// Reads registration file `file` of container `key`: its bytes (if it
/// could be read) and the registration they hold.
fn read(
    dir: &Path,
    file: &'static str,
    key: &str,
) -> (Option<Vec<u8>>, Result<Registration, RegistrationError>) {
    let bytes = match std::fs::read(dir.join(file)) {
        Ok(b) => b,
        Err(source) => return (None, Err(RegistrationError::Read { file, source })),
    };
    let reg = parse(&bytes, file, key);
    (Some(bytes), reg)
}

fn parse(bytes: &[u8], file: &'static str, key: &str) -> Result<Registration, RegistrationError> {
    let reg: Registration = serde_json::from_slice(bytes)
        .map_err(|source| RegistrationError::Malformed { file, source })?;
    if reg.version != REGISTRATION_VERSION {
        return Err(RegistrationError::Version {
            file,
            version: reg.version,
        });
    }
    if reg.key != key {
        return Err(RegistrationError::OtherKey {
            file,
            found: reg.key,
        });
    }
    if !reg.sandbox.is_absolute() {
        return Err(RegistrationError::RelativeSandbox {
            file,
            sandbox: reg.sandbox,
        });
    }
    Ok(reg)
}

/// The sandbox path of a registration that cannot be read whole.
fn sandbox_of(bytes: &[u8]) -> Option<PathBuf> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let p = PathBuf::from(v.get("sandbox")?.as_str()?);
    p.is_absolute().then_some(p)
}

/// Reads the registration of container `key` from its state directory `dir`.
pub fn load(dir: &Path, key: &str) -> Loaded {
    let (main, first) = read(dir, FILE, key);
    let first = match first {
        Ok(reg) => {
            return Loaded::Full {
                reg: Box::new(reg),
                problem: None,
            }
        }
        Err(e) => e,
    };
    let (copy, second) = read(dir, COPY, key);
    match second {
        Ok(reg) => Loaded::Full {
            reg: Box::new(reg),
            problem: Some(first.to_string()),
        },
        Err(second) => {
            let problem = format!("{first}; {second}");
            match [main, copy].iter().flatten().find_map(|b| sandbox_of(b)) {
                Some(sandbox) => Loaded::SandboxOnly { sandbox, problem },
                None => Loaded::Nothing { problem },
            }
        }
    }
}

/// A registration that only writes the output of container `key` into the
/// files of `sandbox` (nothing is parsed or shipped).
pub fn files_only(key: &str, sandbox: PathBuf) -> Registration {
    let chain = rein_core::container::ContainerId::from_file_name(key)
        .map_or_else(|| vec![key.to_string()], |id| id.chain().to_vec());
    Registration {
        version: REGISTRATION_VERSION,
        key: key.to_string(),
        meta: SourceMeta {
            container_chain: chain,
            sandbox: sandbox.clone(),
            ..SourceMeta::default()
        },
        options: ContainerOptions {
            sink: SinkKind::None,
            route: String::new(),
            multiline: None,
            rate_limit: 0,
            files: Vec::new(),
            file_caps: Default::default(),
            binary: Default::default(),
        },
        sandbox,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = include_str!("../../tests/fixtures/registration-v1.json");

    fn dir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (n, b) in files {
            std::fs::write(d.path().join(n), b).unwrap();
        }
        d
    }

    #[test]
    fn the_copy_stands_in_for_an_unreadable_file() {
        let d = dir_with(&[(FILE, b"{\"version\":1,\"ke"), (COPY, V1.as_bytes())]);
        match load(d.path(), "parent-1.c-v1") {
            Loaded::Full { reg, problem } => {
                assert_eq!(reg.key, "parent-1.c-v1");
                assert!(problem.unwrap().contains("registration.json"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_sandbox_path_alone_is_enough_for_files_only() {
        let broken = V1.replace("\"options\"", "\"opt\"");
        let d = dir_with(&[(FILE, broken.as_bytes())]);
        match load(d.path(), "parent-1.c-v1") {
            Loaded::SandboxOnly { sandbox, .. } => assert_eq!(sandbox, PathBuf::from("/SANDBOX")),
            other => panic!("{other:?}"),
        }
        let d = dir_with(&[(FILE, b"\x00garbage")]);
        assert!(matches!(
            load(d.path(), "parent-1.c-v1"),
            Loaded::Nothing { .. }
        ));
        let other_major = V1.replace("\"version\": 1", "\"version\": 2");
        let d = dir_with(&[(FILE, other_major.as_bytes())]);
        assert!(matches!(
            load(d.path(), "parent-1.c-v1"),
            Loaded::SandboxOnly { .. }
        ));
        let reg = files_only("parent-1.c-v1", "/SANDBOX".into());
        assert_eq!(reg.meta.container_chain, ["parent-1", "c-v1"]);
        assert_eq!(reg.options.sink, SinkKind::None);
    }
}
