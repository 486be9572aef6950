//! The virtio-rng device: activation and reset, the request loop with rate
//! limiting, and its event-loop subscription.

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use ember_ratelimit::{BucketConfig, BucketUpdate, RateLimiter};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::chain::{self, ChainError};
use super::{fill_random, RngCounters, RngState, MAX_REQUEST_BYTES};
use crate::virtio::common::SingleQueue as Active;
use crate::virtio::common::{
    admit, check_restored_features, ignore_config_write, read_config_space, signal_used,
    DeviceEvents,
};
use crate::virtio::iov::{GuestIoVecs, GuestRegions, IoVecBuf};
use crate::virtio::ring::Ring;
use crate::virtio::{feature_bit, GuestMemoryHandle, VirtioDevice, VirtioInterrupt};
use crate::{Error, Result};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;

const QUEUE_MAX_SIZES: [u16; 1] = [QUEUE_SIZE];

/// How the entropy device is set up: Firecracker's `entropy` object (its
/// `rate_limiter`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RngConfig {
    /// Bandwidth limit, in bytes.
    pub bandwidth: Option<BucketConfig>,
    /// Operations (requests) limit.
    pub ops: Option<BucketConfig>,
}

/// What one pass over the available ring did.
#[derive(Clone, Copy, Debug, Default)]
struct Pass {
    used_any: bool,
    throttled: bool,
}

/// A virtio-rng device.
///
/// Register it with the event loop (it is a [`MutEventSubscriber`]: it watches
/// its queue eventfd and its rate limiter's timer) and give it to an
/// [`crate::virtio::MmioTransport`]; share it as `Arc<Mutex<Rng<M>>>`.
pub struct Rng<M> {
    avail_features: u64,
    queue_evts: [EventFd; 1],
    rate_limiter: RateLimiter,
    counters: RngCounters,
    /// The current request's buffers (kept to reuse its allocation).
    iovs: IoVecBuf,
    /// Random bytes on their way to the guest (kept to reuse it).
    random: Vec<u8>,
    active: Option<Active<M>>,
}

impl<M> fmt::Debug for Rng<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rng")
            .field("active", &self.active.is_some())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl<M: GuestMemoryHandle> Rng<M> {
    /// Builds an inactive device.
    pub fn new(config: RngConfig) -> Result<Rng<M>> {
        let rate_limiter =
            RateLimiter::new(config.bandwidth, config.ops).map_err(Error::RateLimiter)?;
        Rng::with_limiter(rate_limiter, RngCounters::default())
    }

    /// Rebuilds the inactive device `state` describes: counters and
    /// rate-limiter levels as saved (the device has no other configuration).
    /// [`crate::virtio::MmioTransport::restore`] then activates it.
    pub fn restore(state: &RngState) -> Result<Rng<M>> {
        let rate_limiter = RateLimiter::restore(&state.rate_limiter).map_err(Error::RateLimiter)?;
        let rng = Rng::with_limiter(rate_limiter, state.counters)?;
        check_restored_features("rng", state.avail_features, rng.avail_features)?;
        Ok(rng)
    }

    fn with_limiter(rate_limiter: RateLimiter, counters: RngCounters) -> Result<Rng<M>> {
        Ok(Rng {
            avail_features: feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_RING_F_EVENT_IDX),
            queue_evts: [EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?],
            rate_limiter,
            counters,
            iovs: IoVecBuf::default(),
            random: Vec::new(),
            active: None,
        })
    }

    /// The counters.
    pub fn counters(&self) -> RngCounters {
        self.counters
    }

    /// The device's state as plain data.
    pub fn state(&self) -> RngState {
        RngState {
            avail_features: self.avail_features,
            acked_features: self.active.as_ref().map_or(0, |a| a.acked_features),
            rate_limiter: self.rate_limiter.state(),
            counters: self.counters,
        }
    }

    /// Changes the rate limits (see [`RateLimiter::update_buckets`]).
    pub fn update_rate_limiter(&mut self, bandwidth: BucketUpdate, ops: BucketUpdate) {
        self.rate_limiter.update_buckets(bandwidth, ops);
    }

    fn on_queue_event(&mut self) {
        // A throttled device waits for its timer, not for the guest.
        if self.take_queue_event(0) && !self.rate_limiter.is_blocked() {
            self.process_queue();
        }
    }

    fn on_rate_limiter_event(&mut self) {
        self.counters.rate_limiter_events += 1;
        match self.rate_limiter.event_handler() {
            Ok(()) => self.process_queue(),
            Err(e) => log::debug!("rng: {e}"),
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

    /// Fills every available chain, stopping early only when the rate
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
        let mut used_any = false;
        // Set after a pass that found nothing although the ring said otherwise.
        let mut stalled = false;
        loop {
            if let Err(e) = ring.disable_notification() {
                self.event_error(format_args!("cannot disable notifications: {e}"));
            }
            let pass = self.pass(&mut ring, mem);
            used_any |= pass.used_any;
            // While throttled, notifications stay off: the timer resumes the
            // device. If the limiter could not arm its timer, the guest's next
            // notification has to, so notifications go back on.
            if pass.throttled && self.rate_limiter.is_blocked() {
                break;
            }
            match ring.enable_notification() {
                // Work arrived while notifications were off: go again. A
                // second pass in a row that finds nothing means the driver
                // published more entries than the queue holds.
                Ok(true) if !pass.throttled && (pass.used_any || !stalled) => {
                    stalled = !pass.used_any;
                }
                Ok(true) if !pass.throttled => {
                    log::warn!("rng: invalid available ring index");
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
        if used_any {
            signal_used(&mut ring, interrupt.as_ref(), &mut |what| {
                self.event_error(what);
            });
        }
    }

    /// Completes the chains available now, until the limiter refuses one.
    fn pass<'m>(&mut self, ring: &mut Ring<'_, 'm, M>, mem: &'m M) -> Pass {
        let mut pass = Pass::default();
        let guest = GuestRegions::new(mem);
        let mut iovs = std::mem::take(&mut self.iovs);
        while let Some(chain) = ring.pop() {
            let head = chain.head_index();
            let mut data = iovs.start();
            let parsed = chain::parse(&guest, chain, &mut data);
            let Some(len) = self.admit(&parsed) else {
                ring.go_to_previous_position();
                pass.throttled = true;
                break;
            };
            let used = self.complete(parsed.map(|_| len), &mut data);
            if let Err(e) = ring.add_used(head, used) {
                self.event_error(format_args!("cannot return descriptor {head}: {e}"));
            }
            pass.used_any = true;
        }
        self.iovs = iovs;
        pass
    }

    /// Charges the rate limiter for a chain: one operation and the bytes it
    /// will get (nothing for a malformed chain). Returns those bytes, or
    /// `None` if the limiter refuses.
    fn admit(&mut self, parsed: &std::result::Result<u64, ChainError>) -> Option<usize> {
        let Ok(total) = parsed else {
            return Some(0);
        };
        let len = usize::try_from(*total).map_or(MAX_REQUEST_BYTES, |t| t.min(MAX_REQUEST_BYTES));
        if !admit(&mut self.rate_limiter, len as u64) {
            self.counters.throttled += 1;
            return None;
        }
        Some(len)
    }

    /// Fills `len` bytes of a well-formed chain's buffers `data`; returns
    /// the used length.
    fn complete(
        &mut self,
        parsed: std::result::Result<usize, ChainError>,
        data: &mut GuestIoVecs<'_, '_>,
    ) -> u32 {
        self.counters.requests += 1;
        let len = match parsed {
            Ok(len) => len,
            Err(e) => {
                log::debug!("rng: malformed descriptor chain: {e:?}");
                self.counters.invalid_chains += 1;
                return 0;
            }
        };
        self.random.resize(len, 0);
        if let Err(e) = fill_random(&mut self.random) {
            log::warn!("rng: host getrandom failed: {e}");
            self.counters.host_rng_fails += 1;
            return 0;
        }
        let written = data.copy_from(0, &self.random);
        self.counters.bytes += written as u64;
        u32::try_from(written).unwrap_or(0)
    }
}

impl<M: GuestMemoryHandle> VirtioDevice<M> for Rng<M> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
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
        // No configuration space: every byte reads as 0.
        read_config_space(&[], offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        ignore_config_write(format_args!("rng"), offset, data);
    }

    fn config_generation(&self) -> u32 {
        0
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

impl<M: GuestMemoryHandle> DeviceEvents<M> for Rng<M> {
    fn event_error(&mut self, what: fmt::Arguments<'_>) {
        log::warn!("rng: {what}");
        self.counters.event_errors += 1;
    }

    fn count_ignored(&mut self) {
        self.counters.ignored_notifications += 1;
    }
}

impl<M: GuestMemoryHandle> MutEventSubscriber for Rng<M> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_evts[0], EventSet::IN)) {
            log::error!("rng: cannot watch the queue event: {e:?}");
        }
        if let Err(e) = ops.add(Events::new(&self.rate_limiter, EventSet::IN)) {
            log::error!("rng: cannot watch the rate limiter: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.queue_evts[0].as_raw_fd() {
            self.on_queue_event();
        } else if fd == self.rate_limiter.as_raw_fd() {
            self.on_rate_limiter_event();
        } else {
            log::debug!("rng: event on unknown fd {fd}");
        }
    }
}
