//! Boot protocol structures: `boot_params` (the zero page) for the Linux 64-bit
//! boot protocol, or `hvm_start_info` with its module list and memory map for
//! PVH. Both carry the e820 map, the command line and the initrd.

use ember_memory::layout::CMDLINE_MAX_SIZE;
use ember_memory::E820Entry;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{ByteValued, GuestMemoryBackend};

use crate::kernel::{BootProtocol, LoadedKernel};
use crate::{cmdline, BootAddresses, Error, InitrdRegion, Result};

/// `type_of_loader` for a boot loader without an assigned ID.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const BOOT_FLAG: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Alignment advertised to ELF kernels, which carry no setup header of their own.
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// Most e820 entries the zero page holds.
const E820_MAX_ENTRIES: usize = 128;
/// Version of `hvm_start_info` that carries a memory map.
const PVH_START_INFO_VERSION: u32 = 1;

/// The low 32 bits of `value` (the boot protocol splits 64-bit values in halves).
#[allow(clippy::cast_possible_truncation)] // masked to 32 bits first
fn low32(value: u64) -> u32 {
    (value & 0xffff_ffff) as u32
}

/// The high 32 bits of `value`.
#[allow(clippy::cast_possible_truncation)] // shifted down to 32 bits first
fn high32(value: u64) -> u32 {
    (value >> 32) as u32
}

/// `boot_params` as plain bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);
// SAFETY: `boot_params` is a `repr(C, packed)` struct of integers and arrays of
// integers: it has no padding and every bit pattern is a valid value.
unsafe impl ByteValued for ZeroPage {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(hvm_start_info);
// SAFETY: `hvm_start_info` is `repr(C)` with only integer fields laid out without
// padding (its size is asserted to be 56 bytes by linux-loader); any bit pattern is valid.
unsafe impl ByteValued for StartInfo {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModuleEntry(hvm_modlist_entry);
// SAFETY: `hvm_modlist_entry` is `repr(C)`, four `u64`s, no padding; any bit pattern is valid.
unsafe impl ByteValued for ModuleEntry {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MemmapEntry(hvm_memmap_table_entry);
// SAFETY: `hvm_memmap_table_entry` is `repr(C)`, two `u64`s and two `u32`s (24 bytes),
// no padding; any bit pattern is valid.
unsafe impl ByteValued for MemmapEntry {}

/// What the kernel is told at entry.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo<'a> {
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The guest's memory map.
    pub e820: &'a [E820Entry],
    /// The initrd, if one was loaded.
    pub initrd: Option<InitrdRegion>,
}

/// Writes the command line and the boot structures `kernel`'s protocol expects
/// at `addresses`.
///
/// # Example
///
/// A kernel entered through the Linux 64-bit boot protocol, told about 64 MiB
/// of RAM and its command line:
///
/// ```
/// use ember_boot::{configure_boot, BootAddresses, BootInfo, BootProtocol, ImageFormat, LoadedKernel};
/// use ember_memory::MemoryLayout;
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)])?;
/// let kernel = LoadedKernel {
///     format: ImageFormat::Elf,
///     protocol: BootProtocol::Linux64,
///     entry: GuestAddress(0x100_0000),
///     end: 0x200_0000,
///     setup_header: None,
/// };
/// let e820 = MemoryLayout::with_mib(64, 39)?.e820_entries();
/// let info = BootInfo { cmdline: "console=ttyS0", e820: &e820, initrd: None };
/// let addresses = BootAddresses {
///     cmdline: GuestAddress(0x2_0000),
///     zero_page: GuestAddress(0x7000),
///     pvh_start_info: GuestAddress(0x6000),
///     pvh_modules: GuestAddress(0x6040),
///     pvh_memmap: GuestAddress(0x6060),
/// };
/// configure_boot(&mem, &kernel, &info, &addresses)?;
///
/// // boot_params.hdr.cmd_line_ptr (offset 0x228) points at the command line.
/// assert_eq!(mem.read_obj::<u32>(GuestAddress(0x7000 + 0x228))?, 0x2_0000);
/// let mut cmdline = [0u8; 14];
/// mem.read_slice(&mut cmdline, GuestAddress(0x2_0000))?;
/// assert_eq!(&cmdline, b"console=ttyS0\0");
/// // boot_params.e820_entries (offset 0x1e8).
/// assert_eq!(mem.read_obj::<u8>(GuestAddress(0x7000 + 0x1e8))?, 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn configure_boot<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &LoadedKernel,
    info: &BootInfo<'_>,
    addresses: &BootAddresses,
) -> Result<()> {
    if info.e820.len() > E820_MAX_ENTRIES {
        return Err(Error::TooManyE820Entries(info.e820.len()));
    }
    let max_cmdline = kernel.setup_header.map_or(CMDLINE_MAX_SIZE, |hdr| {
        usize::try_from(hdr.cmdline_size)
            .ok()
            .filter(|size| *size > 0)
            .map_or(CMDLINE_MAX_SIZE, |size| size.saturating_add(1))
    });
    cmdline::validate(info.cmdline, max_cmdline)?;
    cmdline::write(mem, addresses.cmdline, info.cmdline)?;
    match kernel.protocol {
        BootProtocol::Linux64 => write_zero_page(mem, kernel, info, addresses),
        BootProtocol::Pvh => write_start_info(mem, info, addresses),
    }
}

fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &LoadedKernel,
    info: &BootInfo<'_>,
    addresses: &BootAddresses,
) -> Result<()> {
    let mut params = boot_params::default();
    match kernel.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT,
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.cmd_line_ptr = low32(addresses.cmdline.0);
    params.ext_cmd_line_ptr = high32(addresses.cmdline.0);
    params.hdr.cmdline_size = low32(info.cmdline.len() as u64);
    if let Some(initrd) = info.initrd {
        let (addr, size) = (initrd.addr.0, initrd.size);
        params.hdr.ramdisk_image = low32(addr);
        params.ext_ramdisk_image = high32(addr);
        params.hdr.ramdisk_size = low32(size);
        params.ext_ramdisk_size = high32(size);
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(info.e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind as u32,
        };
    }
    params.e820_entries =
        u8::try_from(info.e820.len()).map_err(|_| Error::TooManyE820Entries(info.e820.len()))?;

    let zero_page = ZeroPage(params);
    LinuxBootConfigurator::write_bootparams::<M>(
        &BootParams::new(&zero_page, addresses.zero_page),
        mem,
    )?;
    Ok(())
}

fn write_start_info<M: GuestMemoryBackend>(
    mem: &M,
    info: &BootInfo<'_>,
    addresses: &BootAddresses,
) -> Result<()> {
    let memmap: Vec<MemmapEntry> = info
        .e820
        .iter()
        .map(|e| {
            MemmapEntry(hvm_memmap_table_entry {
                addr: e.addr,
                size: e.size,
                type_: e.kind as u32,
                reserved: 0,
            })
        })
        .collect();
    let start_info = StartInfo(hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: PVH_START_INFO_VERSION,
        cmdline_paddr: addresses.cmdline.0,
        memmap_paddr: addresses.pvh_memmap.0,
        memmap_entries: low32(memmap.len() as u64),
        nr_modules: u32::from(info.initrd.is_some()),
        modlist_paddr: if info.initrd.is_some() {
            addresses.pvh_modules.0
        } else {
            0
        },
        ..Default::default()
    });
    let mut params = BootParams::new(&start_info, addresses.pvh_start_info);
    params.set_sections(&memmap, addresses.pvh_memmap);
    if let Some(initrd) = info.initrd {
        let module = ModuleEntry(hvm_modlist_entry {
            paddr: initrd.addr.0,
            size: initrd.size,
            ..Default::default()
        });
        params.set_modules(&[module], addresses.pvh_modules);
    }
    PvhBootConfigurator::write_bootparams::<M>(&params, mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_memory::layout::{
        CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
    };
    use ember_memory::MemoryLayout;
    use linux_loader::loader::bootparam::setup_header;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    fn kernel(protocol: BootProtocol, setup_header: Option<setup_header>) -> LoadedKernel {
        LoadedKernel {
            format: crate::ImageFormat::Elf,
            protocol,
            entry: GuestAddress(0x10_0000),
            end: 0x20_0000,
            setup_header,
        }
    }

    /// Ember's layout.
    const ADDRESSES: BootAddresses = BootAddresses {
        cmdline: GuestAddress(CMDLINE_START),
        zero_page: GuestAddress(ZERO_PAGE_START),
        pvh_start_info: GuestAddress(PVH_INFO_START),
        pvh_modules: GuestAddress(PVH_MODLIST_START),
        pvh_memmap: GuestAddress(PVH_MEMMAP_START),
    };

    fn u32_at(mem: &GuestMemoryMmap<()>, addr: u64) -> u32 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let m = mem();
        let e820 = MemoryLayout::with_mib(4096, 48).unwrap().e820_entries();
        let initrd = InitrdRegion {
            addr: GuestAddress(0x30_0000),
            size: 0x1234,
        };
        let info = BootInfo {
            cmdline: "console=ttyS0 quiet",
            e820: &e820,
            initrd: Some(initrd),
        };
        configure_boot(&m, &kernel(BootProtocol::Linux64, None), &info, &ADDRESSES).unwrap();
        let zp = ZERO_PAGE_START;
        assert_eq!(
            u32_at(&m, zp + 0x228),
            u32::try_from(CMDLINE_START).unwrap(),
            "cmd_line_ptr"
        );
        assert_eq!(u32_at(&m, zp + 0x238), 19, "cmdline_size");
        assert_eq!(u32_at(&m, zp + 0x218), 0x30_0000, "ramdisk_image");
        assert_eq!(u32_at(&m, zp + 0x21c), 0x1234, "ramdisk_size");
        assert_eq!(m.read_obj::<u8>(GuestAddress(zp + 0x210)).unwrap(), 0xff);
        assert_eq!(m.read_obj::<u8>(GuestAddress(zp + 0x1e8)).unwrap(), 3);
        let third_addr: u64 = m.read_obj(GuestAddress(zp + 0x2d0 + 2 * 20)).unwrap();
        assert_eq!(third_addr, 1 << 32);
        let mut cmdline = [0u8; 20];
        m.read_slice(&mut cmdline, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&cmdline, b"console=ttyS0 quiet\0");
    }

    #[test]
    fn bzimage_header_is_kept_and_limits_the_cmdline() {
        let m = mem();
        let hdr = setup_header {
            cmdline_size: 10,
            code32_start: 0x10_0000,
            version: 0x020f,
            ..Default::default()
        };
        let e820 = MemoryLayout::with_mib(4, 48).unwrap().e820_entries();
        let k = kernel(BootProtocol::Linux64, Some(hdr));
        let short = BootInfo {
            cmdline: "a=b",
            e820: &e820,
            initrd: None,
        };
        configure_boot(&m, &k, &short, &ADDRESSES).unwrap();
        assert_eq!(
            u32_at(&m, ZERO_PAGE_START + 0x214),
            0x10_0000,
            "code32_start kept"
        );
        let long = BootInfo {
            cmdline: "0123456789a",
            ..short
        };
        assert!(matches!(
            configure_boot(&m, &k, &long, &ADDRESSES),
            Err(Error::CmdlineTooLong { max: 10, .. })
        ));
    }

    #[test]
    fn pvh_start_info() {
        let m = mem();
        let e820 = MemoryLayout::with_mib(4, 48).unwrap().e820_entries();
        let info = BootInfo {
            cmdline: "x",
            e820: &e820,
            initrd: Some(InitrdRegion {
                addr: GuestAddress(0x38_0000),
                size: 77,
            }),
        };
        configure_boot(&m, &kernel(BootProtocol::Pvh, None), &info, &ADDRESSES).unwrap();
        let si: StartInfo = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(si.0.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(si.0.version, 1);
        assert_eq!(si.0.cmdline_paddr, CMDLINE_START);
        assert_eq!(
            (si.0.nr_modules, si.0.modlist_paddr),
            (1, PVH_MODLIST_START)
        );
        assert_eq!(si.0.memmap_entries, 2);
        let module: ModuleEntry = m.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((module.0.paddr, module.0.size), (0x38_0000, 77));
        let second: MemmapEntry = m.read_obj(GuestAddress(PVH_MEMMAP_START + 24)).unwrap();
        assert_eq!(
            (second.0.addr, second.0.size, second.0.type_),
            (0x10_0000, 3 << 20, 1)
        );
    }

    #[test]
    fn too_many_e820_entries() {
        let m = mem();
        let e820 = vec![
            E820Entry {
                addr: 0,
                size: 0x1000,
                kind: ember_memory::E820Kind::Ram
            };
            129
        ];
        let info = BootInfo {
            cmdline: "",
            e820: &e820,
            initrd: None,
        };
        assert!(matches!(
            configure_boot(&m, &kernel(BootProtocol::Linux64, None), &info, &ADDRESSES),
            Err(Error::TooManyE820Entries(129))
        ));
    }

    #[test]
    fn structures_go_where_the_addresses_say() {
        let m = mem();
        let e820 = MemoryLayout::with_mib(4, 48).unwrap().e820_entries();
        let moved = BootAddresses {
            cmdline: GuestAddress(0x4_0000),
            zero_page: GuestAddress(0x3000),
            pvh_start_info: GuestAddress(0x5000),
            pvh_modules: GuestAddress(0x5100),
            pvh_memmap: GuestAddress(0x5200),
        };
        let info = BootInfo {
            cmdline: "moved",
            e820: &e820,
            initrd: Some(InitrdRegion {
                addr: GuestAddress(0x38_0000),
                size: 5,
            }),
        };
        configure_boot(&m, &kernel(BootProtocol::Linux64, None), &info, &moved).unwrap();
        assert_eq!(u32_at(&m, 0x3000 + 0x228), 0x4_0000, "cmd_line_ptr");
        assert_eq!(u32_at(&m, 0x3000 + 0x218), 0x38_0000, "ramdisk_image");
        let mut cmdline = [0u8; 6];
        m.read_slice(&mut cmdline, GuestAddress(0x4_0000)).unwrap();
        assert_eq!(&cmdline, b"moved\0");

        configure_boot(&m, &kernel(BootProtocol::Pvh, None), &info, &moved).unwrap();
        let si: StartInfo = m.read_obj(GuestAddress(0x5000)).unwrap();
        assert_eq!(si.0.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(
            (si.0.cmdline_paddr, si.0.modlist_paddr, si.0.memmap_paddr),
            (0x4_0000, 0x5100, 0x5200)
        );
        let module: ModuleEntry = m.read_obj(GuestAddress(0x5100)).unwrap();
        assert_eq!((module.0.paddr, module.0.size), (0x38_0000, 5));
        let first: MemmapEntry = m.read_obj(GuestAddress(0x5200)).unwrap();
        assert_eq!((first.0.addr, first.0.type_), (0, 1));
    }
}
