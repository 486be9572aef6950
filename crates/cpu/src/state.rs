//! A vCPU's state for snapshots: [`VcpuState`], read from KVM by
//! [`Vcpu::save_state`] and written back by [`Vcpu::restore_state`].
//!
//! A state is plain data (serde), so it can be stored in any format and
//! restored into a fresh vCPU of a fresh VM on the same or a compatible host.
//! The VM-wide part (irqchip, PIT, clock) is [`crate::platform::VmState`].
//!
//! ```no_run
//! use ember_cpu::{platform::setup_platform, saveable_msrs, Vcpu};
//!
//! # fn main() -> ember_cpu::Result<()> {
//! let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
//! let vm = kvm.create_vm().expect("a VM");
//! setup_platform(&vm)?;
//! let vcpu = Vcpu::new(&vm, 0)?;
//! // ... configure and run the vCPU, then stop it ...
//! let msrs = saveable_msrs(&kvm)?; // once per VM
//! let state = vcpu.save_state(&msrs)?;
//!
//! let new_vm = kvm.create_vm().expect("a VM");
//! setup_platform(&new_vm)?;
//! let new_vcpu = Vcpu::new(&new_vm, 0)?;
//! new_vcpu.restore_state(&state)?;
//! # Ok(())
//! # }
//! ```

mod fpu;
mod msrs;
#[cfg(test)]
mod tests;
mod tsc;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, CpuId, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, VmFd};
use serde::{Deserialize, Serialize};

pub use fpu::FpuState;
pub use msrs::saveable_msrs;

use crate::{kvm_err, Error, Result, Vcpu};

/// Everything KVM holds for one vCPU, as [`Vcpu::save_state`] reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU's CPUID (`KVM_GET_CPUID2`).
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// The saved MSRs (`KVM_GET_MSRS`), in the order they are restored.
    pub msrs: Vec<kvm_msr_entry>,
    /// General registers (`KVM_GET_REGS`).
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers (`KVM_GET_SREGS`).
    pub sregs: kvm_sregs,
    /// x87 and SSE registers (`KVM_GET_FPU`).
    pub fpu: FpuState,
    /// The XSAVE area as 32-bit words (`KVM_GET_XSAVE`, or `KVM_GET_XSAVE2`
    /// when the area is larger than 4 KiB); `None` without `KVM_CAP_XSAVE`.
    pub xsave: Option<Vec<u32>>,
    /// Extended control registers (`KVM_GET_XCRS`); `None` without `KVM_CAP_XCRS`.
    pub xcrs: Option<kvm_xcrs>,
    /// Debug registers (`KVM_GET_DEBUGREGS`).
    pub debug_regs: kvm_debugregs,
    /// The in-kernel local APIC (`KVM_GET_LAPIC`).
    pub lapic: kvm_lapic_state,
    /// Run state (`KVM_GET_MP_STATE`): an application processor still waiting
    /// for INIT/SIPI stays waiting after restore.
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs and SMIs (`KVM_GET_VCPU_EVENTS`).
    pub vcpu_events: kvm_vcpu_events,
    /// TSC frequency in kHz (`KVM_GET_TSC_KHZ`); `None` when KVM cannot tell.
    pub tsc_khz: Option<u32>,
}

/// What the vCPU's KVM can save beyond the basic registers, learnt from the VM
/// when the vCPU is created.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StateSupport {
    /// Bytes of the XSAVE area KVM copies; `None` without `KVM_CAP_XSAVE`.
    xsave_bytes: Option<usize>,
    /// `KVM_CAP_XCRS`.
    xcrs: bool,
    /// `KVM_CAP_GET_TSC_KHZ`.
    get_tsc_khz: bool,
    /// `KVM_CAP_TSC_CONTROL`: KVM can scale the vCPU's TSC.
    tsc_control: bool,
}

impl StateSupport {
    /// Asks `vm` which state KVM can save.
    pub(crate) fn of(vm: &VmFd) -> StateSupport {
        StateSupport {
            xsave_bytes: vm
                .check_extension(Cap::Xsave)
                .then(|| fpu::xsave_area_bytes(vm.check_extension_int(Cap::Xsave2))),
            xcrs: vm.check_extension(Cap::Xcrs),
            get_tsc_khz: vm.check_extension(Cap::GetTscKhz),
            tsc_control: vm.check_extension(Cap::TscControl),
        }
    }
}

impl Vcpu {
    /// Reads this vCPU's state; `msrs` is the list [`saveable_msrs`] returned
    /// for the VM (an MSR KVM refuses to read on this vCPU is left out).
    ///
    /// The vCPU must not be running. `KVM_GET_MP_STATE` comes first because it
    /// lets KVM accept pending INIT/SIPI events, which changes the registers and
    /// the LAPIC; the vCPU events come last, after every read that could still
    /// change them.
    pub fn save_state(&self, msrs: &[u32]) -> Result<VcpuState> {
        let fd = self.fd();
        let support = self.state_support();
        let mp_state = fd.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?;
        let regs = fd.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        let fpu = fd.get_fpu().map_err(kvm_err("KVM_GET_FPU"))?.into();
        let xsave = support
            .xsave_bytes
            .map(|bytes| fpu::save_xsave(fd, bytes))
            .transpose()?;
        let xcrs = support
            .xcrs
            .then(|| fd.get_xcrs().map_err(kvm_err("KVM_GET_XCRS")))
            .transpose()?;
        let debug_regs = fd.get_debug_regs().map_err(kvm_err("KVM_GET_DEBUGREGS"))?;
        let lapic = fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
        // KVM fails KVM_GET_TSC_KHZ when the host's TSC frequency is unknown;
        // such a state is restored without scaling.
        let tsc_khz = support.get_tsc_khz.then(|| fd.get_tsc_khz().ok()).flatten();
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let msrs = msrs::read_msrs(fd, msrs)?;
        let vcpu_events = fd
            .get_vcpu_events()
            .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?;
        Ok(VcpuState {
            cpuid,
            msrs,
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            mp_state,
            vcpu_events,
            tsc_khz,
        })
    }

    /// Writes `state` into this vCPU, which must be freshly created (with the
    /// same index) in a VM set up by [`crate::platform::setup_platform`] and
    /// not running. Register the guest memory first: MSRs such as kvmclock's
    /// and async page faults' point into it, and KVM refuses them otherwise.
    ///
    /// The order follows KVM's dependencies: CPUID first (KVM checks the other
    /// state against it), then the TSC frequency (before the TSC MSR is
    /// written at that rate), the MP state, registers (`KVM_SET_REGS` drops
    /// pending exceptions, so the events come later), special registers (they
    /// carry the APIC base, needed by the LAPIC), FPU and XSAVE, XCRs, debug
    /// registers, the LAPIC (before the MSRs: `IA32_TSC_DEADLINE` is kept only
    /// when the LAPIC timer is in deadline mode), the MSRs (TSC before
    /// deadline), and the vCPU events last.
    pub fn restore_state(&self, state: &VcpuState) -> Result<()> {
        let fd = self.fd();
        let support = self.state_support();
        let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| Error::FamList("CPUID"))?;
        fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        if let Some(saved) = state.tsc_khz {
            tsc::restore_tsc_khz(fd, saved, support.tsc_control)?;
        }
        fd.set_mp_state(state.mp_state)
            .map_err(kvm_err("KVM_SET_MP_STATE"))?;
        fd.set_regs(&state.regs).map_err(kvm_err("KVM_SET_REGS"))?;
        fd.set_sregs(&state.sregs)
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        fd.set_fpu(&state.fpu.into())
            .map_err(kvm_err("KVM_SET_FPU"))?;
        if let Some(words) = &state.xsave {
            let area_bytes = support.xsave_bytes.unwrap_or(fpu::LEGACY_XSAVE_BYTES);
            fpu::restore_xsave(fd, words, area_bytes)?;
        }
        if let Some(xcrs) = &state.xcrs {
            fd.set_xcrs(xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
        }
        fd.set_debug_regs(&state.debug_regs)
            .map_err(kvm_err("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&state.lapic)
            .map_err(kvm_err("KVM_SET_LAPIC"))?;
        msrs::write_msrs(fd, &state.msrs)?;
        fd.set_vcpu_events(&state.vcpu_events)
            .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))
    }
}
