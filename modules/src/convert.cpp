#include "convert.hpp"

#include <sys/prctl.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <vector>

#include <glog/logging.h>

#include <process/clock.hpp>

namespace rein_shim {
namespace {

const char kEnvPrefix[] = "REIN_";

bool startsWith(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// Protobuf strings cross as bytes: they need not be UTF-8, and a rust::String
// built from other bytes throws. Rust decides what each field may carry.
rust::Vec<uint8_t> bytes(const std::string& s) {
  return rein::copy_bytes(
      rust::Slice<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

rein::KeyValue keyValue(const std::string& key, const std::string& value) {
  rein::KeyValue kv;
  kv.key = bytes(key);
  kv.value = bytes(value);
  return kv;
}

rein::ResourceEntry resourceEntry(const mesos::Resource& resource) {
  rein::ResourceEntry entry;
  entry.name = bytes(resource.name());
  entry.scalar = resource.type() == mesos::Value::SCALAR ? resource.scalar().value() : 0.0;
  entry.has_disk_info = resource.has_disk();
  return entry;
}

rust::Vec<rein::KeyValue> labels(const mesos::Labels& labels) {
  rust::Vec<rein::KeyValue> out;
  for (const mesos::Label& label : labels.labels()) {
    out.push_back(keyValue(label.key(), label.value()));
  }
  return out;
}

// Whether the agent runs its own capability isolator: it sets capabilities too, and
// Mesos merges two launch infos' bounding sets by concatenation (a union), so a drop
// of ours could silently widen the operator's set. Modules get no agent flags; the
// agent's command line and MESOS_ISOLATION environment are what it was started with.
bool agentSetsCapabilities() {
  static const bool sets = [] {
    std::vector<std::string> args;
    std::ifstream cmdline("/proc/self/cmdline", std::ios::binary);
    std::string arg;
    while (std::getline(cmdline, arg, '\0')) args.push_back(arg);
    std::string isolation;
    if (const char* env = std::getenv("MESOS_ISOLATION")) isolation = env;
    for (size_t i = 0; i < args.size(); ++i) {
      if (startsWith(args[i], "--isolation=")) {
        isolation = args[i].substr(std::string("--isolation=").size());
      } else if (args[i] == "--isolation" && i + 1 < args.size()) {
        isolation = args[i + 1];
      }
    }
    return isolation.find("linux/capabilities") != std::string::npos;
  }();
  return sets;
}

// The agent's own bounding set (a container can never exceed it) without `dropped`,
// as Mesos enum values; capabilities this Mesos cannot name are left out.
mesos::CapabilityInfo boundingWithout(const std::set<int>& dropped) {
  mesos::CapabilityInfo info;
  for (int cap = 0; cap < 64; ++cap) {
    const int held = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
    if (held < 0) break;  // EINVAL: past the kernel's last capability
    const int value = 1000 + cap;  // Mesos numbers capabilities from 1000
    if (held == 0 || dropped.count(value) > 0 ||
        !mesos::CapabilityInfo::Capability_IsValid(value)) {
      continue;
    }
    info.add_capabilities(static_cast<mesos::CapabilityInfo::Capability>(value));
  }
  return info;
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
  std::vector<const mesos::ContainerID*> leafFirst;
  const mesos::ContainerID* id = &containerId;
  leafFirst.push_back(id);
  while (id->has_parent()) {
    id = &id->parent();
    leafFirst.push_back(id);
  }
  rein::ContainerChain chain;
  for (auto it = leafFirst.rbegin(); it != leafFirst.rend(); ++it) {
    rein::IdSegment segment;
    segment.value = bytes((*it)->value());
    chain.ids.push_back(std::move(segment));
  }
  return chain;
}

std::string chainText(const mesos::ContainerID& containerId) {
  std::string text = containerId.value();
  const mesos::ContainerID* id = &containerId;
  while (id->has_parent()) {
    id = &id->parent();
    text = id->value() + "." + text;
  }
  return text;
}

rein::ContainerConfigView toConfigView(
    const mesos::ContainerID& containerId,
    const mesos::slave::ContainerConfig& config) {
  rein::ContainerConfigView view;
  view.container = toChain(containerId);
  view.directory = bytes(config.directory());
  if (config.has_user()) view.user = bytes(config.user());
  if (config.has_task_info()) {
    const mesos::TaskInfo& task = config.task_info();
    view.task_id = bytes(task.task_id().value());
    view.task_name = bytes(task.name());
    if (task.has_labels()) view.task_labels = labels(task.labels());
  }
  if (config.has_executor_info()) {
    const mesos::ExecutorInfo& executor = config.executor_info();
    view.executor_id = bytes(executor.executor_id().value());
    if (executor.has_framework_id()) view.framework_id = bytes(executor.framework_id().value());
    if (executor.has_labels()) view.executor_labels = labels(executor.labels());
  }
  // Only plain values of our own variables: secrets and everything else stay here.
  if (config.command_info().has_environment()) {
    for (const mesos::Environment::Variable& variable :
         config.command_info().environment().variables()) {
      if (variable.type() == mesos::Environment::Variable::VALUE &&
          startsWith(variable.name(), kEnvPrefix)) {
        view.environment.push_back(keyValue(variable.name(), variable.value()));
      }
    }
  }
  for (const mesos::Resource& resource : config.resources()) {
    view.resources.push_back(resourceEntry(resource));
  }
  view.debug = config.has_container_class() &&
               config.container_class() == mesos::slave::ContainerClass::DEBUG;
  return view;
}

rein::RecoveredView toRecoveredView(const mesos::slave::ContainerState& state) {
  rein::RecoveredView view;
  view.container = toChain(state.container_id());
  view.pid = state.has_pid() ? static_cast<int32_t>(state.pid()) : 0;
  if (state.has_directory()) view.directory = bytes(state.directory());
  return view;
}

rust::Vec<rein::ResourceEntry> toResourceEntries(const mesos::Resources& resources) {
  rust::Vec<rein::ResourceEntry> entries;
  for (const mesos::Resource& resource : resources) {
    entries.push_back(resourceEntry(resource));
  }
  return entries;
}

rust::Vec<rein::KeyValue> toKeyValues(const mesos::Parameters& parameters) {
  rust::Vec<rein::KeyValue> out;
  for (const mesos::Parameter& parameter : parameters.parameter()) {
    out.push_back(keyValue(parameter.key(), parameter.value()));
  }
  return out;
}

Try<Option<mesos::slave::ContainerLaunchInfo>> toLaunchInfo(const rein::LaunchInfoView& view) {
  if (view.environment.empty() && view.drop_capabilities.empty()) {
    return None();
  }
  mesos::slave::ContainerLaunchInfo info;
  for (const rein::LaunchVariable& kv : view.environment) {
    mesos::Environment::Variable* variable = info.mutable_environment()->add_variables();
    variable->set_name(toString(kv.key));
    variable->set_type(mesos::Environment::Variable::VALUE);
    variable->set_value(toString(kv.value));
  }
  if (!view.drop_capabilities.empty()) {
    std::set<int> dropped;
    std::string names;
    for (const rust::String& raw : view.drop_capabilities) {
      std::string name = toString(raw);
      if (!names.empty()) names += ", ";
      names += name;
      if (startsWith(name, "CAP_")) name = name.substr(4);
      mesos::CapabilityInfo::Capability capability;
      if (!mesos::CapabilityInfo::Capability_Parse(name, &capability)) {
        return Error("rein: cannot drop capability '" + toString(raw) +
                     "': this Mesos has no such capability");
      }
      dropped.insert(static_cast<int>(capability));
    }
    if (agentSetsCapabilities()) {
      return Error("rein: cannot drop " + names +
                   ": the agent's linux/capabilities isolator also sets capabilities and "
                   "Mesos would merge the two bounding sets into their union");
    }
    info.mutable_bounding_capabilities()->CopyFrom(boundingWithout(dropped));
  }
  return Option<mesos::slave::ContainerLaunchInfo>(info);
}

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
  mesos::TaskStatus::Reason reason;
  if (mesos::TaskStatus::Reason_Parse(toString(view.reason), &reason)) {
    limitation.set_reason(reason);
  } else {
    LOG(WARNING) << "rein: limitation with an unknown reason '" << toString(view.reason)
                 << "'; sending it without one";
  }
  if (!view.resource_name.empty()) {
    mesos::Resource* resource = limitation.add_resources();
    resource->set_name(toString(view.resource_name));
    resource->set_type(mesos::Value::SCALAR);
    resource->mutable_scalar()->set_value(view.resource_value);
  }
  return limitation;
}

}  // namespace rein_shim
