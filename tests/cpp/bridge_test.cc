// The bridge seen from C++, without Mesos: the same staticlib, headers and link line
// as the agent module, driven through the "probe" isolator (feature `probe`), which
// panics in prepare() and fails isolate(). Proves that panics and errors come back
// as fail() on the completion, that create_isolator throws rust::Error, that a
// dropped completion (watch without a limitation) is destroyed without an answer,
// and that module log lines reach the installed LogSink.

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "rein-bridge/src/bridge.rs.h"

namespace {

// What one call received; outlives the Completion, which Rust destroys.
struct Record {
  std::mutex mutex;
  std::condition_variable changed;
  int answers = 0;
  std::string kind;     // "fail", "nothing", "launch_info", "statistics", "status", ...
  std::string message;  // fail()'s message
  rein::StatusView status;
  bool destroyed = false;

  void answer(std::string k, std::string m = std::string()) {
    std::lock_guard<std::mutex> lock(mutex);
    ++answers;
    kind = std::move(k);
    message = std::move(m);
    changed.notify_all();
  }

  // Waits until the completion is destroyed (Rust drops it after answering, or
  // without answering when the call has no outcome).
  bool wait_destroyed(std::chrono::milliseconds limit = std::chrono::seconds(10)) {
    std::unique_lock<std::mutex> lock(mutex);
    return changed.wait_for(lock, limit, [this] { return destroyed; });
  }
};

class RecordingCompletion : public rein::Completion {
 public:
  explicit RecordingCompletion(std::shared_ptr<Record> record) : record_(std::move(record)) {}
  ~RecordingCompletion() override {
    std::lock_guard<std::mutex> lock(record_->mutex);
    record_->destroyed = true;
    record_->changed.notify_all();
  }
  void fail(rust::Str message) override { record_->answer("fail", std::string(message)); }
  void nothing() override { record_->answer("nothing"); }
  void launch_info(const rein::LaunchInfoView&) override { record_->answer("launch_info"); }
  void statistics(const rein::StatisticsView&) override { record_->answer("statistics"); }
  void status(const rein::StatusView& s) override {
    {
      std::lock_guard<std::mutex> lock(record_->mutex);
      record_->status = s;
    }
    record_->answer("status");
  }
  void limitation(const rein::LimitationView& l) override {
    record_->answer("limitation", std::string(l.message));
  }

 private:
  std::shared_ptr<Record> record_;
};

struct LogRecord {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<std::pair<int32_t, std::string>> lines;

  bool wait_for_line(const std::string& needle, int32_t level,
                     std::chrono::milliseconds limit = std::chrono::seconds(10)) {
    std::unique_lock<std::mutex> lock(mutex);
    return changed.wait_for(lock, limit, [&] {
      for (const auto& line : lines) {
        if (line.first == level && line.second.find(needle) != std::string::npos) return true;
      }
      return false;
    });
  }

  std::string dump() {
    std::lock_guard<std::mutex> lock(mutex);
    std::string all;
    for (const auto& line : lines) all += "\n  [" + std::to_string(line.first) + "] " + line.second;
    return all;
  }
};

class RecordingSink : public rein::LogSink {
 public:
  explicit RecordingSink(std::shared_ptr<LogRecord> record) : record_(std::move(record)) {}
  void write(int32_t level, rust::Str message) const override {
    std::lock_guard<std::mutex> lock(record_->mutex);
    record_->lines.emplace_back(level, std::string(message));
    record_->changed.notify_all();
  }

 private:
  std::shared_ptr<LogRecord> record_;
};

int passed = 0;
int failed = 0;

void check(bool ok, const std::string& what, const std::string& detail = std::string()) {
  if (ok) {
    ++passed;
    std::printf("ok   %s\n", what.c_str());
  } else {
    ++failed;
    std::printf("FAIL %s%s%s\n", what.c_str(), detail.empty() ? "" : ": ", detail.c_str());
  }
  std::fflush(stdout);
}

bool contains(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

rein::ContainerChain chain(const std::string& id) {
  rein::ContainerChain c;
  c.ids.push_back(rust::String(id));
  return c;
}

std::pair<std::unique_ptr<rein::Completion>, std::shared_ptr<Record>> completion() {
  auto record = std::make_shared<Record>();
  std::unique_ptr<rein::Completion> done(new RecordingCompletion(record));
  return {std::move(done), record};
}

std::string describe(Record& r) {
  std::lock_guard<std::mutex> lock(r.mutex);
  return "answers=" + std::to_string(r.answers) + " kind=" + r.kind + " message=" + r.message;
}

}  // namespace

int main() {
  auto logs = std::make_shared<LogRecord>();
  rein::install_log_sink(std::unique_ptr<rein::LogSink>(new RecordingSink(logs)));

  // A bad kind is an exception at creation, with Rust's message.
  try {
    rein::create_isolator("nope", rust::Slice<const rein::KeyValue>());
    check(false, "create_isolator(\"nope\") throws", "it returned a handle");
  } catch (const rust::Error& e) {
    check(contains(e.what(), "unknown isolator kind 'nope'"), "create_isolator(\"nope\") throws",
          e.what());
  }

  // Parameters cross as KeyValue; a bad one is named in the error.
  try {
    std::vector<rein::KeyValue> params(1);
    params[0].key = "bogus";
    params[0].value = "1";
    rein::create_isolator("net_cls",
                          rust::Slice<const rein::KeyValue>(params.data(), params.size()));
    check(false, "create_isolator(\"net_cls\", bogus) throws", "it returned a handle");
  } catch (const rust::Error& e) {
    check(contains(e.what(), "module parameter 'bogus'"),
          "create_isolator(\"net_cls\", bogus) names the parameter", e.what());
  }

  rust::Box<rein::IsolatorHandle> handle =
      rein::create_isolator("probe", rust::Slice<const rein::KeyValue>());
  check(handle->supports_nesting(), "supports_nesting() crosses (the trait's default: true)");

  // prepare() panics in Rust: the completion gets fail(), the worker survives.
  {
    rein::ContainerConfigView config;
    config.container = chain("c1");
    config.directory = "/tmp/rein-bridge-test/sandbox";
    config.debug = false;
    auto call = completion();
    handle->prepare(std::move(config), std::move(call.first));
    check(call.second->wait_destroyed(), "prepare completes", describe(*call.second));
    std::string d = describe(*call.second);
    check(call.second->answers == 1 && call.second->kind == "fail" &&
              contains(call.second->message, "panicked in prepare") &&
              contains(call.second->message, "probe panics in prepare for c1"),
          "prepare's panic becomes fail()", d);
    check(logs->wait_for_line("container=c1", 2) && logs->wait_for_line("panicked in prepare", 2),
          "the panic is logged at error level naming the container", logs->dump());
  }

  // isolate() returns an error: fail() with the probe's message.
  {
    auto call = completion();
    handle->isolate(chain("c1"), 4242, std::move(call.first));
    check(call.second->wait_destroyed(), "isolate completes", describe(*call.second));
    check(call.second->kind == "fail" &&
              contains(call.second->message, "probe refuses to isolate c1 (pid 4242)"),
          "isolate's error becomes fail()", describe(*call.second));
  }

  // A malformed container id is a failure, not a crash.
  {
    auto call = completion();
    handle->cleanup(chain("a/b"), std::move(call.first));
    check(call.second->wait_destroyed() && call.second->kind == "fail",
          "a bad container id fails the call", describe(*call.second));
  }

  // Calls that succeed answer with their own kind.
  {
    auto call = completion();
    handle->status(chain("c1"), std::move(call.first));
    check(call.second->wait_destroyed() && call.second->kind == "status" &&
              !call.second->status.has_net_cls_classid,
          "status answers status()", describe(*call.second));
    auto usage = completion();
    handle->usage(chain("c1"), std::move(usage.first));
    check(usage.second->wait_destroyed() && usage.second->kind == "statistics",
          "usage answers statistics()", describe(*usage.second));
    auto cleanup = completion();
    handle->cleanup(chain("c1"), std::move(cleanup.first));
    check(cleanup.second->wait_destroyed() && cleanup.second->kind == "nothing",
          "cleanup answers nothing()", describe(*cleanup.second));
    auto recover = completion();
    handle->recover(rust::Vec<rein::RecoveredView>(), rust::Vec<rein::ContainerChain>(),
                    std::move(recover.first));
    check(recover.second->wait_destroyed() && recover.second->kind == "nothing",
          "recover answers nothing()", describe(*recover.second));
  }

  // watch() on an isolator that never reports a limitation: the completion is
  // destroyed without an answer (the shim must then leave the future pending).
  {
    auto call = completion();
    handle->watch(chain("c1"), std::move(call.first));
    check(call.second->wait_destroyed() && call.second->answers == 0,
          "watch without a limitation drops its completion unanswered",
          describe(*call.second));
  }

  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
