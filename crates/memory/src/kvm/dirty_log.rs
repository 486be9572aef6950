//! Pages written since the last look: KVM's dirty log (the guest's writes)
//! merged with the memory's own bitmaps (the VMM's and devices' writes).

use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryBackend;

use crate::{take_written_pages, Error, GuestMemoryMmap, Result};

/// The pages of each region written since the previous call (or since the
/// slots were registered): one bitmap per region, in guest-address order,
/// bit `i % 64` of word `i / 64` for the region's page `i`. Combines KVM's
/// dirty log of slot `i` for region `i` (the slots must have been registered
/// with [`register_with_kvm_logging_dirty_pages`](crate::register_with_kvm_logging_dirty_pages))
/// with the region's dirty bitmap when it has one ([`take_written_pages`]);
/// both are reset.
///
/// # Example
///
/// Needs `/dev/kvm`, so only compiled here:
///
/// ```no_run
/// use ember_memory::{
///     dirty_pages, map_guest_memory, register_with_kvm_logging_dirty_pages, Backing,
///     DirtyPageTracking, MemoryLayout,
/// };
///
/// let layout = MemoryLayout::with_mib(128, 39)?;
/// let mem = map_guest_memory(&layout, Backing::Anonymous, DirtyPageTracking::On)?;
/// let vm = kvm_ioctls::Kvm::new()?.create_vm()?;
/// // SAFETY: `mem` is declared before `vm`, so it outlives it.
/// unsafe { register_with_kvm_logging_dirty_pages(&vm, &mem) }?;
/// // ... run the guest ...
/// for (region, pages) in dirty_pages(&mem, &vm)?.iter().enumerate() {
///     let count: u32 = pages.iter().map(|word| word.count_ones()).sum();
///     println!("region {region}: {count} pages written");
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn dirty_pages(mem: &GuestMemoryMmap, vm: &VmFd) -> Result<Vec<Vec<u64>>> {
    let written_by_vmm = take_written_pages(mem);
    let mut bitmaps = Vec::with_capacity(mem.num_regions());
    for ((index, region), written) in mem.iter().enumerate().zip(written_by_vmm) {
        let slot = u32::try_from(index).map_err(|_| Error::TooManyRegions(index))?;
        let mut pages = vm
            .get_dirty_log(slot, region.get_mmap().size())
            .map_err(|source| Error::DirtyLog { slot, source })?;
        merge_into(&mut pages, &written);
        bitmaps.push(pages);
    }
    Ok(bitmaps)
}

/// ORs `written` into `pages`, growing `pages` when `written` is longer.
fn merge_into(pages: &mut Vec<u64>, written: &[u64]) {
    if written.len() > pages.len() {
        pages.resize(written.len(), 0);
    }
    for (word, written) in pages.iter_mut().zip(written) {
        *word |= written;
    }
}

#[cfg(test)]
mod tests {
    use kvm_ioctls::{Kvm, VcpuExit};
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::layout::PAGE_SIZE;
    use crate::{map_guest_memory, register_with_kvm_logging_dirty_pages, Backing};
    use crate::{DirtyPageTracking, MemoryLayout};

    /// Real-mode code at address 0: `mov al, 0x42; mov [0x2000], al; hlt`.
    const STORE_AND_HALT: [u8; 6] = [0xb0, 0x42, 0xa2, 0x00, 0x20, 0xf4];

    #[test]
    fn guest_and_host_writes_are_both_reported_then_reset() {
        let kvm = Kvm::new().expect("/dev/kvm is needed for this test");
        let vm = kvm.create_vm().unwrap();
        let layout = MemoryLayout::new(256 * PAGE_SIZE).unwrap();
        let mem = map_guest_memory(&layout, Backing::Anonymous, DirtyPageTracking::On).unwrap();
        mem.write_slice(&STORE_AND_HALT, GuestAddress(0)).unwrap();
        // SAFETY: `mem` outlives `vm` (declared before it, dropped after it).
        unsafe { register_with_kvm_logging_dirty_pages(&vm, &mem) }.unwrap();
        // The host wrote the code: page 0.
        assert_eq!(dirty_pages(&mem, &vm).unwrap(), vec![vec![1, 0, 0, 0]]);
        assert_eq!(dirty_pages(&mem, &vm).unwrap(), vec![vec![0; 4]]);

        mem.write_obj(7u8, GuestAddress(200 * PAGE_SIZE)).unwrap();
        let mut vcpu = vm.create_vcpu(0).unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        for segment in [&mut sregs.cs, &mut sregs.ds] {
            segment.base = 0;
            segment.selector = 0;
        }
        vcpu.set_sregs(&sregs).unwrap();
        let regs = kvm_bindings::kvm_regs {
            rip: 0,
            rflags: 2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).unwrap();
        match vcpu.run().unwrap() {
            VcpuExit::Hlt => {}
            exit => panic!("unexpected exit {exit:?}"),
        }
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x2000)).unwrap(), 0x42);
        // The guest wrote page 2, the host page 200 (word 3, bit 8).
        assert_eq!(
            dirty_pages(&mem, &vm).unwrap(),
            vec![vec![1 << 2, 0, 0, 1 << 8]]
        );
        assert_eq!(dirty_pages(&mem, &vm).unwrap(), vec![vec![0; 4]]);
        drop(vcpu);
        drop(vm);
    }

    #[test]
    fn merging_ors_and_grows() {
        let mut pages = vec![0b0001];
        merge_into(&mut pages, &[0b0100, 0b1000]);
        assert_eq!(pages, vec![0b0101, 0b1000]);
        merge_into(&mut pages, &[]);
        assert_eq!(pages, vec![0b0101, 0b1000]);
    }
}
