//! Device models for KVM microVMs, usable without the rest of Ember: they
//! never see KVM, so they run on plain memory in tests, fuzzers and other
//! VMMs.
//!
//! - [`bus`]: address-range buses (port I/O and MMIO) that route vCPU exits to devices.
//! - [`host_files`]: opening the host files a VM is given (kernel, initrd, disks,
//!   config files) without ever blocking, and binding Unix sockets over stale ones.
//! - [`legacy`]: the PC devices a microVM keeps: COM1 (8250 UART), the i8042 reset
//!   line, and the boot-timer device.
//! - [`trigger`]: interrupt and event lines backed by eventfds.
//! - [`virtio`]: the virtio-mmio transport and the virtio devices: block,
//!   net, vsock, rng (entropy) and balloon; block, net and rng take rate
//!   limits (`ember-ratelimit`).
//!
//! Devices raise interrupts through eventfds (which the VMM registers as
//! irqfds) and register their own fds with an `event-manager` loop.
//!
//! Errors: each part has its own error type ([`bus::Error`],
//! [`virtio::mmio::Error`], [`virtio::ActivationError`],
//! [`virtio::block::Error`], [`virtio::net::Error`], [`virtio::vsock::Error`]);
//! [`Error`] wraps them with what every device can run into.
//!
//! Snapshots: every device gives its state as plain data apart from host
//! resources (with the `serde` feature, every state type derives `Serialize`
//! and `Deserialize`), and is rebuilt from that state and the host resources
//! it needs (see [`virtio`] and [`legacy`]). Devices only touch guest memory
//! on the event loop's thread (and on the thread restoring them), so a VMM
//! that stops running the event loop has quiesced them.
//!
//! Features: `serde` (state types), `test-utils` (`virtio::test_utils`: a
//! guest driver's side of virtqueues and virtio-mmio registers, for tests
//! and benchmarks).
//!
//! # Example
//!
//! COM1 on a port-I/O bus, as a vCPU's `out` instructions reach it:
//!
//! ```
//! use std::io::Write;
//! use std::sync::{Arc, Mutex};
//!
//! use ember_devices::legacy::{Serial, COM1_PORT, COM1_PORT_COUNT};
//! use ember_devices::trigger::EventTrigger;
//! use ember_devices::Bus;
//!
//! /// Guest output, kept for the example to look at.
//! #[derive(Clone, Default)]
//! struct Console(Arc<Mutex<Vec<u8>>>);
//!
//! impl Write for Console {
//!     fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
//!         self.0.lock().unwrap().extend_from_slice(buf);
//!         Ok(buf.len())
//!     }
//!     fn flush(&mut self) -> std::io::Result<()> {
//!         Ok(())
//!     }
//! }
//!
//! let console = Console::default();
//! let serial = Serial::new(
//!     EventTrigger::new()?,
//!     EventTrigger::new()?,
//!     Box::new(console.clone()),
//! );
//! let mut pio = Bus::new();
//! pio.insert(Arc::new(Mutex::new(serial)), COM1_PORT, COM1_PORT_COUNT)?;
//! for byte in b"hi\n" {
//!     assert!(pio.write(COM1_PORT, &[*byte]), "COM1 claims its data port");
//! }
//! assert_eq!(console.0.lock().unwrap().as_slice(), b"hi\n");
//! // Nobody claims port 0x2f8 (COM2): reads see all ones.
//! let mut data = [0];
//! assert!(!pio.read(0x2f8, &mut data));
//! assert_eq!(data, [0xff]);
//! # Ok::<(), ember_devices::Error>(())
//! ```

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
