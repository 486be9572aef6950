//! The receive and transmit rate limiters: held-back frames wait for the
//! limiter's timer, not in a busy loop, and limits change at run time.

use std::time::{Duration, Instant};

use ember_ratelimit::BucketUpdate;
use virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY;

use super::host::{in_netns, test_frame};
use super::*;
use crate::virtio::test_utils::bucket;

#[test]
fn transmit_ops_limit_delays_frames_without_busy_waiting() {
    in_netns(|| {
        // 10 frames per 100 ms, no burst: 30 frames need at least 200 ms.
        let mut h = Harness::new("ember-txops", |c| {
            c.tx_rate_limiter.ops = bucket(10, 0, 100)
        });
        let start = Instant::now();
        for i in 0..30u8 {
            h.queue_tx(&ZERO_HDR, &test_frame(60, i));
        }
        h.kick(TX_QUEUE);
        assert_eq!(h.txq.used_idx(), 10, "the first 10 go through at once");
        // Held back, the device asks not to be notified.
        assert_ne!(h.txq.used_flags() & VRING_USED_F_NO_NOTIFY as u16, 0);
        let wakeups = h.run_until_tx_used(30, Duration::from_secs(5));
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(wakeups <= 21, "{wakeups} wake-ups");
        for i in 0..30u8 {
            assert_eq!(h.port.recv().unwrap(), test_frame(60, i), "in order");
        }
        let c = h.counters();
        assert!(c.tx_throttled >= 2);
        assert_eq!(c.tx_frames, 30);
    });
}

#[test]
fn receive_bandwidth_limit_delays_delivery() {
    in_netns(|| {
        // 2000 bytes per 200 ms: of six 1000-byte frames, two go through at
        // once and the others one per 100 ms.
        let mut h = Harness::new("ember-rxbw", |c| {
            c.rx_rate_limiter.bandwidth = bucket(2000, 0, 200);
        });
        let bufs: Vec<RxBuf> = (0..6).map(|_| h.post_rx(2048)).collect();
        h.kick(RX_QUEUE);
        let start = Instant::now();
        for i in 0..6u8 {
            h.port.send(&test_frame(1000, i));
        }
        h.run_for(Duration::from_millis(20));
        assert_eq!(h.rxq.used_idx(), 2);
        let wakeups = h.run_until_rx_used(6, Duration::from_secs(5));
        assert!(start.elapsed() >= Duration::from_millis(350));
        assert!(wakeups <= 12, "{wakeups} wake-ups");
        for (i, buf) in bufs.iter().enumerate() {
            assert_eq!(h.received(i as u16, *buf).1, test_frame(1000, i as u8));
        }
        let c = h.counters();
        assert!(c.rx_throttled >= 1);
        assert_eq!((c.rx_frames, c.rx_bytes), (6, 6000));
    });
}

#[test]
fn lifting_a_limit_resumes_at_once() {
    in_netns(|| {
        let mut h = Harness::new("ember-lift", |c| {
            c.tx_rate_limiter.ops = bucket(1, 5, 60_000);
            c.rx_rate_limiter.ops = bucket(1, 0, 60_000);
        });
        for i in 0..10u8 {
            h.queue_tx(&ZERO_HDR, &test_frame(60, i));
        }
        h.kick(TX_QUEUE);
        assert_eq!(h.txq.used_idx(), 6, "burst plus the bucket");
        // A notification while throttled changes nothing.
        h.kick(TX_QUEUE);
        assert_eq!(h.txq.used_idx(), 6);
        let bufs: Vec<RxBuf> = (0..3).map(|_| h.post_rx(2048)).collect();
        h.kick(RX_QUEUE);
        for i in 0..3u8 {
            h.port.send(&test_frame(60, i));
        }
        h.run_for(Duration::from_millis(50));
        assert_eq!(h.rxq.used_idx(), 1);
        let idle = h.run_for(Duration::from_millis(100));
        assert_eq!(idle, 0, "throttled: nothing to do until the timer");

        h.net.lock().unwrap().update_rate_limiters(
            RateLimiterUpdate {
                bandwidth: BucketUpdate::Keep,
                ops: BucketUpdate::Disable,
            },
            RateLimiterUpdate {
                bandwidth: BucketUpdate::Keep,
                ops: BucketUpdate::Disable,
            },
        );
        h.run_until_tx_used(10, Duration::from_secs(2));
        h.run_until_rx_used(3, Duration::from_secs(2));
        assert_eq!(h.received(2, bufs[2]).1, test_frame(60, 2));
        let state = h.net.lock().unwrap().state();
        assert!(state.tx_rate_limiter.ops.is_none());
        assert!(state.rx_rate_limiter.ops.is_none());
        // KEEP changes nothing.
        h.net
            .lock()
            .unwrap()
            .update_rate_limiters(RateLimiterUpdate::KEEP, RateLimiterUpdate::KEEP);
        assert_eq!(
            h.net.lock().unwrap().state().tx_rate_limiter,
            state.tx_rate_limiter
        );
    });
}
