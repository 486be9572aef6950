//! The floating-point state of a vCPU: the x87/SSE registers of `KVM_GET_FPU`
//! as a serializable struct, and the XSAVE area (`KVM_GET_XSAVE`/`KVM_GET_XSAVE2`)
//! as 32-bit words.

use std::mem::{size_of, size_of_val};

use kvm_bindings::{kvm_fpu, kvm_xsave, Xsave};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use crate::{kvm_err, Error, Result};

/// Bytes in the fixed part of `kvm_xsave`, the legacy 4 KiB XSAVE area.
pub(crate) const LEGACY_XSAVE_BYTES: usize = size_of::<kvm_xsave>();
/// Words in the fixed part of `kvm_xsave`.
const XSAVE_REGION_WORDS: usize = LEGACY_XSAVE_BYTES / size_of::<u32>();

/// The x87 and SSE registers of a vCPU, as `kvm_fpu` holds them (`kvm_fpu`
/// itself has no serde support).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    /// x87 data registers ST0-ST7 (80 bits each, in 16 bytes).
    pub fpr: [[u8; 16]; 8],
    /// x87 control word.
    pub fcw: u16,
    /// x87 status word.
    pub fsw: u16,
    /// Abridged x87 tag word.
    pub ftwx: u8,
    /// Opcode of the last x87 instruction.
    pub last_opcode: u16,
    /// Instruction pointer of the last x87 instruction.
    pub last_ip: u64,
    /// Data pointer of the last x87 instruction.
    pub last_dp: u64,
    /// XMM0-XMM15.
    pub xmm: [[u8; 16]; 16],
    /// SSE control and status register.
    pub mxcsr: u32,
}

impl From<kvm_fpu> for FpuState {
    fn from(fpu: kvm_fpu) -> FpuState {
        FpuState {
            fpr: fpu.fpr,
            fcw: fpu.fcw,
            fsw: fpu.fsw,
            ftwx: fpu.ftwx,
            last_opcode: fpu.last_opcode,
            last_ip: fpu.last_ip,
            last_dp: fpu.last_dp,
            xmm: fpu.xmm,
            mxcsr: fpu.mxcsr,
        }
    }
}

impl From<FpuState> for kvm_fpu {
    fn from(fpu: FpuState) -> kvm_fpu {
        kvm_fpu {
            fpr: fpu.fpr,
            fcw: fpu.fcw,
            fsw: fpu.fsw,
            ftwx: fpu.ftwx,
            last_opcode: fpu.last_opcode,
            last_ip: fpu.last_ip,
            last_dp: fpu.last_dp,
            xmm: fpu.xmm,
            mxcsr: fpu.mxcsr,
            ..Default::default()
        }
    }
}

/// The size in bytes of the XSAVE area KVM copies for vCPUs of `vm_xsave2`
/// (the value of `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)`, 0 when unknown): never
/// less than the legacy 4 KiB `kvm_xsave`.
pub(crate) fn xsave_area_bytes(vm_xsave2: i32) -> usize {
    usize::try_from(vm_xsave2)
        .unwrap_or(0)
        .max(LEGACY_XSAVE_BYTES)
}

/// Reads `vcpu`'s XSAVE area of `area_bytes` bytes (see [`xsave_area_bytes`]).
pub(crate) fn save_xsave(vcpu: &VcpuFd, area_bytes: usize) -> Result<Vec<u32>> {
    let extra_words = area_bytes
        .saturating_sub(LEGACY_XSAVE_BYTES)
        .div_ceil(size_of::<u32>());
    if extra_words == 0 {
        let xsave = vcpu.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?;
        return Ok(xsave.region.to_vec());
    }
    let mut xsave = Xsave::new(extra_words).map_err(|_| Error::FamList("XSAVE"))?;
    // SAFETY: `xsave` holds the 4 KiB region plus `extra_words` words, at least
    // the `area_bytes` KVM reported for KVM_CAP_XSAVE2, which is what it writes.
    unsafe { vcpu.get_xsave2(&mut xsave) }.map_err(kvm_err("KVM_GET_XSAVE2"))?;
    let mut words = xsave.as_fam_struct_ref().xsave.region.to_vec();
    words.extend_from_slice(xsave.as_slice());
    Ok(words)
}

/// Writes a saved XSAVE area back to `vcpu`, whose KVM reads `area_bytes` bytes.
pub(crate) fn restore_xsave(vcpu: &VcpuFd, words: &[u32], area_bytes: usize) -> Result<()> {
    let saved = size_of_val(words);
    if saved < area_bytes {
        return Err(Error::XsaveTooSmall {
            saved,
            needed: area_bytes,
        });
    }
    let (region, extra) = words.split_at(XSAVE_REGION_WORDS);
    let mut xsave = Xsave::from_entries(extra).map_err(|_| Error::FamList("XSAVE"))?;
    // SAFETY: only the fixed `region` array is written; the length of the
    // flexible array, which the wrapper relies on, is left as allocated.
    unsafe { xsave.as_mut_fam_struct() }
        .xsave
        .region
        .copy_from_slice(region);
    // SAFETY: the buffer holds `saved` bytes, at least the `area_bytes` KVM
    // reads for KVM_SET_XSAVE on this vCPU.
    unsafe { vcpu.set_xsave2(&xsave) }.map_err(kvm_err("KVM_SET_XSAVE"))
}
