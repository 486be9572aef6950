//! The virtio-net device: features and configuration space, activation and
//! reset, rate limits, and its event-loop subscription. The data paths are
//! in `rx` and `tx`.

use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use ember_mmds::net::MmdsStack;
use ember_mmds::Mmds;

use ember_ratelimit::RateLimiter;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::config::{check_mac, offload_features, probe_offloads, random_mac, tap_offloads};
use super::rx::{Rx, RxIo};
use super::tx::{Tx, TxIo};
use super::{
    DisplayMac, MacAddr, NetBackend, NetConfig, NetCounters, NetState, RateLimiterConfig,
    RateLimiterUpdate, Tap, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN,
};
use crate::virtio::common::{
    self, check_restored_features, ignore_config_write, read_config_space, ActivationQueues,
    DeviceEvents,
};
use crate::virtio::ring::Ring;
use crate::virtio::{feature_bit, GuestMemoryHandle, VirtioDevice, VirtioInterrupt};
use crate::{Error, Result};

const QUEUE_MAX_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
/// Configuration space: mac (6 bytes), status (le16), max_virtqueue_pairs
/// (le16, always 1), mtu (le16, meaningful with `VIRTIO_NET_F_MTU`).
const CONFIG_LEN: usize = 12;

/// What the device holds between DRIVER_OK and reset.
pub(super) struct Active<M> {
    pub(super) mem: M,
    pub(super) rx_queue: Queue,
    pub(super) tx_queue: Queue,
    pub(super) interrupt: Arc<dyn VirtioInterrupt>,
    pub(super) acked_features: u64,
    /// The TAP offloads set for the accepted features.
    pub(super) tap_offloads: u32,
}

/// A virtio-net device on a TAP interface (or another [`NetBackend`]).
///
/// Register it with the event loop (it is a [`MutEventSubscriber`]: it
/// watches its two queue eventfds, the backend and its two rate limiters'
/// timers, all registered once in `init`) and give it to an
/// [`crate::virtio::MmioTransport`]; share it as `Arc<Mutex<Net<M>>>`.
/// Queue 0 ([`super::RX_QUEUE`]) receives, queue 1 ([`super::TX_QUEUE`])
/// transmits.
pub struct Net<M> {
    iface_id: String,
    backend: Box<dyn NetBackend>,
    mac: MacAddr,
    mtu: Option<u16>,
    avail_features: u64,
    tap_offloads_supported: u32,
    config_generation: u32,
    queue_evts: [EventFd; 2],
    rx: Rx,
    tx: Tx,
    counters: NetCounters,
    /// The MMDS stack, on interfaces named in `mmds-config`.
    mmds: Option<MmdsStack>,
    active: Option<Active<M>>,
}

impl<M> fmt::Debug for Net<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("iface_id", &self.iface_id)
            .field("backend", &self.backend.name())
            .field("mac", &DisplayMac(&self.mac))
            .field("active", &self.active.is_some())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// What the guest sees of an interface beside its queues.
struct Settings {
    mac: MacAddr,
    mtu: Option<u16>,
    /// TAP offloads (`TUN_F_*`) the TAP accepts, offered as features.
    tap_offloads_supported: u32,
}

/// The error of `backend` failing with `error`.
fn backend_error(backend: &dyn NetBackend, error: std::io::Error) -> super::Error {
    super::Error::Tap {
        name: backend.name().to_owned(),
        error,
    }
}

/// Has `backend` carry a virtio-net header of [`VNET_HDR_LEN`] bytes on every frame.
fn set_vnet_hdr_size(backend: &dyn NetBackend) -> Result<(), super::Error> {
    let hdr_len = i32::try_from(VNET_HDR_LEN).unwrap_or(i32::MAX);
    backend
        .set_vnet_hdr_size(hdr_len)
        .map_err(|error| backend_error(backend, error))
}

fn limiter(config: &RateLimiterConfig) -> Result<RateLimiter> {
    RateLimiter::new(config.bandwidth, config.ops).map_err(Error::RateLimiter)
}

/// Charges `limiter` for one frame of `bytes` bytes: one operation and the
/// bytes, all or nothing.
pub(super) fn admit(limiter: &mut RateLimiter, bytes: usize) -> bool {
    common::admit(limiter, u64::try_from(bytes).unwrap_or(u64::MAX))
}

/// Logs a failure of the event-loop work of interface `iface` and counts it.
fn event_error(iface: &str, counters: &mut NetCounters, what: fmt::Arguments<'_>) {
    log::warn!("net {iface}: {what}");
    counters.event_errors += 1;
}

/// Interrupts the driver if it wants to know about the buffers just used.
pub(super) fn signal_used<M: GuestMemory>(
    iface: &str,
    ring: &mut Ring<'_, '_, M>,
    interrupt: &dyn VirtioInterrupt,
    counters: &mut NetCounters,
) {
    common::signal_used(ring, interrupt, &mut |what| {
        event_error(iface, counters, what);
    });
}

impl<M: GuestMemoryHandle> Net<M> {
    /// Opens the TAP interface `config.host_dev_name` and builds the device
    /// on it (see [`Net::with_backend`]).
    pub fn new(config: NetConfig) -> Result<Net<M>> {
        let tap = Tap::open(&config.host_dev_name)?;
        Net::with_backend(config, Box::new(tap))
    }

    /// Sets the header size of `backend`, an open host side, probes the
    /// offloads it supports and builds an inactive device on it. Offloads
    /// are offered to the driver only if the backend supports them.
    /// `config.host_dev_name` is not used: the device's state names the
    /// backend by [`NetBackend::name`].
    pub fn with_backend(config: NetConfig, backend: Box<dyn NetBackend>) -> Result<Net<M>> {
        set_vnet_hdr_size(backend.as_ref())?;
        let tap_offloads_supported = probe_offloads(|flags| backend.set_offload(flags).is_ok());
        let mac = match config.guest_mac {
            Some(mac) => check_mac(mac)?,
            None => random_mac(&config.iface_id),
        };
        Net::on_backend(
            config.iface_id,
            backend,
            Settings {
                mac,
                mtu: config.mtu,
                tap_offloads_supported,
            },
            Rx::new(limiter(&config.rx_rate_limiter)?),
            Tx::new(limiter(&config.tx_rate_limiter)?),
        )
    }

    /// Rebuilds the inactive device `state` describes on `backend`, the TAP
    /// interface reopened by its name (`state.host_dev_name`, with
    /// [`Tap::open`]) or another backend: MAC address, MTU, offered features, configuration
    /// generation, counters and rate-limiter levels as saved. A frame that
    /// was waiting for a receive buffer is lost with the old backend (counted in
    /// `rx_dropped`). If the interface answered for the MMDS
    /// (`state.mmds_address`), `mmds` is the store it answers from; it is
    /// an error to leave it out then. [`crate::virtio::MmioTransport::restore`]
    /// then activates the device.
    pub fn restore(
        state: &NetState,
        backend: Box<dyn NetBackend>,
        mmds: Option<Arc<Mutex<Mmds>>>,
    ) -> Result<Net<M>> {
        let mismatch = |reason: String| Error::RestoreMismatch {
            device: "net",
            reason,
        };
        set_vnet_hdr_size(backend.as_ref())?;
        let rx_limiter =
            RateLimiter::restore(&state.rx_rate_limiter).map_err(Error::RateLimiter)?;
        let tx_limiter =
            RateLimiter::restore(&state.tx_rate_limiter).map_err(Error::RateLimiter)?;
        let mut net = Net::on_backend(
            state.iface_id.clone(),
            backend,
            Settings {
                mac: check_mac(state.mac)?,
                mtu: state.mtu,
                tap_offloads_supported: state.tap_offloads_supported,
            },
            Rx::new(rx_limiter),
            Tx::new(tx_limiter),
        )?;
        check_restored_features("net", state.avail_features, net.avail_features)?;
        match (state.mmds_address, mmds) {
            (Some(address), Some(store)) => net.set_mmds(store, address),
            (Some(address), None) => {
                return Err(mismatch(format!(
                    "the interface answered for the MMDS at {address}, and no MMDS store is given"
                )))
            }
            (None, _) => {}
        }
        net.config_generation = state.config_generation;
        net.counters = state.counters;
        if state.rx_pending_len.is_some() {
            net.counters.rx_dropped += 1;
        }
        Ok(net)
    }

    fn on_backend(
        iface_id: String,
        backend: Box<dyn NetBackend>,
        settings: Settings,
        rx: Rx,
        tx: Tx,
    ) -> Result<Net<M>> {
        let mut avail_features = feature_bit(VIRTIO_F_VERSION_1)
            | feature_bit(VIRTIO_RING_F_EVENT_IDX)
            | feature_bit(VIRTIO_NET_F_MAC)
            | feature_bit(VIRTIO_NET_F_STATUS)
            | offload_features(settings.tap_offloads_supported);
        if settings.mtu.is_some() {
            avail_features |= feature_bit(VIRTIO_NET_F_MTU);
        }
        let event = || EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd);
        Ok(Net {
            iface_id,
            backend,
            mac: settings.mac,
            mtu: settings.mtu,
            avail_features,
            tap_offloads_supported: settings.tap_offloads_supported,
            config_generation: 0,
            queue_evts: [event()?, event()?],
            rx,
            tx,
            counters: NetCounters::default(),
            mmds: None,
            active: None,
        })
    }

    /// The interface's ID.
    pub fn iface_id(&self) -> &str {
        &self.iface_id
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The host side: the TAP interface, or the backend given to
    /// [`Net::with_backend`].
    pub fn backend(&self) -> &(dyn NetBackend + 'static) {
        self.backend.as_ref()
    }

    /// The counters.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Answers the guest's frames to the MMDS at `address` from `store`
    /// here instead of sending them to the TAP (`mmds-config` names this
    /// interface).
    pub fn set_mmds(&mut self, store: Arc<Mutex<Mmds>>, address: Ipv4Addr) {
        self.mmds = Some(MmdsStack::new(store, address));
    }

    /// The MMDS counters (Firecracker's `mmds` group), if the interface
    /// answers for the MMDS.
    pub fn mmds_counters(&self) -> Option<ember_mmds::net::MmdsNetCounters> {
        self.mmds.as_ref().map(MmdsStack::counters)
    }

    /// The device's state as plain data.
    pub fn state(&self) -> NetState {
        let active = self.active.as_ref();
        NetState {
            iface_id: self.iface_id.clone(),
            host_dev_name: self.backend.name().to_owned(),
            mac: self.mac,
            mtu: self.mtu,
            mmds_address: self.mmds.as_ref().map(MmdsStack::address),
            avail_features: self.avail_features,
            acked_features: active.map_or(0, |a| a.acked_features),
            tap_offloads_supported: self.tap_offloads_supported,
            tap_offloads: active.map_or(0, |a| a.tap_offloads),
            config_generation: self.config_generation,
            rx_pending_len: self.rx.pending_len(),
            rx_rate_limiter: self.rx.limiter.state(),
            tx_rate_limiter: self.tx.limiter.state(),
            counters: self.counters,
        }
    }

    /// Changes the rate limits of each direction (see
    /// [`RateLimiter::update_buckets`]). A direction held back by its old
    /// limits is retried at once under the new ones.
    pub fn update_rate_limiters(&mut self, rx: RateLimiterUpdate, tx: RateLimiterUpdate) {
        self.rx.limiter.update_buckets(rx.bandwidth, rx.ops);
        self.tx.limiter.update_buckets(tx.bandwidth, tx.ops);
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&self.mac);
        let status = u16::try_from(VIRTIO_NET_S_LINK_UP).unwrap_or(1);
        config[6..8].copy_from_slice(&status.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..].copy_from_slice(&self.mtu.unwrap_or(0).to_le_bytes());
        config
    }

    fn on_rx_queue_event(&mut self, ops: &mut EventOps) {
        self.counters.rx_queue_events += 1;
        // A throttled receive path waits for its timer, not for the guest.
        if self.take_queue_event(RX_QUEUE) && !self.rx.limiter.is_blocked() {
            self.process_rx(ops);
        }
    }

    fn on_tx_queue_event(&mut self) {
        self.counters.tx_queue_events += 1;
        if self.take_queue_event(TX_QUEUE) && !self.tx.limiter.is_blocked() {
            self.process_tx();
        }
    }

    fn on_tap_event(&mut self, events: EventSet, ops: &mut EventOps) {
        self.counters.tap_events += 1;
        if events.intersects(EventSet::ERROR | EventSet::HANG_UP) {
            // The interface is gone (or the TAP broke): the condition stays,
            // so the TAP must leave the event loop or it would spin.
            log::error!(
                "net {}: TAP {} reports an error; no more frames will be received",
                self.iface_id,
                self.backend.name()
            );
            self.counters.rx_tap_errors += 1;
            self.rx
                .detach(self.backend.as_ref(), ops, &mut self.counters);
            return;
        }
        if self.active.is_none() {
            self.count_ignored();
            self.rx
                .set_polling(self.backend.as_ref(), ops, false, &mut self.counters);
            return;
        }
        self.process_rx(ops);
    }

    fn on_rx_limiter_event(&mut self, ops: &mut EventOps) {
        match self.rx.limiter.event_handler() {
            Ok(()) if self.active.is_some() => self.process_rx(ops),
            Ok(()) => {}
            Err(e) => log::debug!("net {}: receive limiter: {e}", self.iface_id),
        }
    }

    fn on_tx_limiter_event(&mut self) {
        match self.tx.limiter.event_handler() {
            Ok(()) if self.active.is_some() => self.process_tx(),
            Ok(()) => {}
            Err(e) => log::debug!("net {}: transmit limiter: {e}", self.iface_id),
        }
    }

    fn process_rx(&mut self, ops: &mut EventOps) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let io = RxIo {
            iface: &self.iface_id,
            backend: self.backend.as_ref(),
            mem: &active.mem,
            ring: Ring::new(&mut active.rx_queue, &active.mem),
            interrupt: active.interrupt.as_ref(),
            guest_csum: active.acked_features & feature_bit(VIRTIO_NET_F_GUEST_CSUM) != 0,
            mmds: self.mmds.as_mut(),
            counters: &mut self.counters,
        };
        self.rx.process(io, ops);
        // MMDS replies left while nothing waits in the host buffer: the
        // budget ran out (a full queue or the limiter leave a frame
        // pending). The TAP may stay quiet, so come back for them.
        let waiting = self.mmds.as_ref().is_some_and(MmdsStack::has_replies);
        if waiting && self.rx.pending_len().is_none() {
            self.kick_mmds_replies();
        }
    }

    /// Has the event loop run the receive path for the MMDS's replies.
    fn kick_mmds_replies(&mut self) {
        if let Err(e) = self.queue_evts[RX_QUEUE].write(1) {
            event_error(
                &self.iface_id,
                &mut self.counters,
                format_args!("MMDS kick: {e}"),
            );
        }
    }

    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let io = TxIo {
            iface: &self.iface_id,
            backend: self.backend.as_ref(),
            mem: &active.mem,
            ring: Ring::new(&mut active.tx_queue, &active.mem),
            interrupt: active.interrupt.as_ref(),
            kick: &self.queue_evts[TX_QUEUE],
            mmds: self.mmds.as_mut(),
            counters: &mut self.counters,
        };
        self.tx.process(io);
        // MMDS replies go through the receive path, from the event loop.
        if self.mmds.as_ref().is_some_and(MmdsStack::has_replies) {
            self.kick_mmds_replies();
        }
    }
}

impl<M: GuestMemoryHandle> VirtioDevice<M> for Net<M> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
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
        // The MAC is read-only once VIRTIO_F_VERSION_1 is negotiated.
        ignore_config_write(format_args!("net {}", self.iface_id), offset, data);
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
        let mut queues = ActivationQueues::new(self.active.is_some(), queues)?;
        let rx_queue = queues.ready()?;
        let tx_queue = queues.ready()?;
        let offloads = tap_offloads(acked_features) & self.tap_offloads_supported;
        self.backend
            .set_offload(offloads)
            .map_err(|error| backend_error(self.backend.as_ref(), error))?;
        self.active = Some(Active {
            mem,
            rx_queue,
            tx_queue,
            interrupt,
            acked_features,
            tap_offloads: offloads,
        });
        // Buffers made available before DRIVER_OK get picked up by the event
        // loop; the receive side also starts watching the TAP from there.
        self.kick_queues(&[RX_QUEUE, TX_QUEUE]);
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_states(&self) -> Vec<QueueState> {
        self.active
            .iter()
            .flat_map(|a| [a.rx_queue.state(), a.tx_queue.state()])
            .collect()
    }

    fn reset(&mut self) {
        self.active = None;
        if self.rx.drop_pending() {
            self.counters.rx_dropped += 1;
        }
        if let Err(e) = self.backend.set_offload(0) {
            log::warn!("net {}: cannot clear the TAP offloads: {e}", self.iface_id);
        }
    }
}

impl<M: GuestMemoryHandle> DeviceEvents<M> for Net<M> {
    fn event_error(&mut self, what: fmt::Arguments<'_>) {
        event_error(&self.iface_id, &mut self.counters, what);
    }

    fn count_ignored(&mut self) {
        self.counters.ignored_notifications += 1;
    }
}

impl<M: GuestMemoryHandle> MutEventSubscriber for Net<M> {
    fn init(&mut self, ops: &mut EventOps) {
        let watched = [
            (
                "the receive queue event",
                self.queue_evts[RX_QUEUE].as_raw_fd(),
                EventSet::IN,
            ),
            (
                "the transmit queue event",
                self.queue_evts[TX_QUEUE].as_raw_fd(),
                EventSet::IN,
            ),
            (
                "the receive limiter",
                self.rx.limiter.as_raw_fd(),
                EventSet::IN,
            ),
            (
                "the transmit limiter",
                self.tx.limiter.as_raw_fd(),
                EventSet::IN,
            ),
            // Registered without readiness interest: the receive path turns
            // it on when it has buffers to fill (see `Rx::set_polling`).
            ("the TAP", self.backend.as_raw_fd(), EventSet::empty()),
        ];
        for (what, fd, events) in watched {
            if let Err(e) = ops.add(Events::new_raw(fd, events)) {
                log::error!("net {}: cannot watch {what}: {e:?}", self.iface_id);
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.queue_evts[RX_QUEUE].as_raw_fd() {
            self.on_rx_queue_event(ops);
        } else if fd == self.queue_evts[TX_QUEUE].as_raw_fd() {
            self.on_tx_queue_event();
        } else if fd == self.backend.as_raw_fd() {
            self.on_tap_event(events.event_set(), ops);
        } else if fd == self.rx.limiter.as_raw_fd() {
            self.on_rx_limiter_event(ops);
        } else if fd == self.tx.limiter.as_raw_fd() {
            self.on_tx_limiter_event();
        } else {
            log::debug!("net {}: event on unknown fd {fd}", self.iface_id);
        }
    }
}
