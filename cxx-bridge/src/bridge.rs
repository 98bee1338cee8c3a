//! The `#[cxx::bridge]` surface: shared structs that cross between the Mesos C++
//! shim and Rust, the C++ callbacks Rust may call, and the Rust entry points.
//! Protobufs never cross: the shim copies the fields below out of them.

use crate::agent::install_mesos_enums;
use crate::convert::is_module_variable;
use crate::isolator::{create_isolator, IsolatorHandle};
use crate::log::install_log_sink;
use crate::logger::{create_logger, LoggerHandle};

fn copy_bytes(data: &[u8]) -> Vec<u8> {
    data.to_vec()
}

#[cxx::bridge(namespace = "rein")]
pub mod ffi {
    // Everything the shim copies out of a protobuf crosses as bytes: Mesos does not
    // check that protobuf strings are UTF-8, and a `rust::String` built from other
    // bytes throws on the agent's thread. Rust decides what each field may carry
    // (rein_core::container::RawContainerConfig::decode).

    /// A key/value pair as bytes: a label, an environment variable or a module
    /// parameter.
    #[derive(Debug, Clone)]
    struct KeyValue {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    }

    /// One `ContainerID.value`, as bytes.
    #[derive(Debug, Clone)]
    struct IdSegment {
        /// The bytes of the id.
        value: Vec<u8>,
    }

    /// A container id with its parent chain, root first.
    #[derive(Debug, Clone)]
    struct ContainerChain {
        /// `[root, child, ...]`; a top-level container has one element.
        ids: Vec<IdSegment>,
    }

    /// One `Resource` of the container.
    #[derive(Debug, Clone)]
    struct ResourceEntry {
        /// `cpus`, `mem`, `disk`, ...
        name: Vec<u8>,
        /// The scalar value (0 for ranges and sets).
        scalar: f64,
        /// Whether it carries a `DiskInfo` (a volume, not the sandbox's disk).
        has_disk_info: bool,
    }

    /// The fields of `ContainerConfig` the modules read.
    #[derive(Debug, Clone)]
    struct ContainerConfigView {
        /// The container id with its parents.
        container: ContainerChain,
        /// `directory`: host path of the sandbox.
        directory: Vec<u8>,
        /// `user`, empty when unset.
        user: Vec<u8>,
        /// `task_info.task_id`, empty when there is no task_info.
        task_id: Vec<u8>,
        /// `task_info.name`.
        task_name: Vec<u8>,
        /// `executor_info.executor_id`.
        executor_id: Vec<u8>,
        /// `executor_info.framework_id`.
        framework_id: Vec<u8>,
        /// `task_info.labels`.
        task_labels: Vec<KeyValue>,
        /// `executor_info.labels`.
        executor_labels: Vec<KeyValue>,
        /// `command_info.environment` variables of type VALUE whose name starts with
        /// `REIN_` (the shim copies no others, so secrets never cross).
        environment: Vec<KeyValue>,
        /// `resources`.
        resources: Vec<ResourceEntry>,
        /// `container_class == DEBUG`.
        debug: bool,
    }

    /// One `ContainerState` given to `recover()`.
    #[derive(Debug, Clone)]
    struct RecoveredView {
        /// The container id with its parents.
        container: ContainerChain,
        /// `pid`, 0 when unknown.
        pid: i32,
        /// `directory`, empty when unknown.
        directory: Vec<u8>,
    }

    /// An environment variable the modules set (always UTF-8: Rust made it).
    #[derive(Debug, Clone)]
    struct LaunchVariable {
        /// Name.
        key: String,
        /// Value.
        value: String,
    }

    /// A whole capability bounding set, as `CapabilityInfo::Capability` numbers.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    struct BoundingSet {
        /// The capabilities the container keeps (numbers this Mesos named).
        capabilities: Vec<i32>,
    }

    /// What `prepare()` asks of the launch (`ContainerLaunchInfo`), fully decided:
    /// the shim copies it. An empty one is answered as `None`.
    #[derive(Debug, Clone, Default)]
    struct LaunchInfoView {
        /// Variables to add to `environment`.
        environment: Vec<LaunchVariable>,
        /// `bounding_capabilities`: empty to leave it unset, else exactly one set
        /// (which may itself be empty: the container keeps no capability).
        bounding_capabilities: Vec<BoundingSet>,
    }

    /// One value of a Mesos protobuf enum, as this Mesos defines it.
    #[derive(Debug, Clone)]
    struct MesosEnumValue {
        /// Its name, e.g. `SYS_RESOURCE` (ASCII in every Mesos; crosses as bytes
        /// like every other protobuf string).
        name: Vec<u8>,
        /// Its number, e.g. 1024.
        number: i32,
    }

    /// Block I/O counters of one device (`blkio_statistics.throttling`).
    #[derive(Debug, Clone, Default)]
    struct BlkioDeviceView {
        /// Device major number.
        major: u64,
        /// Device minor number.
        minor: u64,
        /// Bytes read.
        read_bytes: u64,
        /// Bytes written.
        write_bytes: u64,
        /// Read operations.
        read_ops: u64,
        /// Write operations.
        write_ops: u64,
    }

    /// `ResourceStatistics` fields; `has_*` says whether a group is set.
    #[derive(Debug, Clone, Default)]
    struct StatisticsView {
        /// Whether the `net_tx_*` fields are set.
        has_net_tx: bool,
        /// `net_tx_bytes`.
        net_tx_bytes: u64,
        /// `net_tx_packets`.
        net_tx_packets: u64,
        /// `net_tx_dropped`.
        net_tx_dropped: u64,
        /// `net_tx_rate_limit` (bytes/s).
        net_tx_rate_limit: u64,
        /// `net_tx_burst_rate_limit` (bytes/s).
        net_tx_burst_rate_limit: u64,
        /// `net_tx_burst_size` (bytes).
        net_tx_burst_size: u64,
        /// Whether `disk_used_bytes` is set.
        has_disk_used: bool,
        /// `disk_used_bytes`.
        disk_used_bytes: u64,
        /// Whether `disk_limit_bytes` is set.
        has_disk_limit: bool,
        /// `disk_limit_bytes`.
        disk_limit_bytes: u64,
        /// `blkio_statistics.throttling`, one entry per device.
        blkio: Vec<BlkioDeviceView>,
    }

    /// `ContainerStatus` fields.
    #[derive(Debug, Clone, Default)]
    struct StatusView {
        /// Whether `cgroup_info.net_cls.classid` is set.
        has_net_cls_classid: bool,
        /// `cgroup_info.net_cls.classid`.
        net_cls_classid: u32,
    }

    /// A `ContainerLimitation`.
    #[derive(Debug, Clone, Default)]
    struct LimitationView {
        /// `TaskStatus::Reason` name, e.g. `REASON_CONTAINER_LIMITATION_DISK`.
        reason: String,
        /// Whether `reason_number` is set: this Mesos knows the reason.
        has_reason: bool,
        /// The reason's number in this Mesos (`reason`).
        reason_number: i32,
        /// `message`.
        message: String,
        /// Whether a resource was exceeded (`resources[0]`).
        has_resource: bool,
        /// Name of the exceeded resource (`disk`).
        resource_name: String,
        /// Its amount, in the resource's Mesos unit.
        resource_value: f64,
    }

    /// The container's stdout and stderr for the `ContainerLogger`.
    #[derive(Debug, Clone, Default)]
    struct ContainerIoView {
        /// Write end for stdout; ownership passes to C++ (close on destruction).
        stdout_fd: i32,
        /// Write end for stderr; ownership passes to C++.
        stderr_fd: i32,
    }

    unsafe extern "C++" {
        include!("rein-bridge/include/completion.h");

        /// Completes one asynchronous call (a `process::Promise` in the shim).
        type Completion;
        fn fail(self: Pin<&mut Completion>, message: &str);
        fn nothing(self: Pin<&mut Completion>);
        fn launch_info(self: Pin<&mut Completion>, info: &LaunchInfoView);
        fn statistics(self: Pin<&mut Completion>, stats: &StatisticsView);
        fn status(self: Pin<&mut Completion>, status: &StatusView);
        fn limitation(self: Pin<&mut Completion>, limitation: &LimitationView);
        fn container_io(self: Pin<&mut Completion>, io: &ContainerIoView);

        /// Where module log lines go (the agent's glog in the shim).
        type LogSink;
        /// A line at glog severity `severity` (0 info, 1 warning, 2 error).
        fn write(self: &LogSink, severity: i32, message: &str);
        /// A debug line (`VLOG(1)`).
        fn debug(self: &LogSink, message: &str);
    }

    extern "Rust" {
        /// One isolator instance and the Rust thread that runs its calls.
        type IsolatorHandle;

        /// Creates an isolator of `kind` (`net_cls`, ...) from its module parameters.
        fn create_isolator(kind: &str, parameters: &[KeyValue]) -> Result<Box<IsolatorHandle>>;
        fn supports_nesting(self: &IsolatorHandle) -> bool;
        fn recover(
            self: &IsolatorHandle,
            containers: Vec<RecoveredView>,
            orphans: Vec<ContainerChain>,
            done: UniquePtr<Completion>,
        );
        fn prepare(self: &IsolatorHandle, config: ContainerConfigView, done: UniquePtr<Completion>);
        fn isolate(
            self: &IsolatorHandle,
            container: ContainerChain,
            pid: i32,
            done: UniquePtr<Completion>,
        );
        fn watch(self: &IsolatorHandle, container: ContainerChain, done: UniquePtr<Completion>);
        fn update(
            self: &IsolatorHandle,
            container: ContainerChain,
            resources: Vec<ResourceEntry>,
            done: UniquePtr<Completion>,
        );
        fn usage(self: &IsolatorHandle, container: ContainerChain, done: UniquePtr<Completion>);
        fn status(self: &IsolatorHandle, container: ContainerChain, done: UniquePtr<Completion>);
        fn cleanup(self: &IsolatorHandle, container: ContainerChain, done: UniquePtr<Completion>);

        /// One container logger instance and the Rust thread that runs its calls.
        type LoggerHandle;

        /// Creates the container logger from its module parameters.
        fn create_logger(parameters: &[KeyValue]) -> Result<Box<LoggerHandle>>;
        /// `ContainerLogger::prepare()`: completes with `container_io`.
        fn prepare(self: &LoggerHandle, config: ContainerConfigView, done: UniquePtr<Completion>);

        /// Sends the modules' `tracing` output to `sink` (once per loaded library).
        fn install_log_sink(sink: UniquePtr<LogSink>);

        /// Hands over this Mesos's capability and task status reason tables (once
        /// per loaded library): with them and the agent's own flags and bounding
        /// set, Rust decides every capability drop (rein_core::launch_policy) and
        /// every limitation's reason.
        fn install_mesos_enums(capabilities: Vec<MesosEnumValue>, reasons: Vec<MesosEnumValue>);

        /// Whether a `command_info.environment` variable crosses into Rust: a plain
        /// value (`plain`: type VALUE) of one of the modules' variables. Secrets
        /// and every other variable stay in the shim.
        fn is_module_variable(plain: bool, name: &[u8]) -> bool;

        /// A copy of `data` as a Rust `Vec`, in one call: how the shim copies each
        /// protobuf string (pushing byte by byte costs two calls per byte).
        fn copy_bytes(data: &[u8]) -> Vec<u8>;
    }
}

impl ffi::KeyValue {
    /// A pair from anything that is bytes (`&str`, `String`, `Vec<u8>`).
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

impl ffi::ContainerConfigView {
    /// A config with only its container and sandbox set (tests and `rein-run`
    /// fill in the rest).
    pub fn new(container: ffi::ContainerChain, directory: impl Into<Vec<u8>>) -> Self {
        Self {
            container,
            directory: directory.into(),
            user: Vec::new(),
            task_id: Vec::new(),
            task_name: Vec::new(),
            executor_id: Vec::new(),
            framework_id: Vec::new(),
            task_labels: Vec::new(),
            executor_labels: Vec::new(),
            environment: Vec::new(),
            resources: Vec::new(),
            debug: false,
        }
    }
}

impl ffi::ContainerChain {
    /// A chain from its ids, root first.
    pub fn new<I, S>(ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Vec<u8>>,
    {
        Self {
            ids: ids
                .into_iter()
                .map(|id| ffi::IdSegment { value: id.into() })
                .collect(),
        }
    }

    /// `root.child` for log lines; bytes that are not UTF-8 are shown escaped.
    pub fn text(&self) -> String {
        let segments: Vec<String> = self
            .ids
            .iter()
            .map(|id| rein_core::container::escaped(&id.value))
            .collect();
        segments.join(".")
    }
}
