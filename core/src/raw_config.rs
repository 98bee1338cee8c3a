//! A container's configuration as the shim copies it (bytes), decided field by
//! field into the [`ContainerSpec`] the modules read.

use std::path::PathBuf;

use crate::container::{ids_from_sandbox, ContainerId, ContainerSpec, ResourceEntry, Resources};
use crate::field_bytes::{exact_pair, exact_text, lossy_text, shown, utf8_problem, InvalidField};

impl ContainerId {
    /// Builds an id from its chain as the shim copies it (bytes, root first). A
    /// segment that is not UTF-8 is refused: ids name cgroups, state files and
    /// records, so they are never altered.
    pub fn from_bytes<I>(chain: I) -> Result<Self, InvalidField>
    where
        I: IntoIterator<Item = Vec<u8>>,
    {
        let mut ids = Vec::new();
        for (i, segment) in chain.into_iter().enumerate() {
            if let Some(problem) = utf8_problem(&segment) {
                return Err(InvalidField::new(
                    "container id",
                    format!(
                        "segment {} '{}' is not valid UTF-8 ({problem})",
                        i + 1,
                        shown(&segment)
                    ),
                ));
            }
            ids.push(String::from_utf8(segment).unwrap_or_default());
        }
        Ok(Self::new(ids)?)
    }
}

impl ResourceEntry {
    /// An entry as the shim copies it. Only `cpus`, `mem` and `disk` are read, so a
    /// name that is not UTF-8 (a framework's custom resource) is carried with U+FFFD
    /// and simply matches none of them.
    pub fn from_bytes(name: Vec<u8>, scalar: f64, has_disk_info: bool) -> Self {
        Self {
            name: lossy_text(name).0,
            scalar,
            has_disk_info,
        }
    }
}

/// The fields of a Mesos `ContainerConfig` exactly as the shim copies them: bytes.
/// [`RawContainerConfig::decode`] decides, field by field, what a container may
/// carry (see its documentation).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawContainerConfig {
    /// The container id with its parents, root first.
    pub container: Vec<Vec<u8>>,
    /// `directory`: host path of the sandbox.
    pub directory: Vec<u8>,
    /// `user`, empty when unset.
    pub user: Vec<u8>,
    /// `task_info.task_id`, empty when unset.
    pub task_id: Vec<u8>,
    /// `task_info.name`.
    pub task_name: Vec<u8>,
    /// `executor_info.executor_id`.
    pub executor_id: Vec<u8>,
    /// `executor_info.framework_id`.
    pub framework_id: Vec<u8>,
    /// `task_info.labels`.
    pub task_labels: Vec<(Vec<u8>, Vec<u8>)>,
    /// `executor_info.labels`.
    pub executor_labels: Vec<(Vec<u8>, Vec<u8>)>,
    /// `command_info.environment` values whose name starts with `REIN_`.
    pub environment: Vec<(Vec<u8>, Vec<u8>)>,
    /// `resources`, already converted.
    pub resources: Vec<ResourceEntry>,
    /// `container_class == DEBUG`.
    pub debug: bool,
}

/// A decoded configuration and the fields that were carried with U+FFFD.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedConfig {
    /// What the modules read.
    pub spec: ContainerSpec,
    /// Each field whose invalid UTF-8 was replaced (`task label 'x\xff'`), for the
    /// log line that says so.
    pub altered: Vec<String>,
}

impl RawContainerConfig {
    /// Decides what the container may carry:
    /// - the container id, the sandbox directory and the user must be exact (they
    ///   name cgroups, paths, state records and credentials): refused if not UTF-8;
    /// - our labels (`rein.*`, in either label set) and our variables (`REIN_*`) are
    ///   settings: refused if their name or value is not UTF-8, naming the label;
    /// - other labels, the task name and the task, executor and framework ids are only
    ///   displayed or shipped with the records: carried with U+FFFD and reported in
    ///   [`DecodedConfig::altered`], so a foreign label never fails a container.
    pub fn decode(self) -> Result<DecodedConfig, InvalidField> {
        use crate::schema::{ENV_PREFIX, LABEL_PREFIX};

        let mut altered = Vec::new();
        let id = ContainerId::from_bytes(self.container)?;
        let sandbox = PathBuf::from(exact_text(|| "sandbox directory".into(), self.directory)?);
        let user = exact_text(|| "user".into(), self.user)?;
        let mut shipped = |what: &str, bytes: Vec<u8>| {
            let (text, lossy) = lossy_text(bytes);
            if lossy {
                altered.push(what.to_owned());
            }
            (!text.is_empty()).then_some(text)
        };
        let task_id = shipped("task id", self.task_id);
        let task_name = shipped("task name", self.task_name);
        let executor_id = shipped("executor id", self.executor_id);
        let framework_id = shipped("framework id", self.framework_id);
        let mut labels = |what: &str, pairs: Vec<(Vec<u8>, Vec<u8>)>| {
            let mut out = Vec::with_capacity(pairs.len());
            for (key, value) in pairs {
                if key.starts_with(LABEL_PREFIX.as_bytes()) {
                    out.push(exact_pair(what, key, value)?);
                } else {
                    let name = shown(&key);
                    let (key, key_lossy) = lossy_text(key);
                    let (value, value_lossy) = lossy_text(value);
                    if key_lossy || value_lossy {
                        altered.push(format!("{what} '{name}'"));
                    }
                    out.push((key, value));
                }
            }
            Ok::<_, InvalidField>(out)
        };
        let task_labels = labels("task label", self.task_labels)?;
        let executor_labels = labels("executor label", self.executor_labels)?;
        let mut environment = Vec::new();
        for (name, value) in self.environment {
            // Defence in depth: the shim passes only our variables; never keep others.
            if name.starts_with(ENV_PREFIX.as_bytes()) {
                environment.push(exact_pair("variable", name, value)?);
            }
        }
        let agent_id = ids_from_sandbox(&sandbox).map(|(agent, ..)| agent);
        Ok(DecodedConfig {
            spec: ContainerSpec {
                id,
                sandbox,
                user: (!user.is_empty()).then_some(user),
                task_id,
                task_name,
                executor_id,
                framework_id,
                agent_id,
                task_labels,
                executor_labels,
                environment,
                resources: Resources::from_entries(&self.resources),
                debug: self.debug,
            },
            altered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(labels: Vec<(&[u8], &[u8])>) -> RawContainerConfig {
        RawContainerConfig {
            container: vec![b"c1".to_vec()],
            directory: b"/w/slaves/S1/frameworks/F/executors/E/runs/c1".to_vec(),
            task_labels: labels
                .into_iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
            ..RawContainerConfig::default()
        }
    }

    #[test]
    fn our_label_with_invalid_utf8_is_refused_naming_it() {
        let err = raw(vec![(b"rein.net.egress.rate", b"1mb\xffit")])
            .decode()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "task label 'rein.net.egress.rate': value is not valid UTF-8 (byte 0xff at offset 3)"
        );
        let err = raw(vec![(b"rein.net\xfe", b"1")]).decode().unwrap_err();
        assert_eq!(
            err.to_string(),
            "task label 'rein.net\\xfe': name is not valid UTF-8 (byte 0xfe at offset 8)"
        );
    }

    #[test]
    fn foreign_labels_are_carried_lossily_and_reported() {
        let decoded = raw(vec![(b"team\xff", b"a\xc3"), (b"rein.disk.mode", b"kill")])
            .decode()
            .unwrap();
        assert_eq!(
            decoded.spec.task_labels,
            vec![
                ("team\u{fffd}".to_owned(), "a\u{fffd}".to_owned()),
                ("rein.disk.mode".to_owned(), "kill".to_owned())
            ]
        );
        assert_eq!(decoded.altered, vec!["task label 'team\\xff'".to_owned()]);
        assert_eq!(decoded.spec.agent_id.as_deref(), Some("S1"));
    }

    #[test]
    fn exact_fields_are_refused_naming_them() {
        let mut r = raw(vec![]);
        r.container = vec![b"root".to_vec(), b"ch\xffild".to_vec()];
        assert_eq!(
            r.decode().unwrap_err().to_string(),
            "container id: segment 2 'ch\\xffild' is not valid UTF-8 (byte 0xff at offset 2)"
        );
        let mut r = raw(vec![]);
        r.directory = b"/w/\xe2\x82".to_vec();
        assert_eq!(
            r.decode().unwrap_err().to_string(),
            "sandbox directory: not valid UTF-8 (byte 0xe2 at offset 3, an incomplete sequence at the end)"
        );
        let mut r = raw(vec![]);
        r.user = b"n\x80body".to_vec();
        assert!(r.decode().unwrap_err().to_string().starts_with("user: "));
        let mut r = raw(vec![]);
        r.environment = vec![(b"REIN_LOG_SINK".to_vec(), b"\xff".to_vec())];
        assert_eq!(
            r.decode().unwrap_err().to_string(),
            "variable 'REIN_LOG_SINK': value is not valid UTF-8 (byte 0xff at offset 0)"
        );
    }

    #[test]
    fn shipped_ids_are_carried_lossily() {
        let mut r = raw(vec![]);
        r.task_name = b"web\xff".to_vec();
        r.task_id = b"t1".to_vec();
        let decoded = r.decode().unwrap();
        assert_eq!(decoded.spec.task_name.as_deref(), Some("web\u{fffd}"));
        assert_eq!(decoded.spec.task_id.as_deref(), Some("t1"));
        assert_eq!(decoded.altered, vec!["task name".to_owned()]);
    }
}
