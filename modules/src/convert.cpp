#include "convert.hpp"

#include <cstdint>
#include <vector>

#include <google/protobuf/descriptor.h>

#include <process/clock.hpp>

namespace rein_shim {
namespace {

rust::Vec<rein::KeyValue> labels(const mesos::Labels& labels) {
  rust::Vec<rein::KeyValue> out;
  for (const mesos::Label& label : labels.labels()) {
    out.push_back(keyValue(label.key(), label.value()));
  }
  return out;
}

rust::Vec<rein::MesosEnumValue> enumValues(const google::protobuf::EnumDescriptor* names) {
  rust::Vec<rein::MesosEnumValue> out;
  for (int i = 0; i < names->value_count(); ++i) {
    rein::MesosEnumValue value;
    value.name = bytes(names->value(i)->name());
    value.number = names->value(i)->number();
    out.push_back(std::move(value));
  }
  return out;
}

void addThrottling(
    mesos::CgroupInfo::Blkio::Statistics* blkio,
    const rein::BlkioDeviceView& device) {
  using Blkio = mesos::CgroupInfo::Blkio;
  Blkio::Throttling::Statistics* entry = blkio->add_throttling();
  entry->mutable_device()->set_major_number(device.major);
  entry->mutable_device()->set_minor_number(device.minor);
  struct Op {
    Blkio::Operation op;
    uint64_t bytes;
    uint64_t ops;
  };
  const Op ops[] = {
      {Blkio::READ, device.read_bytes, device.read_ops},
      {Blkio::WRITE, device.write_bytes, device.write_ops},
      {Blkio::TOTAL, device.read_bytes + device.write_bytes, device.read_ops + device.write_ops},
  };
  for (const Op& op : ops) {
    Blkio::Value* bytes = entry->add_io_service_bytes();
    bytes->set_op(op.op);
    bytes->set_value(op.bytes);
    Blkio::Value* serviced = entry->add_io_serviced();
    serviced->set_op(op.op);
    serviced->set_value(op.ops);
  }
}

}  // namespace

rein::ContainerChain toChain(const mesos::ContainerID& containerId) {
  std::vector<const mesos::ContainerID*> leafFirst(1, &containerId);
  for (const mesos::ContainerID* id = &containerId; id->has_parent(); id = &id->parent()) {
    leafFirst.push_back(&id->parent());
  }
  rein::ContainerChain chain;
  for (auto it = leafFirst.rbegin(); it != leafFirst.rend(); ++it) {
    rein::IdSegment segment;
    segment.value = bytes((*it)->value());
    chain.ids.push_back(std::move(segment));
  }
  return chain;
}

// Unset protobuf fields read as empty: no presence checks needed.
rein::ContainerConfigView toConfigView(
    const mesos::ContainerID& containerId,
    const mesos::slave::ContainerConfig& config) {
  rein::ContainerConfigView view;
  view.container = toChain(containerId);
  view.directory = bytes(config.directory());
  view.user = bytes(config.user());
  view.task_id = bytes(config.task_info().task_id().value());
  view.task_name = bytes(config.task_info().name());
  view.task_labels = labels(config.task_info().labels());
  view.executor_id = bytes(config.executor_info().executor_id().value());
  view.framework_id = bytes(config.executor_info().framework_id().value());
  view.executor_labels = labels(config.executor_info().labels());
  // Only plain values of the modules' variables cross (Rust checks them again):
  // secrets and every other variable stay here.
  for (const mesos::Environment::Variable& variable :
       config.command_info().environment().variables()) {
    const bool plain = variable.type() == mesos::Environment::Variable::VALUE;
    if (rein::is_module_variable(plain, slice(variable.name()))) {
      view.environment.push_back(keyValue(variable.name(), variable.value()));
    }
  }
  view.resources = toResourceEntries(config.resources());
  view.debug = config.container_class() == mesos::slave::ContainerClass::DEBUG;
  return view;
}

rein::RecoveredView toRecoveredView(const mesos::slave::ContainerState& state) {
  rein::RecoveredView view;
  view.container = toChain(state.container_id());
  view.pid = static_cast<int32_t>(state.pid());  // 0 when unknown
  view.directory = bytes(state.directory());
  return view;
}

rust::Vec<rein::KeyValue> toKeyValues(const mesos::Parameters& parameters) {
  rust::Vec<rein::KeyValue> out;
  for (const mesos::Parameter& parameter : parameters.parameter()) {
    out.push_back(keyValue(parameter.key(), parameter.value()));
  }
  return out;
}

rust::Vec<rein::MesosEnumValue> capabilityNames() {
  return enumValues(mesos::CapabilityInfo::Capability_descriptor());
}

rust::Vec<rein::MesosEnumValue> reasonNames() {
  return enumValues(mesos::TaskStatus::Reason_descriptor());
}

mesos::slave::ContainerLaunchInfo toLaunchInfo(const rein::LaunchInfoView& view) {
  mesos::slave::ContainerLaunchInfo info;
  for (const rein::LaunchVariable& kv : view.environment) {
    mesos::Environment::Variable* variable = info.mutable_environment()->add_variables();
    variable->set_name(toString(kv.key));
    variable->set_type(mesos::Environment::Variable::VALUE);
    variable->set_value(toString(kv.value));
  }
  // None or one whole bounding set, of numbers this Mesos named.
  for (const rein::BoundingSet& set : view.bounding_capabilities) {
    mesos::CapabilityInfo* bounding = info.mutable_bounding_capabilities();
    for (int32_t capability : set.capabilities) {
      bounding->add_capabilities(static_cast<mesos::CapabilityInfo::Capability>(capability));
    }
  }
  return info;
}

// Optional fields cross as `has_*` flags Rust sets; the shim copies what is set.
mesos::ResourceStatistics toStatistics(const rein::StatisticsView& view) {
  mesos::ResourceStatistics stats;
  stats.set_timestamp(process::Clock::now().secs());
  if (view.has_net_tx) {
    stats.set_net_tx_bytes(view.net_tx_bytes);
    stats.set_net_tx_packets(view.net_tx_packets);
    stats.set_net_tx_dropped(view.net_tx_dropped);
    stats.set_net_tx_rate_limit(view.net_tx_rate_limit);
    stats.set_net_tx_burst_rate_limit(view.net_tx_burst_rate_limit);
    stats.set_net_tx_burst_size(view.net_tx_burst_size);
  }
  if (view.has_disk_used) stats.set_disk_used_bytes(view.disk_used_bytes);
  if (view.has_disk_limit) stats.set_disk_limit_bytes(view.disk_limit_bytes);
  for (const rein::BlkioDeviceView& device : view.blkio) {
    addThrottling(stats.mutable_blkio_statistics(), device);
  }
  return stats;
}

mesos::ContainerStatus toStatus(const rein::StatusView& view) {
  mesos::ContainerStatus status;
  if (view.has_net_cls_classid) {
    status.mutable_cgroup_info()->mutable_net_cls()->set_classid(view.net_cls_classid);
  }
  return status;
}

mesos::slave::ContainerLimitation toLimitation(const rein::LimitationView& view) {
  mesos::slave::ContainerLimitation limitation;
  limitation.set_message(toString(view.message));
  if (view.has_reason) {
    limitation.set_reason(static_cast<mesos::TaskStatus::Reason>(view.reason_number));
  }
  if (view.has_resource) {
    mesos::Resource* resource = limitation.add_resources();
    resource->set_name(toString(view.resource_name));
    resource->set_type(mesos::Value::SCALAR);
    resource->mutable_scalar()->set_value(view.resource_value);
  }
  return limitation;
}

}  // namespace rein_shim
