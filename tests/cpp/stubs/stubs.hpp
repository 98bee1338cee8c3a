// Minimal declarations of the few Mesos, libprocess, stout, glog and protobuf types
// the shim (modules/src) uses, written for one purpose: letting CI compile the shim
// with `g++ -fsyntax-only` where no Mesos is installed (cxx-bridge/tests/shim_syntax.rs).
// Our own declarations, not Mesos code: names and signatures follow the public
// module API the shim is written against, bodies are placeholders, and nothing here
// is ever linked or run. The real check stays modules/build.sh against the agent's
// own headers.
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <unordered_set>
#include <vector>

#include <sys/types.h>

// ---- glog ----
namespace google {
class LogMessage {
 public:
  LogMessage(const char* file, int line, int severity);
  ~LogMessage();
  std::ostream& stream();
};
}  // namespace google
namespace rein_stub {
struct LogStream : std::ostringstream {};
}  // namespace rein_stub
#define LOG(severity) ::rein_stub::LogStream()
#define VLOG(level) ::rein_stub::LogStream()

// ---- protobuf ----
namespace google {
namespace protobuf {
class EnumValueDescriptor {
 public:
  const std::string& name() const;
  int number() const;
};
class EnumDescriptor {
 public:
  int value_count() const;
  const EnumValueDescriptor* value(int index) const;
};
template <typename T>
class RepeatedPtrField {
 public:
  const T* begin() const;
  const T* end() const;
};
template <typename K, typename V>
class Map {};
}  // namespace protobuf
}  // namespace google

// ---- stout ----
struct Nothing {};
struct None {};
class Error {
 public:
  explicit Error(const std::string& message);
};
template <typename T>
class Option {
 public:
  Option();
  Option(const T& value);
  Option(const None&);
  static Option<T> none();
};
template <typename T>
class Try {
 public:
  Try(const T& value);
  Try(const Error& error);
};
template <typename T>
using hashset = std::unordered_set<T>;

// ---- libprocess ----
namespace process {
struct Failure {
  explicit Failure(const std::string& message);
};
template <typename T>
class Future {
 public:
  Future();
  Future(const T& value);
  Future(const Failure& failure);
};
template <typename T>
class Promise {
 public:
  Promise();
  ~Promise();
  Promise(const Promise&) = delete;
  Future<T> future() const;
  bool set(const T& value);
  bool fail(const std::string& message);
};
class Time {
 public:
  double secs() const;
};
class Clock {
 public:
  static Time now();
};
}  // namespace process

// ---- Mesos protobufs (only the fields the shim touches) ----
namespace mesos {
class Value {
 public:
  enum Type { SCALAR = 0 };
  class Scalar {
   public:
    double value() const;
    void set_value(double value);
  };
};
class Parameter {
 public:
  const std::string& key() const;
  const std::string& value() const;
};
class Parameters {
 public:
  const google::protobuf::RepeatedPtrField<Parameter>& parameter() const;
};
class ContainerID {
 public:
  const std::string& value() const;
  bool has_parent() const;
  const ContainerID& parent() const;
};
class ID {
 public:
  const std::string& value() const;
};
class Label {
 public:
  const std::string& key() const;
  const std::string& value() const;
};
class Labels {
 public:
  const google::protobuf::RepeatedPtrField<Label>& labels() const;
};
class TaskInfo {
 public:
  const std::string& name() const;
  const ID& task_id() const;
  const Labels& labels() const;
};
class ExecutorInfo {
 public:
  const ID& executor_id() const;
  const ID& framework_id() const;
  const Labels& labels() const;
};
class Environment {
 public:
  class Variable {
   public:
    enum Type { UNKNOWN = 0, VALUE = 1, SECRET = 2 };
    const std::string& name() const;
    const std::string& value() const;
    Type type() const;
    void set_name(const std::string& name);
    void set_value(const std::string& value);
    void set_type(Type type);
  };
  const google::protobuf::RepeatedPtrField<Variable>& variables() const;
  Variable* add_variables();
};
class CommandInfo {
 public:
  const Environment& environment() const;
};
class Resource {
 public:
  const std::string& name() const;
  const Value::Scalar& scalar() const;
  bool has_disk() const;
  void set_name(const std::string& name);
  void set_type(Value::Type type);
  Value::Scalar* mutable_scalar();
};
class CapabilityInfo {
 public:
  enum Capability { CHOWN = 1000 };
  static const google::protobuf::EnumDescriptor* Capability_descriptor();
  void add_capabilities(Capability capability);
};
class TaskStatus {
 public:
  enum Reason { REASON_COMMAND_EXECUTOR_FAILED = 0 };
  static const google::protobuf::EnumDescriptor* Reason_descriptor();
};
class CgroupInfo {
 public:
  class Blkio {
   public:
    enum Operation { UNKNOWN = 0, TOTAL = 1, READ = 2, WRITE = 3 };
    class Value {
     public:
      void set_op(Operation op);
      void set_value(uint64_t value);
    };
    class Throttling {
     public:
      class Statistics {
       public:
        class Device {
         public:
          void set_major_number(int64_t major);
          void set_minor_number(int64_t minor);
        };
        Device* mutable_device();
        Value* add_io_service_bytes();
        Value* add_io_serviced();
      };
    };
    class Statistics {
     public:
      Throttling::Statistics* add_throttling();
    };
  };
  class NetCls {
   public:
    void set_classid(uint32_t classid);
  };
  NetCls* mutable_net_cls();
};
class ResourceStatistics {
 public:
  void set_timestamp(double timestamp);
  void set_net_tx_bytes(uint64_t value);
  void set_net_tx_packets(uint64_t value);
  void set_net_tx_dropped(uint64_t value);
  void set_net_tx_rate_limit(uint64_t value);
  void set_net_tx_burst_rate_limit(uint64_t value);
  void set_net_tx_burst_size(uint64_t value);
  void set_disk_used_bytes(uint64_t value);
  void set_disk_limit_bytes(uint64_t value);
  CgroupInfo::Blkio::Statistics* mutable_blkio_statistics();
};
class ContainerStatus {
 public:
  CgroupInfo* mutable_cgroup_info();
};
class Resources {
 public:
  const Resource* begin() const;
  const Resource* end() const;
};

namespace slave {
enum ContainerClass { DEFAULT = 1, DEBUG = 2 };
class ContainerConfig {
 public:
  const std::string& directory() const;
  const std::string& user() const;
  const TaskInfo& task_info() const;
  const ExecutorInfo& executor_info() const;
  const CommandInfo& command_info() const;
  const google::protobuf::RepeatedPtrField<Resource>& resources() const;
  ContainerClass container_class() const;
};
class ContainerState {
 public:
  const ContainerID& container_id() const;
  uint64_t pid() const;
  const std::string& directory() const;
};
class ContainerLaunchInfo {
 public:
  Environment* mutable_environment();
  CapabilityInfo* mutable_bounding_capabilities();
};
class ContainerLimitation {
 public:
  void set_message(const std::string& message);
  void set_reason(TaskStatus::Reason reason);
  Resource* add_resources();
};
class ContainerIO {
 public:
  class IO {
   public:
    static IO FD(int fd, bool closeOnDestruction);
  };
  IO out;
  IO err;
};

// ---- the module interfaces ----
class Isolator {
 public:
  virtual ~Isolator();
  virtual bool supportsNesting();
  virtual process::Future<Nothing> recover(
      const std::vector<ContainerState>& states,
      const hashset<ContainerID>& orphans);
  virtual process::Future<Option<ContainerLaunchInfo>> prepare(
      const ContainerID& containerId,
      const ContainerConfig& containerConfig);
  virtual process::Future<Nothing> isolate(const ContainerID& containerId, pid_t pid);
  virtual process::Future<ContainerLimitation> watch(const ContainerID& containerId);
  virtual process::Future<Nothing> update(
      const ContainerID& containerId,
      const Resources& resourceRequests,
      const google::protobuf::Map<std::string, Value::Scalar>& resourceLimits);
  virtual process::Future<ResourceStatistics> usage(const ContainerID& containerId);
  virtual process::Future<ContainerStatus> status(const ContainerID& containerId);
  virtual process::Future<Nothing> cleanup(const ContainerID& containerId);
};
class ContainerLogger {
 public:
  virtual ~ContainerLogger();
  virtual Try<Nothing> initialize() = 0;
  virtual process::Future<ContainerIO> prepare(
      const ContainerID& containerId,
      const ContainerConfig& containerConfig) = 0;
};
}  // namespace slave

namespace modules {
template <typename T>
class Module {
 public:
  Module(const char* moduleApiVersion,
         const char* mesosVersion,
         const char* authorName,
         const char* authorEmail,
         const char* description,
         bool (*compatible)(),
         T* (*create)(const Parameters& parameters));
};
}  // namespace modules
}  // namespace mesos

#define MESOS_MODULE_API_VERSION "stub"
#define MESOS_VERSION "stub"
