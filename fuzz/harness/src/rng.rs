//! `virtio_rng`: a guest driving the entropy device (virtio-rng) through its
//! request queue.
//!
//! The input drives one split virtqueue (at [`LAYOUT`]'s first place, 64
//! entries) in 256 KiB of guest memory: device-writable and device-readable
//! chains, raw descriptors, raw available-ring heads, arbitrary bytes
//! anywhere (rings and tables included), resets and notifications of an rng
//! device on a real event loop, optionally behind an ops rate limiter that
//! never refills during the input (so throttling is exercised without
//! waiting). After every notification:
//!
//! - the used index advances by at most the chains made available since the
//!   last reset, and by at most the chains the device counted;
//! - every used length is at most [`MAX_REQUEST_BYTES`], and the `bytes`
//!   counter grew by exactly the used lengths;
//! - the host's `getrandom` never failed;
//! - when no descriptor is indirect and no device-writable buffer overlaps
//!   the descriptor table or the available ring (so the chains cannot change
//!   while the device works), guest memory changed only in device-writable
//!   buffers of the table and in the used ring, and each used length is at
//!   most its chain's device-writable bytes.
//!
//! Input format: a flags byte ([`LIMITED`]), then operations, each an [`Op`]
//! code byte and its operands, until the input ends; a final notification
//! always runs.

use std::sync::{Arc, Mutex};

use ember_devices::virtio::rng::{Rng, RngConfig, RngCounters, MAX_REQUEST_BYTES, QUEUE_SIZE};
use ember_devices::virtio::{feature_bit, IrqTrigger, VirtioDevice};
use ember_vmm::BucketConfig;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use crate::block::{guest_memory, host_regions, overlaps, range, Mem, Range};
use crate::bytes::{Reader, Writer};
use crate::ring::{Driver, LAYOUT, SIZE};

/// Flags bit: an ops limit of 3 requests that does not refill in the input.
pub const LIMITED: u8 = 1;

/// Most notifications checked per input (each costs a copy of guest memory).
const MAX_KICKS: u32 = 64;

/// Operation codes (the code byte is taken modulo [`Op::COUNT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// `u32 addr, u16 len, len bytes`: the driver writes guest memory.
    WriteMem = 0,
    /// `u8 queue, u16 index, u64 addr, u32 len, u16 flags, u16 next`: a raw
    /// descriptor (queue ignored).
    Desc = 1,
    /// `u8 queue, u16 head`: a raw head on the available ring (queue ignored).
    Publish = 2,
    /// `u16 len, u8 pieces`: a device-writable chain of `len` bytes.
    Writable = 3,
    /// `u8 len`: a device-readable buffer of `len` bytes.
    Readable = 4,
    /// Notifies the device and checks the invariants.
    Kick = 5,
    /// Resets the device, empties the rings and activates it again.
    Reset = 6,
}

impl Op {
    /// Number of operation codes.
    pub const COUNT: u8 = 7;

    fn decode(code: u8) -> Op {
        match code % Op::COUNT {
            0 => Op::WriteMem,
            1 => Op::Desc,
            2 => Op::Publish,
            3 => Op::Writable,
            4 => Op::Readable,
            5 => Op::Kick,
            _ => Op::Reset,
        }
    }
}

type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

struct Harness {
    mem: Mem,
    driver: Driver<1>,
    rng: Arc<Mutex<Rng<Mem>>>,
    manager: Manager,
    irq: Arc<IrqTrigger>,
    /// Chains made available, and completions seen, since the last reset.
    published: u64,
    used: u16,
    counters: RngCounters,
    kicks: u32,
}

impl Harness {
    fn new(flags: u8) -> Harness {
        let mem = guest_memory(false);
        let ops = (flags & LIMITED != 0).then_some(BucketConfig {
            size: 3,
            one_time_burst: 0,
            refill_time_ms: 3_600_000,
        });
        let rng = Rng::new(RngConfig {
            bandwidth: None,
            ops,
        })
        .expect("rng device");
        let rng = Arc::new(Mutex::new(rng));
        let mut manager = Manager::new().expect("event manager");
        manager.add_subscriber(rng.clone());
        let mut h = Harness {
            driver: Driver::new(mem.clone()),
            mem,
            rng,
            manager,
            irq: Arc::new(IrqTrigger::new().expect("irq")),
            published: 0,
            used: 0,
            counters: RngCounters::default(),
            kicks: 0,
        };
        h.activate();
        h
    }

    fn activate(&mut self) {
        let queues = self.driver.queues(QUEUE_SIZE);
        self.rng
            .lock()
            .expect("rng lock")
            .activate(
                self.mem.clone(),
                queues,
                self.irq.clone(),
                feature_bit(VIRTIO_F_VERSION_1),
            )
            .expect("activation");
    }

    fn reset(&mut self) {
        self.rng.lock().expect("rng lock").reset();
        self.driver.reset();
        self.published = 0;
        self.used = 0;
        self.activate();
    }

    fn step(&mut self, r: &mut Reader) -> Option<()> {
        match Op::decode(r.u8()?) {
            Op::WriteMem => self.driver.write_mem_op(r)?,
            Op::Desc => {
                let _queue = r.u8()?;
                let index = r.u16()?;
                let d = (r.u64()?, r.u32()?, r.u16()?, r.u16()?);
                self.driver.desc(0, index, d);
            }
            Op::Publish => {
                let _queue = r.u8()?;
                let head = r.u16()?;
                self.driver.publish(0, head);
                self.published += 1;
            }
            Op::Writable => {
                let len = u32::from(r.u16()?);
                let pieces = u32::from(r.u8()? % 4);
                self.driver.writable(0, len, pieces);
                self.published += 1;
            }
            Op::Readable => {
                let len = usize::from(r.u8()?);
                self.driver.readable(0, &vec![0x5a; len], 0);
                self.published += 1;
            }
            Op::Kick => self.kick(),
            Op::Reset => self.reset(),
        }
        Some(())
    }

    /// The descriptor table as it is now.
    fn table(&self) -> Vec<Descriptor> {
        (0..SIZE)
            .map(|i| {
                let at = LAYOUT[0].0 + 16 * u64::from(i);
                self.mem.read_obj(GuestAddress(at)).expect("descriptor")
            })
            .collect()
    }

    /// The device-writable buffers of the table, if the chains are stable.
    fn stable_writable(&self) -> Option<Vec<Range>> {
        let (desc, avail, _) = LAYOUT[0];
        let fixed = [
            range(desc, 16 * u64::from(SIZE)),
            range(avail, 6 + 2 * u64::from(SIZE)),
        ];
        let mut writable = Vec::new();
        for d in self.table() {
            if d.flags() & VRING_DESC_F_INDIRECT as u16 != 0 {
                return None;
            }
            if d.flags() & VRING_DESC_F_WRITE as u16 != 0 {
                let buffer = range(d.addr().0, u64::from(d.len()));
                if fixed.iter().any(|f| overlaps(*f, buffer)) {
                    return None;
                }
                writable.push(buffer);
            }
        }
        Some(writable)
    }

    fn snapshot(&self) -> Vec<(u64, Vec<u8>)> {
        host_regions(&self.mem)
            .into_iter()
            .map(|(start, bytes)| (start, bytes.to_vec()))
            .collect()
    }

    fn kick(&mut self) {
        if self.kicks == MAX_KICKS {
            return;
        }
        self.kicks += 1;
        let stable = self.stable_writable();
        let before = stable.as_ref().map(|_| self.snapshot());
        self.rng.lock().expect("rng lock").queue_events()[0]
            .write(1)
            .expect("notify");
        while self.manager.run_with_timeout(0).expect("event loop") > 0 {}
        let counters = self.rng.lock().expect("rng lock").counters();
        let used = self.used_idx();
        let new = used.wrapping_sub(self.used);
        let requests = counters.requests - self.counters.requests;
        assert!(
            self.published > u64::from(u16::MAX) || u64::from(used) <= self.published,
            "used index {used} past the {} chains made available",
            self.published
        );
        assert!(u64::from(new) <= requests, "{new} used, {requests} taken");
        assert_eq!(counters.host_rng_fails, 0);
        let mut lens = 0u64;
        for i in 0..new {
            let (_, len) = self.driver.used_elem(0, self.used.wrapping_add(i));
            assert!(len as usize <= MAX_REQUEST_BYTES, "used length {len}");
            lens += u64::from(len);
        }
        assert_eq!(counters.bytes - self.counters.bytes, lens);
        if let (Some(writable), Some(before)) = (stable, before) {
            self.check_writes(&writable, &before);
        }
        self.used = used;
        self.counters = counters;
    }

    /// Guest memory changed only in `writable` buffers and the used ring.
    fn check_writes(&self, writable: &[Range], before: &[(u64, Vec<u8>)]) {
        let used_ring = range(LAYOUT[0].2, 6 + 8 * u64::from(SIZE));
        for ((start, old), (_, now)) in before.iter().zip(host_regions(&self.mem)) {
            for (i, (a, b)) in old.iter().zip(now).enumerate() {
                if a == b {
                    continue;
                }
                let at = range(start + i as u64, 1);
                assert!(
                    overlaps(at, used_ring) || writable.iter().any(|w| overlaps(at, *w)),
                    "byte {:#x} written outside the guest's writable buffers",
                    at.0
                );
            }
        }
    }

    fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(LAYOUT[0].2 + 2))
            .expect("used index")
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
    h.kick();
}

/// Seed builder.
#[derive(Debug, Default)]
pub struct SeedBuilder {
    w: Writer,
}

impl SeedBuilder {
    /// A seed starting with `flags`.
    pub fn new(flags: u8) -> SeedBuilder {
        let mut w = Writer::new();
        w.u8(flags);
        SeedBuilder { w }
    }

    /// A device-writable chain of `len` bytes in `pieces` descriptors.
    pub fn writable(&mut self, len: u16, pieces: u8) -> &mut Self {
        self.w.u8(Op::Writable as u8).u16(len).u8(pieces);
        self
    }

    /// A device-readable buffer.
    pub fn readable(&mut self, len: u8) -> &mut Self {
        self.w.u8(Op::Readable as u8).u8(len);
        self
    }

    /// A raw descriptor.
    pub fn desc(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) -> &mut Self {
        self.w
            .u8(Op::Desc as u8)
            .u8(0)
            .u16(index)
            .u64(addr)
            .u32(len)
            .u16(flags)
            .u16(next);
        self
    }

    /// A raw head on the available ring.
    pub fn publish(&mut self, head: u16) -> &mut Self {
        self.w.u8(Op::Publish as u8).u8(0).u16(head);
        self
    }

    /// A notification.
    pub fn kick(&mut self) -> &mut Self {
        self.w.u8(Op::Kick as u8);
        self
    }

    /// A reset.
    pub fn reset(&mut self) -> &mut Self {
        self.w.u8(Op::Reset as u8);
        self
    }

    /// The input.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.w).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn harness_after(input: &[u8]) -> Harness {
        let mut r = Reader::new(input);
        let flags = r.u8().expect("flags");
        let mut h = Harness::new(flags);
        while h.step(&mut r).is_some() {}
        h.kick();
        h
    }

    #[test]
    fn the_harness_sees_what_the_device_did() {
        let _guard = crate::one_at_a_time();
        let h = harness_after(
            &SeedBuilder::new(0)
                .writable(64, 1)
                .writable(4096, 3)
                .finish(),
        );
        assert_eq!(h.used, 2);
        assert_eq!(h.counters.bytes, 64 + 4096);
        let h = harness_after(
            &SeedBuilder::new(LIMITED)
                .writable(8, 1)
                .writable(8, 1)
                .writable(8, 1)
                .writable(8, 1)
                .finish(),
        );
        assert_eq!(h.used, 3, "the fourth waits for a refill");
        assert!(h.counters.throttled > 0);
    }

    #[test]
    #[should_panic(expected = "outside the guest's writable buffers")]
    fn a_write_outside_the_buffers_trips_the_check() {
        let _guard = crate::one_at_a_time();
        let h = harness_after(&SeedBuilder::new(0).finish());
        let before = h.snapshot();
        h.mem
            .write_obj(0xffu8, GuestAddress(0x3_0000))
            .expect("write");
        h.check_writes(&[], &before);
    }
}
