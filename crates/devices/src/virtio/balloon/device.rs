//! The virtio-balloon device: configuration space, activation and reset,
//! the inflate, deflate, statistics, hinting and reporting queues, the
//! polling timer, and its event-loop subscription.

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
use virtio_queue::{Queue, QueueState};
use vm_memory::{Bytes, GuestMemory, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::pages::{coalesce, discard, discard_range, read_pfns, Discarded, PAGE_SIZE};
use super::stats::{MAX_STATS, STAT_SIZE};
use super::{
    mib_to_pages, BalloonConfig, BalloonCounters, BalloonError, BalloonState, BalloonStats,
    HintingState, HintingStatus, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_FREE_PAGE_HINT,
    VIRTIO_BALLOON_F_FREE_PAGE_REPORTING, VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::virtio::common::{read_config_space, signal_used, ActivationQueues, DeviceEvents};
use crate::virtio::ring::{Chain, Ring};
use crate::virtio::timer::DeadlineTimer;
use crate::virtio::{feature_bit, GuestMemoryHandle, InterruptKind, VirtioDevice, VirtioInterrupt};
use crate::Result;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the inflate queue.
pub const INFLATE_QUEUE: usize = 0;
/// Index of the deflate queue.
pub const DEFLATE_QUEUE: usize = 1;
/// Index of the statistics queue (when statistics are on).
pub const STATS_QUEUE: usize = 2;

/// Offset of `actual` in the configuration space.
const ACTUAL_OFFSET: usize = 4;
/// Size of the configuration space (`num_pages`, `actual`,
/// `free_page_hint_cmd_id`).
const CONFIG_SIZE: usize = 12;

/// What the device holds between DRIVER_OK and reset.
struct Active<M> {
    mem: M,
    queues: Vec<Queue>,
    interrupt: Arc<dyn VirtioInterrupt>,
    acked_features: u64,
    /// The driver accepted `VIRTIO_BALLOON_F_STATS_VQ`: the statistics
    /// queue is in use and polled.
    stats: bool,
    /// The driver accepted `VIRTIO_BALLOON_F_FREE_PAGE_HINT`.
    hinting: bool,
    /// The driver accepted `VIRTIO_BALLOON_F_FREE_PAGE_REPORTING`.
    reporting: bool,
}

/// A virtio-balloon device.
///
/// Register it with the event loop (it watches its queue eventfds and its
/// polling timer) and give it to an [`crate::virtio::MmioTransport`]; share
/// it as `Arc<Mutex<Balloon<M>>>`. The host changes the target with
/// [`Balloon::update_size`].
pub struct Balloon<M> {
    config: BalloonConfig,
    avail_features: u64,
    queue_sizes: Vec<u16>,
    queue_evts: Vec<EventFd>,
    /// The free page hinting queue (after the statistics queue), if offered.
    hinting_queue: Option<usize>,
    /// The free page reporting queue (the last one), if offered.
    reporting_queue: Option<usize>,
    /// The hinting run (its command id is in the configuration space).
    hinting: HintingState,
    timer: DeadlineTimer,
    /// The polling period the timer is armed with (`None`: disarmed). Only
    /// the event loop (the VMM thread) arms or disarms it: activation and
    /// reset run on vCPU threads, whose seccomp filter has no timer calls.
    timer_period: Option<Duration>,
    stats: BalloonStats,
    /// The statistics buffer the driver gave and the device holds.
    stats_desc: Option<u16>,
    config_generation: u32,
    /// The PFNs of the buffer being processed (kept to reuse its allocation).
    pfns: Vec<u32>,
    counters: BalloonCounters,
    active: Option<Active<M>>,
}

impl<M> fmt::Debug for Balloon<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balloon")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .field("active", &self.active.is_some())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl<M: GuestMemoryHandle> Balloon<M> {
    /// An inactive device with target `config.amount_mib`; with a polling
    /// interval it has a statistics queue.
    pub fn new(config: BalloonConfig) -> std::result::Result<Balloon<M>, BalloonError> {
        let target_pages = mib_to_pages(config.amount_mib)?;
        let mut avail_features = feature_bit(VIRTIO_F_VERSION_1);
        if config.deflate_on_oom {
            avail_features |= feature_bit(VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
        }
        let mut queues = 2;
        if config.stats_polling_interval_s > 0 {
            avail_features |= feature_bit(VIRTIO_BALLOON_F_STATS_VQ);
            queues = 3;
        }
        let mut hinting_queue = None;
        if config.free_page_hinting {
            avail_features |= feature_bit(VIRTIO_BALLOON_F_FREE_PAGE_HINT);
            hinting_queue = Some(queues);
            queues += 1;
        }
        let mut reporting_queue = None;
        if config.free_page_reporting {
            avail_features |= feature_bit(VIRTIO_BALLOON_F_FREE_PAGE_REPORTING);
            reporting_queue = Some(queues);
            queues += 1;
        }
        let queue_evts = (0..queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(BalloonError::Setup)?;
        Ok(Balloon {
            config,
            avail_features,
            queue_sizes: vec![QUEUE_SIZE; queues],
            queue_evts,
            hinting_queue,
            reporting_queue,
            hinting: HintingState::default(),
            timer: DeadlineTimer::new().map_err(BalloonError::Setup)?,
            timer_period: None,
            stats: BalloonStats {
                target_pages,
                ..BalloonStats::default()
            },
            stats_desc: None,
            config_generation: 0,
            pfns: Vec::new(),
            counters: BalloonCounters::default(),
            active: None,
        })
    }

    /// Rebuilds the inactive device `state` describes: configuration (and
    /// so the features offered), target and actual sizes, the latest
    /// statistics, the statistics buffer the device held, configuration
    /// generation and counters as saved.
    /// [`crate::virtio::MmioTransport::restore`] then activates it; the
    /// polling timer starts again on the event loop.
    pub fn restore(state: &BalloonState) -> std::result::Result<Balloon<M>, BalloonError> {
        let mut balloon = Balloon::new(state.config)?;
        balloon.stats = state.stats;
        balloon.stats_desc = state.stats_desc;
        balloon.config_generation = state.config_generation;
        balloon.counters = state.counters;
        balloon.hinting = state.hinting;
        Ok(balloon)
    }

    /// The configuration, with the target and polling interval as they are now.
    pub fn config(&self) -> BalloonConfig {
        BalloonConfig {
            amount_mib: self.stats.target_mib(),
            ..self.config
        }
    }

    /// The period the polling timer is armed with.
    #[cfg(test)]
    pub(crate) fn timer_period(&self) -> Option<Duration> {
        self.timer_period
    }

    /// The counters.
    pub fn counters(&self) -> BalloonCounters {
        self.counters
    }

    /// The latest statistics, with the target and actual sizes; fails if
    /// the device has no statistics.
    pub fn latest_stats(&self) -> std::result::Result<BalloonStats, BalloonError> {
        if self.config.stats_polling_interval_s == 0 {
            return Err(BalloonError::StatisticsDisabled);
        }
        Ok(self.stats)
    }

    /// The device's state as plain data.
    pub fn state(&self) -> BalloonState {
        let active = self.active.as_ref();
        BalloonState {
            config: self.config(),
            avail_features: self.avail_features,
            acked_features: active.map_or(0, |a| a.acked_features),
            stats: self.stats,
            hinting: self.hinting,
            stats_desc: self.stats_desc,
            config_generation: self.config_generation,
            counters: self.counters,
        }
    }

    /// Sets the target to `amount_mib` and tells the driver. Only while
    /// active, and not beyond guest memory.
    pub fn update_size(&mut self, amount_mib: u32) -> std::result::Result<(), BalloonError> {
        let Some(active) = &self.active else {
            return Err(BalloonError::DeviceNotActive);
        };
        if u64::from(amount_mib) > memory_mib(&active.mem) {
            return Err(BalloonError::TooMuchMemoryRequested(amount_mib));
        }
        self.stats.target_pages = mib_to_pages(amount_mib)?;
        self.config_changed()
    }

    /// Tells the driver the configuration space changed.
    fn config_changed(&mut self) -> std::result::Result<(), BalloonError> {
        let Some(active) = &self.active else {
            return Err(BalloonError::DeviceNotActive);
        };
        self.config_generation = self.config_generation.wrapping_add(1);
        active
            .interrupt
            .trigger(InterruptKind::Config)
            .map_err(BalloonError::Interrupt)
    }

    /// Fails unless the device was built with free page hinting and is
    /// active.
    fn check_hinting(&self) -> std::result::Result<(), BalloonError> {
        if self.hinting_queue.is_none() {
            return Err(BalloonError::HintingNotEnabled);
        }
        if self.active.is_none() {
            return Err(BalloonError::DeviceNotActive);
        }
        Ok(())
    }

    /// Starts a free page hinting run with a new command id; with
    /// `acknowledge_on_stop` the run ends (`DONE`) as soon as the driver
    /// says it has finished.
    pub fn start_hinting(
        &mut self,
        acknowledge_on_stop: bool,
    ) -> std::result::Result<(), BalloonError> {
        self.check_hinting()?;
        self.hinting.start(acknowledge_on_stop);
        self.config_changed()
    }

    /// Ends the hinting run (`DONE`): the driver takes its hinted pages back.
    pub fn stop_hinting(&mut self) -> std::result::Result<(), BalloonError> {
        self.check_hinting()?;
        self.hinting.finish();
        self.config_changed()
    }

    /// The host's and the driver's last hinting commands.
    pub fn hinting_status(&self) -> std::result::Result<HintingStatus, BalloonError> {
        if self.hinting_queue.is_none() {
            return Err(BalloonError::HintingNotEnabled);
        }
        Ok(self.hinting.status)
    }

    /// Changes the polling interval. Statistics cannot be turned on or off
    /// once built (the queue is there or not): only a nonzero interval can
    /// replace a nonzero one. The buffer held is given back at once.
    pub fn update_stats_interval(
        &mut self,
        interval_s: u16,
    ) -> std::result::Result<(), BalloonError> {
        if interval_s == self.config.stats_polling_interval_s {
            return Ok(());
        }
        if interval_s == 0 || self.config.stats_polling_interval_s == 0 {
            return Err(BalloonError::StatisticsStateChange);
        }
        self.config.stats_polling_interval_s = interval_s;
        self.sync_timer().map_err(BalloonError::Timer)?;
        if let Some(period) = self.timer_period {
            // The driver is asked for statistics at once, by the event loop
            // (so never while the VM is paused), then at the new interval.
            self.timer
                .set_periodic_from_now(period)
                .map_err(BalloonError::Timer)?;
        }
        Ok(())
    }

    /// Arms the timer with the polling interval while the driver uses the
    /// statistics queue, and disarms it otherwise. Called on the event
    /// loop's thread (and by the host's updates, on the same thread).
    fn sync_timer(&mut self) -> std::io::Result<()> {
        let polling = self.active.as_ref().is_some_and(|a| a.stats);
        let period = match self.config.stats_polling_interval_s {
            s if s > 0 && polling => Some(Duration::from_secs(u64::from(s))),
            _ => None,
        };
        if period != self.timer_period {
            self.timer.set_periodic(period)?;
            self.timer_period = period;
        }
        Ok(())
    }

    /// Gives the statistics buffer back to the driver, which refills it.
    fn request_stats(&mut self) {
        let Some(head) = self.stats_desc.take() else {
            log::debug!("balloon: no statistics buffer to give back");
            self.counters.stats_update_fails += 1;
            return;
        };
        let Some(mut active) = self.active.take() else {
            return;
        };
        if let Some(queue) = active.queues.get_mut(STATS_QUEUE) {
            let mut ring = Ring::new(queue, &active.mem);
            if let Err(e) = ring.add_used(head, 0) {
                self.event_error(format_args!("cannot return the statistics buffer: {e}"));
            }
            signal_used(&mut ring, active.interrupt.as_ref(), &mut |what| {
                self.event_error(what);
            });
        }
        self.active = Some(active);
    }

    fn on_queue_event(&mut self, queue: usize) {
        if !self.take_queue_event(queue) {
            return;
        }
        if let Some(mut active) = self.active.take() {
            if Some(queue) == self.reporting_queue {
                if active.reporting {
                    self.drain_free_ranges(&mut active, queue);
                }
            } else if Some(queue) == self.hinting_queue {
                if active.hinting {
                    self.drain_free_ranges(&mut active, queue);
                }
            } else if queue == STATS_QUEUE {
                if active.stats {
                    self.drain_stats(&mut active);
                }
            } else {
                self.drain_pages(&mut active, queue);
            }
            self.active = Some(active);
        }
    }

    /// Processes the buffers of the inflate or deflate queue, at most a
    /// queue's worth per notification (the queue is kicked again if more
    /// wait), and interrupts the driver once.
    fn drain_pages(&mut self, active: &mut Active<M>, queue: usize) {
        let Active {
            mem,
            queues,
            interrupt,
            ..
        } = active;
        let Some(q) = queues.get_mut(queue) else {
            return;
        };
        let mut ring = Ring::new(q, &*mem);
        let mut pfns = std::mem::take(&mut self.pfns);
        let mut used = 0;
        while used < QUEUE_SIZE {
            let Some(chain) = ring.pop() else {
                break;
            };
            let head = chain.head_index();
            match read_pfns(&*mem, descriptors(chain), &mut pfns) {
                Ok(()) if queue == INFLATE_QUEUE => self.inflate(&*mem, &mut pfns),
                Ok(()) => self.counters.deflate_count += 1,
                Err(e) => {
                    log::debug!("balloon: bad buffer on queue {queue}: {e:?}");
                    self.counters.malformed_buffers += 1;
                }
            }
            if let Err(e) = ring.add_used(head, 0) {
                self.event_error(format_args!("cannot return buffer {head}: {e}"));
            }
            used += 1;
        }
        self.pfns = pfns;
        if used == QUEUE_SIZE {
            self.kick_queues(&[queue]);
        }
        if used > 0 {
            signal_used(&mut ring, interrupt.as_ref(), &mut |what| {
                self.event_error(what);
            });
        }
    }

    /// Takes the driver's free page reports or hints: each descriptor of a
    /// report, and each device-writable descriptor of a hint chain, is a
    /// free range of guest memory whose whole pages go back to the host
    /// (pages outside RAM are skipped); a hint chain's device-readable
    /// descriptors are the driver's commands. At most a queue's worth per
    /// notification, as [`Balloon::drain_pages`]. A driver that stops a
    /// run that acknowledges stops gets `DONE`.
    fn drain_free_ranges(&mut self, active: &mut Active<M>, queue: usize) {
        let hints = Some(queue) == self.hinting_queue;
        let Active {
            mem,
            queues,
            interrupt,
            ..
        } = active;
        let Some(q) = queues.get_mut(queue) else {
            return;
        };
        let mut ring = Ring::new(q, &*mem);
        let mut used = 0;
        let mut ended_run = false;
        while used < QUEUE_SIZE {
            let Some(chain) = ring.pop() else {
                break;
            };
            let head = chain.head_index();
            if hints {
                ended_run |= self.hint_chain(&*mem, chain);
            } else {
                for (addr, len, _) in descriptors(chain) {
                    let done = discard_range(&*mem, addr.0, u64::from(len));
                    let c = &mut self.counters;
                    count_freed(&mut c.free_page_report_freed, &mut c.pages_outside, done);
                    c.free_page_report_fails += u64::from(done.failed > 0);
                }
                self.counters.free_page_report_count += 1;
            }
            if let Err(e) = ring.add_used(head, 0) {
                self.event_error(format_args!("cannot return buffer {head}: {e}"));
            }
            used += 1;
        }
        if used == QUEUE_SIZE {
            self.kick_queues(&[queue]);
        }
        if used > 0 {
            signal_used(&mut ring, interrupt.as_ref(), &mut |what| {
                self.event_error(what);
            });
        }
        if ended_run {
            self.hinting.finish();
            self.config_generation = self.config_generation.wrapping_add(1);
            if let Err(e) = interrupt.trigger(InterruptKind::Config) {
                self.event_error(format_args!("cannot end the hinting run: {e}"));
            }
        }
    }

    /// Processes one chain of the hinting queue: commands (a readable
    /// le32) and hints (writable free ranges, taken only for the current
    /// run). Returns whether the run is to end (`DONE`).
    fn hint_chain(&mut self, mem: &M, chain: Chain<'_, M>) -> bool {
        let mut end_run = false;
        for (addr, len, writable) in descriptors(chain) {
            if !writable {
                match mem.read_obj::<u32>(addr) {
                    Ok(cmd) if len == 4 => end_run = self.hinting.guest_command(u32::from_le(cmd)),
                    _ => self.counters.malformed_buffers += 1,
                }
            } else if self.hinting.takes_hints() {
                let done = discard_range(mem, addr.0, u64::from(len));
                let c = &mut self.counters;
                c.free_page_hint_count += 1;
                count_freed(&mut c.free_page_hint_freed, &mut c.pages_outside, done);
                c.free_page_hint_fails += u64::from(done.failed > 0);
            }
        }
        end_run
    }

    /// Gives the pages of `pfns` back to the host.
    fn inflate(&mut self, mem: &M, pfns: &mut Vec<u32>) {
        self.counters.inflate_count += 1;
        for run in coalesce(pfns) {
            let done = discard(mem, run);
            self.counters.pages_released += done.released;
            self.counters.pages_outside += done.outside;
            if done.failed > 0 {
                self.event_error(format_args!(
                    "madvise failed on {} pages from frame {:#x}",
                    done.failed, run.first
                ));
            }
        }
    }

    /// Takes the driver's statistics buffers: each one is read and held
    /// (one held before is given back first, as the driver does not post
    /// two).
    fn drain_stats(&mut self, active: &mut Active<M>) {
        let Active {
            mem,
            queues,
            interrupt,
            ..
        } = active;
        let Some(q) = queues.get_mut(STATS_QUEUE) else {
            return;
        };
        let mut ring = Ring::new(q, &*mem);
        let mut returned = false;
        for _ in 0..QUEUE_SIZE {
            let Some(chain) = ring.pop() else {
                break;
            };
            let head = chain.head_index();
            if let Some(old) = self.stats_desc.replace(head) {
                if let Err(e) = ring.add_used(old, 0) {
                    self.event_error(format_args!("cannot return buffer {old}: {e}"));
                }
                returned = true;
            }
            self.read_stats(&*mem, chain);
        }
        if returned {
            signal_used(&mut ring, interrupt.as_ref(), &mut |what| {
                self.event_error(what);
            });
        }
    }

    /// Records the statistics of one buffer (its device-readable part, at
    /// most [`MAX_STATS`] entries).
    fn read_stats(&mut self, mem: &M, chain: Chain<'_, M>) {
        let mut buf = [0u8; MAX_STATS * STAT_SIZE];
        let mut len = 0;
        for (addr, size, writable) in descriptors(chain) {
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            let Some(dst) = buf.get_mut(len..).filter(|_| !writable) else {
                break;
            };
            let take = size.min(dst.len());
            if mem.read_slice(&mut dst[..take], addr).is_err() {
                self.counters.stats_update_fails += 1;
                return;
            }
            len += take;
        }
        let unknown = self.stats.update(&buf[..len]);
        if unknown > 0 {
            log::debug!("balloon: {unknown} statistics with unknown tags ignored");
        }
        self.counters.stats_updates_count += 1;
    }

    fn on_timer(&mut self) {
        if let Err(e) = self.timer.acknowledge() {
            self.event_error(format_args!("cannot read the timer: {e}"));
        }
        if self.active.as_ref().is_some_and(|a| a.stats) {
            self.request_stats();
        }
    }
}

/// The descriptors of `chain` as (address, length, device-writable).
fn descriptors<M: GuestMemory>(
    chain: Chain<'_, M>,
) -> impl Iterator<Item = (vm_memory::GuestAddress, u32, bool)> + '_ {
    chain.map(|d| (d.addr(), d.len(), d.is_write_only()))
}

/// Adds what `done` gave back to `freed` (bytes) and what lay outside RAM
/// to `outside` (pages).
fn count_freed(freed: &mut u64, outside: &mut u64, done: Discarded) {
    *freed += done.released * PAGE_SIZE;
    *outside += done.outside;
}

/// Guest RAM in whole MiB.
fn memory_mib<M: GuestMemory>(mem: &M) -> u64 {
    mem.physical_memory()
        .map_or(0, |p| p.iter().map(|r| r.len()).sum::<u64>() >> 20)
}

impl<M: GuestMemoryHandle> VirtioDevice<M> for Balloon<M> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_balloon_config { le32 num_pages; le32 actual;
        // le32 free_page_hint_cmd_id; }
        let mut config = [0u8; CONFIG_SIZE];
        config[..4].copy_from_slice(&self.stats.target_pages.to_le_bytes());
        config[4..8].copy_from_slice(&self.stats.actual_pages.to_le_bytes());
        config[8..].copy_from_slice(&self.hinting.status.host_cmd.to_le_bytes());
        read_config_space(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is the driver's; bytes elsewhere are ignored.
        let mut actual = self.stats.actual_pages.to_le_bytes();
        for (i, byte) in data.iter().enumerate() {
            let at = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| at.checked_sub(ACTUAL_OFFSET));
            if let Some(slot) = at.and_then(|at| actual.get_mut(at)) {
                *slot = *byte;
            }
        }
        self.stats.actual_pages = u32::from_le_bytes(actual);
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
        let stats = acked_features & feature_bit(VIRTIO_BALLOON_F_STATS_VQ) != 0;
        let reporting = acked_features & feature_bit(VIRTIO_BALLOON_F_FREE_PAGE_REPORTING) != 0;
        let hinting = acked_features & feature_bit(VIRTIO_BALLOON_F_FREE_PAGE_HINT) != 0;
        // The statistics, hinting and reporting queues are only needed if
        // the driver accepted them.
        let needed = |i: usize| {
            if Some(i) == self.reporting_queue {
                reporting
            } else if Some(i) == self.hinting_queue {
                hinting
            } else {
                i < STATS_QUEUE || stats
            }
        };
        let taken = ActivationQueues::new(self.active.is_some(), queues).and_then(|mut q| {
            (0..self.queue_sizes.len())
                .map(|i| if needed(i) { q.ready() } else { q.any() })
                .collect::<Result<Vec<_>>>()
        });
        let queues = match taken {
            Ok(queues) => queues,
            Err(e) => {
                self.counters.activate_fails += 1;
                return Err(e);
            }
        };
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
            acked_features,
            stats,
            hinting,
            reporting,
        });
        // The event loop arms the polling timer when it handles the kick.
        let mut kicked = vec![INFLATE_QUEUE, DEFLATE_QUEUE];
        if stats {
            kicked.push(STATS_QUEUE);
        }
        if let Some(queue) = self.hinting_queue.filter(|_| hinting) {
            kicked.push(queue);
        }
        if let Some(queue) = self.reporting_queue.filter(|_| reporting) {
            kicked.push(queue);
        }
        self.kick_queues(&kicked);
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_states(&self) -> Vec<QueueState> {
        self.active
            .iter()
            .flat_map(|a| a.queues.iter().map(Queue::state))
            .collect()
    }

    fn reset(&mut self) {
        self.active = None;
        self.stats_desc = None;
        self.hinting = HintingState::default();
        // The timer is disarmed by the event loop at its next tick.
    }
}

impl<M: GuestMemoryHandle> DeviceEvents<M> for Balloon<M> {
    fn event_error(&mut self, what: fmt::Arguments<'_>) {
        log::warn!("balloon: {what}");
        self.counters.event_fails += 1;
    }

    fn count_ignored(&mut self) {
        self.counters.ignored_notifications += 1;
    }
}

impl<M: GuestMemoryHandle> MutEventSubscriber for Balloon<M> {
    fn init(&mut self, ops: &mut EventOps) {
        for (queue, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("balloon: cannot watch queue {queue}: {e:?}");
            }
        }
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::error!("balloon: cannot watch the timer: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if let Some(queue) = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd) {
            self.on_queue_event(queue);
        } else if fd == self.timer.as_raw_fd() {
            self.on_timer();
        } else {
            log::debug!("balloon: event on unknown fd {fd}");
        }
        if let Err(e) = self.sync_timer() {
            self.event_error(format_args!("cannot arm the timer: {e}"));
        }
    }
}
