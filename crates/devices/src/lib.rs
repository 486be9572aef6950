//! Device models for KVM microVMs.
//!
//! - [`bus`]: address-range buses (port I/O and MMIO) that route vCPU exits to devices.
//! - [`legacy`]: the PC devices a microVM keeps: COM1 (8250 UART), the i8042 reset
//!   line, and the boot-timer device.
//! - [`trigger`]: interrupt and event lines backed by eventfds.
//!
//! Devices never see KVM: they raise interrupts through eventfds (which the VMM
//! registers as irqfds) and register their own fds with an `event-manager` loop.

pub mod bus;
pub mod legacy;
pub mod trigger;

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
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
