//! The transmit path: frames from the driver's transmit chains to the TAP.
//!
//! Each chain is checked (device-readable buffers in guest memory, a
//! virtio-net header and an Ethernet header at least, at most
//! [`MAX_FRAME_LEN`] bytes of frame), charged to the rate limiter, gathered
//! into a host buffer and written to the TAP in one `write`, header
//! included, so the TAP sees exactly what the driver wrote. Every chain is
//! completed with length 0 (the device writes nothing), whatever happened
//! to the frame. A chain the limiter refuses stays at the head of the queue
//! until the limiter's timer fires.

use std::io;

use ember_ratelimit::RateLimiter;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

use super::chain::{self, ChainError, Direction, Segment};
use super::device::{admit, signal_used};
use super::{NetCounters, Tap, MAX_FRAME_LEN, MIN_FRAME_LEN, VNET_HDR_LEN};
use crate::virtio::VirtioInterrupt;

/// Most chains completed per event; the device notifies itself for the rest.
pub(super) const TX_BUDGET: usize = 256;

/// Longest transmit chain: a header and the largest frame.
const TX_BUF_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

/// What became of one chain.
enum Outcome {
    /// Completed (sent, or dropped and counted).
    Done,
    /// Refused by the rate limiter: put back.
    Throttled,
}

/// The transmit path's own state.
pub(super) struct Tx {
    pub(super) limiter: RateLimiter,
    buf: Box<[u8]>,
    segs: Vec<Segment>,
}

/// What the transmit path works with while the device is active.
pub(super) struct TxIo<'a, M> {
    pub(super) iface: &'a str,
    pub(super) tap: &'a Tap,
    pub(super) mem: &'a M,
    pub(super) queue: &'a mut Queue,
    pub(super) interrupt: &'a dyn VirtioInterrupt,
    /// The transmit queue's eventfd, to come back when the budget is spent.
    pub(super) kick: &'a EventFd,
    pub(super) counters: &'a mut NetCounters,
}

impl Tx {
    pub(super) fn new(limiter: RateLimiter) -> Tx {
        Tx {
            limiter,
            buf: vec![0u8; TX_BUF_LEN].into_boxed_slice(),
            segs: Vec::new(),
        }
    }

    /// Sends the available chains: until the queue is empty, the limiter
    /// refuses one, or the budget is spent. Notifications stay off while
    /// the device works (and while it is throttled); the driver is
    /// interrupted once at the end if it wants to be.
    pub(super) fn process<M: GuestMemory>(&mut self, mut io: TxIo<'_, M>) {
        let mut budget = TX_BUDGET;
        let mut used_any = false;
        // Set after a pass that found nothing although the ring said otherwise.
        let mut stalled = false;
        loop {
            if let Err(e) = io.queue.disable_notification(io.mem) {
                log::warn!("net {}: cannot disable notifications: {e}", io.iface);
                io.counters.event_errors += 1;
            }
            let mut progressed = false;
            let mut throttled = false;
            while budget > 0 {
                let Some(chain) = io.queue.pop_descriptor_chain(io.mem) else {
                    break;
                };
                let head = chain.head_index();
                let result = chain::collect(
                    io.mem,
                    chain,
                    Direction::Readable,
                    TX_BUF_LEN as u64,
                    &mut self.segs,
                );
                if let Outcome::Throttled = self.transmit(&mut io, head, result) {
                    io.queue.go_to_previous_position();
                    throttled = true;
                    break;
                }
                if let Err(e) = io.queue.add_used(io.mem, head, 0) {
                    log::warn!("net {}: cannot return descriptor {head}: {e}", io.iface);
                    io.counters.event_errors += 1;
                }
                budget -= 1;
                progressed = true;
                used_any = true;
            }
            // While throttled, notifications stay off: the timer resumes the
            // device. If the limiter could not arm its timer, the guest's
            // next notification has to, so notifications go back on.
            if throttled && self.limiter.is_blocked() {
                break;
            }
            if budget == 0 {
                // More may be waiting: come back through the event loop so
                // other devices get their turn.
                if let Err(e) = io.kick.write(1) {
                    log::warn!("net {}: cannot re-kick the transmit queue: {e}", io.iface);
                    io.counters.event_errors += 1;
                }
                break;
            }
            match io.queue.enable_notification(io.mem) {
                // Work arrived while notifications were off: go again. A
                // second pass in a row that finds nothing means the driver
                // published more entries than the queue holds: the ring is
                // broken and spinning on it would not help.
                Ok(true) if !throttled && (progressed || !stalled) => stalled = !progressed,
                Ok(true) if !throttled => {
                    log::warn!("net {}: invalid transmit ring index", io.iface);
                    io.counters.tx_malformed += 1;
                    break;
                }
                Ok(_) => break,
                Err(e) => {
                    log::warn!("net {}: cannot enable notifications: {e}", io.iface);
                    io.counters.event_errors += 1;
                    break;
                }
            }
        }
        if used_any {
            signal_used(io.iface, io.mem, io.queue, io.interrupt, io.counters);
        }
    }

    /// Sends the frame of a collected chain, or drops and counts it.
    fn transmit<M: GuestMemory>(
        &mut self,
        io: &mut TxIo<'_, M>,
        head: u16,
        collected: Result<u64, ChainError>,
    ) -> Outcome {
        let total = match collected {
            Ok(total) if total < (VNET_HDR_LEN + MIN_FRAME_LEN) as u64 => Err(ChainError::TooShort),
            other => other,
        };
        let total = match total.and_then(|t| usize::try_from(t).map_err(|_| ChainError::TooLong)) {
            Ok(total) => total,
            Err(ChainError::TooLong) => {
                log::debug!("net {}: transmit chain {head} too long; dropped", io.iface);
                io.counters.tx_too_big += 1;
                return Outcome::Done;
            }
            Err(e) => {
                log::debug!("net {}: malformed transmit chain {head}: {e:?}", io.iface);
                io.counters.tx_malformed += 1;
                return Outcome::Done;
            }
        };
        let frame_len = total - VNET_HDR_LEN;
        if !admit(&mut self.limiter, frame_len) {
            io.counters.tx_throttled += 1;
            return Outcome::Throttled;
        }
        if let Err(e) = chain::gather(io.mem, &self.segs, &mut self.buf) {
            log::debug!("net {}: transmit chain {head} unreadable: {e:?}", io.iface);
            io.counters.tx_malformed += 1;
            return Outcome::Done;
        }
        match write_frame(io.tap, &self.buf[..total]) {
            Ok(()) => {
                io.counters.tx_frames += 1;
                io.counters.tx_bytes += frame_len as u64;
            }
            Err(e) => {
                log::debug!("net {}: the TAP refused a frame: {e}", io.iface);
                io.counters.tx_tap_errors += 1;
            }
        }
        Outcome::Done
    }
}

/// Writes one frame to the TAP; a short write is an error (the TAP takes
/// frames whole).
fn write_frame(tap: &Tap, frame: &[u8]) -> io::Result<()> {
    loop {
        match tap.write(frame) {
            Ok(n) if n == frame.len() => return Ok(()),
            Ok(n) => {
                return Err(io::Error::other(format!(
                    "short write: {n} of {} bytes",
                    frame.len()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
