//! The MMDS detour: frames for the MMDS never reach the TAP, its replies
//! arrive in the guest's receive buffers.

use std::net::Ipv4Addr;

use ember_mmds::net::MMDS_MAC;
use ember_mmds::{Mmds, DEFAULT_IPV4_ADDRESS};

use super::host::{in_netns, test_frame};
use super::*;

const GUEST_IP: [u8; 4] = [10, 0, 0, 2];

/// An ARP request from the guest for `target`.
fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

#[test]
fn mmds_frames_are_answered_by_the_device_and_others_reach_the_tap() {
    in_netns(|| {
        let mut h = Harness::new("ember-mmds", |_| {});
        let store = Arc::new(Mutex::new(Mmds::default()));
        h.net.lock().unwrap().set_mmds(store, DEFAULT_IPV4_ADDRESS);
        let buf = h.post_rx(2048);
        h.kick(RX_QUEUE);
        h.queue_tx(&ZERO_HDR, &arp_request(DEFAULT_IPV4_ADDRESS));
        h.kick(TX_QUEUE);
        h.run_until_rx_used(1, Duration::from_secs(2));
        let (hdr, reply) = h.received(0, buf);
        assert_eq!(hdr, RX_HDR);
        assert_eq!(&reply[..6], &MAC);
        assert_eq!(&reply[22..28], &MMDS_MAC, "the MMDS's MAC in the ARP reply");
        assert_eq!(h.counters().tx_frames, 0, "nothing written to the TAP");
        let mmds = h.net.lock().unwrap().mmds_counters().unwrap();
        assert_eq!((mmds.rx_accepted, mmds.tx_frames), (1, 1));

        // ARP for another address, and any other frame, go to the TAP (the
        // host port sees only test frames: the counter tells for ARP).
        h.queue_tx(&ZERO_HDR, &arp_request(Ipv4Addr::new(10, 0, 0, 1)));
        h.kick(TX_QUEUE);
        h.run_until_tx_used(2, Duration::from_secs(2));
        assert_eq!(h.counters().tx_frames, 1);
        let frame = test_frame(100, 7);
        h.queue_tx(&ZERO_HDR, &frame);
        h.kick(TX_QUEUE);
        assert_eq!(h.port.recv().unwrap(), frame);
    });
}

#[test]
fn without_mmds_config_mmds_frames_go_to_the_tap() {
    in_netns(|| {
        let mut h = Harness::new("ember-nommds", |_| {});
        h.queue_tx(&ZERO_HDR, &arp_request(DEFAULT_IPV4_ADDRESS));
        h.kick(TX_QUEUE);
        h.run_until_tx_used(1, Duration::from_secs(2));
        assert_eq!(h.counters().tx_frames, 1, "written to the TAP");
        assert!(h.net.lock().unwrap().mmds_counters().is_none());
    });
}
