//! `virtio_net_tx`: a guest transmitting (and receiving) through a virtio-net
//! device on a real TAP interface, in a private network namespace, with an
//! `AF_PACKET` socket on the TAP as the rest of the host (the helpers of
//! `crates/devices/src/virtio/net/tests/host.rs`, included as they are). Needs
//! root (`unshare(CLONE_NEWNET)`, a TAP device).
//!
//! The device, its TAP and the host socket live for the whole process; each
//! input resets the device, lays out RX and TX queues in a fresh 256 KiB guest
//! memory, writes frames (a virtio-net header, an Ethernet header with the
//! test EtherType or another, fuzzed bytes) in one or two descriptors, RX
//! buffers, raw descriptors and ring entries, sends test frames from the host,
//! and notifies the device. After every notification:
//!
//! - on each queue, the used index advances by at most the entries made
//!   available, and by no more than the device took;
//! - TX chains are returned with length 0, and each is counted once (sent,
//!   too big, malformed, or refused by the TAP);
//! - RX completions are empty or hold at least a virtio-net header;
//! - when nothing the device writes can change the chains: every test frame
//!   the host receives is exactly the frame of a TX chain (its bytes after the
//!   virtio-net header), in order, and never one the device should have
//!   dropped; each RX completion is at most the chain's writable bytes with
//!   `num_buffers` = 1 in its header.
//!
//! Input format: operations (an [`Op`] code byte and operands) until the input ends.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use ember_devices::virtio::net::{
    Net, NetConfig, NetCounters, MAX_FRAME_LEN, MIN_FRAME_LEN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
    VNET_HDR_LEN,
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

#[path = "../../../crates/devices/src/virtio/net/tests/host.rs"]
mod host;

/// The TAP interface (in the harness's own network namespace).
const TAP: &str = "emfuzz0";
/// Most notifications checked per input.
const MAX_KICKS: u32 = 32;

/// Operation codes (the code byte is taken modulo [`Op::COUNT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// `u32 addr, u16 len, len bytes`: the driver writes guest memory.
    WriteMem = 0,
    /// `u8 kind, u16 len, u8 split, len bytes`: a TX chain holding a zeroed
    /// virtio-net header (kind bit 0 clear) or the first 12 bytes (set), an
    /// Ethernet header with the test EtherType (bit 1 clear) or the bytes as
    /// they come, then the bytes; in one or two descriptors.
    Frame = 1,
    /// `u16 len, u8 pieces`: an RX buffer of `len` bytes in 1-4 descriptors.
    RxBuffer = 2,
    /// `u8 queue, u16 index, u64 addr, u32 len, u16 flags, u16 next`: a raw
    /// descriptor (queue modulo 2: RX or TX; index modulo the size).
    Desc = 3,
    /// `u8 queue, u16 head`: a raw available-ring entry.
    Publish = 4,
    /// `u8 queue`: notifies RX or TX, runs the event loop and checks.
    Kick = 5,
    /// `u16 len, u8 seed`: the host sends a test frame to the guest.
    HostSend = 6,
}

impl Op {
    /// Number of operation codes.
    pub const COUNT: u8 = 7;
}

type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// The process-wide device, event loop and host side.
struct World {
    net: Arc<Mutex<Net<Mem>>>,
    manager: Manager,
    port: host::HostPort,
    irq: Arc<IrqTrigger>,
}

fn world() -> &'static Mutex<World> {
    static WORLD: OnceLock<Mutex<World>> = OnceLock::new();
    WORLD.get_or_init(|| {
        let (net, port) = host::in_netns(|| {
            let net = Net::<Mem>::new(NetConfig {
                iface_id: "eth0".to_owned(),
                host_dev_name: TAP.to_owned(),
                guest_mac: Some([0x06, 0xe0, 0, 0, 0, 1]),
                ..NetConfig::default()
            })
            .expect("a TAP in a private network namespace (the target needs root)");
            (net, host::HostPort::new(TAP))
        });
        let net = Arc::new(Mutex::new(net));
        let mut manager = Manager::new().expect("event manager");
        manager.add_subscriber(net.clone());
        Mutex::new(World {
            net,
            manager,
            port,
            irq: Arc::new(IrqTrigger::new().expect("irq")),
        })
    })
}

/// A popped chain: head, device-readable bytes (`None` if a buffer is
/// writable or outside memory), device-writable bytes and buffers.
type ShadowChain = (u16, Option<Vec<u8>>, u64, Vec<Range>);

/// What a shadow copy of a queue says the device will find.
struct Shadow {
    /// Popped chains: head, device-readable bytes (`None` if a buffer is
    /// writable or outside memory), device-writable bytes and buffers.
    chains: Vec<ShadowChain>,
    pending: u16,
}

struct Harness<'w> {
    world: &'w mut World,
    mem: Mem,
    driver: Driver<2>,
    kicks: u32,
}

impl Harness<'_> {
    fn activate(&mut self) {
        let queues = self.driver.queues(QUEUE_SIZE);
        let mut net = self.world.net.lock().expect("lock");
        if net.is_activated() {
            net.reset();
        }
        net.activate(
            self.mem.clone(),
            queues,
            self.world.irq.clone(),
            feature_bit(VIRTIO_F_VERSION_1),
        )
        .expect("activation");
    }

    fn step(&mut self, r: &mut Reader) -> Option<()> {
        match r.u8()? % Op::COUNT {
            0 => self.driver.write_mem_op(r)?,
            1 => {
                let kind = r.u8()?;
                let len = usize::from(r.u16()? % 2049);
                let split = u32::from(r.u8()?);
                let bytes = r.take(len).unwrap_or_else(|| r.rest());
                let mut frame = Vec::with_capacity(VNET_HDR_LEN + MIN_FRAME_LEN + bytes.len());
                let mut bytes = bytes;
                if kind & 1 != 0 && bytes.len() >= VNET_HDR_LEN {
                    frame.extend_from_slice(&bytes[..VNET_HDR_LEN]);
                    bytes = &bytes[VNET_HDR_LEN..];
                } else {
                    frame.extend_from_slice(&[0; VNET_HDR_LEN]);
                }
                if kind & 2 == 0 {
                    frame.extend_from_slice(&[0xff; 6]);
                    frame.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
                    frame.extend_from_slice(&host::TEST_ETHERTYPE.to_be_bytes());
                }
                frame.extend_from_slice(bytes);
                self.driver.readable(TX_QUEUE, &frame, split);
            }
            2 => {
                let len = u32::from(r.u16()? % 4097);
                let pieces = u32::from(r.u8()? % 4) + 1;
                self.driver.writable(RX_QUEUE, len, pieces);
            }
            3 => self.driver.desc_op(r)?,
            4 => self.driver.publish_op(r)?,
            5 => {
                let queue = usize::from(r.u8()? % 2);
                if self.kicks < MAX_KICKS {
                    self.kick(queue);
                }
            }
            _ => {
                let len = usize::from(r.u16()? % 1515).max(MIN_FRAME_LEN);
                let seed = r.u8()?;
                self.world.port.send(&host::test_frame(len, seed));
            }
        }
        Some(())
    }

    fn state(&self) -> ([QueueState; 2], NetCounters) {
        let net = self.world.net.lock().expect("lock");
        let [rx, tx] = net.queue_states()[..] else {
            panic!("the device is active: two queues");
        };
        ([rx, tx], net.counters())
    }

    fn shadow(&self, queue: usize, q: QueueState) -> Shadow {
        let pending = self
            .driver
            .avail_idx_in_memory(queue)
            .wrapping_sub(q.next_avail);
        let mut chains = Vec::new();
        if pending <= SIZE {
            let mut shadow = Queue::try_from(q).expect("valid queue state");
            for _ in 0..pending {
                let Some(chain) = shadow.pop_descriptor_chain(&self.mem) else {
                    break;
                };
                let head = chain.head_index();
                let mut readable = Some(Vec::new());
                let mut writable = 0u64;
                let mut bufs = Vec::new();
                for d in chain {
                    if d.len() == 0 {
                        continue;
                    }
                    if d.is_write_only() {
                        readable = None;
                        writable += u64::from(d.len());
                        bufs.push(range(d.addr().0, u64::from(d.len())));
                        continue;
                    }
                    let mut piece = vec![0u8; d.len().min(0x2_0000) as usize];
                    match (&mut readable, self.mem.read_slice(&mut piece, d.addr())) {
                        (Some(bytes), Ok(())) if piece.len() == d.len() as usize => {
                            bytes.extend_from_slice(&piece)
                        }
                        _ => readable = None,
                    }
                }
                chains.push((head, readable, writable, bufs));
            }
        }
        Shadow { chains, pending }
    }

    /// Whether the device's writes (RX buffers, used rings) leave the rings,
    /// tables and TX frames alone.
    fn stable(&self, rx: &Shadow) -> bool {
        let mut fixed: Vec<Range> = Vec::new();
        for &(desc, avail, _) in &LAYOUT[..2] {
            fixed.push(range(desc, 16 * u64::from(SIZE)));
            fixed.push(range(avail, 6 + 2 * u64::from(SIZE)));
            for i in 0..u64::from(SIZE) {
                if let Ok(d) = self.mem.read_obj::<Descriptor>(GuestAddress(desc + 16 * i)) {
                    if d.refers_to_indirect_table() {
                        fixed.push(range(d.addr().0, u64::from(d.len())));
                    }
                    if !d.is_write_only() {
                        fixed.push(range(d.addr().0, u64::from(d.len())));
                    }
                }
            }
        }
        let mut written: Vec<Range> = LAYOUT[..2]
            .iter()
            .map(|&(_, _, used)| range(used, 6 + 8 * u64::from(SIZE)))
            .collect();
        let rx_bufs: Vec<Range> = rx.chains.iter().flat_map(|c| c.3.iter().copied()).collect();
        // RX buffers overlapping each other: a later frame overwrites an
        // earlier one (the guest's doing, not the device's).
        let disjoint = rx_bufs
            .iter()
            .enumerate()
            .all(|(i, &a)| rx_bufs[i + 1..].iter().all(|&b| !overlaps(a, b)));
        written.extend(rx_bufs);
        disjoint
            && !written
                .iter()
                .any(|&w| fixed.iter().any(|&f| overlaps(w, f)))
    }

    fn kick(&mut self, queue: usize) {
        self.kicks += 1;
        let (q0, c0) = self.state();
        let rx = self.shadow(RX_QUEUE, q0[RX_QUEUE]);
        let tx = self.shadow(TX_QUEUE, q0[TX_QUEUE]);
        let stable = self.stable(&rx);
        self.world.net.lock().expect("lock").queue_events()[queue]
            .write(1)
            .expect("notify");
        self.world.manager.run_with_timeout(0).expect("event loop");
        let (q1, c1) = self.state();

        for (q, shadow) in [(RX_QUEUE, &rx), (TX_QUEUE, &tx)] {
            let took = q1[q].next_avail.wrapping_sub(q0[q].next_avail);
            let used = q1[q].next_used.wrapping_sub(q0[q].next_used);
            assert!(used <= took, "queue {q}: {used} used for {took} taken");
            if shadow.pending <= SIZE {
                assert!(
                    took <= shadow.pending,
                    "queue {q}: took {took} of {}",
                    shadow.pending
                );
            }
        }
        let tx_took = q1[TX_QUEUE]
            .next_avail
            .wrapping_sub(q0[TX_QUEUE].next_avail);
        let tx_used = q1[TX_QUEUE].next_used.wrapping_sub(q0[TX_QUEUE].next_used);
        for k in 0..tx_used {
            let (_, len) = self
                .driver
                .used_elem(TX_QUEUE, q0[TX_QUEUE].next_used.wrapping_add(k));
            assert_eq!(len, 0, "a TX chain was returned with length {len}");
        }
        let outcomes = (c1.tx_frames - c0.tx_frames)
            + (c1.tx_too_big - c0.tx_too_big)
            + (c1.tx_malformed - c0.tx_malformed)
            + (c1.tx_tap_errors - c0.tx_tap_errors);
        assert!(
            outcomes == u64::from(tx_took) || outcomes == u64::from(tx_took) + 1,
            "{tx_took} TX chains taken, {outcomes} outcomes: {c0:?} -> {c1:?}"
        );

        // What reached the host, against the frames of the chains taken.
        let mut received = Vec::new();
        while let Ok(Some(frame)) = self.world.port.recv_within(std::time::Duration::ZERO) {
            received.push(frame);
        }
        if stable && tx.pending <= SIZE {
            let expected: Vec<&[u8]> = tx
                .chains
                .iter()
                .take(usize::from(tx_took))
                .filter_map(|(_, bytes, _, _)| bytes.as_deref())
                .filter(|b| {
                    (VNET_HDR_LEN + MIN_FRAME_LEN..=VNET_HDR_LEN + MAX_FRAME_LEN).contains(&b.len())
                })
                .map(|b| &b[VNET_HDR_LEN..])
                .collect();
            let mut next = 0;
            for frame in &received {
                let at = expected[next..]
                    .iter()
                    .position(|e| e == frame)
                    .unwrap_or_else(|| {
                        panic!(
                            "the host received a {}-byte frame no TX chain held (in order)",
                            frame.len()
                        )
                    });
                next += at + 1;
            }
        }

        let rx_used = q1[RX_QUEUE].next_used.wrapping_sub(q0[RX_QUEUE].next_used);
        let returnable: Vec<_> = rx.chains.iter().filter(|c| c.0 < SIZE).collect();
        for k in 0..rx_used {
            let (id, len) = self
                .driver
                .used_elem(RX_QUEUE, q0[RX_QUEUE].next_used.wrapping_add(k));
            assert!(
                len == 0 || len as usize >= VNET_HDR_LEN + MIN_FRAME_LEN,
                "RX completion of {len} bytes"
            );
            let Some((head, _, writable, bufs)) = returnable.get(usize::from(k)).copied() else {
                continue;
            };
            if !stable || len == 0 {
                continue;
            }
            assert_eq!(id, u32::from(*head), "RX used element {k}");
            assert!(u64::from(len) <= *writable, "{len} bytes in {writable}");
            let mut hdr = Vec::new();
            for &(start, end) in bufs {
                let n = ((end - start) as usize).min(VNET_HDR_LEN - hdr.len());
                let mut piece = vec![0u8; n];
                self.mem
                    .read_slice(&mut piece, GuestAddress(start))
                    .expect("RX buffer");
                hdr.extend_from_slice(&piece);
                if hdr.len() == VNET_HDR_LEN {
                    break;
                }
            }
            assert_eq!(&hdr[10..12], &[1, 0], "num_buffers of RX completion {k}");
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut world = world().lock().unwrap_or_else(PoisonError::into_inner);
    // Frames left over from an earlier input.
    while let Ok(Some(_)) = world.port.recv_within(std::time::Duration::ZERO) {}
    let mut h = Harness {
        world: &mut world,
        mem: guest_memory(false),
        driver: Driver::new(guest_memory(false)),
        kicks: 0,
    };
    h.activate();
    let mut r = Reader::new(data);
    while h.step(&mut r).is_some() {}
    if h.kicks < MAX_KICKS {
        h.kick(TX_QUEUE);
    }
    h.world.net.lock().expect("lock").reset();
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

    /// A test frame of `payload` (zeroed virtio-net header, test EtherType),
    /// split after `split` bytes (0: one descriptor).
    pub fn frame(&mut self, payload: &[u8], split: u8) -> &mut Self {
        self.w
            .u8(Op::Frame as u8)
            .u8(0)
            .u16(payload.len() as u16)
            .u8(split)
            .bytes(payload);
        self
    }

    /// A frame given whole (its virtio-net header and Ethernet header included).
    pub fn raw_frame(&mut self, bytes: &[u8]) -> &mut Self {
        self.w
            .u8(Op::Frame as u8)
            .u8(3)
            .u16(bytes.len() as u16)
            .u8(0)
            .bytes(bytes);
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

    /// The host sends a test frame.
    pub fn host_send(&mut self, len: u16, seed: u8) -> &mut Self {
        self.w.u8(Op::HostSend as u8).u16(len).u8(seed);
        self
    }

    /// The input.
    pub fn finish(self) -> Vec<u8> {
        self.w.finish()
    }
}
