//! The contract between a virtio transport and a device back-end.

use std::sync::Arc;

use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::EventFd;

use super::interrupt::VirtioInterrupt;
use crate::Result;

/// Why a virtio device refused to start (see [`VirtioDevice::activate`]).
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// A virtio queue the device needs was not enabled by the driver.
    #[error("virtio queue {0} is not ready")]
    QueueNotReady(usize),
    /// The driver activated a virtio device that is already active.
    #[error("virtio device is already active")]
    AlreadyActive,
}

/// A virtio device back-end (block, net, ...), driven by a transport.
///
/// Life cycle: the transport negotiates features and sets up queues with the
/// driver, then calls [`VirtioDevice::activate`] when the driver sets DRIVER_OK,
/// and [`VirtioDevice::reset`] when the driver writes 0 to Status. A device may
/// be activated again after a reset. A device restored from a snapshot is
/// built inactive by its own `restore` and activated by the transport's
/// restore with the saved queues, then told with
/// [`VirtioDevice::after_restore`].
///
/// The device owns one eventfd per queue for its whole life and watches them on
/// its event loop; the transport signals them when the driver notifies a queue
/// (or the VMM registers them as KVM ioeventfds so the kernel does). While the
/// device is not active it must drain and ignore them.
pub trait VirtioDevice<M>: Send {
    /// The virtio device ID (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;

    /// The largest size of each queue (powers of two); one entry per queue.
    fn queue_max_sizes(&self) -> &[u16];

    /// The feature bits offered to the driver; always includes `VIRTIO_F_VERSION_1`.
    fn avail_features(&self) -> u64;

    /// The queue-notification eventfds, one per queue, in queue order.
    fn queue_events(&self) -> &[EventFd];

    /// Reads `data.len()` bytes of configuration space at `offset`. Bytes past
    /// the end of the configuration space read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes configuration space at `offset`; writes to read-only or missing
    /// fields are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Counter that changes whenever the configuration space changes, so the
    /// driver can tell a torn multi-word read (the ConfigGeneration register).
    fn config_generation(&self) -> u32;

    /// Starts the device with the negotiated `acked_features`, the queues the
    /// driver set up (one per entry of [`VirtioDevice::queue_max_sizes`]; a queue
    /// the driver did not enable is not ready), a handle on guest memory and an
    /// interrupt. Fails, changing nothing, if the device is already active or a
    /// queue it needs is not ready.
    fn activate(
        &mut self,
        mem: M,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
        acked_features: u64,
    ) -> Result<()>;

    /// Whether the device is active.
    fn is_activated(&self) -> bool;

    /// The queues the device works on while active, with their live ring
    /// positions, one per queue in queue order; empty while inactive.
    /// [`crate::virtio::MmioTransport::state`] saves these.
    fn queue_states(&self) -> Vec<QueueState>;

    /// Called once after [`crate::virtio::MmioTransport::restore`] activated
    /// the device again from a snapshot (and never after a driver's
    /// activation), for what a device owes the driver on restore. Nothing by
    /// default.
    fn after_restore(&mut self) {}

    /// Returns the device to its state before activation: queues, the memory
    /// handle and the interrupt are dropped, and pending notifications are
    /// ignored until the next activation. The device's own configuration (disk,
    /// rate limiter, counters) is kept.
    fn reset(&mut self);
}
