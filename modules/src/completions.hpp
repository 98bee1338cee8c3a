// Completions: each owns the process::Promise behind the future the shim returned,
// and is fulfilled once by Rust, from the module's Rust thread (Promise is safe to
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

// Rust drops a completion without answering only if the call was lost (a bug): the
// agent must not wait forever for prepare, isolate or cleanup, so the destructor
// fails whatever is still pending. Failing a set promise is a no-op.
template <typename T>
class PromiseCompletion : public rein::Completion {
 public:
  PromiseCompletion() : promise_(std::make_shared<process::Promise<T>>()) {}
  ~PromiseCompletion() override {
    try {
      promise_->fail("rein: internal error: call dropped");
    } catch (...) {
    }
  }

  process::Future<T> future() const { return promise_->future(); }

  void fail(rust::Str message) override {
    guardedCallback(*promise_, "fail", [&] { promise_->fail(toString(message)); });
  }

 protected:
  void set(const T& value) { promise_->set(value); }
  void failWith(const std::string& message) { promise_->fail(message); }
  process::Promise<T>& promise() { return *promise_; }

 private:
  std::shared_ptr<process::Promise<T>> promise_;
};

class NothingCompletion : public PromiseCompletion<Nothing> {
 public:
  void nothing() override {
    guardedCallback(promise(), "nothing", [&] { set(Nothing()); });
  }
};

class LaunchInfoCompletion : public PromiseCompletion<Option<mesos::slave::ContainerLaunchInfo>> {
 public:
  void launch_info(const rein::LaunchInfoView& view) override {
    guardedCallback(promise(), "launch_info", [&] {
      Try<Option<mesos::slave::ContainerLaunchInfo>> info = toLaunchInfo(view);
      if (info.isError()) {
        failWith(info.error());
      } else {
        set(info.get());
      }
    });
  }
};

class StatisticsCompletion : public PromiseCompletion<mesos::ResourceStatistics> {
 public:
  void statistics(const rein::StatisticsView& view) override {
    guardedCallback(promise(), "statistics", [&] { set(toStatistics(view)); });
  }
};

class StatusCompletion : public PromiseCompletion<mesos::ContainerStatus> {
 public:
  void status(const rein::StatusView& view) override {
    guardedCallback(promise(), "status", [&] { set(toStatus(view)); });
  }
};

// watch(): "no limitation" is a future that never completes, and a failed watch
// destroys the container. So dropping this completion must not fail the promise;
// and the promise is shared with the isolator, which keeps it until cleanup(): a
// destroyed libprocess Promise abandons its future, and a truly pending future
// does not depend on every consumer treating "abandoned" like "pending".
class LimitationCompletion : public rein::Completion {
 public:
  explicit LimitationCompletion(
      std::shared_ptr<process::Promise<mesos::slave::ContainerLimitation>> promise)
    : promise_(std::move(promise)) {}

  void fail(rust::Str message) override {
    guardedCallback(*promise_, "fail", [&] { promise_->fail(toString(message)); });
  }
  void limitation(const rein::LimitationView& view) override {
    guardedCallback(*promise_, "limitation", [&] { promise_->set(toLimitation(view)); });
  }

 private:
  std::shared_ptr<process::Promise<mesos::slave::ContainerLimitation>> promise_;
};

// Hands a completion to a Rust call and returns its future at once.
template <typename C, typename Call>
auto startCall(Call call) -> decltype(std::declval<C&>().future()) {
  std::unique_ptr<C> done(new C());
  auto future = done->future();
  call(std::unique_ptr<rein::Completion>(done.release()));
  return future;
}

}  // namespace rein_shim
