//! virtio-rng driven the way a guest drives it: buffers laid out in a real
//! virtqueue in guest memory, notifications through the event loop.
//! Includes a hostile guest, rate-limited pacing and the MMIO handshake.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::SubscriberOps;
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_INT_VRING, VIRTIO_MMIO_QUEUE_NOTIFY,
};
use virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::test_utils::{
    add_status, bucket, guest_bytes, memory, negotiate, notify_queue, read_reg, run_until_used,
    setup_queue, write_reg, Areas, GuestQueue, Manager, Mem, INDIRECT, NEXT, WRITE,
};
use crate::virtio::{feature_bit, IrqTrigger, MmioTransport, VirtioDevice};

const MEM_SIZE: usize = 0x10_0000;
const QUEUE_BASE: u64 = 0x1000;
const AREA_START: u64 = 0x2_0000;
/// What the test writes into buffers before the device fills them.
const FILLER: u8 = 0xa5;

/// An rng device on an event loop, with the guest side of its queue.
struct Harness {
    mem: Mem,
    gq: GuestQueue,
    rng: Arc<Mutex<Rng<Mem>>>,
    manager: Manager,
    irq: Arc<IrqTrigger>,
    next_desc: u16,
    areas: Areas,
}

impl Harness {
    /// An active device set up with `config`.
    fn new(config: RngConfig) -> Harness {
        let rng = Arc::new(Mutex::new(Rng::new(config).unwrap()));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(rng.clone());
        let mem = memory(&[(0, MEM_SIZE)]);
        let h = Harness {
            gq: GuestQueue::new(&mem, QUEUE_BASE, QUEUE_SIZE),
            mem,
            rng,
            manager,
            irq: Arc::new(IrqTrigger::new().unwrap()),
            next_desc: 0,
            areas: Areas::new(AREA_START),
        };
        let queue = h.gq.device_queue(QUEUE_SIZE);
        h.rng
            .lock()
            .unwrap()
            .activate(
                h.mem.clone(),
                vec![queue],
                h.irq.clone(),
                feature_bit(VIRTIO_F_VERSION_1),
            )
            .unwrap();
        h
    }

    /// A fresh guest buffer of `len` bytes, filled with [`FILLER`].
    fn buffer(&mut self, len: u32) -> u64 {
        let at = self.areas.take(len);
        self.mem
            .write_slice(&vec![FILLER; len as usize], GuestAddress(at))
            .unwrap();
        at
    }

    /// Queues `descs` as one chain at the next free descriptor indices.
    fn chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        self.next_desc += descs.len() as u16;
        self.gq.add_chain(head, descs)
    }

    /// Queues a chain of fresh device-writable buffers; returns their addresses.
    fn request(&mut self, lens: &[u32]) -> Vec<u64> {
        let descs: Vec<_> = lens.iter().map(|&l| (self.buffer(l), l, WRITE)).collect();
        self.chain(&descs);
        descs.iter().map(|d| d.0).collect()
    }

    fn kick(&mut self) {
        notify_queue(&self.rng, 0);
        self.manager.run_with_timeout(1000).unwrap();
    }

    fn counters(&self) -> RngCounters {
        self.rng.lock().unwrap().counters()
    }

    /// Whether none of the `len` bytes at `at` is still [`FILLER`] in
    /// every one of a few 8-byte windows (random bytes almost never are).
    fn filled(&self, at: u64, len: usize) -> bool {
        let bytes = guest_bytes(&self.mem, at, len);
        bytes.chunks(8).all(|w| w.iter().any(|&b| b != FILLER))
    }
}

fn unlimited() -> RngConfig {
    RngConfig::default()
}

#[test]
fn a_buffer_is_filled_and_its_length_used() {
    let mut h = Harness::new(unlimited());
    let buf = h.buffer(512);
    h.chain(&[(buf, 256, WRITE)]);
    h.kick();
    assert_eq!(h.gq.used_idx(), 1);
    assert_eq!(h.gq.used_elem(0), (0, 256));
    assert!(h.filled(buf, 256));
    // The bytes after the buffer are untouched.
    assert_eq!(guest_bytes(&h.mem, buf + 256, 256), [FILLER; 256]);
    assert_eq!(h.irq.status(), VIRTIO_MMIO_INT_VRING);
    let c = h.counters();
    assert_eq!((c.requests, c.bytes, c.invalid_chains), (1, 256, 0));
}

#[test]
fn several_buffers_and_chains_are_filled_in_one_batch() {
    let mut h = Harness::new(unlimited());
    let first = h.request(&[16, 100, 4096]);
    let second = h.request(&[64]);
    h.kick();
    assert_eq!(h.gq.used_idx(), 2);
    assert_eq!(h.gq.used_elem(0), (0, 16 + 100 + 4096));
    assert_eq!(h.gq.used_elem(1), (3, 64));
    for (at, len) in first.iter().zip([16, 100, 4096]) {
        assert!(h.filled(*at, len));
    }
    assert!(h.filled(second[0], 64));
    // Two requests get different bytes.
    assert_ne!(
        guest_bytes(&h.mem, first[0], 16),
        guest_bytes(&h.mem, second[0], 16)
    );
    assert_eq!(h.counters().bytes, 16 + 100 + 4096 + 64);
}

#[test]
fn a_read_only_descriptor_makes_the_chain_invalid() {
    let mut h = Harness::new(unlimited());
    let a = h.buffer(32);
    let b = h.buffer(32);
    h.chain(&[(a, 32, WRITE), (b, 32, 0)]);
    let good = h.request(&[8]);
    h.kick();
    assert_eq!(h.gq.used_idx(), 2);
    assert_eq!(h.gq.used_elem(0), (0, 0));
    assert_eq!(guest_bytes(&h.mem, a, 32), [FILLER; 32], "nothing written");
    assert_eq!(guest_bytes(&h.mem, b, 32), [FILLER; 32]);
    assert_eq!(h.gq.used_elem(1), (2, 8), "the next chain is served");
    assert!(h.filled(good[0], 8));
    let c = h.counters();
    assert_eq!((c.requests, c.invalid_chains, c.bytes), (2, 1, 8));
}

#[test]
fn a_chain_past_guest_memory_is_never_written() {
    let mut h = Harness::new(unlimited());
    let inside = h.buffer(16);
    let edge = MEM_SIZE as u64 - 8;
    h.mem.write_slice(&[FILLER; 8], GuestAddress(edge)).unwrap();
    // A buffer straddling the end of memory, one far beyond, one wrapping.
    h.chain(&[(inside, 16, WRITE), (edge, 16, WRITE)]);
    h.chain(&[(0x1_0000_0000, 4096, WRITE)]);
    h.chain(&[(u64::MAX - 4, 16, WRITE)]);
    h.kick();
    assert_eq!(h.gq.used_idx(), 3);
    for i in 0..3 {
        assert_eq!(h.gq.used_elem(i).1, 0);
    }
    assert_eq!(guest_bytes(&h.mem, inside, 16), [FILLER; 16]);
    assert_eq!(guest_bytes(&h.mem, edge, 8), [FILLER; 8]);
    assert_eq!(h.counters().invalid_chains, 3);
}

#[test]
fn huge_lengths_are_capped_and_overflows_refused() {
    let mut h = Harness::new(unlimited());
    // 1 MiB of memory in one buffer: only the first 64 KiB are filled.
    let big = h.buffer(4 * MAX_REQUEST_BYTES as u32);
    h.chain(&[(big, 4 * MAX_REQUEST_BYTES as u32, WRITE)]);
    // Lengths adding up past 4 GiB end the walk: refused.
    h.chain(&[(0, u32::MAX, WRITE), (0, u32::MAX, WRITE)]);
    h.kick();
    assert_eq!(h.gq.used_idx(), 2);
    assert_eq!(h.gq.used_elem(0).1, MAX_REQUEST_BYTES as u32);
    assert!(h.filled(big, MAX_REQUEST_BYTES));
    assert_eq!(
        guest_bytes(&h.mem, big + MAX_REQUEST_BYTES as u64, 64),
        [FILLER; 64]
    );
    assert_eq!(h.gq.used_elem(1).1, 0);
    assert_eq!(h.counters().invalid_chains, 1);
}

#[test]
fn empty_looping_and_indirect_chains() {
    let mut h = Harness::new(unlimited());
    // An empty buffer: nothing to fill, length 0, not an error.
    let a = h.buffer(1);
    h.chain(&[(a, 0, WRITE)]);
    // A chain that loops on itself.
    let b = h.buffer(8);
    let head = h.next_desc;
    h.gq.set_desc(head, (b, 8, WRITE | NEXT, head));
    h.gq.publish(head);
    h.next_desc += 1;
    // An indirect table of two writable buffers.
    let c = h.buffer(8);
    let d = h.buffer(8);
    let table = h.areas.take(32);
    crate::virtio::test_utils::write_desc(&h.mem, GuestAddress(table), 0, (c, 8, WRITE | NEXT, 1));
    crate::virtio::test_utils::write_desc(&h.mem, GuestAddress(table), 1, (d, 8, WRITE, 0));
    h.chain(&[(table, 32, INDIRECT)]);
    h.kick();
    assert_eq!(h.gq.used_idx(), 3);
    assert_eq!(h.gq.used_elem(0).1, 0);
    assert_eq!(h.gq.used_elem(1).1, 0);
    assert_eq!(h.gq.used_elem(2).1, 16);
    assert!(h.filled(c, 8) && h.filled(d, 8));
    let c = h.counters();
    assert_eq!((c.requests, c.invalid_chains), (3, 1));
}

#[test]
fn available_index_beyond_the_queue_size_does_not_spin() {
    let mut h = Harness::new(unlimited());
    h.gq.set_avail_idx(QUEUE_SIZE + 10);
    let start = Instant::now();
    h.kick();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(h.gq.used_idx(), 0);
    // A bogus head index is completed, not followed.
    let mut h = Harness::new(unlimited());
    h.gq.publish(QUEUE_SIZE + 3);
    let ok = h.request(&[8]);
    h.kick();
    // The bogus head cannot go in the used ring; the next chain is served.
    assert_eq!(h.gq.used_idx(), 1);
    assert_eq!(h.gq.used_elem(0), (0, 8));
    assert!(h.filled(ok[0], 8));
}

#[test]
fn notifications_before_activation_are_ignored() {
    let rng = Arc::new(Mutex::new(Rng::<Mem>::new(unlimited()).unwrap()));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(rng.clone());
    notify_queue(&rng, 0);
    manager.run_with_timeout(100).unwrap();
    assert_eq!(rng.lock().unwrap().counters().ignored_notifications, 1);
    let state = rng.lock().unwrap().state();
    assert!(rng.lock().unwrap().queue_states().is_empty());
    assert_eq!(state.acked_features, 0);
}

#[test]
fn bandwidth_limit_paces_requests_with_the_timer() {
    // 1 KiB per 50 ms: eight 512-byte requests are 4 KiB, 3 KiB past the
    // bucket: at least 150 ms.
    let mut h = Harness::new(RngConfig {
        bandwidth: bucket(1024, 0, 50),
        ops: None,
    });
    let start = Instant::now();
    for _ in 0..8 {
        h.request(&[512]);
    }
    h.kick();
    assert_eq!(h.gq.used_idx(), 2, "the bucket's worth goes at once");
    // While throttled the device asks not to be notified, and a
    // notification sent anyway changes nothing.
    assert_ne!(h.gq.used_flags() & VRING_USED_F_NO_NOTIFY as u16, 0);
    h.kick();
    assert_eq!(h.gq.used_idx(), 2);
    let wakeups = run_until_used(&mut h.manager, &h.gq, 8, Duration::from_secs(5));
    assert!(start.elapsed() >= Duration::from_millis(150));
    // One wake-up per refill at most (plus slack): no busy loop.
    assert!(wakeups <= 12, "{wakeups} wake-ups");
    let c = h.counters();
    assert!(c.throttled >= 1 && c.rate_limiter_events >= 1, "{c:?}");
    assert_eq!(c.bytes, 8 * 512);
}

#[test]
fn ops_limit_paces_requests_and_can_be_lifted() {
    let mut h = Harness::new(RngConfig {
        bandwidth: None,
        ops: bucket(2, 0, 60_000),
    });
    for _ in 0..5 {
        h.request(&[4]);
    }
    h.kick();
    assert_eq!(h.gq.used_idx(), 2);
    assert_eq!(
        h.rng
            .lock()
            .unwrap()
            .state()
            .rate_limiter
            .ops
            .unwrap()
            .budget,
        0
    );
    h.rng.lock().unwrap().update_rate_limiter(
        ember_ratelimit::BucketUpdate::Keep,
        ember_ratelimit::BucketUpdate::Disable,
    );
    run_until_used(&mut h.manager, &h.gq, 5, Duration::from_secs(2));
}

#[test]
fn mmio_handshake_then_a_notified_request_is_filled() {
    let mem = memory(&[(0, MEM_SIZE)]);
    let rng = Arc::new(Mutex::new(Rng::<Mem>::new(unlimited()).unwrap()));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(rng.clone());
    let mut transport = MmioTransport::new(mem.clone(), rng.clone()).unwrap();
    assert_eq!(read_reg(&mut transport, VIRTIO_MMIO_DEVICE_ID), 4);
    negotiate(&mut transport, feature_bit(VIRTIO_F_VERSION_1));
    let mut gq = GuestQueue::new(&mem, QUEUE_BASE, 16);
    setup_queue(&mut transport, 0, &gq);
    add_status(&mut transport, VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(rng.lock().unwrap().is_activated());
    gq.add_chain(0, &[(AREA_START, 32, WRITE)]);
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    run_until_used(&mut manager, &gq, 1, Duration::from_secs(2));
    assert_eq!(gq.used_elem(0), (0, 32));
    assert_eq!(
        rng.lock().unwrap().state().acked_features,
        feature_bit(VIRTIO_F_VERSION_1)
    );
}
