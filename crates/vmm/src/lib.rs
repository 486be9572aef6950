//! Ember's VMM: turns a [`VmConfig`] into a running microVM.
//!
//! [`builder::build`] validates the configuration, creates the KVM VM, guest
//! memory, devices and vCPUs, and loads the kernel. [`Vm::run`] starts one
//! thread per vCPU and a device thread for the devices' event loop, and waits
//! on the calling thread until the guest resets, powers off, fails, or a
//! termination signal arrives, then stops and joins those threads; [`Vm::start`] does the same on an event loop the caller
//! owns (for an API server) and returns a [`RunningVm`] to pause, resume and
//! inspect. [`RunningVm::snapshot`] saves a paused VM to a state file and a
//! memory file, and [`restore()`] rebuilds a VM from them.
//!
//! Errors are [`Error`]s whose messages do not repeat their causes: print
//! them with [`error_chain`] to show the whole chain on one line.
//!
//! # Example
//!
//! A configuration checked without KVM, as an API server checks it before
//! the start:
//!
//! ```
//! use ember_vmm::{check_cmdline, check_vcpu_count, memory_layout, VmConfig};
//!
//! let mut config = VmConfig::new("vmlinux", "console=ttyS0 reboot=k panic=1");
//! config.vcpu_count = 2;
//! config.mem_size_mib = 256;
//! check_vcpu_count(config.vcpu_count)?;
//! check_cmdline(&config.cmdline)?;
//! memory_layout(config.mem_size_mib)?;
//! assert!(check_vcpu_count(0).is_err());
//! assert!(memory_layout(u64::MAX).is_err(), "more bytes than 64 bits hold");
//! # Ok::<(), ember_vmm::Error>(())
//! ```
//!
//! Booting it needs `/dev/kvm` and a kernel (see `examples/boot.rs`):
//!
//! ```no_run
//! use ember_vmm::signals::TerminationSignals;
//! use ember_vmm::{build, error_chain, VmConfig};
//!
//! let config = VmConfig::new("vmlinux", "console=ttyS0 reboot=k panic=1");
//! let run = TerminationSignals::install()
//!     .and_then(|signals| build(config)?.run(Some(&signals)));
//! match run {
//!     Ok(reason) => println!("the VM ended: {reason:?}"),
//!     Err(e) => eprintln!("error: {}", error_chain(&e)),
//! }
//! ```

pub mod builder;
pub mod config;
mod device_thread;
mod error_chain;
mod exit;
mod io;
mod memory_fault;
pub mod metrics;
mod restore;
pub mod signals;
pub mod snapshot;
mod terminal;
mod vcpu_threads;
mod virtio_devices;
mod vm;

pub use builder::{build, check_cmdline, check_vcpu_count, memory_layout, MAX_VCPU_COUNT};
pub use config::{DriveConfig, MmdsNetConfig, OpenedInputs, SerialInput, SerialOutput, VmConfig};
pub use ember_snapshot::Section as SnapshotSection;
pub use error_chain::error_chain;
pub use exit::{ExitReason, StopHandle};
pub use memory_fault::MEMORY_FAULT_EXIT_CODE;
pub use metrics::MetricGroup;
pub use restore::{restore, RestoreConfig};
pub use snapshot::{MachineInfo, SnapshotFiles, SnapshotKind, SnapshotReport};
pub use vcpu_threads::vcpu_thread_name;
pub use virtio_devices::{SharedBalloon, SharedBlock, SharedNet, SharedRng};
pub use vm::{EventLoop, RunState, RunningVm, Subscriber, Vm};

pub use ember_cpu::cpuid::host_phys_addr_bits;
/// vCPU set-up and the vCPU kick signal ([`cpu::KickSignal`]).
pub use ember_cpu::vcpu as cpu;
pub use ember_devices::host_files;
pub use ember_devices::legacy::{BootTime, StartTime};
pub use ember_devices::virtio::balloon::{
    BalloonConfig, BalloonError, BalloonStats, HintingStatus,
};
pub use ember_devices::virtio::block::open_disk;
pub use ember_devices::virtio::block::{BlockConfig, CacheType};
pub use ember_devices::virtio::net::{
    DisplayMac, MacAddr, NetConfig, RateLimiterConfig, RateLimiterUpdate,
};
pub use ember_devices::virtio::rng::{RngConfig, RngCounters};
pub use ember_devices::virtio::vsock::VsockConfig;
pub use ember_jailer::seccomp;
pub use ember_ratelimit::{BucketConfig, BucketUpdate};

use std::path::PathBuf;

/// Errors from building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A kernel, initrd or other input file cannot be opened.
    #[error("cannot open {what} {path}")]
    Open {
        /// What the file is for.
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The KVM device cannot be opened.
    #[error("KVM must be available and accessible to this user: cannot open {path}")]
    OpenKvm {
        /// The KVM device path.
        path: PathBuf,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// A KVM ioctl on the VM failed.
    #[error("{what} failed")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// The kernel could not be loaded.
    #[error("kernel {path}")]
    Kernel {
        /// The kernel path.
        path: PathBuf,
        /// What went wrong.
        source: ember_boot::Error,
    },
    /// The initrd could not be loaded.
    #[error("initrd {path}")]
    Initrd {
        /// The initrd path.
        path: PathBuf,
        /// What went wrong.
        source: ember_boot::Error,
    },
    /// Boot structures could not be written.
    #[error(transparent)]
    Boot(#[from] ember_boot::Error),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] ember_memory::Error),
    /// vCPU setup failed, or a vCPU stopped with an error.
    #[error(transparent)]
    Cpu(#[from] ember_cpu::Error),
    /// A device could not be created or wired.
    #[error(transparent)]
    Devices(#[from] ember_devices::Error),
    /// The event loop failed.
    #[error("event loop: {0}")]
    EventLoop(event_manager::Error),
    /// A thread could not be started.
    #[error("cannot start thread {name}")]
    Thread {
        /// Thread name.
        name: String,
        /// The error.
        source: std::io::Error,
    },
    /// Signal handling could not be set up.
    #[error("cannot install the {what} signal handler")]
    Signal {
        /// Which handler.
        what: &'static str,
        /// The error.
        source: vmm_sys_util::errno::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    /// The vCPU threads did not do what was asked.
    #[error("vCPU control: {0}")]
    VcpuControl(&'static str),
    /// The operation does not fit the VM's state.
    #[error("{0}")]
    InvalidState(&'static str),
    /// A key sequence could not be injected.
    #[error(transparent)]
    Keyboard(#[from] ember_devices::legacy::i8042::BufferFull),
    /// The configuration is inconsistent.
    #[error("invalid VM configuration: {0}")]
    InvalidConfig(String),
    /// A drive could not be set up or changed.
    #[error("drive `{id}`")]
    Drive {
        /// The drive id.
        id: String,
        /// What went wrong.
        source: ember_devices::Error,
    },
    /// No drive has this id.
    #[error("no drive `{0}`")]
    UnknownDrive(String),
    /// A network interface could not be set up.
    #[error("network interface `{id}`")]
    NetworkInterface {
        /// The interface id.
        id: String,
        /// What went wrong.
        source: ember_devices::Error,
    },
    /// No network interface has this id.
    #[error("no network interface `{0}`")]
    UnknownNetworkInterface(String),
    /// The vsock device could not be set up.
    #[error("vsock: {0}")]
    Vsock(ember_devices::Error),
    /// The entropy device could not be set up.
    #[error("entropy device: {0}")]
    Entropy(ember_devices::Error),
    /// The balloon device could not be set up.
    #[error("balloon: {0}")]
    Balloon(ember_devices::virtio::balloon::BalloonError),
    /// The VM has no balloon device.
    #[error("no balloon device")]
    NoBalloon,
    /// A snapshot file could not be read, written or decoded.
    #[error(transparent)]
    Snapshot(#[from] ember_snapshot::Error),
    /// A state file is not one this Ember can restore.
    #[error("state file {path}")]
    SnapshotState {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        source: ember_snapshot::Error,
    },
    /// A state file lacks a section a restore needs.
    #[error("the state file has no `{0}` section")]
    SnapshotMissingSection(String),
    /// A snapshot's memory file could not be created or replaced.
    #[error("cannot {what} {path}")]
    SnapshotFile {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A snapshot's state file and memory file would be the same file.
    #[error("the snapshot's state file and memory file are the same file: {}", .0.display())]
    SnapshotPathsClash(PathBuf),
    /// A seccomp filter could not be installed.
    #[error("seccomp ({thread} thread)")]
    Seccomp {
        /// The thread kind.
        thread: &'static str,
        /// What failed.
        source: ember_jailer::Error,
    },
}

/// A bus range that cannot be claimed is a device-wiring error.
impl From<ember_devices::bus::Error> for Error {
    fn from(error: ember_devices::bus::Error) -> Error {
        Error::Devices(error.into())
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
