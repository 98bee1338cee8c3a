//! The rein isolators. Each module holds the policy of one isolator; kernel access
//! goes through `rein_core::cgroupfs` and the seams each module declares.

pub mod blkio;
pub mod disk;
pub mod egress;
mod known;
pub mod net_cls;
pub mod registry;
#[cfg(test)]
mod test_support;

pub use registry::create;
