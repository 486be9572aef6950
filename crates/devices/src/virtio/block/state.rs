//! The virtio-block device's state and counters as plain data, apart from its
//! open file, eventfds and timer: what [`super::Block::state`] saves and
//! [`super::Block::restore`] rebuilds the device from.

use std::path::PathBuf;

use ember_ratelimit::RateLimiterState;

use super::CacheType;

/// Counters for metrics. Every request is counted in `requests` and in exactly
/// one of `reads`, `writes`, `flushes`, `get_ids`, `unsupported`,
/// `invalid_chains` or `io_errors`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BlockCounters {
    /// Descriptor chains taken from the queue and completed, whatever the outcome.
    pub requests: u64,
    /// Successful reads.
    pub reads: u64,
    /// Successful writes.
    pub writes: u64,
    /// Successful flushes.
    pub flushes: u64,
    /// Flushes that synced the backing file (`Writeback` cache type).
    pub syncs: u64,
    /// Successful GET_ID requests.
    pub get_ids: u64,
    /// Bytes read from the backing file into guest memory.
    pub read_bytes: u64,
    /// Bytes written from guest memory to the backing file.
    pub write_bytes: u64,
    /// Well-formed requests that failed (out of range, read-only, host I/O error).
    pub io_errors: u64,
    /// Requests of a type the device does not implement.
    pub unsupported: u64,
    /// Malformed descriptor chains, completed with an I/O error when a status
    /// byte could be written and with length 0 otherwise; also available-ring
    /// indices claiming more entries than the queue holds.
    pub invalid_chains: u64,
    /// Times the rate limiter stopped request processing.
    pub throttled: u64,
    /// Queue notifications received while the device was not active.
    pub ignored_notifications: u64,
    /// Failures to update the used ring, interrupt the driver or read an eventfd.
    pub event_errors: u64,
}

/// Everything about a virtio-block device that is not a host resource (the
/// backing file is saved as its path and reopened on restore). The request
/// queue, with its ring positions, is in the transport's state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BlockState {
    /// The drive's ID (also the GET_ID string).
    pub drive_id: String,
    /// Path of the backing file.
    pub path: PathBuf,
    /// Whether the drive is read-only.
    pub read_only: bool,
    /// What FLUSH does.
    pub cache_type: CacheType,
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Features offered.
    pub avail_features: u64,
    /// Features the driver accepted (0 while inactive).
    pub acked_features: u64,
    /// The ConfigGeneration counter.
    pub config_generation: u32,
    /// The rate limiter's levels.
    pub rate_limiter: RateLimiterState,
    /// The counters.
    pub counters: BlockCounters,
}
