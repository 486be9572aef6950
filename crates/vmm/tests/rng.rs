//! The entropy device (virtio-rng) end to end on KVM: the test guest's
//! polling driver asks for random bytes, with and without a rate limit.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

use std::time::{Duration, Instant};

use common::{hex, Guest};
use ember_test_guests::{ELF64_PATH, PVH_PATH};
use ember_vmm::{BucketConfig, RngConfig};

#[test]
fn the_guest_gets_random_bytes() {
    for kernel in [ELF64_PATH, PVH_PATH] {
        let run = Guest::new(kernel, "rng-read")
            .args("rng.reqs=3 rng.bytes=256")
            .entropy(RngConfig::default())
            .run();
        run.assert_clean_reset();
        let field = |key| {
            run.field("rng:", key)
                .unwrap_or_else(|| panic!("{}", run.output))
        };
        assert_eq!(hex(&field("got")), 3 * 256, "{}", run.output);
        assert_eq!(field("nonzero"), "0x1");
        assert_eq!(field("distinct"), "0x1");
        assert_eq!(run.metric("entropy", "requests"), 3);
        assert_eq!(run.metric("entropy", "bytes"), 3 * 256);
        assert_eq!(run.metric("entropy", "invalid_chains"), 0);
    }
}

#[test]
fn without_the_device_the_driver_finds_none() {
    // Without the device the driver finds none.
    let run = Guest::new(ELF64_PATH, "rng-read").run();
    run.assert_clean_reset();
    assert!(run.output.contains("rng: none"), "{}", run.output);
}

#[test]
fn a_read_only_buffer_is_returned_untouched_with_length_0() {
    let run = Guest::new(ELF64_PATH, "rng-readonly")
        .entropy(RngConfig::default())
        .run();
    run.assert_clean_reset();
    assert_eq!(run.field("rng-readonly:", "len").as_deref(), Some("0x0"));
    assert_eq!(
        run.field("rng-readonly:", "untouched").as_deref(),
        Some("0x1")
    );
    assert_eq!(run.metric("entropy", "invalid_chains"), 1);
}

#[test]
fn a_bandwidth_limit_paces_the_guest() {
    // 1 KiB a second, no burst: 5 requests of 512 bytes are 1.5 KiB past the
    // bucket's first fill, so at least 1.5 s.
    let (requests, bytes, per_second) = (5u64, 512u64, 1024u64);
    let entropy = RngConfig {
        bandwidth: Some(BucketConfig {
            size: per_second,
            one_time_burst: 0,
            refill_time_ms: 1000,
        }),
        ops: None,
    };
    let started = Instant::now();
    let run = Guest::new(ELF64_PATH, "rng-read")
        .args(&format!("rng.reqs={requests} rng.bytes={bytes}"))
        .entropy(entropy)
        .run();
    let elapsed = started.elapsed();
    run.assert_clean_reset();
    assert_eq!(
        run.field("rng:", "got").map(|g| hex(&g)),
        Some(requests * bytes)
    );
    let lower = Duration::from_millis((requests * bytes - per_second) * 1000 / per_second);
    assert!(
        elapsed >= lower,
        "{requests} requests took {elapsed:?}, less than {lower:?}"
    );
    assert!(run.metric("entropy", "throttled") > 0);
}
