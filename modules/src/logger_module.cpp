// The ContainerLogger module `rein_ContainerLogger`: the Rust logger returns the
// write ends of the container's stdout and stderr; ownership passes to the
// containerizer. Built only when the bridge declares create_logger (modules/build
// defines REIN_WITH_LOGGER then), so the library builds before the logger exists.

#ifdef REIN_WITH_LOGGER

#include <unistd.h>

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
#include "glog_sink.hpp"
#include "guard.hpp"

namespace rein_shim {
namespace {

using mesos::slave::ContainerIO;

class ContainerIoCompletion : public PromiseCompletion<ContainerIO> {
 public:
  void container_io(const rein::ContainerIoView& view) override {
    guardedCallback(promise(), "container_io", [&] {
      if (view.stdout_fd < 0 || view.stderr_fd < 0) {
        // ContainerIO CHECKs its descriptors: a bad one must fail the call, not the agent.
        if (view.stdout_fd >= 0) ::close(view.stdout_fd);
        if (view.stderr_fd >= 0) ::close(view.stderr_fd);
        failWith("rein logger: invalid descriptors (stdout " + std::to_string(view.stdout_fd) +
                 ", stderr " + std::to_string(view.stderr_fd) + ")");
        return;
      }
      ContainerIO io;
      io.out = ContainerIO::IO::FD(view.stdout_fd, true);
      io.err = ContainerIO::IO::FD(view.stderr_fd, true);
      set(io);
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
    return guarded<ContainerIO>("logger", "prepare", [&]() -> process::Future<ContainerIO> {
      rein::ContainerConfigView view = toConfigView(containerId, containerConfig);
      return startCall<ContainerIoCompletion>([&](std::unique_ptr<rein::Completion> done) {
        handle_->prepare(std::move(view), std::move(done));
      });
    });
  }

 private:
  rust::Box<rein::LoggerHandle> handle_;
};

// As createRustIsolator: never throws into the agent.
mesos::slave::ContainerLogger* createLogger(const mesos::Parameters& parameters) {
  try {
    installGlogSinkOnce();
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

#endif  // REIN_WITH_LOGGER
