//! The virtio-block device: configuration space, activation and reset, the
//! request loop with rate limiting, and its event-loop subscription.

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ember_ratelimit::{BucketConfig, BucketUpdate, RateLimiter};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState};
use vm_memory::VolatileMemory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::disk::Disk;
use super::request::{self, ParsedChain, Request, RequestType};
use super::{BlockCounters, BlockState, CacheType, SECTOR_SIZE};
use crate::virtio::common::SingleQueue as Active;
use crate::virtio::common::{
    admit, check_restored_features, ignore_config_write, read_config_space, signal_used,
    DeviceEvents, Pass,
};
use crate::virtio::iov::{GuestIoVecs, GuestRegions, IoVecBuf};
use crate::virtio::ring::Ring;
use crate::virtio::{feature_bit, GuestMemoryHandle, InterruptKind, VirtioDevice, VirtioInterrupt};
use crate::{Error, Result};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data buffers in one request (`seg_max`): a chain also needs a header
/// and a status descriptor.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Length of the GET_ID string.
pub const ID_BYTES: usize = 20;

const QUEUE_MAX_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Configuration space: capacity (le64), size_max (le32, not offered), seg_max (le32).
const CONFIG_LEN: usize = 16;
const CONFIG_SEG_MAX_OFFSET: usize = 12;

/// A request's completion status, with the virtio values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Status {
    Ok = 0,
    IoErr = 1,
    Unsupported = 2,
}

/// How a drive is set up, with the fields of Firecracker's `drives` object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockConfig {
    /// The drive's ID; its first 20 bytes answer GET_ID.
    pub drive_id: String,
    /// The backing file or host block device.
    pub path: PathBuf,
    /// Refuse writes and offer `VIRTIO_BLK_F_RO`.
    pub read_only: bool,
    /// What FLUSH does.
    pub cache_type: CacheType,
    /// Bandwidth limit, in bytes.
    pub bandwidth: Option<BucketConfig>,
    /// Operations limit.
    pub ops: Option<BucketConfig>,
}

/// A virtio-block device.
///
/// Register it with the event loop (it is a [`MutEventSubscriber`]: it watches
/// its queue eventfd and its rate limiter's timer) and give it to an
/// [`crate::virtio::MmioTransport`]; share it as `Arc<Mutex<Block<M>>>`.
///
/// # Example
///
/// A drive limited to one operation a minute, started without a transport
/// (as [`crate::virtio::MmioTransport`] starts it at DRIVER_OK) on plain
/// memory: of two GET_ID requests, the first is answered and the second
/// waits for the rate limiter (see the transport's example for the
/// register side).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
///
/// use ember_devices::virtio::block::{Block, BlockConfig};
/// use ember_devices::virtio::test_utils::{
///     bucket, guest_bytes, memory, notify_queue, run_until_used, GuestQueue, Manager, Mem, WRITE,
/// };
/// use ember_devices::virtio::{feature_bit, IrqTrigger, VirtioDevice};
/// use event_manager::SubscriberOps;
/// use virtio_bindings::virtio_blk::VIRTIO_BLK_T_GET_ID;
/// use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// use vm_memory::{Bytes, GuestAddress};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let disk = tempfile::NamedTempFile::new()?;
/// disk.as_file().set_len(512)?;
/// let config = BlockConfig {
///     drive_id: "rootfs".to_owned(),
///     path: disk.path().to_path_buf(),
///     ops: bucket(1, 0, 60_000),
///     ..BlockConfig::default()
/// };
/// let block = Arc::new(Mutex::new(Block::<Mem>::new(config)?));
/// let mut event_loop = Manager::new()?;
/// event_loop.add_subscriber(block.clone());
///
/// let mem = memory(&[(0, 0x10_0000)]);
/// let mut queue = GuestQueue::new(&mem, 0x1000, 16);
/// block.lock().unwrap().activate(
///     mem.clone(),
///     vec![queue.device_queue(16)],
///     Arc::new(IrqTrigger::new()?),
///     feature_bit(VIRTIO_F_VERSION_1),
/// )?;
/// for (first, base) in [(0, 0x8000), (3, 0x9000)] {
///     mem.write_obj(VIRTIO_BLK_T_GET_ID.to_le(), GuestAddress(base))?;
///     let (id, status) = (base + 0x100, base + 0x200);
///     queue.add_chain(first, &[(base, 16, 0), (id, 20, WRITE), (status, 1, WRITE)]);
/// }
/// notify_queue(&block, 0);
/// run_until_used(&mut event_loop, &queue, 1, Duration::from_secs(5));
/// event_loop.run_with_timeout(100)?;
///
/// assert_eq!(&guest_bytes(&mem, 0x8100, 6), b"rootfs");
/// assert_eq!(queue.used_idx(), 1, "the second request waits");
/// assert!(block.lock().unwrap().counters().throttled > 0);
/// # Ok(())
/// # }
/// ```
pub struct Block<M> {
    drive_id: String,
    id: [u8; ID_BYTES],
    disk: Disk,
    cache_type: CacheType,
    avail_features: u64,
    config_generation: u32,
    queue_evts: [EventFd; 1],
    rate_limiter: RateLimiter,
    counters: BlockCounters,
    /// The current request's data buffers (kept to reuse its allocation).
    iovs: IoVecBuf,
    active: Option<Active<M>>,
}

impl<M> fmt::Debug for Block<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block")
            .field("drive_id", &self.drive_id)
            .field("disk", &self.disk)
            .field("active", &self.active.is_some())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl<M: GuestMemoryHandle> Block<M> {
    /// Opens the backing file and builds an inactive device.
    pub fn new(config: BlockConfig) -> Result<Block<M>> {
        let disk = Disk::open(&config.path, config.read_only)?;
        Block::configured(config, disk)
    }

    /// Builds an inactive device on `file`, the backing file already opened
    /// from `config.path` (with [`open_disk`](super::open_disk)).
    pub fn with_file(config: BlockConfig, file: std::fs::File) -> Result<Block<M>> {
        let disk = Disk::from_file(file, &config.path, config.read_only)?;
        Block::configured(config, disk)
    }

    /// Rebuilds the inactive device `state` describes on `file`, its backing
    /// file reopened from `state.path` (with [`open_disk`](super::open_disk)
    /// and `state.read_only`): configuration, configuration generation,
    /// counters and rate-limiter levels as saved. Fails with
    /// [`super::Error::DiskSizeChanged`] if the file's capacity is not the saved
    /// one. [`crate::virtio::MmioTransport::restore`] then activates it.
    pub fn restore(state: &BlockState, file: std::fs::File) -> Result<Block<M>> {
        let disk = Disk::from_file(file, &state.path, state.read_only)?;
        if disk.sectors() != state.capacity_sectors {
            return Err(super::Error::DiskSizeChanged {
                path: state.path.clone(),
                saved: state.capacity_sectors,
                found: disk.sectors(),
            }
            .into());
        }
        let rate_limiter = RateLimiter::restore(&state.rate_limiter).map_err(Error::RateLimiter)?;
        let mut block =
            Block::on_disk(state.drive_id.clone(), state.cache_type, disk, rate_limiter)?;
        check_restored_features("block", state.avail_features, block.avail_features)?;
        block.config_generation = state.config_generation;
        block.counters = state.counters;
        Ok(block)
    }

    fn configured(config: BlockConfig, disk: Disk) -> Result<Block<M>> {
        let rate_limiter =
            RateLimiter::new(config.bandwidth, config.ops).map_err(Error::RateLimiter)?;
        Block::on_disk(config.drive_id, config.cache_type, disk, rate_limiter)
    }

    fn on_disk(
        drive_id: String,
        cache_type: CacheType,
        disk: Disk,
        rate_limiter: RateLimiter,
    ) -> Result<Block<M>> {
        let mut avail_features = feature_bit(VIRTIO_F_VERSION_1)
            | feature_bit(VIRTIO_RING_F_EVENT_IDX)
            | feature_bit(VIRTIO_BLK_F_FLUSH)
            | feature_bit(VIRTIO_BLK_F_SEG_MAX);
        if disk.read_only() {
            avail_features |= feature_bit(VIRTIO_BLK_F_RO);
        }
        let mut id = [0u8; ID_BYTES];
        let id_len = drive_id.len().min(ID_BYTES);
        id[..id_len].copy_from_slice(&drive_id.as_bytes()[..id_len]);
        Ok(Block {
            drive_id,
            id,
            disk,
            cache_type,
            avail_features,
            config_generation: 0,
            queue_evts: [EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?],
            rate_limiter,
            counters: BlockCounters::default(),
            iovs: IoVecBuf::default(),
            active: None,
        })
    }

    /// The counters.
    pub fn counters(&self) -> BlockCounters {
        self.counters
    }

    /// The device's state as plain data.
    pub fn state(&self) -> BlockState {
        BlockState {
            drive_id: self.drive_id.clone(),
            path: self.disk.path().to_path_buf(),
            read_only: self.disk.read_only(),
            cache_type: self.cache_type,
            capacity_sectors: self.disk.sectors(),
            avail_features: self.avail_features,
            acked_features: self.active.as_ref().map_or(0, |a| a.acked_features),
            config_generation: self.config_generation,
            rate_limiter: self.rate_limiter.state(),
            counters: self.counters,
        }
    }

    /// Changes the rate limits (see [`RateLimiter::update_buckets`]).
    pub fn update_rate_limiter(&mut self, bandwidth: BucketUpdate, ops: BucketUpdate) {
        self.rate_limiter.update_buckets(bandwidth, ops);
    }

    /// Replaces the backing file by `path`, opened with the drive's read-only
    /// setting. The capacity is recomputed and, if the driver is attached, it
    /// gets a configuration-change interrupt. On error the old file stays.
    pub fn swap_backing_file(&mut self, path: &Path) -> Result<()> {
        self.disk = Disk::open(path, self.disk.read_only())?;
        self.config_generation = self.config_generation.wrapping_add(1);
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.trigger(InterruptKind::Config) {
                log::warn!(
                    "block {}: cannot signal the config change: {e}",
                    self.drive_id
                );
                self.counters.event_errors += 1;
            }
        }
        Ok(())
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        config[..8].copy_from_slice(&self.disk.sectors().to_le_bytes());
        config[CONFIG_SEG_MAX_OFFSET..].copy_from_slice(&SEG_MAX.to_le_bytes());
        config
    }

    fn on_queue_event(&mut self) {
        // A throttled device waits for its timer, not for the guest.
        if self.take_queue_event(0) && !self.rate_limiter.is_blocked() {
            self.process_queue();
        }
    }

    fn on_rate_limiter_event(&mut self) {
        match self.rate_limiter.event_handler() {
            Ok(()) => self.process_queue(),
            Err(e) => log::debug!("block {}: {e}", self.drive_id),
        }
    }

    fn process_queue(&mut self) {
        // The active part is taken out while the queue is drained so the rest
        // of the device can be borrowed freely; it always goes back.
        if let Some(mut active) = self.active.take() {
            self.drain(&mut active);
            self.active = Some(active);
        }
    }

    /// Completes every available request, stopping early only when the rate
    /// limiter refuses one (which then stays at the head of the queue), and
    /// interrupts the driver once at the end if it wants to be.
    fn drain(&mut self, active: &mut Active<M>) {
        let Active {
            mem,
            queue,
            interrupt,
            ..
        } = active;
        let mem = &*mem;
        let mut ring = Ring::new(queue, mem);
        let guest = GuestRegions::new(mem);
        let mut iovs = std::mem::take(&mut self.iovs);
        let mut used_any = false;
        // Set after a pass that found nothing although the ring said otherwise.
        let mut stalled = false;
        loop {
            if let Err(e) = ring.disable_notification() {
                self.event_error(format_args!("cannot disable notifications: {e}"));
            }
            let Pass {
                progressed,
                throttled,
            } = self.complete_available(&mut ring, &guest, &mut iovs);
            used_any |= progressed;
            // While throttled, notifications stay off: the timer resumes the
            // device. If the limiter could not arm its timer, the guest's next
            // notification has to, so notifications go back on.
            if throttled && self.rate_limiter.is_blocked() {
                break;
            }
            match ring.enable_notification() {
                // Work arrived while notifications were off: go again. A
                // second pass in a row that finds nothing means the driver
                // published more entries than the queue holds: the ring is
                // broken and spinning on it would not help.
                Ok(true) if !throttled && (progressed || !stalled) => stalled = !progressed,
                Ok(true) if !throttled => {
                    log::warn!("block {}: invalid available ring index", self.drive_id);
                    self.counters.invalid_chains += 1;
                    break;
                }
                Ok(_) => break,
                Err(e) => {
                    self.event_error(format_args!("cannot enable notifications: {e}"));
                    break;
                }
            }
        }
        self.iovs = iovs;
        if used_any {
            signal_used(&mut ring, interrupt.as_ref(), &mut |what| {
                self.event_error(what);
            });
        }
    }

    /// One pass over the available requests: completes each and returns it
    /// to the driver, until the ring is empty or the rate limiter refuses
    /// one (which stays available).
    fn complete_available(
        &mut self,
        ring: &mut Ring<'_, '_, M>,
        guest: &GuestRegions<'_, M>,
        iovs: &mut IoVecBuf,
    ) -> Pass {
        let mut pass = Pass::default();
        while let Some(chain) = ring.pop() {
            let head = chain.head_index();
            let mut data = iovs.start();
            let parsed = request::parse(guest, chain, SEG_MAX as usize, &mut data);
            if !self.admit(&parsed) {
                ring.go_to_previous_position();
                pass.throttled = true;
                break;
            }
            let len = self.complete(parsed, &mut data);
            if let Err(e) = ring.add_used(head, len) {
                self.event_error(format_args!("cannot return descriptor {head}: {e}"));
            }
            pass.progressed = true;
        }
        pass
    }

    /// Charges the rate limiter for a request: one operation, and its data
    /// bytes for reads and writes. All or nothing.
    fn admit(&mut self, parsed: &ParsedChain<'_, M>) -> bool {
        let bytes = match &parsed.request {
            Ok(req) if matches!(req.kind, RequestType::In | RequestType::Out) => req.data_len,
            _ => 0,
        };
        if !admit(&mut self.rate_limiter, bytes) {
            self.counters.throttled += 1;
            return false;
        }
        true
    }

    /// Executes a parsed chain, whose data buffers are `data`, and writes its
    /// status; returns the used length (bytes written to device-writable
    /// buffers).
    fn complete(&mut self, parsed: ParsedChain<'_, M>, data: &mut GuestIoVecs<'_, '_>) -> u32 {
        self.counters.requests += 1;
        let (status, data_written) = match &parsed.request {
            Ok(req) => self.execute(req, data),
            Err(e) => {
                log::debug!("block {}: malformed request: {e:?}", self.drive_id);
                self.counters.invalid_chains += 1;
                (Status::IoErr, 0)
            }
        };
        let Some(byte) = parsed.status else {
            return 0;
        };
        match byte.get_ref::<u8>(0).map(|r| r.store(status as u8)) {
            Ok(()) => data_written.saturating_add(1),
            Err(e) => {
                self.event_error(format_args!("cannot write a request status: {e}"));
                0
            }
        }
    }

    /// Performs a well-formed request; returns its status and the data bytes
    /// written to guest memory.
    fn execute(&mut self, req: &Request, data: &mut GuestIoVecs<'_, '_>) -> (Status, u32) {
        let result = match req.kind {
            RequestType::In => self.read(req, data),
            RequestType::Out => self.write(req, data),
            RequestType::Flush => self.flush(),
            RequestType::GetId => Ok(self.get_id(data)),
            RequestType::Unsupported(kind) => {
                log::debug!("block {}: unsupported request type {kind}", self.drive_id);
                self.counters.unsupported += 1;
                return (Status::Unsupported, 0);
            }
        };
        result.unwrap_or_else(|e| {
            log::debug!(
                "block {}: {:?} request failed: {e}",
                self.drive_id,
                req.kind
            );
            self.counters.io_errors += 1;
            (Status::IoErr, 0)
        })
    }

    /// The byte offset of a read or write, if it is whole sectors within the disk.
    fn byte_range(&self, req: &Request) -> io::Result<u64> {
        let invalid = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes at sector {} do not fit in {} sectors",
                    req.data_len,
                    req.sector,
                    self.disk.sectors()
                ),
            )
        };
        if !req.data_len.is_multiple_of(SECTOR_SIZE) {
            return Err(invalid());
        }
        let offset = req.sector.checked_mul(SECTOR_SIZE).ok_or_else(invalid)?;
        let end = offset.checked_add(req.data_len).ok_or_else(invalid)?;
        if end > self.disk.sectors() * SECTOR_SIZE {
            return Err(invalid());
        }
        Ok(offset)
    }

    fn read(&mut self, req: &Request, data: &mut GuestIoVecs<'_, '_>) -> io::Result<(Status, u32)> {
        let offset = self.byte_range(req)?;
        self.disk.read_to(data, offset)?;
        self.counters.reads += 1;
        self.counters.read_bytes += req.data_len;
        Ok((Status::Ok, u32::try_from(req.data_len).unwrap_or(u32::MAX)))
    }

    fn write(
        &mut self,
        req: &Request,
        data: &mut GuestIoVecs<'_, '_>,
    ) -> io::Result<(Status, u32)> {
        if self.disk.read_only() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "write to a read-only drive",
            ));
        }
        let offset = self.byte_range(req)?;
        self.disk.write_from(data, offset)?;
        self.counters.writes += 1;
        self.counters.write_bytes += req.data_len;
        Ok((Status::Ok, 0))
    }

    fn flush(&mut self) -> io::Result<(Status, u32)> {
        if self.cache_type == CacheType::Writeback && !self.disk.read_only() {
            self.disk.sync()?;
            self.counters.syncs += 1;
        }
        self.counters.flushes += 1;
        Ok((Status::Ok, 0))
    }

    /// Writes the ID string, zero-padded, into the data buffers, as far as
    /// they go.
    fn get_id(&mut self, data: &GuestIoVecs<'_, '_>) -> (Status, u32) {
        let written = data.copy_from(0, &self.id);
        self.counters.get_ids += 1;
        (Status::Ok, u32::try_from(written).unwrap_or(0))
    }
}

impl<M: GuestMemoryHandle> VirtioDevice<M> for Block<M> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_MAX_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config_space(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        ignore_config_write(format_args!("block {}", self.drive_id), offset, data);
    }

    fn config_generation(&self) -> u32 {
        self.config_generation
    }

    fn activate(
        &mut self,
        mem: M,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
        acked_features: u64,
    ) -> Result<()> {
        Active::activate(&mut self.active, mem, queues, interrupt, acked_features)?;
        // Requests made available before DRIVER_OK get picked up by the event loop.
        self.kick_queues(&[0]);
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_states(&self) -> Vec<QueueState> {
        Active::queue_states(&self.active)
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

impl<M: GuestMemoryHandle> DeviceEvents<M> for Block<M> {
    fn event_error(&mut self, what: fmt::Arguments<'_>) {
        log::warn!("block {}: {what}", self.drive_id);
        self.counters.event_errors += 1;
    }

    fn count_ignored(&mut self) {
        self.counters.ignored_notifications += 1;
    }
}

impl<M: GuestMemoryHandle> MutEventSubscriber for Block<M> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_evts[0], EventSet::IN)) {
            log::error!(
                "block {}: cannot watch the queue event: {e:?}",
                self.drive_id
            );
        }
        if let Err(e) = ops.add(Events::new(&self.rate_limiter, EventSet::IN)) {
            log::error!(
                "block {}: cannot watch the rate limiter: {e:?}",
                self.drive_id
            );
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.queue_evts[0].as_raw_fd() {
            self.on_queue_event();
        } else if fd == self.rate_limiter.as_raw_fd() {
            self.on_rate_limiter_event();
        } else {
            log::debug!("block {}: event on unknown fd {fd}", self.drive_id);
        }
    }
}

#[cfg(test)]
mod status_tests {
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};

    use super::*;

    #[test]
    fn status_values_match_the_spec() {
        assert_eq!(Status::Ok as u32, VIRTIO_BLK_S_OK);
        assert_eq!(Status::IoErr as u32, VIRTIO_BLK_S_IOERR);
        assert_eq!(Status::Unsupported as u32, VIRTIO_BLK_S_UNSUPP);
    }
}
