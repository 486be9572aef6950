//! Stack tests with frames built here: ARP, the TCP handshake, whole HTTP
//! exchanges, and hostile traffic that must stay within the caps.

use super::*;
use crate::MmdsVersion;
use serde_json::json;

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const GUEST_IP: [u8; 4] = [10, 0, 0, 2];
const MMDS_IP: Ipv4Addr = crate::DEFAULT_IPV4_ADDRESS;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const FIN_ACK: u8 = 0x11;
const RST: u8 = 0x04;

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in data.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        sum += hi | u32::from(pair.get(1).copied().unwrap_or(0));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0xffff)
}

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = MMDS_MAC.to_vec();
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn arp_request() -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4, 0, 1];
    p.extend_from_slice(&GUEST_MAC);
    p.extend_from_slice(&GUEST_IP);
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&MMDS_IP.octets());
    let mut f = eth(ETHERTYPE_ARP, &p);
    f[..6].copy_from_slice(&[0xff; 6]);
    f
}

fn ipv4(proto: u8, flags_frag: u16, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + payload.len()).unwrap_or(u16::MAX);
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(&flags_frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&GUEST_IP);
    h.extend_from_slice(&MMDS_IP.octets());
    let sum = checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(payload);
    eth(ETHERTYPE_IPV4, &h)
}

fn tcp(port: u16, seq: u32, ack: u32, flags: u8, window: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = port.to_be_bytes().to_vec();
    t.extend_from_slice(&MMDS_PORT.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.extend_from_slice(&[0x50, flags]);
    t.extend_from_slice(&window.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(payload);
    // The TCP checksum is left to "offload": the stack does not verify it.
    ipv4(IPPROTO_TCP, 0x4000, &t)
}

/// A reply segment, parsed.
#[derive(Debug)]
struct Seg {
    flags: u8,
    seq: u32,
    ack: u32,
    payload: Vec<u8>,
}

fn parse(frame: &[u8]) -> Option<Seg> {
    assert_eq!(&frame[..6], &GUEST_MAC, "reply to the guest's MAC");
    assert_eq!(&frame[6..12], &MMDS_MAC);
    if u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &frame[14..];
    assert_eq!(checksum(&ip[..20]), 0, "valid IPv4 checksum");
    assert_eq!(&ip[12..16], &MMDS_IP.octets());
    assert_eq!(&ip[16..20], &GUEST_IP);
    let t = &ip[20..];
    let word = |i: usize| u32::from_be_bytes([t[i], t[i + 1], t[i + 2], t[i + 3]]);
    let off = usize::from(t[12] >> 4) * 4;
    Some(Seg {
        flags: t[13],
        seq: word(4),
        ack: word(8),
        payload: t[off..].to_vec(),
    })
}

fn store(version: MmdsVersion) -> Arc<Mutex<Mmds>> {
    let mut mmds = Mmds::default();
    mmds.set_version(version);
    let data =
        json!({"latest": {"meta-data": {"ami-id": "ami-12345678", "local-ipv4": "10.0.0.2"}}});
    assert!(mmds.put(data).is_ok());
    Arc::new(Mutex::new(mmds))
}

fn drain(stack: &mut MmdsStack) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| stack.next_reply())
        .take(10_000)
        .collect()
}

/// One guest TCP connection to the MMDS.
struct Client {
    port: u16,
    seq: u32,
    ack: u32,
}

impl Client {
    fn connect(stack: &mut MmdsStack, port: u16) -> Client {
        assert!(stack.detour(&tcp(port, 1000, 0, SYN, 65535, &[])));
        let replies = drain(stack);
        let synack = replies.iter().find_map(|f| parse(f)).expect("a SYN-ACK");
        assert_eq!(synack.flags & (SYN | ACK), SYN | ACK, "{synack:?}");
        assert_eq!(synack.ack, 1001);
        let client = Client {
            port,
            seq: 1001,
            ack: synack.seq.wrapping_add(1),
        };
        assert!(stack.detour(&tcp(port, client.seq, client.ack, ACK, 65535, &[])));
        client
    }

    /// Sends `request`, acknowledges what comes back, returns the bytes.
    fn exchange(&mut self, stack: &mut MmdsStack, request: &str) -> String {
        let frame = tcp(
            self.port,
            self.seq,
            self.ack,
            PSH_ACK,
            65535,
            request.as_bytes(),
        );
        self.seq = self
            .seq
            .wrapping_add(u32::try_from(request.len()).unwrap_or(0));
        assert!(stack.detour(&frame));
        let mut got = Vec::new();
        for _ in 0..100 {
            let segs: Vec<Seg> = drain(stack).iter().filter_map(|f| parse(f)).collect();
            if segs.is_empty() {
                break;
            }
            for seg in segs {
                if seg.seq != self.ack {
                    continue;
                }
                self.ack = self
                    .ack
                    .wrapping_add(u32::try_from(seg.payload.len()).unwrap_or(0));
                got.extend_from_slice(&seg.payload);
            }
            let ack = tcp(self.port, self.seq, self.ack, ACK, 65535, &[]);
            assert!(stack.detour(&ack));
        }
        String::from_utf8_lossy(&got).into_owned()
    }
}

fn body(response: &str) -> &str {
    response.split("\r\n\r\n").nth(1).unwrap_or("")
}

#[test]
fn arp_request_is_answered_with_the_mmds_mac() {
    let mut stack = MmdsStack::new(store(MmdsVersion::V1), MMDS_IP);
    assert!(stack.detour(&arp_request()));
    let reply = stack.next_reply().expect("an ARP reply");
    assert_eq!(&reply[..6], &GUEST_MAC);
    assert_eq!(u16::from_be_bytes([reply[12], reply[13]]), ETHERTYPE_ARP);
    assert_eq!(&reply[20..22], &[0, 2], "a reply");
    assert_eq!(&reply[22..28], &MMDS_MAC);
    assert_eq!(&reply[28..32], &MMDS_IP.octets());
    assert_eq!(&reply[38..42], &GUEST_IP);
    assert_eq!(stack.counters().tx_frames, 1);
}

#[test]
fn frames_for_others_are_not_taken() {
    let mut stack = MmdsStack::new(store(MmdsVersion::V1), MMDS_IP);
    let mut other = tcp(4000, 1, 0, SYN, 1000, &[]);
    other[30..34].copy_from_slice(&[10, 0, 0, 1]);
    assert!(!stack.detour(&other));
    let mut arp = arp_request();
    arp[38..42].copy_from_slice(&[10, 0, 0, 1]);
    assert!(!stack.detour(&arp));
    assert!(!stack.detour(&[0u8; 10]));
    assert_eq!(stack.counters().rx_bad_eth, 1);
    assert_eq!(stack.counters().rx_accepted, 0);
    assert!(!stack.has_replies());
}

#[test]
fn syn_gets_a_syn_ack_and_get_gets_json() {
    let mut stack = MmdsStack::new(store(MmdsVersion::V1), MMDS_IP);
    let mut client = Client::connect(&mut stack, 40000);
    let r = client.exchange(
        &mut stack,
        "GET /latest/meta-data/ami-id HTTP/1.1\r\nAccept: application/json\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert_eq!(body(&r), "\"ami-12345678\"");
    // The same connection answers again: IMDS plain text by default.
    let r = client.exchange(&mut stack, "GET /latest/meta-data/ HTTP/1.1\r\n\r\n");
    assert_eq!(body(&r), "ami-id\nlocal-ipv4");
    let c = stack.counters();
    assert_eq!(
        (c.connections_created, c.rx_count, c.rx_no_token),
        (1, 2, 2)
    );
    assert!(c.tx_bytes > 0 && c.tx_frames >= 3);
}

#[test]
fn v2_token_flow_over_tcp() {
    let mut stack = MmdsStack::new(store(MmdsVersion::V2), MMDS_IP);
    let mut client = Client::connect(&mut stack, 40001);
    let r = client.exchange(&mut stack, "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 401 "), "{r}");
    let r = client.exchange(
        &mut stack,
        "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    let token = body(&r).to_owned();
    let req = format!("GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n");
    let r = client.exchange(&mut stack, &req);
    assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    assert_eq!(body(&r), "ami-12345678");
    assert_eq!(stack.counters().rx_no_token, 1);
}

#[test]
fn imds_compat_renders_plain_text_for_json_requests() {
    let store = store(MmdsVersion::V1);
    store.lock().map(|mut m| m.set_imds_compat(true)).ok();
    let mut stack = MmdsStack::new(store, MMDS_IP);
    let mut client = Client::connect(&mut stack, 40002);
    let r = client.exchange(
        &mut stack,
        "GET /latest/meta-data/ami-id HTTP/1.1\r\nAccept: application/json\r\n\r\n",
    );
    assert_eq!(body(&r), "ami-12345678");
    assert!(r.contains("Content-Type: text/plain"));
}

#[test]
fn http10_answer_then_close() {
    let mut stack = MmdsStack::new(store(MmdsVersion::V1), MMDS_IP);
    let client = Client::connect(&mut stack, 40003);
    let frame = tcp(
        client.port,
        client.seq,
        client.ack,
        PSH_ACK,
        65535,
        b"GET / HTTP/1.0\r\n\r\n",
    );
    assert!(stack.detour(&frame));
    let segs: Vec<Seg> = drain(&mut stack).iter().filter_map(|f| parse(f)).collect();
    assert!(
        segs.iter().any(|s| s.flags & FIN_ACK == FIN_ACK),
        "{segs:?}"
    );
}

#[test]
fn fragments_bad_checksums_and_non_tcp_are_dropped() {
    let mut stack = MmdsStack::new(store(MmdsVersion::V1), MMDS_IP);
    // A first fragment (more fragments set) of a SYN.
    let mut frag = tcp(41000, 1, 0, SYN, 1000, &[]);
    frag[20] = 0x20;
    frag[24..26].copy_from_slice(&[0, 0]);
    let sum = checksum(&frag[14..34]);
    frag[24..26].copy_from_slice(&sum.to_be_bytes());
    assert!(stack.detour(&frag));
    // A bad IPv4 header checksum.
    let mut bad = tcp(41001, 1, 0, SYN, 1000, &[]);
    bad[24] ^= 0xff;
    assert!(stack.detour(&bad));
    // UDP to the MMDS.
    assert!(stack.detour(&ipv4(17, 0, &[0; 8])));
    // Truncated headers.
    let syn = tcp(41002, 1, 0, SYN, 1000, &[]);
    for len in 14..syn.len() {
        stack.detour(&syn[..len]);
    }
    assert!(drain(&mut stack)
        .iter()
        .filter_map(|f| parse(f))
        .all(|s| s.flags & SYN == 0));
    assert_eq!(stack.counters().rx_accepted_unusual, 1);
    assert_eq!(stack.counters().connections_created, 0);
}

#[test]
fn a_syn_flood_stays_within_the_caps() {
    let mut stack = MmdsStack::new(store(MmdsVersion::V1), MMDS_IP);
    for i in 0..5000u16 {
        assert!(stack.detour(&tcp(1024 + i, u32::from(i), 0, SYN, 1000, &[])));
        assert!(stack.connections() <= MAX_CONNECTIONS);
        assert!(stack.queued_replies() <= phy::MAX_QUEUED_REPLIES + 1);
        if i % 100 == 0 {
            drain(&mut stack);
        }
    }
    let c = stack.counters();
    assert_eq!(c.connections_created + c.rx_accepted_err, 5000, "{c:?}");
    assert!(c.connections_destroyed >= c.connections_created - MAX_CONNECTIONS as u64);
    assert!(
        c.rx_accepted_err > 0,
        "a full reply queue drops guest frames: {c:?}"
    );
    // Still serving afterwards.
    drain(&mut stack);
    let mut client = Client::connect(&mut stack, 9);
    let r = client.exchange(&mut stack, "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n");
    assert_eq!(body(&r), "ami-12345678");
}

#[test]
fn a_window_flood_is_bounded_by_the_buffers() {
    let mut stack = MmdsStack::new(store(MmdsVersion::V1), MMDS_IP);
    let client = Client::connect(&mut stack, 42000);
    let junk = vec![b'a'; 1400];
    let mut seq = client.seq;
    for _ in 0..200 {
        stack.detour(&tcp(client.port, seq, client.ack, PSH_ACK, 0, &junk));
        seq = seq.wrapping_add(1400);
        assert!(stack.queued_replies() <= phy::MAX_QUEUED_REPLIES + 1);
    }
    // The guest opens its window: the answer can go.
    let mut frames = drain(&mut stack);
    let acked = frames
        .iter()
        .filter_map(|f| parse(f))
        .map(|s| s.ack)
        .next_back();
    let acked = acked.expect("the stack acknowledges what fits");
    let bound = CONN_RX_BUF + http::MAX_REQUEST_LEN + 1400;
    assert!(
        acked.wrapping_sub(client.seq) as usize <= bound,
        "socket and request buffers"
    );
    stack.detour(&tcp(client.port, acked, client.ack, ACK, 65535, &[]));
    frames.extend(drain(&mut stack));
    let segs: Vec<Seg> = frames.iter().filter_map(|f| parse(f)).collect();
    // Request too large: a 400, then the connection closes or resets.
    let data: Vec<u8> = segs.iter().flat_map(|s| s.payload.clone()).collect();
    let text = String::from_utf8_lossy(&data);
    assert!(
        text.contains("400 Bad Request") || segs.iter().any(|s| s.flags & RST != 0),
        "{text}"
    );
    assert!(stack.connections() <= 2);
}

#[test]
fn a_partial_request_is_acknowledged_at_once() {
    let mut stack = MmdsStack::new(store(MmdsVersion::V1), MMDS_IP);
    let client = Client::connect(&mut stack, 43000);
    let part = b"GET /latest HT";
    assert!(stack.detour(&tcp(
        client.port,
        client.seq,
        client.ack,
        PSH_ACK,
        65535,
        part
    )));
    let segs: Vec<Seg> = drain(&mut stack).iter().filter_map(|f| parse(f)).collect();
    let want = client.seq + u32::try_from(part.len()).unwrap_or(0);
    assert!(
        segs.iter().any(|s| s.ack == want && s.payload.is_empty()),
        "{segs:?}"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut stack = MmdsStack::new(store(MmdsVersion::V1), MMDS_IP);
    let mut client = Client::connect(&mut stack, 43001);
    let r = client.exchange(
        &mut stack,
        "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\nGET /latest/meta-data/local-ipv4 HTTP/1.1\r\n\r\n",
    );
    let first = r.find("ami-12345678").expect("first answer");
    let second = r.find("10.0.0.2").expect("second answer");
    assert!(first < second, "{r}");
    assert_eq!(stack.counters().rx_count, 2);
}
