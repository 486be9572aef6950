//! Registration of guest memory with a KVM VM as user memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::{Error, GuestMemoryMmap, Result};

/// Registers every region of `mem` with `vm`, one slot per region, numbered from 0.
///
/// # Safety
/// KVM keeps the host addresses of the mappings: `mem` must outlive every use of
/// `vm` that can run guest code or touch guest memory (drop the VM first).
pub unsafe fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<()> {
    for (index, region) in mem.iter().enumerate() {
        let slot = u32::try_from(index).map_err(|_| Error::TooManyRegions(index))?;
        let guest_addr = region.start_addr().0;
        let host_addr = region.as_ptr() as u64;
        let slot_desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest_addr,
            memory_size: region.len(),
            userspace_addr: host_addr,
        };
        // SAFETY: the slot describes a live mapping owned by `mem` (host address and
        // length come from the region itself), and this function's contract makes
        // the caller keep `mem` alive for as long as `vm` can use it.
        unsafe { vm.set_user_memory_region(slot_desc) }.map_err(|source| Error::RegisterSlot {
            slot,
            guest_addr,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{create_guest_memory, MemoryLayout};

    #[test]
    fn regions_become_slots() {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm is needed for this test");
        let vm = kvm.create_vm().unwrap();
        let mem = create_guest_memory(&MemoryLayout::with_mib(4096 + 2, 48).unwrap()).unwrap();
        // SAFETY: `mem` outlives `vm` (declared before it, dropped after it).
        unsafe { register_with_kvm(&vm, &mem) }.unwrap();
        drop(vm);
    }
}
