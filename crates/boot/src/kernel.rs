//! Loading a kernel image into guest memory with linux-loader, after
//! [`crate::image::inspect`] has checked it, and deciding how to enter it.

use std::io::{Read, Seek};

use ember_memory::layout::MIB;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryBackend, ReadVolatile};

use crate::image::{inspect, ImageFormat, ImageInfo};
use crate::{Error, Result};

/// Offset of the 64-bit entry point from a bzImage's load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// How the boot processor enters a loaded kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, `boot_params` in RSI.
    Linux64,
    /// PVH: 32-bit protected mode, `hvm_start_info` in EBX.
    Pvh,
}

/// A kernel in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// The image format it was loaded from.
    pub format: ImageFormat,
    /// The entry protocol.
    pub protocol: BootProtocol,
    /// Guest-physical entry address.
    pub entry: GuestAddress,
    /// First guest-physical address past the kernel (initrds go above it).
    pub end: u64,
    /// The bzImage setup header, the base of `boot_params.hdr`.
    pub setup_header: Option<setup_header>,
}

/// Loads the kernel in `image` into `mem`, whose RAM below the MMIO gap ends at
/// `low_ram_end`. The kernel must load at or above `highmem_start`: below it
/// live the boot structures (Ember's layout puts it at 1 MiB). ELF kernels
/// with a PVH note are entered through PVH.
///
/// # Example
///
/// A tiny ELF kernel (one segment of `hlt` instructions at 16 MiB) loaded
/// into plain memory:
///
/// ```
/// use std::io::Cursor;
///
/// use ember_boot::{load_kernel, BootProtocol};
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
///
/// # /// An x86_64 ELF file with one PT_LOAD segment of `code` at `addr`.
/// # fn tiny_elf(code: &[u8], addr: u64) -> Vec<u8> {
/// #     let mut f = vec![0u8; 64 + 56];
/// #     f[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1]);
/// #     f[0x10] = 2; // ET_EXEC
/// #     f[0x12] = 62; // EM_X86_64
/// #     f[0x18..0x20].copy_from_slice(&addr.to_le_bytes()); // e_entry
/// #     f[0x20] = 64; // e_phoff
/// #     f[0x34] = 64; // e_ehsize
/// #     f[0x36] = 56; // e_phentsize
/// #     f[0x38] = 1; // e_phnum
/// #     let len = (code.len() as u64).to_le_bytes();
/// #     let ph = &mut f[64..];
/// #     ph[0] = 1; // PT_LOAD
/// #     ph[8] = 120; // p_offset
/// #     ph[16..24].copy_from_slice(&addr.to_le_bytes());
/// #     ph[24..32].copy_from_slice(&addr.to_le_bytes());
/// #     ph[32..40].copy_from_slice(&len);
/// #     ph[40..48].copy_from_slice(&len);
/// #     f.extend_from_slice(code);
/// #     f
/// # }
/// let image = tiny_elf(&[0xf4; 16], 0x100_0000);
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)])?;
/// let kernel = load_kernel(&mem, &mut Cursor::new(image), GuestAddress(0x10_0000), 32 << 20)?;
/// assert_eq!(kernel.protocol, BootProtocol::Linux64);
/// assert_eq!(kernel.entry, GuestAddress(0x100_0000));
/// assert_eq!(kernel.end, 0x100_0010);
/// assert_eq!(mem.read_obj::<u8>(GuestAddress(0x100_0000))?, 0xf4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn load_kernel<M, F>(
    mem: &M,
    image: &mut F,
    highmem_start: GuestAddress,
    low_ram_end: u64,
) -> Result<LoadedKernel>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    let info = inspect(image)?;
    check_placement(&info, highmem_start.0, low_ram_end)?;
    match info.format {
        ImageFormat::Elf | ImageFormat::ElfPvh => load_elf(mem, image, &info, highmem_start),
        ImageFormat::BzImage => {
            let loaded = BzImage::load(mem, None, image, Some(highmem_start))?;
            Ok(LoadedKernel {
                format: info.format,
                protocol: BootProtocol::Linux64,
                entry: GuestAddress(loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
                end: info.load_end,
                setup_header: loaded.setup_header,
            })
        }
    }
}

/// Refuses a kernel that would load below `highmem_start` or end past `low_ram_end`.
fn check_placement(info: &ImageInfo, highmem_start: u64, low_ram_end: u64) -> Result<()> {
    if info.load_start < highmem_start {
        return Err(Error::BadElf(format!(
            "loads at {:#x}, below {} where the boot structures live",
            info.load_start,
            address_text(highmem_start)
        )));
    }
    if info.load_end > low_ram_end {
        return Err(Error::KernelDoesNotFit {
            needed: info.load_end,
            available: low_ram_end,
        });
    }
    Ok(())
}

/// `addr` in MiB when it is a whole number of them, else in hexadecimal.
fn address_text(addr: u64) -> String {
    if addr.is_multiple_of(MIB) {
        format!("{} MiB", addr / MIB)
    } else {
        format!("{addr:#x}")
    }
}

/// Loads an ELF kernel that [`inspect`] described as `info`.
fn load_elf<M, F>(
    mem: &M,
    image: &mut F,
    info: &ImageInfo,
    highmem_start: GuestAddress,
) -> Result<LoadedKernel>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    let loaded = Elf::load(mem, None, image, Some(highmem_start))?;
    // PVH only for a note `inspect` found inside its note segment:
    // linux-loader also reads notes past the end of the segment.
    let (protocol, entry) = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) if info.format == ImageFormat::ElfPvh => {
            (BootProtocol::Pvh, addr)
        }
        _ => (BootProtocol::Linux64, loaded.kernel_load),
    };
    Ok(LoadedKernel {
        format: match protocol {
            BootProtocol::Pvh => ImageFormat::ElfPvh,
            BootProtocol::Linux64 => ImageFormat::Elf,
        },
        protocol,
        entry,
        end: loaded.kernel_end.max(info.load_end),
        setup_header: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tests::{bzimage, elf};
    use crate::image::XLF_KERNEL_64;
    use std::io::Cursor;
    use vm_memory::{Bytes, GuestMemoryMmap};

    /// Ember's high memory start, 1 MiB.
    const HIMEM: GuestAddress = GuestAddress(0x10_0000);

    fn mem(mib: usize) -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mib << 20)]).unwrap()
    }

    #[test]
    fn elf_is_loaded_and_entered_in_64bit_mode() {
        let m = mem(4);
        let image = elf(b"kernel-bytes", 0x10_0000, 0x3000, 0x10_0004, None);
        let k = load_kernel(&m, &mut Cursor::new(image), HIMEM, 4 << 20).unwrap();
        assert_eq!(k.protocol, BootProtocol::Linux64);
        assert_eq!(k.entry, GuestAddress(0x10_0004));
        assert_eq!(k.end, 0x10_3000);
        let mut buf = [0u8; 12];
        m.read_slice(&mut buf, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(&buf, b"kernel-bytes");
    }

    #[test]
    fn pvh_note_selects_pvh() {
        let m = mem(4);
        let image = elf(&[0xf4; 32], 0x10_0000, 32, 0x10_0000, Some(0x10_0010));
        let k = load_kernel(&m, &mut Cursor::new(image), HIMEM, 4 << 20).unwrap();
        assert_eq!(k.protocol, BootProtocol::Pvh);
        assert_eq!(k.entry, GuestAddress(0x10_0010));
        assert_eq!(k.format, ImageFormat::ElfPvh);
    }

    /// Found by the `kernel_image` fuzz target: a PVH note past the end of
    /// its (1-byte) note segment made linux-loader enter the kernel through
    /// PVH while Ember reported, and checked, a plain ELF kernel.
    #[test]
    fn pvh_note_outside_its_segment_is_ignored() {
        let m = mem(4);
        let mut image = elf(&[0xf4; 32], 0x10_0000, 32, 0x10_0000, Some(0x10_0010));
        // The note's program header is the second one; its p_filesz is at +0x20.
        let filesz = 64 + 56 + 0x20;
        image[filesz..filesz + 8].copy_from_slice(&1u64.to_le_bytes());
        let k = load_kernel(&m, &mut Cursor::new(image), HIMEM, 4 << 20).unwrap();
        assert_eq!(k.protocol, BootProtocol::Linux64);
        assert_eq!(k.format, ImageFormat::Elf);
        assert_eq!(k.entry, GuestAddress(0x10_0000));
    }

    /// Found by the `kernel_image` fuzz target: a PT_LOAD with file bytes
    /// but `p_memsz` 0 at address 0 was loaded over the boot structures.
    #[test]
    fn file_only_segment_below_1mib_is_refused_before_loading() {
        let m = mem(4);
        let mut image = elf(&[0xf4; 32], 0x10_0000, 32, 0x10_0000, Some(0x10_0010));
        let ph = 64 + 56;
        image[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        image[ph + 0x18..ph + 0x20].copy_from_slice(&0u64.to_le_bytes()); // p_paddr
        image[ph + 0x28..ph + 0x30].copy_from_slice(&0u64.to_le_bytes()); // p_memsz
        let err = load_kernel(&m, &mut Cursor::new(image), HIMEM, 4 << 20).unwrap_err();
        assert!(matches!(err, Error::BadElf(_)), "{err}");
        let mut page0 = [0xffu8; 20];
        m.read_slice(&mut page0, GuestAddress(0)).unwrap();
        assert_eq!(page0, [0; 20]);
    }

    #[test]
    fn bzimage_is_entered_at_0x200() {
        let m = mem(4);
        let image = bzimage(b"payload!", XLF_KERNEL_64, 0x8000);
        let k = load_kernel(&m, &mut Cursor::new(image), HIMEM, 4 << 20).unwrap();
        assert_eq!(k.protocol, BootProtocol::Linux64);
        assert_eq!(k.entry, GuestAddress(0x10_0200));
        assert_eq!(k.end, 0x10_8000);
        assert!(k.setup_header.is_some());
        let mut buf = [0u8; 8];
        m.read_slice(&mut buf, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(&buf, b"payload!");
    }

    #[test]
    fn kernel_larger_than_memory_is_refused_before_loading() {
        let m = mem(2);
        let image = elf(&[1; 16], 0x10_0000, 0x20_0000, 0x10_0000, None);
        let err = load_kernel(&m, &mut Cursor::new(image), HIMEM, 2 << 20).unwrap_err();
        assert!(
            matches!(
                err,
                Error::KernelDoesNotFit {
                    needed: 0x30_0000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn kernel_below_1mib_is_refused() {
        let m = mem(2);
        let image = elf(&[1; 16], 0x1000, 16, 0x1000, None);
        assert!(matches!(
            load_kernel(&m, &mut Cursor::new(image), HIMEM, 2 << 20),
            Err(Error::BadElf(_))
        ));
    }

    #[test]
    fn the_lowest_load_address_is_a_parameter() {
        let m = mem(4);
        let image = elf(&[1; 16], 0x10_0000, 16, 0x10_0000, None);
        let err = load_kernel(
            &m,
            &mut Cursor::new(image.clone()),
            GuestAddress(0x20_0000),
            4 << 20,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported ELF kernel: loads at 0x100000, below 2 MiB where the boot structures live"
        );
        let err = load_kernel(
            &m,
            &mut Cursor::new(image.clone()),
            GuestAddress(0x10_8000),
            4 << 20,
        )
        .unwrap_err();
        assert!(err.to_string().contains("below 0x108000 where"), "{err}");
        let k = load_kernel(&m, &mut Cursor::new(image), GuestAddress(0x8_0000), 4 << 20).unwrap();
        assert_eq!(k.entry, GuestAddress(0x10_0000));
    }
}
