//! How virtio devices interrupt the driver: a trait for devices, and the
//! MMIO transport's implementation, which sets a bit in the InterruptStatus
//! register and fires an eventfd the VMM registers as a KVM irqfd.

use std::fmt::Debug;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

use crate::trigger::EventTrigger;
use crate::Result;

/// Why a device interrupts the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// Buffers were added to a used ring.
    Used,
    /// The device's configuration space changed.
    Config,
}

impl InterruptKind {
    /// The InterruptStatus bit for this kind.
    pub fn status_bit(self) -> u32 {
        match self {
            InterruptKind::Used => VIRTIO_MMIO_INT_VRING,
            InterruptKind::Config => VIRTIO_MMIO_INT_CONFIG,
        }
    }
}

/// Raises interrupts for a device; what the device holds while it is active.
pub trait VirtioInterrupt: Debug + Send + Sync {
    /// Records why and interrupts the driver.
    fn trigger(&self, kind: InterruptKind) -> io::Result<()>;
}

/// The MMIO transport's interrupt: the InterruptStatus bits, shared with the
/// transport's register, and the eventfd that is the interrupt line.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    irq: EventTrigger,
}

impl IrqTrigger {
    /// A new interrupt with no bit set.
    pub fn new() -> Result<IrqTrigger> {
        Ok(IrqTrigger {
            status: AtomicU32::new(0),
            irq: EventTrigger::new()?,
        })
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the `bits` the driver acknowledged (InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets the InterruptStatus register to `bits`, as a snapshot saved it.
    /// Nothing fires: the interrupt controller's state is saved apart.
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// Clears every bit (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The eventfd to register as the device's irqfd.
    pub fn event(&self) -> &EventTrigger {
        &self.irq
    }
}

impl VirtioInterrupt for IrqTrigger {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        // The bit is set before the line fires so the driver's handler sees it.
        self.status.fetch_or(kind.status_bit(), Ordering::SeqCst);
        self.irq.trigger()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn trigger_sets_the_bit_and_fires_once_per_call() {
        let irq = IrqTrigger::new().unwrap();
        irq.trigger(InterruptKind::Used).unwrap();
        irq.trigger(InterruptKind::Config).unwrap();
        assert_eq!(irq.status(), 0b11);
        assert_eq!(irq.event().event_fd().read().unwrap(), 2);
        irq.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
        irq.ack(0xffff_fff0);
        assert_eq!(
            irq.status(),
            VIRTIO_MMIO_INT_CONFIG,
            "unknown bits are harmless"
        );
        irq.clear();
        assert_eq!(irq.status(), 0);
    }
}
