//! virtio-vsock saved and restored through the MMIO transport: the driver
//! gets the transport-reset event on its event queue (its connections are
//! gone), the counters carry over and the host socket takes connections again.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::SubscriberOps;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_INT_VRING, VIRTIO_MMIO_QUEUE_NOTIFY,
};
use vm_memory::{Bytes, GuestAddress};

use super::packet::{Header, Op, HDR_LEN, TYPE_STREAM};
use super::*;
use crate::host_files::BoundListener;
use crate::virtio::test_utils::{
    memory, read_reg, run_until_used, start, through_json, write_reg, GuestQueue, Manager, Mem,
    WRITE,
};
use crate::virtio::{feature_bit, MmioTransport, VirtioDevice};

const CID: u64 = 3;
const WAIT: Duration = Duration::from_secs(5);
const RX_BUFS: u64 = 0x10_0000;
const RX_LEN: u32 = HDR_LEN as u32 + 256;
const EVENT_BUF: u64 = 0x20_0000;

/// The RX packet header in used entry `i` of `rxq`.
fn rx_header(mem: &Mem, rxq: &GuestQueue, i: u16) -> Header {
    let (id, _) = rxq.used_elem(i);
    let mut raw = [0u8; HDR_LEN];
    mem.read_slice(&mut raw, GuestAddress(RX_BUFS + u64::from(id) * 0x1000))
        .unwrap();
    Header::from_bytes(&raw)
}

/// The guest's side of the three queues.
struct Queues {
    rxq: GuestQueue,
    txq: GuestQueue,
    evq: GuestQueue,
}

/// A device on `uds` behind a transport the driver started, with four RX
/// buffers and an event buffer (filled with 0xff) posted, on an event loop.
fn started(
    mem: &Mem,
    uds: &std::path::Path,
) -> (Arc<Mutex<Vsock<Mem>>>, Manager, MmioTransport<Mem>, Queues) {
    let vsock = Vsock::<Mem>::new(VsockConfig {
        guest_cid: CID,
        uds_path: uds.to_path_buf(),
    })
    .unwrap();
    let vsock = Arc::new(Mutex::new(vsock));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(vsock.clone());
    let mut transport = MmioTransport::new(mem.clone(), vsock.clone()).unwrap();
    let mut rxq = GuestQueue::new(mem, 0x1_0000, 8);
    let txq = GuestQueue::new(mem, 0x2_0000, 8);
    let mut evq = GuestQueue::new(mem, 0x3_0000, 4);
    for slot in 0..4u16 {
        rxq.add_chain(slot, &[(RX_BUFS + u64::from(slot) * 0x1000, RX_LEN, WRITE)]);
    }
    mem.write_slice(&[0xff; 8], GuestAddress(EVENT_BUF))
        .unwrap();
    evq.add_chain(0, &[(EVENT_BUF, 8, WRITE)]);
    let queues = [(0, &rxq), (1, &txq), (2, &evq)];
    assert_eq!(
        start(&mut transport, feature_bit(VIRTIO_F_VERSION_1), &queues),
        0xf
    );
    manager.run_with_timeout(50).unwrap();
    (vsock, manager, transport, Queues { rxq, txq, evq })
}

/// Checks that the event queue's one buffer holds
/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (4 bytes, the rest untouched).
fn assert_transport_reset_event(mem: &Mem, evq: &GuestQueue) {
    assert_eq!(evq.used_idx(), 1);
    assert_eq!(evq.used_elem(0), (0, 4));
    let mut event = [0u8; 8];
    mem.read_slice(&mut event, GuestAddress(EVENT_BUF)).unwrap();
    assert_eq!(event, [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
}

#[test]
fn the_driver_learns_its_connections_are_gone_and_the_host_socket_works_again() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let mem = memory(&[(0, 0x40_0000)]);
    let (vsock, mut manager, mut transport, queues) = started(&mem, &uds);
    let Queues { rxq, mut txq, evq } = queues;

    // A guest connection to a host port nobody listens on: refused.
    let request = Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 1000,
        dst_port: 99,
        type_: TYPE_STREAM,
        op: Op::Request as u16,
        buf_alloc: 4096,
        ..Header::default()
    };
    mem.write_slice(&request.to_bytes(), GuestAddress(0x30_0000))
        .unwrap();
    txq.add_chain(0, &[(0x30_0000, HDR_LEN as u32, 0)]);
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, TX_QUEUE as u32);
    run_until_used(&mut manager, &rxq, 1, WAIT);
    assert_eq!(rx_header(&mem, &rxq, 0).op(), Some(Op::Rst));

    let transport_state = through_json(&transport.state());
    let vsock_state = through_json(&vsock.lock().unwrap().state());
    assert_eq!(vsock_state.counters.conns_refused, 1);
    assert_eq!(evq.used_idx(), 0, "no event before the snapshot");
    let interrupts_before = read_reg(&mut transport, VIRTIO_MMIO_INTERRUPT_STATUS);
    drop((transport, manager, vsock));

    let listener = BoundListener::bind(&vsock_state.uds_path).unwrap();
    let vsock = Arc::new(Mutex::new(
        Vsock::<Mem>::restore(&vsock_state, listener).unwrap(),
    ));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(vsock.clone());
    let transport = MmioTransport::restore(mem.clone(), vsock.clone(), &transport_state).unwrap();

    assert_transport_reset_event(&mem, &evq);
    assert!(transport.interrupt_event().event_fd().read().unwrap() >= 1);
    // The transport's state differs from the saved one only by the event:
    // the event queue moved on and the driver was interrupted.
    let mut expected = transport_state.clone();
    expected.queues[EVENT_QUEUE].next_avail += 1;
    expected.queues[EVENT_QUEUE].next_used += 1;
    expected.interrupt_status = interrupts_before | VIRTIO_MMIO_INT_VRING;
    assert_eq!(transport.state(), expected);
    assert_eq!(vsock.lock().unwrap().state(), vsock_state);

    // A host client connects through the socket bound again.
    let mut client = UnixStream::connect(&uds).unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();
    run_until_used(&mut manager, &rxq, 2, WAIT);
    let hdr = rx_header(&mem, &rxq, 1);
    assert_eq!((hdr.op(), hdr.dst_port), (Some(Op::Request), 52));
    assert_eq!(vsock.lock().unwrap().counters().connections, 1);
    assert_eq!(evq.used_idx(), 1, "one event only");
    drop(transport);
}

#[test]
fn without_an_event_buffer_the_reset_is_counted_as_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let mem = memory(&[(0, 0x10_0000)]);
    let config = VsockConfig {
        guest_cid: CID,
        uds_path: uds.clone(),
    };
    let vsock = Arc::new(Mutex::new(Vsock::<Mem>::new(config).unwrap()));
    let mut transport = MmioTransport::new(mem.clone(), vsock.clone()).unwrap();
    let queues: Vec<GuestQueue> = [0x1000, 0x2000, 0x3000]
        .into_iter()
        .map(|base| GuestQueue::new(&mem, base, 4))
        .collect();
    let setup: Vec<(u32, &GuestQueue)> = (0..).zip(&queues).collect();
    start(&mut transport, feature_bit(VIRTIO_F_VERSION_1), &setup);
    let (transport_state, vsock_state) = (transport.state(), vsock.lock().unwrap().state());
    drop((transport, vsock));

    let listener = BoundListener::bind(&uds).unwrap();
    let vsock = Arc::new(Mutex::new(
        Vsock::<Mem>::restore(&vsock_state, listener).unwrap(),
    ));
    MmioTransport::restore(mem.clone(), vsock.clone(), &transport_state).unwrap();
    assert!(vsock.lock().unwrap().is_activated());
    assert_eq!(vsock.lock().unwrap().counters().event_errors, 1);
    assert_eq!(queues[EVENT_QUEUE].used_idx(), 0);
}
