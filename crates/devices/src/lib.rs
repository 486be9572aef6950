//! Device models for KVM microVMs.
//!
//! - [`bus`]: address-range buses (port I/O and MMIO) that route vCPU exits to devices.
//! - [`host_files`]: opening the host files a VM is given (kernel, initrd, disks,
//!   config files) without ever blocking, and binding Unix sockets over stale ones.
//! - [`legacy`]: the PC devices a microVM keeps: COM1 (8250 UART), the i8042 reset
//!   line, and the boot-timer device.
//! - [`trigger`]: interrupt and event lines backed by eventfds.
//! - [`virtio`]: the virtio-mmio transport and the virtio devices.
//!
//! Devices never see KVM: they raise interrupts through eventfds (which the VMM
//! registers as irqfds) and register their own fds with an `event-manager` loop.
//!
//! Snapshots: every device gives its state as plain data apart from host
//! resources (with the `serde` feature, every state type derives `Serialize`
//! and `Deserialize`), and is rebuilt from that state and the host resources
//! it needs (see [`virtio`] and [`legacy`]). Devices only touch guest memory
//! on the event loop's thread (and on the thread restoring them), so a VMM
//! that stops running the event loop has quiesced them.

pub mod bus;
pub mod host_files;
pub mod legacy;
pub mod trigger;
pub mod virtio;

pub use bus::{Bus, BusDevice, ByteRegisters};

/// Errors from building or wiring devices.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device range is empty or wraps around the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start address.
        base: u64,
        /// Length.
        len: u64,
    },
    /// A device range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps a device already at {existing:#x}")]
    Overlap {
        /// Start address.
        base: u64,
        /// Length.
        len: u64,
        /// Start of the device in the way.
        existing: u64,
    },
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    /// A virtio queue could not be created or rebuilt.
    #[error("virtio queue: {0}")]
    VirtioQueue(virtio_queue::Error),
    /// A virtio device has a different number of queue eventfds than queues.
    #[error("virtio device has {queues} queues but {events} queue eventfds")]
    QueueEventCount {
        /// Number of queues.
        queues: usize,
        /// Number of eventfds.
        events: usize,
    },
    /// A virtio queue the driver enabled does not fit in guest memory.
    #[error("virtio queue {0} does not fit in guest memory")]
    InvalidQueue(usize),
    /// A virtio queue the device needs was not enabled by the driver.
    #[error("virtio queue {0} is not ready")]
    QueueNotReady(usize),
    /// The driver activated a virtio device that is already active.
    #[error("virtio device is already active")]
    AlreadyActive,
    /// A block device's backing file cannot be opened or sized.
    #[error("block backing file {}: {error}", path.display())]
    BackingFile {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// A rate limiter could not be created.
    #[error("rate limiter: {0}")]
    RateLimiter(ember_ratelimit::Error),
    /// A vsock guest CID is reserved (below 3) or too large for a guest.
    #[error("invalid vsock guest CID {0}: it must be at least 3 and below 0xffffffff")]
    InvalidVsockCid(u64),
    /// A vsock device's Unix socket cannot be created.
    #[error("vsock socket {}: {error}", path.display())]
    VsockSocket {
        /// The socket's path.
        path: std::path::PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// A vsock device's timer cannot be created.
    #[error("vsock timer: {0}")]
    VsockTimer(std::io::Error),
    /// A TAP interface cannot be opened or configured.
    #[error("TAP interface {name}: {error}")]
    Tap {
        /// The interface's name.
        name: String,
        /// What failed.
        error: std::io::Error,
    },
    /// A saved state does not fit the device it is restored into, or the
    /// host resources given with it.
    #[error("cannot restore the {device} state: {reason}")]
    RestoreMismatch {
        /// The device (or transport).
        device: &'static str,
        /// What does not fit.
        reason: String,
    },
    /// A block device's backing file changed size since the snapshot.
    #[error("block backing file {}: {found} sectors, the snapshot has {saved}", path.display())]
    DiskSizeChanged {
        /// The file.
        path: std::path::PathBuf,
        /// The capacity in the snapshot, in sectors.
        saved: u64,
        /// The capacity now, in sectors.
        found: u64,
    },
    /// A guest MAC address is multicast or all zeroes.
    #[error("invalid guest MAC address {0}: it must be a unicast address")]
    InvalidMac(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
