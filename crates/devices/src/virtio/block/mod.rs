//! virtio-block: a disk image (regular file or host block device) behind one
//! request queue, with optional rate limiting.
//!
//! - [`Block`]: the device ([`crate::virtio::VirtioDevice`] and event-manager
//!   subscriber).
//! - `request`: descriptor chains to requests, validated against guest memory.
//! - `disk`: the backing file, with positional I/O into guest memory.
//! - [`BlockState`], [`BlockCounters`]: the device's state as plain data;
//!   [`Block::restore`] rebuilds the device from it and the reopened file.

mod device;
mod disk;
mod request;
#[cfg(test)]
mod snapshot_tests;
mod state;
#[cfg(test)]
mod tests;

pub use device::{Block, BlockConfig, ID_BYTES, QUEUE_SIZE, SEG_MAX};
pub use disk::{open_disk, CacheType};
pub use state::{BlockCounters, BlockState};

/// Why a block device's backing file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing file cannot be opened or sized.
    #[error("block backing file {}: {error}", path.display())]
    BackingFile {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// The backing file changed size since the snapshot.
    #[error("block backing file {}: {found} sectors, the snapshot has {saved}", path.display())]
    DiskSizeChanged {
        /// The file.
        path: std::path::PathBuf,
        /// The capacity in the snapshot, in sectors.
        saved: u64,
        /// The capacity now, in sectors.
        found: u64,
    },
}

/// Bytes per sector: the unit of the capacity and of request offsets.
pub const SECTOR_SIZE: u64 = 512;
