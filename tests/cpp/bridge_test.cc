// The bridge seen from C++, without Mesos: the same staticlib, headers and link line
// as the agent module, driven through the "probe" isolator (feature `probe`), which
// panics in prepare() and fails isolate(). Proves that panics and errors come back
// as fail() on the completion, that create_isolator throws rust::Error, that a
// watch without a limitation stays pending until cleanup and is then destroyed
// without an answer,
// that module log lines reach the installed LogSink, and that bytes which are not
// UTF-8 (Mesos does not check protobuf strings) cross every entry point without an
// exception: each field is refused naming it, or carried, in Rust.

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bridge.hpp"

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
  void container_io(const rein::ContainerIoView& io) override {
    if (io.stdout_fd >= 0) ::close(io.stdout_fd);
    if (io.stderr_fd >= 0) ::close(io.stderr_fd);
    record_->answer("container_io");
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
  void debug(rust::Str message) const override { write(3, message); }

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

// What the shim does with every protobuf string: copy its bytes, whatever they are
// (the shim's own helpers, from modules/src/bridge.hpp).
using rein_shim::bytes;
using rein_shim::keyValue;

rein::ContainerChain chain(const std::string& id) {
  rein::ContainerChain c;
  rein::IdSegment segment;
  segment.value = bytes(id);
  c.ids.push_back(std::move(segment));
  return c;
}

// A framework can put these bytes in any label, name or id.
const std::string kNotUtf8 = std::string("x\xff\xfe");

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
    std::vector<rein::KeyValue> params;
    params.push_back(keyValue("bogus", "1"));
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
    config.directory = bytes("/tmp/rein-bridge-test/sandbox");
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
    handle->status(chain("a/b"), std::move(call.first));
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

  // watch() on an isolator that never reports a limitation: Rust keeps the
  // completion (the future stays pending) until the container's cleanup, then
  // destroys it without an answer.
  {
    auto call = completion();
    handle->watch(chain("c1"), std::move(call.first));
    auto later = completion();
    handle->status(chain("c1"), std::move(later.first));
    check(later.second->wait_destroyed() && !call.second->wait_destroyed(std::chrono::milliseconds(0)),
          "watch without a limitation stays pending", describe(*call.second));
    auto cleanup = completion();
    handle->cleanup(chain("c1"), std::move(cleanup.first));
    check(call.second->wait_destroyed() && call.second->answers == 0,
          "watch without a limitation is destroyed unanswered at cleanup",
          describe(*call.second));
  }

  // The hazard the bridge avoids: a rust::String built from such bytes throws.
  try {
    rust::String s(kNotUtf8);
    (void)s;
    check(false, "rust::String rejects invalid UTF-8", "it did not throw");
  } catch (const std::invalid_argument&) {
    check(true, "rust::String rejects invalid UTF-8 (so the shim never builds one)");
  }

  {
    const std::string raw = kNotUtf8 + std::string(1, '\0') + "y";
    const rust::Vec<uint8_t> copied = bytes(raw);
    check(copied.size() == raw.size() &&
              std::string(reinterpret_cast<const char*>(copied.data()), copied.size()) == raw,
          "copy_bytes keeps every byte (invalid UTF-8, NUL)");
    check(bytes(std::string()).empty(), "copy_bytes of an empty string is empty");
  }

  // Every entry point that takes bytes, with bytes that are not UTF-8: no exception
  // may escape, and each refusal names its field.
  auto config = [](const std::string& id) -> rein::ContainerConfigView {
    rein::ContainerConfigView view;
    view.container = chain(id);
    view.directory = bytes("/tmp/rein-bridge-test/slaves/S1/frameworks/F/executors/E/runs/" + id);
    view.debug = false;
    return view;
  };
  struct Case {
    const char* what;
    rein::ContainerConfigView view;
    const char* expected;
  };
  std::vector<Case> cases;
  {
    Case c{"our task label value", config("u1"),
           "task label 'rein.net.egress.rate': value is not valid UTF-8 (byte 0xff at offset 1)"};
    c.view.task_labels.push_back(keyValue("rein.net.egress.rate", kNotUtf8));
    cases.push_back(std::move(c));
  }
  {
    Case c{"our executor label name", config("u2"),
           "executor label 'rein.disk.mode\\xff': name is not valid UTF-8"};
    c.view.executor_labels.push_back(keyValue("rein.disk.mode\xff", "kill"));
    cases.push_back(std::move(c));
  }
  {
    Case c{"a REIN_ value", config("u3"),
           "variable 'REIN_LOG_SINK': value is not valid UTF-8"};
    c.view.environment.push_back(keyValue("REIN_LOG_SINK", kNotUtf8));
    cases.push_back(std::move(c));
  }
  {
    Case c{"the sandbox directory", config("u4"), "sandbox directory: not valid UTF-8"};
    c.view.directory = bytes("/tmp/" + kNotUtf8);
    cases.push_back(std::move(c));
  }
  {
    Case c{"the user", config("u5"), "user: not valid UTF-8"};
    c.view.user = bytes(kNotUtf8);
    cases.push_back(std::move(c));
  }
  {
    Case c{"a container id", config("u6"), "container id: segment 2 'x\\xff\\xfe'"};
    rein::IdSegment child;
    child.value = bytes(kNotUtf8);
    c.view.container.ids.push_back(std::move(child));
    cases.push_back(std::move(c));
  }
  {
    // Not ours, only displayed or shipped: carried, so the call reaches the probe
    // (whose prepare panics on purpose).
    Case c{"foreign labels, names and ids", config("u7"), "panicked in prepare"};
    c.view.task_labels.push_back(keyValue(kNotUtf8, kNotUtf8));
    c.view.executor_labels.push_back(keyValue("team", kNotUtf8));
    c.view.task_id = bytes(kNotUtf8);
    c.view.task_name = bytes(kNotUtf8);
    c.view.executor_id = bytes(kNotUtf8);
    c.view.framework_id = bytes(kNotUtf8);
    rein::ResourceEntry gpus;
    gpus.name = bytes("gpus" + kNotUtf8);
    gpus.scalar = 1;
    gpus.has_disk_info = false;
    c.view.resources.push_back(std::move(gpus));
    cases.push_back(std::move(c));
  }
  for (Case& c : cases) {
    const std::string what = std::string("prepare with invalid UTF-8 in ") + c.what;
    try {
      auto call = completion();
      handle->prepare(std::move(c.view), std::move(call.first));
      check(call.second->wait_destroyed() && call.second->kind == "fail" &&
                contains(call.second->message, c.expected),
            what + (contains(c.expected, "panicked") ? " is carried to the isolator"
                                                     : " fails naming it"),
            describe(*call.second) + " (expected " + c.expected + ")");
    } catch (...) {
      check(false, what, "an exception escaped");
    }
  }

  check(logs->wait_for_line("not valid UTF-8, carried with U+FFFD", 1) &&
            logs->wait_for_line("task label 'x\\xff\\xfe'", 1) &&
            logs->wait_for_line("task name", 1),
        "what was carried with U+FFFD is logged as a warning naming the fields", logs->dump());

  // Calls that take only a container id.
  try {
    const rein::ContainerChain bad = chain(kNotUtf8);
    auto isolate = completion();
    handle->isolate(bad, 1, std::move(isolate.first));
    auto update = completion();
    handle->update(bad, rust::Vec<rein::ResourceEntry>(), std::move(update.first));
    auto usage = completion();
    handle->usage(bad, std::move(usage.first));
    auto status = completion();
    handle->status(bad, std::move(status.first));
    auto watch = completion();
    handle->watch(bad, std::move(watch.first));
    auto cleanup = completion();
    handle->cleanup(bad, std::move(cleanup.first));
    for (auto* r : {&isolate, &update, &usage, &status, &watch}) {
      check(r->second->wait_destroyed() && r->second->kind == "fail" &&
                contains(r->second->message, "container id: segment 1 'x\\xff\\xfe'"),
            "a call with an invalid UTF-8 container id fails naming it", describe(*r->second));
    }
    check(cleanup.second->wait_destroyed() && cleanup.second->kind == "nothing",
          "cleanup of a refused container has nothing to do", describe(*cleanup.second));

    // recover() is given everything the agent knows: one undecodable container (it
    // cannot be ours) must not fail the agent's recovery.
    rust::Vec<rein::RecoveredView> containers;
    rein::RecoveredView view;
    view.container = chain(kNotUtf8);
    view.pid = 1;
    view.directory = bytes("/tmp/" + kNotUtf8);
    containers.push_back(std::move(view));
    rust::Vec<rein::ContainerChain> orphans;
    orphans.push_back(chain(kNotUtf8));
    auto recover = completion();
    handle->recover(std::move(containers), std::move(orphans), std::move(recover.first));
    check(recover.second->wait_destroyed() && recover.second->kind == "nothing",
          "recover skips containers with invalid UTF-8", describe(*recover.second));
    check(logs->wait_for_line("recover: skipping a container: container id", 1),
          "the skipped container is logged as a warning", logs->dump());
  } catch (...) {
    check(false, "calls with an invalid UTF-8 container id", "an exception escaped");
  }

  // Module creation: a parameter that is not UTF-8 is rust::Error naming it.
  for (const char* kind : {"net_cls", "logger"}) {
    const std::string what = std::string("creating the ") + kind + " module with a non-UTF-8 parameter";
    try {
      std::vector<rein::KeyValue> params;
      params.push_back(keyValue("state_dir", "/var/" + kNotUtf8));
      const rust::Slice<const rein::KeyValue> slice(params.data(), params.size());
      if (std::string(kind) == "logger") {
        rein::create_logger(slice);
      } else {
        rein::create_isolator(kind, slice);
      }
      check(false, what, "it returned a handle");
    } catch (const rust::Error& e) {
      check(contains(e.what(), "module parameter 'state_dir': value is not valid UTF-8"),
            what + " fails naming it", e.what());
    } catch (...) {
      check(false, what, "an exception other than rust::Error escaped");
    }
  }

  // The logger's prepare takes the same view.
  try {
    std::vector<rein::KeyValue> params;
    params.push_back(keyValue("shipper_socket", "/nonexistent/rein-bridge-test.sock"));
    params.push_back(keyValue("shipper_timeout", "100ms"));
    rust::Box<rein::LoggerHandle> logger =
        rein::create_logger(rust::Slice<const rein::KeyValue>(params.data(), params.size()));
    rein::ContainerConfigView view = config("l1");
    view.task_labels.push_back(keyValue("rein.log.sink", kNotUtf8));
    auto call = completion();
    logger->prepare(std::move(view), std::move(call.first));
    check(call.second->wait_destroyed() && call.second->kind == "fail" &&
              contains(call.second->message,
                       "task label 'rein.log.sink': value is not valid UTF-8"),
          "the logger's prepare refuses our label naming it", describe(*call.second));
  } catch (...) {
    check(false, "the logger's prepare with invalid UTF-8", "an exception escaped");
  }

  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
