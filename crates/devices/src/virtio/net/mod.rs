//! virtio-net: one receive and one transmit queue backed by a host TAP
//! interface, with optional rate limiting in each direction.
//!
//! - [`Net`]: the device ([`crate::virtio::VirtioDevice`] and event-manager
//!   subscriber).
//! - [`NetBackend`]: the host side the device reads and writes frames
//!   through; [`Tap`], the TAP interface (`/dev/net/tun`, each ioctl wrapped
//!   once), implements it, and [`Net::with_backend`] takes any other (an fd
//!   a CNI plugin opened, a socket pair in tests).
//! - [`NetConfig`]: how an interface is set up (Firecracker's
//!   `network-interfaces` fields); [`RateLimiterConfig`] and
//!   [`RateLimiterUpdate`] for its limits.
//! - [`NetState`], [`NetCounters`]: the device's state as plain data;
//!   [`Net::restore`] rebuilds the device from it and the reopened TAP (or
//!   another backend).
//! - `chain`: descriptor chains to lists of guest buffers, validated against
//!   guest memory; `rx` and `tx`: the two data paths.
//!
//! Frames cross the device with their virtio-net header
//! (`virtio_net_hdr_v1`, 12 bytes, since `VIRTIO_F_VERSION_1` is always
//! negotiated): the TAP is opened with `IFF_VNET_HDR` and that header size,
//! so the header goes to and comes from the TAP unchanged, except that on
//! receive the device sets `num_buffers` to 1 (no mergeable buffers) and,
//! when the driver did not accept `VIRTIO_NET_F_GUEST_CSUM`, clears the rest
//! of the header (no checksum or segmentation offload information).

mod backend;
mod chain;
mod config;
mod device;
mod rx;
mod state;
mod tap;
#[cfg(test)]
mod tests;
mod tx;

pub use backend::NetBackend;
pub use config::{DisplayMac, MacAddr, NetConfig, RateLimiterConfig, RateLimiterUpdate};
pub use device::Net;
pub use state::{NetCounters, NetState};
pub use tap::{Tap, MAX_IFACE_NAME_LEN};

/// Why a net device's host side or guest address cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A TAP interface cannot be opened or configured.
    #[error("TAP interface {name}: {error}")]
    Tap {
        /// The interface's name.
        name: String,
        /// What failed.
        error: std::io::Error,
    },
    /// A guest MAC address is multicast or all zeroes.
    #[error("invalid guest MAC address {0}: it must be a unicast address")]
    InvalidMac(String),
}

/// Size of the virtio-net header in front of every frame
/// (`virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers).
pub const VNET_HDR_LEN: usize = 12;

/// Largest Ethernet frame the device carries, without the virtio-net
/// header: a 65535-byte IP packet, a 14-byte Ethernet header and a 4-byte
/// VLAN tag. Larger transmit chains are dropped, larger received frames too.
pub const MAX_FRAME_LEN: usize = 65_535 + 14 + 4;

/// Shortest frame the device transmits: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;

/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
