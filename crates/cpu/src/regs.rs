//! Register state at kernel entry: general registers, segments and control
//! registers for the Linux 64-bit boot protocol or the PVH 32-bit entry, and a
//! clean FPU.

use ember_memory::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PVH_INFO_START, ZERO_PAGE_START,
};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::gdt::{gdt_entry, segment_from_gdt, CODE32_FLAGS, CODE64_FLAGS, DATA_FLAGS, TSS_FLAGS};
use crate::paging::setup_identity_map;
use crate::{kvm_err, Error, Result};

const X86_CR0_PE: u64 = 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NW: u64 = 1 << 29;
const X86_CR0_CD: u64 = 1 << 30;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;

/// How the boot processor enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// Linux 64-bit boot protocol: long mode, identity-mapped, RSI = zero page.
    Linux64 {
        /// Guest-physical entry address.
        entry: u64,
    },
    /// PVH: 32-bit protected mode without paging, EBX = `hvm_start_info`.
    Pvh {
        /// Guest-physical entry address.
        entry: u64,
    },
}

/// General registers at entry.
pub fn boot_regs(entry: EntryPoint) -> kvm_regs {
    match entry {
        EntryPoint::Linux64 { entry } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
        EntryPoint::Pvh { entry } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry,
            rbx: PVH_INFO_START,
            ..Default::default()
        },
    }
}

/// The boot GDT for `entry`: null, code, data and TSS descriptors.
pub fn boot_gdt(entry: EntryPoint) -> [u64; 4] {
    match entry {
        EntryPoint::Linux64 { .. } => [
            0,
            gdt_entry(CODE64_FLAGS, 0, 0xfffff),
            gdt_entry(DATA_FLAGS, 0, 0xfffff),
            gdt_entry(TSS_FLAGS, 0, 0xfffff),
        ],
        EntryPoint::Pvh { .. } => [
            0,
            gdt_entry(CODE32_FLAGS, 0, 0xfffff),
            gdt_entry(DATA_FLAGS, 0, 0xfffff),
            gdt_entry(TSS_FLAGS & 0x00ff, 0, 0x67),
        ],
    }
}

fn write_boot_tables<M: GuestMemoryBackend>(mem: &M, gdt: &[u64; 4]) -> Result<()> {
    let bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(BOOT_GDT_START))
        .map_err(|source| Error::GuestMemory {
            what: "boot GDT",
            addr: BOOT_GDT_START,
            source,
        })?;
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|source| Error::GuestMemory {
            what: "boot IDT",
            addr: BOOT_IDT_START,
            source,
        })
}

/// Applies the segment and control register state for `entry` to `sregs`,
/// writing the GDT, an empty IDT and (for 64-bit entry) the page tables to `mem`.
pub fn apply_boot_sregs<M: GuestMemoryBackend>(
    mem: &M,
    entry: EntryPoint,
    sregs: &mut kvm_sregs,
) -> Result<()> {
    let gdt = boot_gdt(entry);
    write_boot_tables(mem, &gdt)?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = u16::try_from(std::mem::size_of_val(&gdt) - 1).unwrap_or(u16::MAX);
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);

    let cr0 = (sregs.cr0 & !(X86_CR0_CD | X86_CR0_NW)) | X86_CR0_ET | X86_CR0_PE;
    match entry {
        EntryPoint::Linux64 { .. } => {
            sregs.cr3 = setup_identity_map(mem)?;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 = cr0 | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryPoint::Pvh { .. } => {
            sregs.cr0 = cr0 & !X86_CR0_PG;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer &= !(EFER_LME | EFER_LMA);
        }
    }
    Ok(())
}

/// A clean FPU: default control word and MXCSR.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Sets general, segment, control and FPU registers of the boot processor.
pub fn setup_boot_registers<M: GuestMemoryBackend>(
    vcpu: &VcpuFd,
    mem: &M,
    entry: EntryPoint,
) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    apply_boot_sregs(mem, entry, &mut sregs)?;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(kvm_err("KVM_SET_REGS"))?;
    vcpu.set_fpu(&boot_fpu()).map_err(kvm_err("KVM_SET_FPU"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_memory::layout::PML4_START;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn linux64_entry_is_long_mode() {
        let mem = mem();
        let entry = EntryPoint::Linux64 { entry: 0x100200 };
        let mut sregs = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        apply_boot_sregs(&mem, entry, &mut sregs).unwrap();
        assert_eq!(sregs.cr0, X86_CR0_PG | X86_CR0_ET | X86_CR0_PE);
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.l, sregs.cs.selector), (1, 8));
        assert_eq!(sregs.ds.selector, 16);
        assert_eq!(sregs.gdt.limit, 31);
        let gdt1: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, gdt_entry(CODE64_FLAGS, 0, 0xfffff));
        let regs = boot_regs(entry);
        assert_eq!(
            (regs.rip, regs.rsi, regs.rflags),
            (0x100200, ZERO_PAGE_START, 2)
        );
    }

    #[test]
    fn pvh_entry_is_flat_protected_mode() {
        let mem = mem();
        let entry = EntryPoint::Pvh { entry: 0x100000 };
        let mut sregs = kvm_sregs {
            cr0: 0x6000_0010,
            efer: EFER_LME,
            ..Default::default()
        };
        apply_boot_sregs(&mem, entry, &mut sregs).unwrap();
        assert_eq!(sregs.cr0, X86_CR0_ET | X86_CR0_PE);
        assert_eq!((sregs.cr3, sregs.cr4, sregs.efer), (0, 0, 0));
        assert_eq!(
            (sregs.cs.l, sregs.cs.db, sregs.cs.limit),
            (0, 1, 0xffff_ffff)
        );
        assert_eq!(sregs.tr.limit, 0x67);
        let regs = boot_regs(entry);
        assert_eq!((regs.rip, regs.rbx), (0x100000, PVH_INFO_START));
    }

    #[test]
    fn fpu_defaults() {
        let fpu = boot_fpu();
        assert_eq!((fpu.fcw, fpu.mxcsr), (0x37f, 0x1f80));
    }
}
