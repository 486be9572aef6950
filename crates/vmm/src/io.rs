//! The port-I/O and MMIO buses as a vCPU exit handler.

use ember_cpu::ExitHandler;
use ember_devices::Bus;

/// Both buses, shared by every vCPU thread.
#[derive(Debug, Default)]
pub struct IoBuses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

impl ExitHandler for IoBuses {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !self.pio.read(u64::from(port), data) {
            log::trace!("unclaimed port read {port:#x} ({} bytes)", data.len());
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        if !self.pio.write(u64::from(port), data) {
            log::trace!("unclaimed port write {port:#x} ({} bytes)", data.len());
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.mmio.read(addr, data) {
            log::debug!("unclaimed MMIO read {addr:#x} ({} bytes)", data.len());
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if !self.mmio.write(addr, data) {
            log::debug!("unclaimed MMIO write {addr:#x} ({} bytes)", data.len());
        }
    }
}
