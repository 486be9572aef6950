//! virtio-vsock driven the way a guest drives it: packets laid out in real
//! virtqueues in guest memory, notifications through the event loop, real
//! Unix sockets in a temp dir for the host side. Includes hostile guests and
//! host peers, the limits, and the MMIO handshake.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::SubscriberOps;
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_STATUS,
};
use vm_memory::{Bytes, GuestAddress};

use super::packet::{Header, Op, HDR_LEN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;
use crate::bus::BusDevice;
use crate::virtio::mmio::CONFIG_SPACE_OFFSET;
use crate::virtio::test_utils::{
    add_status, memory, negotiate, notify_queue, read_reg, setup_queue, write_reg, GuestQueue,
    Manager, Mem, WRITE,
};
use crate::virtio::{feature_bit, IrqTrigger, MmioTransport, VirtioDevice};
use crate::Error;

const CID: u64 = 3;
const MEM_SIZE: usize = 0x100_0000;
const RXQ_BASE: u64 = 0x1_0000;
const TXQ_BASE: u64 = 0x2_0000;
const EVQ_BASE: u64 = 0x3_0000;
const RX_SLOTS: u16 = 64;
const TX_SIZE: u16 = 256;
const RX_AREA: u64 = 0x10_0000;
const RX_STRIDE: u64 = 0x1_1000;
const TX_AREA: u64 = 0x60_0000;
const TX_SLOTS: u64 = 64;
const TX_STRIDE: u64 = 0x1_1000;
/// RX buffers as Linux posts them: a header and 4 KiB of data.
const RX_BUF_LEN: u32 = HDR_LEN as u32 + 4096;
/// The guest's receive buffer, as it advertises it.
const GUEST_BUF: u32 = 64 * 1024;

/// A packet the guest received.
#[derive(Debug)]
struct Pkt {
    hdr: Header,
    data: Vec<u8>,
}

impl Pkt {
    fn op(&self) -> Option<Op> {
        self.hdr.op()
    }
}

/// A guest packet header from `src_port` to host port `dst_port`.
fn g(op: Op, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op: op as u16,
        buf_alloc: GUEST_BUF,
        ..Header::default()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while s.read(&mut byte).unwrap() == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

/// Whether the host end sees EOF (or a reset) within a second.
fn sees_eof(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A vsock device on an event loop, with the guest side of its queues.
struct Harness {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    mem: Mem,
    rxq: GuestQueue,
    txq: GuestQueue,
    evq: GuestQueue,
    vsock: Arc<Mutex<Vsock<Mem>>>,
    manager: Manager,
    irq: Arc<IrqTrigger>,
    rx_posted: u16,
    rx_seen: u16,
    rx_len: u32,
    /// Re-post RX buffers as soon as they are read.
    auto_repost: bool,
    tx_next: u16,
    tx_slot: u64,
}

impl Harness {
    fn inactive() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let vsock = Vsock::new(VsockConfig {
            guest_cid: CID,
            uds_path: uds.clone(),
        })
        .unwrap();
        let vsock = Arc::new(Mutex::new(vsock));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(vsock.clone());
        let mem = memory(&[(0, MEM_SIZE)]);
        Harness {
            _dir: dir,
            uds,
            rxq: GuestQueue::new(&mem, RXQ_BASE, RX_SLOTS),
            txq: GuestQueue::new(&mem, TXQ_BASE, TX_SIZE),
            evq: GuestQueue::new(&mem, EVQ_BASE, 4),
            mem,
            vsock,
            manager,
            irq: Arc::new(IrqTrigger::new().unwrap()),
            rx_posted: 0,
            rx_seen: 0,
            rx_len: RX_BUF_LEN,
            auto_repost: true,
            tx_next: 0,
            tx_slot: 0,
        }
    }

    /// An active device with all RX buffers posted.
    fn new() -> Harness {
        let mut h = Harness::inactive();
        h.activate();
        h.post_rx(RX_SLOTS);
        h.settle();
        h
    }

    fn with_limits(limits: Limits) -> Harness {
        let h = Harness::new();
        h.vsock.lock().unwrap().set_limits(limits);
        h
    }

    fn activate(&mut self) {
        let queues = vec![
            self.rxq.device_queue(QUEUE_SIZE),
            self.txq.device_queue(QUEUE_SIZE),
            self.evq.device_queue(QUEUE_SIZE),
        ];
        self.vsock
            .lock()
            .unwrap()
            .activate(
                self.mem.clone(),
                queues,
                self.irq.clone(),
                feature_bit(VIRTIO_F_VERSION_1),
            )
            .unwrap();
    }

    fn counters(&self) -> VsockCounters {
        self.vsock.lock().unwrap().counters()
    }

    /// Runs the event loop until it is idle; a device that keeps it busy
    /// (a busy loop) fails the test.
    fn settle(&mut self) {
        for _ in 0..500 {
            if self.manager.run_with_timeout(5).unwrap() == 0 {
                return;
            }
        }
        panic!("the event loop never went idle");
    }

    fn kick(&mut self, queue: usize) {
        notify_queue(&self.vsock, queue);
        self.settle();
    }

    fn rx_addr(slot: u16) -> u64 {
        RX_AREA + u64::from(slot) * RX_STRIDE
    }

    /// Posts `n` RX buffers (one writable descriptor each).
    fn post_rx(&mut self, n: u16) {
        for _ in 0..n {
            let slot = self.rx_posted % RX_SLOTS;
            self.rxq
                .add_chain(slot, &[(Harness::rx_addr(slot), self.rx_len, WRITE)]);
            self.rx_posted = self.rx_posted.wrapping_add(1);
        }
    }

    /// The packets the device wrote since last time, as raw used entries.
    fn take_used(&mut self) -> Vec<Pkt> {
        let mut out = Vec::new();
        while self.rx_seen != self.rxq.used_idx() {
            let (id, len) = self.rxq.used_elem(self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let addr = Harness::rx_addr(id as u16);
            assert!(len as usize >= HDR_LEN, "short RX packet: {len}");
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let hdr = Header::from_bytes(&raw);
            assert_eq!(hdr.len as usize, len as usize - HDR_LEN);
            assert_eq!((hdr.src_cid, hdr.dst_cid), (HOST_CID, CID));
            assert_eq!(hdr.type_, TYPE_STREAM);
            let mut data = vec![0u8; hdr.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(addr + HDR_LEN as u64))
                .unwrap();
            out.push(Pkt { hdr, data });
        }
        out
    }

    /// Everything the device has for the guest now, re-posting buffers.
    fn recv(&mut self) -> Vec<Pkt> {
        let mut all = Vec::new();
        loop {
            let pkts = self.take_used();
            if pkts.is_empty() {
                return all;
            }
            if !self.auto_repost {
                all.extend(pkts);
                return all;
            }
            self.post_rx(pkts.len() as u16);
            all.extend(pkts);
            self.kick(RX_QUEUE);
        }
    }

    /// Queues one TX chain made of `descs` (address, length, flags).
    fn tx_chain(&mut self, descs: &[(u64, u32, u16)]) {
        let head = self.tx_next;
        self.tx_next = (self.tx_next + descs.len() as u16) % TX_SIZE;
        if self.tx_next < head {
            self.tx_next = 0;
            return self.tx_chain(descs);
        }
        self.txq.add_chain(head, descs);
    }

    /// A fresh area for the next TX packet (reused after `TX_SLOTS`).
    fn tx_area(&mut self) -> u64 {
        self.tx_slot = (self.tx_slot + 1) % TX_SLOTS;
        TX_AREA + self.tx_slot * TX_STRIDE
    }

    /// Queues a packet (header and data in two descriptors) without kicking.
    fn queue_packet(&mut self, mut hdr: Header, data: &[u8]) {
        hdr.len = data.len() as u32;
        let at = self.tx_area();
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(at))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(at + 0x100))
            .unwrap();
        if data.is_empty() {
            self.tx_chain(&[(at, HDR_LEN as u32, 0)]);
        } else {
            self.tx_chain(&[(at, HDR_LEN as u32, 0), (at + 0x100, data.len() as u32, 0)]);
        }
    }

    /// Sends a packet from the guest and lets the device handle it.
    fn send(&mut self, hdr: Header, data: &[u8]) {
        self.queue_packet(hdr, data);
        self.kick(TX_QUEUE);
    }

    fn host_connect(&mut self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        s
    }

    /// A host-initiated connection to guest port `guest_port`, accepted by
    /// the guest: the host stream and the host-side port.
    fn establish_host(&mut self, guest_port: u32) -> (UnixStream, u32) {
        let mut s = self.host_connect(guest_port);
        self.settle();
        let pkts = self.recv();
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        let req = &pkts[0];
        assert_eq!(req.op(), Some(Op::Request));
        assert_eq!(req.hdr.dst_port, guest_port);
        assert!(req.hdr.src_port >= HOST_PORT_FIRST);
        assert_eq!(req.hdr.buf_alloc, CONN_BUF_SIZE);
        let host_port = req.hdr.src_port;
        self.send(g(Op::Response, guest_port, host_port), &[]);
        assert_eq!(read_line(&mut s), format!("OK {host_port}\n"));
        (s, host_port)
    }

    /// A guest-initiated connection from `guest_port` to host port
    /// `host_port`, whose listener must exist: the accepted host stream.
    fn establish_guest(
        &mut self,
        listener: &UnixListener,
        guest_port: u32,
        host_port: u32,
    ) -> UnixStream {
        self.send(g(Op::Request, guest_port, host_port), &[]);
        let pkts = self.recv();
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        assert_eq!(pkts[0].op(), Some(Op::Response));
        assert_eq!(
            (pkts[0].hdr.src_port, pkts[0].hdr.dst_port),
            (host_port, guest_port)
        );
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    fn listen(&self, port: u32) -> UnixListener {
        let mut path = self.uds.as_os_str().to_owned();
        path.push(format!("_{port}"));
        UnixListener::bind(PathBuf::from(path)).unwrap()
    }
}

/// The data bytes of `pkts` (all RW), in order.
fn payload(pkts: &[Pkt]) -> Vec<u8> {
    pkts.iter()
        .filter(|p| p.op() == Some(Op::Rw))
        .flat_map(|p| p.data.iter().copied())
        .collect()
}

#[test]
fn config_space_features_and_state() {
    let h = Harness::new();
    let vsock = h.vsock.lock().unwrap();
    assert_eq!(vsock.device_type(), 19);
    assert_eq!(vsock.queue_max_sizes(), &[QUEUE_SIZE; 3]);
    assert_eq!(vsock.queue_events().len(), 3);
    let features = vsock.avail_features();
    assert_ne!(features & feature_bit(VIRTIO_F_VERSION_1), 0);
    assert_eq!(features & (1 << 1), 0, "no VIRTIO_VSOCK_F_SEQPACKET");
    let mut config = [0xffu8; 12];
    vsock.read_config(0, &mut config);
    assert_eq!(config[..8], CID.to_le_bytes());
    assert_eq!(config[8..], [0; 4]);
    let mut high = [0u8; 4];
    vsock.read_config(4, &mut high);
    assert_eq!(high, [0; 4]);
    let state = vsock.state();
    assert_eq!(
        (state.guest_cid, state.uds_path.clone()),
        (CID, h.uds.clone())
    );
    assert_eq!(vsock.queue_states().len(), 3);
    assert_eq!(state.acked_features, feature_bit(VIRTIO_F_VERSION_1));
}

#[test]
fn configuration_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        let err = Vsock::<Mem>::new(VsockConfig {
            guest_cid: cid,
            uds_path: dir.path().join("a"),
        })
        .unwrap_err();
        assert!(
            matches!(err, Error::Vsock(super::Error::InvalidCid(c)) if c == cid),
            "{err}"
        );
    }
    let path = dir.path().join("taken");
    std::fs::write(&path, b"").unwrap();
    let err = Vsock::<Mem>::new(VsockConfig {
        guest_cid: 3,
        uds_path: path.clone(),
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::Vsock(super::Error::Socket { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("is not a socket"), "{err}");
    assert!(path.exists(), "someone else's file stays");
    // A socket left by a VMM that was killed is replaced; a live one is not.
    let stale = dir.path().join("stale");
    drop(UnixListener::bind(&stale).unwrap());
    let vsock = Vsock::<Mem>::new(VsockConfig {
        guest_cid: 3,
        uds_path: stale.clone(),
    })
    .unwrap();
    UnixStream::connect(&stale).unwrap();
    let err = Vsock::<Mem>::new(VsockConfig {
        guest_cid: 4,
        uds_path: stale.clone(),
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("another process is listening"),
        "{err}"
    );
    drop(vsock);
    assert!(!stale.exists());
    // The device removes its own socket file when it goes.
    let ours = dir.path().join("ours");
    let vsock = Vsock::<Mem>::new(VsockConfig {
        guest_cid: 3,
        uds_path: ours.clone(),
    })
    .unwrap();
    assert!(ours.exists());
    drop(vsock);
    assert!(!ours.exists());
}

#[test]
fn host_initiated_connection_carries_data_both_ways() {
    let mut h = Harness::new();
    let (mut s, host_port) = h.establish_host(1234);
    assert_eq!(h.counters().conns_opened, 1);

    // Host to guest.
    let to_guest = pattern(10_000, 1);
    s.write_all(&to_guest).unwrap();
    h.settle();
    let pkts = h.recv();
    assert!(pkts.iter().all(|p| p.op() == Some(Op::Rw)), "{pkts:?}");
    assert!(pkts.iter().all(|p| p.data.len() <= 4096));
    assert!(pkts
        .iter()
        .all(|p| (p.hdr.src_port, p.hdr.dst_port) == (host_port, 1234)));
    assert_eq!(payload(&pkts), to_guest);

    // Guest to host.
    let to_host = pattern(3000, 9);
    h.send(g(Op::Rw, 1234, host_port), &to_host[..1000]);
    h.send(g(Op::Rw, 1234, host_port), &to_host[1000..]);
    let mut got = vec![0u8; 3000];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, to_host);

    // The guest closes: the host sees EOF, the device resets the connection.
    h.send(
        g(Op::Shutdown, 1234, host_port).with_flags(SHUTDOWN_BOTH),
        &[],
    );
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].op(), Some(Op::Rst));
    assert!(sees_eof(&mut s));
    let c = h.counters();
    assert_eq!((c.conns_opened, c.conns_closed, c.connections), (1, 1, 0));
    assert_eq!((c.rx_bytes, c.tx_bytes), (10_000, 3000));
    assert_eq!(c.rsts_sent, 1);
    assert_eq!(c.buffered_bytes, 0);
}

impl Header {
    fn with_flags(mut self, flags: u32) -> Header {
        self.flags = flags;
        self
    }

    fn with_credit(mut self, buf_alloc: u32, fwd_cnt: u32) -> Header {
        self.buf_alloc = buf_alloc;
        self.fwd_cnt = fwd_cnt;
        self
    }
}

#[test]
fn data_sent_with_the_connect_line_waits_for_the_response() {
    let mut h = Harness::new();
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"connect 77\nearly bird").unwrap();
    h.settle();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].op(), Some(Op::Request));
    let host_port = pkts[0].hdr.src_port;
    h.send(g(Op::Response, 77, host_port), &[]);
    assert_eq!(read_line(&mut s), format!("OK {host_port}\n"));
    h.settle();
    assert_eq!(payload(&h.recv()), b"early bird");
}

#[test]
fn host_close_sends_shutdown_and_the_guest_rst_ends_it() {
    let mut h = Harness::new();
    let (mut s, host_port) = h.establish_host(5);
    s.write_all(b"last words").unwrap();
    drop(s);
    h.settle();
    let pkts = h.recv();
    assert_eq!(payload(&pkts), b"last words");
    let last = pkts.last().unwrap();
    assert_eq!(last.op(), Some(Op::Shutdown));
    assert_eq!(last.hdr.flags, SHUTDOWN_BOTH);
    // The device waits for the guest's RST.
    assert_eq!(h.counters().connections, 1);
    h.send(g(Op::Rst, 5, host_port), &[]);
    let c = h.counters();
    assert_eq!((c.connections, c.conns_closed, c.rsts_received), (0, 1, 1));
    assert!(h.recv().is_empty(), "no RST answers an RST");
}

#[test]
fn closing_connection_is_reset_when_the_guest_does_not() {
    let mut h = Harness::with_limits(Limits {
        shutdown_timeout: Duration::from_millis(30),
        ..Limits::default()
    });
    let (s, _) = h.establish_host(5);
    drop(s);
    h.settle();
    let pkts = h.recv();
    assert_eq!(pkts.last().unwrap().op(), Some(Op::Shutdown));
    std::thread::sleep(Duration::from_millis(50));
    h.settle();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].op(), Some(Op::Rst));
    let c = h.counters();
    assert_eq!((c.connections, c.timeouts), (0, 1));
}

#[test]
fn unanswered_request_times_out_and_closes_the_client() {
    let mut h = Harness::with_limits(Limits {
        request_timeout: Duration::from_millis(30),
        ..Limits::default()
    });
    let mut s = h.host_connect(1234);
    h.settle();
    let pkts = h.recv();
    assert_eq!(pkts[0].op(), Some(Op::Request));
    std::thread::sleep(Duration::from_millis(50));
    h.settle();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].op(), Some(Op::Rst));
    assert!(sees_eof(&mut s));
    let c = h.counters();
    assert_eq!((c.timeouts, c.conns_refused, c.connections), (1, 1, 0));
    assert_eq!(c.conns_opened, 0);
}

#[test]
fn guest_refusing_a_host_connection_closes_the_client() {
    let mut h = Harness::new();
    let mut s = h.host_connect(99);
    h.settle();
    let pkts = h.recv();
    let host_port = pkts[0].hdr.src_port;
    h.send(g(Op::Rst, 99, host_port), &[]);
    assert!(sees_eof(&mut s));
    let c = h.counters();
    assert_eq!((c.conns_refused, c.connections, c.conns_opened), (1, 0, 0));
}

#[test]
fn bad_connect_lines_close_the_client() {
    let mut h = Harness::new();
    for line in [
        &b"HELLO 5\n"[..],
        b"CONNECT\n",
        b"CONNECT 99999999999\n",
        &[b'7'; 40],
    ] {
        let mut s = UnixStream::connect(&h.uds).unwrap();
        s.write_all(line).unwrap();
        h.settle();
        assert!(sees_eof(&mut s), "{line:?}");
    }
    // A client that leaves without a line.
    drop(UnixStream::connect(&h.uds).unwrap());
    h.settle();
    assert!(h.recv().is_empty());
    let c = h.counters();
    assert_eq!((c.conns_refused, c.connections), (5, 0));
}

#[test]
fn host_client_before_activation_waits_for_the_driver() {
    let mut h = Harness::inactive();
    let mut s = h.host_connect(42);
    h.settle();
    h.activate();
    h.post_rx(RX_SLOTS);
    h.settle();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].op(), Some(Op::Request));
    let host_port = pkts[0].hdr.src_port;
    h.send(g(Op::Response, 42, host_port), &[]);
    assert_eq!(read_line(&mut s), format!("OK {host_port}\n"));
}

#[test]
fn guest_initiated_connection_with_half_closes() {
    let mut h = Harness::new();
    let listener = h.listen(1025);
    let mut s = h.establish_guest(&listener, 5000, 1025);
    assert_eq!(h.counters().conns_opened, 1);

    h.send(g(Op::Rw, 5000, 1025), b"ping");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    s.write_all(b"pong").unwrap();
    h.settle();
    assert_eq!(payload(&h.recv()), b"pong");

    // The host stops sending; it can still receive.
    s.shutdown(Shutdown::Write).unwrap();
    h.settle();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].op(), Some(Op::Shutdown));
    assert_eq!(pkts[0].hdr.flags, SHUTDOWN_SEND);
    h.send(g(Op::Rw, 5000, 1025), b"more");
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"more");

    // The guest stops sending too: both directions are done.
    h.send(g(Op::Shutdown, 5000, 1025).with_flags(SHUTDOWN_SEND), &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].op(), Some(Op::Rst));
    assert!(sees_eof(&mut s));
    let c = h.counters();
    assert_eq!((c.connections, c.conns_closed), (0, 1));
}

#[test]
fn guest_shutdown_rcv_stops_host_writes() {
    let mut h = Harness::new();
    let listener = h.listen(7);
    let mut s = h.establish_guest(&listener, 50, 7);
    h.send(g(Op::Shutdown, 50, 7).with_flags(SHUTDOWN_RCV), &[]);
    assert!(h.recv().is_empty());
    assert_eq!(s.write(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
    // The host can still receive.
    h.send(g(Op::Rw, 50, 7), b"abc");
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"abc");
}

#[test]
fn guest_connect_to_a_missing_socket_is_reset() {
    let mut h = Harness::new();
    h.send(g(Op::Request, 5000, 4444), &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].op(), Some(Op::Rst));
    assert_eq!((pkts[0].hdr.src_port, pkts[0].hdr.dst_port), (4444, 5000));
    let c = h.counters();
    assert_eq!((c.conns_refused, c.connections, c.rsts_sent), (1, 0, 1));
}

#[test]
fn guest_rst_closes_the_host_stream() {
    let mut h = Harness::new();
    let listener = h.listen(1);
    let mut s = h.establish_guest(&listener, 2, 1);
    h.send(g(Op::Rst, 2, 1), &[]);
    assert!(sees_eof(&mut s));
    assert!(h.recv().is_empty());
    assert_eq!(h.counters().connections, 0);
}

#[test]
fn sixty_four_connections_at_once() {
    let mut h = Harness::new();
    let mut streams: Vec<UnixStream> = (0..64).map(|i| h.host_connect(2000 + i)).collect();
    h.settle();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 64);
    let mut host_ports = vec![0u32; 64];
    for p in &pkts {
        assert_eq!(p.op(), Some(Op::Request));
        host_ports[(p.hdr.dst_port - 2000) as usize] = p.hdr.src_port;
    }
    for (i, &hp) in host_ports.iter().enumerate() {
        h.queue_packet(g(Op::Response, 2000 + i as u32, hp), &[]);
    }
    h.kick(TX_QUEUE);
    for (s, &hp) in streams.iter_mut().zip(&host_ports) {
        assert_eq!(read_line(s), format!("OK {hp}\n"));
    }
    for (i, s) in streams.iter_mut().enumerate() {
        s.write_all(&pattern(100 + i, i as u8)).unwrap();
    }
    h.settle();
    let pkts = h.recv();
    for (i, &hp) in host_ports.iter().enumerate() {
        let mine: Vec<Pkt> = pkts
            .iter()
            .filter(|p| p.hdr.src_port == hp)
            .map(|p| Pkt {
                hdr: p.hdr,
                data: p.data.clone(),
            })
            .collect();
        assert_eq!(payload(&mine), pattern(100 + i, i as u8), "connection {i}");
        h.queue_packet(
            g(Op::Rw, 2000 + i as u32, hp),
            &pattern(50, (i as u8).wrapping_add(200)),
        );
        if i % 8 == 7 {
            h.kick(TX_QUEUE);
        }
    }
    for (i, s) in streams.iter_mut().enumerate() {
        let mut buf = vec![0u8; 50];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(buf, pattern(50, (i as u8).wrapping_add(200)));
    }
    let c = h.counters();
    assert_eq!((c.connections, c.conns_opened), (64, 64));
}

/// The guest's view of its credit on a connection: the device's `buf_alloc`
/// minus what is in flight, from the last packet it sent.
fn guest_credit(buf_alloc: u32, fwd_cnt: u32, sent: u32) -> u32 {
    buf_alloc - sent.wrapping_sub(fwd_cnt)
}

#[test]
fn slow_host_reader_bounds_buffering_and_credit_resumes() {
    let mut h = Harness::new();
    let listener = h.listen(9);
    let mut s = h.establish_guest(&listener, 90, 9);
    let (mut buf_alloc, mut fwd_cnt) = (CONN_BUF_SIZE, 0u32);
    let mut sent = 0u32;
    let mut stream = Vec::new();
    let mut peak = 0u64;
    // The guest sends as long as it has credit; the host does not read.
    for round in 0..200u32 {
        let credit = guest_credit(buf_alloc, fwd_cnt, sent);
        if credit == 0 {
            break;
        }
        let chunk = pattern(credit.min(MAX_PKT_LEN) as usize, round as u8);
        h.send(g(Op::Rw, 90, 9), &chunk);
        sent += chunk.len() as u32;
        stream.extend_from_slice(&chunk);
        peak = peak.max(h.counters().buffered_bytes);
        for p in h.recv() {
            (buf_alloc, fwd_cnt) = (p.hdr.buf_alloc, p.hdr.fwd_cnt);
        }
    }
    assert_eq!(
        guest_credit(buf_alloc, fwd_cnt, sent),
        0,
        "the guest ran out of credit"
    );
    let c = h.counters();
    assert!(c.buffered_bytes > 0);
    assert!(peak <= u64::from(CONN_BUF_SIZE), "{peak}");
    assert_eq!(c.credit_violations, 0);

    // The host catches up: the device flushes and hands out credit.
    let mut got = vec![0u8; stream.len()];
    let reader = std::thread::spawn(move || {
        s.read_exact(&mut got).unwrap();
        (s, got)
    });
    for _ in 0..100 {
        h.settle();
        if h.counters().buffered_bytes == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (_s, got) = reader.join().unwrap();
    assert!(got == stream, "bytes differ");
    assert_eq!(h.counters().buffered_bytes, 0);
    let pkts = h.recv();
    let update = pkts.last().unwrap();
    assert_eq!(update.op(), Some(Op::CreditUpdate));
    // The guest learns about (nearly) all the room there is again.
    let credit = guest_credit(update.hdr.buf_alloc, update.hdr.fwd_cnt, sent);
    assert!(
        credit >= CONN_BUF_SIZE - CREDIT_UPDATE_THRESHOLD,
        "{credit}"
    );
}

#[test]
fn guest_beyond_its_credit_is_reset() {
    let mut h = Harness::new();
    let listener = h.listen(9);
    let mut s = h.establish_guest(&listener, 90, 9);
    let chunk = pattern(MAX_PKT_LEN as usize, 3);
    let mut reset = false;
    for _ in 0..64 {
        h.send(g(Op::Rw, 90, 9), &chunk);
        assert!(h.counters().buffered_bytes <= u64::from(CONN_BUF_SIZE));
        if h.recv().iter().any(|p| p.op() == Some(Op::Rst)) {
            reset = true;
            break;
        }
    }
    assert!(reset);
    let c = h.counters();
    assert_eq!(
        (c.credit_violations, c.connections, c.buffered_bytes),
        (1, 0, 0)
    );
    assert!(sees_eof(&mut s));
}

#[test]
fn host_to_guest_data_respects_the_guest_credit() {
    let mut h = Harness::new();
    let listener = h.listen(3);
    // The guest offers 1000 bytes of buffer.
    h.send(g(Op::Request, 30, 3).with_credit(1000, 0), &[]);
    assert_eq!(h.recv()[0].op(), Some(Op::Response));
    let (mut s, _) = listener.accept().unwrap();
    let data = pattern(5000, 5);
    s.write_all(&data).unwrap();
    let mut got = Vec::new();
    let mut fwd = 0u32;
    for _ in 0..10 {
        h.settle();
        let pkts = h.recv();
        let chunk = payload(&pkts);
        assert!(
            chunk.len() <= 1000,
            "{} bytes beyond the credit",
            chunk.len()
        );
        got.extend_from_slice(&chunk);
        if got.len() == data.len() {
            break;
        }
        // Out of credit, the device asks for more.
        assert_eq!(pkts.last().unwrap().op(), Some(Op::CreditRequest));
        fwd += chunk.len() as u32;
        h.send(g(Op::CreditUpdate, 30, 3).with_credit(1000, fwd), &[]);
    }
    assert_eq!(got, data);
    let c = h.counters();
    assert!(c.credit_stalls >= 4, "{c:?}");
}

#[test]
fn without_rx_buffers_the_device_waits_without_spinning() {
    let mut h = Harness::new();
    let (s, host_port) = h.establish_host(1);
    // Plenty of credit: RX buffers are what runs out.
    h.send(
        g(Op::CreditUpdate, 1, host_port).with_credit(1 << 20, 0),
        &[],
    );
    h.auto_repost = false;
    let data = pattern(400_000, 8);
    let writer = {
        let mut s = s.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || s.write_all(&data).unwrap())
    };
    // settle() fails if the device keeps the loop busy.
    std::thread::sleep(Duration::from_millis(20));
    h.settle();
    let first = h.take_used();
    assert_eq!(first.len(), RX_SLOTS as usize);
    h.settle();
    assert!(h.take_used().is_empty());
    assert!(h.counters().rx_buffer_stalls >= 1);
    assert_eq!(h.counters().buffered_bytes, 0);
    // Buffers again: the rest flows.
    let mut got = payload(&first);
    h.auto_repost = true;
    h.post_rx(RX_SLOTS);
    h.kick(RX_QUEUE);
    for _ in 0..1000 {
        if got.len() == data.len() {
            break;
        }
        h.settle();
        got.extend_from_slice(&payload(&h.recv()));
    }
    writer.join().unwrap();
    assert!(got == data, "bytes differ");
    s.shutdown(Shutdown::Both).unwrap();
}

impl Harness {
    /// Queues 13 hostile transmit chains: 8 malformed (too short, lengths
    /// beyond the chain or 64 KiB, wrong type, unknown op, data on a control
    /// packet, a device-writable buffer, a buffer outside guest memory), 2
    /// with bad addresses (forged source, another destination) and 3 for no
    /// connection (data, a response, an RST).
    fn queue_hostile_packets(&mut self) {
        // Too short for a header.
        let at = self.tx_area();
        self.tx_chain(&[(at, 20, 0)]);
        // A header with len beyond the chain, and beyond 64 KiB.
        let mut hdr = g(Op::Rw, 1, 2);
        hdr.len = 100;
        self.queue_raw(hdr, &[0u8; 10]);
        hdr.len = MAX_PKT_LEN + 1;
        self.queue_raw(hdr, &[0u8; 10]);
        // Wrong type, unknown op, data on a control packet.
        let mut wrong_type = g(Op::Request, 3, 4);
        wrong_type.type_ = 2;
        self.queue_packet(wrong_type, &[]);
        let mut unknown = g(Op::Rw, 3, 4);
        unknown.op = 99;
        self.queue_packet(unknown, &[]);
        self.queue_packet(g(Op::Request, 3, 4), b"junk");
        // Forged source CID and a destination other than the host.
        let mut forged = g(Op::Request, 3, 8);
        forged.src_cid = 77;
        self.queue_packet(forged, &[]);
        let mut elsewhere = g(Op::Request, 3, 8);
        elsewhere.dst_cid = 4;
        self.queue_packet(elsewhere, &[]);
        // Packets for no connection (forged ports), an RST for none.
        self.queue_packet(g(Op::Rw, 81, 8), b"x");
        self.queue_packet(g(Op::Response, 80, 9), &[]);
        self.queue_packet(g(Op::Rst, 81, 8), &[]);
        // A device-writable buffer in the TX queue, a buffer outside memory.
        let at = self.tx_area();
        self.mem
            .write_slice(&g(Op::Rw, 1, 2).to_bytes(), GuestAddress(at))
            .unwrap();
        self.tx_chain(&[(at, HDR_LEN as u32, WRITE)]);
        self.tx_chain(&[(MEM_SIZE as u64 - 8, 64, 0)]);
    }
}

#[test]
fn hostile_packets_are_counted_and_never_fatal() {
    let mut h = Harness::new();
    let listener = h.listen(8);
    let mut s = h.establish_guest(&listener, 80, 8);
    let before = h.counters();

    h.queue_hostile_packets();
    h.kick(TX_QUEUE);

    let c = h.counters();
    assert_eq!(c.tx_packets - before.tx_packets, 13);
    assert_eq!(c.malformed_packets - before.malformed_packets, 8);
    assert_eq!(c.bad_addresses - before.bad_addresses, 2);
    assert_eq!(c.protocol_errors - before.protocol_errors, 2);
    let rsts = h.recv();
    assert!(rsts.iter().all(|p| p.op() == Some(Op::Rst)), "{rsts:?}");
    // Replies for the packets with a usable header, except the RST.
    assert_eq!(rsts.len(), 7, "{rsts:?}");

    // The established connection is untouched.
    h.send(g(Op::Rw, 80, 8), b"still here");
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");

    // A bad packet on the connection resets it.
    h.queue_raw(
        {
            let mut bad = g(Op::Rw, 80, 8);
            bad.len = 500;
            bad
        },
        &[1u8; 10],
    );
    h.kick(TX_QUEUE);
    assert_eq!(h.recv()[0].op(), Some(Op::Rst));
    assert!(sees_eof(&mut s));
}

impl Harness {
    /// Queues a raw header (whose `len` is kept) and `data` in one buffer.
    fn queue_raw(&mut self, hdr: Header, data: &[u8]) {
        let at = self.tx_area();
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(data);
        self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        self.tx_chain(&[(at, bytes.len() as u32, 0)]);
    }
}

#[test]
fn protocol_errors_on_a_connection_reset_it() {
    let mut h = Harness::new();
    let listener = h.listen(8);
    let mut s = h.establish_guest(&listener, 80, 8);
    // A second REQUEST for a live connection.
    h.send(g(Op::Request, 80, 8), &[]);
    assert_eq!(h.recv()[0].op(), Some(Op::Rst));
    assert!(sees_eof(&mut s));
    // Data after the guest's SHUTDOWN(SEND).
    let s = h.establish_guest(&listener, 81, 8);
    s.shutdown(Shutdown::Write).unwrap();
    h.settle();
    h.recv();
    h.send(g(Op::Shutdown, 81, 8).with_flags(SHUTDOWN_SEND), &[]);
    // That ended it already (both directions done).
    assert_eq!(h.recv()[0].op(), Some(Op::Rst));
    let mut s = h.establish_guest(&listener, 82, 8);
    h.send(g(Op::Shutdown, 82, 8).with_flags(SHUTDOWN_SEND), &[]);
    h.send(g(Op::Rw, 82, 8), b"late");
    assert_eq!(h.recv()[0].op(), Some(Op::Rst));
    assert!(sees_eof(&mut s));
    let c = h.counters();
    assert_eq!((c.protocol_errors, c.connections), (2, 0));
}

#[test]
fn unusable_rx_buffers_are_returned_empty() {
    let mut h = Harness::inactive();
    h.activate();
    // A device-readable buffer, one too short for a header, a good one.
    h.rxq.add_chain(0, &[(Harness::rx_addr(0), RX_BUF_LEN, 0)]);
    h.rxq.add_chain(1, &[(Harness::rx_addr(1), 40, WRITE)]);
    h.rxq
        .add_chain(2, &[(Harness::rx_addr(2), RX_BUF_LEN, WRITE)]);
    h.rx_posted = 3;
    h.settle();
    h.send(g(Op::Request, 5, 6), &[]);
    assert_eq!(h.rxq.used_idx(), 3);
    assert_eq!(h.rxq.used_elem(0), (0, 0));
    assert_eq!(h.rxq.used_elem(1), (1, 0));
    assert_eq!(h.rxq.used_elem(2).0, 2);
    assert_eq!(h.counters().malformed_packets, 2);
}

#[test]
fn connection_limit_holds() {
    let mut h = Harness::with_limits(Limits {
        max_connections: 4,
        ..Limits::default()
    });
    let listener = h.listen(8);
    let mut guest_streams: Vec<UnixStream> = (0..3)
        .map(|i| h.establish_guest(&listener, 100 + i, 8))
        .collect();
    let (_host, _) = h.establish_host(1);
    // A fifth guest request and a fifth host client are refused.
    h.send(g(Op::Request, 200, 8), &[]);
    assert_eq!(h.recv()[0].op(), Some(Op::Rst));
    let mut extra = h.host_connect(2);
    h.settle();
    assert!(sees_eof(&mut extra));
    assert!(h.recv().is_empty());
    let c = h.counters();
    assert_eq!((c.connections, c.conns_refused), (4, 2));
    // One closes: room again.
    h.send(g(Op::Rst, 100, 8), &[]);
    assert!(sees_eof(&mut guest_streams[0]));
    h.establish_guest(&listener, 201, 8);
    assert_eq!(h.counters().connections, 4);
}

#[test]
fn reset_drops_connections_and_activation_starts_afresh() {
    let mut h = Harness::new();
    let listener = h.listen(8);
    let mut a = h.establish_guest(&listener, 80, 8);
    let (mut b, _) = h.establish_host(1);
    h.vsock.lock().unwrap().reset();
    h.settle();
    assert!(sees_eof(&mut a));
    assert!(sees_eof(&mut b));
    let c = h.counters();
    assert_eq!((c.connections, c.conns_closed), (0, 2));
    assert!(h.vsock.lock().unwrap().queue_states().is_empty());
    // Notifications while inactive are ignored.
    h.kick(TX_QUEUE);
    assert_eq!(h.counters().ignored_notifications, 1);

    // A new driver.
    let mut h2 = h;
    h2.rxq = GuestQueue::new(&h2.mem, RXQ_BASE, RX_SLOTS);
    h2.txq = GuestQueue::new(&h2.mem, TXQ_BASE, TX_SIZE);
    h2.rx_posted = 0;
    h2.rx_seen = 0;
    h2.tx_next = 0;
    h2.activate();
    h2.post_rx(RX_SLOTS);
    h2.establish_guest(&listener, 80, 8);
}

#[test]
fn mmio_handshake_activates_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let mem = memory(&[(0, MEM_SIZE)]);
    let vsock = Arc::new(Mutex::new(
        Vsock::<Mem>::new(VsockConfig {
            guest_cid: 0x1234_5678,
            uds_path: dir.path().join("v"),
        })
        .unwrap(),
    ));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(vsock.clone());
    let mut t = MmioTransport::new(mem.clone(), vsock.clone()).unwrap();
    assert_eq!(read_reg(&mut t, VIRTIO_MMIO_DEVICE_ID), 19);
    let status = negotiate(&mut t, feature_bit(VIRTIO_F_VERSION_1));
    assert_ne!(status & 8, 0, "FEATURES_OK");
    let mut rxq = GuestQueue::new(&mem, RXQ_BASE, 8);
    let txq = GuestQueue::new(&mem, TXQ_BASE, 8);
    let evq = GuestQueue::new(&mem, EVQ_BASE, 8);
    for (i, q) in [&rxq, &txq, &evq].into_iter().enumerate() {
        setup_queue(&mut t, i as u32, q);
    }
    let mut cid = [0u8; 8];
    t.read(CONFIG_SPACE_OFFSET, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), 0x1234_5678);
    add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(vsock.lock().unwrap().is_activated());
    assert_eq!(read_reg(&mut t, VIRTIO_MMIO_STATUS) & 0x40, 0);

    // A host client's REQUEST reaches the RX queue after a notification.
    let mut s = UnixStream::connect(dir.path().join("v")).unwrap();
    s.write_all(b"CONNECT 5\n").unwrap();
    rxq.add_chain(0, &[(RX_AREA, RX_BUF_LEN, WRITE)]);
    write_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, RX_QUEUE as u32);
    for _ in 0..10 {
        manager.run_with_timeout(10).unwrap();
    }
    assert_eq!(rxq.used_idx(), 1);
    let mut raw = [0u8; HDR_LEN];
    mem.read_slice(&mut raw, GuestAddress(RX_AREA)).unwrap();
    let hdr = Header::from_bytes(&raw);
    assert_eq!(
        (hdr.op(), hdr.dst_cid, hdr.dst_port),
        (Some(Op::Request), 0x1234_5678, 5)
    );
    write_reg(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert!(!vsock.lock().unwrap().is_activated());
}

#[test]
fn a_guest_without_rx_buffers_cannot_grow_the_backlog() {
    let mut h = Harness::inactive();
    h.activate();
    h.settle();
    let listener = h.listen(8);
    listener.set_nonblocking(true).unwrap();
    let mut accepted = Vec::new();
    // Connect and reset the same connection over and over: each one owes
    // the guest a RESPONSE that never goes out.
    for round in 0..300 {
        h.queue_packet(g(Op::Request, 80, 8), &[]);
        h.queue_packet(g(Op::Rst, 80, 8), &[]);
        if round % 25 == 24 {
            h.kick(TX_QUEUE);
            while let Ok((s, _)) = listener.accept() {
                accepted.push(s);
            }
        }
    }
    let c = h.counters();
    assert_eq!(
        (c.conns_opened, c.conns_closed, c.connections),
        (300, 300, 0)
    );
    assert_eq!(h.vsock.lock().unwrap().rx_backlog(), 0);
    // Garbage that deserves RST replies: at most 256 wait.
    for round in 0..300u32 {
        h.queue_packet(g(Op::Rw, 1000 + round, 9), b"?");
        if round % 50 == 49 {
            h.kick(TX_QUEUE);
        }
    }
    let c = h.counters();
    assert_eq!(c.dropped_rsts, 300 - 256);
    assert_eq!(h.vsock.lock().unwrap().rx_backlog(), 256);
    // Once buffers come, the queued RSTs go out.
    h.post_rx(RX_SLOTS);
    h.kick(RX_QUEUE);
    assert_eq!(h.recv().len(), 256);
    assert_eq!(h.vsock.lock().unwrap().rx_backlog(), 0);
}
