//! Loading a kernel image into guest memory with linux-loader, after
//! [`crate::image::inspect`] has checked it, and deciding how to enter it.

use std::io::{Read, Seek};

use ember_memory::layout::HIMEM_START;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryBackend, ReadVolatile};

use crate::image::{inspect, ImageFormat};
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
/// `low_ram_end`. ELF kernels with a PVH note are entered through PVH.
pub fn load_kernel<M, F>(mem: &M, image: &mut F, low_ram_end: u64) -> Result<LoadedKernel>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    let info = inspect(image)?;
    if info.load_end > low_ram_end || info.load_start < HIMEM_START {
        return Err(if info.load_start < HIMEM_START {
            Error::BadElf(format!(
                "loads at {:#x}, below 1 MiB where the boot structures live",
                info.load_start
            ))
        } else {
            Error::KernelDoesNotFit {
                needed: info.load_end,
                available: low_ram_end,
            }
        });
    }
    let himem = Some(GuestAddress(HIMEM_START));
    match info.format {
        ImageFormat::Elf | ImageFormat::ElfPvh => {
            let loaded = Elf::load(mem, None, image, himem)?;
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
        ImageFormat::BzImage => {
            let loaded = BzImage::load(mem, None, image, himem)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tests::{bzimage, elf};
    use crate::image::XLF_KERNEL_64;
    use std::io::Cursor;
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn mem(mib: usize) -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mib << 20)]).unwrap()
    }

    #[test]
    fn elf_is_loaded_and_entered_in_64bit_mode() {
        let m = mem(4);
        let image = elf(b"kernel-bytes", 0x10_0000, 0x3000, 0x10_0004, None);
        let k = load_kernel(&m, &mut Cursor::new(image), 4 << 20).unwrap();
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
        let k = load_kernel(&m, &mut Cursor::new(image), 4 << 20).unwrap();
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
        let k = load_kernel(&m, &mut Cursor::new(image), 4 << 20).unwrap();
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
        let err = load_kernel(&m, &mut Cursor::new(image), 4 << 20).unwrap_err();
        assert!(matches!(err, Error::BadElf(_)), "{err}");
        let mut page0 = [0xffu8; 20];
        m.read_slice(&mut page0, GuestAddress(0)).unwrap();
        assert_eq!(page0, [0; 20]);
    }

    #[test]
    fn bzimage_is_entered_at_0x200() {
        let m = mem(4);
        let image = bzimage(b"payload!", XLF_KERNEL_64, 0x8000);
        let k = load_kernel(&m, &mut Cursor::new(image), 4 << 20).unwrap();
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
        let err = load_kernel(&m, &mut Cursor::new(image), 2 << 20).unwrap_err();
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
            load_kernel(&m, &mut Cursor::new(image), 2 << 20),
            Err(Error::BadElf(_))
        ));
    }
}
