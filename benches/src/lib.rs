//! Ember's benchmarks: what the project's issues ask to measure, each figure
//! beside the baseline it is judged against.
//!
//! The `ember-benches` binary runs them (`cargo run --release -p
//! ember-benches -- all`), prints a table and writes the figures as JSON so
//! two commits can be compared (`ember-benches compare OLD.json NEW.json`).
//! Benchmarks report; they never assert a speed target (targets are printed
//! beside the figures instead).
//!
//! Groups, one module each:
//!
//! - [`block`]: the virtio-block device model driven through real virtqueues
//!   against plain `pread`/`pwrite` on the same file.
//! - [`net`]: the virtio-net device model against plain `read`/`write` on the
//!   same TAP, in a private network namespace ([`netns`]).
//! - [`vsock`]: the virtio-vsock device model against a plain Unix socket
//!   pair.
//! - [`rng`]: the virtio-rng device model against `getrandom`.
//! - [`balloon`]: inflating and deflating 64 MiB through the virtio-balloon
//!   model, with the resident memory it gives back.
//! - [`mmds`]: the MMDS's frame path: requests per second, memory per
//!   connection.
//! - [`boot`]: `ember` processes: start to the boot-timer signal, whole
//!   process, seccomp and the jailer, memory, launches per second.
//! - [`api`]: the REST API: time to the first accepted connection, request
//!   latency, configure-and-boot.
//! - [`snapshot`]: `ember`'s snapshots: create time and memory-file bytes
//!   (full and diff), restore latency, memory of VMs restored from one file.
//! - [`seccomp`]: the size of each default seccomp filter.
//! - [`ratelimit`]: the token bucket's hot path (also a criterion bench,
//!   `cargo bench -p ember-benches`).
//!
//! Shared pieces: [`driver`] (the guest driver's side of a virtio device),
//! [`buffers`] (page-aligned buffers for baselines), [`stats`] (medians, percentiles, rates), [`report`] (the
//! table, the JSON file, comparisons), [`paths`] (where binaries, scratch
//! files and results live), [`procfs`] (CPU time, memory and PSS of a process),
//! [`http`] (a minimal HTTP/1.1 client over a Unix socket), [`process`]
//! (running `ember` and reading its log lines).

pub mod api;
pub mod api_load;
pub mod balloon;
pub mod block;
pub mod boot;
pub mod buffers;
pub mod driver;
pub mod http;
pub mod mmds;
pub mod net;
pub mod netns;
pub mod paths;
pub mod process;
pub mod procfs;
pub mod ratelimit;
pub mod report;
pub mod rng;
pub mod seccomp;
pub mod snapshot;
pub mod stats;
pub mod vsock;

use std::io;

/// Why a benchmark could not produce its figures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A device model could not be built or wired.
    #[error("{what}: {source}")]
    Device {
        /// What was being done.
        what: String,
        /// The error.
        source: ember_devices::Error,
    },
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A measured program or device did something unexpected.
    #[error("{0}")]
    Unexpected(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Adds context to I/O errors: `.ctx("opening the disk")?`.
pub trait Context<T> {
    /// Wraps the error with what was being done.
    fn ctx(self, what: impl Into<String>) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what.into(),
            source,
        })
    }
}

impl<T> Context<T> for ember_devices::Result<T> {
    fn ctx(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Device {
            what: what.into(),
            source,
        })
    }
}
