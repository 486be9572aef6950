//! Pages the VMM and its devices wrote through vm-memory, from the bitmaps of
//! memory mapped with [`DirtyPageTracking::On`](crate::DirtyPageTracking::On).
//! (The guest's own writes are KVM's dirty log: see `dirty_pages` with the
//! `kvm` feature.)

use vm_memory::GuestMemoryBackend;

use crate::GuestMemoryMmap;

/// The pages of each region written through vm-memory since the previous call
/// (or since the memory was mapped), and resets the bitmaps: one bitmap per
/// region, in guest-address order, bit `i % 64` of word `i / 64` for the
/// region's page `i`. A region mapped without tracking gives an empty bitmap.
///
/// # Example
///
/// ```
/// use ember_memory::layout::PAGE_SIZE;
/// use ember_memory::{map_guest_memory, take_written_pages, Backing, DirtyPageTracking, MemoryLayout};
/// use vm_memory::{Bytes, GuestAddress};
///
/// let layout = MemoryLayout::new(128 * PAGE_SIZE)?;
/// let mem = map_guest_memory(&layout, Backing::Anonymous, DirtyPageTracking::On)?;
/// mem.write_obj(1u8, GuestAddress(3 * PAGE_SIZE))?;
/// mem.write_obj(1u8, GuestAddress(65 * PAGE_SIZE))?;
/// // Page 3 is bit 3 of word 0, page 65 bit 1 of word 1.
/// assert_eq!(take_written_pages(&mem), vec![vec![1 << 3, 1 << 1]]);
/// // Taking them resets the bitmaps.
/// assert_eq!(take_written_pages(&mem), vec![vec![0, 0]]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn take_written_pages(mem: &GuestMemoryMmap) -> Vec<Vec<u64>> {
    mem.iter()
        .map(|region| {
            region
                .get_mmap()
                .bitmap()
                .as_ref()
                .map_or_else(Vec::new, |bitmap| bitmap.get_and_reset())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::layout::{MMIO_GAP_END, MMIO_GAP_START, PAGE_SIZE};
    use crate::{create_guest_memory, map_guest_memory, Backing, DirtyPageTracking, MemoryLayout};

    #[test]
    fn each_region_reports_its_own_pages() {
        let layout = MemoryLayout::new(MMIO_GAP_START + 64 * PAGE_SIZE).unwrap();
        let mem = map_guest_memory(&layout, Backing::Anonymous, DirtyPageTracking::On).unwrap();
        mem.write_obj(1u8, GuestAddress(MMIO_GAP_END + 2 * PAGE_SIZE))
            .unwrap();
        let pages = take_written_pages(&mem);
        assert_eq!(pages.len(), 2);
        assert!(pages[0].iter().all(|&word| word == 0));
        assert_eq!(pages[1], vec![1 << 2]);
    }

    #[test]
    fn untracked_memory_reports_empty_bitmaps() {
        let mem = create_guest_memory(&MemoryLayout::new(16 * PAGE_SIZE).unwrap()).unwrap();
        mem.write_obj(1u8, GuestAddress(0)).unwrap();
        assert_eq!(take_written_pages(&mem), vec![Vec::<u64>::new()]);
    }
}
