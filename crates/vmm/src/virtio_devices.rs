//! Virtio devices on the MMIO bus: each gets a 4 KiB window from 0xC000_1000
//! and an IRQ from 5, its queue notifications wired as KVM ioeventfds and its
//! interrupt as an irqfd, and an entry on the kernel command line.

use std::sync::{Arc, Mutex};

use ember_devices::virtio::block::Block;
use ember_devices::virtio::{cmdline_entry, MmioTransport};
use ember_devices::Bus;
use ember_memory::layout::{IRQ_MAX, VIRTIO_IRQ_BASE, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use ember_memory::GuestMemoryMmap;
use kvm_ioctls::{IoEventAddress, VmFd};

use crate::config::DriveConfig;
use crate::vm::Subscriber;
use crate::{Error, Result};

/// Offset of QueueNotify in a virtio-mmio window.
const QUEUE_NOTIFY: u64 = ember_devices::virtio::mmio::QUEUE_NOTIFY_OFFSET;

/// A block device as the running VM keeps it.
pub type SharedBlock = Arc<Mutex<Block<GuestMemoryMmap>>>;

/// What attaching the virtio devices produced.
#[derive(Default)]
pub(crate) struct VirtioDevices {
    /// Kernel command-line additions (`virtio_mmio.device=...`, `root=...`).
    pub(crate) cmdline: Vec<String>,
    /// Event-loop subscribers.
    pub(crate) subscribers: Vec<Subscriber>,
    /// Block devices by drive id.
    pub(crate) drives: Vec<(String, SharedBlock)>,
}

/// The kernel command-line arguments that make `drive` the root file system.
fn root_args(drive: &DriveConfig) -> String {
    let device = match &drive.partuuid {
        Some(uuid) => format!("root=PARTUUID={uuid}"),
        None => "root=/dev/vda".to_owned(),
    };
    let mode = if drive.block.read_only { "ro" } else { "rw" };
    format!("{device} {mode}")
}

/// Orders drives as the guest will number them: the root drive first.
pub(crate) fn guest_order(drives: &[DriveConfig]) -> Result<Vec<&DriveConfig>> {
    let roots = drives.iter().filter(|d| d.is_root_device).count();
    if roots > 1 {
        return Err(Error::InvalidConfig(format!(
            "{roots} drives are marked as the root device; at most one can be"
        )));
    }
    for (i, drive) in drives.iter().enumerate() {
        if drives[..i]
            .iter()
            .any(|d| d.block.drive_id == drive.block.drive_id)
        {
            return Err(Error::InvalidConfig(format!(
                "drive id `{}` is used twice",
                drive.block.drive_id
            )));
        }
    }
    let mut ordered: Vec<&DriveConfig> = drives.iter().filter(|d| d.is_root_device).collect();
    ordered.extend(drives.iter().filter(|d| !d.is_root_device));
    Ok(ordered)
}

/// Creates the block devices and puts them on `mmio`.
pub(crate) fn attach_drives(
    vm: &VmFd,
    memory: &GuestMemoryMmap,
    mmio: &mut Bus,
    drives: &[DriveConfig],
) -> Result<VirtioDevices> {
    let ordered = guest_order(drives)?;
    let slots = (IRQ_MAX - VIRTIO_IRQ_BASE + 1) as usize;
    if ordered.len() > slots {
        return Err(Error::InvalidConfig(format!(
            "{} virtio devices requested; at most {slots} fit",
            ordered.len()
        )));
    }
    let mut devices = VirtioDevices::default();
    for (irq, drive) in (VIRTIO_IRQ_BASE..=IRQ_MAX).zip(ordered) {
        let base = VIRTIO_MMIO_START + u64::from(irq - VIRTIO_IRQ_BASE) * VIRTIO_MMIO_SIZE;
        let block: SharedBlock = Arc::new(Mutex::new(Block::new(drive.block.clone()).map_err(
            |source| Error::Drive {
                id: drive.block.drive_id.clone(),
                source,
            },
        )?));
        let transport = MmioTransport::new(memory.clone(), block.clone())?;
        for (queue, event) in transport.queue_events().iter().enumerate() {
            let datamatch = u32::try_from(queue).unwrap_or(u32::MAX);
            vm.register_ioevent(event, &IoEventAddress::Mmio(base + QUEUE_NOTIFY), datamatch)
                .map_err(|source| Error::Kvm {
                    what: "KVM_IOEVENTFD (virtio queue)",
                    source,
                })?;
        }
        vm.register_irqfd(transport.interrupt_event().event_fd(), irq)
            .map_err(|source| Error::Kvm {
                what: "KVM_IRQFD (virtio)",
                source,
            })?;
        mmio.insert(Arc::new(Mutex::new(transport)), base, VIRTIO_MMIO_SIZE)?;
        if drive.is_root_device {
            devices.cmdline.push(root_args(drive));
        }
        devices.cmdline.push(cmdline_entry(base, irq));
        devices.subscribers.push(block.clone());
        devices.drives.push((drive.block.drive_id.clone(), block));
    }
    Ok(devices)
}

/// `cmdline` with `extra` inserted before the guest's init arguments (" -- ...").
pub(crate) fn extend_cmdline(cmdline: &str, extra: &[String]) -> String {
    if extra.is_empty() {
        return cmdline.to_owned();
    }
    let joined = extra.join(" ");
    match cmdline.split_once(" -- ") {
        Some((kernel, init)) => format!("{kernel} {joined} -- {init}"),
        None if cmdline.is_empty() => joined,
        None => format!("{cmdline} {joined}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_devices::virtio::block::BlockConfig;

    fn drive(id: &str, root: bool, read_only: bool) -> DriveConfig {
        DriveConfig {
            block: BlockConfig {
                drive_id: id.into(),
                read_only,
                ..Default::default()
            },
            is_root_device: root,
            partuuid: None,
        }
    }

    #[test]
    fn root_drive_comes_first() {
        let drives = [drive("data", false, false), drive("rootfs", true, true)];
        let order: Vec<&str> = guest_order(&drives)
            .unwrap()
            .iter()
            .map(|d| d.block.drive_id.as_str())
            .collect();
        assert_eq!(order, ["rootfs", "data"]);
        assert_eq!(root_args(&drives[1]), "root=/dev/vda ro");
        let mut part = drive("r", true, false);
        part.partuuid = Some("abcd-01".into());
        assert_eq!(root_args(&part), "root=PARTUUID=abcd-01 rw");
    }

    #[test]
    fn two_roots_or_duplicate_ids_are_refused() {
        assert!(guest_order(&[drive("a", true, false), drive("b", true, false)]).is_err());
        assert!(guest_order(&[drive("a", false, false), drive("a", false, false)]).is_err());
    }

    #[test]
    fn device_arguments_go_before_init_arguments() {
        let extra = vec![
            "root=/dev/vda rw".to_owned(),
            "virtio_mmio.device=4K@0xc0001000:5".to_owned(),
        ];
        assert_eq!(
            extend_cmdline("console=ttyS0 -- echo hi -- there", &extra),
            "console=ttyS0 root=/dev/vda rw virtio_mmio.device=4K@0xc0001000:5 -- echo hi -- there"
        );
        assert_eq!(
            extend_cmdline("a", &extra[1..]),
            "a virtio_mmio.device=4K@0xc0001000:5"
        );
        assert_eq!(
            extend_cmdline("", &extra[1..]),
            "virtio_mmio.device=4K@0xc0001000:5"
        );
        assert_eq!(extend_cmdline("a -- b", &[]), "a -- b");
    }
}
