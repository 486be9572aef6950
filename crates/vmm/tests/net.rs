//! virtio-net end to end on KVM: the test guest's driver sends and receives
//! Ethernet frames through TAP devices. Each test runs in a private network
//! namespace (see the devices crate's net test helpers, shared here).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;
#[path = "../../devices/src/virtio/net/tests/host.rs"]
mod host;

use std::time::{Duration, Instant};

use common::{fnv1a, hex, run_vm, Capture, Guest};
use ember_test_guests::{ELF64_PATH, PVH_PATH};
use ember_vmm::{build, NetConfig};
use host::{in_netns, HostPort};

const MAC_A: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];
const MAC_B: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x03];

fn iface(id: &str, tap: &str, mac: [u8; 6]) -> NetConfig {
    NetConfig {
        iface_id: id.into(),
        host_dev_name: tap.into(),
        guest_mac: Some(mac),
        ..Default::default()
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Receives the next test frame on `port` on another thread (in the same
/// network namespace) while the VM runs: the TAP disappears with the VM.
fn receive_while_running(port: HostPort) -> std::thread::JoinHandle<Option<Vec<u8>>> {
    std::thread::spawn(move || port.recv_within(common::GUEST_DEADLINE).ok().flatten())
}

/// The frame the guest's `net-send` builds.
fn guest_frame(mac: [u8; 6], len: usize) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.extend_from_slice(b"ember-net-test");
    frame.extend((28..len).map(|i| i as u8));
    frame
}

#[test]
fn a_frame_the_guest_sends_arrives_on_the_tap_byte_for_byte() {
    in_netns(|| {
        let capture = Capture::default();
        let guest = Guest::new(ELF64_PATH, "net-send")
            .args("net.len=200")
            .net(iface("eth0", "ember-tx0", MAC_A));
        let vm = build(guest.config(&capture)).unwrap();
        let received = receive_while_running(HostPort::new("ember-tx0"));
        let run = run_vm(vm, &capture, common::GUEST_DEADLINE);
        run.assert_clean_reset();
        let expected = guest_frame(MAC_A, 200);
        assert_eq!(
            run.field("net-send", "status").as_deref(),
            Some("0x0"),
            "{}",
            run.output
        );
        assert_eq!(
            hex(&run.field("net-send", "sum").unwrap()),
            u64::from(fnv1a(&expected))
        );
        assert_eq!(received.join().unwrap(), Some(expected));
        assert_eq!(run.metric("net_eth0", "tx_frames"), 1);
        assert_eq!(run.metric("net_eth0", "tx_bytes"), 200);
    });
}

#[test]
fn a_frame_written_to_the_tap_arrives_in_the_guest() {
    in_netns(|| {
        let capture = Capture::default();
        let guest = Guest::new(PVH_PATH, "net-recv")
            .args("net.count=2")
            .net(iface("eth0", "ember-rx0", MAC_A));
        let vm = build(guest.config(&capture)).unwrap();
        let port = HostPort::new("ember-rx0");
        let mut frame = vec![0u8; 300];
        frame[..6].copy_from_slice(&MAC_A);
        frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x09]);
        frame[12..14].copy_from_slice(&[0x88, 0xb5]);
        for (i, byte) in frame.iter_mut().enumerate().skip(14) {
            *byte = (i * 5 + 1) as u8;
        }
        // The first frame waits in the TAP until the guest posts buffers; the
        // second is sent once the guest says it is ready.
        port.send(&frame);
        let watcher = capture.clone();
        let second = frame.clone();
        let sender = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !watcher.text().contains("net-recv: ready") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            port.send(&second);
        });
        let run = run_vm(vm, &capture, common::GUEST_DEADLINE);
        sender.join().unwrap();
        run.assert_clean_reset();
        let received = run.lines("net-recv len=");
        assert_eq!(received.len(), 2, "{}", run.output);
        for line in received {
            assert_eq!(common::value_of(line, "len").as_deref(), Some("0x12c"));
            assert_eq!(
                common::value_of(line, "ethertype").as_deref(),
                Some("0x88b5")
            );
            assert_eq!(
                hex(&common::value_of(line, "sum").unwrap()),
                u64::from(fnv1a(&frame))
            );
            assert_eq!(
                common::value_of(line, "vhdr").as_deref(),
                Some("000000000000000000000100")
            );
        }
        assert_eq!(run.metric("net_eth0", "rx_frames"), 2);
    });
}

#[test]
fn two_interfaces_with_their_macs_in_config_space() {
    in_netns(|| {
        let capture = Capture::default();
        let guest = Guest::new(ELF64_PATH, "net-info")
            .net(iface("eth0", "ember-a0", MAC_A))
            .net(iface("eth1", "ember-b0", MAC_B));
        let run = run_vm(
            build(guest.config(&capture)).unwrap(),
            &capture,
            common::GUEST_DEADLINE,
        );
        run.assert_clean_reset();
        let lines = run.lines("net dev=");
        assert_eq!(lines.len(), 2, "{}", run.output);
        assert_eq!(common::value_of(lines[0], "mac"), Some(mac_text(MAC_A)));
        assert_eq!(common::value_of(lines[1], "mac"), Some(mac_text(MAC_B)));
        assert_eq!(common::value_of(lines[1], "irq").as_deref(), Some("0x6"));

        let capture = Capture::default();
        let guest = Guest::new(ELF64_PATH, "net-send")
            .args("net.dev=1")
            .net(iface("eth0", "ember-a1", MAC_A))
            .net(iface("eth1", "ember-b1", MAC_B));
        let vm = build(guest.config(&capture)).unwrap();
        let port_a = HostPort::new("ember-a1");
        let received = receive_while_running(HostPort::new("ember-b1"));
        let run = run_vm(vm, &capture, common::GUEST_DEADLINE);
        run.assert_clean_reset();
        assert_eq!(received.join().unwrap(), Some(guest_frame(MAC_B, 64)));
        assert_eq!(
            run.metric("net_eth0", "tx_frames"),
            0,
            "nothing on the other interface"
        );
        drop(port_a);
    });
}

#[test]
fn a_missing_tap_name_or_a_bad_mac_is_a_clear_error() {
    in_netns(|| {
        let mut bad = iface("eth0", "this-name-is-way-too-long", MAC_A);
        let err = build(
            Guest::new(ELF64_PATH, "net-info")
                .net(bad.clone())
                .config(&Capture::default()),
        )
        .unwrap_err();
        let err = ember_vmm::error_chain(&err);
        assert!(err.contains("network interface `eth0`"), "{err}");
        bad.host_dev_name = "ember-m0".into();
        bad.guest_mac = Some([0x01, 0, 0, 0, 0, 1]);
        let err = build(
            Guest::new(ELF64_PATH, "net-info")
                .net(bad)
                .config(&Capture::default()),
        )
        .unwrap_err();
        let err = ember_vmm::error_chain(&err);
        assert!(err.contains("unicast"), "{err}");
    });
}

/// The guest's ARP request for `target` (from 172.16.0.2, MAC_A).
fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[172, 16, 0, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// A TCP SYN from 172.16.0.2:40000 to port 80 of `target`.
fn tcp_syn(target: [u8; 4]) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 172, 16, 0, 2];
    ip.extend_from_slice(&target);
    let sum = ip
        .chunks(2)
        .map(|p| u32::from(u16::from_be_bytes([p[0], p[1]])))
        .sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    // Ports, sequence 1000, no ack, offset 5, SYN, window 65535.
    ip.extend_from_slice(&[0x9c, 0x40, 0, 80, 0, 0, 0x03, 0xe8, 0, 0, 0, 0]);
    ip.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    let mut f = vec![0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f
}

#[test]
fn the_mmds_answers_the_guests_arp_and_syn_and_the_tap_sees_nothing() {
    in_netns(|| {
        let capture = Capture::default();
        let mmds = ember_mmds::DEFAULT_IPV4_ADDRESS.octets();
        let frames = [arp_request(mmds), tcp_syn(mmds)]
            .iter()
            .map(|f| format!("net.frame={}", hex_bytes(f)))
            .collect::<Vec<_>>()
            .join(" ");
        let guest = Guest::new(ELF64_PATH, "net-inject")
            .args(&format!("net.count=2 {frames}"))
            .net(iface("eth0", "ember-mmds0", MAC_A));
        let mut config = guest.config(&capture);
        config.mmds = Some(ember_vmm::MmdsNetConfig {
            store: std::sync::Arc::new(std::sync::Mutex::new(ember_mmds::Mmds::default())),
            address: ember_mmds::DEFAULT_IPV4_ADDRESS,
            network_interfaces: vec!["eth0".into()],
        });
        let vm = build(config).unwrap();
        let run = run_vm(vm, &capture, common::GUEST_DEADLINE);
        run.assert_clean_reset();
        let sent = run.lines("net-inject status=");
        assert_eq!(sent.len(), 2, "{}", run.output);
        assert!(
            sent.iter().all(|l| l.contains("status=0x0")),
            "{}",
            run.output
        );
        let received = run.lines("net-recv len=");
        assert_eq!(received.len(), 2, "{}", run.output);
        let mmds_mac = "060123456701";
        let ethertypes: Vec<_> = received
            .iter()
            .map(|l| common::value_of(l, "ethertype").unwrap())
            .collect();
        assert_eq!(ethertypes, ["0x806", "0x800"], "ARP reply, then SYN-ACK");
        for line in received {
            let head = common::value_of(line, "head").unwrap();
            assert!(
                head.starts_with(&format!("{}{mmds_mac}", hex_bytes(&MAC_A))),
                "{line}"
            );
        }
        assert_eq!(run.metric("mmds", "rx_accepted"), 2);
        assert_eq!(run.metric("mmds", "connections_created"), 1);
        assert_eq!(
            run.metric("net_eth0", "tx_frames"),
            0,
            "nothing reached the TAP"
        );
        assert_eq!(run.metric("net_eth0", "rx_frames"), 2);
    });
}

/// The responses the guest's `mmds-http` scenario printed, unescaped, by
/// connection (`None` for an exchange that failed).
fn http_responses(run: &common::Run) -> Vec<Option<String>> {
    run.lines("mmds-http conn=")
        .iter()
        .map(|line| {
            let ok = common::value_of(line, "status").as_deref() == Some("0x0");
            ok.then(|| unescape(&common::value_of(line, "response").unwrap_or_default()))
        })
        .collect()
}

/// Undoes the guest's escapes (`\r`, `\n`, `\\`, `\xHH`).
fn unescape(text: &str) -> String {
    let mut out = Vec::new();
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b'x') => {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                out.push(u8::from_str_radix(&hex, 16).unwrap());
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    String::from_utf8(out).unwrap()
}

/// The status code and the body of an HTTP response.
fn status_and_body(response: &str) -> (u16, &str) {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response:?}"));
    let (_, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no blank line: {response:?}"));
    (status, body)
}

/// Boots the `mmds-http` guest (with `args`) against an MMDS in `version`
/// holding `data`, on `tap`.
fn run_mmds_http(
    tap: &str,
    version: ember_mmds::MmdsVersion,
    data: serde_json::Value,
    args: &str,
) -> common::Run {
    let capture = Capture::default();
    let guest = Guest::new(ELF64_PATH, "mmds-http")
        .args(args)
        .net(iface("eth0", tap, MAC_A));
    let mut config = guest.config(&capture);
    let mut store = ember_mmds::Mmds::default();
    store.set_version(version);
    store.put(data).unwrap();
    config.mmds = Some(ember_vmm::MmdsNetConfig {
        store: std::sync::Arc::new(std::sync::Mutex::new(store)),
        address: ember_mmds::DEFAULT_IPV4_ADDRESS,
        network_interfaces: vec!["eth0".into()],
    });
    let run = run_vm(build(config).unwrap(), &capture, common::GUEST_DEADLINE);
    run.assert_clean_reset();
    assert!(
        run.output.contains("mmds-http mac=060123456701"),
        "the MMDS answered ARP: {}",
        run.output
    );
    assert_eq!(
        run.metric("net_eth0", "tx_frames"),
        0,
        "nothing reached the TAP"
    );
    run
}

#[test]
fn a_guest_gets_the_json_the_host_put_over_tcp_and_http() {
    in_netns(|| {
        let data = serde_json::json!({"latest": {"meta-data": {
            "ami-id": "ami-12345678", "tags": {"env": "test", "n": 3}}}});
        let run = run_mmds_http(
            "ember-mmds1",
            ember_mmds::MmdsVersion::V1,
            data,
            "mmds.path=/latest/meta-data/tags",
        );
        let responses = http_responses(&run);
        assert_eq!(responses.len(), 1, "{}", run.output);
        let response = responses[0].as_deref().expect("the exchange completed");
        let (status, body) = status_and_body(response);
        assert_eq!(status, 200, "{response}");
        assert!(
            response.contains("Content-Type: application/json"),
            "{response}"
        );
        let got: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(got, serde_json::json!({"env": "test", "n": 3}));
        assert_eq!(run.metric("mmds", "connections_created"), 1);
    });
}

#[test]
fn mmds_v2_answers_401_without_a_token_and_json_with_one() {
    in_netns(|| {
        let data = serde_json::json!({"latest": {"meta-data": {"ami-id": "ami-87654321"}}});
        let run = run_mmds_http(
            "ember-mmds2",
            ember_mmds::MmdsVersion::V2,
            data,
            "mmds.v2=1 mmds.path=/latest/meta-data",
        );
        let responses = http_responses(&run);
        assert_eq!(responses.len(), 3, "{}", run.output);
        let statuses: Vec<u16> = responses
            .iter()
            .map(|r| status_and_body(r.as_deref().expect("completed")).0)
            .collect();
        assert_eq!(statuses, [401, 200, 200], "{}", run.output);
        let token = status_and_body(responses[1].as_deref().unwrap()).1;
        assert!(!token.is_empty());
        let body = status_and_body(responses[2].as_deref().unwrap()).1;
        let got: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(got, serde_json::json!({"ami-id": "ami-87654321"}));
        assert_eq!(run.metric("mmds", "connections_created"), 3);
    });
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
