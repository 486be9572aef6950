//! The virtio-net device model against plain `write`/`read` on the same TAP.
//!
//! Runs in a private network namespace ([`crate::netns`]; needs root). A
//! [`Net`] device is wired as a VMM wires it (on an event loop, behind an
//! [`MmioTransport`], initialised by this benchmark playing the driver with
//! `VIRTIO_F_VERSION_1`, `VIRTIO_NET_F_MAC` and `VIRTIO_RING_F_EVENT_IDX`,
//! no offloads) on a TAP interface that is up, with the largest MTU a TAP
//! takes (65521) and a transmit queue long enough to hold a whole round of
//! frames.
//!
//! - **TX**: each batch makes up to 256 transmit chains available (one
//!   buffer each: the 12-byte virtio-net header and the frame), kicks the
//!   transmit queue's eventfd and runs the event loop until all are used.
//!   The device gathers each chain into its own buffer and writes it to the
//!   TAP. Baseline: the same frames, header included, written to the same
//!   TAP descriptor with `write`.
//! - **RX**: the frames are first put on the TAP interface through an
//!   `AF_PACKET` socket (not timed), so they wait in the TAP's queue; then
//!   each batch makes up to 256 receive buffers available, kicks the
//!   receive queue and runs the event loop until all are used. The device
//!   reads each frame into its own buffer and copies it into the guest's.
//!   Baseline: the same frames read from the TAP descriptor with `read`.
//!
//! Only the device's side is timed (kick to last completion), the two sides
//! take turns (each first every other round), and the median round is
//! reported. Frames are Ethernet frames
//! of 1514 bytes (a 1500-byte MTU) and of 65535 bytes ("64 KiB", the
//! largest a TAP carries whole); the large ones need no segmentation
//! offload (GSO/TSO: no virtio-net header flags, no TAP offloads) because
//! the TAP's MTU is raised to 65521 and the frames are raw Ethernet frames
//! of a local experimental EtherType, which the namespace's stack drops
//! after the TAP.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ember_devices::virtio::net::{Net, NetBackend, NetConfig, NetCounters, VNET_HDR_LEN};
use ember_devices::virtio::test_utils::{memory, GuestQueue, Mem, WRITE};
use ember_devices::virtio::{feature_bit, MmioTransport};
use event_manager::SubscriberOps;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::buffers::PageBuffers;
use crate::driver::{driver_init, guest_error, kick_and_wait, manager, run_once, Manager};
use crate::netns::{in_new_netns, set_mtu, set_txqueuelen, set_up, PacketSender};
use crate::report::Figure;
use crate::stats::{in_turn, median, per_second, Better};
use crate::{Context, Error, Result};

/// The group name in reports.
pub const GROUP: &str = "net";
/// The TAP interface, inside the private namespace.
const TAP: &str = "ember-bench0";
/// EtherType of the frames (IEEE 802 local experimental).
const ETHERTYPE: u16 = 0x88b5;
/// Chains per kick: the whole queue.
const QUEUE: u16 = 256;
/// Guest memory per buffer: a header and a 64 KiB frame, page-aligned.
const SLOT_LEN: usize = 0x11000;
const SLOT: u64 = SLOT_LEN as u64;
const RX_QUEUE_BASE: u64 = 0x1000;
const TX_QUEUE_BASE: u64 = 0x4000;
const TX_BUFFERS: u64 = 0x10_0000;
const RX_BUFFERS: u64 = TX_BUFFERS + QUEUE as u64 * SLOT;
const MEM_SIZE: u64 = RX_BUFFERS + QUEUE as u64 * SLOT;
// The layout holds the largest frame, and each queue before the next area.
const _: () = assert!(SLOT_LEN >= VNET_HDR_LEN + 65535);
const _: () = assert!(RX_QUEUE_BASE + 24 * QUEUE as u64 + 12 <= TX_QUEUE_BASE);
const _: () = assert!(TX_QUEUE_BASE + 24 * QUEUE as u64 + 12 <= TX_BUFFERS);

/// The frame sizes, with their names.
pub const FRAMES: [(usize, &str); 2] = [(1514, "1514-byte frames"), (65535, "64 KiB frames")];
/// The largest MTU a TAP takes (65535 less its 14-byte Ethernet header):
/// a 65535-byte frame is the largest that needs no segmentation offload.
const MAX_TAP_MTU: i32 = 65535 - 14;

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Rounds per side; the median round is reported.
    pub rounds: usize,
    /// Frames per round of 1514-byte frames.
    pub small_frames: usize,
    /// Frames per round of 64 KiB frames.
    pub large_frames: usize,
}

impl Options {
    /// The full run, or a quick one.
    pub fn new(quick: bool) -> Options {
        if quick {
            Options {
                rounds: 2,
                small_frames: 1024,
                large_frames: 256,
            }
        } else {
            Options {
                rounds: 9,
                small_frames: 8192,
                large_frames: 1024,
            }
        }
    }
}

/// A test frame: broadcast, from a local address, [`ETHERTYPE`], then bytes.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut frame: Vec<u8> = (0..=255u8)
        .cycle()
        .take(len)
        .map(|i| i.wrapping_mul(7).wrapping_add(seed))
        .collect();
    if let Some(head) = frame.get_mut(..14) {
        head[..6].fill(0xff);
        head[6..12].copy_from_slice(&[2, 0, 0, 0, 0, seed]);
        head[12..].copy_from_slice(&ETHERTYPE.to_be_bytes());
    }
    frame
}

/// Frames per second of both sides.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rates {
    device: f64,
    raw: f64,
}

/// Runs the group in a new network namespace.
pub fn run(options: &Options) -> Result<Vec<Figure>> {
    let options = *options;
    in_new_netns(move || run_inside(options))
}

fn run_inside(options: Options) -> Result<Vec<Figure>> {
    let mut rig = Rig::new()?;
    set_mtu(TAP, MAX_TAP_MTU)?;
    let most = options.small_frames.max(options.large_frames);
    set_txqueuelen(TAP, i32::try_from(most + 256).unwrap_or(i32::MAX))?;
    set_up(TAP)?;
    let sender = PacketSender::new(TAP, ETHERTYPE)?;
    let mut raw_buffers = PageBuffers::new(usize::from(QUEUE), SLOT_LEN);
    let mut figures = Vec::new();
    for (len, name) in FRAMES {
        let count = if len > 2000 {
            options.large_frames
        } else {
            options.small_frames
        };
        let data = frame(len, 1);
        let mut tx = (Vec::new(), Vec::new());
        let mut rx = (Vec::new(), Vec::new());
        for round in 0..options.rounds {
            let mut sides = (&mut rig, &mut raw_buffers);
            let (raw, device) = in_turn(
                round,
                &mut sides,
                |(rig, buffers)| raw_tx(&*rig.tap(), buffers, &data, count),
                |(rig, _)| rig.tx(&data, count),
            )?;
            tx.1.push(per_second(count as f64, raw));
            tx.0.push(per_second(count as f64, device));

            let (raw, device) = in_turn(
                round,
                &mut sides,
                |(rig, buffers)| {
                    fill_tap(&sender, &data, count)?;
                    raw_rx(&*rig.tap(), buffers, len, count)
                },
                |(rig, _)| {
                    fill_tap(&sender, &data, count)?;
                    rig.rx(&data, count)
                },
            )?;
            rx.1.push(per_second(count as f64, raw));
            rx.0.push(per_second(count as f64, device));
        }
        for (direction, (device, raw), syscall) in [("TX", tx, "write"), ("RX", rx, "read")] {
            let rates = Rates {
                device: median(&device).unwrap_or(0.0),
                raw: median(&raw).unwrap_or(0.0),
            };
            figures.extend(net_figures(direction, name, len, rates, syscall));
        }
    }
    Ok(figures)
}

fn net_figures(
    direction: &str,
    name: &str,
    len: usize,
    rates: Rates,
    syscall: &str,
) -> [Figure; 2] {
    let mb = len as f64 / 1e6;
    let extra_us = (1.0 / rates.device - 1.0 / rates.raw) * 1e6;
    [
        Figure::new(
            GROUP,
            &format!("{direction} {name}"),
            rates.device,
            "frames/s",
            Better::Higher,
        )
        .baseline(syscall, rates.raw)
        .note(&format!("{extra_us:+.2} us/frame")),
        Figure::new(
            GROUP,
            &format!("{direction} {name}, bytes"),
            rates.device * mb,
            "MB/s",
            Better::Higher,
        )
        .baseline(syscall, rates.raw * mb)
        .note("frame bytes, without the virtio-net header"),
    ]
}

/// Puts `count` copies of `frame` in the TAP's queue.
fn fill_tap(sender: &PacketSender, frame: &[u8], count: usize) -> Result<()> {
    for _ in 0..count {
        sender.send(frame)?;
    }
    Ok(())
}

/// The TX baseline: header and frame written to the TAP, from buffers used
/// in turn.
fn raw_tx(
    tap: &dyn NetBackend,
    buffers: &mut PageBuffers,
    frame: &[u8],
    count: usize,
) -> Result<Duration> {
    let len = VNET_HDR_LEN + frame.len();
    for i in 0..usize::from(QUEUE) {
        let buf = buffers.slot(i, len);
        buf[..VNET_HDR_LEN].fill(0);
        buf[VNET_HDR_LEN..].copy_from_slice(frame);
    }
    let start = Instant::now();
    for i in 0..count {
        let n = tap.write(buffers.slot(i, len)).ctx("write to the TAP")?;
        if n != len {
            return Err(Error::Unexpected(format!(
                "TAP write of {n} of {len} bytes"
            )));
        }
    }
    Ok(start.elapsed())
}

/// The RX baseline: `count` frames of `len` bytes read from the TAP.
fn raw_rx(
    tap: &dyn NetBackend,
    buffers: &mut PageBuffers,
    len: usize,
    count: usize,
) -> Result<Duration> {
    let start = Instant::now();
    for i in 0..count {
        let n = tap
            .read(buffers.slot(i, SLOT_LEN))
            .ctx("read from the TAP")?;
        if n != VNET_HDR_LEN + len {
            return Err(Error::Unexpected(format!(
                "TAP read of {n} bytes, not {}",
                VNET_HDR_LEN + len
            )));
        }
    }
    Ok(start.elapsed())
}

/// A net device on its event loop, and the driver's side of its queues.
struct Rig {
    mem: Mem,
    manager: Manager,
    net: Arc<Mutex<Net<Mem>>>,
    rxq: GuestQueue,
    txq: GuestQueue,
    /// The queues' notification eventfds, as KVM's ioeventfds hold them.
    rx_kick: EventFd,
    tx_kick: EventFd,
    /// Kept alive: it owns the interrupt the device raises.
    _transport: MmioTransport<Mem>,
}

/// A TAP borrowed from the device (the device's own descriptor).
struct TapGuard<'a>(MutexGuard<'a, Net<Mem>>);

impl std::ops::Deref for TapGuard<'_> {
    type Target = dyn NetBackend;
    fn deref(&self) -> &Self::Target {
        self.0.backend()
    }
}

impl Rig {
    fn new() -> Result<Rig> {
        let config = NetConfig {
            iface_id: "net0".to_owned(),
            host_dev_name: TAP.to_owned(),
            guest_mac: Some([0x06, 0, 0, 0, 0, 0x42]),
            ..NetConfig::default()
        };
        let net = Arc::new(Mutex::new(Net::new(config).ctx("creating the net device")?));
        let mut manager = manager()?;
        manager.add_subscriber(net.clone());
        let mem = memory(&[(0, usize::try_from(MEM_SIZE).unwrap_or(usize::MAX))]);
        let mut transport =
            MmioTransport::new(mem.clone(), net.clone()).ctx("creating the MMIO transport")?;
        let rxq = GuestQueue::new(&mem, RX_QUEUE_BASE, QUEUE);
        let txq = GuestQueue::new(&mem, TX_QUEUE_BASE, QUEUE);
        let features = [
            VIRTIO_F_VERSION_1,
            VIRTIO_NET_F_MAC,
            VIRTIO_RING_F_EVENT_IDX,
        ]
        .into_iter()
        .fold(0, |acc, bit| acc | feature_bit(bit));
        let mut kicks = driver_init(&mut transport, features, &[&rxq, &txq])?.into_iter();
        let mut kick = || {
            kicks
                .next()
                .ok_or_else(|| Error::Unexpected("no queue eventfd".to_owned()))
        };
        let (rx_kick, tx_kick) = (kick()?, kick()?);
        let mut rig = Rig {
            mem,
            manager,
            net,
            rxq,
            txq,
            rx_kick,
            tx_kick,
            _transport: transport,
        };
        // The activation's own kicks.
        run_once(&mut rig.manager, 100)?;
        Ok(rig)
    }

    fn tap(&self) -> TapGuard<'_> {
        TapGuard(self.net.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn counters(&self) -> NetCounters {
        self.net
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counters()
    }

    /// Transmits `count` copies of `frame`; returns the device's time.
    fn tx(&mut self, frame: &[u8], count: usize) -> Result<Duration> {
        let len = VNET_HDR_LEN + frame.len();
        for i in 0..u64::from(QUEUE) {
            let at = GuestAddress(TX_BUFFERS + i * SLOT);
            self.mem
                .write_slice(&[0u8; VNET_HDR_LEN], at)
                .map_err(guest_error)?;
            let data = GuestAddress(at.0 + VNET_HDR_LEN as u64);
            self.mem.write_slice(frame, data).map_err(guest_error)?;
        }
        let before = self.counters();
        let mut total = Duration::ZERO;
        let mut left = count;
        while left > 0 {
            let n = left.min(usize::from(QUEUE));
            for i in 0..n {
                let i = u16::try_from(i).unwrap_or(0);
                let at = TX_BUFFERS + u64::from(i) * SLOT;
                self.txq
                    .add_chain(i, &[(at, u32::try_from(len).unwrap_or(0), 0)]);
            }
            let target = self
                .txq
                .used_idx()
                .wrapping_add(u16::try_from(n).unwrap_or(0));
            self.txq.set_used_event(target.wrapping_sub(1));
            total += kick_and_wait(&mut self.manager, &self.txq, &self.tx_kick, target)?;
            left -= n;
        }
        let after = self.counters();
        let sent = after.tx_frames - before.tx_frames;
        if sent != count as u64 {
            return Err(Error::Unexpected(format!(
                "the device sent {sent} of {count} frames: {after:?}"
            )));
        }
        Ok(total)
    }

    /// Receives `count` frames like `frame` waiting in the TAP; returns the
    /// device's time.
    fn rx(&mut self, frame: &[u8], count: usize) -> Result<Duration> {
        let expected = u32::try_from(VNET_HDR_LEN + frame.len()).unwrap_or(0);
        let slot = u32::try_from(SLOT).unwrap_or(0);
        let mut total = Duration::ZERO;
        let mut left = count;
        while left > 0 {
            let n = left.min(usize::from(QUEUE));
            let first_used = self.rxq.used_idx();
            for i in 0..n {
                let i = u16::try_from(i).unwrap_or(0);
                self.rxq
                    .add_chain(i, &[(RX_BUFFERS + u64::from(i) * SLOT, slot, WRITE)]);
            }
            let target = first_used.wrapping_add(u16::try_from(n).unwrap_or(0));
            self.rxq.set_used_event(target.wrapping_sub(1));
            total += kick_and_wait(&mut self.manager, &self.rxq, &self.rx_kick, target)?;
            for k in 0..n {
                let k = u16::try_from(k).unwrap_or(0);
                let (head, len) = self.rxq.used_elem(first_used.wrapping_add(k));
                if len != expected {
                    return Err(Error::Unexpected(format!(
                        "receive buffer {head} got {len} bytes, not {expected}"
                    )));
                }
            }
            left -= n;
        }
        let mut head = [0u8; 14];
        let at = GuestAddress(RX_BUFFERS + VNET_HDR_LEN as u64);
        self.mem.read_slice(&mut head, at).map_err(guest_error)?;
        if head[..] != frame[..14] {
            return Err(Error::Unexpected(format!("received frame starts {head:?}")));
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_broadcast_test_frames() {
        let f = frame(1514, 3);
        assert_eq!(f.len(), 1514);
        assert_eq!(f[..6], [0xff; 6]);
        assert_eq!(f[11], 3);
        assert_eq!(f[12..14], [0x88, 0xb5]);
        assert_eq!(frame(4, 0).len(), 4);
    }

    /// Needs root, like the device's own TAP tests.
    #[test]
    fn device_and_baseline_move_frames_in_a_namespace() {
        let options = Options {
            rounds: 1,
            small_frames: 300,
            large_frames: 20,
        };
        let figures = run(&options).unwrap();
        assert_eq!(figures.len(), 8);
        assert!(
            figures
                .iter()
                .all(|f| f.value > 0.0 && f.baseline.unwrap() > 0.0),
            "{figures:?}"
        );
    }
}
