//! The port-I/O and MMIO buses as a vCPU exit handler, counting the exits.

use std::sync::atomic::{AtomicU64, Ordering};

use ember_cpu::ExitHandler;
use ember_devices::Bus;

/// Exit counts, shared by all vCPU threads.
#[derive(Debug, Default)]
pub struct ExitCounters {
    /// Port reads.
    pub pio_reads: AtomicU64,
    /// Port writes.
    pub pio_writes: AtomicU64,
    /// MMIO reads.
    pub mmio_reads: AtomicU64,
    /// MMIO writes.
    pub mmio_writes: AtomicU64,
    /// Port accesses no device claimed.
    pub unclaimed_pio: AtomicU64,
    /// MMIO accesses no device claimed.
    pub unclaimed_mmio: AtomicU64,
}

impl ExitCounters {
    /// The counters as (name, value) pairs.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        [
            ("exit_io_in", &self.pio_reads),
            ("exit_io_out", &self.pio_writes),
            ("exit_mmio_read", &self.mmio_reads),
            ("exit_mmio_write", &self.mmio_writes),
            ("unclaimed_io", &self.unclaimed_pio),
            ("unclaimed_mmio", &self.unclaimed_mmio),
        ]
        .into_iter()
        .map(|(name, counter)| (name, counter.load(Ordering::Relaxed)))
        .collect()
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Both buses, shared by every vCPU thread.
#[derive(Debug, Default)]
pub struct IoBuses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
    /// Exit counts.
    pub counters: ExitCounters,
}

impl ExitHandler for IoBuses {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        count(&self.counters.pio_reads);
        if !self.pio.read(u64::from(port), data) {
            count(&self.counters.unclaimed_pio);
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        count(&self.counters.pio_writes);
        if !self.pio.write(u64::from(port), data) {
            count(&self.counters.unclaimed_pio);
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        count(&self.counters.mmio_reads);
        if !self.mmio.read(addr, data) {
            count(&self.counters.unclaimed_mmio);
            log::debug!("unclaimed MMIO read {addr:#x} ({} bytes)", data.len());
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        count(&self.counters.mmio_writes);
        if !self.mmio.write(addr, data) {
            count(&self.counters.unclaimed_mmio);
            log::debug!("unclaimed MMIO write {addr:#x} ({} bytes)", data.len());
        }
    }
}
