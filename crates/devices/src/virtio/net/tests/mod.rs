//! virtio-net driven the way a guest drives it: frames laid out in real
//! virtqueues in guest memory, notifications through the event loop, and a
//! real TAP interface whose other side is an `AF_PACKET` socket. Every test
//! runs in its own network namespace (see [`host::in_netns`]).
//!
//! - `datapath`: frames in both directions, buffers, two interfaces,
//!   configuration space, offloads, reset.
//! - `hostile`: malformed chains and rings.
//! - `mmds`: frames for the MMDS answered by the device.
//! - `ratelimit`: the two rate limiters.
//! - `transport`: the whole MMIO handshake.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod backend;
mod datapath;
pub(crate) mod host;
mod hostile;
mod mmds;
mod ratelimit;
mod snapshot;
mod transport;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::SubscriberOps;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use self::host::HostPort;
use super::*;
use crate::virtio::test_utils::{
    guest_bytes, memory, notify_queue, run_until_used, Areas, GuestQueue, Manager, Mem, WRITE,
};
use crate::virtio::{feature_bit, IrqTrigger, VirtioDevice};

pub(crate) const MEM_SIZE: usize = 0x40_0000;
const RX_BASE: u64 = 0x1000;
const TX_BASE: u64 = 0x4000;
/// Buffers are allocated upwards from here.
const AREA_START: u64 = 0x1_0000;
/// The guest MAC the harness configures.
pub(crate) const MAC: MacAddr = [0x06, 0xe0, 0x00, 0x00, 0x00, 0x01];
/// A virtio-net header with nothing in it.
pub(crate) const ZERO_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
/// The header the device writes for a plain frame: `num_buffers` = 1.
pub(crate) const RX_HDR: [u8; VNET_HDR_LEN] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// The basic features a driver accepts.
pub(crate) fn basic_features() -> u64 {
    feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_NET_F_MAC)
}

/// A net device on a TAP named `tap`, as the harness configures it.
pub(crate) fn net_config(tap: &str) -> NetConfig {
    NetConfig {
        iface_id: "eth0".to_owned(),
        host_dev_name: tap.to_owned(),
        guest_mac: Some(MAC),
        ..NetConfig::default()
    }
}

/// A receive buffer the test posted: (head, guest address, length).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RxBuf {
    pub(crate) head: u16,
    pub(crate) addr: u64,
}

/// A net device on an event loop, with the guest side of its queues and
/// the host side of its TAP. Build it inside [`host::in_netns`].
pub(crate) struct Harness {
    pub(crate) mem: Mem,
    pub(crate) rxq: GuestQueue,
    pub(crate) txq: GuestQueue,
    pub(crate) net: Arc<Mutex<Net<Mem>>>,
    pub(crate) manager: Manager,
    pub(crate) irq: Arc<IrqTrigger>,
    pub(crate) port: HostPort,
    next_rx_desc: u16,
    next_tx_desc: u16,
    areas: Areas,
}

impl Harness {
    /// An inactive device on TAP `tap`, configured by `configure`.
    pub(crate) fn inactive(tap: &str, configure: impl FnOnce(&mut NetConfig)) -> Harness {
        let mut config = net_config(tap);
        configure(&mut config);
        let net = Arc::new(Mutex::new(Net::new(config).unwrap()));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(net.clone());
        let port = HostPort::new(tap);
        let mem = memory(&[(0, MEM_SIZE)]);
        Harness {
            rxq: GuestQueue::new(&mem, RX_BASE, QUEUE_SIZE),
            txq: GuestQueue::new(&mem, TX_BASE, QUEUE_SIZE),
            mem,
            net,
            manager,
            irq: Arc::new(IrqTrigger::new().unwrap()),
            port,
            next_rx_desc: 0,
            next_tx_desc: 0,
            areas: Areas::new(AREA_START),
        }
    }

    /// An active device (basic features) on TAP `tap`, whose activation
    /// the event loop has seen.
    pub(crate) fn new(tap: &str, configure: impl FnOnce(&mut NetConfig)) -> Harness {
        let mut h = Harness::inactive(tap, configure);
        h.activate(basic_features());
        h.run_once();
        h
    }

    /// Activates the device with `features`, as DRIVER_OK does.
    pub(crate) fn activate(&mut self, features: u64) {
        let event_idx = features & feature_bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        let queues = [&self.rxq, &self.txq].map(|gq| {
            let mut q = gq.device_queue(QUEUE_SIZE);
            q.set_event_idx(event_idx);
            q
        });
        self.net
            .lock()
            .unwrap()
            .activate(self.mem.clone(), queues.into(), self.irq.clone(), features)
            .unwrap();
    }

    /// `len` bytes of guest memory nobody else uses.
    pub(crate) fn area(&mut self, len: u32) -> u64 {
        self.areas.take(len)
    }

    /// Makes `descs` available on the receive queue as one chain.
    pub(crate) fn rx_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_rx_desc;
        self.next_rx_desc += descs.len() as u16;
        self.rxq.add_chain(head, descs)
    }

    /// Makes `descs` available on the transmit queue as one chain.
    pub(crate) fn tx_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_tx_desc;
        self.next_tx_desc += descs.len() as u16;
        self.txq.add_chain(head, descs)
    }

    /// Posts a `len`-byte receive buffer (one descriptor), filled with 0xa5.
    pub(crate) fn post_rx(&mut self, len: u32) -> RxBuf {
        let addr = self.area(len);
        self.mem
            .write_slice(&vec![0xa5; len as usize], GuestAddress(addr))
            .unwrap();
        let head = self.rx_chain(&[(addr, len, WRITE)]);
        RxBuf { head, addr }
    }

    /// Queues `header` and `frame` for transmission, in two descriptors.
    pub(crate) fn queue_tx(&mut self, header: &[u8], frame: &[u8]) -> u16 {
        let hdr = self.area(header.len() as u32);
        self.mem.write_slice(header, GuestAddress(hdr)).unwrap();
        let data = self.area(frame.len() as u32);
        self.mem.write_slice(frame, GuestAddress(data)).unwrap();
        self.tx_chain(&[(hdr, header.len() as u32, 0), (data, frame.len() as u32, 0)])
    }

    /// Notifies queue `queue`, as the guest's QueueNotify write through an
    /// ioeventfd does, and runs the event loop once.
    pub(crate) fn kick(&mut self, queue: usize) {
        notify_queue(&self.net, queue);
        self.run_once();
    }

    /// Runs the event loop once, waiting up to a second for an event.
    pub(crate) fn run_once(&mut self) -> usize {
        self.manager.run_with_timeout(1000).unwrap()
    }

    /// Runs the event loop for `time`; returns the wake-ups that dispatched
    /// at least one event.
    pub(crate) fn run_for(&mut self, time: Duration) -> usize {
        let deadline = Instant::now() + time;
        let mut wakeups = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return wakeups;
            }
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            if self.manager.run_with_timeout(ms).unwrap() > 0 {
                wakeups += 1;
            }
        }
    }

    /// Runs the event loop until the receive queue has `n` used entries;
    /// returns the wake-ups it took.
    pub(crate) fn run_until_rx_used(&mut self, n: u16, limit: Duration) -> usize {
        run_until_used(&mut self.manager, &self.rxq, n, limit)
    }

    /// Runs the event loop until the transmit queue has `n` used entries;
    /// returns the wake-ups it took.
    pub(crate) fn run_until_tx_used(&mut self, n: u16, limit: Duration) -> usize {
        run_until_used(&mut self.manager, &self.txq, n, limit)
    }

    /// Guest bytes.
    pub(crate) fn guest_bytes(&self, at: u64, len: usize) -> Vec<u8> {
        guest_bytes(&self.mem, at, len)
    }

    /// The `i`th receive completion: its buffer's head and the header and
    /// frame written into `buf`, checked against the used length.
    pub(crate) fn received(&self, i: u16, buf: RxBuf) -> ([u8; VNET_HDR_LEN], Vec<u8>) {
        let (head, len) = self.rxq.used_elem(i);
        assert_eq!(head, u32::from(buf.head), "completion {i}");
        let bytes = self.guest_bytes(buf.addr, len as usize);
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr.copy_from_slice(&bytes[..VNET_HDR_LEN]);
        (hdr, bytes[VNET_HDR_LEN..].to_vec())
    }

    pub(crate) fn counters(&self) -> NetCounters {
        self.net.lock().unwrap().counters()
    }

    /// Asserts that no test frame reaches the host within `wait`.
    pub(crate) fn assert_no_host_frame(&self, wait: Duration) {
        if let Some(frame) = self.port.recv_within(wait).unwrap() {
            panic!("unexpected {}-byte frame on the TAP", frame.len());
        }
    }
}
