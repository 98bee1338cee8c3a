//! Conversions between the bridge's shared structs and rein-core's types, in one place.

use std::path::PathBuf;

use rein_core::container::{ids_from_sandbox, InvalidContainerId, ResourceEntry as CoreEntry};
use rein_core::isolator::{LaunchInfo, Limitation, RecoveredContainer, Statistics, Status};
use rein_core::schema::ENV_PREFIX;
use rein_core::{ContainerId, ContainerSpec, Resources};

use crate::bridge::ffi::{
    BlkioDeviceView, ContainerChain, ContainerConfigView, KeyValue, LaunchInfoView, LimitationView,
    RecoveredView, ResourceEntry, StatisticsView, StatusView,
};

fn pairs(kvs: Vec<KeyValue>) -> Vec<(String, String)> {
    kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub(crate) fn key_values(kvs: &[KeyValue]) -> Vec<(String, String)> {
    pairs(kvs.to_vec())
}

pub(crate) fn container_id(chain: ContainerChain) -> Result<ContainerId, InvalidContainerId> {
    ContainerId::new(chain.ids)
}

pub(crate) fn resources(entries: Vec<ResourceEntry>) -> Resources {
    let entries: Vec<CoreEntry> = entries
        .into_iter()
        .map(|e| CoreEntry {
            name: e.name,
            scalar: e.scalar,
            has_disk_info: e.has_disk_info,
        })
        .collect();
    Resources::from_entries(&entries)
}

pub(crate) fn container_spec(
    view: ContainerConfigView,
) -> Result<ContainerSpec, InvalidContainerId> {
    let id = container_id(view.container)?;
    let sandbox = PathBuf::from(view.directory);
    let agent_id = ids_from_sandbox(&sandbox).map(|(agent, ..)| agent);
    // Defence in depth: the shim passes only our variables, but never keep others.
    let environment = pairs(view.environment)
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    Ok(ContainerSpec {
        id,
        sandbox,
        user: non_empty(view.user),
        task_id: non_empty(view.task_id),
        task_name: non_empty(view.task_name),
        executor_id: non_empty(view.executor_id),
        framework_id: non_empty(view.framework_id),
        agent_id,
        task_labels: pairs(view.task_labels),
        executor_labels: pairs(view.executor_labels),
        environment,
        resources: resources(view.resources),
        debug: view.debug,
    })
}

pub(crate) fn recovered(view: RecoveredView) -> Result<RecoveredContainer, InvalidContainerId> {
    Ok(RecoveredContainer {
        id: container_id(view.container)?,
        pid: (view.pid > 0).then_some(view.pid),
        sandbox: non_empty(view.directory).map(PathBuf::from),
    })
}

pub(crate) fn launch_info(info: LaunchInfo) -> LaunchInfoView {
    LaunchInfoView {
        environment: info
            .environment
            .into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect(),
        drop_capabilities: info.drop_capabilities,
    }
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

pub(crate) fn limitation(limitation: Limitation) -> LimitationView {
    let (resource_name, resource_value) = limitation.resource.unwrap_or_default();
    LimitationView {
        reason: limitation.reason,
        message: limitation.message,
        resource_name,
        resource_value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn config_view_becomes_spec_without_foreign_variables() {
        let view = ContainerConfigView {
            container: ContainerChain {
                ids: vec!["root".into(), "child".into()],
            },
            directory: "/w/slaves/S1/frameworks/F/executors/E/runs/R".into(),
            user: String::new(),
            task_id: "t1".into(),
            task_name: String::new(),
            executor_id: "E".into(),
            framework_id: "F".into(),
            task_labels: vec![kv("rein.net.egress.rate", "1mbit")],
            executor_labels: vec![],
            environment: vec![kv("REIN_LOG_SINK", "kafka"), kv("DB_PASSWORD", "hunter2")],
            resources: vec![ResourceEntry {
                name: "disk".into(),
                scalar: 64.0,
                has_disk_info: false,
            }],
            debug: false,
        };
        let spec = container_spec(view).unwrap();
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
    fn bad_chain_is_an_error() {
        assert!(container_id(ContainerChain {
            ids: vec!["a/b".into()]
        })
        .is_err());
        assert!(container_id(ContainerChain { ids: vec![] }).is_err());
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
