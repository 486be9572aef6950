//! `balloon_pfns`: a hostile guest filling a virtio-balloon's inflate and
//! deflate queues with PFN lists (out of range, in the memory hole,
//! duplicated, naming the rings and buffers themselves, too long, device-
//! writable, outside memory), and its free page hinting queue with commands
//! and free ranges while the host starts and stops hinting runs, on a real
//! event loop over a 256 KiB guest memory (optionally with a hole). After
//! every notification:
//!
//! - each queue's used index reaches exactly the chains made available (no
//!   more, and none is left behind), every chain is returned with length 0;
//! - the device counts each chain once: inflated, deflated or malformed, as
//!   an independent model of the buffer format says;
//! - pages released plus pages skipped as outside RAM are exactly the
//!   distinct PFNs of the well-formed inflate buffers, as the model splits
//!   them, plus the whole pages of the hints the model takes (only those of
//!   the current run, after the guest echoed its id), and no `madvise`
//!   fails;
//! - the hinting status (the host's and the guest's last commands) is the
//!   model's, including the `DONE` a stop earns when the run acknowledges;
//! - every data page (a marked page the driver never inflated or hinted)
//!   keeps its bytes, and every inflated or hinted one reads as zeroes.
//!
//! Once an inflated or hinted page holds a ring or a buffer (the guest
//! zeroed its own queues), only the absence of crashes and unbounded loops
//! is checked.
//!
//! Input format: a flags byte ([`HOLE_FLAG`]), then operations (an [`Op`]
//! code byte and operands) until the input ends; a final notification
//! always runs.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use ember_devices::virtio::balloon::{
    Balloon, BalloonConfig, BalloonCounters, HintingStatus, DEFLATE_QUEUE, INFLATE_QUEUE,
    MAX_PFNS_PER_BUFFER, QUEUE_SIZE, VIRTIO_BALLOON_F_FREE_PAGE_HINT,
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
/// The hinting queue (the device has no statistics queue).
const HINT_QUEUE: usize = 2;
/// The device's queues.
const QUEUES: [usize; 3] = [INFLATE_QUEUE, DEFLATE_QUEUE, HINT_QUEUE];
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
    /// 0: device-writable; bit 1: the address gets bit 40) on the inflate,
    /// deflate or hinting queue (`queue` modulo 3); a device-writable one on
    /// the hinting queue is a free range.
    Raw = 1,
    /// Notifies every queue and checks the invariants.
    Kick = 2,
    /// `u32 cmd`: the guest sends a hinting command (a readable le32).
    Command = 3,
    /// `u8 ack`: the host starts a hinting run (acknowledging stops if
    /// `ack` is odd).
    Start = 4,
    /// The host ends the hinting run (`DONE`).
    Stop = 5,
}

impl Op {
    /// Number of operation codes.
    pub const COUNT: u8 = 6;

    fn decode(code: u8) -> Op {
        match code % Op::COUNT {
            0 => Op::Pfns,
            1 => Op::Raw,
            2 => Op::Kick,
            3 => Op::Command,
            4 => Op::Start,
            _ => Op::Stop,
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
    /// Data pages inflated or hinted.
    inflated: BTreeSet<u64>,
    tainted: bool,
    hinting: HintModel,
}

/// The model's hinting run.
#[derive(Default)]
struct HintModel {
    status: HintingStatus,
    last_run: u32,
    acknowledge: bool,
}

impl HintModel {
    fn start(&mut self, acknowledge: bool) {
        self.last_run = match self.last_run.wrapping_add(1) {
            0 | 1 => 2,
            id => id,
        };
        self.status.host_cmd = self.last_run;
        self.acknowledge = acknowledge;
    }

    fn in_run(&self) -> bool {
        self.status.host_cmd >= 2
    }
}

/// The RAM pages (first, end) of guest memory.
fn ram_pages(hole: bool) -> Vec<(u64, u64)> {
    if hole {
        vec![(0, HOLE.0 / PAGE), (HOLE.1 / PAGE, MEM_END / PAGE)]
    } else {
        vec![(0, MEM_END / PAGE)]
    }
}

/// Pages of `a` and `b` (first, end) in common.
fn overlap(a: (u64, u64), b: (u64, u64)) -> u64 {
    a.1.min(b.1).saturating_sub(a.0.max(b.0))
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
        let mut finish = false;
        for chain in chains.iter().filter(|c| c.queue == HINT_QUEUE) {
            finish |= self.apply_hint(mem, hole, chain);
        }
        if finish {
            self.hinting.status.host_cmd = 1;
        }
    }

    /// One chain of the hinting queue; returns whether it ends the run.
    fn apply_hint(&mut self, mem: &Mem, hole: bool, chain: &Chain) -> bool {
        let h = &mut self.hinting;
        if !chain.writable {
            if chain.len != 4 || !in_ram(hole, chain.addr, 4) {
                self.counters.malformed_buffers += 1;
                return false;
            }
            let cmd: u32 = mem.read_obj(GuestAddress(chain.addr)).expect("command");
            h.status.guest_cmd = Some(cmd);
            return cmd <= 1 && h.acknowledge && h.in_run();
        }
        if !h.in_run() || h.status.guest_cmd != Some(h.status.host_cmd) {
            return false;
        }
        let range = (
            chain.addr.div_ceil(PAGE),
            (chain.addr + u64::from(chain.len)) / PAGE,
        );
        let released: u64 = ram_pages(hole).into_iter().map(|r| overlap(r, range)).sum();
        let data = (u64::from(DATA_PAGES.start), u64::from(DATA_PAGES.end));
        if released > overlap(data, range) {
            self.tainted = true;
        }
        self.inflated
            .extend(range.0.max(data.0)..range.1.min(data.1));
        let c = &mut self.counters;
        c.free_page_hint_count += 1;
        c.free_page_hint_freed += released * PAGE;
        c.pages_outside += range.1.saturating_sub(range.0) - released;
        false
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
    driver: Driver<3>,
    balloon: Arc<Mutex<Balloon<Mem>>>,
    manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    pending: Vec<Chain>,
    published: [u16; 3],
    model: Model,
}

impl Run {
    fn new(hole: bool) -> Run {
        let mem = guest_memory(hole);
        for pfn in DATA_PAGES {
            let at = u64::from(pfn) * PAGE;
            let _ = mem.write_slice(&[marker(pfn); PAGE as usize], GuestAddress(at));
        }
        let driver = Driver::<3>::new(mem.clone());
        let config = BalloonConfig {
            free_page_hinting: true,
            ..BalloonConfig::default()
        };
        let balloon = Arc::new(Mutex::new(Balloon::new(config).expect("balloon")));
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
                feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_BALLOON_F_FREE_PAGE_HINT),
            )
            .expect("activate");
        Run {
            mem,
            hole,
            driver,
            balloon,
            manager,
            pending: Vec::new(),
            published: [0; 3],
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

    fn command_op(&mut self, r: &mut Reader) -> Option<()> {
        let cmd = r.u32()?;
        let addr = self.driver.area(4);
        let _ = self.mem.write_obj(cmd.to_le(), GuestAddress(addr));
        self.publish(Chain {
            queue: HINT_QUEUE,
            addr,
            len: 4,
            writable: false,
        });
        Some(())
    }

    fn start_op(&mut self, r: &mut Reader) -> Option<()> {
        let acknowledge = r.u8()? % 2 == 1;
        self.model.hinting.start(acknowledge);
        self.balloon
            .lock()
            .expect("lock")
            .start_hinting(acknowledge)
            .expect("start hinting");
        Some(())
    }

    fn stop(&mut self) {
        self.model.hinting.status.host_cmd = 1;
        self.balloon
            .lock()
            .expect("lock")
            .stop_hinting()
            .expect("stop hinting");
    }

    fn raw_op(&mut self, r: &mut Reader) -> Option<()> {
        let queue = QUEUES[usize::from(r.u8()? % 3)];
        let mut addr = u64::from(r.u32()?);
        let len = r.u32()?;
        let flags = r.u8()?;
        if flags & 2 != 0 {
            addr |= 1 << 40;
        }
        // A buffer the device reads over the data pages could change while
        // the device works (an earlier chain zeroing it): the model gives
        // up there. Free ranges (writable on the hinting queue) are not read.
        let data = u64::from(DATA_PAGES.start) * PAGE..u64::from(DATA_PAGES.end) * PAGE;
        let read = !(queue == HINT_QUEUE && flags & 1 != 0);
        if read && addr < data.end && addr.saturating_add(u64::from(len)) > data.start {
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
        for queue in QUEUES {
            self.balloon.lock().expect("lock").queue_events()[queue]
                .write(1)
                .expect("notify");
        }
        // Each wake-up handles one queue; a few more find nothing.
        for _ in 0..6 {
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
        for queue in QUEUES {
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
        assert_eq!(
            (counters.free_page_hint_count, counters.free_page_hint_freed),
            (model.free_page_hint_count, model.free_page_hint_freed),
            "hints"
        );
        assert_eq!(counters.free_page_hint_fails, 0, "hint fails");
        let status = self.balloon.lock().expect("lock").hinting_status();
        assert_eq!(
            status.ok(),
            Some(self.model.hinting.status),
            "hinting status"
        );
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
            Op::Command => run.command_op(&mut r).is_none(),
            Op::Start => run.start_op(&mut r).is_none(),
            Op::Stop => {
                run.stop();
                false
            }
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

    /// A raw descriptor on queue `queue` (0 inflate, 1 deflate, 2 hinting).
    pub fn raw(&mut self, queue: u8, addr: u32, len: u32, flags: u8) -> &mut Self {
        self.w
            .u8(Op::Raw as u8)
            .u8(queue)
            .u32(addr)
            .u32(len)
            .u8(flags);
        self
    }

    /// A hinting command from the guest.
    pub fn command(&mut self, cmd: u32) -> &mut Self {
        self.w.u8(Op::Command as u8).u32(cmd);
        self
    }

    /// The host starts a hinting run.
    pub fn start(&mut self, acknowledge: bool) -> &mut Self {
        self.w.u8(Op::Start as u8).u8(u8::from(acknowledge));
        self
    }

    /// The host ends the hinting run.
    pub fn stop(&mut self) -> &mut Self {
        self.w.u8(Op::Stop as u8);
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
