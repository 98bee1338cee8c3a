// Nothing thrown in the shim may reach the agent: an exception unwinding into a
// libprocess thread (or back into Rust) aborts the agent. Every entry point the
// agent or Rust calls runs its body through one of these, so an exception fails
// only that call, and so only that container. (Only running out of memory while
// reporting a failure can still end the process.)
#pragma once

#include <exception>
#include <string>

#include <glog/logging.h>

#include <process/future.hpp>

namespace rein_shim {

// The failure an exception becomes: "rein <module>: <call>: <what>".
template <typename T>
process::Future<T> exceptionFailure(const char* module, const char* call, const char* what) {
  try {
    const std::string message = std::string("rein ") + module + ": " + call + ": " + what;
    LOG(ERROR) << message;
    return process::Failure(message);
  } catch (...) {
    return process::Failure("rein: exception in the module");
  }
}

// Runs an agent-facing call whose result is a future.
template <typename T, typename Body>
process::Future<T> guarded(const char* module, const char* call, Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    return exceptionFailure<T>(module, call, e.what());
  } catch (...) {
    return exceptionFailure<T>(module, call, "unknown exception");
  }
}

// Fails `promise` after an exception in a callback; never throws itself.
template <typename T>
void failQuietly(process::Promise<T>& promise, const char* call, const char* what) noexcept {
  try {
    const std::string message = std::string("rein: ") + call + ": " + what;
    LOG(ERROR) << message;
    promise.fail(message);
  } catch (...) {
  }
}

// Runs a callback Rust makes into the shim (a completion); an exception fails the
// promise instead of unwinding into Rust. A promise already set stays set.
template <typename T, typename Body>
void guardedCallback(process::Promise<T>& promise, const char* call, Body&& body) noexcept {
  try {
    body();
  } catch (const std::exception& e) {
    failQuietly(promise, call, e.what());
  } catch (...) {
    failQuietly(promise, call, "unknown exception");
  }
}

// Logs why a module could not be created, e.g. "the net_cls isolator" (the agent
// then refuses to start and names the module); never throws.
inline void logCreateFailure(const char* kind, const char* type, const char* what) noexcept {
  try {
    LOG(ERROR) << "rein: cannot create the " << kind << " " << type << ": " << what;
  } catch (...) {
  }
}

}  // namespace rein_shim
