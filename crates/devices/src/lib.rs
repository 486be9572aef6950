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

/// Errors from building or wiring devices: each device's or part's own
/// error ([`bus::Error`], [`virtio::mmio::Error`], [`virtio::ActivationError`],
/// [`virtio::block::Error`], [`virtio::net::Error`], [`virtio::vsock::Error`]),
/// and what every device can run into.
///
/// The wrapped errors keep their own messages, so this error displays
/// exactly as the one it wraps.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bus range cannot be claimed.
    #[error(transparent)]
    Bus(#[from] bus::Error),
    /// The virtio-mmio transport cannot set up or restore its queues.
    #[error(transparent)]
    Transport(#[from] virtio::mmio::Error),
    /// A virtio device refused to start.
    #[error(transparent)]
    Activation(#[from] virtio::ActivationError),
    /// A block device's backing file is unusable.
    #[error(transparent)]
    Block(#[from] virtio::block::Error),
    /// A net device's host side or MAC address is unusable.
    #[error(transparent)]
    Net(#[from] virtio::net::Error),
    /// A vsock device's CID or host resources are unusable.
    #[error(transparent)]
    Vsock(#[from] virtio::vsock::Error),
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    /// A rate limiter could not be created.
    #[error("rate limiter: {0}")]
    RateLimiter(ember_ratelimit::Error),
    /// A saved state does not fit the device it is restored into, or the
    /// host resources given with it.
    #[error("cannot restore the {device} state: {reason}")]
    RestoreMismatch {
        /// The device (or transport).
        device: &'static str,
        /// What does not fit.
        reason: String,
    },
}

/// Result alias for this crate (its [`Error`] unless told otherwise).
pub type Result<T, E = Error> = std::result::Result<T, E>;
