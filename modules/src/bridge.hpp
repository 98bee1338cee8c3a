// The generated cxx bridge plus the shim's small helpers around it.
#pragma once

#include <string>

#include "rein-bridge/src/bridge.rs.h"

namespace rein_shim {

inline std::string toString(rust::Str s) { return std::string(s); }
inline std::string toString(const rust::String& s) { return std::string(s); }

}  // namespace rein_shim
