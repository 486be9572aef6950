use kvm_bindings::{kvm_msr_entry, Msrs, KVM_MP_STATE_UNINITIALIZED};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::msrs::in_restore_order;
use super::tsc::same_frequency;
use super::*;
use crate::lapic::{read_register, write_register};
use crate::msr::{MSR_IA32_SYSENTER_EIP, MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE};
use crate::platform::setup_platform;
use crate::EntryPoint;

/// The LAPIC's LVT timer register, and its TSC-deadline mode.
const APIC_LVTT: usize = 0x320;
const LVTT_TSC_DEADLINE: u32 = 0b10 << 17;
/// Far beyond the few seconds a fresh vCPU's TSC has counted.
const TSC_WRITTEN: u64 = 1 << 42;

fn kvm() -> Kvm {
    crate::kvm_for_test()
}

/// A VM with the platform `setup_platform` creates and `count` fresh vCPUs.
fn machine(kvm: &Kvm, count: u8) -> (VmFd, Vec<Vcpu>) {
    let vm = kvm.create_vm().unwrap();
    setup_platform(&vm).unwrap();
    let vcpus = (0..count).map(|i| Vcpu::new(&vm, i).unwrap()).collect();
    (vm, vcpus)
}

/// A machine whose vCPUs are configured as the VMM does: vCPU 0 at a 64-bit
/// entry point, the others waiting for INIT/SIPI.
fn configured_machine(kvm: &Kvm, count: u8) -> (VmFd, Vec<Vcpu>) {
    let (vm, vcpus) = machine(kvm, count);
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    for vcpu in &vcpus {
        let entry = (vcpu.index() == 0).then_some(EntryPoint::Linux64 { entry: 0x10_0000 });
        vcpu.configure(kvm, &cpuid, count, 1, &mem, entry).unwrap();
    }
    (vm, vcpus)
}

fn msr(state: &VcpuState, index: u32) -> Option<u64> {
    state.msrs.iter().find(|e| e.index == index).map(|e| e.data)
}

fn write_msr(vcpu: &Vcpu, index: u32, data: u64) {
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }])
    .unwrap();
    assert_eq!(vcpu.fd().set_msrs(&msrs).unwrap(), 1);
}

/// A configured boot vCPU with some state changed, and its saved state.
fn changed_boot_vcpu(kvm: &Kvm, msrs: &[u32]) -> (VmFd, Vec<Vcpu>, VcpuState) {
    let (vm, vcpus) = configured_machine(kvm, 1);
    let vcpu = &vcpus[0];
    let mut regs = vcpu.fd().get_regs().unwrap();
    regs.rax = 0x1234_5678_9abc_def0;
    regs.r15 = 0x55;
    vcpu.fd().set_regs(&regs).unwrap();
    let mut debug_regs = vcpu.fd().get_debug_regs().unwrap();
    debug_regs.db[0] = 0x4000;
    vcpu.fd().set_debug_regs(&debug_regs).unwrap();
    write_msr(vcpu, MSR_IA32_SYSENTER_EIP, 0xffff_ffff_8123_4560);
    write_msr(vcpu, MSR_IA32_TSC, TSC_WRITTEN);
    let state = vcpu.save_state(msrs).unwrap();
    (vm, vcpus, state)
}

#[test]
fn kvm_saveable_msrs_put_the_tsc_before_its_deadline() {
    let msrs = saveable_msrs(&kvm()).unwrap();
    let tsc = msrs.iter().position(|&i| i == MSR_IA32_TSC).unwrap();
    if let Some(deadline) = msrs.iter().position(|&i| i == MSR_IA32_TSC_DEADLINE) {
        assert!(tsc < deadline, "{msrs:x?}");
        assert_eq!(deadline, msrs.len() - 1);
    }
    assert!(msrs.contains(&MSR_IA32_SYSENTER_EIP), "{msrs:x?}");
}

#[test]
fn kvm_vcpu_state_round_trips_through_a_fresh_vcpu() {
    let kvm = kvm();
    let msrs = saveable_msrs(&kvm).unwrap();
    let (_vm, _vcpus, saved) = changed_boot_vcpu(&kvm, &msrs);
    assert_eq!(saved.regs.rax, 0x1234_5678_9abc_def0);
    assert_eq!(saved.debug_regs.db[0], 0x4000);
    assert_eq!(
        msr(&saved, MSR_IA32_SYSENTER_EIP),
        Some(0xffff_ffff_8123_4560)
    );
    assert_eq!(saved.msrs.len(), msrs.len(), "every saveable MSR reads");

    let (_vm2, fresh) = machine(&kvm, 1);
    fresh[0].restore_state(&saved).unwrap();
    let mut again = fresh[0].save_state(&msrs).unwrap();

    // The TSC kept counting between the two saves: it must have gone on from
    // the restored value (a fresh vCPU's is far below it), then is compared as equal.
    let (tsc_saved, tsc_again) = (msr(&saved, MSR_IA32_TSC), msr(&again, MSR_IA32_TSC));
    assert!(tsc_saved.unwrap() >= TSC_WRITTEN);
    assert!(tsc_again >= tsc_saved, "{tsc_again:?} < {tsc_saved:?}");
    for entry in &mut again.msrs {
        if entry.index == MSR_IA32_TSC {
            entry.data = tsc_saved.unwrap();
        }
    }
    assert_eq!(again, saved);
}

#[test]
fn kvm_tsc_deadline_timer_survives_restore() {
    let kvm = kvm();
    let msrs = saveable_msrs(&kvm).unwrap();
    let (_vm, vcpus) = configured_machine(&kvm, 1);
    let vcpu = &vcpus[0];
    let mut lapic = vcpu.fd().get_lapic().unwrap();
    write_register(&mut lapic, APIC_LVTT, LVTT_TSC_DEADLINE | 0xec);
    vcpu.fd().set_lapic(&lapic).unwrap();
    write_msr(vcpu, MSR_IA32_TSC, TSC_WRITTEN);
    // A deadline far ahead, so the timer does not fire during the test. (What
    // the TSC-first order prevents, a timer armed against the fresh vCPU's TSC,
    // shows only once the guest runs; `msrs_are_written_tsc_first` pins the order.)
    let deadline = TSC_WRITTEN + (1 << 40);
    write_msr(vcpu, MSR_IA32_TSC_DEADLINE, deadline);
    let saved = vcpu.save_state(&msrs).unwrap();
    assert_eq!(msr(&saved, MSR_IA32_TSC_DEADLINE), Some(deadline));

    let (_vm2, fresh) = machine(&kvm, 1);
    fresh[0].restore_state(&saved).unwrap();
    let again = fresh[0].save_state(&msrs).unwrap();
    assert_eq!(msr(&again, MSR_IA32_TSC_DEADLINE), Some(deadline));
    assert_eq!(
        read_register(&again.lapic, APIC_LVTT),
        LVTT_TSC_DEADLINE | 0xec
    );
}

#[test]
fn kvm_unstarted_application_processor_stays_waiting() {
    let kvm = kvm();
    let msrs = saveable_msrs(&kvm).unwrap();
    let (_vm, vcpus) = configured_machine(&kvm, 2);
    let saved: Vec<VcpuState> = vcpus.iter().map(|v| v.save_state(&msrs).unwrap()).collect();
    assert_eq!(saved[1].mp_state.mp_state, KVM_MP_STATE_UNINITIALIZED);

    let (_vm2, fresh) = machine(&kvm, 2);
    for (vcpu, state) in fresh.iter().zip(&saved) {
        vcpu.restore_state(state).unwrap();
    }
    let ap = fresh[1].save_state(&msrs).unwrap();
    assert_eq!(ap.mp_state, saved[1].mp_state);
    assert_eq!(ap.regs, saved[1].regs);
    assert_eq!(ap.lapic, saved[1].lapic);
}

#[test]
fn kvm_vcpu_state_survives_json() {
    let kvm = kvm();
    let msrs = saveable_msrs(&kvm).unwrap();
    let (_vm, _vcpus, saved) = changed_boot_vcpu(&kvm, &msrs);
    let json = serde_json::to_vec(&saved).unwrap();
    let back: VcpuState = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, saved);
}

#[test]
fn kvm_short_xsave_area_is_refused() {
    let kvm = kvm();
    let (_vm, _vcpus, mut saved) = changed_boot_vcpu(&kvm, &[]);
    saved.xsave = Some(vec![0; 16]);
    let (_vm2, fresh) = machine(&kvm, 1);
    let err = fresh[0].restore_state(&saved).unwrap_err();
    assert!(
        matches!(err, Error::XsaveTooSmall { saved: 64, .. }),
        "{err}"
    );
}

#[test]
fn kvm_other_tsc_frequency_is_scaled_or_refused() {
    let kvm = kvm();
    let (_vm, _vcpus, mut saved) = changed_boot_vcpu(&kvm, &[]);
    let (_vm2, fresh) = machine(&kvm, 1);
    let host = fresh[0].fd().get_tsc_khz().unwrap();
    let other = host - host / 10;
    saved.tsc_khz = Some(other);
    match fresh[0].restore_state(&saved) {
        Ok(()) => assert_eq!(fresh[0].fd().get_tsc_khz().unwrap(), other),
        Err(Error::TscScalingUnsupported { saved, host: seen }) => {
            assert!(!fresh[0].state_support().tsc_control);
            assert_eq!((saved, seen), (other, host));
        }
        Err(err) => panic!("unexpected error: {err}"),
    }
}

#[test]
fn msrs_are_written_tsc_first() {
    let entry = |index| kvm_msr_entry {
        index,
        ..Default::default()
    };
    let saved = [
        entry(MSR_IA32_TSC_DEADLINE),
        entry(MSR_IA32_SYSENTER_EIP),
        entry(MSR_IA32_TSC),
    ];
    let order: Vec<u32> = in_restore_order(&saved).iter().map(|e| e.index).collect();
    assert_eq!(
        order,
        [MSR_IA32_SYSENTER_EIP, MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE]
    );
}

#[test]
fn tsc_frequencies_within_250_ppm_are_the_same() {
    assert!(same_frequency(2_000_000, 2_000_000));
    assert!(same_frequency(2_000_000, 2_000_500));
    assert!(same_frequency(2_000_000, 1_999_500));
    assert!(!same_frequency(2_000_000, 2_000_501));
    assert!(!same_frequency(2_000_000, 1_000_000));
}

#[test]
fn fpu_state_converts_both_ways() {
    let fpu = FpuState {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        last_ip: 7,
        xmm: [[3; 16]; 16],
        ..Default::default()
    };
    let kvm_fpu: kvm_bindings::kvm_fpu = fpu.into();
    assert_eq!(
        (kvm_fpu.fcw, kvm_fpu.mxcsr, kvm_fpu.xmm[15][15]),
        (0x37f, 0x1f80, 3)
    );
    assert_eq!(FpuState::from(kvm_fpu), fpu);
}
