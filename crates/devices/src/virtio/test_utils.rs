//! Test helpers playing the guest driver: a split virtqueue laid out in plain
//! guest memory, and register accesses to a virtio-mmio transport; and for
//! the device harnesses: the event loop, guest buffers, rate-limit buckets.
//!
//! Compiled for this crate's tests and, with the `test-utils` feature, for
//! other crates' tests and benchmarks. Helpers panic on misuse.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_ratelimit::BucketConfig;
use event_manager::{EventManager, MutEventSubscriber};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_DRIVER_FEATURES, VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
    VIRTIO_MMIO_QUEUE_AVAIL_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH, VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_NUM, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_USED_HIGH, VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_STATUS,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{feature_bit, VirtioDevice};
use crate::bus::BusDevice;

/// Guest memory as the tests use it.
pub type Mem = GuestMemoryMmap<()>;

/// The event loop a device under test is registered with.
pub type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Descriptor flag: another descriptor follows.
pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// Descriptor flag: the device writes this buffer.
pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// Descriptor flag: the buffer is a table of descriptors.
pub const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Guest memory made of `(start, len)` ranges.
pub fn memory(ranges: &[(u64, usize)]) -> Mem {
    let ranges: Vec<_> = ranges
        .iter()
        .map(|&(start, len)| (GuestAddress(start), len))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

/// `len` bytes of guest memory at `at`.
pub fn guest_bytes(mem: &Mem, at: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
    buf
}

/// Hands out guest buffers upwards from a start address, 16-byte aligned.
#[derive(Debug)]
pub struct Areas {
    next: u64,
}

impl Areas {
    /// Buffers from `start` up.
    pub fn new(start: u64) -> Areas {
        Areas { next: start }
    }

    /// The address of a fresh `len`-byte buffer.
    pub fn take(&mut self, len: u32) -> u64 {
        let at = self.next;
        self.next = (at + u64::from(len).max(1)).next_multiple_of(16);
        at
    }
}

/// A rate-limit bucket of `size` tokens per `refill_time_ms`, plus a
/// one-time burst.
pub fn bucket(size: u64, one_time_burst: u64, refill_time_ms: u64) -> Option<BucketConfig> {
    Some(BucketConfig {
        size,
        one_time_burst,
        refill_time_ms,
    })
}

/// Asserts that `features` has every feature bit of `bits`.
pub fn assert_features(features: u64, bits: &[u32]) {
    for &bit in bits {
        assert_ne!(features & feature_bit(bit), 0, "bit {bit}");
    }
}

/// Notifies queue `queue` of `device`, as the guest's QueueNotify write
/// through an ioeventfd does (without running the event loop).
pub fn notify_queue<D: VirtioDevice<Mem> + ?Sized>(device: &Mutex<D>, queue: usize) {
    device.lock().unwrap().queue_events()[queue]
        .write(1)
        .unwrap();
}

/// Runs `manager` until `queue` has `n` used entries; returns the wake-ups
/// that dispatched at least one event. Fails after `limit`.
pub fn run_until_used(manager: &mut Manager, queue: &GuestQueue, n: u16, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut wakeups = 0;
    while queue.used_idx() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} used",
            queue.used_idx()
        );
        if manager.run_with_timeout(50).unwrap() > 0 {
            wakeups += 1;
        }
    }
    wakeups
}

/// Writes one 16-byte split descriptor at `table + 16 * index`.
pub fn write_desc(
    mem: &Mem,
    table: GuestAddress,
    index: u16,
    (addr, len, flags, next): (u64, u32, u16, u16),
) {
    let at = table.0 + 16 * u64::from(index);
    mem.write_obj(addr.to_le(), GuestAddress(at)).unwrap();
    mem.write_obj(len.to_le(), GuestAddress(at + 8)).unwrap();
    mem.write_obj(flags.to_le(), GuestAddress(at + 12)).unwrap();
    mem.write_obj(next.to_le(), GuestAddress(at + 14)).unwrap();
}

/// The driver's side of a split virtqueue in guest memory.
#[derive(Debug)]
pub struct GuestQueue {
    mem: Mem,
    size: u16,
    /// The descriptor table.
    pub desc: GuestAddress,
    /// The available ring (driver area).
    pub avail: GuestAddress,
    /// The used ring (device area).
    pub used: GuestAddress,
    avail_idx: u16,
}

impl GuestQueue {
    /// A queue of `size` entries whose descriptor table starts at `base`
    /// (16-byte aligned), followed by the available and used rings.
    pub fn new(mem: &Mem, base: u64, size: u16) -> GuestQueue {
        let avail = base + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
        let queue = GuestQueue {
            mem: mem.clone(),
            size,
            desc: GuestAddress(base),
            avail: GuestAddress(avail),
            used: GuestAddress(used),
            avail_idx: 0,
        };
        // Rings placed in unbacked memory (hostile-guest tests) stay unwritten.
        let _ = mem.write_obj(0u16, GuestAddress(avail + 2));
        let _ = mem.write_obj(0u16, GuestAddress(used));
        let _ = mem.write_obj(0u16, GuestAddress(used + 2));
        queue
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Writes descriptor `index`.
    pub fn set_desc(&self, index: u16, desc: (u64, u32, u16, u16)) {
        write_desc(&self.mem, self.desc, index, desc);
    }

    /// Writes `descs` (address, length, flags) at consecutive indices from
    /// `first`, links them with NEXT, and makes the chain available.
    pub fn add_chain(&mut self, first: u16, descs: &[(u64, u32, u16)]) -> u16 {
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = first + i as u16;
            let last = i + 1 == descs.len();
            let (flags, next) = if last {
                (flags & !NEXT, 0)
            } else {
                (flags | NEXT, index + 1)
            };
            self.set_desc(index, (addr, len, flags, next));
        }
        self.publish(first);
        first
    }

    /// Puts `head` in the next available-ring slot and bumps the index.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head.to_le(), GuestAddress(self.avail.0 + 4 + 2 * slot))
            .unwrap();
        self.set_avail_idx(self.avail_idx.wrapping_add(1));
    }

    /// Writes the available ring's index as is.
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.mem
            .write_obj(idx.to_le(), GuestAddress(self.avail.0 + 2))
            .unwrap();
    }

    /// Writes `used_event` (in the available ring, after the ring).
    pub fn set_used_event(&self, value: u16) {
        let at = self.avail.0 + 4 + 2 * u64::from(self.size);
        self.mem.write_obj(value.to_le(), GuestAddress(at)).unwrap();
    }

    /// The used ring's flags (`VRING_USED_F_NO_NOTIFY`: the device does not
    /// want notifications).
    pub fn used_flags(&self) -> u16 {
        u16::from_le(self.mem.read_obj(self.used).unwrap())
    }

    /// `avail_event` (after the used ring's elements): with EVENT_IDX, the
    /// device wants a notification once the available index passes it.
    pub fn avail_event(&self) -> u16 {
        let at = self.used.0 + 4 + 8 * u64::from(self.size);
        u16::from_le(self.mem.read_obj(GuestAddress(at)).unwrap())
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(self.used.0 + 2)).unwrap())
    }

    /// Used-ring element `i`: (descriptor head, length written).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used.0 + 4 + 8 * u64::from(i % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (u32::from_le(id), u32::from_le(len))
    }

    /// The device-side queue a transport would build for this layout.
    pub fn device_queue(&self, max_size: u16) -> Queue {
        let mut q = Queue::new(max_size).unwrap();
        q.try_set_size(self.size).unwrap();
        q.try_set_desc_table_address(self.desc).unwrap();
        q.try_set_avail_ring_address(self.avail).unwrap();
        q.try_set_used_ring_address(self.used).unwrap();
        q.set_ready(true);
        q
    }
}

/// Writes a 32-bit register.
pub fn write_reg(dev: &mut impl BusDevice, reg: u32, value: u32) {
    dev.write(u64::from(reg), &value.to_le_bytes());
}

/// Reads a 32-bit register.
pub fn read_reg(dev: &mut impl BusDevice, reg: u32) -> u32 {
    let mut bytes = [0u8; 4];
    dev.read(u64::from(reg), &mut bytes);
    u32::from_le_bytes(bytes)
}

/// Sets `bits` in the status register, as a driver does (read, or, write).
pub fn add_status(dev: &mut impl BusDevice, bits: u32) {
    let status = read_reg(dev, VIRTIO_MMIO_STATUS);
    write_reg(dev, VIRTIO_MMIO_STATUS, status | bits);
}

/// ACKNOWLEDGE, DRIVER, accept `features`, FEATURES_OK; returns the status
/// read back (FEATURES_OK is clear if the device refused the features).
pub fn negotiate(dev: &mut impl BusDevice, features: u64) -> u32 {
    add_status(dev, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    add_status(dev, VIRTIO_CONFIG_S_DRIVER);
    for sel in 0..2 {
        write_reg(dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        write_reg(
            dev,
            VIRTIO_MMIO_DRIVER_FEATURES,
            (features >> (32 * sel)) as u32,
        );
    }
    add_status(dev, VIRTIO_CONFIG_S_FEATURES_OK);
    read_reg(dev, VIRTIO_MMIO_STATUS)
}

/// Programs queue `index` with `queue`'s size and addresses and enables it.
pub fn setup_queue(dev: &mut impl BusDevice, index: u32, queue: &GuestQueue) {
    write_reg(dev, VIRTIO_MMIO_QUEUE_SEL, index);
    write_reg(dev, VIRTIO_MMIO_QUEUE_NUM, u32::from(queue.size()));
    for (low, high, addr) in [
        (
            VIRTIO_MMIO_QUEUE_DESC_LOW,
            VIRTIO_MMIO_QUEUE_DESC_HIGH,
            queue.desc,
        ),
        (
            VIRTIO_MMIO_QUEUE_AVAIL_LOW,
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
            queue.avail,
        ),
        (
            VIRTIO_MMIO_QUEUE_USED_LOW,
            VIRTIO_MMIO_QUEUE_USED_HIGH,
            queue.used,
        ),
    ] {
        write_reg(dev, low, addr.0 as u32);
        write_reg(dev, high, (addr.0 >> 32) as u32);
    }
    write_reg(dev, VIRTIO_MMIO_QUEUE_READY, 1);
}

/// Starts a device as a driver does: [`negotiate`]s `features`, sets up
/// each of `queues` (index, guest queue) and sets DRIVER_OK; returns the
/// status read back.
pub fn start(dev: &mut impl BusDevice, features: u64, queues: &[(u32, &GuestQueue)]) -> u32 {
    negotiate(dev, features);
    for (index, queue) in queues {
        setup_queue(dev, *index, queue);
    }
    add_status(dev, VIRTIO_CONFIG_S_DRIVER_OK);
    read_reg(dev, VIRTIO_MMIO_STATUS)
}

/// `state` after a trip through JSON, which must give it back unchanged.
#[cfg(test)]
pub fn through_json<T>(state: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_string(state).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, state, "{json}");
    back
}
