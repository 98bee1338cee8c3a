// Protobufs to the bridge's shared structs and back, field by field. Only the
// fields the modules read cross: never the whole ContainerConfig (it can hold
// inline secrets). Every decision (what a field may carry, what a launch asks,
// which capabilities a container keeps) is Rust's: these only copy.
#pragma once

#include <string>

#include <mesos/mesos.hpp>
#include <mesos/resources.hpp>
#include <mesos/slave/containerizer.hpp>
#include <mesos/slave/isolator.hpp>

#include "bridge.hpp"

namespace rein_shim {

// The id with its parents, root first.
rein::ContainerChain toChain(const mesos::ContainerID& containerId);

rein::ContainerConfigView toConfigView(
    const mesos::ContainerID& containerId,
    const mesos::slave::ContainerConfig& config);

rein::RecoveredView toRecoveredView(const mesos::slave::ContainerState& state);

// `resources` is a mesos::Resources or a repeated Resource field.
template <typename Resources>
rust::Vec<rein::ResourceEntry> toResourceEntries(const Resources& resources) {
  rust::Vec<rein::ResourceEntry> entries;
  for (const mesos::Resource& resource : resources) {
    rein::ResourceEntry entry;
    entry.name = bytes(resource.name());
    entry.scalar = resource.scalar().value();  // 0 for ranges and sets
    entry.has_disk_info = resource.has_disk();
    entries.push_back(std::move(entry));
  }
  return entries;
}

rust::Vec<rein::KeyValue> toKeyValues(const mesos::Parameters& parameters);

// This Mesos's enum tables, for Rust to decide against (see README, "Capabilities").
rust::Vec<rein::MesosEnumValue> capabilityNames();
rust::Vec<rein::MesosEnumValue> reasonNames();

mesos::slave::ContainerLaunchInfo toLaunchInfo(const rein::LaunchInfoView& view);

// Sets the required `timestamp` to now.
mesos::ResourceStatistics toStatistics(const rein::StatisticsView& view);

mesos::ContainerStatus toStatus(const rein::StatusView& view);

mesos::slave::ContainerLimitation toLimitation(const rein::LimitationView& view);

}  // namespace rein_shim
