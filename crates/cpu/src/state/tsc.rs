//! The TSC frequency a vCPU ran at, and bringing a restored vCPU to it.

use kvm_ioctls::VcpuFd;

use crate::{kvm_err, Error, Result};

/// Frequencies within this many parts per million of each other count as the
/// same: hosts calibrate their TSC at boot, so identical CPUs differ slightly.
const SAME_FREQUENCY_PPM: u64 = 250;

/// Whether a TSC of `host` kHz can stand for one of `saved` kHz.
pub(crate) fn same_frequency(saved: u32, host: u32) -> bool {
    u64::from(saved.abs_diff(host)) * 1_000_000 <= u64::from(saved) * SAME_FREQUENCY_PPM
}

/// Sets `vcpu`'s TSC to `saved` kHz when it runs at another frequency;
/// `can_scale` says whether KVM has `KVM_CAP_TSC_CONTROL`.
pub(crate) fn restore_tsc_khz(vcpu: &VcpuFd, saved: u32, can_scale: bool) -> Result<()> {
    let host = vcpu.get_tsc_khz().map_err(kvm_err("KVM_GET_TSC_KHZ"))?;
    if same_frequency(saved, host) {
        return Ok(());
    }
    if !can_scale {
        return Err(Error::TscScalingUnsupported { saved, host });
    }
    vcpu.set_tsc_khz(saved).map_err(|source| Error::TscScaling {
        saved,
        host,
        source,
    })
}
