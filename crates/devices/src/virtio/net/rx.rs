//! The receive path: frames read from the TAP into the driver's receive
//! buffers.
//!
//! The TAP is watched for readability only while the device can take a
//! frame. A frame is read into a host buffer (so its length is known before
//! any guest memory is touched), charged to the rate limiter, and copied
//! into the chain at the head of the receive queue, header and frame
//! together (no mergeable buffers). When the queue is empty the frame stays
//! in the host buffer, the TAP is no longer watched, and the driver's next
//! notification of the receive queue resumes the path: no busy loop. When
//! the limiter refuses the frame, its timer resumes the path instead.

use std::io;

use ember_mmds::net::MmdsStack;
use ember_ratelimit::RateLimiter;
use event_manager::{EventOps, EventSet, Events};
use vm_memory::GuestMemory;

use super::chain::{self, Direction};
use super::device::{admit, signal_used};
use super::{NetBackend, NetCounters, MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::virtio::iov::{GuestRegions, IoVecBuf};
use crate::virtio::ring::Ring;
use crate::virtio::VirtioInterrupt;

/// Most frames handled per event; the level-triggered TAP brings the
/// device back for the rest.
pub(super) const RX_BUDGET: usize = 64;

/// The host buffer holds the largest frame plus one byte, so that a frame
/// the kernel had to truncate is recognised as too big.
const RX_BUF_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN + 1;

/// Offset of `num_buffers` in the virtio-net header.
const NUM_BUFFERS_OFFSET: usize = 10;

/// A frame in the host buffer, waiting for a receive buffer.
#[derive(Clone, Copy, Debug)]
struct Pending {
    /// Length with the virtio-net header.
    len: usize,
    /// Whether the rate limiter already let it through.
    admitted: bool,
}

/// What a read from the TAP gave.
enum Read {
    /// A frame, now pending.
    Frame(Pending),
    /// Nothing queued.
    Empty,
    /// An error (counted).
    Failed,
}

/// What happened to the pending frame.
enum Delivery {
    Delivered,
    TooBig,
    /// The queue ran out of chains; `consumed`: after returning unusable ones.
    NoBuffer {
        consumed: bool,
    },
}

/// The receive path's own state.
pub(super) struct Rx {
    pub(super) limiter: RateLimiter,
    buf: Box<[u8]>,
    pending: Option<Pending>,
    iovs: IoVecBuf,
    /// Whether the TAP is watched for readability.
    polling: bool,
    /// Whether the TAP left the event loop for good (it reported an error).
    detached: bool,
}

/// What the receive path works with while the device is active.
pub(super) struct RxIo<'a, M: GuestMemory> {
    pub(super) iface: &'a str,
    pub(super) backend: &'a dyn NetBackend,
    pub(super) mem: &'a M,
    pub(super) ring: Ring<'a, 'a, M>,
    pub(super) interrupt: &'a dyn VirtioInterrupt,
    /// Whether the driver accepted `VIRTIO_NET_F_GUEST_CSUM`.
    pub(super) guest_csum: bool,
    /// The MMDS stack, whose replies go ahead of the TAP's frames.
    pub(super) mmds: Option<&'a mut MmdsStack>,
    pub(super) counters: &'a mut NetCounters,
}

impl Rx {
    pub(super) fn new(limiter: RateLimiter) -> Rx {
        Rx {
            limiter,
            buf: vec![0u8; RX_BUF_LEN].into_boxed_slice(),
            pending: None,
            iovs: IoVecBuf::default(),
            polling: false,
            detached: false,
        }
    }

    /// The length of the frame waiting in the host buffer, if any.
    pub(super) fn pending_len(&self) -> Option<usize> {
        self.pending.map(|p| p.len)
    }

    /// Forgets the waiting frame (device reset); whether there was one.
    pub(super) fn drop_pending(&mut self) -> bool {
        self.pending.take().is_some()
    }

    /// Watches the TAP for readability, or stops.
    pub(super) fn set_polling(
        &mut self,
        backend: &dyn NetBackend,
        ops: &mut EventOps,
        on: bool,
        counters: &mut NetCounters,
    ) {
        if self.polling == on || self.detached {
            return;
        }
        let events = if on { EventSet::IN } else { EventSet::empty() };
        match ops.modify(Events::new_raw(backend.as_raw_fd(), events)) {
            Ok(()) => self.polling = on,
            Err(e) => {
                log::warn!("net: cannot change the TAP's event registration: {e:?}");
                counters.event_errors += 1;
            }
        }
    }

    /// Takes the TAP out of the event loop for good.
    pub(super) fn detach(
        &mut self,
        backend: &dyn NetBackend,
        ops: &mut EventOps,
        counters: &mut NetCounters,
    ) {
        if self.detached {
            return;
        }
        if let Err(e) = ops.remove(Events::empty_raw(backend.as_raw_fd())) {
            log::warn!("net: cannot remove the TAP from the event loop: {e:?}");
            counters.event_errors += 1;
        }
        self.detached = true;
        self.polling = false;
    }

    /// Moves frames from the TAP to the guest until the TAP is empty, the
    /// guest has no buffer, the limiter says stop or the budget is spent;
    /// interrupts the driver once at the end if it wants to be.
    pub(super) fn process<M: GuestMemory>(&mut self, mut io: RxIo<'_, M>, ops: &mut EventOps) {
        let mut used = false;
        // Set when the queue yielded nothing but then claimed to have
        // buffers, until a chain is taken from it.
        let mut rechecked = false;
        let mut budget = RX_BUDGET;
        loop {
            if budget == 0 {
                // More frames may be queued: the level-triggered TAP brings
                // the device back after the other event sources had a turn.
                self.set_polling(io.backend, ops, true, io.counters);
                break;
            }
            budget -= 1;
            let Some(pending) = self.admitted_frame(&mut io, ops) else {
                break;
            };
            match self.deliver(&mut io, pending.len, &mut used) {
                Delivery::Delivered => {
                    rechecked = false;
                    io.counters.rx_frames += 1;
                    io.counters.rx_bytes += (pending.len - VNET_HDR_LEN) as u64;
                    self.pending = None;
                }
                Delivery::TooBig => {
                    log::debug!(
                        "net {}: {}-byte frame does not fit the receive buffer; dropped",
                        io.iface,
                        pending.len - VNET_HDR_LEN
                    );
                    io.counters.rx_too_big += 1;
                    self.pending = None;
                    rechecked = false;
                }
                Delivery::NoBuffer { consumed } => {
                    if self.buffers_worth_a_retry(&mut io, consumed, &mut rechecked) {
                        continue;
                    }
                    self.set_polling(io.backend, ops, false, io.counters);
                    break;
                }
            }
        }
        if used {
            signal_used(io.iface, &mut io.ring, io.interrupt, io.counters);
        }
    }

    /// The frame to deliver next (the one waiting, or one read now),
    /// charged to the limiter once. `None`, with the TAP's polling set for
    /// what wakes the device next, if there is none or the limiter refuses it.
    fn admitted_frame<M: GuestMemory>(
        &mut self,
        io: &mut RxIo<'_, M>,
        ops: &mut EventOps,
    ) -> Option<Pending> {
        let pending = match self.pending {
            Some(pending) => pending,
            None => match self.read_frame(io) {
                Read::Frame(pending) => pending,
                Read::Empty => {
                    self.set_polling(io.backend, ops, true, io.counters);
                    return None;
                }
                Read::Failed => {
                    // Reading again at once would most likely fail again:
                    // the next notification of the receive queue retries.
                    self.set_polling(io.backend, ops, false, io.counters);
                    return None;
                }
            },
        };
        if !pending.admitted {
            if !admit(&mut self.limiter, pending.len - VNET_HDR_LEN) {
                io.counters.rx_throttled += 1;
                self.set_polling(io.backend, ops, false, io.counters);
                return None;
            }
            self.pending = Some(Pending {
                admitted: true,
                ..pending
            });
        }
        Some(pending)
    }

    /// After the queue had no buffer for a frame (`consumed`: chains were
    /// taken from it meanwhile): whether buffers arrived since, so delivery
    /// is worth another try. Counts the frame as waiting for a buffer if not.
    fn buffers_worth_a_retry<M: GuestMemory>(
        &mut self,
        io: &mut RxIo<'_, M>,
        consumed: bool,
        rechecked: &mut bool,
    ) -> bool {
        // Each check also tells the driver (EVENT_IDX) from which index on
        // to notify: it is redone after chains were taken, so that index is
        // the current one.
        if consumed {
            *rechecked = false;
        }
        if !*rechecked && self.buffers_arrived(io) {
            *rechecked = true;
            return true;
        }
        if *rechecked {
            // The ring said there were buffers, twice, and had none: its
            // index is beyond what the queue holds.
            log::warn!("net {}: invalid receive ring index", io.iface);
            io.counters.rx_malformed += 1;
        }
        io.counters.rx_no_buffer += 1;
        false
    }

    /// Reads the next frame into the host buffer: an MMDS reply if one
    /// waits, else a frame from the TAP.
    fn read_frame<M: GuestMemory>(&mut self, io: &mut RxIo<'_, M>) -> Read {
        if let Some(frame) = io.mmds.as_deref_mut().and_then(MmdsStack::next_reply) {
            // Replies are at most an Ethernet MTU long: they fit.
            let len = (VNET_HDR_LEN + frame.len()).min(self.buf.len());
            self.buf[..VNET_HDR_LEN].fill(0);
            self.buf[VNET_HDR_LEN..len].copy_from_slice(&frame[..len - VNET_HDR_LEN]);
            let pending = Pending {
                len,
                admitted: false,
            };
            self.pending = Some(pending);
            return Read::Frame(pending);
        }
        loop {
            match io.backend.read(&mut self.buf) {
                Ok(len) if len < VNET_HDR_LEN => {
                    log::debug!("net {}: {len}-byte read from the TAP dropped", io.iface);
                    io.counters.rx_dropped += 1;
                }
                Ok(len) => {
                    let pending = Pending {
                        len,
                        admitted: false,
                    };
                    self.pending = Some(pending);
                    return Read::Frame(pending);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read::Empty,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("net {}: cannot read from the TAP: {e}", io.iface);
                    io.counters.rx_tap_errors += 1;
                    return Read::Failed;
                }
            }
        }
    }

    /// Re-enables queue notifications (so that the driver's next buffer
    /// wakes the device) and tells whether buffers arrived meanwhile.
    fn buffers_arrived<M: GuestMemory>(&mut self, io: &mut RxIo<'_, M>) -> bool {
        match io.ring.enable_notification() {
            Ok(arrived) => arrived,
            Err(e) => {
                log::warn!("net {}: cannot enable notifications: {e}", io.iface);
                io.counters.event_errors += 1;
                false
            }
        }
    }

    /// Copies the pending frame (`len` bytes with its header) into the chain
    /// at the head of the queue. Unusable chains are returned with length 0
    /// on the way; a usable one too small for the frame stays at the head.
    fn deliver<M: GuestMemory>(
        &mut self,
        io: &mut RxIo<'_, M>,
        len: usize,
        used: &mut bool,
    ) -> Delivery {
        if len > VNET_HDR_LEN + MAX_FRAME_LEN {
            return Delivery::TooBig;
        }
        self.prepare_header(io.guest_csum);
        let frame = &self.buf[..len];
        let guest = GuestRegions::new(io.mem);
        let mut consumed = false;
        loop {
            let Some(chain) = io.ring.pop() else {
                return Delivery::NoBuffer { consumed };
            };
            let head = chain.head_index();
            let mut iovs = self.iovs.start();
            let result = chain::collect(&guest, chain, Direction::Writable, u64::MAX, &mut iovs);
            let written = match result {
                Ok(capacity) if capacity < VNET_HDR_LEN as u64 => Err(chain::ChainError::TooShort),
                Ok(capacity) if capacity < len as u64 => {
                    io.ring.go_to_previous_position();
                    return Delivery::TooBig;
                }
                Ok(_) => Ok(iovs.copy_from(0, frame)),
                Err(e) => Err(e),
            };
            drop(iovs);
            let used_len = match written {
                Ok(n) => u32::try_from(n).unwrap_or(0),
                Err(e) => {
                    log::debug!("net {}: unusable receive chain {head}: {e:?}", io.iface);
                    io.counters.rx_malformed += 1;
                    0
                }
            };
            if let Err(e) = io.ring.add_used(head, used_len) {
                log::warn!("net {}: cannot return descriptor {head}: {e}", io.iface);
                io.counters.event_errors += 1;
            }
            *used = true;
            if written.is_ok() {
                return Delivery::Delivered;
            }
            consumed = true;
        }
    }

    /// Makes the header in the host buffer what the driver may see:
    /// `num_buffers` is 1, and without `GUEST_CSUM` there is no checksum or
    /// segmentation information (the TAP offloads are off then, so there is
    /// none to lose).
    fn prepare_header(&mut self, guest_csum: bool) {
        if !guest_csum {
            self.buf[..NUM_BUFFERS_OFFSET].fill(0);
        }
        self.buf[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
    }
}
