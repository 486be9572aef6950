//! An address-range bus: devices claim `[base, base + len)` and receive reads
//! and writes with the offset into their range. Port I/O and MMIO each use one.
//! Accesses nobody claims read as all ones and are otherwise ignored.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// Why a device cannot be put on a [`Bus`].
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
}

/// A device on a [`Bus`].
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device of byte-wide registers (UARTs, the i8042): only one-byte accesses
/// at offsets below 256 reach it; wider or farther accesses read as all ones and
/// are otherwise ignored.
pub trait ByteRegisters: Send {
    /// Reads register `offset`.
    fn read_register(&mut self, offset: u8) -> u8;
    /// Writes `value` to register `offset`.
    fn write_register(&mut self, offset: u8, value: u8);
}

impl<T: ByteRegisters> BusDevice for T {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.read_register(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [value]) = (u8::try_from(offset), data) {
            self.write_register(offset, *value);
        }
    }
}

/// A device shared between the bus and whoever else drives it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Range {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// Devices sorted by address. Built once, then shared read-only by all vCPUs.
///
/// # Example
///
/// A one-register device at port 0x80, and a device that would overlap it:
///
/// ```
/// use std::sync::{Arc, Mutex};
///
/// use ember_devices::bus::{self, Bus, ByteRegisters};
///
/// /// Keeps the last byte written (a POST-code port).
/// #[derive(Default)]
/// struct PostCode(u8);
///
/// impl ByteRegisters for PostCode {
///     fn read_register(&mut self, _offset: u8) -> u8 {
///         self.0
///     }
///     fn write_register(&mut self, _offset: u8, value: u8) {
///         self.0 = value;
///     }
/// }
///
/// let mut pio = Bus::new();
/// pio.insert(Arc::new(Mutex::new(PostCode::default())), 0x80, 1)?;
/// assert!(pio.write(0x80, &[0x2a]));
/// let mut data = [0u8];
/// assert!(pio.read(0x80, &mut data));
/// assert_eq!(data, [0x2a]);
/// // Byte registers take one-byte accesses only; wider ones read as all ones.
/// let mut wide = [0u8; 2];
/// assert!(!pio.read(0x80, &mut wide), "the access ends past the device");
///
/// let err = pio
///     .insert(Arc::new(Mutex::new(PostCode::default())), 0x7f, 2)
///     .unwrap_err();
/// assert!(matches!(err, bus::Error::Overlap { existing: 0x80, .. }));
/// assert_eq!(err.to_string(), "bus range 0x7f+0x2 overlaps a device already at 0x80");
/// # Ok::<(), bus::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.ranges.iter().map(|r| (r.base, r.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), Error> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(Error::InvalidRange { base, len });
        };
        let at = self.ranges.partition_point(|r| r.base < base);
        let overlaps_prev = at > 0 && {
            let prev = &self.ranges[at - 1];
            prev.base + prev.len > base
        };
        let overlaps_next = self.ranges.get(at).is_some_and(|next| next.base < end);
        if overlaps_prev || overlaps_next {
            let existing = if overlaps_prev {
                self.ranges[at - 1].base
            } else {
                self.ranges[at].base
            };
            return Err(Error::Overlap {
                base,
                len,
                existing,
            });
        }
        self.ranges.insert(at, Range { base, len, device });
        Ok(())
    }

    /// The device whose range holds all of `[addr, addr + size)`, and the offset.
    fn resolve(&self, addr: u64, size: usize) -> Option<(&Range, u64)> {
        let at = self.ranges.partition_point(|r| r.base <= addr);
        let range = self.ranges.get(at.checked_sub(1)?)?;
        let offset = addr - range.base;
        let end = offset.checked_add(size as u64)?;
        (end <= range.len).then_some((range, offset))
    }

    /// Reads from the device at `addr`. Returns `false` (and fills `data` with
    /// 0xff) when no device claims the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((range, offset)) => {
                let mut device = range.device.lock().unwrap_or_else(PoisonError::into_inner);
                device.read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes to the device at `addr`. Returns `false` when no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((range, offset)) => {
                let mut device = range.device.lock().unwrap_or_else(PoisonError::into_inner);
                device.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access and answers reads with its offset.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset.to_le_bytes()[0]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let (a, b) = (probe(), probe());
        let mut bus = Bus::new();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(b.clone(), 0x60, 5).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x64, &[0xfe]));
        assert_eq!(b.lock().unwrap().last_write, Some((4, vec![0xfe])));
        assert!(a.lock().unwrap().last_write.is_none());
    }

    #[test]
    fn unclaimed_reads_are_all_ones() {
        let mut bus = Bus::new();
        bus.insert(probe(), 0x1000, 0x10).unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0x2000, &mut data));
        assert_eq!(data, [0xff; 4]);
        assert!(!bus.read(0xfff, &mut data));
        assert!(!bus.write(0x0, &[1]));
        assert!(!bus.write(u64::MAX, &[1, 2]));
        // Straddling the end of a device is not an access to it.
        assert!(!bus.read(0x100e, &mut data));
    }

    #[test]
    fn overlaps_and_bad_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(probe(), 0x100, 0x100).unwrap();
        for (base, len) in [(0x80, 0x81), (0x1ff, 1), (0x150, 4), (0x0, 0x1000)] {
            assert!(
                matches!(
                    bus.insert(probe(), base, len),
                    Err(Error::Overlap {
                        existing: 0x100,
                        ..
                    })
                ),
                "{base:#x}+{len:#x}"
            );
        }
        assert!(matches!(
            bus.insert(probe(), 0x300, 0),
            Err(Error::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(probe(), u64::MAX, 2),
            Err(Error::InvalidRange { .. })
        ));
        bus.insert(probe(), 0x200, 0x10).unwrap();
        bus.insert(probe(), 0xf0, 0x10).unwrap();
    }
}
