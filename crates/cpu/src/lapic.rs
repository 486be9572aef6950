//! Local APIC wiring at boot: LINT0 delivers ExtINT (the PIC) and LINT1 NMI, as
//! on a PC, so the guest's legacy interrupt paths work.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

use crate::{kvm_err, Result};

/// Register offset of LVT LINT0 in the APIC page.
pub const APIC_LVT0: usize = 0x350;
/// Register offset of LVT LINT1 in the APIC page.
pub const APIC_LVT1: usize = 0x360;
const DELIVERY_MODE_MASK: u32 = 0x700;
const DELIVERY_MODE_NMI: u32 = 0x4 << 8;
const DELIVERY_MODE_EXTINT: u32 = 0x7 << 8;

/// Reads the 32-bit APIC register at `offset`.
pub fn read_register(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = |i: usize| state.regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

/// Writes the 32-bit APIC register at `offset`.
pub(crate) fn write_register(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *byte as std::os::raw::c_char;
    }
}

fn set_delivery_mode(state: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let value = read_register(state, offset);
    write_register(state, offset, (value & !DELIVERY_MODE_MASK) | mode);
}

/// Points LINT0 at ExtINT and LINT1 at NMI in `state`.
pub fn wire_legacy_lints(state: &mut kvm_lapic_state) {
    set_delivery_mode(state, APIC_LVT0, DELIVERY_MODE_EXTINT);
    set_delivery_mode(state, APIC_LVT1, DELIVERY_MODE_NMI);
}

/// Applies [`wire_legacy_lints`] to `vcpu`'s in-kernel local APIC.
pub fn setup_lints(vcpu: &VcpuFd) -> Result<()> {
    let mut state = vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    wire_legacy_lints(&mut state);
    vcpu.set_lapic(&state).map_err(kvm_err("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lints_keep_other_bits() {
        let mut state = kvm_lapic_state::default();
        write_register(&mut state, APIC_LVT0, 0x0001_0000); // masked
        write_register(&mut state, APIC_LVT1, 0x0000_0200);
        wire_legacy_lints(&mut state);
        assert_eq!(read_register(&state, APIC_LVT0), 0x0001_0700);
        assert_eq!(read_register(&state, APIC_LVT1), 0x0000_0400);
    }

    #[test]
    fn kvm_lints_on_a_real_lapic() {
        let kvm = crate::kvm_for_test();
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        setup_lints(&vcpu).unwrap();
        let state = vcpu.get_lapic().unwrap();
        assert_eq!(
            read_register(&state, APIC_LVT0) & DELIVERY_MODE_MASK,
            DELIVERY_MODE_EXTINT
        );
        assert_eq!(
            read_register(&state, APIC_LVT1) & DELIVERY_MODE_MASK,
            DELIVERY_MODE_NMI
        );
    }
}
