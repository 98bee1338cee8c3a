// One generic Isolator for every rein isolator kind: converts the call's protobufs
// into the bridge's structs, hands a completion to Rust and returns its future at
// once. No call blocks a libprocess thread; the Rust side queues the work to the
// module's own thread, and decides everything.
#pragma once

#include <string>
#include <vector>

#include <mesos/slave/isolator.hpp>

#include <process/future.hpp>

#include "bridge.hpp"

namespace rein_shim {

class RustIsolator : public mesos::slave::Isolator {
 public:
  // `kind` ("net_cls", ...) names the module in the failure an exception becomes.
  RustIsolator(const char* kind, rust::Box<rein::IsolatorHandle> handle);
  ~RustIsolator() override;

  bool supportsNesting() override;

  process::Future<Nothing> recover(
      const std::vector<mesos::slave::ContainerState>& states,
      const hashset<mesos::ContainerID>& orphans) override;

  process::Future<Option<mesos::slave::ContainerLaunchInfo>> prepare(
      const mesos::ContainerID& containerId,
      const mesos::slave::ContainerConfig& containerConfig) override;

  process::Future<Nothing> isolate(const mesos::ContainerID& containerId, pid_t pid) override;

  process::Future<mesos::slave::ContainerLimitation> watch(
      const mesos::ContainerID& containerId) override;

  process::Future<Nothing> update(
      const mesos::ContainerID& containerId,
      const mesos::Resources& resourceRequests,
      const google::protobuf::Map<std::string, mesos::Value::Scalar>& resourceLimits) override;

  process::Future<mesos::ResourceStatistics> usage(const mesos::ContainerID& containerId) override;

  process::Future<mesos::ContainerStatus> status(const mesos::ContainerID& containerId) override;

  process::Future<Nothing> cleanup(const mesos::ContainerID& containerId) override;

 private:
  const char* const kind_;
  rust::Box<rein::IsolatorHandle> handle_;
};

}  // namespace rein_shim
