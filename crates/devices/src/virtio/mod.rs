//! Virtio 1.x (modern) devices on the virtio-mmio transport.
//!
//! - [`mmio`]: the MMIO register interface a guest driver sees ([`MmioTransport`]).
//! - [`balloon`], [`block`], [`net`], [`rng`], [`vsock`]: the devices; `common` holds what they
//!   share (configuration reads, activation, queue events, interrupts),
//!   `ring` their fast access to the virtqueues, `iov` vectored I/O
//!   between guest memory and host descriptors, `timer` their timerfds.
//! - [`VirtioDevice`] is the contract between the transport and a device;
//!   [`VirtioInterrupt`] is how a device interrupts the driver.
//! - Snapshots: the transport and every device give their state as plain
//!   data (serializable with the `serde` feature; queues as
//!   [`VirtqueueState`]) and are rebuilt from it: each device's `restore`
//!   makes an inactive device from its state and host resources, then
//!   [`MmioTransport::restore`] restores the registers and, if the driver
//!   had started the device, activates it with the saved queues.
//!
//! Devices are generic over the guest memory handle (any [`GuestMemoryHandle`],
//! such as `vm_memory::GuestMemoryMmap`), never a KVM VM, so tests and fuzzers
//! drive them on plain memory.

pub mod balloon;
pub mod block;
mod common;
mod device;
mod interrupt;
mod iov;
pub mod mmio;
pub mod net;
mod queue_state;
mod ring;
pub mod rng;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
mod timer;
pub mod vsock;

pub use device::{ActivationError, VirtioDevice};
pub use interrupt::{InterruptKind, IrqTrigger, VirtioInterrupt};
pub use mmio::{cmdline_entry, MmioTransport, MmioTransportState};
pub use queue_state::VirtqueueState;

use vm_memory::GuestMemory;

/// Guest memory as a virtio device holds it: a cheap-to-clone handle that can
/// move to the event-loop thread. Implemented for every such type.
pub trait GuestMemoryHandle: GuestMemory + Clone + Send + 'static {}

impl<T: GuestMemory + Clone + Send + 'static> GuestMemoryHandle for T {}

/// The feature mask for feature bit number `bit` (as `virtio_bindings` defines them).
pub const fn feature_bit(bit: u32) -> u64 {
    1 << bit
}
