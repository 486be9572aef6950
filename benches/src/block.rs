//! The virtio-block device model against plain `pread`/`pwrite` on the same
//! file.
//!
//! The device is wired as a VMM wires it: a [`Block`] on an event loop behind
//! an [`MmioTransport`], which the driver (this benchmark, playing the guest
//! with the `test_utils` helpers of ember-devices) initialises up to
//! DRIVER_OK with `VIRTIO_RING_F_EVENT_IDX`. Each batch puts
//! [`IN_FLIGHT`] requests (header, one data buffer, status: three
//! descriptors each) in the queue, kicks the queue's eventfd (what KVM's
//! ioeventfd does on the guest's QueueNotify write) and runs the event loop
//! until the used index has moved past all of them; the device raises one
//! interrupt per batch (the driver's `used_event` asks for it).
//!
//! Only the device's side is timed: from the kick to the last completion.
//! Laying out the requests is the guest's work and is done before the clock
//! starts. The baseline does the same requests (same offsets, same sizes,
//! same order) with `pread`/`pwrite` on the same file. Both sides run in
//! turns (each first every other round), several rounds each, and the
//! median round is reported; the
//! file is read once before so both see a warm page cache, which makes reads
//! memory-speed: the figures are the device model's CPU cost, not the disk's.
//!
//! Every completed request is checked (status OK; reads return the block
//! number stamped at the start of each 4 KiB block), outside the timing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_devices::virtio::block::{Block, BlockConfig, SECTOR_SIZE};
use ember_devices::virtio::test_utils::{memory, GuestQueue, Mem, WRITE};
use ember_devices::virtio::{feature_bit, MmioTransport};
use event_manager::SubscriberOps;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::buffers::PageBuffers;
use crate::driver::{driver_init, guest_error, kick_and_wait, manager, run_once, Manager};
use crate::report::Figure;
use crate::stats::{in_turn, median, per_second, Better};
use crate::{Context, Error, Result};

/// The group name in reports.
pub const GROUP: &str = "block";
/// Requests per kick, as a driver with a deep queue keeps in flight.
pub const IN_FLIGHT: usize = 64;
/// The stamp unit: each 4 KiB block of the file starts with its number.
const STAMP_BLOCK: usize = 4096;
/// Guest memory: queue, headers and statuses low, data from 1 MiB.
const MEM_SIZE: usize = 16 << 20;
const QUEUE_BASE: u64 = 0x1000;
const QUEUE_SIZE: u16 = 256;
const HEADERS: u64 = 0x1_0000;
const STATUSES: u64 = 0x2_0000;
const DATA: u64 = 0x10_0000;

/// An access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// 4 KiB reads at random 4 KiB-aligned offsets.
    RandomRead4k,
    /// 4 KiB writes at random 4 KiB-aligned offsets.
    RandomWrite4k,
    /// 128 KiB reads, one after the other, wrapping at the end of the file.
    SequentialRead128k,
}

impl Pattern {
    /// Every pattern, in report order.
    pub const ALL: [Pattern; 3] = [
        Pattern::RandomRead4k,
        Pattern::RandomWrite4k,
        Pattern::SequentialRead128k,
    ];

    /// The figure's name.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::RandomRead4k => "4k random read",
            Pattern::RandomWrite4k => "4k random write",
            Pattern::SequentialRead128k => "128k sequential read",
        }
    }

    /// Bytes per request.
    pub fn block_size(self) -> u32 {
        match self {
            Pattern::RandomRead4k | Pattern::RandomWrite4k => 4096,
            Pattern::SequentialRead128k => 128 << 10,
        }
    }

    /// Whether requests write.
    pub fn writes(self) -> bool {
        self == Pattern::RandomWrite4k
    }

    /// The byte offsets of `count` requests on a file of `file_size` bytes;
    /// random patterns draw from `seed`.
    pub fn offsets(self, file_size: u64, count: usize, seed: u64) -> Vec<u64> {
        let size = u64::from(self.block_size());
        let slots = (file_size / size).max(1);
        let mut state = seed | 1;
        (0..count as u64)
            .map(|i| match self {
                Pattern::SequentialRead128k => (i % slots) * size,
                Pattern::RandomRead4k | Pattern::RandomWrite4k => {
                    (xorshift(&mut state) % slots) * size
                }
            })
            .collect()
    }
}

/// The next number of a xorshift64* generator (not zero if `state` is not).
pub fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Stamps `buf`, which holds the file's bytes from `offset`: each 4 KiB
/// block that starts in it begins with its block number.
pub fn stamp(buf: &mut [u8], offset: u64) {
    for (i, chunk) in buf.chunks_mut(STAMP_BLOCK).enumerate() {
        let number = offset / STAMP_BLOCK as u64 + i as u64;
        if let Some(head) = chunk.get_mut(..8) {
            head.copy_from_slice(&number.to_le_bytes());
        }
    }
}

/// Whether `head` (the first bytes read from `offset`) carries the stamp.
pub fn stamped(head: &[u8], offset: u64) -> bool {
    head.get(..8) == Some(&(offset / STAMP_BLOCK as u64).to_le_bytes()[..])
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The disk image (created, or recreated at another size, as needed).
    pub path: PathBuf,
    /// Its size.
    pub file_size: u64,
    /// Rounds per side; the median round is reported.
    pub rounds: usize,
    /// Requests per round for the 4 KiB patterns.
    pub small_ops: usize,
    /// Requests per round for the 128 KiB pattern.
    pub large_ops: usize,
}

/// The rates of one pattern: requests per second, device and baseline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    /// Through the device model.
    pub device: f64,
    /// With plain `pread`/`pwrite`.
    pub raw: f64,
}

/// Runs every pattern and returns the figures.
pub fn run(options: &Options) -> Result<Vec<Figure>> {
    let file = prepare_file(&options.path, options.file_size)?;
    let on_tmpfs = crate::procfs::is_tmpfs(&options.path);
    let mut rig = Rig::new(&options.path)?;
    let mut buffers = raw_buffers();
    let mut figures = Vec::new();
    for pattern in Pattern::ALL {
        let ops = match pattern {
            Pattern::SequentialRead128k => options.large_ops,
            _ => options.small_ops,
        };
        let rates = measure(&file, &mut rig, &mut buffers, pattern, options, ops)?;
        figures.push(figure(pattern, rates, on_tmpfs));
    }
    Ok(figures)
}

/// Both sides of one pattern, alternating, `options.rounds` rounds each.
pub fn measure(
    file: &File,
    rig: &mut Rig,
    buffers: &mut PageBuffers,
    pattern: Pattern,
    options: &Options,
    ops: usize,
) -> Result<Rates> {
    let mut device = Vec::new();
    let mut raw = Vec::new();
    for round in 0..options.rounds {
        let seed = 0x9e37_79b9_7f4a_7c15 ^ (round as u64) ^ ((pattern as u64) << 32);
        let offsets = pattern.offsets(options.file_size, ops, seed);
        let (raw_time, device_time) = in_turn(
            round,
            rig,
            |_| run_raw(file, buffers, pattern, &offsets),
            |rig| rig.run(pattern, &offsets),
        )?;
        raw.push(per_second(ops as f64, raw_time));
        device.push(per_second(ops as f64, device_time));
    }
    Ok(Rates {
        device: median(&device).unwrap_or(0.0),
        raw: median(&raw).unwrap_or(0.0),
    })
}

fn figure(pattern: Pattern, rates: Rates, on_tmpfs: bool) -> Figure {
    let extra_us = (1.0 / rates.device - 1.0 / rates.raw) * 1e6;
    let (value, baseline, unit) = if pattern == Pattern::SequentialRead128k {
        let mb = f64::from(pattern.block_size()) / 1e6;
        (rates.device * mb, rates.raw * mb, "MB/s")
    } else {
        (rates.device, rates.raw, "req/s")
    };
    let syscall = if pattern.writes() { "pwrite" } else { "pread" };
    Figure::new(GROUP, pattern.name(), value, unit, Better::Higher)
        .baseline(syscall, baseline)
        .note(&format!(
            "{extra_us:+.2} us/req; goal < +10%{}",
            if on_tmpfs {
                "; the file is on a tmpfs"
            } else {
                ""
            }
        ))
}

/// Creates (or reuses) a stamped image of `size` bytes, then reads it all
/// so the page cache holds it.
pub fn prepare_file(path: &Path, size: u64) -> Result<File> {
    let fresh = std::fs::metadata(path).map_or(true, |m| m.len() != size);
    if fresh {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ctx(format!("creating {}", dir.display()))?;
        }
        let mut file = File::create(path).ctx(format!("creating {}", path.display()))?;
        let mut chunk = vec![0u8; 1 << 20];
        let mut offset = 0;
        while offset < size {
            let len =
                usize::try_from(size - offset).map_or(chunk.len(), |left| left.min(chunk.len()));
            stamp(&mut chunk[..len], offset);
            file.write_all(&chunk[..len])
                .ctx(format!("writing {}", path.display()))?;
            offset += len as u64;
        }
        // Written back now, so no writeback runs during the measurements.
        file.sync_all().ctx(format!("syncing {}", path.display()))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .ctx(format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < size {
        let n = file
            .read_at(&mut buf, offset)
            .ctx(format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        offset += n as u64;
    }
    Ok(file)
}

/// Largest request.
const MAX_BLOCK: usize = 128 << 10;

/// The baseline's data buffers: [`IN_FLIGHT`] page-aligned buffers used in
/// turn, as the device's are in guest memory.
pub fn raw_buffers() -> PageBuffers {
    PageBuffers::new(IN_FLIGHT, MAX_BLOCK)
}

/// The baseline: the requests as plain positional reads or writes.
pub fn run_raw(
    file: &File,
    buffers: &mut PageBuffers,
    pattern: Pattern,
    offsets: &[u64],
) -> Result<Duration> {
    let size = pattern.block_size() as usize;
    let start = Instant::now();
    for (i, &offset) in offsets.iter().enumerate() {
        let buf = buffers.slot(i, size);
        if pattern.writes() {
            stamp(&mut buf[..8], offset);
            file.write_all_at(buf, offset).ctx("pwrite")?;
        } else {
            file.read_exact_at(buf, offset).ctx("pread")?;
            if !stamped(buf, offset) {
                return Err(Error::Unexpected(format!("pread at {offset}: wrong data")));
            }
        }
    }
    Ok(start.elapsed())
}

/// A block device on its event loop, and the driver's side of its queue.
pub struct Rig {
    mem: Mem,
    queue: GuestQueue,
    manager: Manager,
    /// The queue's notification eventfd, as KVM's ioeventfd holds it.
    kick: EventFd,
    /// Kept alive: it owns the interrupt the device raises.
    _transport: MmioTransport<Mem>,
    used: u16,
}

impl std::fmt::Debug for Rig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rig")
            .field("queue", &self.queue)
            .field("used", &self.used)
            .finish_non_exhaustive()
    }
}

impl Rig {
    /// A device on `path`, initialised by the driver and active.
    pub fn new(path: &Path) -> Result<Rig> {
        let config = BlockConfig {
            drive_id: "bench".to_owned(),
            path: path.to_path_buf(),
            ..BlockConfig::default()
        };
        let block = Arc::new(Mutex::new(
            Block::new(config).ctx("opening the block device")?,
        ));
        let mut manager = manager()?;
        manager.add_subscriber(block.clone());
        let mem = memory(&[(0, MEM_SIZE)]);
        let mut transport =
            MmioTransport::new(mem.clone(), block).ctx("creating the MMIO transport")?;
        let queue = GuestQueue::new(&mem, QUEUE_BASE, QUEUE_SIZE);
        let features = [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_SEG_MAX,
        ]
        .into_iter()
        .fold(0, |acc, bit| acc | feature_bit(bit));
        let kick = driver_init(&mut transport, features, &[&queue])?
            .pop()
            .ok_or_else(|| Error::Unexpected("no queue eventfd".to_owned()))?;
        let mut rig = Rig {
            mem,
            queue,
            manager,
            kick,
            _transport: transport,
            used: 0,
        };
        // The activation's own kick.
        run_once(&mut rig.manager, 100)?;
        Ok(rig)
    }

    /// Runs `offsets` through the device, [`IN_FLIGHT`] per kick; returns
    /// the time the device took.
    pub fn run(&mut self, pattern: Pattern, offsets: &[u64]) -> Result<Duration> {
        let mut total = Duration::ZERO;
        for batch in offsets.chunks(IN_FLIGHT) {
            total += self.batch(pattern, batch)?;
        }
        Ok(total)
    }

    fn slot(i: usize) -> (u64, u64, u64) {
        let i = i as u64;
        (HEADERS + 16 * i, STATUSES + i, DATA + i * MAX_BLOCK as u64)
    }

    fn batch(&mut self, pattern: Pattern, offsets: &[u64]) -> Result<Duration> {
        let guest = guest_error;
        let size = pattern.block_size();
        let (kind, data_flags) = if pattern.writes() {
            (VIRTIO_BLK_T_OUT, 0)
        } else {
            (VIRTIO_BLK_T_IN, WRITE)
        };
        for (i, &offset) in offsets.iter().enumerate() {
            let (header, status, data) = Rig::slot(i);
            let mut head = [0u8; 16];
            head[..4].copy_from_slice(&kind.to_le_bytes());
            head[8..].copy_from_slice(&(offset / SECTOR_SIZE).to_le_bytes());
            self.mem
                .write_slice(&head, GuestAddress(header))
                .map_err(guest)?;
            self.mem
                .write_obj(0xffu8, GuestAddress(status))
                .map_err(guest)?;
            if pattern.writes() {
                let mut stamp_bytes = [0u8; 8];
                stamp(&mut stamp_bytes, offset);
                self.mem
                    .write_slice(&stamp_bytes, GuestAddress(data))
                    .map_err(guest)?;
            }
            let first = u16::try_from(3 * i).unwrap_or(0);
            self.queue.add_chain(
                first,
                &[
                    (header, 16, 0),
                    (data, size, data_flags),
                    (status, 1, WRITE),
                ],
            );
        }
        let count = u16::try_from(offsets.len()).unwrap_or(0);
        let target = self.used.wrapping_add(count);
        self.queue.set_used_event(target.wrapping_sub(1));

        let elapsed = kick_and_wait(&mut self.manager, &self.queue, &self.kick, target)?;
        self.used = target;

        for (i, &offset) in offsets.iter().enumerate() {
            let (_, status, data) = Rig::slot(i);
            let status: u8 = self.mem.read_obj(GuestAddress(status)).map_err(guest)?;
            let mut head = [0u8; 8];
            self.mem
                .read_slice(&mut head, GuestAddress(data))
                .map_err(guest)?;
            if status != 0 || (!pattern.writes() && !stamped(&head, offset)) {
                return Err(Error::Unexpected(format!(
                    "{} at {offset}: status {status}, data {head:?}",
                    pattern.name()
                )));
            }
        }
        Ok(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_stay_aligned_and_inside_the_file() {
        let size = 1 << 20;
        for pattern in Pattern::ALL {
            let offsets = pattern.offsets(size, 1000, 7);
            let block = u64::from(pattern.block_size());
            assert!(offsets.iter().all(|&o| o % block == 0 && o + block <= size));
            assert_eq!(offsets, pattern.offsets(size, 1000, 7), "deterministic");
        }
        let seq = Pattern::SequentialRead128k.offsets(size, 10, 0);
        assert_eq!(seq[..3], [0, 128 << 10, 256 << 10]);
        assert_eq!(seq[8], 0, "wraps at the end of the file");
        let random = Pattern::RandomRead4k.offsets(size, 256, 1);
        let distinct: std::collections::BTreeSet<_> = random.iter().collect();
        assert!(distinct.len() > 150, "spread over the file");
    }

    #[test]
    fn stamps_mark_each_4k_block() {
        let mut buf = vec![0u8; 3 * 4096];
        stamp(&mut buf, 8192);
        assert!(stamped(&buf, 8192));
        assert!(stamped(&buf[4096..], 12288));
        assert!(stamped(&buf[8192..], 16384));
        assert!(!stamped(&buf, 0));
        assert!(!stamped(&[1, 2], 0));
    }

    #[test]
    fn device_and_baseline_agree_on_a_small_file() {
        let dir = std::env::temp_dir().join(format!("ember-benches-block-{}", std::process::id()));
        let path = dir.join("disk.img");
        let options = Options {
            path: path.clone(),
            file_size: 4 << 20,
            rounds: 1,
            small_ops: 2 * IN_FLIGHT,
            large_ops: IN_FLIGHT + 3,
        };
        let figures = run(&options).unwrap();
        assert_eq!(figures.len(), 3);
        for f in &figures {
            assert!(f.value > 0.0 && f.baseline.unwrap() > 0.0, "{f:?}");
            assert_eq!(f.group, GROUP);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
