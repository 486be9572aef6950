//! RAM ranges for a given size and the e820 map that describes them.

use vm_memory::GuestAddress;

use crate::layout::{EBDA_START, HIMEM_START, MIB, MMIO_GAP_END, MMIO_GAP_START, PAGE_SIZE};
use crate::{Error, Result};

/// Kind of an e820 entry, with the values of the e820 specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved, not usable by the guest.
    Reserved = 2,
}

/// One entry of the guest's e820 memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Guest-physical start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

/// Where a guest's RAM lives: below the 32-bit MMIO gap and, for guests of more
/// than 3 GiB, from 4 GiB upwards.
///
/// # Example
///
/// ```
/// use ember_memory::layout::{MIB, MMIO_GAP_END, MMIO_GAP_START};
/// use ember_memory::MemoryLayout;
/// use vm_memory::GuestAddress;
///
/// let small = MemoryLayout::with_mib(512, 39)?;
/// assert_eq!(small.ranges(), &[(GuestAddress(0), 512 * MIB)]);
///
/// let large = MemoryLayout::with_mib(3072 + 256, 39)?;
/// assert_eq!(large.low_ram_end(), MMIO_GAP_START);
/// assert_eq!(large.ranges()[1], (GuestAddress(MMIO_GAP_END), 256 * MIB));
/// # Ok::<(), ember_memory::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    size: u64,
    ranges: Vec<(GuestAddress, u64)>,
}

impl MemoryLayout {
    /// Lays out `size` bytes of RAM. The size must be non-zero and page-aligned.
    ///
    /// # Example
    ///
    /// ```
    /// use ember_memory::{Error, MemoryLayout};
    ///
    /// assert_eq!(MemoryLayout::new(0x10_0000)?.size(), 0x10_0000);
    /// assert!(matches!(MemoryLayout::new(0), Err(Error::ZeroSize)));
    /// assert!(matches!(MemoryLayout::new(4097), Err(Error::Unaligned(4097))));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn new(size: u64) -> Result<Self> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        if !size.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Unaligned(size));
        }
        let low = size.min(MMIO_GAP_START);
        let mut ranges = vec![(GuestAddress(0), low)];
        if size > low {
            // RAM above the gap must end below 2^64: `end` never overflows.
            if (size - low).checked_add(MMIO_GAP_END).is_none() {
                return Err(Error::TooLarge {
                    size_mib: size / MIB,
                });
            }
            ranges.push((GuestAddress(MMIO_GAP_END), size - low));
        }
        Ok(MemoryLayout { size, ranges })
    }

    /// Lays out `mib` MiB of RAM, checking that it fits in a `phys_bits`-wide
    /// guest-physical address space.
    ///
    /// # Example
    ///
    /// ```
    /// use ember_memory::{Error, MemoryLayout};
    ///
    /// // A guest that can address 2^36 bytes (64 GiB) cannot have 64 GiB of
    /// // RAM: the MMIO gap pushes its end past 64 GiB.
    /// assert!(MemoryLayout::with_mib(63 * 1024, 36).is_ok());
    /// let err = MemoryLayout::with_mib(64 * 1024, 36).unwrap_err();
    /// assert!(matches!(err, Error::BeyondAddressSpace { phys_bits: 36, .. }));
    /// ```
    pub fn with_mib(mib: u64, phys_bits: u8) -> Result<Self> {
        let size = mib
            .checked_mul(MIB)
            .ok_or(Error::TooLarge { size_mib: mib })?;
        let layout = Self::new(size)?;
        let end = layout.end();
        if phys_bits < 64 && end > 1u64 << phys_bits {
            return Err(Error::BeyondAddressSpace {
                size_mib: mib,
                end,
                phys_bits,
            });
        }
        Ok(layout)
    }

    /// Total RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// RAM ranges as (start, length), sorted by address.
    pub fn ranges(&self) -> &[(GuestAddress, u64)] {
        &self.ranges
    }

    /// First address past the end of RAM below the MMIO gap.
    pub fn low_ram_end(&self) -> u64 {
        self.ranges[0].1
    }

    /// First guest-physical address past the last byte of RAM.
    pub fn end(&self) -> u64 {
        self.ranges.last().map_or(0, |(start, len)| start.0 + len)
    }

    /// The e820 map: low RAM below the EBDA, RAM from 1 MiB to the MMIO gap (or
    /// the end of RAM), and RAM above 4 GiB when there is any.
    ///
    /// # Example
    ///
    /// ```
    /// use ember_memory::layout::{EBDA_START, HIMEM_START, MIB};
    /// use ember_memory::{E820Entry, E820Kind, MemoryLayout};
    ///
    /// let e820 = MemoryLayout::with_mib(128, 39)?.e820_entries();
    /// assert_eq!(
    ///     e820,
    ///     [
    ///         E820Entry { addr: 0, size: EBDA_START, kind: E820Kind::Ram },
    ///         E820Entry { addr: HIMEM_START, size: 128 * MIB - HIMEM_START, kind: E820Kind::Ram },
    ///     ]
    /// );
    /// # Ok::<(), ember_memory::Error>(())
    /// ```
    pub fn e820_entries(&self) -> Vec<E820Entry> {
        let mut entries = Vec::with_capacity(3);
        let low_end = self.low_ram_end();
        entries.push(E820Entry {
            addr: 0,
            size: EBDA_START.min(low_end),
            kind: E820Kind::Ram,
        });
        if low_end > HIMEM_START {
            entries.push(E820Entry {
                addr: HIMEM_START,
                size: low_end - HIMEM_START,
                kind: E820Kind::Ram,
            });
        }
        if let Some((start, len)) = self.ranges.get(1) {
            entries.push(E820Entry {
                addr: start.0,
                size: *len,
                kind: E820Kind::Ram,
            });
        }
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MMIO_GAP_SIZE;

    #[test]
    fn small_guest_has_one_range_and_two_ram_entries() {
        let layout = MemoryLayout::with_mib(128, 48).unwrap();
        assert_eq!(layout.ranges(), &[(GuestAddress(0), 128 * MIB)]);
        assert_eq!(layout.end(), 128 * MIB);
        let e820 = layout.e820_entries();
        assert_eq!(e820.len(), 2);
        assert_eq!(e820[0].addr, 0);
        assert_eq!(e820[0].size, EBDA_START);
        assert_eq!(e820[1].addr, HIMEM_START);
        assert_eq!(e820[1].size, 128 * MIB - HIMEM_START);
        assert!(e820.iter().all(|e| e.kind == E820Kind::Ram));
    }

    #[test]
    fn large_guest_continues_above_4gib() {
        let layout = MemoryLayout::with_mib(4096, 48).unwrap();
        assert_eq!(
            layout.ranges(),
            &[
                (GuestAddress(0), MMIO_GAP_START),
                (GuestAddress(MMIO_GAP_END), 1 << 30)
            ]
        );
        let e820 = layout.e820_entries();
        assert_eq!(e820.len(), 3);
        assert_eq!(e820[2].addr, MMIO_GAP_END);
        assert_eq!(e820[2].size, 1 << 30);
        let ram: u64 = e820.iter().map(|e| e.size).sum();
        // The EBDA and legacy hole (0x9fc00..1 MiB) are not RAM in the map.
        assert_eq!(ram, 4096 * MIB - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn exactly_3gib_stays_below_the_gap() {
        let layout = MemoryLayout::with_mib(3072, 48).unwrap();
        assert_eq!(layout.ranges().len(), 1);
        assert_eq!(layout.end(), MMIO_GAP_START);
    }

    #[test]
    fn tiny_guest_below_1mib_has_only_low_ram() {
        let layout = MemoryLayout::new(0x10000).unwrap();
        assert_eq!(
            layout.e820_entries(),
            vec![E820Entry {
                addr: 0,
                size: 0x10000,
                kind: E820Kind::Ram
            }]
        );
    }

    #[test]
    fn bad_sizes_are_rejected() {
        assert!(matches!(MemoryLayout::new(0), Err(Error::ZeroSize)));
        assert!(matches!(
            MemoryLayout::new(4097),
            Err(Error::Unaligned(4097))
        ));
        let err = MemoryLayout::with_mib(1 << 30, 40).unwrap_err();
        assert!(matches!(
            err,
            Error::BeyondAddressSpace { phys_bits: 40, .. }
        ));
        assert!(err.to_string().contains("40-bit"));
        assert!(matches!(
            MemoryLayout::with_mib(u64::MAX, 48),
            Err(Error::TooLarge { size_mib: u64::MAX })
        ));
        // The bytes fit in 64 bits but the end, past the MMIO gap, would not.
        let largest_mib = u64::MAX / MIB;
        assert!(matches!(
            MemoryLayout::with_mib(largest_mib, 64),
            Err(Error::TooLarge { size_mib }) if size_mib == largest_mib
        ));
        let end_at_2_64 = (u64::MAX - MMIO_GAP_SIZE) & !(PAGE_SIZE - 1);
        assert_eq!(
            MemoryLayout::new(end_at_2_64).unwrap().end(),
            end_at_2_64 + MMIO_GAP_SIZE
        );
        assert!(MemoryLayout::new(end_at_2_64 + PAGE_SIZE * 2).is_err());
    }
}
