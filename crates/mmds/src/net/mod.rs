//! The guest side of MMDS: the frames a guest sends to the MMDS address
//! (and ARP requests for it) are answered here, never reaching the host.
//! smoltcp does Ethernet, ARP, IPv4 and TCP; [`http`] answers the requests.
//!
//! Everything a guest sends is bounded: at most [`MAX_CONNECTIONS`] TCP
//! connections (half-open ones included; the oldest is dropped for a new
//! one), [`CONN_RX_BUF`] and [`CONN_TX_BUF`] bytes of socket buffers and
//! [`http::MAX_REQUEST_LEN`] bytes of request per connection, one answer in
//! flight per connection, and [`phy::MAX_QUEUED_REPLIES`] reply frames.

pub mod http;
pub mod phy;
mod pool;
#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use smoltcp::iface::{Config, Interface};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use self::phy::FramePipe;
use self::pool::Pool;
use crate::Mmds;

/// The MMDS's own MAC address (Firecracker's).
pub const MMDS_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
/// The TCP port the MMDS listens on.
pub const MMDS_PORT: u16 = 80;
/// Most TCP connections (in any state but closed) at once.
pub const MAX_CONNECTIONS: usize = 128;
/// Receive buffer of a connection (bounds the window the guest gets).
pub const CONN_RX_BUF: usize = 4096;
/// Send buffer of a connection.
pub const CONN_TX_BUF: usize = 16384;

const ETH_HDR: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const IPPROTO_TCP: u8 = 6;

/// Firecracker's `mmds` metrics group, counted by one stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmdsNetCounters {
    /// Frames taken from the guest for the MMDS.
    pub rx_accepted: u64,
    /// Frames taken but dropped (reply queue full).
    pub rx_accepted_err: u64,
    /// IPv4 packets to the MMDS that are not TCP.
    pub rx_accepted_unusual: u64,
    /// Frames too short for an Ethernet header.
    pub rx_bad_eth: u64,
    /// Requests answered.
    pub rx_count: u64,
    /// `GET`s with an invalid token.
    pub rx_invalid_token: u64,
    /// `GET`s without a token.
    pub rx_no_token: u64,
    /// Reply bytes handed to the guest.
    pub tx_bytes: u64,
    /// Answers sent.
    pub tx_count: u64,
    /// Reply frames dropped.
    pub tx_errors: u64,
    /// Reply frames handed to the guest.
    pub tx_frames: u64,
    /// TCP connections opened.
    pub connections_created: u64,
    /// TCP connections closed or dropped.
    pub connections_destroyed: u64,
}

impl MmdsNetCounters {
    /// The counters under Firecracker's names in its `mmds` group.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("rx_accepted", self.rx_accepted),
            ("rx_accepted_err", self.rx_accepted_err),
            ("rx_accepted_unusual", self.rx_accepted_unusual),
            ("rx_bad_eth", self.rx_bad_eth),
            ("rx_count", self.rx_count),
            ("rx_invalid_token", self.rx_invalid_token),
            ("rx_no_token", self.rx_no_token),
            ("tx_bytes", self.tx_bytes),
            ("tx_count", self.tx_count),
            ("tx_errors", self.tx_errors),
            ("tx_frames", self.tx_frames),
            ("connections_created", self.connections_created),
            ("connections_destroyed", self.connections_destroyed),
        ]
    }
}

/// One interface's MMDS network stack.
pub struct MmdsStack {
    address: Ipv4Addr,
    iface: Interface,
    pipe: FramePipe,
    pool: Pool,
    store: Arc<Mutex<Mmds>>,
    epoch: std::time::Instant,
    /// The last guest (MAC, IPv4) taught to the neighbour cache.
    guest: Option<([u8; 6], [u8; 4])>,
    counters: MmdsNetCounters,
}

impl std::fmt::Debug for MmdsStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmdsStack")
            .field("address", &self.address)
            .field("connections", &self.pool.len())
            .field("queued_replies", &self.pipe.replies.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Whether `frame` is for the MMDS at `address`: an IPv4 packet to it or an
/// ARP request for it.
pub fn is_mmds_frame(frame: &[u8], address: Ipv4Addr) -> bool {
    let Some(payload) = frame.get(ETH_HDR..) else {
        return false;
    };
    match u16::from_be_bytes([frame[12], frame[13]]) {
        // ARP for Ethernet/IPv4: operation at 6, target protocol address at 24.
        ETHERTYPE_ARP => {
            payload.get(6..8) == Some(&[0, 1]) && payload.get(24..28) == Some(&address.octets())
        }
        ETHERTYPE_IPV4 => payload.get(16..20) == Some(&address.octets()),
        _ => false,
    }
}

impl MmdsStack {
    /// A stack answering at `address` from `store`.
    pub fn new(store: Arc<Mutex<Mmds>>, address: Ipv4Addr) -> MmdsStack {
        let mut seed = [0u8; 8];
        // Should the generator fail, a fixed seed only makes initial
        // sequence numbers guessable.
        let _ = getrandom::fill(&mut seed);
        MmdsStack::with_seed(store, address, u64::from_le_bytes(seed))
    }

    /// A stack whose TCP initial sequence numbers come from `seed`
    /// (reproducible runs: fuzzing, tests).
    pub fn with_seed(store: Arc<Mutex<Mmds>>, address: Ipv4Addr, seed: u64) -> MmdsStack {
        let mut pipe = FramePipe::default();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(MMDS_MAC)));
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut pipe, Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            // A /0 prefix: the guest's address, whatever it is, is on-link.
            let _ = addrs.push(IpCidr::new(address.into(), 0));
        });
        MmdsStack {
            address,
            iface,
            pipe,
            pool: Pool::default(),
            store,
            epoch: std::time::Instant::now(),
            guest: None,
            counters: MmdsNetCounters::default(),
        }
    }

    /// The MMDS address.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The counters.
    pub fn counters(&self) -> MmdsNetCounters {
        MmdsNetCounters {
            tx_errors: self.pipe.dropped_replies,
            ..self.counters
        }
    }

    /// Open (or half-open, or closing) connections.
    pub fn connections(&self) -> usize {
        self.pool.len()
    }

    /// Reply frames waiting for the guest.
    pub fn queued_replies(&self) -> usize {
        self.pipe.replies.len()
    }

    fn now(&self) -> Instant {
        let micros = i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX);
        Instant::from_micros(micros)
    }

    /// Takes `frame` if it is for the MMDS ([`is_mmds_frame`]) and returns
    /// whether it did; a frame taken never goes anywhere else.
    pub fn detour(&mut self, frame: &[u8]) -> bool {
        if frame.len() < ETH_HDR {
            self.counters.rx_bad_eth += 1;
            return false;
        }
        if !is_mmds_frame(frame, self.address) {
            return false;
        }
        self.counters.rx_accepted += 1;
        self.take(frame);
        true
    }

    fn take(&mut self, frame: &[u8]) {
        if self.pipe.replies.len() >= phy::MAX_QUEUED_REPLIES {
            self.counters.rx_accepted_err += 1;
            return;
        }
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        if ethertype == ETHERTYPE_IPV4 {
            if frame.get(ETH_HDR + 9) != Some(&IPPROTO_TCP) {
                self.counters.rx_accepted_unusual += 1;
                return;
            }
            self.learn_guest(frame);
        }
        self.pool.keep_listener(&mut self.counters);
        self.pipe.inbound = Some(frame.to_vec());
        self.poll();
    }

    /// Teaches the neighbour cache the guest's MAC for its IPv4 source
    /// address (as a guest's ARP request would), so that replies need no
    /// ARP exchange of their own.
    fn learn_guest(&mut self, frame: &[u8]) {
        let (Some(mac), Some(ip)) = (frame.get(6..12), frame.get(ETH_HDR + 12..ETH_HDR + 16))
        else {
            return;
        };
        let mut key = ([0u8; 6], [0u8; 4]);
        key.0.copy_from_slice(mac);
        key.1.copy_from_slice(ip);
        if self.guest == Some(key) {
            return;
        }
        self.guest = Some(key);
        self.pipe.inbound = Some(arp_reply_frame(key.0, key.1, self.address));
        let now = self.now();
        self.iface
            .poll(now, &mut self.pipe, self.pool.sockets_mut());
    }

    /// Runs the stack: the inbound frame (if any), the connections'
    /// requests and answers, and the segments they make.
    fn poll(&mut self) {
        let now = self.now();
        self.iface
            .poll(now, &mut self.pipe, self.pool.sockets_mut());
        let store = Arc::clone(&self.store);
        self.pool.serve(&store, &mut self.counters);
        self.iface
            .poll(now, &mut self.pipe, self.pool.sockets_mut());
        self.pool.reap(&mut self.counters);
    }

    /// The next reply frame for the guest, if any; taking one lets the
    /// stack send more.
    pub fn next_reply(&mut self) -> Option<Vec<u8>> {
        let frame = self.pipe.replies.pop_front()?;
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += u64::try_from(frame.len()).unwrap_or(u64::MAX);
        if self.pipe.replies.is_empty() {
            self.poll();
        }
        Some(frame)
    }

    /// Whether reply frames wait for the guest.
    pub fn has_replies(&self) -> bool {
        !self.pipe.replies.is_empty()
    }

    /// Reply frames dropped so far (counted in `tx_errors` too).
    pub fn dropped_replies(&self) -> u64 {
        self.pipe.dropped_replies
    }
}

/// An ARP reply from `mac`/`ip` to the MMDS: what the guest would send
/// answering an ARP request for its address.
fn arp_reply_frame(mac: [u8; 6], ip: [u8; 4], mmds: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&MMDS_MAC);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&MMDS_MAC);
    frame.extend_from_slice(&mmds.octets());
    frame
}
