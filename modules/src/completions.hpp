// Completions: each owns the process::Promise behind the future the shim returned,
// and is answered once by Rust, from the module's Rust thread (Promise is safe to
// set from any thread; the continuations chained with plain `then` run there, and
// those the containerizer defers are dispatched to its own process).
#pragma once

#include <memory>
#include <string>
#include <utility>

#include <process/future.hpp>

#include <stout/nothing.hpp>
#include <stout/option.hpp>

#include "bridge.hpp"
#include "convert.hpp"
#include "guard.hpp"

namespace rein_shim {

// A promise Rust answers: set() with a value, fail() with a message.
template <typename T>
class Answer : public rein::Completion {
 public:
  using Value = T;

  process::Future<T> future() { return promise_.future(); }

  void fail(rust::Str message) override {
    guardedCallback(promise_, "fail", [&] { promise_.fail(toString(message)); });
  }

 protected:
  template <typename Convert>
  void set(const char* call, Convert convert) {
    guardedCallback(promise_, call, [&] { promise_.set(convert()); });
  }

  process::Promise<T> promise_;
};

// Rust drops a completion without answering only if the call was lost (a bug): the
// agent must not wait forever for prepare, isolate or cleanup, so the destructor
// fails whatever is still pending. Failing a set promise is a no-op.
template <typename T>
class PromiseCompletion : public Answer<T> {
 public:
  ~PromiseCompletion() override {
    try {
      this->promise_.fail("rein: internal error: call dropped");
    } catch (...) {
    }
  }
};

class NothingCompletion : public PromiseCompletion<Nothing> {
 public:
  void nothing() override { set("nothing", [] { return Nothing(); }); }
};

// Rust answers `nothing` for a launch info that asks nothing (Mesos's None).
class LaunchInfoCompletion : public PromiseCompletion<Option<mesos::slave::ContainerLaunchInfo>> {
 public:
  using Info = Option<mesos::slave::ContainerLaunchInfo>;
  void nothing() override { set("nothing", [] { return Info::none(); }); }
  void launch_info(const rein::LaunchInfoView& view) override {
    set("launch_info", [&] { return Info(toLaunchInfo(view)); });
  }
};

class StatisticsCompletion : public PromiseCompletion<mesos::ResourceStatistics> {
 public:
  void statistics(const rein::StatisticsView& view) override {
    set("statistics", [&] { return toStatistics(view); });
  }
};

class StatusCompletion : public PromiseCompletion<mesos::ContainerStatus> {
 public:
  void status(const rein::StatusView& view) override {
    set("status", [&] { return toStatus(view); });
  }
};

// watch(): "no limitation" is a future that never completes. Rust keeps this
// completion until the container's cleanup() and drops it unanswered then, which
// abandons the future (the containerizer is destroying that container).
class LimitationCompletion : public Answer<mesos::slave::ContainerLimitation> {
 public:
  void limitation(const rein::LimitationView& view) override {
    set("limitation", [&] { return toLimitation(view); });
  }
};

// What a Rust call takes to answer the agent.
using Done = std::unique_ptr<rein::Completion>;

// Hands a completion to a Rust call and returns its future at once.
template <typename C, typename Call>
process::Future<typename C::Value> startCall(Call call) {
  std::unique_ptr<C> done(new C());
  process::Future<typename C::Value> future = done->future();
  call(Done(done.release()));
  return future;
}

// One agent-facing call: `rust` gets the completion (and converts the arguments);
// the agent gets its future, or the failure an exception becomes.
template <typename C, typename Call>
process::Future<typename C::Value> forward(const char* module, const char* call, Call rust) {
  return guarded<typename C::Value>(module, call, [&] { return startCall<C>(rust); });
}

}  // namespace rein_shim
