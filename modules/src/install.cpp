#include "install.hpp"

#include <memory>
#include <mutex>
#include <string>

#include <glog/logging.h>

#include "bridge.hpp"
#include "convert.hpp"

namespace rein_shim {
namespace {

// Called from Rust: nothing may unwind back into it; a lost line is all it costs.
class GlogSink : public rein::LogSink {
 public:
  void write(int32_t severity, rust::Str message) const override {
    try {
      google::LogMessage(__FILE__, __LINE__, severity).stream() << toString(message);
    } catch (...) {
    }
  }
  void debug(rust::Str message) const override {
    try {
      VLOG(1) << toString(message);
    } catch (...) {
    }
  }
};

}  // namespace

void installOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    rein::install_log_sink(std::unique_ptr<rein::LogSink>(new GlogSink()));
    rein::install_mesos_enums(capabilityNames(), reasonNames());
  });
}

}  // namespace rein_shim
