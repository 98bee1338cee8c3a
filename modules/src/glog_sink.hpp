// The modules' log lines go into the agent's glog.
#pragma once

namespace rein_shim {

// Installs the glog sink into the Rust side; later calls do nothing (one sink per
// loaded library, shared by every module instance in it).
void installGlogSinkOnce();

}  // namespace rein_shim
