//! The fixed x86_64 guest-physical memory map (see docs/architecture.md in
//! Ember's repository): where boot
//! structures, RAM, the 32-bit MMIO gap and the interrupt controllers live.

/// Size of one guest page.
pub const PAGE_SIZE: u64 = 0x1000;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;

/// GDT used for the 64-bit and PVH entries.
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT left empty at boot, right after the GDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// `hvm_start_info` for the PVH boot protocol.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map, after the module list.
pub const PVH_MEMMAP_START: u64 = 0x6060;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot processor (grows down).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, then PDPT, then the page directories.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// First page directory of the boot identity map (one per GiB mapped).
pub const PDE_START: u64 = 0xb000;
/// Gigabytes identity-mapped for the 64-bit entry (covers the MMIO gap).
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line the boot protocol accepts, including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area: RAM below it is usable by the guest.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the MP floating pointer and configuration table are written.
pub const MPTABLE_START: u64 = 0xf0000;
/// End (exclusive) of the area reserved for the MP table.
pub const MPTABLE_END: u64 = 0x100000;
/// Start of high memory, where the kernel is loaded.
pub const HIMEM_START: u64 = 0x100000;

/// Start of the 32-bit MMIO gap (3 GiB): no RAM from here to 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Size of the 32-bit MMIO gap.
pub const MMIO_GAP_SIZE: u64 = MMIO_GAP_END - MMIO_GAP_START;

/// The boot-timer device: a one-byte write of 123 at offset 0 marks "init reached".
pub const BOOT_TIMER_START: u64 = MMIO_GAP_START;
/// Size of the boot-timer device's MMIO window.
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
/// First virtio-mmio device window; each device takes [`VIRTIO_MMIO_SIZE`].
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START + 0x1000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC MMIO base (KVM in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base (KVM in-kernel irqchip).
pub const APIC_START: u64 = 0xfee0_0000;

/// First IRQ handed to virtio-mmio devices.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last IRQ available to devices (the IOAPIC has 24 pins).
pub const IRQ_MAX: u32 = 23;
