//! `balloon_pfns`: a hostile guest filling a virtio-balloon's inflate and
//! deflate queues with PFN lists (out of range, in the memory hole,
//! duplicated, naming the rings and buffers themselves, too long, device-
//! writable, outside memory), on a real event loop over a 256 KiB guest
//! memory (optionally with a hole). After every notification:
//!
//! - each queue's used index reaches exactly the chains made available (no
//!   more, and none is left behind), every chain is returned with length 0;
//! - the device counts each chain once: inflated, deflated or malformed, as
//!   an independent model of the buffer format says;
//! - pages released plus pages skipped as outside RAM are exactly the
//!   distinct PFNs of the well-formed inflate buffers, as the model splits
//!   them, and no `madvise` fails;
//! - every data page (a marked page the driver never inflated) keeps its
//!   bytes, and every inflated one reads as zeroes.
//!
//! Once an inflated page holds a ring or a buffer (the guest zeroed its own
//! queues), only the absence of crashes and unbounded loops is checked.
//!
//! Input format: a flags byte ([`HOLE_FLAG`]), then operations (an [`Op`]
//! code byte and operands) until the input ends; a final notification
//! always runs.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use ember_devices::virtio::balloon::{
    Balloon, BalloonConfig, BalloonCounters, DEFLATE_QUEUE, INFLATE_QUEUE, MAX_PFNS_PER_BUFFER,
    QUEUE_SIZE,
};
use ember_devices::virtio::{feature_bit, IrqTrigger, VirtioDevice};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress};

use crate::block::{guest_memory, Mem, HOLE, MEM_END};
use crate::bytes::{Reader, Writer};
use crate::ring::{Driver, SIZE};

/// Header flag: guest memory has a hole at [`HOLE`].
pub const HOLE_FLAG: u8 = 1;
/// The data pages: marked before the run, free for the guest to inflate.
pub const DATA_PAGES: std::ops::Range<u32> = 4..16;
/// Most notifications checked per input.
const MAX_KICKS: u32 = 32;
const PAGE: u64 = 4096;
const WRITE: u16 = 2;

/// Operation codes (the code byte is taken modulo [`Op::COUNT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// `u8 queue, u8 n, u8 wide, n PFNs`: a buffer of PFNs (u32 each if
    /// `wide` is odd, else one byte each, 0 to 255: pages in RAM, in the
    /// hole and past the end) on the inflate (even queue) or deflate queue.
    Pfns = 0,
    /// `u8 queue, u32 addr, u32 len, u8 flags`: one raw descriptor (flags bit
    /// 0: device-writable; bit 1: the address gets bit 40).
    Raw = 1,
    /// Notifies both queues and checks the invariants.
    Kick = 2,
}

impl Op {
    /// Number of operation codes.
    pub const COUNT: u8 = 3;

    fn decode(code: u8) -> Op {
        match code % Op::COUNT {
            0 => Op::Pfns,
            1 => Op::Raw,
            _ => Op::Kick,
        }
    }
}

/// What the model expects of one chain.
#[derive(Clone, Debug)]
struct Chain {
    queue: usize,
    addr: u64,
    len: u32,
    writable: bool,
}

/// The model's view of the run.
#[derive(Default)]
struct Model {
    counters: BalloonCounters,
    inflated: BTreeSet<u64>,
    tainted: bool,
}

fn in_ram(hole: bool, addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    end <= MEM_END && !(hole && addr < HOLE.1 && end > HOLE.0)
}

fn page_in_ram(hole: bool, pfn: u64) -> bool {
    pfn.checked_mul(PAGE)
        .is_some_and(|at| in_ram(hole, at, PAGE))
}

/// The model's reading of a chain: `None` if malformed, else its PFNs.
fn model_pfns(mem: &Mem, hole: bool, chain: &Chain) -> Option<Vec<u32>> {
    if chain.writable {
        return None;
    }
    if chain.len == 0 {
        return Some(Vec::new());
    }
    let len = chain.len as usize;
    if !len.is_multiple_of(4)
        || len > MAX_PFNS_PER_BUFFER * 4
        || !in_ram(hole, chain.addr, len as u64)
    {
        return None;
    }
    let mut bytes = vec![0u8; len];
    mem.read_slice(&mut bytes, GuestAddress(chain.addr)).ok()?;
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

impl Model {
    /// Applies the chains of one notification, in device order (inflate
    /// queue first).
    fn apply(&mut self, mem: &Mem, hole: bool, chains: &[Chain]) {
        for queue in [INFLATE_QUEUE, DEFLATE_QUEUE] {
            for chain in chains.iter().filter(|c| c.queue == queue) {
                self.apply_one(mem, hole, chain);
            }
        }
    }

    fn apply_one(&mut self, mem: &Mem, hole: bool, chain: &Chain) {
        let Some(pfns) = model_pfns(mem, hole, chain) else {
            self.counters.malformed_buffers += 1;
            return;
        };
        if chain.queue == DEFLATE_QUEUE {
            self.counters.deflate_count += 1;
            return;
        }
        self.counters.inflate_count += 1;
        let distinct: BTreeSet<u64> = pfns.into_iter().map(u64::from).collect();
        for pfn in distinct {
            if !page_in_ram(hole, pfn) {
                self.counters.pages_outside += 1;
                continue;
            }
            self.counters.pages_released += 1;
            if !(u64::from(DATA_PAGES.start)..u64::from(DATA_PAGES.end)).contains(&pfn) {
                // A ring or a buffer: the guest broke its own queues.
                self.tainted = true;
            }
            self.inflated.insert(pfn);
        }
    }
}

/// The marker byte of data page `pfn`.
fn marker(pfn: u32) -> u8 {
    (pfn as u8) | 0x80
}

struct Run {
    mem: Mem,
    hole: bool,
    driver: Driver<2>,
    balloon: Arc<Mutex<Balloon<Mem>>>,
    manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    pending: Vec<Chain>,
    published: [u16; 2],
    model: Model,
}

impl Run {
    fn new(hole: bool) -> Run {
        let mem = guest_memory(hole);
        for pfn in DATA_PAGES {
            let at = u64::from(pfn) * PAGE;
            let _ = mem.write_slice(&[marker(pfn); PAGE as usize], GuestAddress(at));
        }
        let driver = Driver::<2>::new(mem.clone());
        let balloon = Arc::new(Mutex::new(
            Balloon::new(BalloonConfig::default()).expect("balloon"),
        ));
        let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().expect("event manager");
        manager.add_subscriber(balloon.clone());
        balloon
            .lock()
            .expect("lock")
            .activate(
                mem.clone(),
                driver.queues(QUEUE_SIZE),
                Arc::new(IrqTrigger::new().expect("irq")),
                feature_bit(VIRTIO_F_VERSION_1),
            )
            .expect("activate");
        Run {
            mem,
            hole,
            driver,
            balloon,
            manager,
            pending: Vec::new(),
            published: [0; 2],
            model: Model::default(),
        }
    }

    /// Publishes one chain, unless the queue is full until the next kick.
    fn publish(&mut self, chain: Chain) {
        let waiting = self
            .pending
            .iter()
            .filter(|c| c.queue == chain.queue)
            .count();
        if waiting >= usize::from(SIZE) {
            return;
        }
        let flags = if chain.writable { WRITE } else { 0 };
        self.driver
            .chain(chain.queue, &[(chain.addr, chain.len, flags)]);
        self.published[chain.queue] = self.published[chain.queue].wrapping_add(1);
        self.pending.push(chain);
    }

    fn pfns_op(&mut self, r: &mut Reader) -> Option<()> {
        let queue = usize::from(r.u8()? % 2);
        let n = usize::from(r.u8()?);
        let wide = r.u8()? % 2 == 1;
        let pfns: Vec<u32> = (0..n)
            .map_while(|_| if wide { r.u32() } else { r.u8().map(u32::from) })
            .collect();
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        let addr = self.driver.area(bytes.len() as u64);
        let _ = self.mem.write_slice(&bytes, GuestAddress(addr));
        self.publish(Chain {
            queue,
            addr,
            len: bytes.len() as u32,
            writable: false,
        });
        Some(())
    }

    fn raw_op(&mut self, r: &mut Reader) -> Option<()> {
        let queue = usize::from(r.u8()? % 2);
        let mut addr = u64::from(r.u32()?);
        let len = r.u32()?;
        let flags = r.u8()?;
        if flags & 2 != 0 {
            addr |= 1 << 40;
        }
        // A buffer over the data pages could change while the device
        // works (an earlier chain zeroing it): the model gives up there.
        let data = u64::from(DATA_PAGES.start) * PAGE..u64::from(DATA_PAGES.end) * PAGE;
        if addr < data.end && addr.saturating_add(u64::from(len)) > data.start {
            self.model.tainted = true;
        }
        self.publish(Chain {
            queue,
            addr,
            len,
            writable: flags & 1 != 0,
        });
        Some(())
    }

    fn kick(&mut self) {
        let chains = std::mem::take(&mut self.pending);
        let tainted = self.model.tainted;
        self.model.apply(&self.mem, self.hole, &chains);
        for queue in [INFLATE_QUEUE, DEFLATE_QUEUE] {
            self.balloon.lock().expect("lock").queue_events()[queue]
                .write(1)
                .expect("notify");
        }
        // Each wake-up handles one queue; a few more find nothing.
        for _ in 0..4 {
            self.manager.run_with_timeout(0).expect("event loop");
        }
        if tainted || self.model.tainted {
            return;
        }
        self.check();
    }

    fn used_idx(&self, queue: usize) -> u16 {
        let used = crate::ring::LAYOUT[queue].2;
        self.mem.read_obj(GuestAddress(used + 2)).expect("used idx")
    }

    fn check(&self) {
        for queue in [INFLATE_QUEUE, DEFLATE_QUEUE] {
            let used = self.used_idx(queue);
            assert_eq!(used, self.published[queue], "queue {queue}: used index");
            for idx in 0..used.min(SIZE) {
                assert_eq!(self.driver.used_elem(queue, idx).1, 0, "used length");
            }
        }
        let counters = self.balloon.lock().expect("lock").counters();
        let model = &self.model.counters;
        assert_eq!(counters.inflate_count, model.inflate_count, "inflate_count");
        assert_eq!(counters.deflate_count, model.deflate_count, "deflate_count");
        assert_eq!(
            counters.malformed_buffers, model.malformed_buffers,
            "malformed"
        );
        assert_eq!(counters.pages_released, model.pages_released, "released");
        assert_eq!(counters.pages_outside, model.pages_outside, "outside");
        assert_eq!(counters.event_fails, 0, "event_fails");
        for pfn in DATA_PAGES {
            let mut page = [0u8; PAGE as usize];
            self.mem
                .read_slice(&mut page, GuestAddress(u64::from(pfn) * PAGE))
                .expect("data page");
            let want = if self.model.inflated.contains(&u64::from(pfn)) {
                0
            } else {
                marker(pfn)
            };
            assert!(page.iter().all(|&b| b == want), "page {pfn:#x}");
        }
    }
}

/// Runs one input (see the module documentation).
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let Some(flags) = r.u8() else {
        return;
    };
    let mut run = Run::new(flags & HOLE_FLAG != 0);
    let mut kicks = 0;
    while let Some(code) = r.u8() {
        let done = match Op::decode(code) {
            Op::Pfns => run.pfns_op(&mut r).is_none(),
            Op::Raw => run.raw_op(&mut r).is_none(),
            Op::Kick => {
                kicks += 1;
                run.kick();
                kicks >= MAX_KICKS
            }
        };
        if done {
            break;
        }
    }
    run.kick();
}

/// Builds inputs for [`run`].
#[derive(Default)]
pub struct SeedBuilder {
    w: Writer,
}

impl SeedBuilder {
    /// An input over memory with a hole or not.
    pub fn new(hole: bool) -> SeedBuilder {
        let mut w = Writer::new();
        w.u8(if hole { HOLE_FLAG } else { 0 });
        SeedBuilder { w }
    }

    /// A buffer of `pfns` on the inflate (`inflate`) or deflate queue.
    pub fn pfns(&mut self, inflate: bool, pfns: &[u32]) -> &mut Self {
        let queue = if inflate { 0 } else { 1 };
        let n = u8::try_from(pfns.len()).expect("at most 255 PFNs");
        self.w.u8(Op::Pfns as u8).u8(queue).u8(n).u8(1);
        for &pfn in pfns {
            self.w.u32(pfn);
        }
        self
    }

    /// A raw descriptor.
    pub fn raw(&mut self, inflate: bool, addr: u32, len: u32, flags: u8) -> &mut Self {
        let queue = if inflate { 0 } else { 1 };
        self.w
            .u8(Op::Raw as u8)
            .u8(queue)
            .u32(addr)
            .u32(len)
            .u8(flags);
        self
    }

    /// A notification.
    pub fn kick(&mut self) -> &mut Self {
        self.w.u8(Op::Kick as u8);
        self
    }

    /// The input.
    pub fn finish(self) -> Vec<u8> {
        self.w.finish()
    }
}
