//! A hostile guest: malformed chains and rings in both queues. The device
//! must never panic, never spin, never touch memory outside the guest, and
//! keep serving the well-formed chains that follow.

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::host::{in_netns, test_frame};
use super::*;
use crate::virtio::test_utils::{write_desc, INDIRECT, NEXT, WRITE};

#[test]
fn malformed_transmit_chains_are_dropped_and_counted() {
    in_netns(|| {
        let mut h = Harness::new("ember-badtx", |_| {});
        let frame = test_frame(60, 1);
        let good = [&ZERO_HDR[..], &frame[..]].concat();
        let at = h.area(good.len() as u32);
        h.mem.write_slice(&good, GuestAddress(at)).unwrap();
        let len = good.len() as u32;
        let outside = MEM_SIZE as u64 + 0x1000;
        let straddling = MEM_SIZE as u64 - 30;

        // A device-writable buffer.
        h.tx_chain(&[(at, 12, 0), (at + 12, len - 12, WRITE)]);
        // A buffer outside guest memory, or only partly inside.
        h.tx_chain(&[(at, 12, 0), (outside, 60, 0)]);
        h.tx_chain(&[(at, 12, 0), (straddling, 60, 0)]);
        h.tx_chain(&[(u64::MAX - 8, 72, 0)]);
        // Too short: a header alone, and a header with a partial Ethernet header.
        h.tx_chain(&[(at, 12, 0)]);
        h.tx_chain(&[(at, 25, 0)]);
        h.tx_chain(&[(at, 0, 0)]);
        // A loop, and a descriptor pointing at itself.
        let base = h.next_tx_desc;
        h.txq.set_desc(base, (at, 12, NEXT, base + 1));
        h.txq.set_desc(base + 1, (at + 12, 60, NEXT, base));
        h.txq.publish(base);
        h.txq.set_desc(base + 2, (at, 72, NEXT, base + 2));
        h.txq.publish(base + 2);
        h.next_tx_desc += 3;
        // A head index beyond the queue.
        h.txq.publish(QUEUE_SIZE + 3);
        // Then a good one.
        let good_head = h.tx_chain(&[(at, len, 0)]);

        let start = Instant::now();
        h.kick(TX_QUEUE);
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(h.port.recv().unwrap(), frame);
        h.assert_no_host_frame(Duration::from_millis(100));
        assert_eq!(h.txq.used_idx(), 10, "all but the bogus head completed");
        for i in 0..9 {
            assert_eq!(h.txq.used_elem(i).1, 0);
        }
        assert_eq!(h.txq.used_elem(9), (u32::from(good_head), 0));
        let c = h.counters();
        assert_eq!((c.tx_malformed, c.tx_frames, c.tx_too_big), (10, 1, 0));
        assert_eq!(c.event_errors, 1, "the bogus head cannot be returned");
    });
}

#[test]
fn transmit_chains_longer_than_the_largest_frame_are_dropped() {
    in_netns(|| {
        let mut h = Harness::new("ember-longtx", |_| {});
        let max = VNET_HDR_LEN + MAX_FRAME_LEN;
        let big = h.area(max as u32 + 1);
        let frame = test_frame(MAX_FRAME_LEN, 7);
        h.mem.write_slice(&ZERO_HDR, GuestAddress(big)).unwrap();
        h.mem.write_slice(&frame, GuestAddress(big + 12)).unwrap();
        h.tx_chain(&[(big, max as u32 + 1, 0)]);
        h.tx_chain(&[(big, 12, 0), (big, 0xffff_fff8, 0)]);
        // Exactly the limit is fine (the TAP drops what its MTU refuses,
        // which is not the device's business).
        h.tx_chain(&[(big, max as u32, 0)]);
        h.kick(TX_QUEUE);
        assert_eq!(h.txq.used_idx(), 3);
        let c = h.counters();
        assert_eq!(c.tx_too_big, 1);
        assert_eq!(c.tx_malformed, 1, "over 4 GiB: unterminated");
        assert_eq!(c.tx_frames + c.tx_tap_errors, 1);
    });
}

#[test]
fn an_indirect_transmit_chain_works() {
    in_netns(|| {
        let mut h = Harness::new("ember-ind", |_| {});
        let frame = test_frame(200, 9);
        let hdr = h.area(12);
        h.mem.write_slice(&ZERO_HDR, GuestAddress(hdr)).unwrap();
        let data = h.area(200);
        h.mem.write_slice(&frame, GuestAddress(data)).unwrap();
        let table = h.area(32);
        write_desc(&h.mem, GuestAddress(table), 0, (hdr, 12, NEXT, 1));
        write_desc(&h.mem, GuestAddress(table), 1, (data, 200, 0, 0));
        h.tx_chain(&[(table, 32, INDIRECT)]);
        h.kick(TX_QUEUE);
        assert_eq!(h.port.recv().unwrap(), frame);
    });
}

#[test]
fn unusable_receive_chains_are_returned_empty() {
    in_netns(|| {
        let mut h = Harness::new("ember-badrx", |_| {});
        let guard = h.area(2048);
        h.mem
            .write_slice(&[0x5a; 2048], GuestAddress(guard))
            .unwrap();
        let outside = MEM_SIZE as u64 + 0x1000;
        let straddling = MEM_SIZE as u64 - 100;
        // Device-readable, partly readable, outside memory, straddling the
        // end of memory, smaller than the header, looping.
        h.rx_chain(&[(guard, 2048, 0)]);
        h.rx_chain(&[(guard, 12, WRITE), (guard + 12, 2000, 0)]);
        h.rx_chain(&[(outside, 2048, WRITE)]);
        h.rx_chain(&[(straddling, 2048, WRITE)]);
        h.rx_chain(&[(guard, 11, WRITE)]);
        let base = h.next_rx_desc;
        h.rxq.set_desc(base, (guard, 1024, WRITE | NEXT, base + 1));
        h.rxq
            .set_desc(base + 1, (guard + 1024, 1024, WRITE | NEXT, base));
        h.rxq.publish(base);
        h.next_rx_desc += 2;
        let good = h.post_rx(2048);
        h.kick(RX_QUEUE);
        let frame = test_frame(300, 5);
        h.port.send(&frame);
        h.run_until_rx_used(7, Duration::from_secs(2));
        for i in 0..6 {
            assert_eq!(h.rxq.used_elem(i).1, 0, "chain {i}");
        }
        assert_eq!(h.received(6, good).1, frame);
        assert_eq!(h.guest_bytes(guard, 2048), [0x5a; 2048], "never written");
        assert_eq!(h.guest_bytes(straddling, 100), [0; 100]);
        let c = h.counters();
        assert_eq!((c.rx_malformed, c.rx_frames), (6, 1));
    });
}

#[test]
fn only_unusable_receive_chains_means_waiting_for_buffers() {
    in_netns(|| {
        let mut h = Harness::new("ember-allbad", |_| {});
        let ro = h.area(2048);
        for _ in 0..4 {
            h.rx_chain(&[(ro, 2048, 0)]);
        }
        h.kick(RX_QUEUE);
        h.port.send(&test_frame(60, 1));
        assert!(h.run_for(Duration::from_millis(200)) <= 2);
        let c = h.counters();
        assert_eq!((c.rx_malformed, c.rx_no_buffer, c.rx_frames), (4, 1, 0));
        let good = h.post_rx(2048);
        h.kick(RX_QUEUE);
        assert_eq!(h.received(4, good).1, test_frame(60, 1));
    });
}

#[test]
fn available_index_beyond_the_queue_size_does_not_spin() {
    in_netns(|| {
        let mut h = Harness::new("ember-ring", |_| {});
        h.txq.set_avail_idx(QUEUE_SIZE + 10);
        h.rxq.set_avail_idx(QUEUE_SIZE + 10);
        let start = Instant::now();
        h.kick(TX_QUEUE);
        h.port.send(&test_frame(60, 1));
        h.kick(RX_QUEUE);
        let wakeups = h.run_for(Duration::from_millis(200));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(wakeups <= 2, "{wakeups} wake-ups");
        assert_eq!((h.txq.used_idx(), h.rxq.used_idx()), (0, 0));
        let c = h.counters();
        assert_eq!(c.tx_malformed, 1);
        assert!(c.rx_malformed >= 1);
        assert_eq!(c.rx_frames, 0);
    });
}

#[test]
fn a_bogus_receive_head_does_not_stop_the_queue() {
    in_netns(|| {
        let mut h = Harness::new("ember-rxhead", |_| {});
        h.rxq.publish(QUEUE_SIZE + 1);
        let good = h.post_rx(2048);
        h.kick(RX_QUEUE);
        h.port.send(&test_frame(60, 1));
        h.run_until_rx_used(1, Duration::from_secs(2));
        assert_eq!(h.received(0, good).1, test_frame(60, 1));
        let c = h.counters();
        assert_eq!((c.rx_malformed, c.event_errors), (1, 1));
    });
}

#[test]
fn a_deleted_tap_leaves_the_event_loop_instead_of_spinning() {
    in_netns(|| {
        let mut h = Harness::new("ember-gone", |_| {});
        let status = std::process::Command::new("ip")
            .args(["link", "del", "ember-gone"])
            .status()
            .unwrap();
        assert!(status.success());
        let wakeups = h.run_for(Duration::from_millis(200));
        assert!(wakeups <= 2, "{wakeups} wake-ups");
        let c = h.counters();
        assert_eq!((c.rx_tap_errors, c.tap_events), (1, 1), "reported once");
        // Transmission fails frame by frame, counted, without harm.
        h.queue_tx(&ZERO_HDR, &test_frame(60, 1));
        h.kick(TX_QUEUE);
        assert_eq!(h.txq.used_idx(), 1);
        assert_eq!(h.counters().tx_tap_errors, 1);
    });
}
