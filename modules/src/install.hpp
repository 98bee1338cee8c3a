// What the shim tells Rust once per loaded library: where its log lines go (the
// agent's glog) and this Mesos's enum tables.
#pragma once

namespace rein_shim {

// Installs the glog sink and the Mesos tables into the Rust side; later calls do
// nothing (one of each per loaded library, shared by every module instance in it).
void installOnce();

}  // namespace rein_shim
