//! Placing an initrd: page-aligned, as high as possible below the end of low RAM
//! (and below the kernel's `initrd_addr_max`), and above the kernel.

use std::io::{Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile};

use crate::{Error, Result};

const PAGE_MASK: u64 = !0xfff;

/// Where an initrd was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdRegion {
    /// Guest-physical start.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// Copies `image` into `mem` at the highest page-aligned address whose end is
/// at or below `limit`, failing if that would overlap the kernel (which ends at
/// `kernel_end`).
///
/// # Example
///
/// ```
/// use std::io::Cursor;
///
/// use ember_boot::{load_initrd, Error};
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)])?;
/// let initrd = load_initrd(&mem, &mut Cursor::new(vec![7u8; 5000]), 0x40_0000, 8 << 20)?;
/// // The highest page-aligned place that holds it below the limit.
/// assert_eq!(initrd.addr, GuestAddress((8 << 20) - 0x2000));
/// assert_eq!(initrd.size, 5000);
/// assert_eq!(mem.read_obj::<u8>(initrd.addr)?, 7);
/// // Too large to fit above the kernel.
/// let mut big = Cursor::new(vec![0u8; 5 << 20]);
/// assert!(matches!(
///     load_initrd(&mem, &mut big, 0x40_0000, 8 << 20),
///     Err(Error::InitrdDoesNotFit { .. })
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn load_initrd<M, F>(
    mem: &M,
    image: &mut F,
    kernel_end: u64,
    limit: u64,
) -> Result<InitrdRegion>
where
    M: GuestMemoryBackend,
    F: ReadVolatile + Seek,
{
    let read_err = |source| Error::Read {
        what: "initrd",
        source,
    };
    let size = image.seek(SeekFrom::End(0)).map_err(read_err)?;
    image.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let does_not_fit = || Error::InitrdDoesNotFit {
        size,
        kernel_end,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(does_not_fit)? & PAGE_MASK;
    if addr < kernel_end {
        return Err(does_not_fit());
    }
    let len = usize::try_from(size).map_err(|_| does_not_fit())?;
    mem.read_exact_volatile_from(GuestAddress(addr), image, len)
        .map_err(|source| Error::GuestMemory {
            what: "initrd",
            addr,
            source,
        })?;
    Ok(InitrdRegion {
        addr: GuestAddress(addr),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn placed_at_the_top_page_aligned() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| i.to_le_bytes()[0]).collect();
        let region = load_initrd(&mem, &mut Cursor::new(data.clone()), 0x20_0000, 4 << 20).unwrap();
        assert_eq!(region.size, 5000);
        assert_eq!(region.addr.0, ((4 << 20) - 5000) & PAGE_MASK);
        let mut back = vec![0u8; 5000];
        mem.read_slice(&mut back, region.addr).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn empty_initrd_is_fine() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let region = load_initrd(&mem, &mut Cursor::new(vec![]), 0x20_0000, 4 << 20).unwrap();
        assert_eq!(region.size, 0);
    }

    #[test]
    fn refuses_to_overlap_the_kernel() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let err =
            load_initrd(&mem, &mut Cursor::new(vec![0; 3 << 20]), 0x20_0000, 4 << 20).unwrap_err();
        assert!(matches!(err, Error::InitrdDoesNotFit { .. }), "{err}");
        let err =
            load_initrd(&mem, &mut Cursor::new(vec![0; 5 << 20]), 0x20_0000, 4 << 20).unwrap_err();
        assert!(matches!(err, Error::InitrdDoesNotFit { .. }), "{err}");
    }
}
