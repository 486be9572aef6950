//! The virtio-rng device's state and counters as plain data, apart from its
//! eventfds and timer: what [`super::Rng::state`] saves and
//! [`super::Rng::restore`] rebuilds the device from.

use ember_ratelimit::RateLimiterState;

/// Counters for metrics. Every chain taken from the queue is counted in
/// `requests`; a chain that got no bytes because it was malformed is also
/// counted in `invalid_chains`, one the host could not fill in
/// `host_rng_fails`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RngCounters {
    /// Descriptor chains taken from the queue and completed.
    pub requests: u64,
    /// Random bytes written into guest buffers.
    pub bytes: u64,
    /// Malformed chains (a device-readable descriptor, a buffer outside
    /// guest memory, no end), completed with length 0; also available-ring
    /// indices claiming more entries than the queue holds.
    pub invalid_chains: u64,
    /// Failures of the host's `getrandom`.
    pub host_rng_fails: u64,
    /// Times the rate limiter stopped request processing.
    pub throttled: u64,
    /// Rate-limiter timer events handled.
    pub rate_limiter_events: u64,
    /// Queue notifications received while the device was not active.
    pub ignored_notifications: u64,
    /// Failures to update the used ring, interrupt the driver or read an eventfd.
    pub event_errors: u64,
}

/// Everything about a virtio-rng device that is not a host resource. The
/// request queue, with its ring positions, is in the transport's state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RngState {
    /// Features offered.
    pub avail_features: u64,
    /// Features the driver accepted (0 while inactive).
    pub acked_features: u64,
    /// The rate limiter's levels.
    pub rate_limiter: RateLimiterState,
    /// The counters.
    pub counters: RngCounters,
}
