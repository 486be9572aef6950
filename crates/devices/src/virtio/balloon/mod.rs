//! virtio-balloon (device type 5): the guest gives pages back to the host
//! (inflate) and takes them again (deflate), and optionally reports memory
//! statistics.
//!
//! - Queues: inflate (0) and deflate (1), each buffer an array of 4 KiB page
//!   frame numbers (le32); with `VIRTIO_BALLOON_F_STATS_VQ` (offered when
//!   the polling interval is not zero) a statistics queue (2), on which the
//!   driver keeps one buffer of `{le16 tag, le64 value}` entries: the device
//!   holds it and gives it back at each polling tick so the driver refills it.
//! - Configuration space: `num_pages` (le32, the target, set by the host)
//!   and `actual` (le32, what the driver holds, written by the driver). A
//!   change of target raises a configuration-change interrupt.
//! - `VIRTIO_BALLOON_F_DEFLATE_ON_OOM` is offered when asked for.
//! - With `VIRTIO_BALLOON_F_FREE_PAGE_HINT` (when asked for) a hinting
//!   queue follows, and the configuration space holds the host's hinting
//!   command id (le32 at offset 8): the host starts a run with a new id,
//!   the driver sends that id (a device-readable le32), then free ranges
//!   (device-writable descriptors, whose whole pages go back to the host),
//!   then `STOP`; the host ends the run with `DONE` (see [`hinting`]).
//! - With `VIRTIO_BALLOON_F_FREE_PAGE_REPORTING` (when asked for) a
//!   reporting queue comes last: each descriptor of a buffer is a free
//!   range of guest memory, whose whole pages go back to the host at once.
//!
//! Inflated pages are returned to the host with `madvise(MADV_DONTNEED)` on
//! the guest memory mapping, contiguous pages in one call (see [`pages`]).
//! For anonymous or private mappings (Ember's guest memory) this frees the
//! host pages; a later guest access sees zeroes. For a private file mapping
//! DONTNEED drops the private copy, and a later access sees the file's
//! contents again: the host memory is freed all the same, which is what we
//! want. Deflated pages need nothing: the guest faults them back in.
//!
//! A hostile driver's PFN lists are bounded ([`MAX_PFNS_PER_BUFFER`] per
//! buffer, [`QUEUE_SIZE`] buffers per notification), sorted and
//! deduplicated, and every page is checked against guest memory before any
//! host call: pages outside guest RAM (past its end, in the MMIO gap) are
//! counted and skipped. Pages the guest still uses (its kernel) are only
//! zeroed for the guest: the host is never at risk.
//!
//! - [`Balloon`]: the device ([`crate::virtio::VirtioDevice`] and
//!   event-manager subscriber).
//! - [`pages`]: PFN lists to page runs, and discarding runs.
//! - `stats`: the statistics buffer; [`BalloonStats`].
//! - [`hinting`]: the free page hinting run; [`HintingStatus`].
//! - [`BalloonState`], [`BalloonCounters`]: the device's state as plain data;
//!   [`Balloon::restore`] rebuilds the device from it.

mod device;
pub mod hinting;
pub mod pages;
#[cfg(test)]
mod snapshot_tests;
mod state;
mod stats;
#[cfg(test)]
mod tests;

pub use device::{Balloon, DEFLATE_QUEUE, INFLATE_QUEUE, QUEUE_SIZE, STATS_QUEUE};
pub use hinting::{HintingState, HintingStatus, FREE_PAGE_HINT_DONE, FREE_PAGE_HINT_STOP};
pub use state::{BalloonCounters, BalloonState};
pub use stats::{BalloonStats, STAT_NAMES};

/// Feature bit: the driver reports statistics on queue 2.
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// Feature bit: the driver deflates the balloon when the guest runs out of
/// memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// Feature bit: the driver hints free pages on the hinting queue when the
/// host starts a run.
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u32 = 3;
/// Feature bit: the driver reports free pages on the reporting queue.
pub const VIRTIO_BALLOON_F_FREE_PAGE_REPORTING: u32 = 5;
/// Pages per MiB (4 KiB pages).
pub const PAGES_PER_MIB: u32 = 256;
/// Most PFNs in one inflate or deflate buffer (what Linux sends at most).
pub const MAX_PFNS_PER_BUFFER: usize = 256;

/// How a balloon is set up: Firecracker's `balloon` object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BalloonConfig {
    /// Target size in MiB.
    pub amount_mib: u32,
    /// Offer `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`.
    pub deflate_on_oom: bool,
    /// Statistics polling interval in seconds; 0 disables statistics (no
    /// statistics queue).
    pub stats_polling_interval_s: u16,
    /// Offer `VIRTIO_BALLOON_F_FREE_PAGE_HINT`, with its queue (after the
    /// statistics queue).
    pub free_page_hinting: bool,
    /// Offer `VIRTIO_BALLOON_F_FREE_PAGE_REPORTING`, with its queue (the
    /// last one).
    pub free_page_reporting: bool,
}

/// Errors of the balloon device and its host-side control.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// The target is asked for before the driver started the device.
    #[error("Device not activated yet.")]
    DeviceNotActive,
    /// A hinting run is asked for but the device was built without hinting.
    #[error("Attempting to use hinting when not enabled")]
    HintingNotEnabled,
    /// Statistics are asked for but the device was built without them.
    #[error("Received stats query when stats are disabled.")]
    StatisticsDisabled,
    /// The polling interval would go from or to 0 after the start.
    #[error("Statistics cannot be enabled/disabled after activation.")]
    StatisticsStateChange,
    /// The target is larger than guest memory (or than 2^32 pages).
    #[error("Requested memory should be less than {0}MiB")]
    TooMuchMemoryRequested(u32),
    /// An eventfd or the timer could not be created.
    #[error("cannot create the balloon's eventfds or timer: {0}")]
    Setup(std::io::Error),
    /// The driver could not be interrupted.
    #[error("Received error while sending an interrupt: {0}")]
    Interrupt(std::io::Error),
    /// The polling timer could not be armed.
    #[error("cannot arm the statistics timer: {0}")]
    Timer(std::io::Error),
}

/// Pages in `mib` MiB, if they fit in 32 bits.
pub fn mib_to_pages(mib: u32) -> Result<u32, BalloonError> {
    mib.checked_mul(PAGES_PER_MIB)
        .ok_or(BalloonError::TooMuchMemoryRequested(
            u32::MAX / PAGES_PER_MIB,
        ))
}

/// Whole MiB in `pages` pages.
pub fn pages_to_mib(pages: u32) -> u32 {
    pages / PAGES_PER_MIB
}
