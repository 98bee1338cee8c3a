#include "glog_sink.hpp"

#include <memory>
#include <mutex>
#include <string>

#include <glog/logging.h>

#include "bridge.hpp"

namespace rein_shim {
namespace {

// Levels as the bridge sends them: 0 info, 1 warning, 2 error, 3 debug.
class GlogSink : public rein::LogSink {
 public:
  // Called from Rust: nothing may unwind back into it; a lost line is all it costs.
  void write(int32_t level, rust::Str message) const override {
    try {
      const std::string text = toString(message);
      switch (level) {
        case 0: LOG(INFO) << text; break;
        case 1: LOG(WARNING) << text; break;
        case 2: LOG(ERROR) << text; break;
        default: VLOG(1) << text; break;
      }
    } catch (...) {
    }
  }
};

}  // namespace

void installGlogSinkOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    rein::install_log_sink(std::unique_ptr<rein::LogSink>(new GlogSink()));
  });
}

}  // namespace rein_shim
