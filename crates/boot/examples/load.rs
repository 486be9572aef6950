//! Loads the kernel (ELF vmlinux, PVH or bzImage) given on the command line
//! into plain memory, with an optional initrd, writes the boot structures,
//! and prints how a VMM would enter it. Nothing runs: no KVM is needed.
//!
//! `cargo run -p ember-boot --example load -- vmlinux [initrd] [MiB]`

use std::fs::File;

use ember_boot::{configure_boot, load_initrd, load_kernel, BootAddresses, BootInfo};
use ember_memory::layout::{
    CMDLINE_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START,
    ZERO_PAGE_START,
};
use ember_memory::{create_guest_memory, MemoryLayout};
use vm_memory::GuestAddress;

/// A guest-physical address width every x86_64 host has.
const PHYS_BITS: u8 = 39;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kernel_path = args
        .next()
        .ok_or("usage: load KERNEL [INITRD] [MEMORY_MIB]")?;
    let initrd_path = args.next();
    let mib = args.next().map_or(Ok(256), |arg| arg.parse())?;

    let layout = MemoryLayout::with_mib(mib, PHYS_BITS)?;
    let mem = create_guest_memory(&layout)?;
    let mut image = File::open(&kernel_path)?;
    let kernel = load_kernel(
        &mem,
        &mut image,
        GuestAddress(HIMEM_START),
        layout.low_ram_end(),
    )?;
    println!(
        "{kernel_path}: {} kernel, entry {:#x} ({:?}), ends at {:#x}",
        kernel.format, kernel.entry.0, kernel.protocol, kernel.end
    );
    let initrd = match initrd_path {
        Some(path) => {
            let region = load_initrd(
                &mem,
                &mut File::open(&path)?,
                kernel.end,
                layout.low_ram_end(),
            )?;
            println!("{path}: {} bytes at {:#x}", region.size, region.addr.0);
            Some(region)
        }
        None => None,
    };
    let e820 = layout.e820_entries();
    let info = BootInfo {
        cmdline: "console=ttyS0 reboot=k panic=1",
        e820: &e820,
        initrd,
    };
    let addresses = BootAddresses {
        cmdline: GuestAddress(CMDLINE_START),
        zero_page: GuestAddress(ZERO_PAGE_START),
        pvh_start_info: GuestAddress(PVH_INFO_START),
        pvh_modules: GuestAddress(PVH_MODLIST_START),
        pvh_memmap: GuestAddress(PVH_MEMMAP_START),
    };
    configure_boot(&mem, &kernel, &info, &addresses)?;
    println!("boot structures written for {:?}", kernel.protocol);
    Ok(())
}
