//! `vsock_packet`: a guest sending and receiving virtio-vsock packets through
//! a vsock device (hybrid Unix-socket back-end) on a real event loop, with
//! host peers: a listener at `<uds_path>_1024` that accepts and drains what
//! the guest sends, and host clients that connect to `uds_path` and ask for
//! guest ports with `CONNECT <port>\n`.
//!
//! The input lays out the RX and TX queues (and the unused event queue) in a
//! 256 KiB guest memory, writes packets (well-formed headers with fuzzed
//! fields, or raw bytes), RX buffers, raw descriptors and ring entries, and
//! notifies the device. After every notification or event-loop run:
//!
//! - on each queue, the used index advances by at most the entries the driver
//!   made available, and by no more than the device took;
//! - TX chains are returned with length 0 (the device writes nothing to them);
//! - every RX completion is empty or holds a whole packet: at least a header,
//!   at most a header and `MAX_PKT_LEN` bytes; when nothing the device writes
//!   can change the chains (see `block`), it is at most the chain's
//!   device-writable bytes, and the header it wrote says host CID 2 to the
//!   guest's CID, a stream socket, a known op, and a `len` that is the rest;
//! - no more connections than `MAX_CONNECTIONS`, no more buffered bytes than
//!   `CONN_BUF_SIZE` for each, and the host peers never receive more bytes
//!   than the guest sent.
//!
//! Input format: operations (an [`Op`] code byte and operands) until the input ends.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use ember_devices::virtio::vsock::{
    PacketHeader, Vsock, VsockConfig, VsockCounters, CONN_BUF_SIZE, HOST_CID, MAX_CONNECTIONS,
    MAX_PKT_LEN, PACKET_HEADER_LEN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, TYPE_STREAM,
};
use ember_devices::virtio::{feature_bit, IrqTrigger, VirtioDevice};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::block::{guest_memory, overlaps, range, Mem, Range};
use crate::bytes::{Reader, Writer};
use crate::ring::{Driver, LAYOUT, SIZE};

/// The guest's CID.
pub const GUEST_CID: u64 = 3;
/// The host port a listener waits on (guest REQUESTs to it connect).
pub const LISTEN_PORT: u32 = 1024;
/// Most notifications and loop runs checked per input.
const MAX_RUNS: u32 = 64;
/// Most host clients per input.
const MAX_CLIENTS: usize = 8;

/// Operation codes (the code byte is taken modulo [`Op::COUNT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// `u32 addr, u16 len, len bytes`: the driver writes guest memory.
    WriteMem = 0,
    /// `u32 src_port, u32 dst_port, u16 op, u32 flags, u32 buf_alloc,
    /// u32 fwd_cnt, u16 len, u8 split, len bytes`: a packet from the guest's
    /// CID to the host, in one or two descriptors, made available on TX.
    Packet = 1,
    /// `u16 len, u8 pieces`: an RX buffer of `len` bytes in `pieces` (1-4)
    /// descriptors, made available on RX.
    RxBuffer = 2,
    /// `u8 queue, u16 index, u64 addr, u32 len, u16 flags, u16 next`: a raw
    /// descriptor (queue modulo 2: RX or TX; index modulo the size).
    Desc = 3,
    /// `u8 queue, u16 head`: a raw available-ring entry.
    Publish = 4,
    /// `u8 queue`: notifies RX or TX and runs the event loop once.
    Kick = 5,
    /// Runs the event loop once (host peers are served first).
    Run = 6,
    /// `u32 port`: a host client connects and asks for guest port `port`.
    Connect = 7,
    /// `u8 client, u16 len, len bytes`: a host client writes bytes.
    ClientWrite = 8,
    /// Resets the device and activates it again with fresh rings.
    Reset = 9,
}

impl Op {
    /// Number of operation codes.
    pub const COUNT: u8 = 10;
}

type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// A per-process directory for the sockets.
fn socket_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ember-fuzz-vsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("socket directory");
        dir
    })
}

/// What the shadow queue says the device will find on RX.
struct RxExpectation {
    next_used: u16,
    /// Popped chains: head, writable bytes, writable buffers.
    chains: Vec<(u16, u64, Vec<Range>)>,
    strict: bool,
}

struct Harness {
    mem: Mem,
    vsock: Arc<Mutex<Vsock<Mem>>>,
    manager: Manager,
    irq: Arc<IrqTrigger>,
    driver: Driver<3>,
    listener: UnixListener,
    peers: Vec<UnixStream>,
    clients: Vec<UnixStream>,
    received: u64,
    runs: u32,
}

impl Harness {
    fn new() -> Harness {
        let dir = socket_dir();
        let uds_path = dir.join("v.sock");
        let _ = std::fs::remove_file(&uds_path);
        let vsock = Vsock::new(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: uds_path.clone(),
        })
        .expect("vsock device");
        let listen_path = dir.join(format!("v.sock_{LISTEN_PORT}"));
        let _ = std::fs::remove_file(&listen_path);
        let listener = UnixListener::bind(&listen_path).expect("listener");
        listener.set_nonblocking(true).expect("nonblocking");
        let vsock = Arc::new(Mutex::new(vsock));
        let mut manager = Manager::new().expect("event manager");
        manager.add_subscriber(vsock.clone());
        let mem = guest_memory(false);
        let mut h = Harness {
            mem: mem.clone(),
            vsock,
            manager,
            irq: Arc::new(IrqTrigger::new().expect("irq")),
            driver: Driver::new(mem.clone()),
            listener,
            peers: Vec::new(),
            clients: Vec::new(),
            received: 0,
            runs: 0,
        };
        h.activate();
        h
    }

    fn activate(&mut self) {
        self.driver.reset();
        let queues = self.driver.queues(QUEUE_SIZE);
        self.vsock
            .lock()
            .expect("lock")
            .activate(
                self.mem.clone(),
                queues,
                self.irq.clone(),
                feature_bit(VIRTIO_F_VERSION_1),
            )
            .expect("activation");
    }

    fn step(&mut self, r: &mut Reader) -> Option<()> {
        match r.u8()? % Op::COUNT {
            0 => self.driver.write_mem_op(r)?,
            1 => {
                let header = PacketHeader {
                    src_cid: GUEST_CID,
                    dst_cid: HOST_CID,
                    src_port: r.u32()?,
                    dst_port: r.u32()?,
                    op: r.u16()?,
                    flags: r.u32()?,
                    buf_alloc: r.u32()?,
                    fwd_cnt: r.u32()?,
                    len: u32::from(r.u16()? % 4097),
                    type_: TYPE_STREAM,
                };
                let split = u32::from(r.u8()?);
                let data = r.take(header.len as usize).unwrap_or_else(|| r.rest());
                let mut packet = header.to_bytes().to_vec();
                packet.extend_from_slice(data);
                self.driver.readable(TX_QUEUE, &packet, split);
            }
            2 => {
                let len = u32::from(r.u16()? % 8193);
                let pieces = u32::from(r.u8()? % 4) + 1;
                self.driver.writable(RX_QUEUE, len, pieces);
            }
            3 => self.driver.desc_op(r)?,
            4 => self.driver.publish_op(r)?,
            5 => {
                let queue = usize::from(r.u8()? % 2);
                if self.runs < MAX_RUNS {
                    self.run(Some(queue));
                }
            }
            6 => {
                if self.runs < MAX_RUNS {
                    self.run(None);
                }
            }
            7 => {
                let port = r.u32()?;
                if self.clients.len() < MAX_CLIENTS {
                    let path = socket_dir().join("v.sock");
                    if let Ok(mut client) = UnixStream::connect(path) {
                        let _ = client.set_nonblocking(true);
                        let _ = client.write_all(format!("CONNECT {port}\n").as_bytes());
                        self.clients.push(client);
                    }
                }
            }
            8 => {
                let client = usize::from(r.u8()?);
                let len = usize::from(r.u16()? % 4097);
                let bytes = r.take(len).unwrap_or_else(|| r.rest());
                if let Some(c) = self.clients.get_mut(client % MAX_CLIENTS) {
                    let _ = c.write(bytes);
                }
            }
            _ => {
                self.vsock.lock().expect("lock").reset();
                self.manager.run_with_timeout(0).expect("event loop");
                self.activate();
            }
        }
        Some(())
    }

    /// Host peers: accepts connections on the listener and drains every
    /// peer and client.
    fn serve_host(&mut self) {
        while let Ok((peer, _)) = self.listener.accept() {
            let _ = peer.set_nonblocking(true);
            self.peers.push(peer);
        }
        let mut buf = [0u8; 4096];
        for peer in &mut self.peers {
            while let Ok(n @ 1..) = peer.read(&mut buf) {
                self.received += n as u64;
            }
        }
        for client in &mut self.clients {
            while let Ok(1..) = client.read(&mut buf) {}
        }
    }

    fn state(&self) -> (Vec<QueueState>, VsockCounters) {
        let vsock = self.vsock.lock().expect("lock");
        (vsock.queue_states(), vsock.counters())
    }

    /// The RX chains the device may fill, from a shadow copy of its queue.
    fn expect_rx(&self, q: QueueState) -> RxExpectation {
        let pending = self
            .driver
            .avail_idx_in_memory(RX_QUEUE)
            .wrapping_sub(q.next_avail);
        let mut chains = Vec::new();
        if pending <= SIZE {
            let mut shadow = Queue::try_from(q).expect("valid queue state");
            for _ in 0..pending {
                let Some(chain) = shadow.pop_descriptor_chain(&self.mem) else {
                    break;
                };
                let head = chain.head_index();
                let mut bytes = 0u64;
                let mut bufs = Vec::new();
                for d in chain.filter(|d| d.is_write_only() && d.len() > 0) {
                    bytes += u64::from(d.len());
                    bufs.push(range(d.addr().0, u64::from(d.len())));
                }
                chains.push((head, bytes, bufs));
            }
        }
        // Anything the device writes (RX buffers, used rings) must stay off
        // the rings and tables for the chains to be stable.
        let mut metadata = Vec::new();
        for &(desc, avail, used) in &LAYOUT {
            metadata.push(range(desc, 16 * u64::from(SIZE)));
            metadata.push(range(avail, 6 + 2 * u64::from(SIZE)));
            metadata.push(range(used, 6 + 8 * u64::from(SIZE)));
        }
        for &(desc, _, _) in &LAYOUT[..2] {
            for i in 0..u64::from(SIZE) {
                if let Ok(d) = self.mem.read_obj::<Descriptor>(GuestAddress(desc + 16 * i)) {
                    if d.refers_to_indirect_table() {
                        metadata.push(range(d.addr().0, u64::from(d.len())));
                    }
                }
            }
        }
        let used_rings: Vec<Range> = LAYOUT
            .iter()
            .map(|&(_, _, used)| range(used, 6 + 8 * u64::from(SIZE)))
            .collect();
        // RX buffers overlapping each other: a later packet overwrites an
        // earlier one (the guest's doing, not the device's).
        let rx_bufs: Vec<Range> = chains.iter().flat_map(|c| c.2.iter().copied()).collect();
        let disjoint = rx_bufs
            .iter()
            .enumerate()
            .all(|(i, &a)| rx_bufs[i + 1..].iter().all(|&b| !overlaps(a, b)));
        let strict = disjoint
            && chains.iter().all(|(_, _, bufs)| {
                bufs.iter()
                    .all(|&b| !metadata.iter().any(|&m| overlaps(b, m)))
            })
            && metadata
                .iter()
                .filter(|m| !used_rings.contains(m))
                .all(|&m| !used_rings.iter().any(|&u| overlaps(m, u)));
        RxExpectation {
            next_used: q.next_used,
            chains,
            strict,
        }
    }

    fn read_bufs(&self, bufs: &[Range], len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        for &(start, end) in bufs {
            if out.len() == len {
                break;
            }
            let n = ((end - start) as usize).min(len - out.len());
            let mut piece = vec![0u8; n];
            self.mem
                .read_slice(&mut piece, GuestAddress(start))
                .expect("an RX buffer the device filled");
            out.extend_from_slice(&piece);
        }
        out
    }

    fn run(&mut self, kick: Option<usize>) {
        self.runs += 1;
        self.serve_host();
        let (q0, c0) = self.state();
        let pending: Vec<u16> = (0..2)
            .map(|q| {
                self.driver
                    .avail_idx_in_memory(q)
                    .wrapping_sub(q0[q].next_avail)
            })
            .collect();
        let rx = self.expect_rx(q0[RX_QUEUE]);
        if let Some(queue) = kick {
            self.vsock.lock().expect("lock").queue_events()[queue]
                .write(1)
                .expect("notify");
        }
        self.manager.run_with_timeout(0).expect("event loop");
        self.serve_host();
        let (q1, c1) = self.state();

        for q in 0..2 {
            let took = q1[q].next_avail.wrapping_sub(q0[q].next_avail);
            let used = q1[q].next_used.wrapping_sub(q0[q].next_used);
            assert!(used <= took, "queue {q}: {used} used for {took} taken");
            if pending[q] <= SIZE {
                assert!(
                    took <= pending[q],
                    "queue {q}: took {took} of {} pending",
                    pending[q]
                );
            }
        }
        let tx_used = q1[TX_QUEUE].next_used.wrapping_sub(q0[TX_QUEUE].next_used);
        for k in 0..tx_used {
            let (_, len) = self
                .driver
                .used_elem(TX_QUEUE, q0[TX_QUEUE].next_used.wrapping_add(k));
            assert_eq!(len, 0, "a TX chain was returned with length {len}");
        }
        let rx_used = q1[RX_QUEUE].next_used.wrapping_sub(rx.next_used);
        let max = PACKET_HEADER_LEN as u32 + MAX_PKT_LEN;
        // Chains with a head past the queue are taken but cannot be returned.
        let returnable: Vec<&(u16, u64, Vec<Range>)> = rx
            .chains
            .iter()
            .filter(|(head, _, _)| *head < SIZE)
            .collect();
        if rx.strict && pending[RX_QUEUE] <= SIZE {
            assert!(
                usize::from(rx_used) <= returnable.len(),
                "{rx_used} RX completions for {} chains",
                returnable.len()
            );
        }
        for k in 0..rx_used {
            let (id, len) = self
                .driver
                .used_elem(RX_QUEUE, rx.next_used.wrapping_add(k));
            assert!(
                len == 0 || (PACKET_HEADER_LEN as u32..=max).contains(&len),
                "RX completion of {len} bytes"
            );
            let Some((head, writable, bufs)) = returnable.get(usize::from(k)).copied() else {
                continue;
            };
            if !rx.strict || len == 0 {
                continue;
            }
            assert_eq!(id, u32::from(*head), "RX used element {k}");
            assert!(u64::from(len) <= *writable, "{len} bytes in {writable}");
            let raw = self.read_bufs(bufs, PACKET_HEADER_LEN);
            let header = PacketHeader::from_bytes(&raw.try_into().expect("a header"));
            assert_eq!(
                (header.src_cid, header.dst_cid),
                (HOST_CID, GUEST_CID),
                "{header:?}"
            );
            assert_eq!(header.type_, TYPE_STREAM, "{header:?}");
            assert!(header.op().is_some(), "{header:?}");
            assert_eq!(header.len + PACKET_HEADER_LEN as u32, len, "{header:?}");
        }
        assert!(c1.connections <= MAX_CONNECTIONS as u64, "{c1:?}");
        assert!(
            c1.buffered_bytes <= c1.connections * u64::from(CONN_BUF_SIZE),
            "{c1:?}"
        );
        assert!(
            self.received <= c1.tx_bytes,
            "host peers got {} bytes, the guest sent {}",
            self.received,
            c1.tx_bytes
        );
        assert!(c1.tx_packets >= c0.tx_packets && c1.rx_packets >= c0.rx_packets);
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let mut h = Harness::new();
    while h.step(&mut r).is_some() {}
    if h.runs < MAX_RUNS {
        h.run(Some(TX_QUEUE));
    }
}

/// Seed builder.
#[derive(Debug, Default)]
pub struct SeedBuilder {
    w: Writer,
}

impl SeedBuilder {
    /// An empty seed.
    pub fn new() -> SeedBuilder {
        SeedBuilder::default()
    }

    /// A packet from the guest to host port `dst_port`.
    pub fn packet(
        &mut self,
        src_port: u32,
        dst_port: u32,
        op: u16,
        flags: u32,
        data: &[u8],
    ) -> &mut Self {
        self.w
            .u8(Op::Packet as u8)
            .u32(src_port)
            .u32(dst_port)
            .u16(op)
            .u32(flags)
            .u32(CONN_BUF_SIZE)
            .u32(0)
            .u16(data.len() as u16)
            .u8(if data.is_empty() { 0 } else { 20 })
            .bytes(data);
        self
    }

    /// An RX buffer.
    pub fn rx_buffer(&mut self, len: u16, pieces: u8) -> &mut Self {
        self.w
            .u8(Op::RxBuffer as u8)
            .u16(len)
            .u8(pieces.saturating_sub(1));
        self
    }

    /// Notifies a queue.
    pub fn kick(&mut self, queue: usize) -> &mut Self {
        self.w.u8(Op::Kick as u8).u8(queue as u8);
        self
    }

    /// Runs the loop.
    pub fn run(&mut self) -> &mut Self {
        self.w.u8(Op::Run as u8);
        self
    }

    /// A host client asking for guest port `port`.
    pub fn connect(&mut self, port: u32) -> &mut Self {
        self.w.u8(Op::Connect as u8).u32(port);
        self
    }

    /// A host client writes.
    pub fn client_write(&mut self, client: u8, data: &[u8]) -> &mut Self {
        self.w
            .u8(Op::ClientWrite as u8)
            .u8(client)
            .u16(data.len() as u16)
            .bytes(data);
        self
    }

    /// Resets the device.
    pub fn reset(&mut self) -> &mut Self {
        self.w.u8(Op::Reset as u8);
        self
    }

    /// The input.
    pub fn finish(self) -> Vec<u8> {
        self.w.finish()
    }
}
