//! VM-wide state every x86_64 vCPU relies on: the TSS and identity-map pages
//! VMX needs for real mode, the in-kernel irqchip (PIC, IOAPIC, local APICs)
//! and the in-kernel PIT.

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;

use crate::{kvm_err, Result};

/// Three pages just below the BIOS area KVM uses for the TSS on Intel hosts.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// The page after the TSS, for the EPT identity map on Intel hosts.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Creates the TSS area, the in-kernel irqchip and the PIT on `vm`. Call it once,
/// before creating vCPUs.
pub fn setup_platform(vm: &VmFd) -> Result<()> {
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_platform_is_created_once() {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm is needed for this test");
        let vm = kvm.create_vm().unwrap();
        setup_platform(&vm).unwrap();
        // A second irqchip is refused by KVM and reported, not panicked on.
        let err = setup_platform(&vm).unwrap_err();
        assert!(err.to_string().contains("failed"), "{err}");
    }
}
