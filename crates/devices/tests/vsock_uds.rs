//! virtio-vsock from outside the crate, the way a benchmark drives it: the
//! public device API, a guest driver built on `virtio::test_utils` (the
//! `test-utils` feature), real Unix sockets. Streams 16 MiB each way through
//! the device model and through a plain Unix socket pair, checks every byte,
//! and prints the rates (`cargo test --release --test vsock_uds --
//! --nocapture`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_devices::virtio::test_utils::{memory, GuestQueue, Mem, WRITE};
use ember_devices::virtio::vsock::{
    Op, PacketHeader, Vsock, VsockConfig, CONN_BUF_SIZE, HOST_CID, MAX_PKT_LEN, PACKET_HEADER_LEN,
    QUEUE_SIZE, RX_QUEUE, SHUTDOWN_RCV, SHUTDOWN_SEND, TX_QUEUE, TYPE_STREAM,
};
use ember_devices::virtio::{IrqTrigger, VirtioDevice};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

const TOTAL: usize = 16 << 20;
const CID: u64 = 3;
/// The guest's receive buffer (what it advertises).
const GUEST_BUF: u32 = 1 << 20;
const SLOTS: u16 = 16;
const SLOT_LEN: u64 = 0x1_1000;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x30_0000;

/// The guest side: queues and buffers in guest memory, on one event loop
/// with the device.
struct Guest {
    mem: Mem,
    rxq: GuestQueue,
    txq: GuestQueue,
    vsock: Arc<Mutex<Vsock<Mem>>>,
    manager: Manager,
    rx_seen: u16,
    tx_sent: u16,
    tx_done: u16,
}

impl Guest {
    fn new(uds: &Path) -> Guest {
        let mem = memory(&[(0, 0x80_0000)]);
        let vsock = Arc::new(Mutex::new(
            Vsock::new(VsockConfig {
                guest_cid: CID,
                uds_path: uds.to_path_buf(),
            })
            .unwrap(),
        ));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(vsock.clone());
        let mut rxq = GuestQueue::new(&mem, 0x1_0000, SLOTS);
        let txq = GuestQueue::new(&mem, 0x2_0000, SLOTS);
        let evq = GuestQueue::new(&mem, 0x3_0000, 4);
        let queues = [&rxq, &txq, &evq]
            .iter()
            .map(|q| q.device_queue(QUEUE_SIZE))
            .collect();
        vsock
            .lock()
            .unwrap()
            .activate(
                mem.clone(),
                queues,
                Arc::new(IrqTrigger::new().unwrap()),
                1 << 32,
            )
            .unwrap();
        // One 64 KiB RX buffer per descriptor.
        for i in 0..SLOTS {
            rxq.add_chain(i, &[(rx_addr(i), rx_len(), WRITE)]);
        }
        Guest {
            mem,
            rxq,
            txq,
            vsock,
            manager,
            rx_seen: 0,
            tx_sent: 0,
            tx_done: 0,
        }
    }

    fn kick(&self, queue: usize) {
        self.vsock.lock().unwrap().queue_events()[queue]
            .write(1)
            .unwrap();
    }

    fn run(&mut self) {
        self.manager.run_with_timeout(100).unwrap();
        self.tx_done = self.txq.used_idx();
    }

    /// Queues a packet (header, then `data` if any) and notifies the device;
    /// waits while all TX slots are in flight.
    fn send(&mut self, mut hdr: PacketHeader, data: &[u8]) {
        while self.tx_sent.wrapping_sub(self.tx_done) >= SLOTS / 2 {
            self.run();
        }
        hdr.len = data.len() as u32;
        let slot = self.tx_sent % (SLOTS / 2);
        let at = TX_BUFS + u64::from(slot) * SLOT_LEN;
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(at))
            .unwrap();
        let mut descs = vec![(at, PACKET_HEADER_LEN as u32, 0)];
        if !data.is_empty() {
            self.mem
                .write_slice(data, GuestAddress(at + 0x100))
                .unwrap();
            descs.push((at + 0x100, data.len() as u32, 0));
        }
        self.txq.add_chain(slot * 2, &descs);
        self.tx_sent = self.tx_sent.wrapping_add(1);
        self.kick(TX_QUEUE);
    }

    /// Packets the device delivered since last time; their buffers are
    /// posted again.
    fn recv(&mut self) -> Vec<(PacketHeader, Vec<u8>)> {
        let mut out = Vec::new();
        while self.rx_seen != self.rxq.used_idx() {
            let (id, len) = self.rxq.used_elem(self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let at = rx_addr(id as u16);
            let mut raw = [0u8; PACKET_HEADER_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(at)).unwrap();
            let hdr = PacketHeader::from_bytes(&raw);
            let mut data = vec![0u8; len as usize - PACKET_HEADER_LEN];
            self.mem
                .read_slice(&mut data, GuestAddress(at + PACKET_HEADER_LEN as u64))
                .unwrap();
            out.push((hdr, data));
            self.rxq.add_chain(id as u16, &[(at, rx_len(), WRITE)]);
        }
        if !out.is_empty() {
            self.kick(RX_QUEUE);
        }
        out
    }

    /// Runs the loop until a packet with `op` arrives.
    fn expect(&mut self, op: Op) -> PacketHeader {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < deadline, "no {op:?}");
            self.run();
            if let Some((hdr, _)) = self.recv().into_iter().find(|(h, _)| h.op() == Some(op)) {
                return hdr;
            }
        }
    }
}

fn rx_addr(slot: u16) -> u64 {
    RX_BUFS + u64::from(slot) * SLOT_LEN
}

fn rx_len() -> u32 {
    PACKET_HEADER_LEN as u32 + MAX_PKT_LEN
}

fn packet(op: Op, src_port: u32, dst_port: u32, fwd_cnt: u32) -> PacketHeader {
    PacketHeader {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op: op as u16,
        buf_alloc: GUEST_BUF,
        fwd_cnt,
        ..PacketHeader::default()
    }
}

/// A checksum of a byte stream (FNV-1a, 64-bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sum(u64);

impl Sum {
    fn new() -> Sum {
        Sum(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

fn chunk(i: usize) -> Vec<u8> {
    (0..MAX_PKT_LEN as usize)
        .map(|j| (i * 7 + j * 13) as u8)
        .collect()
}

/// The bytes the host sends: `TOTAL` bytes of `chunk`s, and their sum.
fn source() -> (Vec<Vec<u8>>, Sum) {
    let chunks: Vec<Vec<u8>> = (0..TOTAL / MAX_PKT_LEN as usize).map(chunk).collect();
    let mut sum = Sum::new();
    chunks.iter().for_each(|c| sum.add(c));
    (chunks, sum)
}

fn rate(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

/// Reads `stream` to its end; returns the byte count and their sum.
fn read_summed(mut stream: UnixStream) -> (usize, Sum) {
    let mut buf = vec![0u8; MAX_PKT_LEN as usize];
    let mut sum = Sum::new();
    let mut got = 0;
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            return (got, sum);
        }
        sum.add(&buf[..n]);
        got += n;
    }
}

/// The baseline: the time `chunks` take through a Unix socket pair, and
/// the sum of what arrived.
fn socket_pair_baseline(chunks: &[Vec<u8>]) -> (Duration, Sum) {
    let (mut a, b) = UnixStream::pair().unwrap();
    let start = Instant::now();
    let reader = std::thread::spawn(move || read_summed(b));
    for c in chunks {
        a.write_all(c).unwrap();
    }
    drop(a);
    let (_, sum) = reader.join().unwrap();
    (start.elapsed(), sum)
}

/// A host client connecting through `uds` to the guest's port 5000, which
/// accepts; returns the client's stream and its host-side port.
fn connect_from_host(guest: &mut Guest, uds: &std::path::Path) -> (UnixStream, u32) {
    let mut host = UnixStream::connect(uds).unwrap();
    host.write_all(b"CONNECT 5000\n").unwrap();
    let req = guest.expect(Op::Request);
    let host_port = req.src_port;
    guest.send(packet(Op::Response, 5000, host_port, 0), &[]);
    guest.run();
    let mut ok = [0u8; 14];
    host.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, format!("OK {host_port}\n").as_bytes());
    (host, host_port)
}

/// Host writes, guest reads: through the device, then a socket pair.
#[test]
fn host_to_guest_stream() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let mut guest = Guest::new(&uds);
    let (chunks, expected) = source();

    let (mut host, host_port) = connect_from_host(&mut guest, &uds);

    let start = Instant::now();
    let writer = {
        let chunks = chunks.clone();
        std::thread::spawn(move || {
            for c in &chunks {
                host.write_all(c).unwrap();
            }
            host
        })
    };
    let (mut got, mut fwd, mut told) = (0usize, 0u32, 0u32);
    let mut sum = Sum::new();
    while got < TOTAL {
        guest.run();
        let mut asked = false;
        for (hdr, data) in guest.recv() {
            match hdr.op() {
                Some(Op::Rw) => {
                    sum.add(&data);
                    got += data.len();
                    fwd = fwd.wrapping_add(data.len() as u32);
                }
                Some(Op::CreditRequest) => asked = true,
                _ => panic!("unexpected {hdr:?}"),
            }
        }
        // Data is consumed at once: give the credit back in halves, or when
        // the device asks.
        if fwd.wrapping_sub(told) >= GUEST_BUF / 2 || (asked && fwd != told) {
            guest.send(packet(Op::CreditUpdate, 5000, host_port, fwd), &[]);
            told = fwd;
        }
    }
    let device = start.elapsed();
    let _host = writer.join().unwrap();
    assert_eq!(got, TOTAL);
    assert_eq!(sum, expected);
    let counters = guest.vsock.lock().unwrap().counters();
    assert_eq!(counters.rx_bytes, TOTAL as u64);

    let (pair, pair_sum) = socket_pair_baseline(&chunks);
    assert_eq!(pair_sum, expected);
    println!(
        "host to guest: device {:.0} MB/s, socket pair {:.0} MB/s ({} MiB, {} packets)",
        rate(TOTAL, device),
        rate(TOTAL, pair),
        TOTAL >> 20,
        counters.rx_packets
    );
}

/// Guest writes within its credit, host reads: through the device, then a
/// socket pair.
#[test]
fn guest_to_host_stream() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let mut guest = Guest::new(&uds);
    let (chunks, expected) = source();
    let listener = UnixListener::bind(dir.path().join("v.sock_6000")).unwrap();
    let reader = std::thread::spawn(move || read_summed(listener.accept().unwrap().0));

    guest.send(packet(Op::Request, 7000, 6000, 0), &[]);
    let resp = guest.expect(Op::Response);
    let (mut buf_alloc, mut fwd) = (resp.buf_alloc, resp.fwd_cnt);
    assert_eq!(buf_alloc, CONN_BUF_SIZE);

    let start = Instant::now();
    let mut sent = 0u32;
    for c in &chunks {
        let mut off = 0;
        while off < c.len() {
            let credit = buf_alloc - sent.wrapping_sub(fwd);
            if credit == 0 {
                guest.run();
                for (hdr, _) in guest.recv() {
                    (buf_alloc, fwd) = (hdr.buf_alloc, hdr.fwd_cnt);
                }
                continue;
            }
            let n = (c.len() - off).min(credit as usize);
            guest.send(packet(Op::Rw, 7000, 6000, 0), &c[off..off + n]);
            sent = sent.wrapping_add(n as u32);
            off += n;
        }
    }
    let mut shutdown = packet(Op::Shutdown, 7000, 6000, 0);
    shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    guest.send(shutdown, &[]);
    guest.expect(Op::Rst);
    let (got, sum) = reader.join().unwrap();
    let device = start.elapsed();
    assert_eq!(got, TOTAL);
    assert_eq!(sum, expected);
    let counters = guest.vsock.lock().unwrap().counters();
    assert_eq!(counters.tx_bytes, TOTAL as u64);
    assert_eq!(counters.credit_violations, 0);

    let (pair, pair_sum) = socket_pair_baseline(&chunks);
    assert_eq!(pair_sum, expected);
    println!(
        "guest to host: device {:.0} MB/s, socket pair {:.0} MB/s ({} MiB, {} packets)",
        rate(TOTAL, device),
        rate(TOTAL, pair),
        TOTAL >> 20,
        counters.tx_packets
    );
}
