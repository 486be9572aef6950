//! virtio-rng saved and restored through the MMIO transport: a buffer the
//! guest made available before the save is filled once after the restore,
//! with the counters and rate-limiter levels carried over.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::SubscriberOps;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::test_utils::{
    bucket, memory, run_until_used, start, through_json, write_reg, GuestQueue, Manager, Mem, WRITE,
};
use crate::virtio::{feature_bit, MmioTransport, VirtioDevice};

const FEATURES: u64 = feature_bit(VIRTIO_F_VERSION_1);

#[test]
fn a_buffer_made_available_before_the_save_is_filled_once_after_the_restore() {
    let mem = memory(&[(0, 0x10_0000)]);
    let mut gq = GuestQueue::new(&mem, 0x1000, 16);
    let config = RngConfig {
        bandwidth: bucket(1 << 20, 4096, 60_000),
        ops: None,
    };
    let rng = Arc::new(Mutex::new(Rng::<Mem>::new(config).unwrap()));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(rng.clone());
    let mut transport = MmioTransport::new(mem.clone(), rng.clone()).unwrap();
    assert_eq!(start(&mut transport, FEATURES, &[(0, &gq)]), 0xf);
    gq.add_chain(0, &[(0x2_0000, 64, WRITE)]);
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    run_until_used(&mut manager, &gq, 1, Duration::from_secs(5));
    mem.write_slice(&[0u8; 256], GuestAddress(0x3_0000))
        .unwrap();
    gq.add_chain(1, &[(0x3_0000, 256, WRITE)]);
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, 0);

    let transport_state = through_json(&transport.state());
    let rng_state = through_json(&rng.lock().unwrap().state());
    assert_eq!(rng_state.counters.bytes, 64);
    drop((transport, manager, rng));

    let rng = Arc::new(Mutex::new(Rng::<Mem>::restore(&rng_state).unwrap()));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(rng.clone());
    let transport = MmioTransport::restore(mem.clone(), rng.clone(), &transport_state).unwrap();
    assert_eq!(transport.state(), transport_state);
    let mut restored = rng.lock().unwrap().state();
    // The refill clock restarted: the time accrued differs, the levels not.
    let bandwidth = restored.rate_limiter.bandwidth.as_mut().unwrap();
    let saved = rng_state.rate_limiter.bandwidth.unwrap();
    assert_eq!(
        (bandwidth.budget, bandwidth.burst),
        (saved.budget, 4096 - 64)
    );
    bandwidth.pending_refill_ns = saved.pending_refill_ns;
    assert_eq!(restored, rng_state);

    run_until_used(&mut manager, &gq, 2, Duration::from_secs(5));
    assert_eq!(gq.used_elem(1), (1, 256));
    let mut filled = [0u8; 256];
    mem.read_slice(&mut filled, GuestAddress(0x3_0000)).unwrap();
    assert_ne!(filled, [0u8; 256], "random bytes arrived");
    for _ in 0..3 {
        rng.lock().unwrap().queue_events()[0].write(1).unwrap();
        manager.run_with_timeout(50).unwrap();
    }
    assert_eq!(gq.used_idx(), 2, "filled once");
    let counters = rng.lock().unwrap().counters();
    assert_eq!((counters.requests, counters.bytes), (2, 320));
}

#[test]
fn a_state_with_other_features_is_refused() {
    let mut state = Rng::<Mem>::new(RngConfig::default()).unwrap().state();
    state.avail_features |= 1 << 40;
    let err = Rng::<Mem>::restore(&state).unwrap_err();
    assert!(matches!(err, crate::Error::RestoreMismatch { .. }), "{err}");
}
