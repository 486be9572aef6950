//! Identity page tables for entering a kernel in 64-bit mode: the first
//! [`IDENTITY_MAPPED_GIB`] GiB mapped with 2 MiB pages, which covers low RAM,
//! the MMIO gap and the local APIC.

use ember_memory::layout::{IDENTITY_MAPPED_GIB, PDE_START, PDPTE_START, PML4_START};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::{Error, Result};

const PRESENT_WRITABLE: u64 = 0x3;
const HUGE_PAGE: u64 = 0x80;
const ENTRIES: u64 = 512;

fn write_table<M: GuestMemoryBackend>(
    mem: &M,
    addr: u64,
    entry: impl Fn(u64) -> u64,
) -> Result<()> {
    let mut table = Vec::with_capacity(4096);
    for i in 0..ENTRIES {
        table.extend_from_slice(&entry(i).to_le_bytes());
    }
    mem.write_slice(&table, GuestAddress(addr))
        .map_err(|source| Error::GuestMemory {
            what: "boot page tables",
            addr,
            source,
        })
}

/// Writes the identity map into `mem` and returns the value for CR3.
///
/// # Example
///
/// ```
/// use ember_cpu::paging::setup_identity_map;
/// use ember_memory::layout::PML4_START;
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
/// assert_eq!(setup_identity_map(&mem)?, PML4_START);
/// # Ok::<(), ember_cpu::Error>(())
/// ```
pub fn setup_identity_map<M: GuestMemoryBackend>(mem: &M) -> Result<u64> {
    write_table(mem, PML4_START, |i| {
        if i == 0 {
            PDPTE_START | PRESENT_WRITABLE
        } else {
            0
        }
    })?;
    write_table(mem, PDPTE_START, |i| {
        if i < IDENTITY_MAPPED_GIB {
            (PDE_START + i * 0x1000) | PRESENT_WRITABLE
        } else {
            0
        }
    })?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        write_table(mem, PDE_START + gib * 0x1000, |i| {
            ((gib * ENTRIES + i) << 21) | PRESENT_WRITABLE | HUGE_PAGE
        })?;
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// Walks the tables like the MMU would for a 2 MiB page.
    fn translate(mem: &GuestMemoryMmap<()>, cr3: u64, va: u64) -> Option<u64> {
        let pml4e: u64 = mem
            .read_obj(GuestAddress(cr3 + ((va >> 39) & 511) * 8))
            .ok()?;
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 511) * 8))
            .ok()?;
        if pdpte & 1 == 0 {
            return None;
        }
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 511) * 8))
            .ok()?;
        if pde & 1 == 0 || pde & HUGE_PAGE == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff) | (va & 0x1f_ffff))
    }

    #[test]
    fn first_4gib_are_identity_mapped() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let cr3 = setup_identity_map(&mem).unwrap();
        for va in [
            0u64,
            0x1234,
            0x10_0000,
            0xc000_0000,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 1 << 32), None);
    }

    #[test]
    fn too_little_memory_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            setup_identity_map(&mem),
            Err(Error::GuestMemory { .. })
        ));
    }
}
