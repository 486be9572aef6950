//! The transmit path: frames from the driver's transmit chains to the TAP.
//!
//! Each chain is checked (device-readable buffers in guest memory, a
//! virtio-net header and an Ethernet header at least, at most
//! [`MAX_FRAME_LEN`] bytes of frame), charged to the rate limiter and
//! written to the TAP in one `writev` straight from the guest's buffers,
//! header included (one write is one frame), so the TAP sees exactly what
//! the driver wrote. Only a chain of more buffers than one `writev` takes
//! is gathered into a host buffer first. Every chain is completed with
//! length 0 (the device writes nothing), whatever happened to the frame. A
//! chain the limiter refuses stays at the head of the queue until the
//! limiter's timer fires.

use std::io;

use ember_mmds::net::{is_mmds_frame, MmdsStack};
use ember_ratelimit::RateLimiter;
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

use super::chain::{self, ChainError, Direction};
use super::device::{admit, signal_used};
use super::{NetBackend, NetCounters, MAX_FRAME_LEN, MIN_FRAME_LEN, VNET_HDR_LEN};
use crate::virtio::common::Pass;
use crate::virtio::iov::{GuestIoVecs, GuestRegions, IoVecBuf, IOV_MAX};
use crate::virtio::ring::Ring;
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
    /// For the rare chain of more than `IOV_MAX` buffers (allocated then).
    buf: Vec<u8>,
    iovs: IoVecBuf,
}

/// What the transmit path works with while the device is active.
pub(super) struct TxIo<'a, M: GuestMemory> {
    pub(super) iface: &'a str,
    pub(super) backend: &'a dyn NetBackend,
    pub(super) mem: &'a M,
    pub(super) ring: Ring<'a, 'a, M>,
    pub(super) interrupt: &'a dyn VirtioInterrupt,
    /// The transmit queue's eventfd, to come back when the budget is spent.
    pub(super) kick: &'a EventFd,
    /// The MMDS stack, if this interface answers for it.
    pub(super) mmds: Option<&'a mut MmdsStack>,
    pub(super) counters: &'a mut NetCounters,
}

impl Tx {
    pub(super) fn new(limiter: RateLimiter) -> Tx {
        Tx {
            limiter,
            buf: Vec::new(),
            iovs: IoVecBuf::default(),
        }
    }

    /// Sends the available chains: until the queue is empty, the limiter
    /// refuses one, or the budget is spent. Notifications stay off while
    /// the device works (and while it is throttled); the driver is
    /// interrupted once at the end if it wants to be.
    pub(super) fn process<M: GuestMemory>(&mut self, mut io: TxIo<'_, M>) {
        let mut budget = TX_BUDGET;
        let guest = GuestRegions::new(io.mem);
        let mut used_any = false;
        // Set after a pass that found nothing although the ring said otherwise.
        let mut stalled = false;
        loop {
            if let Err(e) = io.ring.disable_notification() {
                log::warn!("net {}: cannot disable notifications: {e}", io.iface);
                io.counters.event_errors += 1;
            }
            let pass = self.send_available(&mut io, &guest, &mut budget);
            used_any |= pass.progressed;
            // While throttled, notifications stay off: the timer resumes the
            // device. If the limiter could not arm its timer, the guest's
            // next notification has to, so notifications go back on.
            if pass.throttled && self.limiter.is_blocked() {
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
            match io.ring.enable_notification() {
                // Work arrived while notifications were off: go again. A
                // second pass in a row that finds nothing means the driver
                // published more entries than the queue holds: the ring is
                // broken and spinning on it would not help.
                Ok(true) if !pass.throttled && (pass.progressed || !stalled) => {
                    stalled = !pass.progressed;
                }
                Ok(true) if !pass.throttled => {
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
            signal_used(io.iface, &mut io.ring, io.interrupt, io.counters);
        }
    }

    /// One pass over the available chains: sends (or drops) each and
    /// returns it to the driver, until the ring is empty, `budget` is
    /// spent or the limiter refuses a frame (whose chain is left for later).
    fn send_available<M: GuestMemory>(
        &mut self,
        io: &mut TxIo<'_, M>,
        guest: &GuestRegions<'_, M>,
        budget: &mut usize,
    ) -> Pass {
        let mut pass = Pass::default();
        while *budget > 0 {
            let Some(chain) = io.ring.pop() else {
                break;
            };
            let head = chain.head_index();
            let mut iovs = self.iovs.start();
            let result = chain::collect(
                guest,
                chain,
                Direction::Readable,
                TX_BUF_LEN as u64,
                &mut iovs,
            );
            let outcome = transmit(&mut self.limiter, &mut self.buf, io, head, result, &iovs);
            drop(iovs);
            if let Outcome::Throttled = outcome {
                io.ring.go_to_previous_position();
                pass.throttled = true;
                break;
            }
            if let Err(e) = io.ring.add_used(head, 0) {
                log::warn!("net {}: cannot return descriptor {head}: {e}", io.iface);
                io.counters.event_errors += 1;
            }
            *budget -= 1;
            pass.progressed = true;
        }
        pass
    }
}

/// Sends the frame of a collected chain (its buffers are `iovs`), or drops
/// and counts it.
fn transmit<M: GuestMemory>(
    limiter: &mut RateLimiter,
    buf: &mut Vec<u8>,
    io: &mut TxIo<'_, M>,
    head: u16,
    collected: Result<u64, ChainError>,
    iovs: &GuestIoVecs<'_, '_>,
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
    if !admit(limiter, frame_len) {
        io.counters.tx_throttled += 1;
        return Outcome::Throttled;
    }
    if detour_to_mmds(buf, io, total, iovs) {
        return Outcome::Done;
    }
    let sent = if iovs.count() <= IOV_MAX {
        write_frame(total, || iovs.writev(io.backend))
    } else {
        // More buffers than one writev takes: one frame must be one write.
        buf.resize(TX_BUF_LEN, 0);
        let n = iovs.copy_to(0, &mut buf[..total]);
        write_frame(total, || io.backend.write(&buf[..n]))
    };
    match sent {
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

/// Gives the frame to the MMDS stack if it is for the MMDS; whether it was.
/// Only the headers are copied to decide, the frame only if it is taken.
fn detour_to_mmds<M: GuestMemory>(
    buf: &mut Vec<u8>,
    io: &mut TxIo<'_, M>,
    total: usize,
    iovs: &GuestIoVecs<'_, '_>,
) -> bool {
    let Some(mmds) = io.mmds.as_deref_mut() else {
        return false;
    };
    // Ethernet, then an ARP body (28 bytes) or an IPv4 header (20).
    let mut head = [0u8; VNET_HDR_LEN + MIN_FRAME_LEN + 28];
    let n = iovs.copy_to(0, &mut head[..total.min(VNET_HDR_LEN + MIN_FRAME_LEN + 28)]);
    if !is_mmds_frame(&head[VNET_HDR_LEN..n], mmds.address()) {
        return false;
    }
    buf.resize(TX_BUF_LEN, 0);
    let n = iovs.copy_to(0, &mut buf[..total]);
    mmds.detour(&buf[VNET_HDR_LEN..n])
}

/// Writes one frame of `len` bytes to the TAP with `write`; a short write
/// is an error (the TAP takes frames whole).
fn write_frame(len: usize, mut write: impl FnMut() -> io::Result<usize>) -> io::Result<()> {
    loop {
        match write() {
            Ok(n) if n == len => return Ok(()),
            Ok(n) => return Err(io::Error::other(format!("short write: {n} of {len} bytes"))),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
