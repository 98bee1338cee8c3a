// Stub for the shim's syntax check; see stubs.hpp.
#pragma once
#include "../stubs.hpp"
