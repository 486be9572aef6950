//! The MSRs a snapshot carries: which ones KVM can save, reading them in
//! batches, and writing them back in the order KVM needs.

use kvm_bindings::{kvm_msr_entry, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::cpuid::{host_brand_string, normalize, Topology};
use crate::msr::MSR_IA32_TSC_DEADLINE;
use crate::platform::setup_platform;
use crate::{kvm_err, Error, Result};

/// The MSRs of KVM's index list (`KVM_GET_MSR_INDEX_LIST`) that a vCPU set up
/// as [`crate::Vcpu::configure`] does can read, in the order to save and
/// restore them (`IA32_TSC_DEADLINE` last, after the TSC).
///
/// KVM lists some MSRs it then refuses for the vCPU's CPUID (the PMU's, for
/// example, which Ember hides), so this probes a scratch VM with the in-kernel
/// irqchip and one vCPU with Ember's CPUID. Call it once per VM and pass the
/// list to every [`crate::Vcpu::save_state`].
pub fn saveable_msrs(kvm: &Kvm) -> Result<Vec<u32>> {
    let listed = kvm
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    setup_platform(&vm)?;
    let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let topology = Topology {
        vcpu_index: 0,
        vcpu_count: 1,
        threads_per_core: 1,
    };
    normalize(&mut cpuid, topology, &host_brand_string())?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
    let mut readable: Vec<u32> = read_msrs(&vcpu, listed.as_slice())?
        .iter()
        .map(|entry| entry.index)
        .collect();
    readable.sort_by_key(|&index| index == MSR_IA32_TSC_DEADLINE);
    Ok(readable)
}

/// Reads the MSRs `indices` names from `vcpu`, at most `KVM_MAX_MSR_ENTRIES`
/// to a `KVM_GET_MSRS`. KVM stops a batch at the first MSR it refuses; that
/// one is left out and the batch goes on after it.
pub(crate) fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>> {
    let mut read = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::FamList("MSR"))?;
        let count = vcpu.get_msrs(&mut msrs).map_err(kvm_err("KVM_GET_MSRS"))?;
        read.extend_from_slice(&msrs.as_slice()[..count.min(batch.len())]);
        let skip_refused = usize::from(count < batch.len());
        rest = &rest[(count + skip_refused).min(rest.len())..];
    }
    Ok(read)
}

/// `saved` with `IA32_TSC_DEADLINE` moved after everything else, the rest in
/// their order.
pub(crate) fn in_restore_order(saved: &[kvm_msr_entry]) -> Vec<kvm_msr_entry> {
    let mut ordered = saved.to_vec();
    ordered.sort_by_key(|entry| entry.index == MSR_IA32_TSC_DEADLINE);
    ordered
}

/// Writes `saved` to `vcpu` in batches, `IA32_TSC_DEADLINE` after everything
/// else; an MSR KVM refuses is an error naming it.
pub(crate) fn write_msrs(vcpu: &VcpuFd, saved: &[kvm_msr_entry]) -> Result<()> {
    for batch in in_restore_order(saved).chunks(KVM_MAX_MSR_ENTRIES) {
        let msrs = Msrs::from_entries(batch).map_err(|_| Error::FamList("MSR"))?;
        let written = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if let Some(refused) = batch.get(written) {
            return Err(Error::MsrNotWritten(refused.index));
        }
    }
    Ok(())
}
