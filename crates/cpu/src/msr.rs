//! Model-specific registers a vCPU starts with: syscall and sysenter MSRs
//! cleared, TSC at zero, fast strings on, and write-back MTRR default type.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::{kvm_err, Error, Result};

/// `IA32_TSC`, the time-stamp counter.
pub(crate) const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// `IA32_SYSENTER_EIP`, the kernel entry point of `SYSENTER`.
pub(crate) const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// `IA32_TSC_DEADLINE`: KVM arms the LAPIC timer from it by comparing it with
/// the TSC, so on restore the TSC must already hold its value when it is written.
pub(crate) const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WRITE_BACK: u64 = 6;

/// The MSRs every vCPU is reset to before entering the kernel, as (index, value).
pub const BOOT_MSRS: [(u32, u64); 11] = [
    (MSR_IA32_SYSENTER_CS, 0),
    (MSR_IA32_SYSENTER_ESP, 0),
    (MSR_IA32_SYSENTER_EIP, 0),
    (MSR_STAR, 0),
    (MSR_CSTAR, 0),
    (MSR_KERNEL_GS_BASE, 0),
    (MSR_SYSCALL_MASK, 0),
    (MSR_LSTAR, 0),
    (MSR_IA32_TSC, 0),
    (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRITE_BACK),
];

/// The boot MSRs that `supported` (KVM's MSR index list) contains.
pub fn boot_msrs(supported: &[u32]) -> Result<Msrs> {
    let entries: Vec<kvm_msr_entry> = BOOT_MSRS
        .iter()
        .filter(|(index, _)| supported.contains(index))
        .map(|(index, data)| kvm_msr_entry {
            index: *index,
            data: *data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|_| Error::FamList("MSR"))
}

/// Sets the boot MSRs this host's KVM supports on `vcpu`.
pub fn setup_msrs(kvm: &Kvm, vcpu: &VcpuFd) -> Result<()> {
    let supported = kvm
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
    let msrs = boot_msrs(supported.as_slice())?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    let requested = msrs.as_slice().len();
    if set != requested {
        return Err(Error::MsrsNotSet { set, requested });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_msrs_are_left_out() {
        let msrs = boot_msrs(&[MSR_IA32_TSC, MSR_LSTAR, 0x1234]).unwrap();
        let indices: Vec<u32> = msrs.as_slice().iter().map(|e| e.index).collect();
        assert_eq!(indices, vec![MSR_LSTAR, MSR_IA32_TSC]);
    }

    #[test]
    fn kvm_msrs_are_set_on_a_real_vcpu() {
        let kvm = crate::kvm_for_test();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        setup_msrs(&kvm, &vcpu).unwrap();
        let mut readback = boot_msrs(kvm.get_msr_index_list().unwrap().as_slice()).unwrap();
        for e in readback.as_mut_slice() {
            e.data = 0xdead;
        }
        vcpu.get_msrs(&mut readback).unwrap();
        for e in readback.as_slice() {
            if e.index == MSR_IA32_TSC {
                continue; // the TSC has moved on since it was set
            }
            let (_, want) = BOOT_MSRS.iter().find(|(i, _)| *i == e.index).unwrap();
            assert_eq!(e.data, *want, "MSR {:#x}", e.index);
        }
    }
}
