//! virtio-vsock (device type 19) with Firecracker's hybrid back-end: guest
//! stream sockets connected to host Unix sockets.
//!
//! - **Host-initiated**: the device listens on `uds_path`. A host client
//!   connects and writes `CONNECT <port>\n`; the device sends the guest a
//!   REQUEST to that port from a host-side port it allocates (from 2^30
//!   upwards); on the guest's RESPONSE it writes `OK <host port>\n` to the
//!   client, and the stream is connected to the guest socket. An RST, or no
//!   answer within [`REQUEST_TIMEOUT`], closes the client.
//! - **Guest-initiated**: a REQUEST to (CID 2, port P) connects to the Unix
//!   socket `<uds_path>_<P>`; RESPONSE if that works, RST otherwise.
//!
//! Stream sockets only (`VIRTIO_VSOCK_F_SEQPACKET` is not offered); features
//! `VIRTIO_F_VERSION_1` and `VIRTIO_RING_F_EVENT_IDX`; queues RX (0), TX (1)
//! and event (2, used once: the transport reset after a restore from a
//! snapshot, since connections are host resources that do not survive it);
//! the configuration space is the guest CID (le64).
//!
//! Flow control and shutdown follow the virtio spec; see `connection` for
//! how. Nothing a guest or host peer does grows memory without bound: at most
//! [`MAX_CONNECTIONS`] connections (and host clients still sending their
//! `CONNECT` line), further guest requests get an RST and further host
//! clients are closed; host-to-guest data is never buffered (it is read
//! only when the guest has credit and an RX buffer); guest-to-host data the
//! host peer has not taken is buffered up to the advertised
//! [`CONN_BUF_SIZE`] per connection (so at most `MAX_CONNECTIONS *
//! CONN_BUF_SIZE` in all), and a guest that sends more than its credit gets
//! an RST; at most a fixed number of RST replies wait for RX buffers.
//!
//! - [`Vsock`]: the device ([`crate::virtio::VirtioDevice`] and event-manager
//!   subscriber).
//! - `packet`: the header and descriptor chains, validated against guest
//!   memory.
//! - `connection`: one connection's state machine and flow control.
//! - `muxer`: the listener, the connection table, RX scheduling, deadlines.
//! - `unix`: non-blocking Unix-socket helpers and the `CONNECT`/`OK` lines.
//! - [`VsockState`], [`VsockCounters`]: the device's state as plain data;
//!   [`Vsock::restore`] rebuilds the device from it and the host socket.
//! - [`PacketHeader`], [`Op`]: the packet format, for drivers written in
//!   tests, benchmarks and fuzzers.

mod connection;
mod device;
mod muxer;
mod packet;
#[cfg(test)]
mod snapshot_tests;
mod state;
#[cfg(test)]
mod tests;
mod unix;

use std::time::Duration;

pub use device::{Vsock, VsockConfig, EVENT_QUEUE, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
pub use packet::{
    Header as PacketHeader, Op, HDR_LEN as PACKET_HEADER_LEN, SHUTDOWN_RCV, SHUTDOWN_SEND,
    TYPE_STREAM,
};
pub use state::{VsockCounters, VsockState};

/// Why a vsock device cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A guest CID is reserved (below 3) or too large for a guest.
    #[error("invalid vsock guest CID {0}: it must be at least 3 and below 0xffffffff")]
    InvalidCid(u64),
    /// The device's Unix socket cannot be created.
    #[error("vsock socket {}: {error}", path.display())]
    Socket {
        /// The socket's path.
        path: std::path::PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// The device's timer cannot be created.
    #[error("vsock timer: {0}")]
    Timer(std::io::Error),
}

/// The host's context ID.
pub const HOST_CID: u64 = 2;
/// Receive buffer the device advertises per connection (`buf_alloc`): the
/// most guest data it buffers for a host peer that does not read.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Most live connections (plus host clients that have not sent their
/// `CONNECT` line yet).
pub const MAX_CONNECTIONS: usize = 1024;
/// Largest packet payload accepted from, or sent to, the guest.
pub const MAX_PKT_LEN: u32 = 64 * 1024;
/// The event (`virtio_vsock_event.id`) telling the driver that every
/// connection is gone.
pub const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
/// How long the guest has to answer a host-initiated REQUEST.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the guest has to reset a connection the host end closed.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// First host-side port of host-initiated connections (they use
/// 2^30 .. 2^31, like Firecracker's).
pub const HOST_PORT_FIRST: u32 = 1 << 30;
/// Consumed bytes after which the device tells the guest about new credit
/// unasked.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;

/// The limits a device enforces (constants, adjustable in tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            request_timeout: REQUEST_TIMEOUT,
            shutdown_timeout: SHUTDOWN_TIMEOUT,
        }
    }
}
