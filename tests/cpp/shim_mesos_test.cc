// The shim itself (modules/src) on real Mesos protobufs, without an agent: the
// probe isolator behind the real RustIsolator, and the real module create
// functions. Bytes that are not UTF-8 (Mesos protobufs do not check) go into every
// field the shim copies; no exception may escape, each refusal names its field.
// Built by tests/cpp/shim_mesos against a Mesos source tree (MESOS_SRC_DIR).
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include <mesos/mesos.hpp>
#include <mesos/module/container_logger.hpp>
#include <mesos/module/isolator.hpp>
#include <mesos/slave/containerizer.hpp>

#include <process/clock.hpp>

#include "completions.hpp"
#include "convert.hpp"
#include "rust_isolator.hpp"

// The two symbols the shim takes from libmesos/libprocess, which this test does not
// link (it has only the headers and the generated protobufs).
namespace mesos {
bool operator==(const ContainerID& a, const ContainerID& b) {
  return a.value() == b.value() && a.has_parent() == b.has_parent() &&
         (!a.has_parent() || a.parent() == b.parent());
}
}  // namespace mesos
process::Time process::Clock::now() { return process::Time::epoch(); }

extern mesos::modules::Module<mesos::slave::Isolator> rein_NetClsIsolator;
extern mesos::modules::Module<mesos::slave::ContainerLogger> rein_ContainerLogger;

static int failures = 0;
static void check(bool ok, const std::string& what, const std::string& detail) {
  std::printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", what.c_str(), detail.empty() ? "" : ": ", detail.c_str());
  if (!ok) ++failures;
}

template <typename T>
static std::string settle(const process::Future<T>& f) {
  for (int i = 0; i < 1000 && f.isPending(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (f.isPending()) return "PENDING";
  if (f.isFailed()) return "FAILED: " + f.failure();
  if (f.isDiscarded()) return "DISCARDED";
  return "READY";
}

// The value of a ready future, without Future::get (its await needs libprocess).
template <typename T>
static T valueOf(const process::Future<T>& f) {
  T out;
  f.onReady([&out](const T& value) { out = value; });
  return out;
}

int main() {
  const std::string bad = "x\xff\xfe";
  rein_shim::RustIsolator iso("probe", rein::create_isolator("probe", rust::Slice<const rein::KeyValue>()));

  auto config = [&]() -> mesos::slave::ContainerConfig {
    mesos::slave::ContainerConfig c;
    c.set_directory("/tmp/slaves/S1/frameworks/F/executors/E/runs/c1");
    c.mutable_task_info()->set_name("web");
    c.mutable_task_info()->mutable_task_id()->set_value("t1");
    return c;
  };
  mesos::ContainerID id;
  id.set_value("c1");

  {
    mesos::slave::ContainerConfig c = config();
    mesos::Label* l = c.mutable_task_info()->mutable_labels()->add_labels();
    l->set_key("rein.net.egress.rate");
    l->set_value("1m" + std::string("\xff") + "bit");
    std::string r = settle(iso.prepare(id, c));
    check(r.find("task label 'rein.net.egress.rate': value is not valid UTF-8 (byte 0xff at offset 2)") != std::string::npos,
          "prepare with a 0xff in our label fails naming it", r);
  }
  {
    mesos::slave::ContainerConfig c = config();
    mesos::Label* l = c.mutable_task_info()->mutable_labels()->add_labels();
    l->set_key(bad);
    l->set_value(bad);
    c.mutable_task_info()->set_name(bad);
    c.set_user("nobody");
    mesos::Environment::Variable* v = c.mutable_command_info()->mutable_environment()->add_variables();
    v->set_name("SECRET");
    v->set_value(bad);
    mesos::Resource* r = c.add_resources();
    r->set_name("gpus" + bad);
    r->set_type(mesos::Value::SCALAR);
    r->mutable_scalar()->set_value(1);
    std::string out = settle(iso.prepare(id, c));
    check(out.find("panicked in prepare") != std::string::npos,
          "prepare with foreign 0xff label/name/resource reaches the isolator", out);
  }
  {
    mesos::slave::ContainerConfig c = config();
    mesos::Environment::Variable* v = c.mutable_command_info()->mutable_environment()->add_variables();
    v->set_name("REIN_LOG_SINK");
    v->set_type(mesos::Environment::Variable::VALUE);
    v->set_value(bad);
    std::string out = settle(iso.prepare(id, c));
    check(out.find("variable 'REIN_LOG_SINK': value is not valid UTF-8") != std::string::npos,
          "prepare with a 0xff REIN_ value fails naming it", out);
  }
  {
    mesos::slave::ContainerConfig c = config();
    mesos::Label* l = c.mutable_executor_info()->mutable_labels()->add_labels();
    l->set_key("rein.disk.mode" + bad);
    l->set_value("kill");
    std::string out = settle(iso.prepare(id, c));
    check(out.find("executor label 'rein.disk.modex\\xff\\xfe': name is not valid UTF-8") !=
              std::string::npos,
          "prepare with a 0xff in our executor label's name fails naming it", out);
  }
  {
    mesos::slave::ContainerConfig c = config();
    c.set_directory("/tmp/slaves/S1/frameworks/F/executors/" + bad + "/runs/c1");
    std::string out = settle(iso.prepare(id, c));
    check(out.find("sandbox directory: not valid UTF-8 (byte 0xff at offset 39)") != std::string::npos,
          "prepare with a 0xff in the sandbox path fails naming it", out);
    c = config();
    c.set_user(bad);
    out = settle(iso.prepare(id, c));
    check(out.find("user: not valid UTF-8") != std::string::npos,
          "prepare with a 0xff in the user fails naming it", out);
  }
  {
    mesos::ContainerID child;
    child.set_value(bad);
    child.mutable_parent()->CopyFrom(id);
    std::string out = settle(iso.prepare(child, config()));
    check(out.find("container id: segment 2 'x\\xff\\xfe'") != std::string::npos,
          "prepare of a nested container with a 0xff id fails naming it", out);
    out = settle(iso.isolate(child, 1));
    check(out.find("container id: segment 2") != std::string::npos, "isolate with a 0xff id fails", out);
    out = settle(iso.usage(child));
    check(out.find("container id: segment 2") != std::string::npos, "usage with a 0xff id fails", out);
    out = settle(iso.status(child));
    check(out.find("container id: segment 2") != std::string::npos, "status with a 0xff id fails", out);
    process::Future<mesos::slave::ContainerLimitation> watched = iso.watch(child);
    out = settle(watched);
    check(out.find("container id: segment 2") != std::string::npos, "watch with a 0xff id fails", out);
    out = settle(iso.cleanup(child));
    check(out == "READY", "cleanup with a 0xff id has nothing to do", out);
    std::vector<mesos::slave::ContainerState> states(1);
    states[0].mutable_container_id()->CopyFrom(child);
    states[0].set_pid(1);
    states[0].set_directory("/tmp/" + bad);
    hashset<mesos::ContainerID> orphans;
    orphans.insert(child);
    out = settle(iso.recover(states, orphans));
    check(out == "READY", "recover skips containers with 0xff ids", out);
  }
  {
    mesos::Parameters params;
    mesos::Parameter* p = params.add_parameter();
    p->set_key("state_dir");
    p->set_value("/var/" + bad);
    mesos::slave::Isolator* created = nullptr;
    try {
      created = rein_NetClsIsolator.create(params);
      check(created == nullptr, "creating net_cls with a 0xff parameter returns nullptr", "");
    } catch (...) {
      check(false, "creating net_cls with a 0xff parameter", "threw");
    }
    try {
      mesos::slave::ContainerLogger* logger = rein_ContainerLogger.create(params);
      check(logger == nullptr, "creating the logger with a 0xff parameter returns nullptr", "");
    } catch (...) {
      check(false, "creating the logger with a 0xff parameter", "threw");
    }
  }
  {
    // The launch info Rust decided, copied onto the real protobuf: nothing asked
    // is None; a bounding set is copied whole, even when empty.
    rein_shim::LaunchInfoCompletion none;
    none.nothing();
    check(settle(none.future()) == "READY" && valueOf(none.future()).isNone(),
          "an empty launch info is None", "");
    rein_shim::LaunchInfoCompletion some;
    rein::LaunchInfoView view;
    rein::LaunchVariable variable;
    variable.key = "REIN_X";
    variable.value = "1";
    view.environment.push_back(variable);
    rein::BoundingSet bounding;
    bounding.capabilities.push_back(mesos::CapabilityInfo::CHOWN);
    bounding.capabilities.push_back(mesos::CapabilityInfo::KILL);
    view.bounding_capabilities.push_back(bounding);
    some.launch_info(view);
    const Option<mesos::slave::ContainerLaunchInfo> info = valueOf(some.future());
    check(info.isSome() && info->environment().variables_size() == 1 &&
              info->has_bounding_capabilities() &&
              info->bounding_capabilities().capabilities_size() == 2 &&
              info->bounding_capabilities().capabilities(1) == mesos::CapabilityInfo::KILL,
          "a decided bounding set is copied whole", "");
    rein_shim::LaunchInfoCompletion empty;
    rein::LaunchInfoView emptySet;
    emptySet.bounding_capabilities.push_back(rein::BoundingSet());
    empty.launch_info(emptySet);
    const Option<mesos::slave::ContainerLaunchInfo> dropAll = valueOf(empty.future());
    check(dropAll.isSome() && dropAll->has_bounding_capabilities() &&
              dropAll->bounding_capabilities().capabilities_size() == 0,
          "an empty bounding set is still set", "");
    // The tables Rust decides against come from this Mesos's descriptors.
    const rust::Vec<rein::MesosEnumValue> caps = rein_shim::capabilityNames();
    const rust::Vec<rein::MesosEnumValue> reasons = rein_shim::reasonNames();
    bool sysResource = false;
    for (const rein::MesosEnumValue& cap : caps) {
      sysResource = sysResource || (std::string(cap.name.begin(), cap.name.end()) == "SYS_RESOURCE" &&
                                    cap.number == mesos::CapabilityInfo::SYS_RESOURCE);
    }
    check(sysResource && reasons.size() > 10, "the capability and reason tables are this Mesos's",
          std::to_string(caps.size()) + " capabilities, " + std::to_string(reasons.size()) + " reasons");
  }
  std::printf("%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
