//! The plain-Rust view of a Mesos container, as the C++ shim copies it out of
//! `ContainerConfig`. Protobufs never cross the bridge; this is what does.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A container id with its parent chain, root first (`[root, child, grandchild]`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerId(Vec<String>);

/// Why a container id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid container id {id:?}: {reason}")]
pub struct InvalidContainerId {
    /// The offending segment.
    pub id: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ContainerId {
    /// Builds an id from its chain, root first. Every segment follows Mesos's own ID
    /// rules (non-empty, not `.`/`..`, printable, no slashes), so a segment is always
    /// safe to use as a single path component.
    pub fn new<I, S>(chain: I) -> Result<Self, InvalidContainerId>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let chain: Vec<String> = chain.into_iter().map(Into::into).collect();
        if chain.is_empty() {
            return Err(InvalidContainerId {
                id: String::new(),
                reason: "empty chain",
            });
        }
        for segment in &chain {
            validate_segment(segment)?;
        }
        Ok(Self(chain))
    }

    /// A top-level container id.
    pub fn top(value: &str) -> Result<Self, InvalidContainerId> {
        Self::new([value])
    }

    /// The chain, root first.
    pub fn chain(&self) -> &[String] {
        &self.0
    }

    /// This container's own id (the last segment).
    pub fn value(&self) -> &str {
        self.0.last().map(String::as_str).unwrap_or_default()
    }

    /// The parent container, if this one is nested.
    pub fn parent(&self) -> Option<ContainerId> {
        (self.0.len() > 1).then(|| Self(self.0[..self.0.len() - 1].to_vec()))
    }

    /// The top-level ancestor (itself when not nested).
    pub fn root(&self) -> ContainerId {
        Self(vec![self.0[0].clone()])
    }

    /// Whether the container has a parent.
    pub fn is_nested(&self) -> bool {
        self.0.len() > 1
    }

    /// The container's cgroup path below the cgroups root, in Mesos's layout:
    /// `root/mesos/child/mesos/grandchild`.
    pub fn cgroup_path(&self) -> PathBuf {
        let mut path = PathBuf::from(&self.0[0]);
        for child in &self.0[1..] {
            path.push("mesos");
            path.push(child);
        }
        path
    }

    /// A flat, reversible file name for the id (`root.child`, with `%` escapes for
    /// characters that are not `[A-Za-z0-9_-]`).
    pub fn file_name(&self) -> String {
        let mut out = String::new();
        for (i, segment) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            for b in segment.bytes() {
                if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
        out
    }

    /// Inverse of [`ContainerId::file_name`].
    pub fn from_file_name(name: &str) -> Option<Self> {
        let mut chain = Vec::new();
        for part in name.split('.') {
            let mut bytes = Vec::with_capacity(part.len());
            let raw = part.as_bytes();
            let mut i = 0;
            while i < raw.len() {
                if raw[i] == b'%' {
                    let hex = part.get(i + 1..i + 3)?;
                    bytes.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 3;
                } else {
                    bytes.push(raw[i]);
                    i += 1;
                }
            }
            chain.push(String::from_utf8(bytes).ok()?);
        }
        Self::new(chain).ok()
    }
}

fn validate_segment(segment: &str) -> Result<(), InvalidContainerId> {
    let fail = |reason| {
        Err(InvalidContainerId {
            id: segment.to_owned(),
            reason,
        })
    };
    if segment.is_empty() {
        return fail("empty");
    }
    if segment == "." || segment == ".." {
        return fail("'.' and '..' are not ids");
    }
    if segment.contains(['/', '\\']) {
        return fail("contains a slash");
    }
    if segment.chars().any(char::is_control) {
        return fail("contains a control character");
    }
    Ok(())
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

impl fmt::Debug for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContainerId({self})")
    }
}

/// The scalar resources a container holds, as Mesos accounts them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// `cpus`.
    pub cpus: Option<f64>,
    /// `mem`, in MB.
    pub mem_mb: Option<f64>,
    /// Sum of `disk` resources without `DiskInfo` (the sandbox's share), in MB.
    pub disk_mb: Option<f64>,
}

/// One resource entry as copied from the protobuf, before Rust sums it up.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceEntry {
    /// Resource name (`cpus`, `mem`, `disk`, ...).
    pub name: String,
    /// Scalar value (0 for non-scalar resources).
    pub scalar: f64,
    /// Whether the resource carries a `DiskInfo` (a persistent or mounted volume).
    pub has_disk_info: bool,
}

impl Resources {
    /// Sums entries the way Mesos does for isolation: cpus and mem as they come, disk
    /// only where it has no `DiskInfo`.
    pub fn from_entries(entries: &[ResourceEntry]) -> Self {
        let mut out = Resources::default();
        for entry in entries {
            let slot = match entry.name.as_str() {
                "cpus" => &mut out.cpus,
                "mem" => &mut out.mem_mb,
                "disk" if !entry.has_disk_info => &mut out.disk_mb,
                _ => continue,
            };
            *slot = Some(slot.unwrap_or(0.0) + entry.scalar);
        }
        out
    }
}

/// Everything the modules may read about a container at `prepare()` time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerSpec {
    /// Id with its parent chain.
    pub id: ContainerId,
    /// Host path of the sandbox directory.
    pub sandbox: PathBuf,
    /// User the container runs as, if any.
    pub user: Option<String>,
    /// `TaskInfo.task_id` (command tasks only).
    pub task_id: Option<String>,
    /// `TaskInfo.name` (command tasks only).
    pub task_name: Option<String>,
    /// `ExecutorInfo.executor_id`.
    pub executor_id: Option<String>,
    /// `ExecutorInfo.framework_id`.
    pub framework_id: Option<String>,
    /// Agent id, where known (Mesos only gives it through the sandbox path).
    pub agent_id: Option<String>,
    /// `TaskInfo.labels`.
    pub task_labels: Vec<(String, String)>,
    /// `ExecutorInfo.labels`.
    pub executor_labels: Vec<(String, String)>,
    /// Variables of `CommandInfo.environment` in our namespace (prefix `REIN_`); the
    /// shim passes no other variable, so secrets never reach the modules.
    pub environment: Vec<(String, String)>,
    /// Resources of the container.
    pub resources: Resources,
    /// A DEBUG-class container (e.g. `mesos task exec`).
    pub debug: bool,
}

impl Default for ContainerId {
    fn default() -> Self {
        Self(vec!["unnamed".to_owned()])
    }
}

/// Extracts `(agent, framework, executor, run)` ids from a Mesos sandbox path
/// (`.../slaves/<agent>/frameworks/<fw>/executors/<ex>/runs/<run>`).
pub fn ids_from_sandbox(sandbox: &std::path::Path) -> Option<(String, String, String, String)> {
    let parts: Vec<&str> = sandbox.iter().filter_map(|p| p.to_str()).collect();
    let at = parts.windows(8).rposition(|w| {
        w[0] == "slaves" && w[2] == "frameworks" && w[4] == "executors" && w[6] == "runs"
    })?;
    let get = |i: usize| parts.get(at + i).map(|s| (*s).to_owned());
    Some((get(1)?, get(3)?, get(5)?, get(7)?))
}

/// A field copied out of a Mesos protobuf that cannot be used as given: Mesos does
/// not check that protobuf strings are UTF-8, so any framework can send any bytes.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// Which field, as an operator finds it (`task label 'rein.net.egress.rate'`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidField {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<InvalidContainerId> for InvalidField {
    fn from(e: InvalidContainerId) -> Self {
        Self::new(
            "container id",
            format!("{}: {}", shown(e.id.as_bytes()), e.reason),
        )
    }
}

/// Where `bytes` stop being UTF-8, as operators read it: `byte 0xff at offset 3`.
pub fn utf8_problem(bytes: &[u8]) -> Option<String> {
    let err = std::str::from_utf8(bytes).err()?;
    let at = err.valid_up_to();
    let end = if err.error_len().is_some() {
        ""
    } else {
        ", an incomplete sequence at the end"
    };
    Some(format!("byte 0x{:02x} at offset {at}{end}", bytes[at]))
}

/// Longest rendering of a name in messages, in characters.
const SHOWN_MAX: usize = 128;

/// Bytes rendered for a message: invalid UTF-8 as `\xNN`, control characters
/// escaped (no log injection), at most [`SHOWN_MAX`] characters.
pub fn shown(bytes: &[u8]) -> String {
    render(bytes, SHOWN_MAX)
}

/// As [`shown`], whole: for ids in log lines, which must stay searchable.
pub fn escaped(bytes: &[u8]) -> String {
    render(bytes, usize::MAX)
}

fn render(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if count == max {
                out.push('…');
                return out;
            }
            count += 1;
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            if count == max {
                out.push('…');
                return out;
            }
            count += 1;
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Text that must be exact (an id, a path, a user, one of our settings): refused
/// when it is not UTF-8 rather than altered.
pub fn exact_text(field: impl FnOnce() -> String, bytes: Vec<u8>) -> Result<String, InvalidField> {
    String::from_utf8(bytes).map_err(|e| {
        let reason = utf8_problem(e.as_bytes()).unwrap_or_default();
        InvalidField::new(field(), format!("not valid UTF-8 ({reason})"))
    })
}

/// A key/value pair that must be exact (one of our labels or variables, a module
/// parameter); `what` names its kind in the error (`task label`).
pub fn exact_pair(
    what: &str,
    key: Vec<u8>,
    value: Vec<u8>,
) -> Result<(String, String), InvalidField> {
    let field = || format!("{what} '{}'", shown(&key));
    if let Some(problem) = utf8_problem(&key) {
        return Err(InvalidField::new(
            field(),
            format!("name is not valid UTF-8 ({problem})"),
        ));
    }
    if let Some(problem) = utf8_problem(&value) {
        return Err(InvalidField::new(
            field(),
            format!("value is not valid UTF-8 ({problem})"),
        ));
    }
    // Both checked above: no copy, no replacement.
    Ok((
        String::from_utf8(key).unwrap_or_default(),
        String::from_utf8(value).unwrap_or_default(),
    ))
}

/// Text only displayed or shipped: invalid UTF-8 becomes U+FFFD. Returns whether it
/// was altered, so the caller can say so.
pub fn lossy_text(bytes: Vec<u8>) -> (String, bool) {
    match String::from_utf8(bytes) {
        Ok(text) => (text, false),
        Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
    }
}

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

    #[test]
    fn shown_escapes_and_bounds() {
        assert_eq!(shown(b"a\nb\xff\xc3\xa9"), "a\\nb\\xff\u{e9}");
        assert_eq!(shown(&[b'x'; 500]).chars().count(), SHOWN_MAX + 1);
        assert_eq!(escaped(&[b'x'; 500]).len(), 500);
    }

    #[test]
    fn chain_navigation() {
        let id = ContainerId::new(["a", "b", "c"]).unwrap();
        assert_eq!(id.value(), "c");
        assert_eq!(id.parent().unwrap().to_string(), "a.b");
        assert_eq!(id.root().to_string(), "a");
        assert!(id.is_nested());
        assert_eq!(id.cgroup_path(), PathBuf::from("a/mesos/b/mesos/c"));
        assert!(!ContainerId::top("x").unwrap().is_nested());
    }

    #[test]
    fn rejects_unsafe_segments() {
        for bad in ["", ".", "..", "a/b", "a\\b", "a\nb"] {
            assert!(ContainerId::new([bad]).is_err(), "{bad:?} accepted");
        }
        assert!(ContainerId::new(Vec::<String>::new()).is_err());
    }

    #[test]
    fn file_name_round_trips() {
        let id = ContainerId::new(["f0e1-22.x", "child %1"]).unwrap();
        let name = id.file_name();
        assert!(!name.contains('/') && !name.contains(' '));
        assert_eq!(ContainerId::from_file_name(&name).unwrap(), id);
    }

    #[test]
    fn resources_sum_disk_without_disk_info_only() {
        let e = |name: &str, scalar, has_disk_info| ResourceEntry {
            name: name.into(),
            scalar,
            has_disk_info,
        };
        let r = Resources::from_entries(&[
            e("cpus", 0.5, false),
            e("cpus", 0.25, false),
            e("disk", 100.0, false),
            e("disk", 900.0, true),
            e("ports", 0.0, false),
        ]);
        assert_eq!(r.cpus, Some(0.75));
        assert_eq!(r.disk_mb, Some(100.0));
        assert_eq!(r.mem_mb, None);
    }

    #[test]
    fn sandbox_ids() {
        let p = std::path::Path::new("/var/lib/mesos/slaves/S1/frameworks/F1/executors/E1/runs/R1");
        let ids = ids_from_sandbox(p).unwrap();
        assert_eq!(ids, ("S1".into(), "F1".into(), "E1".into(), "R1".into()));
        assert!(ids_from_sandbox(std::path::Path::new("/tmp/x")).is_none());
    }
}
