//! virtio-block driven the way a guest drives it: requests laid out in real
//! virtqueues in guest memory, notifications through the event loop, a temp
//! file as the disk. Includes a hostile guest and the MMIO handshake.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::SubscriberOps;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_DEVICE_FEATURES, VIRTIO_MMIO_DEVICE_FEATURES_SEL, VIRTIO_MMIO_DEVICE_ID,
    VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_INT_CONFIG,
    VIRTIO_MMIO_INT_VRING, VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_VERSION,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VRING_USED_F_NO_NOTIFY};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::bus::BusDevice;
use crate::virtio::mmio::CONFIG_SPACE_OFFSET;
use crate::virtio::test_utils::{
    add_status, assert_features, bucket, guest_bytes, memory, negotiate, notify_queue, read_reg,
    run_until_used, setup_queue, write_desc, write_reg, Areas, GuestQueue, Manager, Mem, INDIRECT,
    NEXT, WRITE,
};
use crate::virtio::{feature_bit, IrqTrigger, MmioTransport, VirtioDevice};

const MEM_SIZE: usize = 0x10_0000;
const QUEUE_BASE: u64 = 0x1000;
/// Buffers are allocated upwards from here.
const AREA_START: u64 = 0x2_0000;
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// A request the test put in the queue.
#[derive(Debug)]
struct Req {
    head: u16,
    data: Vec<u64>,
    status: u64,
}

/// A block device on an event loop, with the guest side of its queue.
struct Harness {
    mem: Mem,
    gq: GuestQueue,
    block: Arc<Mutex<Block<Mem>>>,
    manager: Manager,
    irq: Arc<IrqTrigger>,
    file: tempfile::NamedTempFile,
    next_desc: u16,
    areas: Areas,
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn temp_file(contents: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(contents).unwrap();
    file
}

impl Harness {
    /// A device on a temp file holding `contents`, not yet active.
    fn inactive(contents: &[u8], configure: impl FnOnce(&mut BlockConfig)) -> Harness {
        let file = temp_file(contents);
        let mut config = BlockConfig {
            drive_id: "rootfs".to_string(),
            path: file.path().to_path_buf(),
            ..BlockConfig::default()
        };
        configure(&mut config);
        let block = Arc::new(Mutex::new(Block::new(config).unwrap()));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(block.clone());
        let mem = memory(&[(0, MEM_SIZE)]);
        Harness {
            gq: GuestQueue::new(&mem, QUEUE_BASE, QUEUE_SIZE),
            mem,
            block,
            manager,
            irq: Arc::new(IrqTrigger::new().unwrap()),
            file,
            next_desc: 0,
            areas: Areas::new(AREA_START),
        }
    }

    /// An active device on a temp file holding `contents`.
    fn new(contents: &[u8], configure: impl FnOnce(&mut BlockConfig)) -> Harness {
        let mut h = Harness::inactive(contents, configure);
        h.activate(false);
        h
    }

    fn activate(&mut self, event_idx: bool) {
        let mut queue = self.gq.device_queue(QUEUE_SIZE);
        queue.set_event_idx(event_idx);
        let mut features = feature_bit(VIRTIO_F_VERSION_1);
        if event_idx {
            features |= feature_bit(VIRTIO_RING_F_EVENT_IDX);
        }
        self.block
            .lock()
            .unwrap()
            .activate(self.mem.clone(), vec![queue], self.irq.clone(), features)
            .unwrap();
    }

    fn area(&mut self, len: u32) -> u64 {
        self.areas.take(len)
    }

    /// A 16-byte request header of type `kind` for `sector`: its address.
    fn header(&mut self, kind: u32, sector: u64) -> u64 {
        let hdr = self.area(16);
        self.mem.write_obj(kind.to_le(), GuestAddress(hdr)).unwrap();
        self.mem
            .write_obj(sector.to_le(), GuestAddress(hdr + 8))
            .unwrap();
        hdr
    }

    /// Queues a chain: a 16-byte header, data buffers of the given lengths
    /// and flags, and a 1-byte device-writable status.
    fn request(&mut self, kind: u32, sector: u64, data: &[(u32, u16)]) -> Req {
        let hdr = self.header(kind, sector);
        let data: Vec<(u64, u32, u16)> = data
            .iter()
            .map(|&(len, flags)| (self.area(len), len, flags))
            .collect();
        let status = self.area(1);
        self.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let mut descs = vec![(hdr, 16, 0)];
        descs.extend(&data);
        descs.push((status, 1, WRITE));
        let head = self.chain(&descs);
        Req {
            head,
            data: data.iter().map(|d| d.0).collect(),
            status,
        }
    }

    /// Queues `descs` as one chain at the next free descriptor indices.
    fn chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        self.next_desc += descs.len() as u16;
        self.gq.add_chain(head, descs)
    }

    fn read_req(&mut self, sector: u64, lens: &[u32]) -> Req {
        let data: Vec<_> = lens.iter().map(|&l| (l, WRITE)).collect();
        self.request(VIRTIO_BLK_T_IN, sector, &data)
    }

    fn write_req(&mut self, sector: u64, bytes: &[u8]) -> Req {
        let req = self.request(VIRTIO_BLK_T_OUT, sector, &[(bytes.len() as u32, 0)]);
        self.mem
            .write_slice(bytes, GuestAddress(req.data[0]))
            .unwrap();
        req
    }

    /// Notifies the queue, as the guest's QueueNotify write through an
    /// ioeventfd does, and runs the event loop once.
    fn kick(&mut self) {
        notify_queue(&self.block, 0);
        self.manager.run_with_timeout(1000).unwrap();
    }

    /// Runs the event loop until `n` requests are used; returns the number of
    /// loop wake-ups it took.
    fn run_until_used(&mut self, n: u16, limit: Duration) -> usize {
        run_until_used(&mut self.manager, &self.gq, n, limit)
    }

    fn status(&self, req: &Req) -> u8 {
        self.mem.read_obj(GuestAddress(req.status)).unwrap()
    }

    fn guest_bytes(&self, at: u64, len: usize) -> Vec<u8> {
        guest_bytes(&self.mem, at, len)
    }

    fn file_bytes(&self) -> Vec<u8> {
        std::fs::read(self.file.path()).unwrap()
    }

    fn counters(&self) -> BlockCounters {
        self.block.lock().unwrap().counters()
    }

    /// The used-ring entry for the `i`th completion: (head, length).
    fn used(&self, i: u16) -> (u32, u32) {
        self.gq.used_elem(i)
    }
}

#[test]
fn write_reaches_the_file() {
    let original = pattern(8 * 512, 1);
    let mut h = Harness::new(&original, |_| {});
    let bytes = pattern(1024, 77);
    let req = h.write_req(1, &bytes);
    h.kick();
    assert_eq!(h.status(&req), OK);
    assert_eq!(h.used(0), (u32::from(req.head), 1));
    let file = h.file_bytes();
    assert_eq!(file[512..1536], bytes[..]);
    assert_eq!(file[..512], original[..512]);
    assert_eq!(file[1536..], original[1536..]);
    let c = h.counters();
    assert_eq!((c.requests, c.writes, c.write_bytes), (1, 1, 1024));
    assert_eq!(h.irq.status(), VIRTIO_MMIO_INT_VRING);
    assert_eq!(h.irq.event().event_fd().read().unwrap(), 1);
}

#[test]
fn read_returns_the_file_through_scattered_buffers() {
    let contents = pattern(8 * 512, 5);
    let mut h = Harness::new(&contents, |_| {});
    let req = h.read_req(2, &[1024, 512]);
    h.kick();
    assert_eq!(h.status(&req), OK);
    assert_eq!(h.used(0), (u32::from(req.head), 1537));
    assert_eq!(h.guest_bytes(req.data[0], 1024), contents[1024..2048]);
    assert_eq!(h.guest_bytes(req.data[1], 512), contents[2048..2560]);
    let c = h.counters();
    assert_eq!((c.reads, c.read_bytes), (1, 1536));
}

#[test]
fn a_batch_is_completed_with_one_interrupt() {
    let mut h = Harness::new(&pattern(16 * 512, 9), |_| {});
    let reqs: Vec<Req> = (0..5).map(|i| h.read_req(i, &[512])).collect();
    h.kick();
    assert_eq!(h.gq.used_idx(), 5);
    assert!(reqs.iter().all(|r| h.status(r) == OK));
    assert_eq!(h.irq.event().event_fd().read().unwrap(), 1);
}

#[test]
fn flush_syncs_only_with_writeback() {
    for (cache_type, syncs) in [(CacheType::Writeback, 1), (CacheType::Unsafe, 0)] {
        let mut h = Harness::new(&[0u8; 1024], |c| c.cache_type = cache_type);
        let features = h.block.lock().unwrap().avail_features();
        assert_ne!(features & feature_bit(VIRTIO_BLK_F_FLUSH), 0);
        let write = h.write_req(0, &[3u8; 512]);
        let flush = h.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
        h.kick();
        assert_eq!((h.status(&write), h.status(&flush)), (OK, OK));
        assert_eq!(h.used(1), (u32::from(flush.head), 1));
        let c = h.counters();
        assert_eq!((c.flushes, c.syncs), (1, syncs), "{cache_type:?}");
        assert_eq!(h.file_bytes()[..512], [3u8; 512]);
    }
}

#[test]
fn read_only_drive_refuses_writes() {
    let original = pattern(4 * 512, 2);
    let mut h = Harness::new(&original, |c| c.read_only = true);
    let features = h.block.lock().unwrap().avail_features();
    assert_ne!(features & feature_bit(VIRTIO_BLK_F_RO), 0);
    let write = h.write_req(0, &[9u8; 512]);
    let read = h.read_req(0, &[512]);
    let flush = h.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    h.kick();
    assert_eq!(h.status(&write), IOERR);
    assert_eq!(h.used(0), (u32::from(write.head), 1));
    assert_eq!(h.status(&read), OK);
    assert_eq!(h.status(&flush), OK);
    assert_eq!(h.file_bytes(), original);
    assert_eq!(h.counters().io_errors, 1);
}

#[test]
fn io_beyond_the_capacity_fails_without_touching_the_file() {
    // 8 sectors, plus a partial one the guest cannot see.
    let original = pattern(8 * 512 + 100, 3);
    let mut h = Harness::new(&original, |_| {});
    let bad = [
        h.read_req(7, &[1024]),
        h.write_req(8, &[1u8; 512]),
        h.write_req(7, &[1u8; 1024]),
        h.read_req(u64::MAX, &[512]),
        h.read_req(u64::MAX / 512, &[512]),
        h.read_req(0, &[100]),
    ];
    let good = h.read_req(7, &[512]);
    h.kick();
    for req in &bad {
        assert_eq!(h.status(req), IOERR, "{req:?}");
    }
    assert_eq!(h.status(&good), OK);
    assert_eq!(h.file_bytes(), original);
    let c = h.counters();
    assert_eq!((c.requests, c.io_errors, c.reads), (7, 6, 1));
    let mut config = [0u8; 8];
    h.block.lock().unwrap().read_config(0, &mut config);
    assert_eq!(u64::from_le_bytes(config), 8);
}

#[test]
fn host_io_error_is_reported_to_the_guest() {
    let mut h = Harness::new(&pattern(8 * 512, 4), |_| {});
    // The file shrinks behind the device's back.
    h.file.as_file().set_len(512).unwrap();
    let req = h.read_req(4, &[512]);
    h.kick();
    assert_eq!(h.status(&req), IOERR);
    assert_eq!(h.used(0).1, 1);
}

#[test]
fn get_id_returns_the_drive_id_zero_padded() {
    let mut h = Harness::new(&[0u8; 512], |_| {});
    let req = h.request(VIRTIO_BLK_T_GET_ID, 0, &[(20, WRITE)]);
    h.mem
        .write_slice(&[0xaa; 20], GuestAddress(req.data[0]))
        .unwrap();
    let short = h.request(VIRTIO_BLK_T_GET_ID, 0, &[(4, WRITE)]);
    h.kick();
    assert_eq!(h.status(&req), OK);
    let mut expected = *b"rootfs\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
    assert_eq!(h.guest_bytes(req.data[0], 20), expected);
    assert_eq!(h.used(0).1, 21);
    assert_eq!(h.guest_bytes(short.data[0], 4), b"root");
    assert_eq!(h.used(1).1, 5);

    let mut h = Harness::new(&[0u8; 512], |c| {
        c.drive_id = "a-drive-id-longer-than-twenty-bytes".to_string()
    });
    let req = h.request(VIRTIO_BLK_T_GET_ID, 0, &[(20, WRITE)]);
    h.kick();
    expected.copy_from_slice(b"a-drive-id-longer-th");
    assert_eq!(h.guest_bytes(req.data[0], 20), expected);
}

#[test]
fn unknown_request_types_are_unsupported() {
    let mut h = Harness::new(&[0u8; 512], |_| {});
    let req = h.request(0x55, 0, &[(512, WRITE)]);
    h.kick();
    assert_eq!(h.status(&req), UNSUPP);
    assert_eq!(h.used(0).1, 1);
    assert_eq!(h.counters().unsupported, 1);
}

#[test]
fn config_space_and_features() {
    let h = Harness::new(&[0u8; 3 * 512], |_| {});
    let block = h.block.lock().unwrap();
    let features = block.avail_features();
    assert_features(
        features,
        &[
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_SEG_MAX,
        ],
    );
    assert_eq!(features & feature_bit(VIRTIO_BLK_F_RO), 0);
    let mut config = [0xffu8; 20];
    block.read_config(0, &mut config);
    assert_eq!(config[..8], 3u64.to_le_bytes());
    assert_eq!(config[12..16], SEG_MAX.to_le_bytes());
    assert_eq!(config[16..], [0; 4], "past the end reads as 0");
    let mut far = [0xffu8; 4];
    block.read_config(u64::MAX, &mut far);
    assert_eq!(far, [0; 4]);
}

#[test]
fn swapping_the_backing_file_updates_capacity_and_notifies() {
    let mut h = Harness::new(&[0u8; 512], |_| {});
    let bigger = pattern(16 * 512, 8);
    let new_file = temp_file(&bigger);
    let generation = h.block.lock().unwrap().config_generation();
    h.block
        .lock()
        .unwrap()
        .swap_backing_file(new_file.path())
        .unwrap();
    {
        let block = h.block.lock().unwrap();
        assert_eq!(block.config_generation(), generation.wrapping_add(1));
        assert_eq!(block.state().capacity_sectors, 16);
        assert_eq!(block.state().path, new_file.path());
    }
    assert_eq!(h.irq.status(), VIRTIO_MMIO_INT_CONFIG);
    let req = h.read_req(15, &[512]);
    h.kick();
    assert_eq!(h.status(&req), OK);
    assert_eq!(h.guest_bytes(req.data[0], 512), bigger[15 * 512..]);

    let missing = h
        .block
        .lock()
        .unwrap()
        .swap_backing_file(std::path::Path::new("/nonexistent/disk"));
    assert!(missing.is_err());
    assert_eq!(h.block.lock().unwrap().state().capacity_sectors, 16);
}

#[test]
fn reset_midway_then_set_up_again() {
    let contents = pattern(4 * 512, 6);
    let mut h = Harness::new(&contents, |_| {});
    let first = h.read_req(0, &[512]);
    h.kick();
    assert_eq!(h.status(&first), OK);

    h.block.lock().unwrap().reset();
    assert!(!h.block.lock().unwrap().is_activated());
    assert!(h.block.lock().unwrap().queue_states().is_empty());
    let pending = h.read_req(1, &[512]);
    h.kick();
    assert_eq!(h.gq.used_idx(), 1, "an inactive device does nothing");
    assert_eq!(h.counters().ignored_notifications, 1);

    // The driver sets up a fresh queue elsewhere.
    h.gq = GuestQueue::new(&h.mem, 0x8000, 64);
    h.next_desc = 0;
    h.activate(true);
    let second = h.read_req(2, &[512]);
    h.kick();
    assert_eq!(h.gq.used_idx(), 1);
    assert_eq!(h.status(&second), OK);
    assert_eq!(h.status(&pending), 0xff, "the old queue is gone");
    assert_eq!(h.guest_bytes(second.data[0], 512), contents[1024..1536]);
}

#[test]
fn requests_queued_before_activation_are_processed_once_active() {
    let mut h = Harness::inactive(&pattern(512, 1), |_| {});
    let req = h.read_req(0, &[512]);
    h.kick();
    assert_eq!(h.counters().ignored_notifications, 1);
    assert_eq!(h.gq.used_idx(), 0);
    h.activate(false);
    h.manager.run_with_timeout(1000).unwrap();
    assert_eq!(h.status(&req), OK);
}

#[test]
fn activation_needs_a_ready_queue_and_happens_once() {
    let h = Harness::inactive(&[0u8; 512], |_| {});
    let mut queue = h.gq.device_queue(QUEUE_SIZE);
    queue.set_ready(false);
    let mut block = h.block.lock().unwrap();
    let irq: Arc<dyn crate::virtio::VirtioInterrupt> = h.irq.clone();
    let err = block.activate(h.mem.clone(), vec![queue], irq.clone(), 0);
    assert!(matches!(
        err,
        Err(crate::Error::Activation(
            crate::virtio::ActivationError::QueueNotReady(0)
        ))
    ));
    let err = block.activate(h.mem.clone(), Vec::new(), irq.clone(), 0);
    assert!(matches!(
        err,
        Err(crate::Error::Activation(
            crate::virtio::ActivationError::QueueNotReady(0)
        ))
    ));
    let queue = h.gq.device_queue(QUEUE_SIZE);
    block
        .activate(h.mem.clone(), vec![queue], irq.clone(), 0)
        .unwrap();
    let queue = h.gq.device_queue(QUEUE_SIZE);
    let err = block.activate(h.mem.clone(), vec![queue], irq, 0);
    assert!(matches!(
        err,
        Err(crate::Error::Activation(
            crate::virtio::ActivationError::AlreadyActive
        ))
    ));
}

#[test]
fn event_idx_suppresses_interrupts_the_driver_did_not_ask_for() {
    let mut h = Harness::inactive(&[0u8; 4 * 512], |_| {});
    h.activate(true);
    h.manager.run_with_timeout(100).unwrap();
    // The driver wants an interrupt only after the 6th completion.
    h.gq.set_used_event(5);
    h.read_req(0, &[512]);
    h.kick();
    assert_eq!(h.gq.used_idx(), 1);
    assert_eq!(h.irq.status(), 0);
    h.gq.set_used_event(1);
    h.read_req(1, &[512]);
    h.kick();
    assert_eq!(h.gq.used_idx(), 2);
    assert_eq!(h.irq.status(), VIRTIO_MMIO_INT_VRING);
}

#[test]
fn state_reflects_the_device() {
    let mut h = Harness::new(&[0u8; 4 * 512], |c| {
        c.read_only = true;
        c.cache_type = CacheType::Writeback;
        c.ops = bucket(100, 0, 1000);
    });
    h.read_req(0, &[512]);
    h.kick();
    let state = h.block.lock().unwrap().state();
    assert_eq!(state.drive_id, "rootfs");
    assert!(state.read_only);
    assert_eq!(state.cache_type, CacheType::Writeback);
    assert_eq!(state.capacity_sectors, 4);
    assert_eq!(state.acked_features, feature_bit(VIRTIO_F_VERSION_1));
    let queue = h.block.lock().unwrap().queue_states()[0];
    assert_eq!((queue.next_avail, queue.next_used), (1, 1));
    assert_eq!(state.rate_limiter.ops.unwrap().budget, 99);
    assert!(state.rate_limiter.bandwidth.is_none());
    assert_eq!(state.counters.reads, 1);
}

// ---- Hostile guest ----------------------------------------------------------

#[test]
fn looping_chains_are_completed_not_followed_forever() {
    let mut h = Harness::new(&[0u8; 4 * 512], |_| {});
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let data = h.area(512);
    let status = h.area(1);
    // 0 -> 1 -> 2 -> 0 -> ...
    h.gq.set_desc(0, (hdr, 16, NEXT, 1));
    h.gq.set_desc(1, (data, 512, WRITE | NEXT, 2));
    h.gq.set_desc(2, (status, 1, WRITE | NEXT, 0));
    h.gq.publish(0);
    // A readable descriptor pointing at itself.
    h.gq.set_desc(3, (hdr, 16, NEXT, 3));
    h.gq.publish(3);
    h.next_desc = 4;
    let good = h.read_req(0, &[512]);
    let start = Instant::now();
    h.kick();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(h.gq.used_idx(), 3);
    assert_eq!(h.used(0), (0, 1));
    assert_eq!(h.mem.read_obj::<u8>(GuestAddress(status)).unwrap(), IOERR);
    assert_eq!(h.used(1), (3, 0), "no status byte: returned with length 0");
    assert_eq!(h.status(&good), OK);
    assert_eq!(h.counters().invalid_chains, 2);
}

#[test]
fn buffers_outside_guest_memory_are_never_touched() {
    let original = pattern(4 * 512, 7);
    let mut h = Harness::new(&original, |_| {});
    let outside = MEM_SIZE as u64 + 0x1000;
    let straddling = MEM_SIZE as u64 - 256;
    // Data outside memory: write and read fail, the file is untouched.
    let hdr = h.header(VIRTIO_BLK_T_OUT, 0);
    let status = h.area(1);
    h.chain(&[(hdr, 16, 0), (outside, 512, 0), (status, 1, WRITE)]);
    let hdr2 = h.header(VIRTIO_BLK_T_IN, 0);
    let status2 = h.area(1);
    h.chain(&[(hdr2, 16, 0), (straddling, 512, WRITE), (status2, 1, WRITE)]);
    // Status outside memory: nothing can be reported.
    h.chain(&[(hdr2, 16, 0), (0x3_0000, 512, WRITE), (outside, 1, WRITE)]);
    // Header outside memory.
    let status4 = h.area(1);
    h.chain(&[(u64::MAX - 8, 16, 0), (status4, 1, WRITE)]);
    h.kick();
    assert_eq!(h.gq.used_idx(), 4);
    for status in [status, status2, status4] {
        assert_eq!(h.mem.read_obj::<u8>(GuestAddress(status)).unwrap(), IOERR);
    }
    assert_eq!(h.used(2).1, 0);
    assert_eq!(h.file_bytes(), original);
    assert_eq!(h.guest_bytes(straddling, 256), vec![0u8; 256]);
    assert_eq!(h.counters().invalid_chains, 4);
}

#[test]
fn data_in_the_wrong_direction_is_refused() {
    let original = pattern(4 * 512, 8);
    let mut h = Harness::new(&original, |_| {});
    let read_into_readable = h.request(VIRTIO_BLK_T_IN, 0, &[(512, 0)]);
    let write_from_writable = h.request(VIRTIO_BLK_T_OUT, 0, &[(512, WRITE)]);
    h.mem
        .write_slice(&[0x5a; 512], GuestAddress(write_from_writable.data[0]))
        .unwrap();
    h.kick();
    assert_eq!(h.status(&read_into_readable), IOERR);
    assert_eq!(h.guest_bytes(read_into_readable.data[0], 512), [0u8; 512]);
    assert_eq!(h.status(&write_from_writable), IOERR);
    assert_eq!(h.file_bytes(), original);
    assert_eq!(h.counters().invalid_chains, 2);
}

#[test]
fn status_buffer_too_short_or_read_only() {
    let original = pattern(4 * 512, 9);
    let mut h = Harness::new(&original, |_| {});
    // A read-only status: nowhere to report, returned with length 0.
    let hdr = h.header(VIRTIO_BLK_T_OUT, 0);
    let data = h.area(512);
    h.mem.write_slice(&[1; 512], GuestAddress(data)).unwrap();
    let ro_status = h.area(1);
    h.chain(&[(hdr, 16, 0), (data, 512, 0), (ro_status, 1, 0)]);
    // An empty status after read data: the last data byte becomes the status
    // byte, which leaves a data length that is not whole sectors.
    let hdr2 = h.header(VIRTIO_BLK_T_IN, 0);
    let data2 = h.area(512);
    let empty_status = h.area(1);
    h.chain(&[(hdr2, 16, 0), (data2, 512, WRITE), (empty_status, 0, WRITE)]);
    h.kick();
    assert_eq!(h.gq.used_idx(), 2);
    assert_eq!(h.used(0).1, 0);
    assert_eq!(
        h.file_bytes(),
        original,
        "a request with no status is not run"
    );
    assert_eq!(h.used(1).1, 1);
    assert_eq!(
        h.mem.read_obj::<u8>(GuestAddress(data2 + 511)).unwrap(),
        IOERR
    );
    let c = h.counters();
    assert_eq!((c.invalid_chains, c.io_errors), (1, 1));
}

#[test]
fn lengths_that_overflow_are_refused() {
    let original = pattern(4 * 512, 10);
    let mut h = Harness::new(&original, |_| {});
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let status = h.area(1);
    // The chain adds up to more than 4 GiB.
    h.chain(&[
        (hdr, 16, 0),
        (0x3_0000, 0xffff_fff8, WRITE),
        (status, 1, WRITE),
    ]);
    // Sector numbers whose byte offset overflows.
    let far = h.read_req(u64::MAX / 256, &[512]);
    let wrap = h.write_req(u64::MAX / 512, &[1; 1024]);
    h.kick();
    assert_eq!(h.gq.used_idx(), 3);
    assert_eq!(h.used(0).1, 0);
    assert_eq!(h.status(&far), IOERR);
    assert_eq!(h.status(&wrap), IOERR);
    assert_eq!(h.file_bytes(), original);
}

#[test]
fn more_buffers_than_seg_max_are_refused() {
    let original = pattern(4 * 512, 11);
    let mut h = Harness::new(&original, |_| {});
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let status = h.area(1);
    // An indirect table longer than the queue: header, 300 data buffers, status.
    let count = 302u16;
    let table = h.area(16 * u32::from(count));
    let data = h.area(300);
    write_desc(&h.mem, GuestAddress(table), 0, (hdr, 16, NEXT, 1));
    for i in 1..count - 1 {
        let buf = data + u64::from(i) - 1;
        write_desc(
            &h.mem,
            GuestAddress(table),
            i,
            (buf, 1, WRITE | NEXT, i + 1),
        );
    }
    write_desc(
        &h.mem,
        GuestAddress(table),
        count - 1,
        (status, 1, WRITE, 0),
    );
    h.chain(&[(table, 16 * u32::from(count), INDIRECT)]);
    h.kick();
    assert_eq!(h.gq.used_idx(), 1);
    assert_eq!(h.mem.read_obj::<u8>(GuestAddress(status)).unwrap(), IOERR);
    assert_eq!(h.guest_bytes(data, 300), vec![0u8; 300]);
    assert_eq!(h.counters().invalid_chains, 1);
}

#[test]
fn bogus_head_index_does_not_stop_the_queue() {
    let mut h = Harness::new(&pattern(512, 1), |_| {});
    h.gq.publish(QUEUE_SIZE + 7);
    let good = h.read_req(0, &[512]);
    h.kick();
    assert_eq!(h.status(&good), OK);
    let c = h.counters();
    assert_eq!((c.invalid_chains, c.event_errors), (1, 1));
}

#[test]
fn available_index_beyond_the_queue_size_does_not_spin() {
    let mut h = Harness::new(&pattern(512, 1), |_| {});
    h.gq.set_avail_idx(QUEUE_SIZE + 10);
    let start = Instant::now();
    h.kick();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(h.gq.used_idx(), 0);
    assert_eq!(h.counters().invalid_chains, 1);
}

// ---- Rate limiting ----------------------------------------------------------

#[test]
fn ops_limit_delays_requests_without_busy_waiting() {
    // 10 operations per 100 ms, no burst: 30 requests need at least 200 ms.
    let mut h = Harness::new(&pattern(64 * 512, 12), |c| c.ops = bucket(10, 0, 100));
    let start = Instant::now();
    let reqs: Vec<Req> = (0..30).map(|i| h.read_req(i, &[512])).collect();
    h.kick();
    assert_eq!(h.gq.used_idx(), 10, "the first 10 go through at once");
    let wakeups = h.run_until_used(30, Duration::from_secs(5));
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert!(reqs.iter().all(|r| h.status(r) == OK));
    // One wake-up per refill at most: a throttled device sleeps.
    assert!(wakeups <= 21, "{wakeups} wake-ups");
    let c = h.counters();
    assert!(c.throttled >= 1);
    assert_eq!(c.reads, 30);
}

#[test]
fn bandwidth_limit_delays_requests() {
    // 8 KiB per 50 ms: six 4 KiB reads need 16 KiB more than the bucket: 100 ms.
    let mut h = Harness::new(&pattern(64 * 512, 13), |c| {
        c.bandwidth = bucket(8192, 0, 50)
    });
    let start = Instant::now();
    for i in 0..6 {
        h.read_req(i * 8, &[4096]);
    }
    h.kick();
    assert_eq!(h.gq.used_idx(), 2);
    h.run_until_used(6, Duration::from_secs(5));
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert_eq!(h.counters().read_bytes, 6 * 4096);
}

#[test]
fn request_larger_than_the_bucket_goes_through_and_later_ones_wait() {
    // 1 KiB per 10 ms; a 4 KiB write leaves 3 KiB of debt (30 ms).
    let mut h = Harness::new(&[0u8; 16 * 512], |c| c.bandwidth = bucket(1024, 0, 10));
    let start = Instant::now();
    h.write_req(0, &[1; 4096]);
    h.read_req(0, &[512]);
    h.kick();
    assert_eq!(h.gq.used_idx(), 1);
    h.run_until_used(2, Duration::from_secs(5));
    assert!(start.elapsed() >= Duration::from_millis(35));
    assert_eq!(h.file_bytes()[..4096], [1; 4096]);
}

#[test]
fn one_time_burst_lets_the_first_requests_through() {
    let mut h = Harness::new(&pattern(64 * 512, 14), |c| c.ops = bucket(1, 20, 60_000));
    for i in 0..25 {
        h.read_req(i, &[512]);
    }
    h.kick();
    assert_eq!(h.gq.used_idx(), 21, "burst plus the bucket");
    // While throttled the device asks not to be notified, and a notification
    // sent anyway does not make it process anything.
    assert_ne!(h.gq.used_flags() & VRING_USED_F_NO_NOTIFY as u16, 0);
    h.kick();
    assert_eq!(h.gq.used_idx(), 21);
    assert!(h.counters().throttled >= 1);
    // Lifting the limit wakes the device at once rather than in a minute.
    h.block.lock().unwrap().update_rate_limiter(
        ember_ratelimit::BucketUpdate::Keep,
        ember_ratelimit::BucketUpdate::Disable,
    );
    h.run_until_used(25, Duration::from_secs(5));
    assert!(h.block.lock().unwrap().state().rate_limiter.ops.is_none());
    assert_eq!(h.gq.used_flags() & VRING_USED_F_NO_NOTIFY as u16, 0);
}

// ---- Through the MMIO transport ----------------------------------------------

/// What a driver does first: checks the magic value, version and device
/// ID, accepts the offered features but EVENT_IDX, and reads the capacity
/// (8 sectors).
fn identify_and_negotiate(t: &mut MmioTransport<Mem>) {
    assert_eq!(read_reg(t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(read_reg(t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(read_reg(t, VIRTIO_MMIO_DEVICE_ID), 2);
    let mut offered = 0u64;
    for sel in 0..2 {
        write_reg(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
        offered |= u64::from(read_reg(t, VIRTIO_MMIO_DEVICE_FEATURES)) << (32 * sel);
    }
    let wanted = offered & !feature_bit(VIRTIO_RING_F_EVENT_IDX);
    assert_eq!(negotiate(t, wanted) & 0x8, 0x8, "FEATURES_OK");
    let mut capacity = [0u8; 8];
    t.read(CONFIG_SPACE_OFFSET, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 8);
}

/// Queues a write of 0xab bytes to sector 3 (descriptors 0 to 2) and a read
/// of sector 2 (descriptors 3 to 5); returns where the data and the two
/// status bytes are (the read's data is 512 bytes after the write's).
fn queue_write_and_read(mem: &Mem, gq: &mut GuestQueue) -> (u64, u64) {
    let (hdr, data, status) = (0x2_0000u64, 0x3_0000u64, 0x2_0100u64);
    mem.write_obj(VIRTIO_BLK_T_OUT.to_le(), GuestAddress(hdr))
        .unwrap();
    mem.write_obj(3u64.to_le(), GuestAddress(hdr + 8)).unwrap();
    mem.write_slice(&[0xab; 512], GuestAddress(data)).unwrap();
    gq.add_chain(0, &[(hdr, 16, 0), (data, 512, 0), (status, 1, WRITE)]);
    mem.write_obj(VIRTIO_BLK_T_IN.to_le(), GuestAddress(hdr + 16))
        .unwrap();
    mem.write_obj(2u64.to_le(), GuestAddress(hdr + 24)).unwrap();
    gq.add_chain(
        3,
        &[
            (hdr + 16, 16, 0),
            (data + 512, 512, WRITE),
            (status + 1, 1, WRITE),
        ],
    );
    (data, status)
}

#[test]
fn mmio_handshake_drives_the_block_device() {
    let contents = pattern(8 * 512, 15);
    let file = temp_file(&contents);
    let mem = memory(&[(0, MEM_SIZE)]);
    let block = Arc::new(Mutex::new(
        Block::<Mem>::new(BlockConfig {
            drive_id: "data".to_string(),
            path: file.path().to_path_buf(),
            ..BlockConfig::default()
        })
        .unwrap(),
    ));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(block.clone());
    let mut t = MmioTransport::new(mem.clone(), block.clone()).unwrap();

    identify_and_negotiate(&mut t);

    let mut gq = GuestQueue::new(&mem, QUEUE_BASE, 128);
    setup_queue(&mut t, 0, &gq);
    add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(read_reg(&mut t, VIRTIO_MMIO_STATUS), 0xf);
    assert!(block.lock().unwrap().is_activated());
    manager.run_with_timeout(100).unwrap();

    // One write and one read, notified through the QueueNotify register.
    let (data, status) = queue_write_and_read(&mem, &mut gq);
    write_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    manager.run_with_timeout(1000).unwrap();

    assert_eq!(gq.used_idx(), 2);
    assert_eq!(gq.used_elem(1), (3, 513));
    let mut statuses = [0xffu8; 2];
    mem.read_slice(&mut statuses, GuestAddress(status)).unwrap();
    assert_eq!(statuses, [OK, OK]);
    let mut read_back = vec![0u8; 512];
    mem.read_slice(&mut read_back, GuestAddress(data + 512))
        .unwrap();
    assert_eq!(read_back, contents[1024..1536]);
    assert_eq!(std::fs::read(file.path()).unwrap()[1536..2048], [0xab; 512]);

    assert_eq!(
        read_reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );
    assert_eq!(t.interrupt_event().event_fd().read().unwrap(), 1);
    write_reg(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(read_reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);

    // The driver resets the device; it stops and can be set up again.
    write_reg(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert!(!block.lock().unwrap().is_activated());
}

#[test]
fn mmio_queue_in_a_memory_hole_fails_activation() {
    let file = temp_file(&[0u8; 512]);
    let mem = memory(&[(0, 0x10000), (0x20000, 0x10000)]);
    let block = Arc::new(Mutex::new(
        Block::<Mem>::new(BlockConfig {
            path: file.path().to_path_buf(),
            ..BlockConfig::default()
        })
        .unwrap(),
    ));
    let mut t = MmioTransport::new(mem.clone(), block.clone()).unwrap();
    negotiate(&mut t, feature_bit(VIRTIO_F_VERSION_1));
    // Descriptor table at the end of the first range, rings in the hole.
    setup_queue(&mut t, 0, &GuestQueue::new(&mem, 0xf000, 256));
    add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(
        read_reg(&mut t, VIRTIO_MMIO_STATUS) & 0x40,
        0x40,
        "NEEDS_RESET"
    );
    assert!(!block.lock().unwrap().is_activated());
}
