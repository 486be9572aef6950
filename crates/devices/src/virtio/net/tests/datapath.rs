//! Frames in both directions, receive buffers, two interfaces, configuration
//! space, offloads, reset.

use std::time::Duration;

use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress};

use super::host::{in_netns, set_txqueuelen, test_frame};
use super::*;
use crate::virtio::test_utils::{assert_features, bucket, memory, WRITE};

#[test]
fn a_transmitted_frame_reaches_the_tap_byte_for_byte() {
    in_netns(|| {
        let mut h = Harness::new("ember-tx", |_| {});
        let frame = test_frame(1514, 1);
        let head = h.queue_tx(&ZERO_HDR, &frame);
        h.kick(TX_QUEUE);
        assert_eq!(h.port.recv().unwrap(), frame);
        assert_eq!(h.txq.used_idx(), 1);
        assert_eq!(h.txq.used_elem(0), (u32::from(head), 0));
        assert_eq!(h.irq.status(), VIRTIO_MMIO_INT_VRING);
        assert_eq!(h.irq.event().event_fd().read().unwrap(), 1);
        let c = h.counters();
        assert_eq!((c.tx_frames, c.tx_bytes), (1, 1514));

        // Any layout: header and frame in one buffer, or the header split
        // over two buffers and the frame over three.
        let small = test_frame(60, 2);
        let one = h.area(72);
        h.mem.write_slice(&ZERO_HDR, GuestAddress(one)).unwrap();
        h.mem.write_slice(&small, GuestAddress(one + 12)).unwrap();
        h.tx_chain(&[(one, 72, 0)]);
        let bytes = [&ZERO_HDR[..], &frame[..]].concat();
        let cuts = [0usize, 5, 12, 100, 1000, bytes.len()];
        let descs: Vec<(u64, u32, u16)> = cuts
            .windows(2)
            .map(|w| {
                let at = h.area((w[1] - w[0]) as u32);
                h.mem
                    .write_slice(&bytes[w[0]..w[1]], GuestAddress(at))
                    .unwrap();
                (at, (w[1] - w[0]) as u32, 0)
            })
            .collect();
        h.tx_chain(&descs);
        h.kick(TX_QUEUE);
        assert_eq!(h.port.recv().unwrap(), small);
        assert_eq!(h.port.recv().unwrap(), frame);
        assert_eq!(h.counters().tx_frames, 3);
    });
}

#[test]
fn a_batch_of_frames_is_sent_in_order_with_one_interrupt() {
    in_netns(|| {
        let mut h = Harness::new("ember-batch", |_| {});
        let frames: Vec<Vec<u8>> = (0..20).map(|i| test_frame(64 + i, i as u8)).collect();
        for frame in &frames {
            h.queue_tx(&ZERO_HDR, frame);
        }
        h.kick(TX_QUEUE);
        assert_eq!(h.txq.used_idx(), 20);
        for frame in &frames {
            assert_eq!(&h.port.recv().unwrap(), frame);
        }
        assert_eq!(h.irq.event().event_fd().read().unwrap(), 1);
    });
}

#[test]
fn a_received_frame_lands_in_the_guest_with_a_clean_header() {
    in_netns(|| {
        let mut h = Harness::new("ember-rx", |_| {});
        let buf = h.post_rx(2048);
        h.kick(RX_QUEUE);
        let frame = test_frame(1514, 3);
        h.port.send(&frame);
        h.run_until_rx_used(1, Duration::from_secs(2));
        let (hdr, got) = h.received(0, buf);
        assert_eq!(hdr, RX_HDR, "no offload information, num_buffers = 1");
        assert_eq!(got, frame);
        assert_eq!(h.irq.status(), VIRTIO_MMIO_INT_VRING);
        let c = h.counters();
        assert_eq!((c.rx_frames, c.rx_bytes), (1, 1514));
        // Bytes past the frame are untouched.
        assert_eq!(h.guest_bytes(buf.addr + 12 + 1514, 16), [0xa5; 16]);

        // A chain of a header buffer and two data buffers.
        let (a, b, c) = (h.area(12), h.area(40), h.area(2000));
        let head = h.rx_chain(&[(a, 12, WRITE), (b, 40, WRITE), (c, 2000, WRITE)]);
        h.kick(RX_QUEUE);
        let frame = test_frame(100, 4);
        h.port.send(&frame);
        h.run_until_rx_used(2, Duration::from_secs(2));
        assert_eq!(h.rxq.used_elem(1), (u32::from(head), 112));
        assert_eq!(h.guest_bytes(a, 12), RX_HDR);
        assert_eq!(h.guest_bytes(b, 40), frame[..40]);
        assert_eq!(h.guest_bytes(c, 60), frame[40..]);
    });
}

#[test]
fn frames_arriving_before_buffers_wait_without_a_busy_loop() {
    in_netns(|| {
        let mut h = Harness::new("ember-nobuf", |_| {});
        let frames: Vec<Vec<u8>> = (0..3).map(|i| test_frame(60 + i, i as u8)).collect();
        for frame in &frames {
            h.port.send(frame);
        }
        // One wake-up for the TAP, then silence although the TAP stays readable.
        let wakeups = h.run_for(Duration::from_millis(300));
        assert_eq!(wakeups, 1);
        let c = h.counters();
        assert_eq!((c.rx_no_buffer, c.tap_events, c.rx_frames), (1, 1, 0));
        assert_eq!(
            h.net.lock().unwrap().state().rx_pending_len,
            Some(12 + 60),
            "the first frame waits in the device"
        );
        // The driver posts buffers and notifies: everything arrives, in order.
        let bufs: Vec<RxBuf> = (0..8).map(|_| h.post_rx(2048)).collect();
        h.kick(RX_QUEUE);
        h.run_until_rx_used(3, Duration::from_secs(2));
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(&h.received(i as u16, bufs[i]).1, frame);
        }
        assert_eq!(h.net.lock().unwrap().state().rx_pending_len, None);
        // Then the device watches the TAP again.
        h.port.send(&frames[0]);
        h.run_until_rx_used(4, Duration::from_secs(2));
    });
}

#[test]
fn without_buffers_the_tap_queue_overflows_and_drops() {
    in_netns(|| {
        let mut h = Harness::new("ember-drop", |_| {});
        set_txqueuelen("ember-drop", 4);
        for i in 0..20u8 {
            h.port.send(&test_frame(60, i));
        }
        h.run_for(Duration::from_millis(100));
        assert_eq!(h.counters().rx_no_buffer, 1);
        let bufs: Vec<RxBuf> = (0..20).map(|_| h.post_rx(2048)).collect();
        h.kick(RX_QUEUE);
        h.run_for(Duration::from_millis(200));
        let delivered = h.rxq.used_idx();
        // The kernel kept a few frames for the TAP's reader and dropped the
        // rest; the device delivers the ones kept, oldest first.
        // (4 on Linux 6.x: the TAP queue holds txqueuelen frames, the
        // device one more, which it read before its queue filled.)
        assert!((1..=5).contains(&delivered), "{delivered} delivered");
        for i in 0..delivered {
            assert_eq!(h.received(i, bufs[i as usize]).1, test_frame(60, i as u8));
        }
        assert_eq!(h.counters().rx_frames, u64::from(delivered));
    });
}

#[test]
fn a_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() {
    in_netns(|| {
        let mut h = Harness::new("ember-big", |_| {});
        let buf = h.post_rx(12 + 100);
        h.kick(RX_QUEUE);
        h.port.send(&test_frame(101, 1));
        h.port.send(&test_frame(100, 2));
        h.run_until_rx_used(1, Duration::from_secs(2));
        let (hdr, got) = h.received(0, buf);
        assert_eq!((hdr, got), (RX_HDR, test_frame(100, 2)));
        let c = h.counters();
        assert_eq!((c.rx_too_big, c.rx_frames), (1, 1));
    });
}

#[test]
fn two_interfaces_at_once() {
    in_netns(|| {
        let mut a = Harness::new("ember-a", |_| {});
        let mut b = Harness::inactive("ember-b", |c| {
            c.iface_id = "eth1".to_owned();
            c.guest_mac = Some([0x06, 0xe0, 0, 0, 0, 2]);
        });
        // Both devices on the first harness's event loop.
        b.manager = Manager::new().unwrap();
        a.manager.add_subscriber(b.net.clone());
        b.activate(basic_features());
        a.run_once();

        let (fa, fb) = (test_frame(80, 0xa), test_frame(90, 0xb));
        a.queue_tx(&ZERO_HDR, &fa);
        b.queue_tx(&ZERO_HDR, &fb);
        notify_queue(&b.net, TX_QUEUE);
        a.kick(TX_QUEUE);
        a.run_for(Duration::from_millis(50));
        assert_eq!(a.port.recv().unwrap(), fa);
        assert_eq!(b.port.recv().unwrap(), fb);
        a.assert_no_host_frame(Duration::from_millis(50));
        b.assert_no_host_frame(Duration::from_millis(50));

        let (ra, rb) = (a.post_rx(2048), b.post_rx(2048));
        notify_queue(&b.net, RX_QUEUE);
        a.kick(RX_QUEUE);
        b.port.send(&test_frame(70, 0xbb));
        a.port.send(&test_frame(71, 0xaa));
        a.run_until_rx_used(1, Duration::from_secs(2));
        a.run_for(Duration::from_millis(50));
        assert_eq!(b.rxq.used_idx(), 1);
        assert_eq!(a.received(0, ra).1, test_frame(71, 0xaa));
        assert_eq!(b.received(0, rb).1, test_frame(70, 0xbb));
        assert_eq!(a.counters().tx_frames, 1);
        assert_eq!(b.counters().rx_frames, 1);
    });
}

#[test]
fn config_space_holds_the_mac_and_link_status() {
    in_netns(|| {
        let h = Harness::inactive("ember-cfg", |_| {});
        let net = h.net.lock().unwrap();
        assert_eq!(net.device_type(), 1);
        assert_eq!(net.queue_max_sizes(), [256, 256]);
        assert_eq!(net.queue_events().len(), 2);
        let mut config = [0xffu8; 16];
        net.read_config(0, &mut config);
        assert_eq!(config[..6], MAC);
        assert_eq!(config[6..8], [1, 0], "VIRTIO_NET_S_LINK_UP");
        assert_eq!(config[8..10], [1, 0], "one queue pair");
        assert_eq!(config[10..12], [0, 0], "no MTU");
        assert_eq!(config[12..], [0; 4], "past the end reads as 0");
        assert_eq!(
            net.state().avail_features & (1 << 3),
            0,
            "no VIRTIO_NET_F_MTU"
        );
        let mut mac_tail = [0u8; 2];
        net.read_config(4, &mut mac_tail);
        assert_eq!(mac_tail, MAC[4..]);
        let mut far = [0xffu8; 4];
        net.read_config(u64::MAX, &mut far);
        assert_eq!(far, [0; 4]);
        drop(net);
        h.net.lock().unwrap().write_config(0, &[0; 6]);
        let mut mac = [0u8; 6];
        h.net.lock().unwrap().read_config(0, &mut mac);
        assert_eq!(mac, MAC, "the MAC is read-only");
    });
}

#[test]
fn the_mac_and_mtu_come_from_the_configuration() {
    in_netns(|| {
        // Without a configured MAC the device makes up a local unicast one.
        let generated = Net::<Mem>::new(NetConfig {
            guest_mac: None,
            ..net_config("ember-gen")
        })
        .unwrap();
        assert_eq!(generated.mac()[0] & 3, 2);
        assert_ne!(generated.mac(), MAC);
        // An MTU is offered and read at offset 10.
        let with_mtu = Net::<Mem>::new(NetConfig {
            mtu: Some(1400),
            ..net_config("ember-mtu")
        })
        .unwrap();
        assert_ne!(with_mtu.state().avail_features & (1 << 3), 0);
        let mut mtu = [0u8; 2];
        with_mtu.read_config(10, &mut mtu);
        assert_eq!(u16::from_le_bytes(mtu), 1400);
        let bad = Net::<Mem>::new(NetConfig {
            guest_mac: Some([1, 2, 3, 4, 5, 6]),
            ..net_config("ember-bad")
        });
        assert!(matches!(
            bad,
            Err(crate::Error::Net(crate::virtio::net::Error::InvalidMac(_)))
        ));
        let no_tap = Net::<Mem>::new(net_config("name-is-far-too-long"));
        assert!(matches!(
            no_tap,
            Err(crate::Error::Net(crate::virtio::net::Error::Tap { .. }))
        ));
    });
}

#[test]
fn offloads_are_offered_as_the_tap_supports_them_and_follow_negotiation() {
    in_netns(|| {
        let mut h = Harness::inactive("ember-off", |_| {});
        let state = h.net.lock().unwrap().state();
        let features = state.avail_features;
        assert_features(
            features,
            &[
                VIRTIO_F_VERSION_1,
                VIRTIO_RING_F_EVENT_IDX,
                VIRTIO_NET_F_MAC,
                VIRTIO_NET_F_STATUS,
            ],
        );
        assert_eq!(features & feature_bit(VIRTIO_NET_F_MRG_RXBUF), 0);
        // This host's TAP supports checksum and TCP segmentation offloads.
        let tso = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        assert_eq!(state.tap_offloads_supported & tso, tso);
        for (flag, bits) in [
            (
                libc::TUN_F_CSUM,
                [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM],
            ),
            (
                libc::TUN_F_TSO4,
                [VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_GUEST_TSO4],
            ),
            (
                libc::TUN_F_TSO6,
                [VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_GUEST_TSO6],
            ),
            (
                libc::TUN_F_UFO,
                [VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_GUEST_UFO],
            ),
        ] {
            let supported = state.tap_offloads_supported & flag != 0;
            for bit in bits {
                assert_eq!(features & feature_bit(bit) != 0, supported, "bit {bit}");
            }
        }
        assert_eq!(state.tap_offloads, 0);

        let acked = basic_features()
            | feature_bit(VIRTIO_NET_F_GUEST_CSUM)
            | feature_bit(VIRTIO_NET_F_GUEST_TSO4)
            | feature_bit(VIRTIO_NET_F_HOST_TSO6);
        h.activate(acked);
        let state = h.net.lock().unwrap().state();
        assert_eq!(state.acked_features, acked);
        assert_eq!(state.tap_offloads, libc::TUN_F_CSUM | libc::TUN_F_TSO4);
        h.net.lock().unwrap().reset();
        assert_eq!(h.net.lock().unwrap().state().tap_offloads, 0);
    });
}

#[test]
fn the_header_goes_to_the_tap_unchanged() {
    in_netns(|| {
        let mut h = Harness::new("ember-hdr", |_| {});
        // A GSO type the kernel does not know: the TAP refuses the frame,
        // which shows that the driver's header reached it.
        let mut bogus = ZERO_HDR;
        bogus[1] = 0x7f;
        h.queue_tx(&bogus, &test_frame(60, 1));
        h.queue_tx(&ZERO_HDR, &test_frame(60, 2));
        h.kick(TX_QUEUE);
        assert_eq!(h.txq.used_idx(), 2);
        assert_eq!(h.port.recv().unwrap(), test_frame(60, 2));
        let c = h.counters();
        assert_eq!((c.tx_tap_errors, c.tx_frames), (1, 1));
    });
}

#[test]
fn an_inactive_device_ignores_the_tap_and_its_queues() {
    in_netns(|| {
        let mut h = Harness::inactive("ember-idle", |_| {});
        h.port.send(&test_frame(60, 1));
        h.port.send(&test_frame(61, 2));
        assert_eq!(
            h.run_for(Duration::from_millis(100)),
            0,
            "the TAP is not watched"
        );
        let buf = h.post_rx(2048);
        h.kick(RX_QUEUE);
        h.queue_tx(&ZERO_HDR, &test_frame(60, 3));
        h.kick(TX_QUEUE);
        assert_eq!((h.rxq.used_idx(), h.txq.used_idx()), (0, 0));
        assert_eq!(h.counters().ignored_notifications, 2);
        h.assert_no_host_frame(Duration::from_millis(50));

        // Activation picks up the buffers and the frames waiting on both sides.
        h.activate(basic_features());
        h.run_until_rx_used(1, Duration::from_secs(2));
        h.run_until_tx_used(1, Duration::from_secs(2));
        assert_eq!(h.received(0, buf).1, test_frame(60, 1));
        assert_eq!(h.port.recv().unwrap(), test_frame(60, 3));
    });
}

#[test]
fn reset_midway_then_set_up_again() {
    in_netns(|| {
        let mut h = Harness::new("ember-reset", |_| {});
        h.port.send(&test_frame(60, 1));
        h.run_for(Duration::from_millis(50));
        assert_eq!(h.net.lock().unwrap().state().rx_pending_len, Some(72));
        h.net.lock().unwrap().reset();
        let state = h.net.lock().unwrap().state();
        assert!(h.net.lock().unwrap().queue_states().is_empty());
        assert_eq!(state.rx_pending_len, None);
        assert_eq!(state.counters.rx_dropped, 1, "the waiting frame is gone");
        // The TAP wakes the inactive device once, which then stops watching it.
        h.port.send(&test_frame(60, 2));
        assert!(h.run_for(Duration::from_millis(100)) <= 1);

        // The driver sets up fresh queues elsewhere, with EVENT_IDX.
        h.rxq = GuestQueue::new(&h.mem, 0x8000, 64);
        h.txq = GuestQueue::new(&h.mem, 0xc000, 64);
        h.next_rx_desc = 0;
        h.next_tx_desc = 0;
        let buf = h.post_rx(2048);
        h.activate(basic_features() | feature_bit(VIRTIO_RING_F_EVENT_IDX));
        h.run_until_rx_used(1, Duration::from_secs(2));
        assert_eq!(h.received(0, buf).1, test_frame(60, 2));
        h.queue_tx(&ZERO_HDR, &test_frame(60, 3));
        h.kick(TX_QUEUE);
        assert_eq!(h.port.recv().unwrap(), test_frame(60, 3));
    });
}

#[test]
fn with_event_idx_the_device_asks_for_the_next_receive_buffer() {
    in_netns(|| {
        let mut h = Harness::inactive("ember-evidx", |_| {});
        h.activate(basic_features() | feature_bit(VIRTIO_RING_F_EVENT_IDX));
        h.run_once();
        h.port.send(&test_frame(60, 1));
        h.run_for(Duration::from_millis(50));
        assert_eq!(h.counters().rx_no_buffer, 1);
        // Waiting for buffers, the device asked to be notified of the first one.
        assert_eq!(h.rxq.avail_event(), 0);
        let buf = h.post_rx(2048);
        h.rxq.set_used_event(0);
        h.kick(RX_QUEUE);
        assert_eq!(h.received(0, buf).1, test_frame(60, 1));
        assert_eq!(h.irq.status(), VIRTIO_MMIO_INT_VRING);
        h.run_for(Duration::from_millis(20));
        h.port.send(&test_frame(60, 2));
        h.run_for(Duration::from_millis(50));
        assert_eq!(h.rxq.avail_event(), 1, "and then of the second");
    });
}

#[test]
fn state_reflects_the_device() {
    in_netns(|| {
        let mut h = Harness::new("ember-state", |c| {
            c.tx_rate_limiter.ops = bucket(100, 0, 1000);
        });
        h.queue_tx(&ZERO_HDR, &test_frame(60, 1));
        h.kick(TX_QUEUE);
        let state = h.net.lock().unwrap().state();
        assert_eq!(state.iface_id, "eth0");
        assert_eq!(state.host_dev_name, "ember-state");
        assert_eq!(state.mac, MAC);
        assert_eq!(state.acked_features, basic_features());
        let [rx, tx] = h.net.lock().unwrap().queue_states()[..] else {
            panic!("two queues while active");
        };
        assert_eq!((tx.next_avail, tx.next_used), (1, 1));
        assert_eq!(rx.next_avail, 0);
        assert_eq!(state.tx_rate_limiter.ops.unwrap().budget, 99);
        assert!(state.rx_rate_limiter.ops.is_none());
        assert_eq!(state.counters.tx_frames, 1);
    });
}

#[test]
fn activation_needs_both_queues_ready_and_happens_once() {
    in_netns(|| {
        let h = Harness::inactive("ember-act", |_| {});
        let mem = memory(&[(0, 0x10000)]);
        let irq: Arc<dyn crate::virtio::VirtioInterrupt> = h.irq.clone();
        let mut net = h.net.lock().unwrap();
        let ready = || h.rxq.device_queue(QUEUE_SIZE);
        let mut not_ready = ready();
        not_ready.set_ready(false);
        let err = net.activate(mem.clone(), vec![ready(), not_ready], irq.clone(), 0);
        assert!(matches!(
            err,
            Err(crate::Error::Activation(
                crate::virtio::ActivationError::QueueNotReady(1)
            ))
        ));
        let err = net.activate(mem.clone(), vec![ready()], irq.clone(), 0);
        assert!(matches!(
            err,
            Err(crate::Error::Activation(
                crate::virtio::ActivationError::QueueNotReady(1)
            ))
        ));
        let err = net.activate(mem.clone(), Vec::new(), irq.clone(), 0);
        assert!(matches!(
            err,
            Err(crate::Error::Activation(
                crate::virtio::ActivationError::QueueNotReady(0)
            ))
        ));
        assert!(!net.is_activated());
        net.activate(mem.clone(), vec![ready(), ready()], irq.clone(), 0)
            .unwrap();
        let err = net.activate(mem, vec![ready(), ready()], irq, 0);
        assert!(matches!(
            err,
            Err(crate::Error::Activation(
                crate::virtio::ActivationError::AlreadyActive
            ))
        ));
    });
}

#[test]
fn more_frames_than_one_event_handles_all_arrive() {
    in_netns(|| {
        let mut h = Harness::inactive("ember-many", |_| {});
        // 200 frames wait in the TAP for an inactive device; 200 buffers.
        let frames = 200u16;
        for i in 0..frames {
            h.port.send(&test_frame(60, i as u8));
        }
        let bufs: Vec<RxBuf> = (0..frames).map(|_| h.post_rx(128)).collect();
        h.activate(basic_features());
        let wakeups = h.run_until_rx_used(frames, Duration::from_secs(5));
        assert!(
            wakeups >= 2,
            "at most {} frames per event",
            super::super::rx::RX_BUDGET
        );
        for i in 0..frames {
            assert_eq!(
                h.received(i, bufs[usize::from(i)]).1,
                test_frame(60, i as u8)
            );
        }

        // A full transmit queue.
        for i in 0..QUEUE_SIZE {
            let frame = test_frame(60, i as u8);
            let at = h.area(72);
            h.mem.write_slice(&ZERO_HDR, GuestAddress(at)).unwrap();
            h.mem.write_slice(&frame, GuestAddress(at + 12)).unwrap();
            h.txq.set_desc(i, (at, 72, 0, 0));
            h.txq.publish(i);
        }
        h.kick(TX_QUEUE);
        h.run_until_tx_used(QUEUE_SIZE, Duration::from_secs(5));
        for i in 0..QUEUE_SIZE {
            assert_eq!(h.port.recv().unwrap(), test_frame(60, i as u8));
        }
        assert_eq!(h.counters().tx_frames, u64::from(QUEUE_SIZE));
    });
}
