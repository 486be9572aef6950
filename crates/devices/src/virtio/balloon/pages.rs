//! Inflate and deflate buffers: PFN lists read from a descriptor chain,
//! turned into runs of contiguous pages, and runs discarded from guest
//! memory without ever reaching outside it.

use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};

use super::MAX_PFNS_PER_BUFFER;

/// log2 of the balloon's page size (4 KiB, whatever the guest's page size).
pub const PAGE_SHIFT: u32 = 12;
/// The balloon's page size.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// Contiguous guest pages: `count` pages from frame `first`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRun {
    /// First page frame number.
    pub first: u64,
    /// Pages in the run (at least 1).
    pub count: u64,
}

/// Why a buffer holds no PFN list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadBuffer {
    /// A device-writable descriptor.
    Writable,
    /// More than [`MAX_PFNS_PER_BUFFER`] PFNs, or a length not a multiple of 4.
    BadLength,
    /// A descriptor outside guest memory.
    OutsideMemory,
}

/// What discarding some runs did, in pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Discarded {
    /// Pages given back to the host.
    pub released: u64,
    /// Pages outside guest RAM (skipped).
    pub outside: u64,
    /// Pages the host refused to discard (madvise failed).
    pub failed: u64,
}

/// Appends the PFNs of the device-readable `descriptors` (address, length,
/// device-writable) to `pfns` (cleared first), reading guest memory.
pub fn read_pfns<M: GuestMemory>(
    mem: &M,
    descriptors: impl Iterator<Item = (GuestAddress, u32, bool)>,
    pfns: &mut Vec<u32>,
) -> Result<(), BadBuffer> {
    pfns.clear();
    let mut bytes = [0u8; MAX_PFNS_PER_BUFFER * 4];
    for (addr, len, writable) in descriptors {
        if writable {
            return Err(BadBuffer::Writable);
        }
        let len = usize::try_from(len).map_err(|_| BadBuffer::BadLength)?;
        if len == 0 {
            continue;
        }
        if len % 4 != 0 || pfns.len() * 4 + len > bytes.len() {
            return Err(BadBuffer::BadLength);
        }
        let buf = &mut bytes[..len];
        mem.read_slice(buf, addr)
            .map_err(|_| BadBuffer::OutsideMemory)?;
        pfns.extend(
            buf.chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    Ok(())
}

/// Sorts and deduplicates `pfns` and returns their runs of contiguous pages.
pub fn coalesce(pfns: &mut Vec<u32>) -> Vec<PageRun> {
    pfns.sort_unstable();
    pfns.dedup();
    let mut runs: Vec<PageRun> = Vec::new();
    for &pfn in pfns.iter() {
        let pfn = u64::from(pfn);
        match runs.last_mut() {
            Some(run) if run.first + run.count == pfn => run.count += 1,
            _ => runs.push(PageRun {
                first: pfn,
                count: 1,
            }),
        }
    }
    runs
}

/// Gives the pages of `run` that lie in guest RAM back to the host, one
/// `madvise` per stretch inside one memory region; pages outside RAM (or a
/// partial page at a region's end) are skipped a gap at a time. Work is
/// bounded by the number of memory regions, whatever the run's length.
pub fn discard<M: GuestMemory>(mem: &M, run: PageRun) -> Discarded {
    let mut done = Discarded::default();
    let Some(physical) = mem.physical_memory() else {
        done.outside = run.count;
        return done;
    };
    let end = run.first.saturating_add(run.count);
    let mut page = run.first;
    while page < end {
        let stretch = page
            .checked_mul(PAGE_SIZE)
            .and_then(|at| physical.to_region_addr(GuestAddress(at)))
            .and_then(|(region, offset)| {
                let pages = (region.len() - offset.0) / PAGE_SIZE;
                let pages = pages.min(end - page);
                (pages > 0).then_some((region, offset, pages))
            });
        let Some((region, offset, pages)) = stretch else {
            let skipped = gap_pages(physical, page, end);
            done.outside += skipped;
            page += skipped;
            continue;
        };
        if release(region, offset, pages) {
            done.released += pages;
        } else {
            done.failed += pages;
        }
        page += pages;
    }
    done
}

/// Gives the whole pages of the guest range `addr..addr + len` back (see
/// [`discard`]); partial pages at either end are kept.
pub fn discard_range<M: GuestMemory>(mem: &M, addr: u64, len: u64) -> Discarded {
    let first = addr.div_ceil(PAGE_SIZE);
    let end = addr.saturating_add(len) / PAGE_SIZE;
    if end <= first {
        return Discarded::default();
    }
    discard(
        mem,
        PageRun {
            first,
            count: end - first,
        },
    )
}

/// Pages from `page` (outside RAM) up to the first page of the next
/// memory region, or to `end`; at least 1.
fn gap_pages<B: GuestMemoryBackend + ?Sized>(physical: &B, page: u64, end: u64) -> u64 {
    let at = page.saturating_mul(PAGE_SIZE);
    let next = physical
        .iter()
        .map(|r| r.start_addr().0)
        .filter(|&start| start > at)
        .min()
        .map_or(end, |start| start.div_ceil(PAGE_SIZE).min(end));
    next.saturating_sub(page).max(1)
}

/// `madvise(MADV_DONTNEED)` on `pages` pages of `region` from `offset`,
/// which the caller checked lie inside the region. On anonymous memory the
/// pages go back to the host and read as zeroes. On memory mapped privately
/// from a snapshot's memory file (a restored VM), the VM's private copies go
/// back to the host and the pages read as the file's content again, which
/// costs only page cache shared with every VM restored from that file: the
/// balloon returns the same memory either way, and a guest never relies on
/// the content of a page it gave away.
fn release<R: GuestMemoryRegion>(region: &R, offset: MemoryRegionAddress, pages: u64) -> bool {
    let Ok(host) = region.get_host_address(offset) else {
        return false;
    };
    let Ok(len) = usize::try_from(pages * PAGE_SIZE) else {
        return false;
    };
    if !(host as u64).is_multiple_of(PAGE_SIZE) {
        return false;
    }
    // SAFETY: `host..host + len` lies inside the region's mapping (the
    // caller checked `offset + len <= region.len()`), which stays mapped:
    // DONTNEED only drops its pages, which read as zeroes (anonymous or
    // private mappings) or the file's contents afterwards. Guest memory is
    // only accessed through volatile accesses, so no Rust reference sees
    // the change. The result is checked.
    unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTNEED) == 0 }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::virtio::test_utils::memory;

    fn run(first: u64, count: u64) -> PageRun {
        PageRun { first, count }
    }

    #[test]
    fn pfns_coalesce_sorted_without_duplicates() {
        let mut pfns = vec![7, 3, 4, 5, 5, 9, 8, 1, u32::MAX, u32::MAX - 1];
        assert_eq!(
            coalesce(&mut pfns),
            [
                run(1, 1),
                run(3, 3),
                run(7, 3),
                run(u64::from(u32::MAX) - 1, 2)
            ]
        );
        assert!(coalesce(&mut Vec::new()).is_empty());
    }

    #[test]
    fn buffers_are_bounded_and_checked() {
        let mem = memory(&[(0, 0x10000)]);
        mem.write_slice(&[1, 0, 0, 0, 2, 0, 0, 0], GuestAddress(0x100))
            .unwrap();
        let mut pfns = Vec::new();
        let desc = |addr, len, w| (GuestAddress(addr), len, w);
        read_pfns(
            &mem,
            [desc(0x100, 8, false), desc(0x100, 4, false)].into_iter(),
            &mut pfns,
        )
        .unwrap();
        assert_eq!(pfns, [1, 2, 1]);
        read_pfns(&mem, [desc(u64::MAX, 0, false)].into_iter(), &mut pfns).unwrap();
        assert!(
            pfns.is_empty(),
            "an empty descriptor holds no PFN, wherever it points"
        );
        let bad = |d: Vec<(GuestAddress, u32, bool)>| {
            read_pfns(&mem, d.into_iter(), &mut Vec::new()).unwrap_err()
        };
        assert_eq!(bad(vec![desc(0x100, 8, true)]), BadBuffer::Writable);
        assert_eq!(bad(vec![desc(0x100, 6, false)]), BadBuffer::BadLength);
        assert_eq!(bad(vec![desc(0x100, 1028, false)]), BadBuffer::BadLength);
        assert_eq!(
            bad(vec![desc(0x100, 1024, false), desc(0, 4, false)]),
            BadBuffer::BadLength
        );
        assert_eq!(bad(vec![desc(0xfffc, 8, false)]), BadBuffer::OutsideMemory);
        assert_eq!(
            bad(vec![desc(u64::MAX - 3, 8, false)]),
            BadBuffer::OutsideMemory
        );
    }

    #[test]
    fn discarding_zeroes_ram_and_skips_the_gap() {
        // RAM at pages 0..4 and 8..12, a gap between.
        let mem = memory(&[(0, 0x4000), (0x8000, 0x4000)]);
        for at in [0u64, 0x3000, 0x8000, 0xb000] {
            mem.write_obj(0xabu8, GuestAddress(at)).unwrap();
        }
        let done = discard(&mem, run(3, 6));
        assert_eq!(
            done,
            Discarded {
                released: 2,
                outside: 4,
                failed: 0
            }
        );
        let byte = |at| mem.read_obj::<u8>(GuestAddress(at)).unwrap();
        assert_eq!(byte(0), 0xab, "page 0 is not in the run");
        assert_eq!(byte(0x3000), 0, "page 3 was discarded");
        assert_eq!(byte(0x8000), 0, "page 8 was discarded");
        assert_eq!(byte(0xb000), 0xab, "page 11 is not in the run");
        let far = discard(&mem, run(u64::from(u32::MAX), 1));
        assert_eq!(far.outside, 1);
        let huge = discard(&mem, run(0x4, 1 << 40));
        assert_eq!(
            (huge.released, huge.outside),
            (4, (1 << 40) - 4),
            "gaps at once"
        );
        assert_eq!(discard(&mem, run(u64::MAX, 1)).outside, 0, "empty range");
    }

    /// Resident pages of the mapping at `host` (mincore).
    fn resident_pages(host: *mut u8, pages: usize) -> usize {
        let mut vec = vec![0u8; pages];
        // SAFETY: `host..host + pages * PAGE_SIZE` is one live mapping and
        // `vec` has a byte per page, as mincore wants.
        let ret = unsafe { libc::mincore(host.cast(), pages * 4096, vec.as_mut_ptr()) };
        assert_eq!(ret, 0);
        vec.iter().filter(|b| **b & 1 != 0).count()
    }

    #[test]
    fn a_restored_vms_private_file_mapping_gives_its_copies_back() {
        use std::io::Write;
        use vm_memory::mmap::MmapRegionBuilder;
        use vm_memory::{FileOffset, GuestMemoryBackend, GuestRegionMmap};

        // A snapshot's memory file of 8 pages, each full of its number.
        let mut file = tempfile::tempfile().unwrap();
        for page in 0..8u8 {
            file.write_all(&[page; 4096]).unwrap();
        }
        let region = MmapRegionBuilder::new(8 * 4096)
            .with_file_offset(FileOffset::new(file, 0))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .unwrap();
        let region = GuestRegionMmap::new(region, GuestAddress(0)).unwrap();
        let mem = vm_memory::GuestMemoryMmap::<()>::from_regions(vec![region]).unwrap();
        // The guest wrote pages 2 and 3 after the restore: private copies.
        mem.write_slice(&[0xee; 2 * 4096], GuestAddress(0x2000))
            .unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        let before = resident_pages(host, 8);

        let done = discard(&mem, run(2, 2));
        assert_eq!(done.released, 2);
        // The copies are gone; the pages read as the file again.
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x2000)).unwrap(), 2);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3fff)).unwrap(), 3);
        assert_eq!(mem.num_regions(), 1);
        assert!(resident_pages(host, 8) <= before);
    }

    #[test]
    fn ranges_give_back_their_whole_pages_only() {
        let mem = memory(&[(0, 0x8000)]);
        mem.write_slice(&[0xee; 0x8000], GuestAddress(0)).unwrap();
        let done = discard_range(&mem, 0x1800, 0x2000);
        assert_eq!((done.released, done.outside), (1, 0), "page 2 only");
        let byte = |at| mem.read_obj::<u8>(GuestAddress(at)).unwrap();
        assert_eq!((byte(0x17ff), byte(0x2000), byte(0x3000)), (0xee, 0, 0xee));
        assert_eq!(discard_range(&mem, 0x4800, 0x800), Discarded::default());
        assert_eq!(
            discard_range(&mem, u64::MAX - 10, 100),
            Discarded::default()
        );
        assert_eq!(discard_range(&mem, 0x7000, 0x3000).outside, 2);
    }

    #[test]
    fn a_partial_last_page_is_never_discarded() {
        let mem = memory(&[(0, 0x1800)]);
        mem.write_obj(0xcdu8, GuestAddress(0x1000)).unwrap();
        let done = discard(&mem, run(0, 2));
        assert_eq!((done.released, done.outside), (1, 1));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0xcd);
    }
}
