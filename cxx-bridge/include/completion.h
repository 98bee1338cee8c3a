// The C++ side of the bridge's callbacks. The Mesos shim subclasses these to fulfil
// process::Promise objects and to write into the agent's glog; the bridge's own C++
// test subclasses them to record what Rust answered. Header-only and Mesos-free.
#pragma once

#include <cstdint>

#include "rust/cxx.h"

namespace rein {

struct LaunchInfoView;
struct StatisticsView;
struct StatusView;
struct LimitationView;
struct ContainerIoView;

// Completes one asynchronous call. Rust calls exactly one method, once, from a
// Rust-owned thread; implementations must be safe to call from any thread
// (process::Promise is). The defaults report an unexpected kind of answer.
class Completion {
 public:
  virtual ~Completion() = default;
  virtual void fail(rust::Str message) = 0;
  virtual void nothing() { fail("rein: unexpected answer (nothing)"); }
  virtual void launch_info(const LaunchInfoView&) { fail("rein: unexpected answer (launch info)"); }
  virtual void statistics(const StatisticsView&) { fail("rein: unexpected answer (statistics)"); }
  virtual void status(const StatusView&) { fail("rein: unexpected answer (status)"); }
  virtual void limitation(const LimitationView&) { fail("rein: unexpected answer (limitation)"); }
  virtual void container_io(const ContainerIoView&) { fail("rein: unexpected answer (container io)"); }
};

// Receives the modules' log lines: `write` at a glog severity (0 info, 1 warning,
// 2 error), `debug` for debug lines.
class LogSink {
 public:
  virtual ~LogSink() = default;
  virtual void write(int32_t severity, rust::Str message) const = 0;
  virtual void debug(rust::Str message) const = 0;
};

}  // namespace rein
