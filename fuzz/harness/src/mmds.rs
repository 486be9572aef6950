//! `mmds_frames`: a guest's frames through the MMDS network stack
//! (`ember_mmds::net::MmdsStack`): Ethernet, ARP, IPv4, TCP and HTTP as the
//! guest sends them, the stack's replies as the guest would receive them.
//!
//! Invariants: nothing panics; a frame is taken exactly when it is an MMDS
//! frame (`is_mmds_frame`), and every taken frame is counted; connections
//! never exceed `MAX_CONNECTIONS`, queued replies never exceed
//! `MAX_QUEUED_REPLIES` + 1; every reply is an Ethernet frame from the MMDS
//! MAC of at most `REPLY_MTU` bytes, ARP (a reply, or a request for a guest
//! address) from the MMDS's MAC and address, or an IPv4 packet from the
//! MMDS address with a valid header checksum; the heap stays under the
//! harness's cap.
//!
//! Input format: a settings byte (bit 0: MMDS V2, bit 1: IMDS compat), then
//! frames, each a flags byte, a length (u16, little-endian) and the bytes.
//! Flags: bit 0 sets the TCP acknowledgement number to the next byte the
//! stack will send (so that fuzzed data reaches HTTP past the handshake);
//! bit 1 takes the replies queued after the frame.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ember_mmds::net::phy::{MAX_QUEUED_REPLIES, REPLY_MTU};
use ember_mmds::net::{is_mmds_frame, MmdsStack, MAX_CONNECTIONS, MMDS_MAC};
use ember_mmds::{Mmds, MmdsVersion, DEFAULT_IPV4_ADDRESS};

/// Flag: acknowledge what the stack sent so far.
pub const FIX_ACK: u8 = 1;
/// Flag: take the replies after this frame.
pub const DRAIN: u8 = 2;

const ETH: usize = 14;

/// Encodes a settings byte and `frames` (flags, bytes) as an input.
pub fn encode(settings: u8, frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![settings];
    for (flags, frame) in frames {
        let len = u16::try_from(frame.len()).unwrap_or(u16::MAX);
        out.push(*flags);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&frame[..usize::from(len)]);
    }
    out
}

const GUEST_MAC: [u8; 6] = [0x06, 0, 0, 0, 0, 2];
const GUEST_IP: [u8; 4] = [172, 16, 0, 2];

fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = MMDS_MAC.to_vec();
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The guest's ARP request for the MMDS address.
pub fn arp_request() -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&GUEST_MAC);
    arp.extend_from_slice(&GUEST_IP);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&DEFAULT_IPV4_ADDRESS.octets());
    ethernet(0x0806, &arp)
}

/// A TCP segment from the guest's port `port` to the MMDS's port 80 (the
/// TCP checksum left to "offload": the stack does not check it).
pub fn tcp_frame(port: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut tcp = port.to_be_bytes().to_vec();
    tcp.extend_from_slice(&80u16.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(payload);
    let total = u16::try_from(20 + tcp.len()).unwrap_or(u16::MAX);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    ip.extend_from_slice(&GUEST_IP);
    ip.extend_from_slice(&DEFAULT_IPV4_ADDRESS.octets());
    let sum = !ones_complement(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ethernet(0x0800, &ip)
}

fn store(settings: u8) -> Arc<Mutex<Mmds>> {
    let mut mmds = Mmds::default();
    if settings & 1 != 0 {
        mmds.set_version(MmdsVersion::V2);
    }
    mmds.set_imds_compat(settings & 2 != 0);
    let doc = serde_json::json!({"latest": {"meta-data": {"ami-id": "ami-1", "n": 3}}});
    let _ = mmds.put(doc);
    Arc::new(Mutex::new(mmds))
}

/// Checks one reply frame; returns the sequence number after its data, if
/// it is a TCP segment.
fn check_reply(frame: &[u8], address: Ipv4Addr) -> Option<u32> {
    assert!(
        frame.len() >= ETH && frame.len() <= REPLY_MTU,
        "reply of {} bytes",
        frame.len()
    );
    assert_eq!(&frame[6..12], &MMDS_MAC, "reply from the MMDS MAC");
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0806 => {
            // A reply, or a request for a guest address the neighbour
            // cache could not learn (a multicast source, say).
            let op = &frame[ETH + 6..ETH + 8];
            assert!(op == [0, 1] || op == [0, 2], "ARP operation {op:?}");
            assert_eq!(&frame[ETH + 8..ETH + 14], &MMDS_MAC);
            assert_eq!(&frame[ETH + 14..ETH + 18], &address.octets());
            None
        }
        0x0800 => {
            let ip = &frame[ETH..];
            let ihl = usize::from(ip[0] & 0xf) * 4;
            assert_eq!(ones_complement(&ip[..ihl]), 0xffff, "IPv4 header checksum");
            assert_eq!(&ip[12..16], &address.octets(), "from the MMDS address");
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let tcp = &ip[ihl..total];
            let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            let data = tcp.len() - usize::from(tcp[12] >> 4) * 4;
            let syn_fin = u32::from(tcp[13] & 0x3 != 0);
            Some(seq.wrapping_add(u32::try_from(data).unwrap_or(0)) + syn_fin)
        }
        other => panic!("reply of EtherType {other:#06x}"),
    }
}

fn ones_complement(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|p| u32::from(u16::from_be_bytes([p[0], p.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).unwrap_or(0xffff)
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&settings, mut rest)) = data.split_first() else {
        return;
    };
    let address = DEFAULT_IPV4_ADDRESS;
    let mut stack = MmdsStack::with_seed(store(settings), address, 7);
    let mut next_seq: Option<u32> = None;
    let mut taken = 0u64;
    while rest.len() >= 3 {
        let flags = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let mut frame = rest[3..3 + len].to_vec();
        rest = &rest[3 + len..];
        if flags & FIX_ACK != 0 {
            if let (Some(ack), Some(field)) = (next_seq, frame.get_mut(ETH + 20 + 8..ETH + 20 + 12))
            {
                field.copy_from_slice(&ack.to_be_bytes());
            }
        }
        let expected = frame.len() >= ETH && is_mmds_frame(&frame, address);
        assert_eq!(stack.detour(&frame), expected, "taken iff an MMDS frame");
        taken += u64::from(expected);
        assert!(stack.connections() <= MAX_CONNECTIONS);
        assert!(stack.queued_replies() <= MAX_QUEUED_REPLIES + 1);
        if flags & DRAIN != 0 {
            while let Some(reply) = stack.next_reply() {
                next_seq = check_reply(&reply, address).or(next_seq);
                assert!(stack.queued_replies() <= MAX_QUEUED_REPLIES + 1);
            }
        }
    }
    let counters = stack.counters();
    assert_eq!(counters.rx_accepted, taken);
    assert!(counters.connections_destroyed <= counters.connections_created);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_reach_http() {
        for (name, input) in crate::seeds::mmds_frames() {
            eprintln!("{name}");
            run(&input);
        }
    }

    #[test]
    fn a_get_over_tcp_is_answered() {
        let input = crate::seeds::mmds_frames()
            .into_iter()
            .find(|(name, _)| name == "get")
            .map(|(_, input)| input)
            .unwrap_or_default();
        // The harness's own view: the GET's answer came back.
        let Some((&settings, mut rest)) = input.split_first() else {
            panic!("empty seed");
        };
        let mut stack = MmdsStack::with_seed(store(settings), DEFAULT_IPV4_ADDRESS, 7);
        let mut next_seq = None;
        let mut got = Vec::new();
        while rest.len() >= 3 {
            let len = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
            let mut frame = rest[3..3 + len].to_vec();
            if rest[0] & FIX_ACK != 0 {
                if let Some(ack) = next_seq {
                    frame[ETH + 28..ETH + 32].copy_from_slice(&u32::to_be_bytes(ack));
                }
            }
            rest = &rest[3 + len..];
            stack.detour(&frame);
            while let Some(reply) = stack.next_reply() {
                next_seq = check_reply(&reply, DEFAULT_IPV4_ADDRESS).or(next_seq);
                got.extend_from_slice(&reply);
            }
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("ami-1"));
    }
}
