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

/// A TCP SYN from the guest's port `port` to the MMDS's port 80.
fn syn(port: u16) -> Vec<u8> {
    let mut f = MMDS_MAC.to_vec();
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&DEFAULT_IPV4_ADDRESS.octets());
    let sum = f[14..34]
        .chunks(2)
        .map(|p| u32::from(u16::from_be_bytes([p[0], p[1]])))
        .sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&[
        0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    f
}

#[test]
fn a_syn_burst_fills_the_reply_queue_to_its_cap_and_the_queued_replies_arrive() {
    in_netns(|| {
        let mut h = Harness::new("ember-mmdsq", |_| {});
        let store = Arc::new(Mutex::new(Mmds::default()));
        h.net.lock().unwrap().set_mmds(store, DEFAULT_IPV4_ADDRESS);
        for port in 0..100 {
            h.queue_tx(&ZERO_HDR, &syn(1000 + port));
        }
        h.kick(TX_QUEUE);
        h.run_until_tx_used(100, Duration::from_secs(2));
        let mmds = h.net.lock().unwrap().mmds_counters().unwrap();
        assert_eq!(mmds.rx_accepted, 100);
        // The guest posted no receive buffer: the replies wait, up to the
        // cap, and the SYNs past it are dropped and counted.
        let queued = 100 - mmds.rx_accepted_err;
        assert_eq!(
            queued,
            ember_mmds::net::phy::MAX_QUEUED_REPLIES as u64,
            "{mmds:?}"
        );
        assert_eq!(mmds.connections_created, queued);
        // Buffers for all of them: every queued SYN-ACK arrives.
        for _ in 0..queued {
            h.post_rx(2048);
        }
        h.kick(RX_QUEUE);
        h.run_until_rx_used(queued as u16, Duration::from_secs(2));
        assert_eq!(u64::from(h.rxq.used_idx()), queued);
        assert_eq!(h.counters().tx_frames, 0);
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
