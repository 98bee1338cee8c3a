// Protobufs to the bridge's shared structs and back. Only the fields the modules
// read cross: never the whole ContainerConfig (it can hold inline secrets).
#pragma once

#include <string>
#include <vector>

#include <mesos/mesos.hpp>
#include <mesos/resources.hpp>
#include <mesos/slave/containerizer.hpp>
#include <mesos/slave/isolator.hpp>

#include <stout/option.hpp>
#include <stout/try.hpp>

#include "bridge.hpp"

namespace rein_shim {

// The id with its parents, root first.
rein::ContainerChain toChain(const mesos::ContainerID& containerId);

// "root.child", for keys and log lines.
std::string chainText(const mesos::ContainerID& containerId);

rein::ContainerConfigView toConfigView(
    const mesos::ContainerID& containerId,
    const mesos::slave::ContainerConfig& config);

rein::RecoveredView toRecoveredView(const mesos::slave::ContainerState& state);

rust::Vec<rein::ResourceEntry> toResourceEntries(const mesos::Resources& resources);

rust::Vec<rein::KeyValue> toKeyValues(const mesos::Parameters& parameters);

// The launch info, or None when it asks for nothing. Fails when a capability to drop
// is unknown to Mesos or cannot be dropped safely (see README, "Capabilities").
Try<Option<mesos::slave::ContainerLaunchInfo>> toLaunchInfo(const rein::LaunchInfoView& view);

// Sets the required `timestamp` to now.
mesos::ResourceStatistics toStatistics(const rein::StatisticsView& view);

mesos::ContainerStatus toStatus(const rein::StatusView& view);

mesos::slave::ContainerLimitation toLimitation(const rein::LimitationView& view);

}  // namespace rein_shim
