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

RustIsolator::RustIsolator(std::string kind, rust::Box<rein::IsolatorHandle> handle)
  : kind_(std::move(kind)), handle_(std::move(handle)) {}

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
  return guarded<Nothing>(kind_.c_str(), "recover", [&]() -> Future<Nothing> {
    rust::Vec<rein::RecoveredView> containers;
    for (const ContainerState& state : states) containers.push_back(toRecoveredView(state));
    rust::Vec<rein::ContainerChain> orphanChains;
    for (const ContainerID& orphan : orphans) orphanChains.push_back(toChain(orphan));
    return startCall<NothingCompletion>([&](std::unique_ptr<rein::Completion> done) {
      handle_->recover(std::move(containers), std::move(orphanChains), std::move(done));
    });
  });
}

Future<Option<ContainerLaunchInfo>> RustIsolator::prepare(
    const ContainerID& containerId,
    const ContainerConfig& containerConfig) {
  return guarded<Option<ContainerLaunchInfo>>(
      kind_.c_str(), "prepare", [&]() -> Future<Option<ContainerLaunchInfo>> {
        rein::ContainerConfigView view = toConfigView(containerId, containerConfig);
        return startCall<LaunchInfoCompletion>([&](std::unique_ptr<rein::Completion> done) {
          handle_->prepare(std::move(view), std::move(done));
        });
      });
}

Future<Nothing> RustIsolator::isolate(const ContainerID& containerId, pid_t pid) {
  return guarded<Nothing>(kind_.c_str(), "isolate", [&]() -> Future<Nothing> {
    return startCall<NothingCompletion>([&](std::unique_ptr<rein::Completion> done) {
      handle_->isolate(toChain(containerId), static_cast<int32_t>(pid), std::move(done));
    });
  });
}

Future<ContainerLimitation> RustIsolator::watch(const ContainerID& containerId) {
  return guarded<ContainerLimitation>(kind_.c_str(), "watch", [&]() -> Future<ContainerLimitation> {
    std::shared_ptr<LimitationPromise> promise = std::make_shared<LimitationPromise>();
    {
      std::lock_guard<std::mutex> lock(watchesMutex_);
      watches_[chainText(containerId)] = promise;
    }
    Future<ContainerLimitation> future = promise->future();
    rein::ContainerChain chain = toChain(containerId);
    std::unique_ptr<rein::Completion> done(new LimitationCompletion(promise));
    handle_->watch(std::move(chain), std::move(done));
    return future;
  });
}

Future<Nothing> RustIsolator::update(
    const ContainerID& containerId,
    const mesos::Resources& resourceRequests,
    const google::protobuf::Map<std::string, mesos::Value::Scalar>& /* resourceLimits */) {
  return guarded<Nothing>(kind_.c_str(), "update", [&]() -> Future<Nothing> {
    rust::Vec<rein::ResourceEntry> resources = toResourceEntries(resourceRequests);
    return startCall<NothingCompletion>([&](std::unique_ptr<rein::Completion> done) {
      handle_->update(toChain(containerId), std::move(resources), std::move(done));
    });
  });
}

Future<mesos::ResourceStatistics> RustIsolator::usage(const ContainerID& containerId) {
  return guarded<mesos::ResourceStatistics>(
      kind_.c_str(), "usage", [&]() -> Future<mesos::ResourceStatistics> {
        return startCall<StatisticsCompletion>([&](std::unique_ptr<rein::Completion> done) {
          handle_->usage(toChain(containerId), std::move(done));
        });
      });
}

Future<mesos::ContainerStatus> RustIsolator::status(const ContainerID& containerId) {
  return guarded<mesos::ContainerStatus>(
      kind_.c_str(), "status", [&]() -> Future<mesos::ContainerStatus> {
        return startCall<StatusCompletion>([&](std::unique_ptr<rein::Completion> done) {
          handle_->status(toChain(containerId), std::move(done));
        });
      });
}

Future<Nothing> RustIsolator::cleanup(const ContainerID& containerId) {
  return guarded<Nothing>(kind_.c_str(), "cleanup", [&]() -> Future<Nothing> {
    {
      // The container is being destroyed: the containerizer ignores its limitations.
      std::lock_guard<std::mutex> lock(watchesMutex_);
      watches_.erase(chainText(containerId));
    }
    return startCall<NothingCompletion>([&](std::unique_ptr<rein::Completion> done) {
      handle_->cleanup(toChain(containerId), std::move(done));
    });
  });
}

}  // namespace rein_shim
