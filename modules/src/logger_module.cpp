// The ContainerLogger module `rein_ContainerLogger`: the Rust logger returns the
// write ends of the container's stdout and stderr (always valid: Rust owned them);
// ownership passes to the containerizer.

#include <exception>
#include <memory>
#include <string>
#include <utility>

#include <glog/logging.h>

#include <mesos/mesos.hpp>
#include <mesos/module.hpp>
#include <mesos/module/container_logger.hpp>
#include <mesos/slave/container_logger.hpp>
#include <mesos/slave/containerizer.hpp>
#include <mesos/version.hpp>

#include <process/future.hpp>

#include <stout/nothing.hpp>
#include <stout/try.hpp>

#include "bridge.hpp"
#include "completions.hpp"
#include "convert.hpp"
#include "guard.hpp"
#include "install.hpp"

namespace rein_shim {
namespace {

using mesos::slave::ContainerIO;

class ContainerIoCompletion : public PromiseCompletion<ContainerIO> {
 public:
  void container_io(const rein::ContainerIoView& view) override {
    set("container_io", [&]() -> ContainerIO {
      ContainerIO io;
      io.out = ContainerIO::IO::FD(view.stdout_fd, true);
      io.err = ContainerIO::IO::FD(view.stderr_fd, true);
      return io;
    });
  }
};

class RustContainerLogger : public mesos::slave::ContainerLogger {
 public:
  explicit RustContainerLogger(rust::Box<rein::LoggerHandle> handle)
    : handle_(std::move(handle)) {}

  Try<Nothing> initialize() override {
    try {
      return Nothing();
    } catch (...) {
      return Error("rein logger: initialize failed");
    }
  }

  process::Future<ContainerIO> prepare(
      const mesos::ContainerID& containerId,
      const mesos::slave::ContainerConfig& containerConfig) override {
    return forward<ContainerIoCompletion>("logger", "prepare", [&](Done done) {
      handle_->prepare(toConfigView(containerId, containerConfig), std::move(done));
    });
  }

 private:
  rust::Box<rein::LoggerHandle> handle_;
};

// As createRustIsolator: never throws into the agent.
mesos::slave::ContainerLogger* createLogger(const mesos::Parameters& parameters) {
  try {
    installOnce();
    const rust::Vec<rein::KeyValue> params = toKeyValues(parameters);
    rust::Box<rein::LoggerHandle> handle =
        rein::create_logger(rust::Slice<const rein::KeyValue>(params.data(), params.size()));
    LOG(INFO) << "rein: created the container logger";
    return new RustContainerLogger(std::move(handle));
  } catch (const std::exception& e) {
    logCreateFailure("container", "logger", e.what());
    return nullptr;
  } catch (...) {
    logCreateFailure("container", "logger", "unknown exception");
    return nullptr;
  }
}

}  // namespace
}  // namespace rein_shim

mesos::modules::Module<mesos::slave::ContainerLogger> rein_ContainerLogger(
    MESOS_MODULE_API_VERSION,
    MESOS_VERSION,
    "rein",
    "rein@localhost",
    "rein container logger: structured log shipping without helper processes.",
    nullptr,
    rein_shim::createLogger);
