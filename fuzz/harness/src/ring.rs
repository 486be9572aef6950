//! Split virtqueues at fixed guest addresses, filled the way a guest driver
//! fills them: the net and vsock harnesses drive their devices through this.

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::block::Mem;
use crate::bytes::Reader;

/// Size of each queue.
pub const SIZE: u16 = 64;
/// Queue layouts by index: descriptor table, available ring, used ring.
pub const LAYOUT: [(u64, u64, u64); 3] = [
    (0x1000, 0x1400, 0x1800),
    (0x2000, 0x2400, 0x2800),
    (0x3000, 0x3400, 0x3800),
];
/// Where buffers go (cycled through).
const AREA: (u64, u64) = (0x1_0000, 0x4_0000);
/// Descriptor flags, as the ring stores them.
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

/// The driver side of the first `N` queues of [`LAYOUT`].
pub struct Driver<const N: usize> {
    mem: Mem,
    avail_idx: [u16; N],
    next_desc: [u16; N],
    next_area: u64,
}

impl<const N: usize> Driver<N> {
    /// A driver for queues in `mem`, with empty rings.
    pub fn new(mem: Mem) -> Self {
        let mut driver = Driver {
            mem,
            avail_idx: [0; N],
            next_desc: [0; N],
            next_area: AREA.0,
        };
        driver.reset();
        driver
    }

    /// Empties the rings (in memory too), as before a device activation.
    pub fn reset(&mut self) {
        for &(_, avail, used) in &LAYOUT[..N] {
            let _ = self.mem.write_obj(0u16, GuestAddress(avail + 2));
            let _ = self.mem.write_obj(0u16, GuestAddress(used + 2));
        }
        self.avail_idx = [0; N];
        self.next_desc = [0; N];
    }

    /// Ready queues over the layout, for a device whose largest queue is
    /// `max_size`.
    pub fn queues(&self, max_size: u16) -> Vec<Queue> {
        LAYOUT[..N]
            .iter()
            .map(|&(desc, avail, used)| {
                let mut q = Queue::new(max_size).expect("queue");
                q.try_set_size(SIZE).expect("size");
                q.try_set_desc_table_address(GuestAddress(desc))
                    .expect("desc");
                q.try_set_avail_ring_address(GuestAddress(avail))
                    .expect("avail");
                q.try_set_used_ring_address(GuestAddress(used))
                    .expect("used");
                q.set_ready(true);
                q
            })
            .collect()
    }

    /// The next `len` bytes of the buffer area (16-byte aligned).
    pub fn area(&mut self, len: u64) -> u64 {
        if self.next_area + len > AREA.1 {
            self.next_area = AREA.0;
        }
        let at = self.next_area;
        self.next_area = (at + len.max(1)).next_multiple_of(16);
        at
    }

    /// Writes descriptor `index` (addr, len, flags, next) of `queue`.
    pub fn desc(&self, queue: usize, index: u16, d: (u64, u32, u16, u16)) {
        let at = LAYOUT[queue].0 + 16 * u64::from(index % SIZE);
        let _ = self
            .mem
            .write_obj(Descriptor::new(d.0, d.1, d.2, d.3), GuestAddress(at));
    }

    /// Puts `head` on `queue`'s available ring and bumps its index.
    pub fn publish(&mut self, queue: usize, head: u16) {
        let avail = LAYOUT[queue].1;
        let slot = u64::from(self.avail_idx[queue] % SIZE);
        let _ = self.mem.write_obj(head, GuestAddress(avail + 4 + 2 * slot));
        self.avail_idx[queue] = self.avail_idx[queue].wrapping_add(1);
        let _ = self
            .mem
            .write_obj(self.avail_idx[queue], GuestAddress(avail + 2));
    }

    /// Writes `pieces` (addr, len, flags) as a chain at the next indices and
    /// publishes it.
    pub fn chain(&mut self, queue: usize, pieces: &[(u64, u32, u16)]) {
        let head = self.next_desc[queue];
        for (i, &(addr, len, flags)) in pieces.iter().enumerate() {
            let index = (head + i as u16) % SIZE;
            let (flags, next) = if i + 1 == pieces.len() {
                (flags, 0)
            } else {
                (flags | NEXT, (index + 1) % SIZE)
            };
            self.desc(queue, index, (addr, len, flags, next));
        }
        self.next_desc[queue] = (head + pieces.len() as u16) % SIZE;
        self.publish(queue, head);
    }

    /// `queue`'s available index as guest memory holds it.
    pub fn avail_idx_in_memory(&self, queue: usize) -> u16 {
        self.mem
            .read_obj(GuestAddress(LAYOUT[queue].1 + 2))
            .expect("avail idx")
    }

    /// The used element (id, len) at ring position `idx` of `queue`.
    pub fn used_elem(&self, queue: usize, idx: u16) -> (u32, u32) {
        let at = LAYOUT[queue].2 + 4 + 8 * u64::from(idx % SIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used id");
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used len");
        (id, len)
    }

    /// Decodes `u32 addr, u16 len, len bytes` and writes the bytes there.
    pub fn write_mem_op(&self, r: &mut Reader) -> Option<()> {
        let addr = u64::from(r.u32()?);
        let len = usize::from(r.u16()? % 4097);
        let bytes = r.take(len).unwrap_or_else(|| r.rest());
        let _ = self.mem.write_slice(bytes, GuestAddress(addr));
        Some(())
    }

    /// Decodes `u8 queue, u16 index, u64 addr, u32 len, u16 flags, u16 next`
    /// and writes that raw descriptor (queue modulo 2).
    pub fn desc_op(&self, r: &mut Reader) -> Option<()> {
        let queue = usize::from(r.u8()? % 2);
        let index = r.u16()?;
        let d = (r.u64()?, r.u32()?, r.u16()?, r.u16()?);
        self.desc(queue, index, d);
        Some(())
    }

    /// Decodes `u8 queue, u16 head` and publishes that raw head (queue
    /// modulo 2).
    pub fn publish_op(&mut self, r: &mut Reader) -> Option<()> {
        let queue = usize::from(r.u8()? % 2);
        let head = r.u16()?;
        self.publish(queue, head);
        Some(())
    }

    /// Copies `bytes` into the buffer area and publishes them on `queue` as
    /// one device-readable descriptor, or two split at `split` when that
    /// falls inside.
    pub fn readable(&mut self, queue: usize, bytes: &[u8], split: u32) {
        let total = bytes.len() as u32;
        let at = self.area(u64::from(total));
        let _ = self.mem.write_slice(bytes, GuestAddress(at));
        if split == 0 || split >= total {
            self.chain(queue, &[(at, total, 0)]);
        } else {
            let second = (at + u64::from(split), total - split, 0);
            self.chain(queue, &[(at, split, 0), second]);
        }
    }

    /// Publishes a device-writable buffer of `len` bytes on `queue`, in
    /// `pieces` (at least one) descriptors.
    pub fn writable(&mut self, queue: usize, len: u32, pieces: u32) {
        let pieces = pieces.max(1);
        let at = self.area(u64::from(len));
        let step = len / pieces;
        let descs: Vec<(u64, u32, u16)> = (0..pieces)
            .map(|i| {
                let start = step * i;
                let end = if i + 1 == pieces { len } else { start + step };
                (at + u64::from(start), end - start, WRITE)
            })
            .collect();
        self.chain(queue, &descs);
    }
}
