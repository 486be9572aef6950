//! What a VM is made of, in plain Rust types. Front ends (the config file, the
//! REST API, the command line) translate their input into a [`VmConfig`].

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ember_devices::legacy::StartTime;
use ember_devices::virtio::balloon::BalloonConfig;
use ember_devices::virtio::block::BlockConfig;
use ember_devices::virtio::net::NetConfig;
use ember_devices::virtio::rng::RngConfig;
use ember_devices::virtio::vsock::VsockConfig;

/// Default KVM device.
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";

/// Where the guest's serial output goes.
pub enum SerialOutput {
    /// This process's standard output.
    Stdout,
    /// Any writer (a file, a pipe, a test buffer).
    Writer(Box<dyn Write + Send>),
    /// Discarded.
    Sink,
}

/// A host file descriptor the guest's serial input is read from.
pub trait InputSource: Read + AsRawFd + Send {}
impl<T: Read + AsRawFd + Send> InputSource for T {}

/// A boxed [`InputSource`], itself readable and pollable.
pub(crate) struct BoxedInput(pub(crate) Box<dyn InputSource>);

impl Read for BoxedInput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl AsRawFd for BoxedInput {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// Where the guest's serial input comes from.
pub enum SerialInput {
    /// This process's standard input (switched to raw mode if it is a terminal).
    Stdin,
    /// Any pollable reader, such as one end of a socket pair.
    Reader(Box<dyn InputSource>),
    /// No input.
    None,
}

impl fmt::Debug for SerialOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SerialOutput::Stdout => "Stdout",
            SerialOutput::Writer(_) => "Writer",
            SerialOutput::Sink => "Sink",
        })
    }
}

impl fmt::Debug for SerialInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SerialInput::Stdin => "Stdin",
            SerialInput::Reader(_) => "Reader",
            SerialInput::None => "None",
        })
    }
}

/// A block device and how the guest should treat it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriveConfig {
    /// The device itself: id, backing file, read-only, cache type, rate limits.
    pub block: BlockConfig,
    /// Whether the guest's root file system is on this drive (`root=` is added to
    /// the command line and the drive becomes `/dev/vda`).
    pub is_root_device: bool,
    /// The root partition's UUID, when the root is a partition of this drive.
    pub partuuid: Option<String>,
}

/// Everything needed to build a VM.
///
/// # Example
///
/// ```
/// use ember_vmm::VmConfig;
///
/// let mut config = VmConfig::new("/vm/vmlinux", "console=ttyS0 root=/dev/vda");
/// config.vcpu_count = 2;
/// config.initrd = Some("/vm/initrd.cpio".into());
/// assert_eq!(config.mem_size_mib, 128);
/// assert!(config.drives.is_empty() && config.seccomp.is_none());
/// ```
#[derive(Debug)]
pub struct VmConfig {
    /// Number of vCPUs (1 to the host's limit).
    pub vcpu_count: u8,
    /// Two threads per core (the guest sees pairs of vCPUs as siblings).
    pub smt: bool,
    /// Guest RAM in MiB.
    pub mem_size_mib: u64,
    /// Kernel image: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// The complete kernel command line.
    pub cmdline: String,
    /// The KVM device to open.
    pub kvm_device: PathBuf,
    /// Block devices, in the order the guest sees them (the root drive first).
    pub drives: Vec<DriveConfig>,
    /// Network interfaces backed by TAP devices.
    pub net_interfaces: Vec<NetConfig>,
    /// The vsock device (Firecracker's hybrid vsock over a Unix socket).
    pub vsock: Option<VsockConfig>,
    /// The entropy (virtio-rng) device.
    pub entropy: Option<RngConfig>,
    /// The MMDS, answered on the interfaces `mmds-config` names.
    pub mmds: Option<MmdsNetConfig>,
    /// The memory balloon.
    pub balloon: Option<BalloonConfig>,
    /// Serial output.
    pub serial_output: SerialOutput,
    /// A bandwidth limit (bytes) on the serial output: bytes beyond it are
    /// dropped and counted (`uart.rate_limiter_dropped_bytes`).
    pub serial_output_limit: Option<ember_ratelimit::BucketConfig>,
    /// Serial input.
    pub serial_input: SerialInput,
    /// When the start request arrived, for the boot timer.
    pub start_time: StartTime,
    /// Seccomp filters for the VMM and vCPU threads; `None` runs unfiltered.
    pub seccomp: Option<ember_jailer::seccomp::Filters>,
    /// Track the pages the guest and the devices write, for diff snapshots.
    pub track_dirty_pages: bool,
    /// Inputs opened before the build (as Firecracker opens them when they
    /// are configured); the rest are opened by the build.
    pub opened: OpenedInputs,
}

/// The MMDS as the guest reaches it: the store the API fills, its address,
/// and the interfaces (by `iface_id`) whose frames to it are answered.
#[derive(Clone, Debug)]
pub struct MmdsNetConfig {
    /// The data store, shared with the API.
    pub store: Arc<Mutex<ember_mmds::Mmds>>,
    /// The MMDS IPv4 address (169.254.169.254 by default).
    pub address: Ipv4Addr,
    /// The interfaces that answer for the MMDS.
    pub network_interfaces: Vec<String>,
}

/// Files and sockets of a [`VmConfig`] opened ahead of the build: a file
/// deleted or replaced after it was opened still serves the VM.
#[derive(Debug, Default)]
pub struct OpenedInputs {
    /// The kernel image, opened from [`VmConfig::kernel`].
    pub kernel: Option<File>,
    /// The initrd, opened from [`VmConfig::initrd`].
    pub initrd: Option<File>,
    /// Backing files by drive id, opened with
    /// [`open_disk`](ember_devices::virtio::block::open_disk).
    pub drives: Vec<(String, File)>,
    /// The vsock device's socket, bound at its `uds_path`.
    pub vsock: Option<ember_devices::host_files::BoundListener>,
}

impl VmConfig {
    /// A configuration with one vCPU, 128 MiB, serial on stdio and `/dev/kvm`.
    pub fn new(kernel: impl Into<PathBuf>, cmdline: impl Into<String>) -> VmConfig {
        VmConfig {
            vcpu_count: 1,
            smt: false,
            mem_size_mib: 128,
            kernel: kernel.into(),
            initrd: None,
            cmdline: cmdline.into(),
            kvm_device: PathBuf::from(DEFAULT_KVM_DEVICE),
            drives: Vec::new(),
            net_interfaces: Vec::new(),
            vsock: None,
            entropy: None,
            mmds: None,
            balloon: None,
            serial_output: SerialOutput::Stdout,
            serial_output_limit: None,
            serial_input: SerialInput::Stdin,
            start_time: StartTime::now(),
            seccomp: None,
            track_dirty_pages: false,
            opened: OpenedInputs::default(),
        }
    }
}
