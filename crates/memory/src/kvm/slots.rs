//! Registration of guest memory with a KVM VM as user memory slots.

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::{Error, GuestMemoryMmap, Result};

/// Registers every region of `mem` with `vm`, one slot per region, numbered from 0.
///
/// # Safety
/// KVM keeps the host addresses of the mappings: `mem` must outlive every use of
/// `vm` that can run guest code or touch guest memory (drop the VM first).
///
/// # Example
///
/// Needs `/dev/kvm`, so only compiled here:
///
/// ```no_run
/// use ember_memory::{create_guest_memory, register_with_kvm, MemoryLayout};
///
/// // Declared before the VM, so dropped after it.
/// let mem = create_guest_memory(&MemoryLayout::with_mib(4096, 39)?)?;
/// let vm = kvm_ioctls::Kvm::new()?.create_vm()?;
/// // SAFETY: `mem` outlives `vm`.
/// unsafe { register_with_kvm(&vm, &mem) }?;
/// // Slot 0 is RAM below the MMIO gap, slot 1 RAM from 4 GiB up.
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub unsafe fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<()> {
    // SAFETY: this function's contract is `register_slots`'.
    unsafe { register_slots(vm, mem, 0) }
}

/// Registers every region of `mem` with `vm` as [`register_with_kvm`] does,
/// with KVM's dirty log on (`KVM_MEM_LOG_DIRTY_PAGES`): the pages the guest
/// writes are then collected by [`dirty_pages`](crate::dirty_pages).
///
/// # Safety
/// As for [`register_with_kvm`].
pub unsafe fn register_with_kvm_logging_dirty_pages(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
) -> Result<()> {
    // SAFETY: this function's contract is `register_slots`'.
    unsafe { register_slots(vm, mem, KVM_MEM_LOG_DIRTY_PAGES) }
}

/// Registers every region of `mem` with `vm`, slot `i` for region `i`, with `flags`.
///
/// # Safety
/// `mem` must outlive every use of `vm` that can run guest code or touch guest memory.
unsafe fn register_slots(vm: &VmFd, mem: &GuestMemoryMmap, flags: u32) -> Result<()> {
    for (index, region) in mem.iter().enumerate() {
        let slot = u32::try_from(index).map_err(|_| Error::TooManyRegions(index))?;
        let guest_addr = region.start_addr().0;
        let host_addr = region.as_ptr() as u64;
        let slot_desc = kvm_userspace_memory_region {
            slot,
            flags,
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
    use vm_memory::GuestMemoryRegion;

    #[test]
    fn regions_become_slots_with_or_without_the_dirty_log() {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm is needed for this test");
        let vm = kvm.create_vm().unwrap();
        let mem = create_guest_memory(&MemoryLayout::with_mib(4096 + 2, 48).unwrap()).unwrap();
        // SAFETY: `mem` outlives `vm` (declared before it, dropped after it).
        unsafe { register_with_kvm(&vm, &mem) }.unwrap();
        assert!(
            vm.get_dirty_log(0, 2 << 20).is_err(),
            "no dirty log was asked for"
        );
        drop(vm);
        let logged = kvm.create_vm().unwrap();
        // SAFETY: as above, `mem` outlives `logged`.
        unsafe { register_with_kvm_logging_dirty_pages(&logged, &mem) }.unwrap();
        let region_1 = mem.iter().nth(1).unwrap().len();
        let bitmap = logged
            .get_dirty_log(1, usize::try_from(region_1).unwrap())
            .unwrap();
        assert!(bitmap.iter().all(|&word| word == 0));
        drop(logged);
    }
}
