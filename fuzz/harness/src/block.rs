//! `virtio_block`: a guest driving a virtio-block device through its queue.
//!
//! The input lays out one split virtqueue in a 256 KiB guest memory (optionally
//! with a hole), writes descriptors, rings and arbitrary bytes the way a
//! driver (or an attacker) would, and notifies the device, which runs on a
//! real event loop over a temporary backing file. After every notification:
//!
//! - the used index advances by at most the number of chains the driver made
//!   available, and by no more than the device took from the available ring;
//! - every request is counted once, in exactly one outcome counter;
//! - the backing file keeps its length, a read-only drive's file is unchanged,
//!   and the bytes past the last whole sector are never written;
//! - when no buffer the device may write overlaps a ring or a descriptor table
//!   (so the chains cannot change while the device works), the chains a shadow
//!   queue pops beforehand are exactly those completed, in order, each used
//!   length is at most the chain's device-writable bytes, and guest memory
//!   changed only inside those writable buffers and the used ring.
//!
//! Input format (see [`Writer`] for building one): a [`Header`], then
//! operations, each an [`Op`] code byte and its operands, until the input
//! ends; a final notification always runs.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use ember_devices::virtio::block::{Block, BlockConfig, BlockCounters, CacheType, QUEUE_SIZE};
use ember_devices::virtio::{feature_bit, IrqTrigger, VirtioDevice};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_INDIRECT};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::bytes::{Reader, Writer};

/// Guest memory as the targets use it.
pub type Mem = GuestMemoryMmap<()>;

/// End of guest memory.
pub const MEM_END: u64 = 0x4_0000;
/// The range left unbacked when [`flags::HOLE`] is set.
pub const HOLE: (u64, u64) = (0x2_0000, 0x3_0000);

/// Header flag bits.
pub mod flags {
    /// The drive is read-only.
    pub const READ_ONLY: u8 = 1;
    /// FLUSH syncs the file.
    pub const WRITEBACK: u8 = 2;
    /// The driver negotiated VIRTIO_RING_F_EVENT_IDX.
    pub const EVENT_IDX: u8 = 4;
    /// Guest memory has a hole at [`super::HOLE`].
    pub const HOLE: u8 = 8;
}

/// Operation codes (the code byte is taken modulo [`Op::COUNT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// `u32 addr, u16 len, len bytes`: the driver writes guest memory.
    WriteMem = 0,
    /// `u16 index, u64 addr, u32 len, u16 flags, u16 next`: a descriptor in
    /// the queue's table (index modulo the queue size).
    Desc = 1,
    /// `u16 head`: puts `head` in the next available slot and bumps the index.
    Publish = 2,
    /// `u16 idx`: sets the available index as is.
    SetAvailIdx = 3,
    /// Notifies the device and checks the invariants.
    Kick = 4,
    /// `u16 value`: the `used_event` field.
    UsedEvent = 5,
    /// `u32 table, u16 index, u64 addr, u32 len, u16 flags, u16 next`: a
    /// descriptor anywhere (an indirect table).
    DescAt = 6,
    /// Resets the device, zeroes the ring indices and activates it again.
    Reset = 7,
}

impl Op {
    /// Number of operation codes.
    pub const COUNT: u8 = 8;

    fn decode(code: u8) -> Op {
        match code % Op::COUNT {
            0 => Op::WriteMem,
            1 => Op::Desc,
            2 => Op::Publish,
            3 => Op::SetAvailIdx,
            4 => Op::Kick,
            5 => Op::UsedEvent,
            6 => Op::DescAt,
            _ => Op::Reset,
        }
    }
}

/// The fixed start of an input.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    /// [`flags`] bits.
    pub flags: u8,
    /// Whole sectors in the backing file.
    pub sectors: u8,
    /// Bytes past the last whole sector (modulo 512).
    pub tail: u8,
    /// Queue size as log2 (modulo 9: 1 to 256 entries).
    pub size_log2: u8,
    /// Descriptor table address (aligned down to 16).
    pub desc: u32,
    /// Available ring address (aligned down to 2).
    pub avail: u32,
    /// Used ring address (aligned down to 4).
    pub used: u32,
}

impl Header {
    /// Encodes the header.
    pub fn write(&self, w: &mut Writer) {
        w.u8(self.flags)
            .u8(self.sectors)
            .u8(self.tail)
            .u8(self.size_log2)
            .u32(self.desc)
            .u32(self.avail)
            .u32(self.used);
    }

    fn read(r: &mut Reader) -> Option<Header> {
        Some(Header {
            flags: r.u8()?,
            sectors: r.u8()?,
            tail: r.u8()?,
            size_log2: r.u8()?,
            desc: r.u32()?,
            avail: r.u32()?,
            used: r.u32()?,
        })
    }

    /// The queue size.
    pub fn queue_size(&self) -> u16 {
        1 << (self.size_log2 % 9)
    }
}

/// Guest memory of the targets: 256 KiB, with an optional hole, zeroed. The
/// mappings are made once per process and cleared for each input (mapping
/// and faulting in fresh memory for every input would be most of the cost).
pub fn guest_memory(hole: bool) -> Mem {
    static MEMORY: [OnceLock<Mem>; 2] = [OnceLock::new(), OnceLock::new()];
    let mem = MEMORY[usize::from(hole)].get_or_init(|| {
        let ranges: Vec<(GuestAddress, usize)> = if hole {
            vec![
                (GuestAddress(0), HOLE.0 as usize),
                (GuestAddress(HOLE.1), (MEM_END - HOLE.1) as usize),
            ]
        } else {
            vec![(GuestAddress(0), MEM_END as usize)]
        };
        GuestMemoryMmap::from_ranges(&ranges).expect("cannot map guest memory")
    });
    for region in mem.iter() {
        // SAFETY: the region maps `len()` writable bytes at `as_ptr()`; inputs
        // run one at a time, so no other user of this memory is live.
        unsafe { std::ptr::write_bytes(region.as_ptr(), 0, region.len() as usize) };
    }
    mem.clone()
}

/// The byte at `offset` of a fresh backing file.
pub fn disk_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(31) ^ (offset >> 9)) as u8
}

/// Largest backing file: 255 sectors and a partial one.
const MAX_DISK_LEN: u64 = 256 * 512;

/// The first `len` bytes of a fresh backing file.
pub fn disk_pattern(len: u64) -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    let pattern = PATTERN.get_or_init(|| (0..MAX_DISK_LEN).map(disk_byte).collect());
    &pattern[..len.min(MAX_DISK_LEN) as usize]
}

/// Most notifications checked per input (each costs a copy of guest memory).
const MAX_KICKS: u32 = 64;

/// The host mapping of each guest memory region.
pub(crate) fn host_regions(mem: &Mem) -> Vec<(u64, &[u8])> {
    mem.iter()
        .map(|region| {
            // SAFETY: the region maps `len()` bytes at `as_ptr()` for as long
            // as `mem` lives, which bounds the returned borrow; the harness is
            // single-threaded, so nothing writes them while they are read.
            let bytes =
                unsafe { std::slice::from_raw_parts(region.as_ptr(), region.len() as usize) };
            (region.start_addr().0, bytes)
        })
        .collect()
}

/// A backing file shared by every input of one process: an unlinked file,
/// opened by the device through `/proc/self/fd`, so nothing is left behind.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
}

impl Disk {
    /// The process's disk, refilled with `len` bytes of [`disk_byte`].
    pub fn fresh(len: u64) -> &'static Disk {
        static DISK: OnceLock<Disk> = OnceLock::new();
        let disk = DISK.get_or_init(|| {
            let dir = if std::path::Path::new("/dev/shm").is_dir() {
                PathBuf::from("/dev/shm")
            } else {
                std::env::temp_dir()
            };
            let path = dir.join(format!("ember-fuzz-disk-{}", std::process::id()));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .expect("cannot create the backing file");
            std::fs::remove_file(&path).expect("cannot unlink the backing file");
            let path = PathBuf::from(format!("/proc/self/fd/{}", {
                use std::os::fd::AsRawFd;
                file.as_raw_fd()
            }));
            Disk { file, path }
        });
        disk.file.set_len(0).expect("truncate");
        disk.file.write_all_at(disk_pattern(len), 0).expect("fill");
        disk
    }

    /// The path the device opens.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The file's current bytes.
    pub fn contents(&self) -> Vec<u8> {
        let len = self.file.metadata().expect("stat").len();
        let mut buf = vec![0u8; usize::try_from(len).expect("size")];
        self.file.read_exact_at(&mut buf, 0).expect("read back");
        buf
    }
}

type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// A byte range `[start, end)` of guest-physical addresses.
pub(crate) type Range = (u64, u64);

pub(crate) fn overlaps(a: Range, b: Range) -> bool {
    a.0 < b.1 && b.0 < a.1
}

pub(crate) fn range(start: u64, len: u64) -> Range {
    (start, start.saturating_add(len))
}

/// Calls `f` with the offset of every byte that differs between `a` and `b`
/// (of equal length), comparing pages, then lines, then bytes.
fn for_each_difference(a: &[u8], b: &[u8], f: &mut impl FnMut(usize)) {
    for (p, (pa, pb)) in a.chunks(4096).zip(b.chunks(4096)).enumerate() {
        if pa == pb {
            continue;
        }
        for (l, (la, lb)) in pa.chunks(64).zip(pb.chunks(64)).enumerate() {
            if la == lb {
                continue;
            }
            for (i, (x, y)) in la.iter().zip(lb).enumerate() {
                if x != y {
                    f(p * 4096 + l * 64 + i);
                }
            }
        }
    }
}

/// What the device should do with the chains available at a notification.
struct Expectation {
    /// Popped chains: head and device-writable bytes.
    chains: Vec<(u16, u64)>,
    /// Device-writable buffers of those chains.
    writable: Vec<Range>,
    /// Whether nothing the device writes can change the chains (see the module docs).
    strict: bool,
    /// Guest memory before the notification (strict mode only).
    snapshot: Option<Vec<Vec<u8>>>,
}

struct Harness {
    mem: Mem,
    header: Header,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    block: Arc<Mutex<Block<Mem>>>,
    manager: Manager,
    irq: Arc<IrqTrigger>,
    disk: &'static Disk,
    disk_len: u64,
    read_only: bool,
    kicks: u32,
}

thread_local! {
    /// Snapshot buffers kept between notifications (allocating and faulting
    /// in a fresh copy of guest memory each time would dominate the cost).
    static SPARE_SNAPSHOT: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Harness {
    fn new(header: Header) -> Option<Harness> {
        let mem = guest_memory(header.flags & flags::HOLE != 0);
        let disk_len = u64::from(header.sectors) * 512 + u64::from(header.tail) % 512;
        let disk = Disk::fresh(disk_len);
        let read_only = header.flags & flags::READ_ONLY != 0;
        let block = Block::new(BlockConfig {
            drive_id: "fuzz".into(),
            path: disk.path().to_path_buf(),
            read_only,
            cache_type: if header.flags & flags::WRITEBACK != 0 {
                CacheType::Writeback
            } else {
                CacheType::Unsafe
            },
            bandwidth: None,
            ops: None,
        })
        .expect("block device");
        let block = Arc::new(Mutex::new(block));
        let mut manager = Manager::new().expect("event manager");
        manager.add_subscriber(block.clone());
        let mut h = Harness {
            mem,
            header,
            size: header.queue_size(),
            desc: u64::from(header.desc & !15),
            avail: u64::from(header.avail & !1),
            used: u64::from(header.used & !3),
            avail_idx: 0,
            block,
            manager,
            irq: Arc::new(IrqTrigger::new().expect("irq")),
            disk,
            disk_len,
            read_only,
            kicks: 0,
        };
        h.activate().then_some(h)
    }

    /// Hands the device its queue, as the transport does at DRIVER_OK: only
    /// a queue that lies in guest memory ever reaches a device.
    fn activate(&mut self) -> bool {
        let mut q = Queue::new(QUEUE_SIZE).expect("queue");
        if q.try_set_size(self.size).is_err()
            || q.try_set_desc_table_address(GuestAddress(self.desc))
                .is_err()
            || q.try_set_avail_ring_address(GuestAddress(self.avail))
                .is_err()
            || q.try_set_used_ring_address(GuestAddress(self.used))
                .is_err()
        {
            return false;
        }
        q.set_ready(true);
        let event_idx = self.header.flags & flags::EVENT_IDX != 0;
        q.set_event_idx(event_idx);
        if !q.is_valid(&self.mem) {
            return false;
        }
        let mut features = feature_bit(VIRTIO_F_VERSION_1);
        if event_idx {
            features |= feature_bit(VIRTIO_RING_F_EVENT_IDX);
        }
        self.block
            .lock()
            .expect("lock")
            .activate(self.mem.clone(), vec![q], self.irq.clone(), features)
            .expect("activation of a valid queue");
        true
    }

    fn write_desc(&self, at: u64, r: &mut Reader) -> Option<()> {
        let (addr, len, flags, next) = (r.u64()?, r.u32()?, r.u16()?, r.u16()?);
        let desc = Descriptor::new(addr, len, flags, next);
        let _ = self.mem.write_obj(desc, GuestAddress(at));
        Some(())
    }

    fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        let _ = self.mem.write_obj(idx, GuestAddress(self.avail + 2));
    }

    fn step(&mut self, r: &mut Reader) -> Option<()> {
        match Op::decode(r.u8()?) {
            Op::WriteMem => {
                let addr = u64::from(r.u32()?);
                let len = usize::from(r.u16()? % 4097);
                let bytes = r.take(len).unwrap_or_else(|| r.rest());
                let _ = self.mem.write_slice(bytes, GuestAddress(addr));
            }
            Op::Desc => {
                let index = r.u16()? % self.size;
                self.write_desc(self.desc + 16 * u64::from(index), r)?;
            }
            Op::DescAt => {
                let table = u64::from(r.u32()?);
                let index = u64::from(r.u16()?);
                self.write_desc(table + 16 * index, r)?;
            }
            Op::Publish => {
                let head = r.u16()?;
                let slot = u64::from(self.avail_idx % self.size);
                let _ = self
                    .mem
                    .write_obj(head, GuestAddress(self.avail + 4 + 2 * slot));
                self.set_avail_idx(self.avail_idx.wrapping_add(1));
            }
            Op::SetAvailIdx => {
                let idx = r.u16()?;
                self.set_avail_idx(idx);
            }
            Op::UsedEvent => {
                let value = r.u16()?;
                let at = self.avail + 4 + 2 * u64::from(self.size);
                let _ = self.mem.write_obj(value, GuestAddress(at));
            }
            Op::Kick if self.kicks < MAX_KICKS => self.kick(),
            Op::Kick => {}
            Op::Reset => {
                self.block.lock().expect("lock").reset();
                self.set_avail_idx(0);
                let _ = self.mem.write_obj(0u16, GuestAddress(self.used + 2));
                assert!(self.activate(), "the same queue activates again");
            }
        }
        Some(())
    }

    fn state(&self) -> (QueueState, BlockCounters) {
        let block = self.block.lock().expect("lock");
        let queue = *block.queue_states().first().expect("the device is active");
        (queue, block.counters())
    }

    /// The chains a notification should complete, popped from a shadow copy
    /// of the device's queue, and whether they are stable (see module docs).
    fn expect(&mut self, queue: QueueState) -> Expectation {
        let size = u64::from(self.size);
        let avail_idx: u16 = self
            .mem
            .read_obj(GuestAddress(self.avail + 2))
            .expect("the available ring is in memory");
        let pending = avail_idx.wrapping_sub(queue.next_avail);
        let mut chains = Vec::new();
        let mut writable = Vec::new();
        if pending <= self.size {
            let mut shadow = Queue::try_from(queue).expect("the device's queue state is valid");
            for _ in 0..pending {
                let Some(chain) = shadow.pop_descriptor_chain(&self.mem) else {
                    break;
                };
                let head = chain.head_index();
                let mut bytes = 0u64;
                for desc in chain.filter(|d| d.is_write_only() && d.len() > 0) {
                    bytes += u64::from(desc.len());
                    writable.push(range(desc.addr().0, u64::from(desc.len())));
                }
                chains.push((head, bytes));
            }
        }
        let used_ring = range(self.used, 6 + 8 * size);
        let mut tables = vec![range(self.desc, 16 * size), range(self.avail, 6 + 2 * size)];
        for i in 0..size {
            if let Ok(d) = self
                .mem
                .read_obj::<Descriptor>(GuestAddress(self.desc + 16 * i))
            {
                if d.flags() & VRING_DESC_F_INDIRECT as u16 != 0 {
                    tables.push(range(d.addr().0, u64::from(d.len())));
                }
            }
        }
        let strict = !tables
            .iter()
            .any(|&t| overlaps(t, used_ring) || writable.iter().any(|&w| overlaps(w, t)))
            && !writable.iter().any(|&w| overlaps(w, used_ring));
        let snapshot = strict.then(|| self.snapshot());
        Expectation {
            chains,
            writable,
            strict,
            snapshot,
        }
    }

    fn snapshot(&mut self) -> Vec<Vec<u8>> {
        let mut buffers = SPARE_SNAPSHOT.with(|spare| spare.take());
        let regions = host_regions(&self.mem);
        buffers.resize_with(regions.len(), Vec::new);
        for (buffer, (_, bytes)) in buffers.iter_mut().zip(regions) {
            buffer.clear();
            buffer.extend_from_slice(bytes);
        }
        buffers
    }

    /// Notifies the queue (as the guest's QueueNotify through an ioeventfd
    /// does), runs the event loop once and checks what the device did.
    fn kick(&mut self) {
        self.kicks += 1;
        let (q0, c0) = self.state();
        let expectation = self.expect(q0);
        self.block.lock().expect("lock").queue_events()[0]
            .write(1)
            .expect("notify");
        self.manager.run_with_timeout(0).expect("event loop");
        let (q1, c1) = self.state();

        let took = q1.next_avail.wrapping_sub(q0.next_avail);
        let used = q1.next_used.wrapping_sub(q0.next_used);
        let requests = c1.requests - c0.requests;
        assert_eq!(
            requests % 0x1_0000,
            u64::from(took),
            "one request per chain taken"
        );
        assert!(
            u64::from(used) <= requests,
            "{used} used for {requests} taken"
        );
        let outcomes = [
            c1.reads - c0.reads,
            c1.writes - c0.writes,
            c1.flushes - c0.flushes,
            c1.get_ids - c0.get_ids,
            c1.unsupported - c0.unsupported,
            c1.invalid_chains - c0.invalid_chains,
            c1.io_errors - c0.io_errors,
        ]
        .iter()
        .sum::<u64>();
        // Each request has one outcome; a broken available index counts one
        // invalid chain per drain on top.
        assert!(
            outcomes == requests || outcomes == requests + 1,
            "{requests} requests but {outcomes} outcomes: {c0:?} -> {c1:?}"
        );
        self.check_disk();
        if expectation.strict {
            self.check_strict(q0, q1, &expectation);
        }
        if let Some(snapshot) = expectation.snapshot {
            SPARE_SNAPSHOT.with(|spare| spare.replace(snapshot));
        }
    }

    fn check_disk(&self) {
        let contents = self.disk.contents();
        assert_eq!(contents.len() as u64, self.disk_len, "backing file length");
        let visible = self.disk_len / 512 * 512;
        let untouched = if self.read_only { 0 } else { visible } as usize;
        let expected = disk_pattern(self.disk_len);
        if contents[untouched..] != expected[untouched..] {
            let offset = (untouched..contents.len())
                .find(|&i| contents[i] != expected[i])
                .unwrap_or_default();
            panic!(
                "byte {offset} of the backing file changed (read-only: {}, {visible} visible bytes)",
                self.read_only
            );
        }
    }

    fn check_strict(&self, q0: QueueState, q1: QueueState, e: &Expectation) {
        let took = q1.next_avail.wrapping_sub(q0.next_avail);
        assert_eq!(usize::from(took), e.chains.len(), "chains taken");
        let completed: Vec<(u16, u64)> = e
            .chains
            .iter()
            .copied()
            .filter(|&(head, _)| head < self.size)
            .collect();
        let used = q1.next_used.wrapping_sub(q0.next_used);
        assert_eq!(usize::from(used), completed.len(), "chains returned");
        for (k, &(head, writable)) in completed.iter().enumerate() {
            let idx = q0.next_used.wrapping_add(k as u16);
            let at = self.used + 4 + 8 * u64::from(idx % self.size);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used elem");
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used elem");
            assert_eq!(id, u32::from(head), "used element {idx}");
            assert!(
                u64::from(len) <= writable,
                "used length {len} for chain {head} with {writable} writable bytes"
            );
        }
        if used > 0 {
            let idx: u16 = self
                .mem
                .read_obj(GuestAddress(self.used + 2))
                .expect("used idx");
            assert_eq!(idx, q1.next_used, "the used index in memory");
        }

        let used_ring = range(self.used, 6 + 8 * u64::from(self.size));
        let before = e.snapshot.as_ref().expect("strict snapshot");
        for ((base, now), old) in host_regions(&self.mem).into_iter().zip(before) {
            for_each_difference(old, now, &mut |offset| {
                let addr = base + offset as u64;
                let byte = (addr, addr + 1);
                assert!(
                    overlaps(byte, used_ring) || e.writable.iter().any(|&w| overlaps(byte, w)),
                    "the device wrote guest address {addr:#x}, outside the chains' \
                     writable buffers and the used ring"
                );
            });
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let Some(header) = Header::read(&mut r) else {
        return;
    };
    let Some(mut h) = Harness::new(header) else {
        return;
    };
    while h.step(&mut r).is_some() {}
    h.kick();
}

/// Seed builder: a queue at fixed addresses and helpers to add requests.
#[derive(Debug)]
pub struct SeedBuilder {
    w: Writer,
    size: u16,
    next_desc: u16,
    next_buf: u32,
}

/// Where seeds put the queue and their buffers.
pub const SEED_DESC: u32 = 0x1000;
/// Seeds' available ring.
pub const SEED_AVAIL: u32 = 0x2000;
/// Seeds' used ring.
pub const SEED_USED: u32 = 0x3000;
/// Seeds' first buffer.
pub const SEED_BUFS: u32 = 0x1_0000;

impl SeedBuilder {
    /// A seed with `flags`, a disk of `sectors` (+ `tail` bytes) and a queue of 2^`size_log2`.
    pub fn new(flags: u8, sectors: u8, tail: u8, size_log2: u8) -> SeedBuilder {
        let mut w = Writer::new();
        Header {
            flags,
            sectors,
            tail,
            size_log2,
            desc: SEED_DESC,
            avail: SEED_AVAIL,
            used: SEED_USED,
        }
        .write(&mut w);
        SeedBuilder {
            w,
            size: 1 << (size_log2 % 9),
            next_desc: 0,
            next_buf: SEED_BUFS,
        }
    }

    /// Allocates a guest buffer of `len` bytes.
    pub fn buffer(&mut self, len: u32) -> u32 {
        let at = self.next_buf;
        self.next_buf = (at + len.max(1)).next_multiple_of(16);
        at
    }

    /// Reserves `n` descriptor indices for hand-written descriptors; returns the first.
    pub fn reserve(&mut self, n: u16) -> u16 {
        let first = self.next_desc;
        self.next_desc = (first + n) % self.size;
        first
    }

    /// Writes `bytes` at `addr`.
    pub fn write_mem(&mut self, addr: u32, bytes: &[u8]) -> &mut Self {
        self.w
            .u8(Op::WriteMem as u8)
            .u32(addr)
            .u16(u16::try_from(bytes.len()).expect("short"))
            .bytes(bytes);
        self
    }

    /// A request header buffer (type, sector).
    pub fn header(&mut self, kind: u32, sector: u64) -> u32 {
        let at = self.buffer(16);
        let mut hdr = Vec::with_capacity(16);
        hdr.extend_from_slice(&kind.to_le_bytes());
        hdr.extend_from_slice(&0u32.to_le_bytes());
        hdr.extend_from_slice(&sector.to_le_bytes());
        self.write_mem(at, &hdr);
        at
    }

    /// Writes descriptors (addr, len, flags) at consecutive indices linked
    /// with NEXT, and publishes the head.
    pub fn chain(&mut self, descs: &[(u64, u32, u16)]) -> &mut Self {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let next = (index + 1) % self.size;
            let flags = if last { flags } else { flags | 1 };
            self.w
                .u8(Op::Desc as u8)
                .u16(index)
                .u64(addr)
                .u32(len)
                .u16(flags)
                .u16(if last { 0 } else { next });
        }
        self.next_desc = (head + descs.len() as u16) % self.size;
        self.publish(head)
    }

    /// Writes a descriptor at `table[index]` (an indirect table).
    pub fn desc_at(&mut self, table: u32, index: u16, d: (u64, u32, u16, u16)) -> &mut Self {
        self.w
            .u8(Op::DescAt as u8)
            .u32(table)
            .u16(index)
            .u64(d.0)
            .u32(d.1)
            .u16(d.2)
            .u16(d.3);
        self
    }

    /// Publishes `head`.
    pub fn publish(&mut self, head: u16) -> &mut Self {
        self.w.u8(Op::Publish as u8).u16(head);
        self
    }

    /// Sets `used_event`.
    pub fn used_event(&mut self, v: u16) -> &mut Self {
        self.w.u8(Op::UsedEvent as u8).u16(v);
        self
    }

    /// Sets the available index.
    pub fn avail_idx(&mut self, v: u16) -> &mut Self {
        self.w.u8(Op::SetAvailIdx as u8).u16(v);
        self
    }

    /// Notifies the device.
    pub fn kick(&mut self) -> &mut Self {
        self.w.u8(Op::Kick as u8);
        self
    }

    /// Resets the device.
    pub fn reset(&mut self) -> &mut Self {
        self.w.u8(Op::Reset as u8);
        self.next_desc = 0;
        self
    }

    /// The input.
    pub fn finish(self) -> Vec<u8> {
        self.w.finish()
    }
}
