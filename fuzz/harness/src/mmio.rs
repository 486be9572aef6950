//! `virtio_mmio`: a guest's register accesses to a virtio-mmio transport with
//! a virtio-block device behind it.
//!
//! Operations are reads and writes of any offset in the 4 KiB window at any
//! width (1, 2, 4 or 8 bytes), guest memory writes (to lay out queues and
//! requests) and runs of the device's event loop. A model of what the driver
//! wrote checks, after every operation:
//!
//! - reads: the identification registers and QueueNumMax are constant; the
//!   feature word is the device's offer for the selected word; Status only
//!   holds bits the driver set since the last reset (plus NEEDS_RESET, which
//!   the device sets), and is 0 right after a reset; InterruptStatus only has
//!   the two defined bits; shared-memory registers read as -1; every other
//!   offset below the configuration space, and every access that is not an
//!   aligned 32-bit one, reads as 0; the configuration space is the capacity
//!   and seg_max, 0 beyond;
//! - state: the status bits are set in the spec's order; FEATURES_OK implies
//!   the accepted features are offered and include VERSION_1; the device is
//!   active exactly when DRIVER_OK is set without NEEDS_RESET; a ready queue
//!   lies in guest memory; QueueSel is what the driver last wrote;
//! - the backing file keeps its length.
//!
//! Input format: one flags byte ([`FLAG_READ_ONLY`], [`FLAG_HOLE`]), then
//! operations (an [`Op`] code byte and operands) until the input ends.

use std::sync::{Arc, Mutex};

use ember_devices::bus::BusDevice;
use ember_devices::virtio::block::{Block, BlockConfig, QUEUE_SIZE, SEG_MAX};
use ember_devices::virtio::mmio::{MAGIC_VALUE, MMIO_VERSION, MMIO_WINDOW_SIZE, VENDOR_ID};
use ember_devices::virtio::{feature_bit, MmioTransport, VirtioDevice};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL, VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_SHM_BASE_HIGH, VIRTIO_MMIO_SHM_BASE_LOW,
    VIRTIO_MMIO_SHM_LEN_HIGH, VIRTIO_MMIO_SHM_LEN_LOW, VIRTIO_MMIO_STATUS, VIRTIO_MMIO_VENDOR_ID,
    VIRTIO_MMIO_VERSION,
};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::block::{guest_memory, Disk, Mem};
use crate::bytes::{Reader, Writer};

/// Flag: the drive is read-only.
pub const FLAG_READ_ONLY: u8 = 1;
/// Flag: guest memory has a hole (see [`crate::block::HOLE`]).
pub const FLAG_HOLE: u8 = 2;
/// Sectors of the backing file.
const SECTORS: u64 = 16;

/// Operation codes (the code byte is taken modulo [`Op::COUNT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// `u16 offset, u8 width`: a read (offset modulo the window, width 1/2/4/8).
    Read = 0,
    /// `u16 offset, u8 width, u64 value`: a write of the value's low bytes.
    Write = 1,
    /// `u32 addr, u8 len, len bytes`: the driver writes guest memory.
    WriteMem = 2,
    /// Runs the device's event loop once (after a QueueNotify).
    Run = 3,
}

impl Op {
    /// Number of operation codes.
    pub const COUNT: u8 = 4;
}

/// Access widths, by the low two bits of the width byte.
const WIDTHS: [usize; 4] = [1, 2, 4, 8];

type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// What the driver has written, as far as the checks need it.
#[derive(Debug, Default)]
struct Model {
    /// Bits written to Status since the last reset.
    status_bits: u32,
    queue_sel: u32,
    device_features_sel: u32,
}

struct Harness {
    mem: Mem,
    transport: MmioTransport<Mem>,
    block: Arc<Mutex<Block<Mem>>>,
    manager: Manager,
    disk: &'static Disk,
    avail_features: u64,
    config: [u8; 16],
    model: Model,
}

fn is_register_access(offset: u64, width: usize) -> bool {
    width == 4 && offset.is_multiple_of(4)
}

impl Harness {
    fn new(flags: u8) -> Harness {
        let mem = guest_memory(flags & FLAG_HOLE != 0);
        let disk = Disk::fresh(SECTORS * 512);
        let block = Block::new(BlockConfig {
            drive_id: "fuzz".into(),
            path: disk.path().to_path_buf(),
            read_only: flags & FLAG_READ_ONLY != 0,
            ..BlockConfig::default()
        })
        .expect("block device");
        let avail_features = block.avail_features();
        let block = Arc::new(Mutex::new(block));
        let mut manager = Manager::new().expect("event manager");
        manager.add_subscriber(block.clone());
        let transport = MmioTransport::new(mem.clone(), block.clone()).expect("transport");
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&SECTORS.to_le_bytes());
        config[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
        Harness {
            mem,
            transport,
            block,
            manager,
            disk,
            avail_features,
            config,
            model: Model::default(),
        }
    }

    fn step(&mut self, r: &mut Reader) -> Option<()> {
        match r.u8()? % Op::COUNT {
            0 => {
                let offset = u64::from(r.u16()?) % MMIO_WINDOW_SIZE;
                let width = WIDTHS[usize::from(r.u8()? & 3)];
                let mut data = vec![0xa5u8; width];
                self.transport.read(offset, &mut data);
                self.check_read(offset, &data);
            }
            1 => {
                let offset = u64::from(r.u16()?) % MMIO_WINDOW_SIZE;
                let width = WIDTHS[usize::from(r.u8()? & 3)];
                let value = r.u64()?;
                self.transport.write(offset, &value.to_le_bytes()[..width]);
                self.record_write(offset, width, value);
            }
            2 => {
                let addr = u64::from(r.u32()?);
                let len = usize::from(r.u8()?);
                let bytes = r.take(len).unwrap_or_else(|| r.rest());
                let _ = self.mem.write_slice(bytes, GuestAddress(addr));
            }
            _ => {
                self.manager.run_with_timeout(0).expect("event loop");
                let len = self.disk.contents().len() as u64;
                assert_eq!(len, SECTORS * 512, "backing file length");
            }
        }
        self.check_state();
        Some(())
    }

    fn record_write(&mut self, offset: u64, width: usize, value: u64) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) || !is_register_access(offset, width) {
            return;
        }
        let value = value as u32;
        match offset as u32 {
            VIRTIO_MMIO_STATUS if value == 0 => self.model = Model::default(),
            VIRTIO_MMIO_STATUS => self.model.status_bits |= value,
            VIRTIO_MMIO_QUEUE_SEL => self.model.queue_sel = value,
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.model.device_features_sel = value,
            _ => {}
        }
    }

    fn check_read(&self, offset: u64, data: &[u8]) {
        if let Some(config_offset) = offset.checked_sub(u64::from(VIRTIO_MMIO_CONFIG)) {
            for (i, &byte) in data.iter().enumerate() {
                let expected = usize::try_from(config_offset)
                    .ok()
                    .and_then(|o| self.config.get(o + i))
                    .copied()
                    .unwrap_or(0);
                assert_eq!(byte, expected, "config byte {}", config_offset + i as u64);
            }
            return;
        }
        if !is_register_access(offset, data.len()) {
            assert!(
                data.iter().all(|&b| b == 0),
                "{}-byte read at {offset:#x} returned {data:?}",
                data.len()
            );
            return;
        }
        let value = u32::from_le_bytes(data.try_into().expect("4 bytes"));
        let feature_word = match self.model.device_features_sel {
            0 => self.avail_features as u32,
            1 => (self.avail_features >> 32) as u32,
            _ => 0,
        };
        let status_allowed = self.model.status_bits | VIRTIO_CONFIG_S_NEEDS_RESET;
        match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => assert_eq!(value, MAGIC_VALUE),
            VIRTIO_MMIO_VERSION => assert_eq!(value, MMIO_VERSION),
            VIRTIO_MMIO_DEVICE_ID => assert_eq!(value, VIRTIO_ID_BLOCK),
            VIRTIO_MMIO_VENDOR_ID => assert_eq!(value, VENDOR_ID),
            VIRTIO_MMIO_DEVICE_FEATURES => assert_eq!(value, feature_word, "feature word"),
            VIRTIO_MMIO_QUEUE_NUM_MAX => {
                let max = if self.model.queue_sel == 0 {
                    u32::from(QUEUE_SIZE)
                } else {
                    0
                };
                assert_eq!(value, max, "QueueNumMax of queue {}", self.model.queue_sel);
            }
            VIRTIO_MMIO_QUEUE_READY => assert!(value <= 1, "QueueReady {value}"),
            VIRTIO_MMIO_INTERRUPT_STATUS => assert_eq!(value & !3, 0, "InterruptStatus"),
            VIRTIO_MMIO_STATUS => {
                assert_eq!(
                    value & !status_allowed,
                    0,
                    "Status {value:#x} holds bits the driver never set (it set {:#x})",
                    self.model.status_bits
                );
            }
            VIRTIO_MMIO_SHM_LEN_LOW
            | VIRTIO_MMIO_SHM_LEN_HIGH
            | VIRTIO_MMIO_SHM_BASE_LOW
            | VIRTIO_MMIO_SHM_BASE_HIGH => assert_eq!(value, u32::MAX),
            VIRTIO_MMIO_CONFIG_GENERATION => assert_eq!(value, 0),
            other => assert_eq!(value, 0, "read of register {other:#x}"),
        }
    }

    fn check_state(&self) {
        let state = self.transport.state();
        let status = state.status;
        assert_eq!(
            status & !(self.model.status_bits | VIRTIO_CONFIG_S_NEEDS_RESET),
            0,
            "Status {status:#x}, driver set {:#x}",
            self.model.status_bits
        );
        let implies = [
            (VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_ACKNOWLEDGE),
            (VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_DRIVER),
            (VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK),
        ];
        for (bit, needs) in implies {
            assert!(
                status & bit == 0 || status & needs != 0,
                "Status {status:#x}: {bit:#x} without {needs:#x}"
            );
        }
        if status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            assert_eq!(state.acked_features & !self.avail_features, 0);
            assert_ne!(state.acked_features & feature_bit(VIRTIO_F_VERSION_1), 0);
        }
        let live =
            status & VIRTIO_CONFIG_S_DRIVER_OK != 0 && status & VIRTIO_CONFIG_S_NEEDS_RESET == 0;
        let active = self.block.lock().expect("lock").is_activated();
        assert_eq!(
            active, live,
            "device active {active} with Status {status:#x}"
        );
        assert_eq!(state.queue_sel, self.model.queue_sel, "QueueSel");
        assert_eq!(state.interrupt_status & !3, 0);
        for (i, q) in state.queues.iter().enumerate() {
            if q.ready {
                let queue = Queue::try_from(QueueState::from(*q)).expect("a ready queue's state is valid");
                assert!(
                    queue.is_valid(&self.mem),
                    "ready queue {i} is not in memory"
                );
            }
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let Some(flags) = r.u8() else {
        return;
    };
    let mut h = Harness::new(flags);
    while h.step(&mut r).is_some() {}
}

/// Seed builder.
#[derive(Debug)]
pub struct SeedBuilder {
    w: Writer,
}

impl SeedBuilder {
    /// A seed with `flags`.
    pub fn new(flags: u8) -> SeedBuilder {
        let mut w = Writer::new();
        w.u8(flags);
        SeedBuilder { w }
    }

    /// A read.
    pub fn read(&mut self, offset: u16, width: usize) -> &mut Self {
        let sel = WIDTHS.iter().position(|&w| w == width).expect("width") as u8;
        self.w.u8(Op::Read as u8).u16(offset).u8(sel);
        self
    }

    /// A write.
    pub fn write(&mut self, offset: u16, width: usize, value: u64) -> &mut Self {
        let sel = WIDTHS.iter().position(|&w| w == width).expect("width") as u8;
        self.w.u8(Op::Write as u8).u16(offset).u8(sel).u64(value);
        self
    }

    /// A 32-bit register write.
    pub fn reg(&mut self, reg: u32, value: u32) -> &mut Self {
        self.write(reg as u16, 4, u64::from(value))
    }

    /// A 32-bit register read.
    pub fn get(&mut self, reg: u32) -> &mut Self {
        self.read(reg as u16, 4)
    }

    /// Writes guest memory (in pieces of at most 255 bytes).
    pub fn mem(&mut self, addr: u32, bytes: &[u8]) -> &mut Self {
        for (i, piece) in bytes.chunks(255).enumerate() {
            self.w
                .u8(Op::WriteMem as u8)
                .u32(addr + 255 * i as u32)
                .u8(piece.len() as u8)
                .bytes(piece);
        }
        self
    }

    /// Runs the event loop.
    pub fn run(&mut self) -> &mut Self {
        self.w.u8(Op::Run as u8);
        self
    }

    /// The input.
    pub fn finish(self) -> Vec<u8> {
        self.w.finish()
    }
}
