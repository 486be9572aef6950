//! The virtio-mmio transport, virtio 1.x register layout (version 2): feature
//! negotiation, the device-status state machine, queue set-up and notification,
//! the interrupt status, and the device's configuration space from 0x100.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL, VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH, VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_QUEUE_NUM, VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_QUEUE_USED_HIGH, VIRTIO_MMIO_QUEUE_USED_LOW,
    VIRTIO_MMIO_SHM_BASE_HIGH, VIRTIO_MMIO_SHM_BASE_LOW, VIRTIO_MMIO_SHM_LEN_HIGH,
    VIRTIO_MMIO_SHM_LEN_LOW, VIRTIO_MMIO_STATUS, VIRTIO_MMIO_VENDOR_ID, VIRTIO_MMIO_VERSION,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::{
    feature_bit, GuestMemoryHandle, IrqTrigger, VirtioDevice, VirtioInterrupt, VirtqueueState,
};
use crate::bus::BusDevice;
use crate::trigger::EventTrigger;
use crate::Result;

/// Why the virtio-mmio transport cannot set up or restore its queues.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A virtio queue could not be created or rebuilt.
    #[error("virtio queue: {0}")]
    VirtioQueue(virtio_queue::Error),
    /// A virtio device has a different number of queue eventfds than queues.
    #[error("virtio device has {queues} queues but {events} queue eventfds")]
    QueueEventCount {
        /// Number of queues.
        queues: usize,
        /// Number of eventfds.
        events: usize,
    },
    /// A virtio queue the driver enabled does not fit in guest memory.
    #[error("virtio queue {0} does not fit in guest memory")]
    InvalidQueue(usize),
}

/// Size of one virtio-mmio window (see the memory map in docs/architecture.md).
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// MagicValue: "virt" in little endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// Version 2: the virtio 1.x (non-legacy) register layout.
pub const MMIO_VERSION: u32 = 2;
/// VendorID: "EMBR".
pub const VENDOR_ID: u32 = 0x454d_4252;
/// Offset of QueueNotify: where the VMM registers each queue's eventfd as a KVM
/// ioeventfd (4 bytes, data match = queue index).
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Offset of the device's configuration space.
pub const CONFIG_SPACE_OFFSET: u64 = VIRTIO_MMIO_CONFIG as u64;

/// The status bits a driver sets, in the order it must set them.
const STATUS_STEPS: [u32; 4] = [
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_DRIVER_OK,
];
/// Status while the driver sets up queues (after FEATURES_OK, before DRIVER_OK).
const STATUS_QUEUE_SETUP: u32 =
    VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
/// Status while the driver negotiates features.
const STATUS_FEATURE_SETUP: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;

/// The kernel command-line entry announcing a device at `base` with `irq`:
/// `virtio_mmio.device=4K@0x<base>:<irq>`.
pub fn cmdline_entry(base: u64, irq: u32) -> String {
    format!(
        "virtio_mmio.device={}K@{base:#x}:{irq}",
        MMIO_WINDOW_SIZE / 1024
    )
}

/// The transport's registers and queues as plain data, for snapshots
/// ([`MmioTransport::state`], [`MmioTransport::restore`]).
///
/// The queues are as the driver configured them, and, while the device is
/// active, with the device's live ring positions: this is the one place a
/// snapshot keeps them. The configuration generation is the device's (in
/// its own state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MmioTransportState {
    /// Device status.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Each queue's configuration and ring positions, in queue order.
    pub queues: Vec<VirtqueueState>,
}

/// A virtio device behind the virtio-mmio register interface.
///
/// The VMM puts it on the MMIO bus at a [`MMIO_WINDOW_SIZE`] window, registers
/// [`MmioTransport::queue_events`] as ioeventfds at `base + QUEUE_NOTIFY_OFFSET`
/// (data match = queue index) and [`MmioTransport::interrupt_event`] as the
/// irqfd of the device's IRQ, and adds [`cmdline_entry`] to the kernel command line.
///
/// # Example
///
/// A virtio-block device on plain memory, no KVM: the example plays the
/// guest driver with `test_utils` (the `test-utils` feature), starting the
/// device through the registers and reading sector 1 of a file through a
/// virtqueue in guest memory.
///
/// ```
/// use std::io::Write;
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
///
/// use ember_devices::virtio::block::{Block, BlockConfig, SECTOR_SIZE};
/// use ember_devices::virtio::test_utils::{
///     guest_bytes, memory, read_reg, run_until_used, start, write_reg, GuestQueue, Manager, Mem,
///     WRITE,
/// };
/// use ember_devices::virtio::{feature_bit, MmioTransport};
/// use event_manager::SubscriberOps;
/// use virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;
/// use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
/// use virtio_bindings::virtio_mmio::{
///     VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_QUEUE_NOTIFY,
/// };
/// use vm_memory::{Bytes, GuestAddress};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut disk = tempfile::NamedTempFile::new()?;
/// disk.write_all(&[[0u8; 512], [0x5a; 512]].concat())?;
///
/// let mem: Mem = memory(&[(0, 0x10_0000)]);
/// let config = BlockConfig {
///     drive_id: "rootfs".to_owned(),
///     path: disk.path().to_path_buf(),
///     ..BlockConfig::default()
/// };
/// let block = Arc::new(Mutex::new(Block::new(config)?));
/// let mut event_loop = Manager::new()?;
/// event_loop.add_subscriber(block.clone());
/// let mut transport = MmioTransport::new(mem.clone(), block)?;
/// assert_eq!(read_reg(&mut transport, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976); // "virt"
/// assert_eq!(read_reg(&mut transport, VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_BLOCK);
///
/// // The driver's queue 0 at 0x1000, then a read request: header, data, status.
/// let mut queue = GuestQueue::new(&mem, 0x1000, 16);
/// start(&mut transport, feature_bit(VIRTIO_F_VERSION_1), &[(0, &queue)]);
/// let (header, data, status) = (0x8000, 0x9000, 0xa000);
/// mem.write_obj(VIRTIO_BLK_T_IN.to_le(), GuestAddress(header))?;
/// mem.write_obj(1u64.to_le(), GuestAddress(header + 8))?; // the sector
/// queue.add_chain(0, &[(header, 16, 0), (data, 512, WRITE), (status, 1, WRITE)]);
/// write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
/// run_until_used(&mut event_loop, &queue, 1, Duration::from_secs(5));
///
/// assert_eq!(mem.read_obj::<u8>(GuestAddress(status))?, 0, "VIRTIO_BLK_S_OK");
/// assert_eq!(guest_bytes(&mem, data, SECTOR_SIZE as usize), vec![0x5a; 512]);
/// assert_eq!(queue.used_elem(0), (0, 513), "the bytes written, status included");
/// # Ok(())
/// # }
/// ```
pub struct MmioTransport<M> {
    mem: M,
    device: Arc<Mutex<dyn VirtioDevice<M>>>,
    device_type: u32,
    avail_features: u64,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<IrqTrigger>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
}

impl<M> fmt::Debug for MmioTransport<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field("status", &self.status)
            .field("acked_features", &self.acked_features)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

/// The 32-bit half `sel` (0 = low, 1 = high) of a feature set; 0 beyond.
fn feature_word(features: u64, sel: u32) -> u32 {
    let word = match sel {
        0 => features,
        1 => features >> 32,
        _ => return 0,
    };
    u32::try_from(word & 0xffff_ffff).unwrap_or(0)
}

fn with_low(addr: u64, low: u32) -> GuestAddress {
    GuestAddress((addr & !0xffff_ffff) | u64::from(low))
}

fn with_high(addr: u64, high: u32) -> GuestAddress {
    GuestAddress((addr & 0xffff_ffff) | (u64::from(high) << 32))
}

/// The register at `offset` for an access of `len` bytes: registers only
/// take aligned 32-bit accesses.
fn register(offset: u64, len: usize) -> Option<u32> {
    if len != 4 || !offset.is_multiple_of(4) {
        return None;
    }
    u32::try_from(offset).ok()
}

impl<M: GuestMemoryHandle> MmioTransport<M> {
    /// A transport for `device`, whose queues live in `mem`.
    pub fn new(mem: M, device: Arc<Mutex<dyn VirtioDevice<M>>>) -> Result<MmioTransport<M>> {
        let (device_type, avail_features, queues, queue_evts) = {
            let dev = device.lock().unwrap_or_else(PoisonError::into_inner);
            let queues = dev
                .queue_max_sizes()
                .iter()
                .map(|&max| Queue::new(max).map_err(Error::VirtioQueue))
                .collect::<std::result::Result<Vec<_>, Error>>()?;
            let queue_evts = dev
                .queue_events()
                .iter()
                .map(|evt| evt.try_clone().map_err(crate::Error::EventFd))
                .collect::<Result<Vec<_>>>()?;
            if queue_evts.len() != queues.len() {
                return Err(Error::QueueEventCount {
                    queues: queues.len(),
                    events: queue_evts.len(),
                }
                .into());
            }
            (dev.device_type(), dev.avail_features(), queues, queue_evts)
        };
        Ok(MmioTransport {
            mem,
            device,
            device_type,
            avail_features,
            queues,
            queue_evts,
            interrupt: Arc::new(IrqTrigger::new()?),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
        })
    }

    /// The device's queue-notification eventfds, in queue order, to register as
    /// ioeventfds at `base + QUEUE_NOTIFY_OFFSET` with the queue index as data.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The eventfd to register as the irqfd of the device's interrupt line.
    pub fn interrupt_event(&self) -> &EventTrigger {
        self.interrupt.event()
    }

    /// The device behind the transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice<M>>> {
        &self.device
    }

    /// The registers and queues as plain data; while the device is active,
    /// the queues carry its live ring positions
    /// ([`VirtioDevice::queue_states`]).
    pub fn state(&self) -> MmioTransportState {
        let live = self.lock_device().queue_states();
        let queues = if live.len() == self.queues.len() {
            live.into_iter().map(VirtqueueState::from).collect()
        } else {
            self.queues.iter().map(|q| q.state().into()).collect()
        };
        MmioTransportState {
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt.status(),
            queues,
        }
    }

    /// A transport for `device` (inactive, rebuilt from its own saved state)
    /// with the registers and queues of `state`, on the same guest memory.
    ///
    /// If the driver had started the device (DRIVER_OK, and no NEEDS_RESET),
    /// the device is activated with the saved queues, ring positions
    /// included, and this transport's interrupt, whose status is the saved
    /// one; each ready queue's eventfd is then signalled once, so that what
    /// the driver made available and the device had not taken before the
    /// snapshot gets processed (the ring positions make a notification with
    /// nothing new harmless), and the device's
    /// [`VirtioDevice::after_restore`] runs. Fails if the saved queues do not
    /// fit the device or guest memory, or the activation fails.
    pub fn restore(
        mem: M,
        device: Arc<Mutex<dyn VirtioDevice<M>>>,
        state: &MmioTransportState,
    ) -> Result<MmioTransport<M>> {
        let mut transport = MmioTransport::new(mem, device)?;
        let mismatch = |reason: String| crate::Error::RestoreMismatch {
            device: "virtio-mmio",
            reason,
        };
        if state.queues.len() != transport.queues.len() {
            return Err(mismatch(format!(
                "{} queues saved, the device has {}",
                state.queues.len(),
                transport.queues.len()
            )));
        }
        for (index, (saved, queue)) in state.queues.iter().zip(&mut transport.queues).enumerate() {
            if saved.max_size != queue.max_size() {
                return Err(mismatch(format!(
                    "queue {index} has {} entries at most, the snapshot {}",
                    queue.max_size(),
                    saved.max_size
                )));
            }
            *queue = Queue::try_from(QueueState::from(*saved)).map_err(Error::VirtioQueue)?;
        }
        transport.status = state.status;
        transport.device_features_sel = state.device_features_sel;
        transport.driver_features_sel = state.driver_features_sel;
        transport.acked_features = state.acked_features;
        transport.queue_sel = state.queue_sel;
        transport.interrupt.set_status(state.interrupt_status);
        let started = VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_NEEDS_RESET;
        if state.status & started == VIRTIO_CONFIG_S_DRIVER_OK {
            transport.activate()?;
            for (queue, evt) in transport.queues.iter().zip(&transport.queue_evts) {
                if queue.ready() {
                    evt.write(1).map_err(crate::Error::EventFd)?;
                }
            }
            transport.lock_device().after_restore();
        }
        Ok(transport)
    }

    fn lock_device(&self) -> MutexGuard<'_, dyn VirtioDevice<M> + 'static> {
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(usize::try_from(self.queue_sel).ok()?)
    }

    fn read_register(&self, reg: u32) -> u32 {
        match reg {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device_type,
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => {
                feature_word(self.avail_features, self.device_features_sel)
            }
            VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |q| u32::from(q.max_size()))
            }
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            // No shared-memory regions: their length and base read as -1.
            VIRTIO_MMIO_SHM_LEN_LOW
            | VIRTIO_MMIO_SHM_LEN_HIGH
            | VIRTIO_MMIO_SHM_BASE_LOW
            | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => self.lock_device().config_generation(),
            _ => 0,
        }
    }

    fn write_register(&mut self, reg: u32, value: u32) {
        match reg {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => self.configure_queue("size", |q| {
                let size = u16::try_from(value).map_err(|_| virtio_queue::Error::InvalidSize)?;
                q.try_set_size(size)
            }),
            VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(value),
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_QUEUE_DESC_LOW => self.configure_queue("descriptor table", |q| {
                q.try_set_desc_table_address(with_low(q.desc_table(), value))
            }),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => self.configure_queue("descriptor table", |q| {
                q.try_set_desc_table_address(with_high(q.desc_table(), value))
            }),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => self.configure_queue("driver area", |q| {
                q.try_set_avail_ring_address(with_low(q.avail_ring(), value))
            }),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self.configure_queue("driver area", |q| {
                q.try_set_avail_ring_address(with_high(q.avail_ring(), value))
            }),
            VIRTIO_MMIO_QUEUE_USED_LOW => self.configure_queue("device area", |q| {
                q.try_set_used_ring_address(with_low(q.used_ring(), value))
            }),
            VIRTIO_MMIO_QUEUE_USED_HIGH => self.configure_queue("device area", |q| {
                q.try_set_used_ring_address(with_high(q.used_ring(), value))
            }),
            _ => log::debug!("virtio-mmio: write of {value:#x} to register {reg:#x} ignored"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status != STATUS_FEATURE_SETUP {
            log::warn!(
                "virtio-mmio: driver features written in status {:#x}",
                self.status
            );
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            sel => {
                log::debug!("virtio-mmio: driver features word {sel} ignored");
                return;
            }
        };
        self.acked_features =
            (self.acked_features & !(0xffff_ffff << shift)) | (u64::from(value) << shift);
    }

    /// The index of the selected queue, if the driver may set it up now
    /// (after FEATURES_OK, before DRIVER_OK) and it exists; `what` names
    /// the register written, for the log.
    fn queue_to_set_up(&self, what: &str) -> Option<usize> {
        if self.status != STATUS_QUEUE_SETUP {
            log::warn!(
                "virtio-mmio: queue {what} written in status {:#x}",
                self.status
            );
            return None;
        }
        let index = usize::try_from(self.queue_sel)
            .ok()
            .filter(|&i| i < self.queues.len());
        if index.is_none() {
            log::warn!(
                "virtio-mmio: queue {what} written for missing queue {}",
                self.queue_sel
            );
        }
        index
    }

    /// Applies a queue set-up write to the selected queue, if the driver may
    /// change it now. A value the queue refuses (bad size or alignment) leaves
    /// the device needing a reset: the driver's view of the queue is wrong.
    fn configure_queue(
        &mut self,
        what: &str,
        change: impl FnOnce(&mut Queue) -> std::result::Result<(), virtio_queue::Error>,
    ) {
        let Some(index) = self.queue_to_set_up(what) else {
            return;
        };
        let queue = &mut self.queues[index];
        if queue.ready() {
            log::warn!("virtio-mmio: queue {what} written while queue {index} is ready");
            return;
        }
        if let Err(e) = change(queue) {
            log::warn!("virtio-mmio: invalid queue {what} for queue {index}: {e}");
            self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        }
    }

    /// QueueReady: 1 enables the selected queue if it lies in guest memory
    /// (otherwise it stays disabled and reads back 0); 0 disables it.
    fn write_queue_ready(&mut self, value: u32) {
        let Some(index) = self.queue_to_set_up("ready") else {
            return;
        };
        let queue = &mut self.queues[index];
        match value {
            0 => queue.set_ready(false),
            1 => {
                queue.set_ready(true);
                if !queue.is_valid(&self.mem) {
                    log::warn!("virtio-mmio: queue {index} does not fit in guest memory");
                    queue.set_ready(false);
                }
            }
            _ => log::debug!("virtio-mmio: QueueReady value {value} ignored"),
        }
    }

    fn notify(&self, index: u32) {
        if self.status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_NEEDS_RESET)
            != VIRTIO_CONFIG_S_DRIVER_OK
        {
            log::debug!(
                "virtio-mmio: queue {index} notified in status {:#x}",
                self.status
            );
            return;
        }
        let Some(evt) = usize::try_from(index)
            .ok()
            .and_then(|i| self.queue_evts.get(i))
        else {
            log::debug!("virtio-mmio: notification for missing queue {index}");
            return;
        };
        if let Err(e) = evt.write(1) {
            log::warn!("virtio-mmio: cannot signal queue {index}: {e}");
        }
    }

    /// The device-status state machine. Writing 0 resets the device; otherwise
    /// the driver may only add bits, the four set-up bits in order (several in
    /// one write are taken in order). FEATURES_OK is refused (left clear) when
    /// the accepted features are not a subset of the offered ones or lack
    /// VIRTIO_F_VERSION_1. DRIVER_OK activates the device; if that fails the
    /// device needs a reset and the driver gets a configuration interrupt.
    /// FAILED is always recorded.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            log::warn!("virtio-mmio: status {old:#x} -> {value:#x} clears bits without a reset");
            return;
        }
        let added = value & !old;
        for step in STATUS_STEPS {
            if added & step != 0 && !self.advance(step) {
                break;
            }
        }
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            log::info!(
                "virtio-mmio: the driver gave up on device type {}",
                self.device_type
            );
            self.status |= VIRTIO_CONFIG_S_FAILED;
        }
    }

    /// Sets the status bit `step` if every earlier step, and nothing else, is set.
    fn advance(&mut self, step: u32) -> bool {
        let expected = STATUS_STEPS
            .iter()
            .take_while(|&&s| s != step)
            .fold(0, |acc, s| acc | s);
        if self.status != expected {
            log::warn!(
                "virtio-mmio: status bit {step:#x} set out of order (status {:#x})",
                self.status
            );
            return false;
        }
        match step {
            VIRTIO_CONFIG_S_FEATURES_OK if !self.features_acceptable() => {
                log::warn!(
                    "virtio-mmio: driver features {:#x} refused (offered {:#x})",
                    self.acked_features,
                    self.avail_features
                );
                return false;
            }
            VIRTIO_CONFIG_S_DRIVER_OK => {
                self.status |= step;
                if let Err(e) = self.activate() {
                    log::error!(
                        "virtio-mmio: cannot activate device type {}: {e}",
                        self.device_type
                    );
                    self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                    if let Err(e) = self.interrupt.trigger(super::InterruptKind::Config) {
                        log::warn!("virtio-mmio: cannot interrupt the driver: {e}");
                    }
                }
                return true;
            }
            _ => {}
        }
        self.status |= step;
        true
    }

    fn features_acceptable(&self) -> bool {
        self.acked_features & !self.avail_features == 0
            && self.acked_features & feature_bit(VIRTIO_F_VERSION_1) != 0
    }

    /// Hands the device its queues, checked against guest memory.
    fn activate(&mut self) -> Result<()> {
        let event_idx = self.acked_features & feature_bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, queue) in self.queues.iter().enumerate() {
            if queue.ready() && !queue.is_valid(&self.mem) {
                return Err(Error::InvalidQueue(index).into());
            }
            let mut live = Queue::try_from(queue.state()).map_err(Error::VirtioQueue)?;
            live.set_event_idx(event_idx);
            queues.push(live);
        }
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        self.lock_device()
            .activate(self.mem.clone(), queues, interrupt, self.acked_features)
    }

    fn reset(&mut self) {
        {
            let mut device = self.lock_device();
            if device.is_activated() {
                device.reset();
            }
        }
        self.queues.iter_mut().for_each(QueueT::reset);
        self.interrupt.clear();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
    }
}

impl<M: GuestMemoryHandle> BusDevice for MmioTransport<M> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(config_offset) = offset.checked_sub(CONFIG_SPACE_OFFSET) {
            self.lock_device().read_config(config_offset, data);
            return;
        }
        match register(offset, data.len()) {
            Some(reg) => data.copy_from_slice(&self.read_register(reg).to_le_bytes()),
            None => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(config_offset) = offset.checked_sub(CONFIG_SPACE_OFFSET) {
            self.lock_device().write_config(config_offset, data);
            return;
        }
        match (register(offset, data.len()), <[u8; 4]>::try_from(data)) {
            (Some(reg), Ok(bytes)) => self.write_register(reg, u32::from_le_bytes(bytes)),
            _ => log::debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

    use std::io;

    use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

    use super::*;
    use crate::virtio::test_utils::{
        add_status, memory, negotiate, read_reg, setup_queue, through_json, write_reg, GuestQueue,
        Mem,
    };
    use crate::virtio::InterruptKind;

    const OTHER_FEATURE: u64 = 1 << 3;
    const FEATURES: u64 =
        feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_RING_F_EVENT_IDX) | OTHER_FEATURE;
    const MAX_SIZES: [u16; 2] = [16, 8];

    /// A device that records what the transport does to it. It needs queue 0.
    #[derive(Debug)]
    struct Probe {
        evts: Vec<EventFd>,
        config: [u8; 8],
        generation: u32,
        config_writes: Vec<(u64, Vec<u8>)>,
        activations: usize,
        resets: usize,
        restores: usize,
        active: Option<(Vec<Queue>, Arc<dyn VirtioInterrupt>, u64)>,
    }

    impl Probe {
        fn new() -> Probe {
            Probe {
                evts: (0..2)
                    .map(|_| EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap())
                    .collect(),
                config: [1, 2, 3, 4, 5, 6, 7, 8],
                generation: 7,
                config_writes: Vec::new(),
                activations: 0,
                resets: 0,
                restores: 0,
                active: None,
            }
        }
    }

    impl VirtioDevice<Mem> for Probe {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &MAX_SIZES
        }
        fn avail_features(&self) -> u64 {
            FEATURES
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.evts
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = usize::try_from(offset)
                    .ok()
                    .and_then(|o| self.config.get(o + i))
                    .copied()
                    .unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.config_writes.push((offset, data.to_vec()));
        }
        fn config_generation(&self) -> u32 {
            self.generation
        }
        fn activate(
            &mut self,
            _mem: Mem,
            queues: Vec<Queue>,
            interrupt: Arc<dyn VirtioInterrupt>,
            acked_features: u64,
        ) -> Result<()> {
            if !queues[0].ready() {
                return Err(crate::virtio::ActivationError::QueueNotReady(0).into());
            }
            self.activations += 1;
            self.active = Some((queues, interrupt, acked_features));
            Ok(())
        }
        fn is_activated(&self) -> bool {
            self.active.is_some()
        }
        fn queue_states(&self) -> Vec<QueueState> {
            self.active
                .iter()
                .flat_map(|(queues, _, _)| queues.iter().map(Queue::state))
                .collect()
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.active = None;
        }
        fn after_restore(&mut self) {
            self.restores += 1;
        }
    }

    fn transport(mem: &Mem) -> (MmioTransport<Mem>, Arc<Mutex<Probe>>) {
        let probe = Arc::new(Mutex::new(Probe::new()));
        let transport = MmioTransport::new(mem.clone(), probe.clone()).unwrap();
        (transport, probe)
    }

    const STATUS_READY: u32 = STATUS_QUEUE_SETUP;
    const STATUS_LIVE: u32 = STATUS_QUEUE_SETUP | VIRTIO_CONFIG_S_DRIVER_OK;

    /// Runs the whole initialisation with queue 0 at `base`.
    fn bring_up(t: &mut MmioTransport<Mem>, mem: &Mem, base: u64) {
        assert_eq!(negotiate(t, FEATURES), STATUS_READY);
        setup_queue(t, 0, &GuestQueue::new(mem, base, 16));
        add_status(t, VIRTIO_CONFIG_S_DRIVER_OK);
    }

    #[test]
    fn identification_registers() {
        let mem = memory(&[(0, 0x10000)]);
        let (mut t, _probe) = transport(&mem);
        assert_eq!(read_reg(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(read_reg(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(read_reg(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
        assert_eq!(read_reg(&mut t, VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
        for (sel, word) in [(0, FEATURES as u32), (1, (FEATURES >> 32) as u32), (2, 0)] {
            write_reg(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
            assert_eq!(read_reg(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), word);
        }
        for (sel, max) in [(0, 16), (1, 8), (2, 0), (u32::MAX, 0)] {
            write_reg(&mut t, VIRTIO_MMIO_QUEUE_SEL, sel);
            assert_eq!(read_reg(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), max);
        }
        assert_eq!(read_reg(&mut t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        assert_eq!(read_reg(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 7);
        assert_eq!(
            read_reg(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW),
            0,
            "write-only"
        );
    }

    #[test]
    fn registers_take_only_aligned_32_bit_accesses() {
        let mem = memory(&[(0, 0x10000)]);
        let (mut t, _probe) = transport(&mem);
        for (offset, len) in [(0u64, 1usize), (0, 2), (0, 8), (2, 4), (0xfc, 2)] {
            let mut data = vec![0xaa; len];
            t.read(offset, &mut data);
            assert!(data.iter().all(|&b| b == 0), "{offset:#x}/{len}");
        }
        t.write(
            VIRTIO_MMIO_STATUS as u64,
            &[VIRTIO_CONFIG_S_ACKNOWLEDGE as u8],
        );
        t.write(VIRTIO_MMIO_STATUS as u64 + 2, &[1, 0, 0, 0]);
        assert_eq!(read_reg(&mut t, VIRTIO_MMIO_STATUS), 0);
    }

    #[test]
    fn full_handshake_activates_with_the_configured_queues() {
        let mem = memory(&[(0, 0x10000)]);
        let (mut t, probe) = transport(&mem);
        let gq = GuestQueue::new(&mem, 0x1000, 16);
        assert_eq!(negotiate(&mut t, FEATURES), STATUS_READY);
        setup_queue(&mut t, 0, &gq);
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(read_reg(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
        assert_eq!(probe.lock().unwrap().activations, 0);
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(read_reg(&mut t, VIRTIO_MMIO_STATUS), STATUS_LIVE);

        let p = probe.lock().unwrap();
        assert_eq!(p.activations, 1);
        let (queues, _irq, acked) = p.active.as_ref().unwrap();
        assert_eq!(*acked, FEATURES);
        assert_eq!(queues.len(), 2);
        let q0 = queues[0].state();
        assert_eq!(
            (
                q0.ready,
                q0.size,
                q0.desc_table,
                q0.avail_ring,
                q0.used_ring
            ),
            (true, 16, gq.desc.0, gq.avail.0, gq.used.0)
        );
        assert!(q0.event_idx_enabled);
        assert!(!queues[1].ready());
        drop(p);

        let state = t.state();
        assert_eq!(state.status, STATUS_LIVE);
        assert_eq!(state.acked_features, FEATURES);
        assert_eq!(state.queues[0].desc_table, gq.desc.0);
    }

    #[test]
    fn features_outside_the_offer_or_without_version_1_are_refused() {
        let mem = memory(&[(0, 0x10000)]);
        let (mut t, probe) = transport(&mem);
        let without_v1 = FEATURES & !feature_bit(VIRTIO_F_VERSION_1);
        for features in [FEATURES | 1 << 5, without_v1, 0] {
            write_reg(&mut t, VIRTIO_MMIO_STATUS, 0);
            assert_eq!(negotiate(&mut t, features), STATUS_FEATURE_SETUP);
            setup_queue(&mut t, 0, &GuestQueue::new(&mem, 0x1000, 16));
            add_status(
                &mut t,
                VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
            );
            assert_eq!(read_reg(&mut t, VIRTIO_MMIO_STATUS), STATUS_FEATURE_SETUP);
        }
        assert_eq!(probe.lock().unwrap().activations, 0);
        // A subset of the offer is fine.
        write_reg(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(
            negotiate(&mut t, feature_bit(VIRTIO_F_VERSION_1)),
            STATUS_READY
        );
    }

    #[test]
    fn status_bits_must_come_in_order_and_stay_set() {
        let mem = memory(&[(0, 0x10000)]);
        let (mut t, _probe) = transport(&mem);
        write_reg(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(read_reg(&mut t, VIRTIO_MMIO_STATUS), 0);
        // Several bits at once are taken in order.
        write_reg(&mut t, VIRTIO_MMIO_STATUS, STATUS_FEATURE_SETUP);
        assert_eq!(read_reg(&mut t, VIRTIO_MMIO_STATUS), STATUS_FEATURE_SETUP);
        // Skipping FEATURES_OK stops at the gap.
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(read_reg(&mut t, VIRTIO_MMIO_STATUS), STATUS_FEATURE_SETUP);
        // Bits are only cleared by a reset.
        write_reg(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        assert_eq!(read_reg(&mut t, VIRTIO_MMIO_STATUS), STATUS_FEATURE_SETUP);
        add_status(&mut t, VIRTIO_CONFIG_S_FAILED);
        assert_eq!(
            read_reg(&mut t, VIRTIO_MMIO_STATUS),
            STATUS_FEATURE_SETUP | VIRTIO_CONFIG_S_FAILED
        );
        // A driver that failed cannot carry on.
        write_reg(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write_reg(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        add_status(&mut t, VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(
            read_reg(&mut t, VIRTIO_MMIO_STATUS),
            STATUS_FEATURE_SETUP | VIRTIO_CONFIG_S_FAILED
        );
    }

    #[test]
    fn driver_features_are_fixed_once_accepted() {
        let mem = memory(&[(0, 0x10000)]);
        let (mut t, _probe) = transport(&mem);
        write_reg(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0xffff_ffff);
        assert_eq!(t.state().acked_features, 0, "before DRIVER");
        assert_eq!(negotiate(&mut t, FEATURES), STATUS_READY);
        write_reg(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        write_reg(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0);
        assert_eq!(t.state().acked_features, FEATURES, "after FEATURES_OK");
    }

    #[test]
    fn queues_are_configured_only_between_features_ok_and_driver_ok() {
        let mem = memory(&[(0, 0x10000)]);
        let (mut t, _probe) = transport(&mem);
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_NUM, 8);
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(t.state().queues[0].size, 16);
        assert!(!t.state().queues[0].ready);

        bring_up(&mut t, &mem, 0x1000);
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x2000);
        let q1 = t.state().queues[1];
        assert_eq!((q1.size, q1.desc_table), (8, 0), "after DRIVER_OK");
    }

    #[test]
    fn a_ready_queue_cannot_be_moved() {
        let mem = memory(&[(0, 0x10000)]);
        let (mut t, _probe) = transport(&mem);
        assert_eq!(negotiate(&mut t, FEATURES), STATUS_READY);
        setup_queue(&mut t, 0, &GuestQueue::new(&mem, 0x1000, 16));
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
        let q0 = t.state().queues[0];
        assert_eq!((q0.desc_table, q0.size), (0x1000, 16));
        // Disabling it makes it configurable again.
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
        assert_eq!(t.state().queues[0].size, 4);
    }

    #[test]
    fn invalid_queue_sizes_and_alignments_need_a_reset() {
        let mem = memory(&[(0, 0x10000)]);
        let (mut t, probe) = transport(&mem);
        for (reg, value) in [
            (VIRTIO_MMIO_QUEUE_NUM, 12),
            (VIRTIO_MMIO_QUEUE_NUM, 32),
            (VIRTIO_MMIO_QUEUE_NUM, 0),
            (VIRTIO_MMIO_QUEUE_NUM, 0x1_0010),
            (VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1008),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x1001),
            (VIRTIO_MMIO_QUEUE_USED_LOW, 0x1002),
        ] {
            write_reg(&mut t, VIRTIO_MMIO_STATUS, 0);
            assert_eq!(negotiate(&mut t, FEATURES), STATUS_READY);
            write_reg(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
            write_reg(&mut t, reg, value);
            assert_eq!(
                read_reg(&mut t, VIRTIO_MMIO_STATUS),
                STATUS_READY | VIRTIO_CONFIG_S_NEEDS_RESET,
                "{reg:#x} = {value:#x}"
            );
            setup_queue(&mut t, 0, &GuestQueue::new(&mem, 0x1000, 16));
            add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
            assert_eq!(probe.lock().unwrap().activations, 0);
        }
    }

    #[test]
    fn queue_in_a_memory_hole_is_not_enabled_and_activation_fails() {
        // RAM at [0, 64K) and [128K, 192K).
        let mem = memory(&[(0, 0x10000), (0x20000, 0x10000)]);
        let (mut t, probe) = transport(&mem);
        assert_eq!(negotiate(&mut t, FEATURES), STATUS_READY);
        for base in [0x1_0000, 0xff80, 0x2_ff80] {
            setup_queue(&mut t, 0, &GuestQueue::new(&mem, 0x1000, 16));
            write_reg(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
            write_reg(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, base);
            write_reg(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
            assert_eq!(read_reg(&mut t, VIRTIO_MMIO_QUEUE_READY), 0, "{base:#x}");
        }
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(
            read_reg(&mut t, VIRTIO_MMIO_STATUS),
            STATUS_LIVE | VIRTIO_CONFIG_S_NEEDS_RESET
        );
        assert_eq!(probe.lock().unwrap().activations, 0);
        assert_eq!(
            read_reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_CONFIG
        );
        assert_eq!(t.interrupt_event().event_fd().read().unwrap(), 1);
    }

    #[test]
    fn notifications_reach_the_queue_eventfd_only_after_driver_ok() {
        let mem = memory(&[(0, 0x10000)]);
        let (mut t, _probe) = transport(&mem);
        let would_block = |t: &MmioTransport<Mem>, i: usize| match t.queue_events()[i].read() {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            Ok(_) => false,
        };
        assert_eq!(negotiate(&mut t, FEATURES), STATUS_READY);
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert!(would_block(&t, 0));
        setup_queue(&mut t, 0, &GuestQueue::new(&mem, 0x1000, 16));
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 9);
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, u32::MAX);
        assert!(would_block(&t, 0));
        assert_eq!(t.queue_events()[1].read().unwrap(), 2);
    }

    #[test]
    fn device_interrupts_show_in_the_status_register_until_acked() {
        let mem = memory(&[(0, 0x10000)]);
        let (mut t, probe) = transport(&mem);
        bring_up(&mut t, &mem, 0x1000);
        let irq = probe.lock().unwrap().active.as_ref().unwrap().1.clone();
        irq.trigger(InterruptKind::Used).unwrap();
        irq.trigger(InterruptKind::Config).unwrap();
        assert_eq!(read_reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0b11);
        assert_eq!(t.interrupt_event().event_fd().read().unwrap(), 2);
        write_reg(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 0b01);
        assert_eq!(read_reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0b10);
        assert_eq!(t.state().interrupt_status, 0b10);
    }

    #[test]
    fn reset_returns_to_the_initial_state_and_allows_a_new_set_up() {
        let mem = memory(&[(0, 0x10000)]);
        let (mut t, probe) = transport(&mem);
        bring_up(&mut t, &mem, 0x1000);
        probe
            .lock()
            .unwrap()
            .active
            .as_ref()
            .unwrap()
            .1
            .trigger(InterruptKind::Used)
            .unwrap();
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        write_reg(&mut t, VIRTIO_MMIO_STATUS, 0);
        {
            let p = probe.lock().unwrap();
            assert_eq!((p.resets, p.active.is_some()), (1, false));
        }
        let state = t.state();
        assert_eq!(
            (
                state.status,
                state.acked_features,
                state.queue_sel,
                state.interrupt_status
            ),
            (0, 0, 0, 0)
        );
        assert!(state
            .queues
            .iter()
            .all(|q| !q.ready && q.size == q.max_size));

        bring_up(&mut t, &mem, 0x4000);
        let p = probe.lock().unwrap();
        assert_eq!(p.activations, 2);
        assert_eq!(p.active.as_ref().unwrap().0[0].desc_table(), 0x4000);
    }

    #[test]
    fn config_space_passes_through_at_any_width() {
        let mem = memory(&[(0, 0x10000)]);
        let (mut t, probe) = transport(&mem);
        let mut one = [0u8; 1];
        t.read(CONFIG_SPACE_OFFSET + 2, &mut one);
        assert_eq!(one, [3]);
        let mut eight = [0u8; 8];
        t.read(CONFIG_SPACE_OFFSET, &mut eight);
        assert_eq!(eight, [1, 2, 3, 4, 5, 6, 7, 8]);
        let mut past = [0xffu8; 4];
        t.read(CONFIG_SPACE_OFFSET + 6, &mut past);
        assert_eq!(past, [7, 8, 0, 0]);
        t.write(CONFIG_SPACE_OFFSET + 1, &[9, 9]);
        assert_eq!(probe.lock().unwrap().config_writes, [(1, vec![9, 9])]);
    }

    /// `t`'s state through JSON, restored for a new probe on `mem`.
    fn save_and_restore(
        t: &MmioTransport<Mem>,
        mem: &Mem,
    ) -> (MmioTransportState, MmioTransport<Mem>, Arc<Mutex<Probe>>) {
        let state = through_json(&t.state());
        let probe = Arc::new(Mutex::new(Probe::new()));
        let restored = MmioTransport::restore(mem.clone(), probe.clone(), &state).unwrap();
        (state, restored, probe)
    }

    #[test]
    fn a_live_transport_is_restored_active_with_its_live_queues() {
        let mem = memory(&[(0, 0x10000)]);
        let (mut t, probe) = transport(&mem);
        bring_up(&mut t, &mem, 0x1000);
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        {
            let mut p = probe.lock().unwrap();
            let (queues, irq, _) = p.active.as_mut().unwrap();
            // The device took 3 requests and completed 2 since activation.
            queues[0].set_next_avail(3);
            queues[0].set_next_used(2);
            irq.trigger(InterruptKind::Used).unwrap();
        }
        let (state, mut restored, new_probe) = save_and_restore(&t, &mem);
        let q0 = state.queues[0];
        assert_eq!((q0.next_avail, q0.next_used), (3, 2), "the live positions");
        assert!(q0.event_idx_enabled);
        assert_eq!(restored.state(), state);

        let p = new_probe.lock().unwrap();
        assert_eq!((p.activations, p.restores), (1, 1));
        let (queues, _, acked) = p.active.as_ref().unwrap();
        assert_eq!(*acked, FEATURES);
        assert_eq!((queues[0].next_avail(), queues[0].next_used()), (3, 2));
        assert_eq!(queues[0].desc_table(), 0x1000);
        assert!(!queues[1].ready());
        // One kick for the ready queue, none for the other.
        assert_eq!(p.evts[0].read().unwrap(), 1);
        assert!(p.evts[1].read().is_err());
        drop(p);
        assert_eq!(read_reg(&mut restored, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        assert!(
            restored.interrupt_event().event_fd().read().is_err(),
            "the saved interrupt is not raised again"
        );
        assert_eq!(
            read_reg(&mut restored, VIRTIO_MMIO_QUEUE_SEL),
            0,
            "write-only"
        );
        assert_eq!(restored.state().queue_sel, 1);
        // The restored transport carries on: a reset and a new set-up work.
        write_reg(&mut restored, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(new_probe.lock().unwrap().resets, 1);
        bring_up(&mut restored, &mem, 0x4000);
        assert_eq!(new_probe.lock().unwrap().activations, 2);
    }

    #[test]
    fn a_transport_saved_before_driver_ok_is_restored_inactive() {
        let mem = memory(&[(0, 0x10000)]);
        let (mut t, _probe) = transport(&mem);
        assert_eq!(negotiate(&mut t, FEATURES), STATUS_READY);
        setup_queue(&mut t, 0, &GuestQueue::new(&mem, 0x2000, 8));
        write_reg(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let (state, mut restored, probe) = save_and_restore(&t, &mem);
        assert_eq!(restored.state(), state);
        assert_eq!(probe.lock().unwrap().activations, 0);
        assert!(probe.lock().unwrap().evts[0].read().is_err(), "no kick");
        assert_eq!(
            read_reg(&mut restored, VIRTIO_MMIO_DEVICE_FEATURES),
            (FEATURES >> 32) as u32
        );
        // The driver finishes its set-up on the restored transport.
        add_status(&mut restored, VIRTIO_CONFIG_S_DRIVER_OK);
        let p = probe.lock().unwrap();
        assert_eq!((p.activations, p.restores), (1, 0));
        assert_eq!(p.active.as_ref().unwrap().0[0].size(), 8);
    }

    #[test]
    fn a_failed_activation_is_not_retried_on_restore() {
        let mem = memory(&[(0, 0x10000)]);
        let (mut t, _probe) = transport(&mem);
        assert_eq!(negotiate(&mut t, FEATURES), STATUS_READY);
        // Queue 0, which the probe needs, is not set up.
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        let (state, restored, probe) = save_and_restore(&t, &mem);
        assert_ne!(state.status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_eq!(restored.state(), state);
        assert_eq!(probe.lock().unwrap().activations, 0);
    }

    #[test]
    fn a_state_that_does_not_fit_the_device_is_refused() {
        let mem = memory(&[(0, 0x10000)]);
        let (t, _probe) = transport(&mem);
        let restore = |state: &MmioTransportState| {
            let probe = Arc::new(Mutex::new(Probe::new()));
            MmioTransport::restore(mem.clone(), probe, state).unwrap_err()
        };
        let mut missing = t.state();
        missing.queues.pop();
        let err = restore(&missing);
        assert!(
            err.to_string().contains("1 queues saved, the device has 2"),
            "{err}"
        );
        let mut other = t.state();
        other.queues[1].max_size = 32;
        let err = restore(&other);
        assert!(matches!(err, crate::Error::RestoreMismatch { .. }), "{err}");
        let mut bad_size = t.state();
        bad_size.queues[0].size = 3;
        let err = restore(&bad_size);
        assert!(
            matches!(err, crate::Error::Transport(Error::VirtioQueue(_))),
            "{err}"
        );
        // A live queue outside guest memory cannot be activated.
        let mut outside = t.state();
        outside.status = STATUS_LIVE;
        outside.acked_features = FEATURES;
        outside.queues[0].ready = true;
        outside.queues[0].desc_table = 0x10_0000;
        let err = restore(&outside);
        assert!(
            matches!(err, crate::Error::Transport(Error::InvalidQueue(0))),
            "{err}"
        );
    }

    #[test]
    fn command_line_entry() {
        assert_eq!(
            cmdline_entry(0xc000_1000, 5),
            "virtio_mmio.device=4K@0xc0001000:5"
        );
    }
}
