//! What egress shaping reports when the kernel (or the operator's setup) says no:
//! each error names the object (device, class, pid, map) and the reason.

use std::io;

use super::netlink::NlError;

/// A tc class id as `tc` writes it (`1:10`).
pub fn class_name(classid: u32) -> String {
    format!("{:x}:{:x}", classid >> 16, classid & 0xffff)
}

/// An egress shaping failure.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// A tc or link request over rtnetlink failed (the error names the request).
    #[error(transparent)]
    Netlink(#[from] NlError),
    /// The same, on one of several devices.
    #[error("on device {device}: {source}")]
    OnDevice {
        /// The device.
        device: String,
        /// What failed there.
        source: NlError,
    },
    /// A system call outside rtnetlink failed (opening a socket, an eventfd, a thread).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer.
        source: io::Error,
    },
    /// A container's network namespace could not be reached through its pid.
    #[error("{what} of pid {pid}: {source}")]
    Netns {
        /// The container's init pid.
        pid: i32,
        /// What was being done.
        what: &'static str,
        /// The kernel's answer (ENOENT: the process, and so the namespace, is gone).
        source: io::Error,
    },
    /// A bpf(2) call failed.
    #[error("{what}: {source}")]
    Bpf {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        source: io::Error,
    },
    /// A device already carries a root qdisc that is not rein's tree.
    #[error(
        "device {device} already has a root qdisc {} ({kind}) that is not rein's \
         HTB {major:x}:; remove it or choose another net_cls_primary_handle",
        class_name(*handle)
    )]
    ForeignRoot {
        /// The device.
        device: String,
        /// The handle of the qdisc found.
        handle: u32,
        /// Its kind.
        kind: String,
        /// rein's major (net_cls_primary_handle).
        major: u16,
    },
    /// `egress_devices` is unset and no default route names a device.
    #[error(
        "module parameter 'egress_devices' is not set and there is no default \
         route to find the device from"
    )]
    NoDefaultRoute,
    /// A device named in `egress_devices` does not exist.
    #[error("module parameter 'egress_devices' = '{0}': no such network device")]
    NoSuchDevice(String),
    /// The containers' cgroup depth does not fit the BPF program.
    #[error("cgroup level {0} of the containers is out of range for the classifier")]
    CgroupLevel(u32),
}

impl EgressError {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io { what, source }
    }

    pub(crate) fn netns(pid: i32, what: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Netns { pid, what, source }
    }

    pub(crate) fn bpf(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Bpf { what, source }
    }
}
