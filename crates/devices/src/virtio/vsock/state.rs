//! The virtio-vsock device's state and counters as plain data, apart from its
//! sockets, eventfds and timer: what [`super::Vsock::state`] saves and
//! [`super::Vsock::restore`] rebuilds the device from.
//!
//! Live connections are host resources (Unix streams) and are not part of the
//! state: a device rebuilt from its state has none, as after a reset, and
//! once the transport has activated it again it sends the driver the
//! transport-reset event, so the guest drops its sockets.

use std::path::PathBuf;

/// Counters for metrics, plus two gauges (`connections`, `buffered_bytes`).
///
/// Every packet taken from the TX queue is counted in `tx_packets`; those
/// that are not delivered to a connection are also counted in exactly one of
/// `malformed_packets`, `bad_addresses` or `protocol_errors` (or start a
/// connection, or are an RST for an unknown connection).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VsockCounters {
    /// Connections established: guest requests a host listener accepted, and
    /// host requests the guest accepted.
    pub conns_opened: u64,
    /// Established connections removed, for whatever reason.
    pub conns_closed: u64,
    /// Connection attempts that did not succeed: guest requests to a port with
    /// no listening socket or past the connection limit, host clients past
    /// the limit or with a bad `CONNECT` line, host requests the guest
    /// refused, did not answer in time, or whose client left first.
    pub conns_refused: u64,
    /// Packets written to RX buffers (to the guest).
    pub rx_packets: u64,
    /// Descriptor chains taken from the TX queue (from the guest).
    pub tx_packets: u64,
    /// Data bytes sent to the guest.
    pub rx_bytes: u64,
    /// Data bytes from the guest accepted on a connection.
    pub tx_bytes: u64,
    /// RST packets sent to the guest.
    pub rsts_sent: u64,
    /// RST packets from the guest for a live connection.
    pub rsts_received: u64,
    /// TX chains that do not hold a packet (too short, device-writable
    /// buffers, outside guest memory, `len` too large or past the chain,
    /// a type other than stream, an unknown op, data on a control packet),
    /// RX chains that cannot hold one (too short, device-readable), and TX
    /// available-ring indices claiming more entries than the queue holds.
    pub malformed_packets: u64,
    /// Packets whose source is not the guest's CID or whose destination is
    /// not the host (CID 2); dropped.
    pub bad_addresses: u64,
    /// Packets that make no sense for their connection: for no connection
    /// (other than REQUEST and RST), an op unexpected in the connection's
    /// state, data after the guest's SHUTDOWN(SEND).
    pub protocol_errors: u64,
    /// Data beyond the credit the device gave; the connection is reset.
    pub credit_violations: u64,
    /// Times host-to-guest data waited for guest credit (CREDIT_REQUESTs sent).
    pub credit_stalls: u64,
    /// Times packets for the guest waited for RX buffers.
    pub rx_buffer_stalls: u64,
    /// Connections reset because a REQUEST was not answered, or a closing
    /// connection was not reset by the guest, in time.
    pub timeouts: u64,
    /// Failed reads, writes and accepts on host sockets (other than a peer
    /// that went away).
    pub host_errors: u64,
    /// RST replies dropped because too many were waiting for RX buffers.
    pub dropped_rsts: u64,
    /// Queue notifications received while the device was not active.
    pub ignored_notifications: u64,
    /// Failures to update a used ring, interrupt the driver, read an eventfd,
    /// arm the timer or change the epoll set.
    pub event_errors: u64,
    /// Gauge: live connections (established, connecting or closing).
    pub connections: u64,
    /// Gauge: guest data buffered for host peers that have not taken it yet.
    pub buffered_bytes: u64,
}

/// Everything about a virtio-vsock device that is not a host resource (the
/// listening socket is saved as its path). The queues, with their ring
/// positions, are in the transport's state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VsockState {
    /// The guest's context ID.
    pub guest_cid: u64,
    /// Path of the host-side Unix socket.
    pub uds_path: PathBuf,
    /// Features offered.
    pub avail_features: u64,
    /// Features the driver accepted (0 while inactive).
    pub acked_features: u64,
    /// The counters.
    pub counters: VsockCounters,
}
