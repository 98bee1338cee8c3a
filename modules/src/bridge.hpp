// The generated cxx bridge plus the shim's small helpers around it. Mesos-free: the
// bridge's own C++ test uses the same helpers.
#pragma once

#include <cstdint>
#include <string>

#include "rein-bridge/src/bridge.rs.h"

namespace rein_shim {

inline std::string toString(rust::Str s) { return std::string(s); }
inline std::string toString(const rust::String& s) { return std::string(s); }

// Protobuf strings cross as bytes: they need not be UTF-8, and a rust::String
// built from other bytes throws. Rust decides what each field may carry.
inline rust::Slice<const uint8_t> slice(const std::string& s) {
  return rust::Slice<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

inline rust::Vec<uint8_t> bytes(const std::string& s) { return rein::copy_bytes(slice(s)); }

inline rein::KeyValue keyValue(const std::string& key, const std::string& value) {
  rein::KeyValue kv;
  kv.key = bytes(key);
  kv.value = bytes(value);
  return kv;
}

}  // namespace rein_shim
