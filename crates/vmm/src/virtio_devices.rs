//! Virtio devices on the MMIO bus: each gets a 4 KiB window from 0xC000_1000
//! and an IRQ from 5, its queue notifications wired as KVM ioeventfds and its
//! interrupt as an irqfd, and an entry on the kernel command line.

use std::sync::{Arc, Mutex, PoisonError};

use ember_devices::virtio::balloon::{Balloon, BalloonConfig};
use ember_devices::virtio::block::Block;
use ember_devices::virtio::net::{Net, NetConfig};
use ember_devices::virtio::rng::{Rng, RngConfig};
use ember_devices::virtio::vsock::{Vsock, VsockConfig};
use ember_devices::virtio::{cmdline_entry, MmioTransport, VirtioDevice};
use ember_devices::Bus;
use ember_memory::layout::{IRQ_MAX, VIRTIO_IRQ_BASE, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use ember_memory::GuestMemoryMmap;
use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};

use crate::config::{DriveConfig, MmdsNetConfig, OpenedInputs};
use crate::vm::Subscriber;
use crate::{Error, Result};

/// Offset of QueueNotify in a virtio-mmio window.
const QUEUE_NOTIFY: u64 = ember_devices::virtio::mmio::QUEUE_NOTIFY_OFFSET;

/// A block device as the running VM keeps it.
pub type SharedBlock = Arc<Mutex<Block<GuestMemoryMmap>>>;

/// A network device as the running VM keeps it.
pub type SharedNet = Arc<Mutex<Net<GuestMemoryMmap>>>;

/// The entropy device as the running VM keeps it.
pub type SharedRng = Arc<Mutex<Rng<GuestMemoryMmap>>>;

/// The vsock device as the running VM keeps it.
pub type SharedVsock = Arc<Mutex<Vsock<GuestMemoryMmap>>>;

/// The balloon device as the running VM keeps it.
pub type SharedBalloon = Arc<Mutex<Balloon<GuestMemoryMmap>>>;

/// A virtio device of the VM, by kind, as the running VM keeps it.
#[derive(Clone)]
pub(crate) enum SharedDevice {
    /// A drive and its id.
    Block(String, SharedBlock),
    /// A network interface and its id.
    Net(String, SharedNet),
    /// The vsock device.
    Vsock(SharedVsock),
    /// The entropy device.
    Rng(SharedRng),
    /// The balloon.
    Balloon(SharedBalloon),
}

/// One virtio device where the VM placed it: its MMIO window, IRQ and transport.
#[derive(Clone)]
pub(crate) struct VirtioSlot {
    /// Guest-physical base of the MMIO window.
    pub(crate) base: u64,
    /// The device's interrupt line.
    pub(crate) irq: u32,
    /// The transport in the window.
    pub(crate) transport: Arc<Mutex<MmioTransport<GuestMemoryMmap>>>,
    /// The device behind it.
    pub(crate) device: SharedDevice,
}

/// What attaching the virtio devices produced.
#[derive(Default)]
pub(crate) struct VirtioDevices {
    /// Every device with its placement, in placement order.
    pub(crate) slots: Vec<VirtioSlot>,
    /// Kernel command-line additions (`virtio_mmio.device=...`, `root=...`).
    pub(crate) cmdline: Vec<String>,
    /// Event-loop subscribers.
    pub(crate) subscribers: Vec<Subscriber>,
    /// Block devices by drive id.
    pub(crate) drives: Vec<(String, SharedBlock)>,
    /// Network devices by interface id.
    pub(crate) nets: Vec<(String, SharedNet)>,
    /// The vsock device.
    pub(crate) vsock: Option<SharedVsock>,
    /// The entropy device.
    pub(crate) entropy: Option<SharedRng>,
    /// The balloon device.
    pub(crate) balloon: Option<SharedBalloon>,
}

/// Places virtio devices one after another in the MMIO windows (or, on a
/// restore, where they were).
pub(crate) struct Placer<'a> {
    vm: &'a VmFd,
    memory: &'a GuestMemoryMmap,
    mmio: &'a mut Bus,
    irqs: std::ops::RangeInclusive<u32>,
    devices: VirtioDevices,
}

impl<'a> Placer<'a> {
    /// A placer for `vm`'s devices on `mmio`, their queues in `memory`.
    pub(crate) fn new(vm: &'a VmFd, memory: &'a GuestMemoryMmap, mmio: &'a mut Bus) -> Placer<'a> {
        Placer {
            vm,
            memory,
            mmio,
            irqs: VIRTIO_IRQ_BASE..=IRQ_MAX,
            devices: VirtioDevices::default(),
        }
    }

    /// Guest memory.
    pub(crate) fn memory(&self) -> &GuestMemoryMmap {
        self.memory
    }

    /// The devices placed.
    pub(crate) fn finish(self) -> VirtioDevices {
        self.devices
    }

    /// Puts `device` behind a transport in the next window, with its queue
    /// notifications as ioeventfds, its interrupt as an irqfd, its entry on the
    /// command line and the device on the event loop.
    fn attach<D>(&mut self, device: Arc<Mutex<D>>, shared: SharedDevice) -> Result<()>
    where
        D: VirtioDevice<GuestMemoryMmap> + MutEventSubscriber + Send + 'static,
    {
        let Some(irq) = self.irqs.next() else {
            let slots = IRQ_MAX - VIRTIO_IRQ_BASE + 1;
            return Err(Error::InvalidConfig(format!(
                "too many virtio devices: at most {slots} fit"
            )));
        };
        let base = window_of(irq);
        let transport = MmioTransport::new(self.memory.clone(), device.clone())?;
        self.wire(transport, device, shared, base, irq)
    }

    /// Refuses a placement this VMM would not have made (a snapshot's say):
    /// the IRQ must be a virtio IRQ and the window the one that goes with it.
    pub(crate) fn check_placement(base: u64, irq: u32) -> Result<()> {
        if (VIRTIO_IRQ_BASE..=IRQ_MAX).contains(&irq) && window_of(irq) == base {
            Ok(())
        } else {
            Err(Error::InvalidConfig(format!(
                "a virtio device at {base:#x} with IRQ {irq}: virtio devices sit at \
                 {VIRTIO_MMIO_START:#x} + (IRQ - {VIRTIO_IRQ_BASE}) * {VIRTIO_MMIO_SIZE:#x}, \
                 IRQs {VIRTIO_IRQ_BASE} to {IRQ_MAX}"
            )))
        }
    }

    /// Puts `transport` (with `device` behind it) in the window at `base` with
    /// interrupt `irq`.
    pub(crate) fn wire<D>(
        &mut self,
        transport: MmioTransport<GuestMemoryMmap>,
        device: Arc<Mutex<D>>,
        shared: SharedDevice,
        base: u64,
        irq: u32,
    ) -> Result<()>
    where
        D: VirtioDevice<GuestMemoryMmap> + MutEventSubscriber + Send + 'static,
    {
        for (queue, event) in transport.queue_events().iter().enumerate() {
            let datamatch = u32::try_from(queue).unwrap_or(u32::MAX);
            self.vm
                .register_ioevent(event, &IoEventAddress::Mmio(base + QUEUE_NOTIFY), datamatch)
                .map_err(|source| Error::Kvm {
                    what: "KVM_IOEVENTFD (virtio queue)",
                    source,
                })?;
        }
        self.vm
            .register_irqfd(transport.interrupt_event().event_fd(), irq)
            .map_err(|source| Error::Kvm {
                what: "KVM_IRQFD (virtio)",
                source,
            })?;
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(transport.clone(), base, VIRTIO_MMIO_SIZE)?;
        self.devices.cmdline.push(cmdline_entry(base, irq));
        self.devices.subscribers.push(device);
        match &shared {
            SharedDevice::Block(id, block) => self.devices.drives.push((id.clone(), block.clone())),
            SharedDevice::Net(id, net) => self.devices.nets.push((id.clone(), net.clone())),
            SharedDevice::Vsock(vsock) => self.devices.vsock = Some(vsock.clone()),
            SharedDevice::Rng(rng) => self.devices.entropy = Some(rng.clone()),
            SharedDevice::Balloon(balloon) => self.devices.balloon = Some(balloon.clone()),
        }
        self.devices.slots.push(VirtioSlot {
            base,
            irq,
            transport,
            device: shared,
        });
        Ok(())
    }
}

/// The MMIO window of the virtio device with interrupt `irq` (at least
/// [`VIRTIO_IRQ_BASE`]).
fn window_of(irq: u32) -> u64 {
    VIRTIO_MMIO_START + u64::from(irq.saturating_sub(VIRTIO_IRQ_BASE)) * VIRTIO_MMIO_SIZE
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

/// The virtio devices of a VM.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceConfigs<'a> {
    pub(crate) drives: &'a [DriveConfig],
    pub(crate) nets: &'a [NetConfig],
    pub(crate) vsock: Option<&'a VsockConfig>,
    pub(crate) entropy: Option<&'a RngConfig>,
    pub(crate) mmds: Option<&'a MmdsNetConfig>,
    pub(crate) balloon: Option<&'a BalloonConfig>,
}

/// Creates the virtio devices (drives, root first, then network interfaces,
/// then vsock, then the entropy device, then the balloon) and puts them on `mmio`.
pub(crate) fn attach_devices(
    vm: &VmFd,
    memory: &GuestMemoryMmap,
    mmio: &mut Bus,
    configs: DeviceConfigs<'_>,
    opened: &mut OpenedInputs,
) -> Result<VirtioDevices> {
    let DeviceConfigs {
        drives,
        nets,
        vsock,
        entropy,
        mmds,
        balloon,
    } = configs;
    let mut placer = Placer::new(vm, memory, mmio);
    for drive in guest_order(drives)? {
        let block: SharedBlock = Arc::new(Mutex::new(new_block(drive, opened)?));
        if drive.is_root_device {
            placer.devices.cmdline.push(root_args(drive));
        }
        let shared = SharedDevice::Block(drive.block.drive_id.clone(), block.clone());
        placer.attach(block, shared)?;
    }
    check_unique(
        nets.iter().map(|n| n.iface_id.as_str()),
        "network interface id",
    )?;
    check_unique(nets.iter().map(|n| n.host_dev_name.as_str()), "TAP device")?;
    for config in nets {
        let net: SharedNet = Arc::new(Mutex::new(Net::new(config.clone()).map_err(|source| {
            Error::NetworkInterface {
                id: config.iface_id.clone(),
                source,
            }
        })?));
        if let Some(mmds) = mmds.filter(|m| m.network_interfaces.contains(&config.iface_id)) {
            net.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .set_mmds(mmds.store.clone(), mmds.address);
        }
        let shared = SharedDevice::Net(config.iface_id.clone(), net.clone());
        placer.attach(net, shared)?;
    }
    if let Some(config) = vsock {
        let device = match opened.vsock.take() {
            Some(listener) => Vsock::with_listener(config.guest_cid, listener),
            None => Vsock::new(config.clone()),
        };
        let device: SharedVsock = Arc::new(Mutex::new(device.map_err(Error::Vsock)?));
        placer.attach(device.clone(), SharedDevice::Vsock(device))?;
    }
    if let Some(config) = entropy {
        let device = Rng::new(config.clone()).map_err(Error::Entropy)?;
        let device: SharedRng = Arc::new(Mutex::new(device));
        placer.attach(device.clone(), SharedDevice::Rng(device))?;
    }
    if let Some(config) = balloon {
        let device = Balloon::new(*config).map_err(Error::Balloon)?;
        let device: SharedBalloon = Arc::new(Mutex::new(device));
        placer.attach(device.clone(), SharedDevice::Balloon(device))?;
    }
    Ok(placer.finish())
}

/// The block device for `drive`, on its backing file if it was opened ahead.
fn new_block(drive: &DriveConfig, opened: &mut OpenedInputs) -> Result<Block<GuestMemoryMmap>> {
    let id = &drive.block.drive_id;
    let file = opened
        .drives
        .iter()
        .position(|(opened_id, _)| opened_id == id)
        .map(|at| opened.drives.swap_remove(at).1);
    let config = drive.block.clone();
    match file {
        Some(file) => Block::with_file(config, file),
        None => Block::new(config),
    }
    .map_err(|source| Error::Drive {
        id: id.clone(),
        source,
    })
}

/// Refuses a name used twice.
fn check_unique<'a>(names: impl Iterator<Item = &'a str>, what: &str) -> Result<()> {
    let mut seen: Vec<&str> = Vec::new();
    for name in names {
        if seen.contains(&name) {
            return Err(Error::InvalidConfig(format!(
                "{what} `{name}` is used twice"
            )));
        }
        seen.push(name);
    }
    Ok(())
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
    fn only_the_placements_this_vmm_makes_are_restored() {
        assert!(Placer::check_placement(VIRTIO_MMIO_START, VIRTIO_IRQ_BASE).is_ok());
        assert!(Placer::check_placement(window_of(IRQ_MAX), IRQ_MAX).is_ok());
        for (base, irq) in [
            (VIRTIO_MMIO_START, VIRTIO_IRQ_BASE + 1),
            (window_of(IRQ_MAX + 1), IRQ_MAX + 1),
            (VIRTIO_MMIO_START, 0),
            (0, VIRTIO_IRQ_BASE),
            (VIRTIO_MMIO_START + 8, VIRTIO_IRQ_BASE),
        ] {
            let err = Placer::check_placement(base, irq).unwrap_err().to_string();
            assert!(err.contains("virtio devices sit at"), "{err}");
        }
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
