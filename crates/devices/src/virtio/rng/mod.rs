//! virtio-rng (device type 4, "entropy"): one request queue whose
//! device-writable buffers the device fills with bytes from the host's
//! `getrandom`, with optional rate limiting.
//!
//! - [`Rng`]: the device ([`crate::virtio::VirtioDevice`] and event-manager
//!   subscriber).
//! - `chain`: descriptor chains to guest buffers, validated against guest
//!   memory; `random`: the host's random bytes.
//! - [`RngState`], [`RngCounters`]: the device's state as plain data;
//!   [`Rng::restore`] rebuilds the device from it.
//!
//! As Firecracker's: a chain holding a device-readable descriptor, or a
//! buffer outside guest memory, or that does not end, is returned with used
//! length 0 and counted as invalid; at most [`MAX_REQUEST_BYTES`] are
//! written per chain; the rate limiter is charged one operation and the
//! bytes the chain will get (one request larger than the bucket goes
//! through and leaves a debt).

mod chain;
mod device;
mod random;
#[cfg(test)]
mod snapshot_tests;
mod state;
#[cfg(test)]
mod tests;

pub use device::{Rng, RngConfig, QUEUE_SIZE};
pub use random::fill_random;
pub use state::{RngCounters, RngState};

/// Most bytes written into one descriptor chain (as Firecracker's cap, it
/// bounds the host buffer whatever lengths the guest claims).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
