//! Helpers shared by the kernel-level tests.
