#include "rust_isolator.hpp"

#include <utility>

#include "completions.hpp"
#include "convert.hpp"
#include "guard.hpp"

using mesos::ContainerID;
using mesos::slave::ContainerConfig;
using mesos::slave::ContainerLaunchInfo;
using mesos::slave::ContainerLimitation;
using mesos::slave::ContainerState;
using process::Future;

namespace rein_shim {

RustIsolator::RustIsolator(const char* kind, rust::Box<rein::IsolatorHandle> handle)
  : kind_(kind), handle_(std::move(handle)) {}

RustIsolator::~RustIsolator() = default;

bool RustIsolator::supportsNesting() {
  try {
    return handle_->supports_nesting();
  } catch (...) {
    return false;
  }
}

Future<Nothing> RustIsolator::recover(
    const std::vector<ContainerState>& states,
    const hashset<ContainerID>& orphans) {
  return forward<NothingCompletion>(kind_, "recover", [&](Done done) {
    rust::Vec<rein::RecoveredView> containers;
    for (const ContainerState& state : states) containers.push_back(toRecoveredView(state));
    rust::Vec<rein::ContainerChain> orphanChains;
    for (const ContainerID& orphan : orphans) orphanChains.push_back(toChain(orphan));
    handle_->recover(std::move(containers), std::move(orphanChains), std::move(done));
  });
}

Future<Option<ContainerLaunchInfo>> RustIsolator::prepare(
    const ContainerID& containerId,
    const ContainerConfig& containerConfig) {
  return forward<LaunchInfoCompletion>(kind_, "prepare", [&](Done done) {
    handle_->prepare(toConfigView(containerId, containerConfig), std::move(done));
  });
}

Future<Nothing> RustIsolator::isolate(const ContainerID& containerId, pid_t pid) {
  return forward<NothingCompletion>(kind_, "isolate", [&](Done done) {
    handle_->isolate(toChain(containerId), static_cast<int32_t>(pid), std::move(done));
  });
}

// Rust keeps the completion until cleanup() (see LimitationCompletion).
Future<ContainerLimitation> RustIsolator::watch(const ContainerID& containerId) {
  return forward<LimitationCompletion>(kind_, "watch", [&](Done done) {
    handle_->watch(toChain(containerId), std::move(done));
  });
}

Future<Nothing> RustIsolator::update(
    const ContainerID& containerId,
    const mesos::Resources& resourceRequests,
    const google::protobuf::Map<std::string, mesos::Value::Scalar>& /* resourceLimits */) {
  return forward<NothingCompletion>(kind_, "update", [&](Done done) {
    handle_->update(toChain(containerId), toResourceEntries(resourceRequests), std::move(done));
  });
}

Future<mesos::ResourceStatistics> RustIsolator::usage(const ContainerID& containerId) {
  return forward<StatisticsCompletion>(kind_, "usage", [&](Done done) {
    handle_->usage(toChain(containerId), std::move(done));
  });
}

Future<mesos::ContainerStatus> RustIsolator::status(const ContainerID& containerId) {
  return forward<StatusCompletion>(kind_, "status", [&](Done done) {
    handle_->status(toChain(containerId), std::move(done));
  });
}

Future<Nothing> RustIsolator::cleanup(const ContainerID& containerId) {
  return forward<NothingCompletion>(kind_, "cleanup", [&](Done done) {
    handle_->cleanup(toChain(containerId), std::move(done));
  });
}

}  // namespace rein_shim
