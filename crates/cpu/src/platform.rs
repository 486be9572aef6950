//! VM-wide state every x86_64 vCPU relies on: the TSS and identity-map pages
//! VMX needs for real mode, the in-kernel irqchip (PIC, IOAPIC, local APICs)
//! and the in-kernel PIT; and their state for snapshots ([`VmState`]).

use std::fmt;

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

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

/// The VM-wide state KVM holds for a VM set up by [`setup_platform`]: the
/// in-kernel interrupt controllers, the PIT and kvmclock. Each vCPU's own
/// state is a [`crate::VcpuState`].
#[derive(Clone, Copy, Serialize, Deserialize)]
pub struct VmState {
    /// The master 8259 PIC (`KVM_GET_IRQCHIP`, chip `KVM_IRQCHIP_PIC_MASTER`).
    pub pic_master: kvm_irqchip,
    /// The slave 8259 PIC (chip `KVM_IRQCHIP_PIC_SLAVE`).
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC (chip `KVM_IRQCHIP_IOAPIC`).
    pub ioapic: kvm_irqchip,
    /// The 8254 PIT's channels (`KVM_GET_PIT2`).
    pub pit: kvm_pit_state2,
    /// kvmclock (`KVM_GET_CLOCK`).
    pub clock: kvm_clock_data,
}

impl fmt::Debug for VmState {
    // `kvm_irqchip` is a union and has no `Debug`: the chips are left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmState")
            .field("pit", &self.pit)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

fn get_irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(kvm_err("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Reads `vm`'s PICs, IOAPIC, PIT and kvmclock. Stop the vCPUs first.
pub fn save_vm_state(vm: &VmFd) -> Result<VmState> {
    Ok(VmState {
        pic_master: get_irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: get_irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: get_irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?,
    })
}

/// Writes `state` into `vm`, which [`setup_platform`] has set up, before its
/// vCPUs run.
///
/// kvmclock resumes from the saved value, the time between save and restore
/// left out (as Firecracker does by default). `KVM_GET_CLOCK` reports flags
/// (`KVM_CLOCK_TSC_STABLE`, `KVM_CLOCK_HOST_TSC`, `KVM_CLOCK_REALTIME`) that
/// describe the reading; `KVM_SET_CLOCK` takes only `KVM_CLOCK_REALTIME` (to
/// add the elapsed wall-clock time) and older kernels refuse any flag, so they
/// are all cleared.
pub fn restore_vm_state(vm: &VmFd, state: &VmState) -> Result<()> {
    vm.set_pit2(&state.pit).map_err(kvm_err("KVM_SET_PIT2"))?;
    let clock = kvm_clock_data {
        flags: 0,
        ..state.clock
    };
    vm.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        vm.set_irqchip(chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kvm_bindings::kvm_pit_channel_state;

    use super::*;

    #[test]
    fn kvm_platform_is_created_once() {
        let kvm = crate::kvm_for_test();
        let vm = kvm.create_vm().unwrap();
        setup_platform(&vm).unwrap();
        // A second irqchip is refused by KVM and reported, not panicked on.
        let err = setup_platform(&vm).unwrap_err();
        assert!(err.to_string().contains("failed"), "{err}");
    }

    /// Far beyond the few milliseconds a fresh VM's kvmclock has counted.
    const CLOCK_WRITTEN_NS: u64 = 1 << 42;
    const NS_PER_MINUTE: u64 = 60_000_000_000;

    fn platform() -> (kvm_ioctls::Kvm, VmFd) {
        let kvm = crate::kvm_for_test();
        let vm = kvm.create_vm().unwrap();
        setup_platform(&vm).unwrap();
        (kvm, vm)
    }

    /// A VM with some state changed in every part, and its saved state.
    fn changed_vm_state(vm: &VmFd) -> VmState {
        let mut master = get_irqchip(vm, KVM_IRQCHIP_PIC_MASTER).unwrap();
        master.chip.pic.imr = 0xa5;
        vm.set_irqchip(&master).unwrap();
        let mut ioapic = get_irqchip(vm, KVM_IRQCHIP_IOAPIC).unwrap();
        // SAFETY: chip 2 is the IOAPIC, so `ioapic` is the member KVM filled,
        // and any bits are a valid redirection entry.
        unsafe { ioapic.chip.ioapic.redirtbl[5].bits = 0x0300_0000_0001_0035 };
        vm.set_irqchip(&ioapic).unwrap();
        // Channel 2 (the speaker's) runs no host timer, so its state stays put.
        let mut pit = vm.get_pit2().unwrap();
        pit.channels[2].count = 0x1234;
        pit.channels[2].mode = 2;
        vm.set_pit2(&pit).unwrap();
        let clock = kvm_clock_data {
            clock: CLOCK_WRITTEN_NS,
            ..Default::default()
        };
        vm.set_clock(&clock).unwrap();
        save_vm_state(vm).unwrap()
    }

    fn chip_json(chip: &kvm_irqchip) -> Vec<u8> {
        serde_json::to_vec(chip).unwrap()
    }

    #[test]
    fn kvm_vm_state_round_trips_through_a_fresh_vm() {
        let (kvm, vm) = platform();
        let saved = changed_vm_state(&vm);
        // SAFETY: chip 0 is a PIC, so `pic` is the member KVM filled.
        assert_eq!(unsafe { saved.pic_master.chip.pic }.imr, 0xa5);
        // SAFETY: chip 2 is the IOAPIC, so `ioapic` is the member KVM filled.
        let entry = unsafe { saved.ioapic.chip.ioapic.redirtbl[5].bits };
        assert_eq!(entry, 0x0300_0000_0001_0035);
        assert_eq!(saved.pit.channels[2].count, 0x1234);
        assert!(saved.clock.clock >= CLOCK_WRITTEN_NS);

        let fresh = kvm.create_vm().unwrap();
        setup_platform(&fresh).unwrap();
        restore_vm_state(&fresh, &saved).unwrap();
        let again = save_vm_state(&fresh).unwrap();

        assert_eq!(chip_json(&again.pic_master), chip_json(&saved.pic_master));
        assert_eq!(chip_json(&again.pic_slave), chip_json(&saved.pic_slave));
        assert_eq!(chip_json(&again.ioapic), chip_json(&saved.ioapic));
        assert_eq!(again.pit.flags, saved.pit.flags);
        for (channel, (again, saved)) in again
            .pit
            .channels
            .iter()
            .zip(&saved.pit.channels)
            .enumerate()
        {
            // KVM_SET_PIT2 reloads each channel's count, and stamps the
            // reload with the current time.
            let again = kvm_pit_channel_state {
                count_load_time: saved.count_load_time,
                ..*again
            };
            assert_eq!(again, *saved, "PIT channel {channel}");
        }
        // kvmclock went on from the saved value (a fresh VM's is far below it).
        let elapsed = again.clock.clock.checked_sub(saved.clock.clock);
        assert!(
            elapsed.is_some_and(|ns| ns < NS_PER_MINUTE),
            "{} then {}",
            saved.clock.clock,
            again.clock.clock
        );
    }

    #[test]
    fn kvm_vm_state_survives_json() {
        let (_kvm, vm) = platform();
        let saved = changed_vm_state(&vm);
        let json = serde_json::to_vec(&saved).unwrap();
        let back: VmState = serde_json::from_slice(&json).unwrap();
        assert_eq!(serde_json::to_vec(&back).unwrap(), json);
        assert_eq!((back.pit, back.clock), (saved.pit, saved.clock));
        assert_eq!(chip_json(&back.ioapic), chip_json(&saved.ioapic));
    }
}
