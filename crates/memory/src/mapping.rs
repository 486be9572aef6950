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
        Backing::Anonymous => None,
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
        let file_range = file.as_ref().map(|file| (file, file_offset));
        regions.push(
            map_region(start, size, file_range, tracking)
                .map_err(|source| Error::Map { size_mib, source })?,
        );
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

/// Maps `size` bytes at guest address `start`: anonymous, or from the given
/// file at the given offset.
fn map_region(
    start: GuestAddress,
    size: usize,
    file: Option<(&Arc<File>, u64)>,
    tracking: DirtyPageTracking,
) -> std::result::Result<GuestRegionMmap<Option<AtomicBitmap>>, FromRangesError> {
    let bitmap = match tracking {
        DirtyPageTracking::Off => None,
        DirtyPageTracking::On => Some(AtomicBitmap::new(size, page_size())),
    };
    let builder = MmapRegionBuilder::new_with_bitmap(size, bitmap)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE);
    let builder = match file {
        None => {
            builder.with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        }
        Some((file, offset)) => builder
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
