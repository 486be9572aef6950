//! The virtio-vsock device: configuration space, activation and reset, the TX
//! and RX queue loops, and its event-loop subscription.

use std::fmt;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::muxer::Muxer;
use super::packet::{parse_tx, RxBuffer};
use super::Error;
use super::{Limits, VsockCounters, VsockState, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET};
use crate::host_files::BoundListener;
use crate::virtio::common::{
    check_restored_features, consume_event, ignore_config_write, read_config_space, signal_used,
    ActivationQueues, DeviceEvents,
};
use crate::virtio::iov::{GuestRegions, IoVecBuf};
use crate::virtio::ring::Ring;
use crate::virtio::timer::DeadlineTimer;
use crate::virtio::{feature_bit, GuestMemoryHandle, VirtioDevice, VirtioInterrupt};
use crate::Result;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the RX queue (device to guest).
pub const RX_QUEUE: usize = 0;
/// Index of the TX queue (guest to device).
pub const TX_QUEUE: usize = 1;
/// Index of the event queue (device events: the transport reset after a
/// restore).
pub const EVENT_QUEUE: usize = 2;

const QUEUE_MAX_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// How a vsock device is set up, with the fields of Firecracker's `vsock`
/// object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID: at least 3 (0 to 2 are reserved) and below
    /// 0xffff_ffff (`VMADDR_CID_ANY`).
    pub guest_cid: u64,
    /// The host-side Unix socket the device listens on (it must not exist);
    /// guest connections to host port P go to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
}

/// What the device holds between DRIVER_OK and reset.
struct Active<M> {
    mem: M,
    rx: Queue,
    tx: Queue,
    event: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    acked_features: u64,
}

/// A virtio-vsock device with Firecracker's hybrid Unix-socket back-end.
///
/// Register it with the event loop (it is a [`MutEventSubscriber`]: it
/// watches its three queue eventfds, a wake-up eventfd, its deadline timer,
/// the listening socket and every connection's stream) and give it to an
/// [`crate::virtio::MmioTransport`]; share it as `Arc<Mutex<Vsock<M>>>`.
pub struct Vsock<M> {
    guest_cid: u64,
    uds_path: PathBuf,
    avail_features: u64,
    queue_evts: [EventFd; 3],
    /// Wakes the event loop after a reset, to close the streams.
    wake: EventFd,
    timer: DeadlineTimer,
    muxer: Muxer,
    /// The buffers of the packet on its way between guest memory and a
    /// stream (kept to reuse its allocation).
    iovs: IoVecBuf,
    rx_stalled: bool,
    active: Option<Active<M>>,
}

impl<M> fmt::Debug for Vsock<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("uds_path", &self.uds_path)
            .field("active", &self.active.is_some())
            .field("counters", &self.muxer.counters)
            .finish_non_exhaustive()
    }
}

/// Refuses a reserved CID (0 to 2) or `VMADDR_CID_ANY` and above.
fn check_cid(guest_cid: u64) -> Result<(), Error> {
    if guest_cid < 3 || guest_cid >= u64::from(u32::MAX) {
        return Err(Error::InvalidCid(guest_cid));
    }
    Ok(())
}

fn new_eventfd() -> Result<EventFd> {
    EventFd::new(EFD_NONBLOCK).map_err(crate::Error::EventFd)
}

impl<M: GuestMemoryHandle> Vsock<M> {
    /// Checks the CID, binds the Unix socket (see [`BoundListener::bind`])
    /// and builds an inactive device. The socket file is removed when the
    /// device is dropped.
    pub fn new(config: VsockConfig) -> Result<Vsock<M>> {
        check_cid(config.guest_cid)?;
        let listener = BoundListener::bind(&config.uds_path).map_err(|error| Error::Socket {
            path: config.uds_path.clone(),
            error,
        })?;
        Vsock::with_listener(config.guest_cid, listener)
    }

    /// Rebuilds the inactive device `state` describes on `listener`, the
    /// host socket bound again (at `state.uds_path`, or wherever the VMM
    /// binds it now): CID, offered features and counters as saved. The
    /// connections were host resources and are gone (the gauges
    /// `connections` and `buffered_bytes` start at 0);
    /// [`crate::virtio::MmioTransport::restore`] activates the device, which
    /// then tells the driver so (see [`VirtioDevice::after_restore`]).
    pub fn restore(state: &VsockState, listener: BoundListener) -> Result<Vsock<M>> {
        let mut vsock = Vsock::with_listener(state.guest_cid, listener)?;
        check_restored_features("vsock", state.avail_features, vsock.avail_features)?;
        vsock.muxer.counters = VsockCounters {
            connections: 0,
            buffered_bytes: 0,
            ..state.counters
        };
        Ok(vsock)
    }

    /// Checks the CID and builds an inactive device on a socket already
    /// bound (at its `uds_path`), which it removes when dropped.
    pub fn with_listener(guest_cid: u64, listener: BoundListener) -> Result<Vsock<M>> {
        check_cid(guest_cid)?;
        let uds_path = listener.path().to_path_buf();
        let muxer = Muxer::new(guest_cid, listener, Limits::default());
        Ok(Vsock {
            guest_cid,
            uds_path,
            avail_features: feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_RING_F_EVENT_IDX),
            queue_evts: [new_eventfd()?, new_eventfd()?, new_eventfd()?],
            wake: new_eventfd()?,
            timer: DeadlineTimer::new().map_err(Error::Timer)?,
            muxer,
            iovs: IoVecBuf::default(),
            rx_stalled: false,
            active: None,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The listening socket's path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// The counters.
    pub fn counters(&self) -> VsockCounters {
        self.muxer.counters
    }

    /// The device's state as plain data (live connections are not part of it).
    pub fn state(&self) -> VsockState {
        let active = self.active.as_ref();
        VsockState {
            guest_cid: self.guest_cid,
            uds_path: self.uds_path.clone(),
            avail_features: self.avail_features,
            acked_features: active.map_or(0, |a| a.acked_features),
            counters: self.muxer.counters,
        }
    }

    #[cfg(test)]
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.muxer.set_limits(limits);
    }

    #[cfg(test)]
    pub(crate) fn rx_backlog(&self) -> usize {
        self.muxer.rx_backlog()
    }

    fn on_queue_event(&mut self, queue: usize, now: Instant) {
        // RX buffers are used after every event; event-queue buffers are
        // kept for the transport reset of a restore.
        if self.take_queue_event(queue) && queue == TX_QUEUE {
            if let Some(mut active) = self.active.take() {
                self.drain_tx(&mut active, now);
                self.active = Some(active);
            }
        }
    }

    /// Takes every packet the guest sent; each descriptor goes back at once
    /// (the data is written to the host or buffered within the credit).
    fn drain_tx(&mut self, active: &mut Active<M>, now: Instant) {
        let Active {
            mem, tx, interrupt, ..
        } = active;
        let mem = &*mem;
        let mut ring = Ring::new(tx, mem);
        let guest = GuestRegions::new(mem);
        let mut iovs = std::mem::take(&mut self.iovs);
        let mut used_any = false;
        // Set after a pass that found nothing although the ring said otherwise.
        let mut stalled = false;
        loop {
            if let Err(e) = ring.disable_notification() {
                self.event_error(format_args!("cannot disable TX notifications: {e}"));
            }
            let mut progressed = false;
            while let Some(chain) = ring.pop() {
                let head = chain.head_index();
                let mut data = iovs.start();
                match parse_tx(&guest, chain, &mut data) {
                    Ok(hdr) => self.muxer.on_guest_packet(&hdr, &data, now),
                    Err(e) => {
                        log::debug!("vsock {}: bad TX chain: {e:?}", self.guest_cid);
                        self.muxer.on_malformed(e.header.as_ref());
                    }
                }
                drop(data);
                if let Err(e) = ring.add_used(head, 0) {
                    self.event_error(format_args!("cannot return TX descriptor {head}: {e}"));
                }
                progressed = true;
                used_any = true;
            }
            match ring.enable_notification() {
                Ok(true) if progressed || !stalled => stalled = !progressed,
                Ok(true) => {
                    log::warn!("vsock {}: invalid TX available index", self.guest_cid);
                    self.muxer.counters.malformed_packets += 1;
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    self.event_error(format_args!("cannot enable TX notifications: {e}"));
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

    /// Tells the driver that every connection is gone: a
    /// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` event (virtio 1.2, 5.10.6.6) in
    /// the first buffer of the event queue.
    fn send_transport_reset(&mut self, active: &mut Active<M>) {
        let Active {
            mem,
            event,
            interrupt,
            ..
        } = active;
        let mem = &*mem;
        let mut ring = Ring::new(event, mem);
        let Some(chain) = ring.pop() else {
            self.event_error(format_args!("no event buffer for the transport reset"));
            return;
        };
        let head = chain.head_index();
        let id = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes();
        let len = u32::try_from(id.len()).unwrap_or(u32::MAX);
        let mut chain = chain;
        let written = match chain.next().filter(|d| d.is_write_only() && d.len() >= len) {
            Some(desc) => mem.write_slice(&id, desc.addr()).is_ok(),
            None => false,
        };
        let len = if written {
            len
        } else {
            self.event_error(format_args!("event buffer {head} cannot hold an event"));
            0
        };
        if let Err(e) = ring.add_used(head, len) {
            self.event_error(format_args!("cannot return event buffer {head}: {e}"));
        }
        signal_used(&mut ring, interrupt.as_ref(), &mut |what| {
            self.event_error(what);
        });
    }

    /// The RX ring is out of buffers: asks to be notified of new ones, and
    /// tells whether some came meanwhile (checked once in a row, tracked in
    /// `rechecked`). If not, the device is stalled for want of buffers.
    fn buffers_came_meanwhile(&mut self, ring: &mut Ring<'_, '_, M>, rechecked: &mut bool) -> bool {
        match ring.enable_notification() {
            Ok(true) if !*rechecked => {
                *rechecked = true;
                return true;
            }
            Ok(_) => {}
            Err(e) => self.event_error(format_args!("cannot enable RX notifications: {e}")),
        }
        if !self.rx_stalled {
            self.rx_stalled = true;
            self.muxer.counters.rx_buffer_stalls += 1;
        }
        false
    }

    /// Gives the guest the packets due, as long as it has RX buffers.
    fn fill_rx(&mut self, active: &mut Active<M>, now: Instant) {
        if !self.muxer.has_rx_work() {
            return;
        }
        let Active {
            mem, rx, interrupt, ..
        } = active;
        let mem = &*mem;
        let mut ring = Ring::new(rx, mem);
        let guest = GuestRegions::new(mem);
        let mut iovs = std::mem::take(&mut self.iovs);
        let mut used_any = false;
        let mut rechecked = false;
        while self.muxer.has_rx_work() {
            let Some(chain) = ring.pop() else {
                if self.buffers_came_meanwhile(&mut ring, &mut rechecked) {
                    continue;
                }
                break;
            };
            rechecked = false;
            let head = chain.head_index();
            let mut buffer = match RxBuffer::parse(&guest, chain, iovs.start()) {
                Ok(buffer) => buffer,
                Err(e) => {
                    log::debug!("vsock {}: bad RX chain: {e:?}", self.guest_cid);
                    self.muxer.counters.malformed_packets += 1;
                    if let Err(e) = ring.add_used(head, 0) {
                        self.event_error(format_args!("cannot return RX descriptor {head}: {e}"));
                    }
                    used_any = true;
                    continue;
                }
            };
            let room = buffer.data_capacity();
            let Some((hdr, _)) = self.muxer.next_rx(room, &mut buffer, now) else {
                // Nothing can be sent now: the buffer stays available.
                ring.go_to_previous_position();
                break;
            };
            self.rx_stalled = false;
            let written = buffer.write_header(&hdr).unwrap_or_else(|| {
                self.event_error(format_args!("cannot write a packet to RX buffer {head}"));
                0
            });
            drop(buffer);
            if let Err(e) = ring.add_used(head, written) {
                self.event_error(format_args!("cannot return RX descriptor {head}: {e}"));
            }
            used_any = true;
        }
        self.iovs = iovs;
        if used_any {
            signal_used(&mut ring, interrupt.as_ref(), &mut |what| {
                self.event_error(what);
            });
        }
    }
}

impl<M: GuestMemoryHandle> VirtioDevice<M> for Vsock<M> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
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
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_space(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        ignore_config_write(format_args!("vsock {}", self.guest_cid), offset, data);
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
        let mut queues = ActivationQueues::new(self.active.is_some(), queues)?;
        let rx = queues.ready()?;
        let tx = queues.ready()?;
        // The event queue is never used: a driver that leaves it out is fine.
        let event = queues.any()?;
        self.active = Some(Active {
            mem,
            rx,
            tx,
            event,
            interrupt,
            acked_features,
        });
        self.rx_stalled = false;
        // Packets sent before DRIVER_OK, and host requests made before the
        // driver was up, get processed by the event loop.
        self.kick_queues(&[TX_QUEUE, RX_QUEUE]);
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_states(&self) -> Vec<QueueState> {
        self.active
            .iter()
            .flat_map(|a| [a.rx.state(), a.tx.state(), a.event.state()])
            .collect()
    }

    /// The host connections did not survive the snapshot: the driver is told
    /// to drop its sockets, as Firecracker's device does on restore.
    fn after_restore(&mut self) {
        if let Some(mut active) = self.active.take() {
            self.send_transport_reset(&mut active);
            self.active = Some(active);
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_stalled = false;
        self.muxer.reset();
        // The streams of dropped connections are closed on the event loop,
        // which owns the epoll set.
        if let Err(e) = self.wake.write(1) {
            self.event_error(format_args!("cannot wake the event loop: {e}"));
        }
    }
}

impl<M: GuestMemoryHandle> DeviceEvents<M> for Vsock<M> {
    fn event_error(&mut self, what: fmt::Arguments<'_>) {
        log::warn!("vsock {}: {what}", self.guest_cid);
        self.muxer.counters.event_errors += 1;
    }

    fn count_ignored(&mut self) {
        self.muxer.counters.ignored_notifications += 1;
    }
}

impl<M: GuestMemoryHandle> MutEventSubscriber for Vsock<M> {
    fn init(&mut self, ops: &mut EventOps) {
        for (queue, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!(
                    "vsock {}: cannot watch queue {queue}: {e:?}",
                    self.guest_cid
                );
            }
        }
        if let Err(e) = ops.add(Events::new(&self.wake, EventSet::IN)) {
            log::error!(
                "vsock {}: cannot watch the wake-up event: {e:?}",
                self.guest_cid
            );
        }
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::error!("vsock {}: cannot watch the timer: {e:?}", self.guest_cid);
        }
        if let Err(e) = self.muxer.register_listener(ops) {
            log::error!("vsock {}: cannot watch the listener: {e:?}", self.guest_cid);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let now = Instant::now();
        if let Some(queue) = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd) {
            self.on_queue_event(queue, now);
        } else if fd == self.wake.as_raw_fd() {
            if let Err(e) = consume_event(&self.wake) {
                self.event_error(format_args!("cannot read the wake-up event: {e}"));
            }
        } else if fd == self.timer.as_raw_fd() {
            if let Err(e) = self.timer.acknowledge() {
                self.event_error(format_args!("cannot read the timer: {e}"));
            }
            self.muxer.expire(now);
        } else {
            self.muxer.on_fd_event(fd, events.event_set(), now);
        }
        if let Some(mut active) = self.active.take() {
            self.fill_rx(&mut active, now);
            self.active = Some(active);
        }
        self.muxer.sync(ops);
        if let Err(e) = self.timer.set(self.muxer.next_deadline(), now) {
            self.event_error(format_args!("cannot arm the timer: {e}"));
        }
    }
}
