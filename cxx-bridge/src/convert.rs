//! Conversions between the bridge's shared structs and rein-core's types, in one
//! place. What the shim copies arrives as bytes; whether a field may carry bytes
//! that are not UTF-8 is decided here and in `rein_core::container`.

use std::path::PathBuf;

use rein_core::container::{
    exact_pair, exact_text, InvalidField, RawContainerConfig, ResourceEntry as CoreEntry,
};
use rein_core::isolator::{Limitation, RecoveredContainer, Statistics, Status};
use rein_core::{ContainerId, ContainerSpec, Resources};

use crate::bridge::ffi::{
    BlkioDeviceView, ContainerChain, ContainerConfigView, KeyValue, LimitationView, RecoveredView,
    ResourceEntry, StatisticsView, StatusView,
};

fn raw_pairs(kvs: Vec<KeyValue>) -> Vec<(Vec<u8>, Vec<u8>)> {
    kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
}

/// Module parameters: the operator's settings, refused (naming the parameter) when
/// not UTF-8, so module creation fails with a message instead of guessing.
pub(crate) fn parameters(kvs: &[KeyValue]) -> Result<Vec<(String, String)>, InvalidField> {
    kvs.iter()
        .map(|kv| exact_pair("module parameter", kv.key.clone(), kv.value.clone()))
        .collect()
}

pub(crate) fn container_id(chain: ContainerChain) -> Result<ContainerId, InvalidField> {
    ContainerId::from_bytes(chain.ids.into_iter().map(|id| id.value))
}

fn core_entries(entries: Vec<ResourceEntry>) -> Vec<CoreEntry> {
    entries
        .into_iter()
        .map(|e| CoreEntry::from_bytes(e.name, e.scalar, e.has_disk_info))
        .collect()
}

pub(crate) fn resources(entries: Vec<ResourceEntry>) -> Resources {
    Resources::from_entries(&core_entries(entries))
}

/// The container's spec, or the first field it may not carry. Fields carried with
/// U+FFFD (labels that are not ours, names only shipped) are logged here.
pub(crate) fn container_spec(view: ContainerConfigView) -> Result<ContainerSpec, InvalidField> {
    let raw = RawContainerConfig {
        container: view.container.ids.into_iter().map(|id| id.value).collect(),
        directory: view.directory,
        user: view.user,
        task_id: view.task_id,
        task_name: view.task_name,
        executor_id: view.executor_id,
        framework_id: view.framework_id,
        task_labels: raw_pairs(view.task_labels),
        executor_labels: raw_pairs(view.executor_labels),
        environment: raw_pairs(view.environment),
        resources: core_entries(view.resources),
        debug: view.debug,
    };
    let decoded = raw.decode()?;
    if !decoded.altered.is_empty() {
        tracing::warn!(
            "{} field(s) not valid UTF-8, carried with U+FFFD (only displayed and shipped): {}",
            decoded.altered.len(),
            listed(&decoded.altered)
        );
    }
    Ok(decoded.spec)
}

/// Fields named in one log line: a task with thousands of labels makes no huge line.
const LISTED_MAX: usize = 10;

fn listed(fields: &[String]) -> String {
    let mut text = fields[..fields.len().min(LISTED_MAX)].join(", ");
    if fields.len() > LISTED_MAX {
        text.push_str(&format!(" and {} more", fields.len() - LISTED_MAX));
    }
    text
}

/// A container `recover()` is given. Its id and directory must be exact; one that
/// is not cannot be ours (`prepare()` refuses such containers).
pub(crate) fn recovered(view: RecoveredView) -> Result<RecoveredContainer, InvalidField> {
    let id = container_id(view.container)?;
    let directory = exact_text(|| format!("directory of container {id}"), view.directory)?;
    Ok(RecoveredContainer {
        id,
        pid: (view.pid > 0).then_some(view.pid),
        sandbox: (!directory.is_empty()).then(|| PathBuf::from(directory)),
    })
}

pub(crate) fn statistics(stats: Statistics) -> StatisticsView {
    let net = stats.net_tx.unwrap_or_default();
    StatisticsView {
        has_net_tx: stats.net_tx.is_some(),
        net_tx_bytes: net.bytes,
        net_tx_packets: net.packets,
        net_tx_dropped: net.dropped,
        net_tx_rate_limit: net.rate_limit,
        net_tx_burst_rate_limit: net.burst_rate_limit,
        net_tx_burst_size: net.burst_size,
        has_disk_used: stats.disk_used_bytes.is_some(),
        disk_used_bytes: stats.disk_used_bytes.unwrap_or_default(),
        has_disk_limit: stats.disk_limit_bytes.is_some(),
        disk_limit_bytes: stats.disk_limit_bytes.unwrap_or_default(),
        blkio: stats
            .blkio
            .into_iter()
            .map(|d| BlkioDeviceView {
                major: d.major,
                minor: d.minor,
                read_bytes: d.read_bytes,
                write_bytes: d.write_bytes,
                read_ops: d.read_ops,
                write_ops: d.write_ops,
            })
            .collect(),
    }
}

pub(crate) fn status(status: Status) -> StatusView {
    StatusView {
        has_net_cls_classid: status.net_cls_classid.is_some(),
        net_cls_classid: status.net_cls_classid.unwrap_or_default(),
    }
}

/// See the bridge's `is_module_variable`.
pub(crate) fn is_module_variable(plain: bool, name: &[u8]) -> bool {
    plain && name.starts_with(rein_core::schema::ENV_PREFIX.as_bytes())
}

pub(crate) fn limitation(limitation: Limitation) -> LimitationView {
    limitation_for(crate::agent::get(), limitation)
}

/// A limitation with its reason numbered as the agent's Mesos numbers it; a reason
/// it does not know is sent without one (and logged). Outside an agent the reason
/// stays a name.
fn limitation_for(agent: Option<&crate::agent::Agent>, limitation: Limitation) -> LimitationView {
    let number = agent.and_then(|agent| agent.reason_number(&limitation.reason));
    if agent.is_some() && number.is_none() {
        tracing::warn!(
            "rein: limitation with an unknown reason '{}'; sending it without one",
            limitation.reason
        );
    }
    let has_resource = limitation.resource.is_some();
    let (resource_name, resource_value) = limitation.resource.unwrap_or_default();
    LimitationView {
        reason: limitation.reason,
        has_reason: number.is_some(),
        reason_number: number.unwrap_or_default(),
        message: limitation.message,
        has_resource,
        resource_name,
        resource_value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ContainerConfigView {
        ContainerConfigView {
            container: ContainerChain::new(["root", "child"]),
            directory: b"/w/slaves/S1/frameworks/F/executors/E/runs/R".to_vec(),
            user: Vec::new(),
            task_id: b"t1".to_vec(),
            task_name: Vec::new(),
            executor_id: b"E".to_vec(),
            framework_id: b"F".to_vec(),
            task_labels: vec![KeyValue::new("rein.net.egress.rate", "1mbit")],
            executor_labels: vec![],
            environment: vec![
                KeyValue::new("REIN_LOG_SINK", "kafka"),
                KeyValue::new("DB_PASSWORD", "hunter2"),
            ],
            resources: vec![ResourceEntry {
                name: b"disk".to_vec(),
                scalar: 64.0,
                has_disk_info: false,
            }],
            debug: false,
        }
    }

    #[test]
    fn config_view_becomes_spec_without_foreign_variables() {
        let spec = container_spec(view()).unwrap();
        assert_eq!(spec.id.to_string(), "root.child");
        assert_eq!(spec.user, None);
        assert_eq!(spec.task_id.as_deref(), Some("t1"));
        assert_eq!(spec.agent_id.as_deref(), Some("S1"));
        assert_eq!(
            spec.environment,
            vec![("REIN_LOG_SINK".to_owned(), "kafka".to_owned())]
        );
        assert_eq!(spec.resources.disk_mb, Some(64.0));
    }

    #[test]
    fn invalid_utf8_in_our_settings_is_refused_naming_the_field() {
        let mut bad = view();
        bad.task_labels = vec![KeyValue::new("rein.net.egress.rate", b"1m\xffbit".to_vec())];
        assert_eq!(
            container_spec(bad).unwrap_err().to_string(),
            "task label 'rein.net.egress.rate': value is not valid UTF-8 (byte 0xff at offset 2)"
        );
        let mut foreign = view();
        foreign.executor_labels = vec![KeyValue::new(b"owner\xff".to_vec(), "x")];
        foreign.resources[0].name = b"gpus\xff".to_vec();
        let spec = container_spec(foreign).unwrap();
        assert_eq!(spec.executor_labels[0].0, "owner\u{fffd}");
        assert_eq!(spec.resources.disk_mb, None);
    }

    #[test]
    fn bad_parameters_and_chains_are_errors() {
        let err = parameters(&[KeyValue::new("state_dir", b"/var/\xc0".to_vec())]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "module parameter 'state_dir': value is not valid UTF-8 (byte 0xc0 at offset 5)"
        );
        assert!(container_id(ContainerChain::new(["a/b"])).is_err());
        assert!(container_id(ContainerChain::new(Vec::<Vec<u8>>::new())).is_err());
        let err = container_id(ContainerChain::new([b"a\xff".to_vec()])).unwrap_err();
        assert!(err.to_string().contains("segment 1 'a\\xff'"), "{err}");
    }

    #[test]
    fn recovered_directory_must_be_exact() {
        let err = recovered(RecoveredView {
            container: ContainerChain::new(["c"]),
            pid: 1,
            directory: b"/w/\xff".to_vec(),
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "directory of container c: not valid UTF-8 (byte 0xff at offset 3)"
        );
    }

    #[test]
    fn altered_fields_are_listed_with_a_bound() {
        let fields: Vec<String> = (0..25).map(|i| format!("task label 'l{i}'")).collect();
        let text = listed(&fields);
        assert!(
            text.starts_with("task label 'l0', task label 'l1'"),
            "{text}"
        );
        assert!(text.ends_with("task label 'l9' and 15 more"), "{text}");
        assert_eq!(listed(&fields[..1]), "task label 'l0'");
    }

    #[test]
    fn only_plain_module_variables_cross() {
        assert!(is_module_variable(true, b"REIN_LOG_SINK"));
        assert!(!is_module_variable(false, b"REIN_LOG_SINK"));
        assert!(!is_module_variable(true, b"DB_PASSWORD"));
        assert!(!is_module_variable(true, b"rein_log_sink"));
    }

    #[test]
    fn limitation_reasons_are_numbered_as_the_agent_numbers_them() {
        let disk = || Limitation {
            reason: "REASON_CONTAINER_LIMITATION_DISK".into(),
            message: "over quota".into(),
            resource: Some(("disk".into(), 10.0)),
        };
        let agent = crate::agent::Agent::for_tests(&[("REASON_CONTAINER_LIMITATION_DISK", 20)]);
        let view = limitation_for(Some(&agent), disk());
        assert!(view.has_reason && view.has_resource);
        assert_eq!(
            (view.reason_number, view.resource_name.as_str()),
            (20, "disk")
        );
        let unknown = crate::agent::Agent::for_tests(&[]);
        let view = limitation_for(Some(&unknown), disk());
        assert!(!view.has_reason);
        let view = limitation_for(
            None,
            Limitation {
                resource: None,
                ..disk()
            },
        );
        assert!(!view.has_reason && !view.has_resource);
        assert_eq!(view.reason, "REASON_CONTAINER_LIMITATION_DISK");
    }

    #[test]
    fn statistics_flags() {
        let view = statistics(Statistics {
            disk_used_bytes: Some(5),
            ..Statistics::default()
        });
        assert!(view.has_disk_used && !view.has_disk_limit && !view.has_net_tx);
        assert_eq!(view.disk_used_bytes, 5);
    }
}
