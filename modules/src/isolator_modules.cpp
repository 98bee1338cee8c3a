// The isolator module symbols the agent looks up by name (--modules, --isolation).
// Each creates the generic RustIsolator for one rein isolator kind.

#include <exception>
#include <utility>

#include <glog/logging.h>

#include <mesos/mesos.hpp>
#include <mesos/module.hpp>
#include <mesos/module/isolator.hpp>
#include <mesos/slave/isolator.hpp>
#include <mesos/version.hpp>

#include "bridge.hpp"
#include "convert.hpp"
#include "guard.hpp"
#include "install.hpp"
#include "rust_isolator.hpp"

namespace {

// Creation never throws into the agent: a bad parameter (unknown, malformed, not
// UTF-8) or any exception is logged and the agent refuses to start, naming us.
mesos::slave::Isolator* createRustIsolator(const char* kind, const mesos::Parameters& parameters) {
  try {
    rein_shim::installOnce();
    const rust::Vec<rein::KeyValue> params = rein_shim::toKeyValues(parameters);
    rust::Box<rein::IsolatorHandle> handle = rein::create_isolator(
        kind, rust::Slice<const rein::KeyValue>(params.data(), params.size()));
    LOG(INFO) << "rein: created the " << kind << " isolator";
    return new rein_shim::RustIsolator(kind, std::move(handle));
  } catch (const std::exception& e) {
    rein_shim::logCreateFailure(kind, "isolator", e.what());
    return nullptr;
  } catch (...) {
    rein_shim::logCreateFailure(kind, "isolator", "unknown exception");
    return nullptr;
  }
}

mesos::slave::Isolator* createNetCls(const mesos::Parameters& parameters) {
  return createRustIsolator("net_cls", parameters);
}

mesos::slave::Isolator* createBlkio(const mesos::Parameters& parameters) {
  return createRustIsolator("blkio", parameters);
}

mesos::slave::Isolator* createDisk(const mesos::Parameters& parameters) {
  return createRustIsolator("disk", parameters);
}

}  // namespace

mesos::modules::Module<mesos::slave::Isolator> rein_NetClsIsolator(
    MESOS_MODULE_API_VERSION,
    MESOS_VERSION,
    "rein",
    "rein@localhost",
    "rein net_cls isolator: a classid per container, with egress shaping by label.",
    nullptr,
    createNetCls);

mesos::modules::Module<mesos::slave::Isolator> rein_BlkioIsolator(
    MESOS_MODULE_API_VERSION,
    MESOS_VERSION,
    "rein",
    "rein@localhost",
    "rein blkio isolator: per-device bandwidth and IOPS limits by label, with statistics.",
    nullptr,
    createBlkio);

mesos::modules::Module<mesos::slave::Isolator> rein_DiskIsolator(
    MESOS_MODULE_API_VERSION,
    MESOS_VERSION,
    "rein",
    "rein@localhost",
    "rein disk isolator: sandbox quotas (project quotas or scanning), kill on excess.",
    nullptr,
    createDisk);
