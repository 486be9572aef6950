//! The logic of Ember's fuzz targets, without libFuzzer (see `../README.md`).
//!
//! Each module is one target: it decodes an input, drives the code a guest or
//! an API client reaches, and asserts that code's invariants (not just the
//! absence of a crash). `fuzz_targets/*.rs` are thin wrappers around [`run`],
//! and [`seeds`] builds each target's seed corpus.

pub mod alloc;
pub mod api;
pub mod balloon;
pub mod block;
pub mod bytes;
pub mod config;
pub mod http;
pub mod kernel;
pub mod mmds;
pub mod mmio;
pub mod net;
pub mod ring;
pub mod rng;
pub mod seeds;
pub mod snapshot;
pub mod vsock;

use std::sync::{Mutex, MutexGuard, PoisonError};

/// The fuzz targets, by name.
pub const TARGETS: [&str; 12] = [
    "virtio_block",
    "virtio_mmio",
    "config_file",
    "api_request",
    "api_http",
    "kernel_image",
    "vsock_packet",
    "virtio_net_tx",
    "virtio_rng",
    "mmds_frames",
    "balloon_pfns",
    "snapshot_state",
];

/// Held while an input runs: the device targets share guest memory and one
/// backing file.
pub(crate) fn one_at_a_time() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `data` through the named target's harness, with the allocation cap.
/// Inputs run one at a time (the device targets share one backing file).
pub fn run(target: &str, data: &[u8]) {
    let _guard = one_at_a_time();
    let harness: fn(&[u8]) = match target {
        "virtio_block" => block::run,
        "virtio_mmio" => mmio::run,
        "config_file" => config::run,
        "api_request" => api::run,
        "api_http" => http::run,
        "kernel_image" => kernel::run,
        "vsock_packet" => vsock::run,
        "virtio_net_tx" => net::run,
        "virtio_rng" => rng::run,
        "mmds_frames" => mmds::run,
        "balloon_pfns" => balloon::run,
        "snapshot_state" => snapshot::run,
        other => panic!("no fuzz target {other}"),
    };
    alloc::bounded(target, || harness(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed runs through its harness without tripping an invariant.
    #[test]
    fn seeds_pass_their_harnesses() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).ok();
        for (target, seeds) in seeds::all(readme.as_deref()) {
            assert!(!seeds.is_empty(), "{target} has no seeds");
            for (name, bytes) in seeds {
                eprintln!("{target}/{name}");
                run(target, &bytes);
            }
        }
    }

    /// Inputs found by fuzzing (`fuzz/regressions/<target>/*`) stay fixed.
    #[test]
    fn regressions_pass_their_harnesses() {
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../regressions"));
        for target in TARGETS {
            let Ok(entries) = std::fs::read_dir(dir.join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("dir entry").path();
                eprintln!("{}", path.display());
                run(target, &std::fs::read(&path).expect("read"));
            }
        }
    }
}
