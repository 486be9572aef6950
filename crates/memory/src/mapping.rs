//! The host mappings behind guest memory: anonymous, or private views of a
//! memory file, each optionally with a bitmap of the pages the VMM writes.

use std::fs::File;
use std::num::NonZeroUsize;
use std::sync::Arc;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::{FromRangesError, MmapRegionBuilder};
use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap};

use crate::layout::{MIB, PAGE_SIZE};
use crate::{Error, GuestMemoryMmap, MemoryLayout, Result};

/// What backs guest memory.
#[derive(Clone, Copy, Debug)]
pub enum Backing<'f> {
    /// Anonymous memory: pages are allocated, zeroed, when first touched.
    Anonymous,
    /// A memory file (for example a snapshot's) holding the regions back to
    /// back in guest-address order: region `i` starts at the sum of the
    /// lengths before it. The mapping is private: pages load lazily from
    /// the page cache, clean pages are shared by every VM mapped from the
    /// same file, and writes are copy-on-write (the file never changes).
    File(&'f File),
    /// Anonymous memory from the host's pool of 2 MiB huge pages
    /// (hugetlbfs): reserved when mapped, so a host with too few free huge
    /// pages is refused here rather than failing when the guest touches
    /// them. Every region must be a multiple of 2 MiB.
    Hugetlbfs2M,
    /// Anonymous memory the kernel is advised to back with transparent huge
    /// pages (`madvise(MADV_HUGEPAGE)`), where it can.
    TransparentHuge,
}

/// Size of a huge page of [`Backing::Hugetlbfs2M`].
pub const HUGE_PAGE_SIZE: u64 = 2 * MIB;

/// Where the kernel counts the free 2 MiB huge pages.
const FREE_HUGE_PAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";

/// How many 2 MiB huge pages the host has free (0 when it has none at all).
pub fn free_huge_pages() -> u64 {
    std::fs::read_to_string(FREE_HUGE_PAGES)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Refuses a layout [`Backing::Hugetlbfs2M`] cannot back: a region that is
/// not a multiple of 2 MiB, or more huge pages than the host has free.
fn check_huge_pages(layout: &MemoryLayout) -> Result<()> {
    if let Some(&(_, len)) = layout
        .ranges()
        .iter()
        .find(|(_, len)| !len.is_multiple_of(HUGE_PAGE_SIZE))
    {
        return Err(Error::HugePageMultiple { region_len: len });
    }
    let needed = layout.size() / HUGE_PAGE_SIZE;
    let free = free_huge_pages();
    if free < needed {
        return Err(Error::HugePagesUnavailable { needed, free });
    }
    Ok(())
}

/// Whether guest memory records the pages the VMM writes through it (for
/// diff snapshots; the guest's own writes are KVM's dirty log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyPageTracking {
    /// No bitmap: writes cost nothing extra.
    Off,
    /// One bit per page, set by every write through vm-memory.
    On,
}

/// Backs every range of `layout` with anonymous memory, without dirty-page
/// tracking (`MAP_NORESERVE`: pages are only allocated when touched).
///
/// # Example
///
/// ```
/// use ember_memory::{create_guest_memory, MemoryLayout};
/// use vm_memory::{Bytes, GuestAddress};
///
/// let mem = create_guest_memory(&MemoryLayout::with_mib(64, 39)?)?;
/// mem.write_slice(b"hello", GuestAddress(0x1000))?;
/// let mut back = [0u8; 5];
/// mem.read_slice(&mut back, GuestAddress(0x1000))?;
/// assert_eq!(&back, b"hello");
/// // Past the end of RAM is not memory.
/// assert!(mem.write_obj(0u8, GuestAddress(64 << 20)).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn create_guest_memory(layout: &MemoryLayout) -> Result<GuestMemoryMmap> {
    map_guest_memory(layout, Backing::Anonymous, DirtyPageTracking::Off)
}

/// Maps every range of `layout` from `file` (see [`Backing::File`]), without
/// dirty-page tracking. A file shorter than the layout is refused.
///
/// # Example
///
/// ```
/// use std::io::Write;
///
/// use ember_memory::layout::PAGE_SIZE;
/// use ember_memory::{create_guest_memory_from_file, MemoryLayout};
/// use vm_memory::{Bytes, GuestAddress};
///
/// let mut file = tempfile::tempfile()?;
/// file.write_all(&[7u8; 2 * PAGE_SIZE as usize])?;
/// let layout = MemoryLayout::new(2 * PAGE_SIZE)?;
/// let mem = create_guest_memory_from_file(&layout, &file)?;
/// assert_eq!(mem.read_obj::<u8>(GuestAddress(PAGE_SIZE))?, 7);
/// // Writes are private: the file keeps its bytes.
/// mem.write_obj(0u8, GuestAddress(PAGE_SIZE))?;
/// let again = create_guest_memory_from_file(&layout, &file)?;
/// assert_eq!(again.read_obj::<u8>(GuestAddress(PAGE_SIZE))?, 7);
/// // A file shorter than the memory is refused.
/// assert!(create_guest_memory_from_file(&MemoryLayout::new(4 * PAGE_SIZE)?, &file).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn create_guest_memory_from_file(
    layout: &MemoryLayout,
    file: &File,
) -> Result<GuestMemoryMmap> {
    map_guest_memory(layout, Backing::File(file), DirtyPageTracking::Off)
}

/// Maps every range of `layout`, private and `MAP_NORESERVE`, from `backing`,
/// with or without a bitmap of the pages written through vm-memory.
///
/// # Example
///
/// ```
/// use ember_memory::layout::PAGE_SIZE;
/// use ember_memory::{map_guest_memory, Backing, DirtyPageTracking, MemoryLayout};
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
///
/// let layout = MemoryLayout::new(64 * PAGE_SIZE)?;
/// let mem = map_guest_memory(&layout, Backing::Anonymous, DirtyPageTracking::On)?;
/// mem.write_obj(1u64, GuestAddress(5 * PAGE_SIZE))?;
/// let region = mem.iter().next().ok_or("no region")?;
/// let mapping = region.get_mmap();
/// let bitmap = mapping.bitmap().as_ref().ok_or("no bitmap")?;
/// assert_eq!(bitmap.get_and_reset(), vec![1 << 5]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn map_guest_memory(
    layout: &MemoryLayout,
    backing: Backing<'_>,
    tracking: DirtyPageTracking,
) -> Result<GuestMemoryMmap> {
    let size_mib = layout.size() / MIB;
    let file = match backing {
        Backing::Anonymous | Backing::TransparentHuge => None,
        Backing::Hugetlbfs2M => {
            check_huge_pages(layout)?;
            None
        }
        Backing::File(file) => Some(shared_memory_file(file, layout.size())?),
    };
    let mut regions = Vec::with_capacity(layout.ranges().len());
    let mut file_offset = 0u64;
    for &(start, len) in layout.ranges() {
        let size = usize::try_from(len).map_err(|_| Error::BeyondAddressSpace {
            size_mib,
            end: layout.end(),
            phys_bits: 64,
        })?;
        let source = match (&file, backing) {
            (Some(file), _) => Source::File(file, file_offset),
            (None, Backing::Hugetlbfs2M) => Source::HugeTlb,
            (None, _) => Source::Anonymous,
        };
        let region = map_region(start, size, source, tracking)
            .map_err(|source| Error::Map { size_mib, source })?;
        if matches!(backing, Backing::TransparentHuge) {
            advise_huge_pages(&region)?;
        }
        regions.push(region);
        file_offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| Error::Map {
        size_mib,
        source: e.into(),
    })
}

/// `file`, checked to hold at least `needed` bytes, shared with the mappings.
fn shared_memory_file(file: &File, needed: u64) -> Result<Arc<File>> {
    let len = file.metadata().map_err(Error::MemoryFile)?.len();
    if len < needed {
        return Err(Error::MemoryFileTooShort {
            file_len: len,
            needed,
        });
    }
    Ok(Arc::new(file.try_clone().map_err(Error::MemoryFile)?))
}

/// Where one region's pages come from.
enum Source<'a> {
    Anonymous,
    HugeTlb,
    File(&'a Arc<File>, u64),
}

/// Asks the kernel to back `region` with transparent huge pages.
fn advise_huge_pages(region: &GuestRegionMmap<Option<AtomicBitmap>>) -> Result<()> {
    let mapping = region.get_mmap();
    // SAFETY: the range is exactly the live mapping `region` owns; the advice
    // changes how the kernel backs it, never its contents. The result is
    // checked.
    let ret =
        unsafe { libc::madvise(mapping.as_ptr().cast(), mapping.size(), libc::MADV_HUGEPAGE) };
    if ret != 0 {
        return Err(Error::HugePageAdvice(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Maps `size` bytes at guest address `start` from `source`.
fn map_region(
    start: GuestAddress,
    size: usize,
    source: Source<'_>,
    tracking: DirtyPageTracking,
) -> std::result::Result<GuestRegionMmap<Option<AtomicBitmap>>, FromRangesError> {
    let bitmap = match tracking {
        DirtyPageTracking::Off => None,
        DirtyPageTracking::On => Some(AtomicBitmap::new(size, page_size())),
    };
    let builder = MmapRegionBuilder::new_with_bitmap(size, bitmap)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE);
    let builder = match source {
        Source::Anonymous => {
            builder.with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        }
        // Without MAP_NORESERVE: the huge pages are reserved now.
        Source::HugeTlb => builder
            .with_mmap_flags(
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
            )
            .with_hugetlbfs(true),
        Source::File(file, offset) => builder
            .with_file_offset(FileOffset::from_arc(Arc::clone(file), offset))
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE),
    };
    let mapping = builder.build().map_err(FromRangesError::MmapRegion)?;
    GuestRegionMmap::new(mapping, start).ok_or(FromRangesError::InvalidGuestRegion)
}

/// The granularity of dirty bitmaps.
// 4096 fits in any `usize`.
#[allow(clippy::cast_possible_truncation)]
fn page_size() -> NonZeroUsize {
    const { NonZeroUsize::new(PAGE_SIZE as usize).unwrap() }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    use super::*;
    use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};

    #[test]
    fn guest_memory_is_backed_and_sparse() {
        let layout = MemoryLayout::with_mib(4096 + 64, 48).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        assert_eq!(mem.num_regions(), 2);
        mem.write_obj(0xdead_beefu32, GuestAddress(MMIO_GAP_END + 8))
            .unwrap();
        let v: u32 = mem.read_obj(GuestAddress(MMIO_GAP_END + 8)).unwrap();
        assert_eq!(v, 0xdead_beef);
        assert!(mem.read_obj::<u8>(GuestAddress(MMIO_GAP_START)).is_err());
        assert!(mem.iter().all(|r| r.get_mmap().bitmap().is_none()));
    }

    #[test]
    fn hugetlbfs_memory_is_made_of_huge_pages_or_refused_up_front() {
        let layout = MemoryLayout::with_mib(8, 48).unwrap();
        match map_guest_memory(&layout, Backing::Hugetlbfs2M, DirtyPageTracking::Off) {
            Ok(mem) => {
                mem.write_obj(7u8, GuestAddress(0x20_0000)).unwrap();
                let start = mem.iter().next().unwrap().get_mmap().as_ptr() as u64;
                let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
                let header = format!("{start:x}-");
                let entry = smaps.split_once(header.as_str()).unwrap().1;
                let page_size = entry.lines().find(|l| l.starts_with("KernelPageSize:"));
                assert_eq!(
                    page_size.map(|l| l.split_whitespace().nth(1)),
                    Some(Some("2048"))
                );
            }
            Err(err) => {
                // The host (CI's or a developer's) has too few free huge pages:
                // the refusal must say how many are needed and free.
                assert!(free_huge_pages() < 4, "refused with huge pages free: {err}");
                assert!(
                    matches!(err, Error::HugePagesUnavailable { needed: 4, .. }),
                    "{err}"
                );
                assert!(err.to_string().contains("nr_hugepages"), "{err}");
            }
        }
        let odd = MemoryLayout::new(HUGE_PAGE_SIZE + PAGE_SIZE).unwrap();
        let err = map_guest_memory(&odd, Backing::Hugetlbfs2M, DirtyPageTracking::Off).unwrap_err();
        assert!(matches!(err, Error::HugePageMultiple { .. }), "{err}");
    }

    #[test]
    fn transparent_huge_pages_are_advised_where_the_kernel_has_them() {
        let layout = MemoryLayout::with_mib(8, 48).unwrap();
        let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists();
        match map_guest_memory(&layout, Backing::TransparentHuge, DirtyPageTracking::On) {
            Ok(mem) => {
                assert!(thp, "advised without THP in the kernel");
                mem.write_obj(7u8, GuestAddress(0x10_0000)).unwrap();
                assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(), 7);
            }
            Err(err) => {
                assert!(!thp, "refused with THP in the kernel: {err}");
                assert!(matches!(err, Error::HugePageAdvice(_)), "{err}");
            }
        }
    }

    #[test]
    fn mapping_more_than_the_address_space_fails_cleanly() {
        // 2^47 bytes cannot be mapped by a userspace process on x86_64.
        let layout = MemoryLayout::new(1 << 47).unwrap();
        let err = create_guest_memory(&layout).unwrap_err();
        assert!(matches!(err, Error::Map { .. }), "{err}");
    }

    fn page_bytes() -> usize {
        usize::try_from(PAGE_SIZE).unwrap()
    }

    /// A file whose page `i` is filled with the byte `i + 1`.
    fn patterned_file(pages: u64) -> File {
        let mut file = tempfile::tempfile().unwrap();
        for page in 0..pages {
            let byte = u8::try_from(page % 255 + 1).unwrap();
            file.write_all(&vec![byte; page_bytes()]).unwrap();
        }
        file
    }

    #[test]
    fn file_backed_memory_reads_the_file_and_never_writes_it() {
        let layout = MemoryLayout::new(16 * PAGE_SIZE).unwrap();
        let file = patterned_file(16);
        let mem = create_guest_memory_from_file(&layout, &file).unwrap();
        let mut page = vec![0u8; page_bytes()];
        mem.read_slice(&mut page, GuestAddress(3 * PAGE_SIZE))
            .unwrap();
        assert_eq!(page, vec![4u8; page_bytes()]);
        mem.write_obj(0u8, GuestAddress(3 * PAGE_SIZE)).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(3 * PAGE_SIZE)).unwrap(), 0);
        // Copy-on-write: a second VM mapped from the file sees the file.
        let other = create_guest_memory_from_file(&layout, &file).unwrap();
        assert_eq!(
            other.read_obj::<u8>(GuestAddress(3 * PAGE_SIZE)).unwrap(),
            4
        );
    }

    #[test]
    fn regions_map_at_consecutive_file_offsets() {
        // 3 GiB below the gap, one more page above it: the file's last page.
        let layout = MemoryLayout::new(MMIO_GAP_START + PAGE_SIZE).unwrap();
        let file = tempfile::tempfile().unwrap();
        file.set_len(layout.size()).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[7u8; 8], MMIO_GAP_START).unwrap();
        let mem = create_guest_memory_from_file(&layout, &file).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(MMIO_GAP_END)).unwrap(),
            0x0707_0707_0707_0707
        );
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0)).unwrap(), 0);
    }

    #[test]
    fn a_file_shorter_than_the_layout_is_refused() {
        let layout = MemoryLayout::new(16 * PAGE_SIZE).unwrap();
        let file = patterned_file(15);
        let err = create_guest_memory_from_file(&layout, &file).unwrap_err();
        assert!(
            matches!(err, Error::MemoryFileTooShort { file_len, needed }
                if file_len == 15 * PAGE_SIZE && needed == 16 * PAGE_SIZE),
            "{err}"
        );
    }

    #[test]
    fn tracked_memory_marks_the_pages_written() {
        let layout = MemoryLayout::new(128 * PAGE_SIZE).unwrap();
        let file = patterned_file(128);
        for backing in [Backing::Anonymous, Backing::File(&file)] {
            let mem = map_guest_memory(&layout, backing, DirtyPageTracking::On).unwrap();
            mem.write_slice(&[1, 2], GuestAddress(70 * PAGE_SIZE - 1))
                .unwrap();
            let region = mem.iter().next().unwrap();
            let mapping = region.get_mmap();
            let bitmap = mapping.bitmap().as_ref().unwrap();
            // Pages 69 and 70: bits 5 and 6 of word 1.
            assert_eq!(bitmap.get_and_reset(), vec![0, (1 << 5) | (1 << 6)]);
            assert_eq!(bitmap.get_and_reset(), vec![0, 0]);
        }
    }
}
