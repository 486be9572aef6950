//! The virtio-net device's state and counters as plain data, apart from its
//! TAP, eventfds and timers: what [`super::Net::state`] saves and
//! [`super::Net::restore`] rebuilds the device from.

use ember_ratelimit::RateLimiterState;
use std::net::Ipv4Addr;

use super::MacAddr;

/// Counters for metrics.
///
/// Every descriptor chain taken from the TX queue is counted in exactly one
/// of `tx_frames`, `tx_too_big`, `tx_malformed` or `tx_tap_errors`. Every
/// frame read from the TAP is counted in exactly one of `rx_frames`,
/// `rx_too_big` or `rx_dropped` (unless it is still waiting for a buffer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NetCounters {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of frames delivered to the guest (virtio-net headers not counted).
    pub rx_bytes: u64,
    /// Times a frame read from the TAP found no receive buffer: the device
    /// then keeps that one frame and stops reading the TAP until the driver
    /// adds buffers (further frames wait in, or are dropped by, the TAP's
    /// kernel queue).
    pub rx_no_buffer: u64,
    /// Frames dropped because they did not fit in the receive buffer at
    /// the head of the queue (which stays there for the next frame).
    pub rx_too_big: u64,
    /// Frames dropped for another reason: a frame shorter than the
    /// virtio-net header, or one still waiting when the device was reset.
    pub rx_dropped: u64,
    /// Receive chains returned unused (length 0): device-readable or outside
    /// guest memory, unterminated, or smaller than the virtio-net header;
    /// also available-ring indices claiming more entries than the queue holds.
    pub rx_malformed: u64,
    /// Failed reads from the TAP (other than "nothing to read").
    pub rx_tap_errors: u64,
    /// Times the receive rate limiter held a frame back.
    pub rx_throttled: u64,
    /// Frames sent to the TAP.
    pub tx_frames: u64,
    /// Bytes of frames sent to the TAP (virtio-net headers not counted).
    pub tx_bytes: u64,
    /// Transmit chains dropped for carrying more than a header and
    /// [`super::MAX_FRAME_LEN`] bytes; completed with length 0.
    pub tx_too_big: u64,
    /// Transmit chains dropped as malformed (a device-writable buffer, a
    /// buffer outside guest memory, unterminated, or shorter than a header
    /// and an Ethernet header); also available-ring indices claiming more
    /// entries than the queue holds. Completed with length 0.
    pub tx_malformed: u64,
    /// Frames the TAP refused (write errors); dropped.
    pub tx_tap_errors: u64,
    /// Times the transmit rate limiter held a frame back.
    pub tx_throttled: u64,
    /// Receive-queue notifications (event-loop wake-ups for the RX queue).
    pub rx_queue_events: u64,
    /// Transmit-queue notifications.
    pub tx_queue_events: u64,
    /// Times the TAP woke the device up (readable, or an error condition).
    pub tap_events: u64,
    /// Queue notifications and TAP events received while the device was not active.
    pub ignored_notifications: u64,
    /// Failures to update a used ring, interrupt the driver, read an
    /// eventfd or change the event-loop registration.
    pub event_errors: u64,
}

/// Everything about a virtio-net device that is not a host resource (the TAP
/// is saved as its name and reopened on restore; the MMDS store as the
/// address the interface answers at). The queues, with their ring
/// positions, are in the transport's state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NetState {
    /// The interface's ID.
    pub iface_id: String,
    /// The TAP interface's name.
    pub host_dev_name: String,
    /// The guest's MAC address (in the configuration space).
    pub mac: MacAddr,
    /// The MTU advertised to the guest, if any.
    pub mtu: Option<u16>,
    /// The MMDS address the interface answers at, if `mmds-config` names it.
    pub mmds_address: Option<Ipv4Addr>,
    /// Features offered.
    pub avail_features: u64,
    /// Features the driver accepted (0 while inactive).
    pub acked_features: u64,
    /// TAP offloads (`TUN_F_*`) the TAP accepted when the device was created.
    pub tap_offloads_supported: u32,
    /// TAP offloads in force (from the accepted features; 0 while inactive).
    pub tap_offloads: u32,
    /// The ConfigGeneration counter.
    pub config_generation: u32,
    /// Length (virtio-net header included) of the frame read from the TAP and
    /// waiting for a receive buffer or the rate limiter, if any. The frame's
    /// bytes are a host resource and are not part of the state.
    pub rx_pending_len: Option<usize>,
    /// The receive rate limiter's levels.
    pub rx_rate_limiter: RateLimiterState,
    /// The transmit rate limiter's levels.
    pub tx_rate_limiter: RateLimiterState,
    /// The counters.
    pub counters: NetCounters,
}
