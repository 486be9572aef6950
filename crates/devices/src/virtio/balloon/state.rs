//! The balloon device's state and counters as plain data, apart from its
//! eventfds and timer: what [`super::Balloon::state`] saves and
//! [`super::Balloon::restore`] rebuilds the device from.

use super::{BalloonConfig, BalloonStats, HintingState};

/// Counters for metrics (Firecracker's `balloon` group, and Ember's own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BalloonCounters {
    /// Activations that failed (a queue not ready).
    pub activate_fails: u64,
    /// Inflate buffers processed.
    pub inflate_count: u64,
    /// Statistics buffers received from the driver.
    pub stats_updates_count: u64,
    /// Statistics buffers that could not be read, and polling ticks with no
    /// buffer to give back (the driver never answered).
    pub stats_update_fails: u64,
    /// Deflate buffers processed.
    pub deflate_count: u64,
    /// Failures of the event loop's work: eventfds, used rings,
    /// interrupts, the timer.
    pub event_fails: u64,
    /// Free page reports (buffers) processed.
    pub free_page_report_count: u64,
    /// Bytes given back to the host by free page reports.
    pub free_page_report_freed: u64,
    /// Free page reports of which some page could not be given back.
    pub free_page_report_fails: u64,
    /// Free page hints (device-writable descriptors of the current run)
    /// processed.
    pub free_page_hint_count: u64,
    /// Bytes given back to the host by free page hints.
    pub free_page_hint_freed: u64,
    /// Free page hints of which some page could not be given back.
    pub free_page_hint_fails: u64,
    /// Pages given back to the host by inflating.
    pub pages_released: u64,
    /// Pages the driver named (inflated, hinted or reported) outside guest
    /// RAM (skipped).
    pub pages_outside: u64,
    /// Inflate or deflate buffers that hold no PFN list (device-writable,
    /// too long, outside guest memory), and hinting commands that are not
    /// one readable le32.
    pub malformed_buffers: u64,
    /// Queue notifications received while the device was not active.
    pub ignored_notifications: u64,
}

/// Everything about a balloon device that is not a host resource. The
/// queues, with their ring positions, are in the transport's state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BalloonState {
    /// How it was set up (the polling interval as it is now).
    pub config: BalloonConfig,
    /// Features offered.
    pub avail_features: u64,
    /// Features the driver accepted (0 while inactive).
    pub acked_features: u64,
    /// The statistics, with the target (`num_pages`) and `actual`.
    pub stats: BalloonStats,
    /// The free page hinting run.
    pub hinting: HintingState,
    /// The statistics buffer the device holds, if any.
    pub stats_desc: Option<u16>,
    /// The ConfigGeneration counter.
    pub config_generation: u32,
    /// The counters.
    pub counters: BalloonCounters,
}
