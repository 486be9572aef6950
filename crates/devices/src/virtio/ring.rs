//! The device's side of a split virtqueue, with each ring looked up in guest
//! memory once per batch instead of at every access.
//!
//! virtio-queue's [`Queue`] finds the guest memory region of every access
//! it makes (two to pop a chain, one per descriptor, two to return one):
//! most of the cost of a small request. A [`Ring`] borrows the queue for one
//! batch and asks vm-memory once for host slices of the descriptor table,
//! the available ring and the used ring (bounds-checked [`VolatileSlice`]s);
//! each access is then a bounds-checked load or store in one of them. A ring
//! that does not map to one host slice (it straddles two memory regions) is
//! reached through the memory's own accessors at each access, as
//! virtio-queue does.
//!
//! Everything else is virtio-queue's behaviour, step by step: popping a
//! chain ([`Ring::pop`]), walking it ([`Chain`], indirect tables included,
//! with the same limits), returning it ([`Ring::add_used`]) and deciding
//! whether to interrupt ([`Ring::needs_notification`]). The queue's own
//! state (`next_avail`, `next_used`) is kept up to date at every step, so it
//! can be used directly between batches.

use std::fmt;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::VRING_DESC_ALIGN_SIZE;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Error as QueueError, Queue, QueueOwnedT, QueueT};
use vm_memory::bitmap::BS;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, Permissions, VolatileMemory, VolatileSlice,
};

/// Size of a descriptor.
const DESC_SIZE: usize = 16;
/// Flags and index before the available ring's entries.
const AVAIL_HEADER: usize = 4;
const AVAIL_ELEM: usize = 2;
/// Flags and index before the used ring's entries.
const USED_HEADER: usize = 4;
const USED_ELEM: usize = 8;

/// A guest memory area the ring accesses: one host slice, or (when it does
/// not map to one) an address to go through the memory's accessors with.
enum Area<'m, M: GuestMemory> {
    Mapped(VolatileSlice<'m, BS<'m, M::Bitmap>>),
    Scattered(GuestAddress),
}

impl<M: GuestMemory> Clone for Area<'_, M> {
    fn clone(&self) -> Self {
        match self {
            Area::Mapped(slice) => Area::Mapped(slice.clone()),
            Area::Scattered(addr) => Area::Scattered(*addr),
        }
    }
}

impl<'m, M: GuestMemory> Area<'m, M> {
    fn new(mem: &'m M, addr: GuestAddress, len: usize, access: Permissions) -> Self {
        if let Ok(mut slices) = mem.get_slices(addr, len, access) {
            if let Some(Ok(slice)) = slices.next() {
                if slice.len() == len {
                    return Area::Mapped(slice);
                }
            }
        }
        Area::Scattered(addr)
    }

    fn at(addr: GuestAddress, offset: usize) -> Result<GuestAddress, QueueError> {
        addr.checked_add(offset as u64)
            .ok_or(QueueError::AddressOverflow)
    }

    fn load_u16(&self, mem: &M, offset: usize, order: Ordering) -> Result<u16, QueueError> {
        let value: u16 = match self {
            Area::Mapped(slice) => slice
                .load(offset, order)
                .map_err(|e| QueueError::GuestMemory(e.into()))?,
            Area::Scattered(addr) => mem
                .load(Self::at(*addr, offset)?, order)
                .map_err(QueueError::GuestMemory)?,
        };
        Ok(u16::from_le(value))
    }

    fn store_u16(
        &self,
        mem: &M,
        offset: usize,
        value: u16,
        order: Ordering,
    ) -> Result<(), QueueError> {
        match self {
            Area::Mapped(slice) => slice
                .store(value.to_le(), offset, order)
                .map_err(|e| QueueError::GuestMemory(e.into())),
            Area::Scattered(addr) => mem
                .store(value.to_le(), Self::at(*addr, offset)?, order)
                .map_err(QueueError::GuestMemory),
        }
    }

    fn write_used(&self, mem: &M, offset: usize, elem: [u8; 8]) -> Result<(), QueueError> {
        match self {
            Area::Mapped(slice) => slice
                .get_ref::<[u8; 8]>(offset)
                .map(|r| r.store(elem))
                .map_err(|e| QueueError::GuestMemory(e.into())),
            Area::Scattered(addr) => mem
                .write_obj(elem, Self::at(*addr, offset)?)
                .map_err(QueueError::GuestMemory),
        }
    }

    fn read_desc(&self, mem: &M, offset: usize) -> Option<Descriptor> {
        match self {
            Area::Mapped(slice) => slice.get_ref::<Descriptor>(offset).ok().map(|r| r.load()),
            Area::Scattered(addr) => mem.read_obj(Self::at(*addr, offset).ok()?).ok(),
        }
    }
}

/// A queue borrowed for one batch of work, with its rings looked up.
pub(crate) struct Ring<'q, 'm, M: GuestMemory> {
    queue: &'q mut Queue,
    mem: &'m M,
    desc: Area<'m, M>,
    avail: Area<'m, M>,
    used: Area<'m, M>,
    size: u16,
    /// Chains returned since the last [`Ring::needs_notification`].
    num_added: Wrapping<u16>,
}

impl<M: GuestMemory> fmt::Debug for Ring<'_, '_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mapped = |area: &Area<'_, M>| matches!(area, Area::Mapped(_));
        f.debug_struct("Ring")
            .field("size", &self.size)
            .field("next_avail", &self.queue.next_avail())
            .field("next_used", &self.queue.next_used())
            .field("desc_mapped", &mapped(&self.desc))
            .field("avail_mapped", &mapped(&self.avail))
            .field("used_mapped", &mapped(&self.used))
            .finish()
    }
}

impl<'q, 'm, M: GuestMemory> Ring<'q, 'm, M> {
    /// Borrows `queue`, whose rings are in `mem`, for a batch.
    ///
    /// Whether the driver is to be interrupted is decided from the chains
    /// returned through this ring: a batch that returns chains ends with
    /// [`Ring::needs_notification`].
    pub(crate) fn new(queue: &'q mut Queue, mem: &'m M) -> Self {
        let size = queue.size();
        let n = usize::from(size);
        let desc = Area::new(
            mem,
            GuestAddress(queue.desc_table()),
            DESC_SIZE * n,
            Permissions::Read,
        );
        // Each ring with the event index after it.
        let avail = Area::new(
            mem,
            GuestAddress(queue.avail_ring()),
            AVAIL_HEADER + AVAIL_ELEM * n + 2,
            Permissions::Read,
        );
        let used = Area::new(
            mem,
            GuestAddress(queue.used_ring()),
            USED_HEADER + USED_ELEM * n + 2,
            Permissions::Write,
        );
        Ring {
            queue,
            mem,
            desc,
            avail,
            used,
            size,
            num_added: Wrapping(0),
        }
    }

    /// The next chain the driver made available, as
    /// `Queue::pop_descriptor_chain` takes it: `None` if there is none, or
    /// if the queue is not ready, the available index cannot be read or is
    /// more than a queue ahead, or the ring entry cannot be read.
    pub(crate) fn pop(&mut self) -> Option<Chain<'m, M>> {
        if !self.queue.ready() || self.queue.avail_ring() == 0 {
            log::error!("Iterator error {}", QueueError::QueueNotReady);
            return None;
        }
        let idx = match self.avail.load_u16(self.mem, 2, Ordering::Acquire) {
            Ok(idx) => Wrapping(idx),
            Err(e) => {
                log::error!("Iterator error {e}");
                return None;
            }
        };
        let next_avail = Wrapping(self.queue.next_avail());
        if (idx - next_avail).0 > self.size {
            log::error!("Iterator error {}", QueueError::InvalidAvailRingIndex);
            return None;
        }
        if next_avail == idx {
            return None;
        }
        let slot = next_avail.0.checked_rem(self.size)?;
        let offset = AVAIL_HEADER + usize::from(slot) * AVAIL_ELEM;
        let head = match self.avail.load_u16(self.mem, offset, Ordering::Acquire) {
            Ok(head) => head,
            Err(_) => {
                log::error!("Failed to read from memory {:x}", self.queue.avail_ring());
                return None;
            }
        };
        self.queue.set_next_avail((next_avail + Wrapping(1)).0);
        Some(Chain {
            mem: self.mem,
            table: self.desc.clone(),
            queue_size: self.size,
            head_index: head,
            next_index: head,
            ttl: self.size,
            yielded_bytes: 0,
            is_indirect: false,
        })
    }

    /// Puts the last chain popped back (it is popped again next time).
    pub(crate) fn go_to_previous_position(&mut self) {
        self.queue.go_to_previous_position();
    }

    /// Returns chain `head` to the driver, with `len` bytes written to it.
    pub(crate) fn add_used(&mut self, head: u16, len: u32) -> Result<(), QueueError> {
        if head >= self.size {
            log::error!("attempted to add out of bounds descriptor to used ring: {head}");
            return Err(QueueError::InvalidDescriptorIndex);
        }
        let next_used = Wrapping(self.queue.next_used());
        let offset = USED_HEADER + usize::from(next_used.0 % self.size) * USED_ELEM;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        self.used.write_used(self.mem, offset, elem)?;
        let next_used = next_used + Wrapping(1);
        self.queue.set_next_used(next_used.0);
        self.num_added += Wrapping(1);
        self.used
            .store_u16(self.mem, 2, next_used.0, Ordering::Release)
    }

    /// Whether the driver wants an interrupt for the chains returned since
    /// the last call (`Queue::needs_notification`, with its event-index
    /// arithmetic).
    pub(crate) fn needs_notification(&mut self) -> Result<bool, QueueError> {
        let used_idx = Wrapping(self.queue.next_used());
        // Complete all the writes of `add_used` before reading the event.
        fence(Ordering::SeqCst);
        if self.queue.event_idx_enabled() {
            let offset = AVAIL_HEADER + AVAIL_ELEM * usize::from(self.size);
            let used_event = Wrapping(self.avail.load_u16(self.mem, offset, Ordering::Relaxed)?);
            let old = used_idx - self.num_added;
            self.num_added = Wrapping(0);
            return Ok(used_idx - used_event - Wrapping(1) < used_idx - old);
        }
        Ok(true)
    }

    /// Asks the driver for notifications of new chains; returns whether
    /// some arrived meanwhile (`Queue::enable_notification`).
    pub(crate) fn enable_notification(&mut self) -> Result<bool, QueueError> {
        self.queue.enable_notification(self.mem)
    }

    /// Asks the driver not to notify (`Queue::disable_notification`).
    pub(crate) fn disable_notification(&mut self) -> Result<(), QueueError> {
        self.queue.disable_notification(self.mem)
    }
}

/// A descriptor chain being walked: `DescriptorChain`'s iterator over the
/// ring's mapped descriptor table. It ends, as that one does, at the last
/// descriptor, at an index beyond the table, after as many descriptors as
/// the table holds, when the lengths add up to more than 4 GiB, at an
/// unreadable descriptor and at an invalid indirect table; the last
/// descriptor yielded then still has its NEXT flag.
pub(crate) struct Chain<'m, M: GuestMemory> {
    mem: &'m M,
    table: Area<'m, M>,
    queue_size: u16,
    head_index: u16,
    next_index: u16,
    ttl: u16,
    yielded_bytes: u32,
    is_indirect: bool,
}

impl<M: GuestMemory> fmt::Debug for Chain<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("head_index", &self.head_index)
            .field("next_index", &self.next_index)
            .field("is_indirect", &self.is_indirect)
            .finish_non_exhaustive()
    }
}

impl<M: GuestMemory> Chain<'_, M> {
    /// The index of the chain's first descriptor.
    pub(crate) fn head_index(&self) -> u16 {
        self.head_index
    }

    fn switch_to_indirect_table(&mut self, desc: &Descriptor) -> Option<()> {
        if self.is_indirect || desc.len() & (VRING_DESC_ALIGN_SIZE - 1) != 0 {
            return None;
        }
        let table_len = u16::try_from(desc.len() / VRING_DESC_ALIGN_SIZE).ok()?;
        self.table = Area::new(
            self.mem,
            desc.addr(),
            usize::from(table_len) * DESC_SIZE,
            Permissions::Read,
        );
        self.queue_size = table_len;
        self.next_index = 0;
        self.ttl = table_len;
        self.is_indirect = true;
        Some(())
    }
}

impl<M: GuestMemory> Iterator for Chain<'_, M> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        // Indirect tables may not nest: at most one switch.
        for _ in 0..2 {
            if self.ttl == 0 || self.next_index >= self.queue_size {
                return None;
            }
            let desc = self
                .table
                .read_desc(self.mem, usize::from(self.next_index) * DESC_SIZE)?;
            if desc.refers_to_indirect_table() {
                self.switch_to_indirect_table(&desc)?;
                continue;
            }
            self.yielded_bytes = self.yielded_bytes.checked_add(desc.len())?;
            if desc.has_next() {
                self.next_index = desc.next();
                self.ttl -= 1;
            } else {
                self.ttl = 0;
            }
            return Some(desc);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::virtio::test_utils::{memory, write_desc, GuestQueue, Mem, INDIRECT, NEXT, WRITE};

    type Desc = (u64, u32, u16, u16);
    /// The chains walked: head index and descriptors of each.
    type Walk = Vec<(u16, Vec<Desc>)>;

    /// Both walks of every chain the driver made available: virtio-queue's
    /// and the ring's, on two copies of the same queue.
    fn both_walks(mem: &Mem, gq: &GuestQueue) -> (Walk, Walk) {
        let raw = |d: Descriptor| (d.addr().0, d.len(), d.flags(), d.next());
        let mut reference = gq.device_queue(gq.size());
        let mut expected = Vec::new();
        while let Some(chain) = reference.pop_descriptor_chain(mem) {
            expected.push((chain.head_index(), chain.map(raw).collect()));
        }
        let mut queue = gq.device_queue(gq.size());
        let mut ring = Ring::new(&mut queue, mem);
        let mut got = Vec::new();
        while let Some(chain) = ring.pop() {
            got.push((chain.head_index(), chain.map(raw).collect()));
        }
        assert_eq!(queue.next_avail(), reference.next_avail());
        (expected, got)
    }

    fn hostile_chains(mem: &Mem, base: u64) -> GuestQueue {
        let mut gq = GuestQueue::new(mem, base, 16);
        // A plain chain.
        gq.add_chain(
            0,
            &[(0x8000, 16, 0), (0x9000, 512, WRITE), (0xa000, 1, WRITE)],
        );
        // A loop, and a descriptor that points at itself.
        gq.set_desc(3, (0x8000, 16, NEXT, 4));
        gq.set_desc(4, (0x9000, 16, NEXT, 3));
        gq.publish(3);
        gq.set_desc(5, (0x8000, 16, NEXT, 5));
        gq.publish(5);
        // Next index beyond the queue; head index beyond the queue.
        gq.set_desc(6, (0x8000, 16, NEXT, 40));
        gq.publish(6);
        gq.publish(99);
        // An indirect table of three, one nesting another indirect table,
        // one whose length is not whole descriptors, one outside memory.
        let table = 0xb000;
        write_desc(mem, GuestAddress(table), 0, (0x8000, 16, NEXT, 1));
        write_desc(mem, GuestAddress(table), 1, (0x9000, 8, WRITE | NEXT, 2));
        write_desc(mem, GuestAddress(table), 2, (0xa000, 1, WRITE, 0));
        write_desc(mem, GuestAddress(0xc000), 0, (table, 48, INDIRECT, 0));
        gq.add_chain(7, &[(table, 48, INDIRECT)]);
        gq.add_chain(8, &[(0xc000, 16, INDIRECT)]);
        gq.add_chain(9, &[(table, 40, INDIRECT)]);
        gq.add_chain(10, &[(0x8000, 16, NEXT), (0xfff_0000, 0x100, INDIRECT)]);
        // Lengths that add up to more than 4 GiB.
        gq.add_chain(12, &[(0x8000, 0xffff_fff0, 0), (0x9000, 0x20, WRITE)]);
        gq
    }

    #[test]
    fn chains_walk_as_virtio_queue_walks_them() {
        let mem = memory(&[(0, 0x10000)]);
        let gq = hostile_chains(&mem, 0x1000);
        let (expected, got) = both_walks(&mem, &gq);
        assert_eq!(got, expected);
        assert_eq!(got.len(), 10);
        assert_eq!(got[5].1.len(), 3, "the indirect table is followed");
    }

    #[test]
    fn rings_straddling_two_regions_work_the_same() {
        // The descriptor table and the rings cross from one region into
        // the next: no single host slice, every access is looked up.
        let mem = memory(&[(0, 0x1080), (0x1080, 0xef80)]);
        let gq = hostile_chains(&mem, 0x1000);
        let mut queue = gq.device_queue(16);
        let ring = Ring::new(&mut queue, &mem);
        assert!(matches!(ring.desc, Area::Scattered(_)));
        let (expected, got) = both_walks(&mem, &gq);
        assert_eq!(got, expected);

        // Only the used ring crosses.
        let gq = GuestQueue::new(&mem, 0xf00, 16);
        let mut queue = gq.device_queue(16);
        let ring = Ring::new(&mut queue, &mem);
        assert!(matches!(ring.used, Area::Scattered(_)));
        assert!(matches!(ring.avail, Area::Mapped(_)));
    }

    #[test]
    fn an_available_index_too_far_ahead_yields_nothing() {
        let mem = memory(&[(0, 0x10000)]);
        let mut gq = GuestQueue::new(&mem, 0x1000, 16);
        gq.add_chain(0, &[(0x8000, 16, 0)]);
        gq.set_avail_idx(17);
        let mut queue = gq.device_queue(16);
        let mut ring = Ring::new(&mut queue, &mem);
        assert!(ring.pop().is_none());
        gq.set_avail_idx(16);
        assert!(ring.pop().is_some());
        ring.go_to_previous_position();
        assert_eq!(queue.next_avail(), 0);
    }

    /// Returns `chains` chains through the ring and through virtio-queue,
    /// checking the used ring and the notification decisions agree.
    fn used_and_notified(event_idx: bool, mapped: bool) {
        let mem = if mapped {
            memory(&[(0, 0x10000)])
        } else {
            memory(&[(0, 0x1180), (0x1180, 0xee80)])
        };
        let gq = GuestQueue::new(&mem, 0x1000, 16);
        let mut reference = gq.device_queue(16);
        let mut queue = gq.device_queue(16);
        reference.set_event_idx(event_idx);
        queue.set_event_idx(event_idx);
        let used_elems = |n: u16| -> Vec<(u32, u32)> { (0..n).map(|i| gq.used_elem(i)).collect() };
        for used_event in [0u16, 3, 7, 20, 40] {
            gq.set_used_event(used_event);
            let mut want = Vec::new();
            for batch in [1u16, 4, 2, 10] {
                for i in 0..batch {
                    reference.add_used(&mem, i, u32::from(batch)).unwrap();
                }
                want.push(reference.needs_notification(&mem).unwrap());
            }
            let want_used = used_elems(16);
            let mut ring = Ring::new(&mut queue, &mem);
            let mut got = Vec::new();
            for batch in [1u16, 4, 2, 10] {
                for i in 0..batch {
                    ring.add_used(i, u32::from(batch)).unwrap();
                }
                got.push(ring.needs_notification().unwrap());
            }
            assert_eq!(got, want, "used_event {used_event}");
            assert_eq!(used_elems(16), want_used);
            assert_eq!(queue.next_used(), reference.next_used());
            assert_eq!(gq.used_idx(), queue.next_used());
        }
        let mut ring = Ring::new(&mut queue, &mem);
        assert!(matches!(
            ring.add_used(16, 0),
            Err(QueueError::InvalidDescriptorIndex)
        ));
    }

    #[test]
    fn used_entries_and_notifications_match_virtio_queue() {
        for event_idx in [false, true] {
            for mapped in [false, true] {
                used_and_notified(event_idx, mapped);
            }
        }
    }

    #[test]
    fn notifications_are_enabled_through_the_queue() {
        let mem = memory(&[(0, 0x10000)]);
        let mut gq = GuestQueue::new(&mem, 0x1000, 16);
        let mut queue = gq.device_queue(16);
        queue.set_event_idx(true);
        let mut ring = Ring::new(&mut queue, &mem);
        assert!(!ring.enable_notification().unwrap());
        gq.add_chain(0, &[(0x8000, 16, 0)]);
        assert!(ring.enable_notification().unwrap());
        ring.disable_notification().unwrap();
        let chain = ring.pop().unwrap();
        assert_eq!(chain.head_index(), 0);
        assert!(!ring.enable_notification().unwrap());
        assert_eq!(gq.avail_event(), 1);
    }
}
