//! virtio-net saved and restored through the MMIO transport, on a TAP
//! created again by name (as a new VMM process does): a frame the guest
//! queued before the save is sent once after the restore, and frames flow
//! both ways.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_mmds::Mmds;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_memory::{Bytes, GuestAddress};

use super::host::{in_netns, test_frame, HostPort};
use super::*;
use crate::virtio::test_utils::{bucket, start, through_json, write_reg};
use crate::virtio::{MmioTransport, MmioTransportState};
use crate::Error;

const TAP: &str = "ember-snap";
const WAIT: Duration = Duration::from_secs(5);

/// Queues `frame` (after a zero header) on `txq` at descriptor `index`.
fn queue_frame(mem: &Mem, txq: &mut GuestQueue, index: u16, frame: &[u8]) {
    let at = 0x2_0000 + u64::from(index) * 0x1000;
    mem.write_slice(&ZERO_HDR, GuestAddress(at)).unwrap();
    mem.write_slice(frame, GuestAddress(at + VNET_HDR_LEN as u64))
        .unwrap();
    txq.add_chain(index, &[(at, (VNET_HDR_LEN + frame.len()) as u32, 0)]);
}

/// The net device and transport of a started interface, saved after the
/// guest queued `pending` for transmission.
fn save_with_a_pending_frame(
    mem: &Mem,
    rxq: &mut GuestQueue,
    txq: &mut GuestQueue,
    pending: &[u8],
) -> (MmioTransportState, NetState) {
    let mut config = net_config(TAP);
    config.mtu = Some(1400);
    config.tx_rate_limiter.ops = bucket(1000, 0, 60_000);
    let net = Arc::new(Mutex::new(Net::<Mem>::new(config).unwrap()));
    let port = HostPort::new(TAP);
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(net.clone());
    let mut transport = MmioTransport::new(mem.clone(), net.clone()).unwrap();
    for slot in 0..2u16 {
        rxq.add_chain(slot, &[(0x1_0000 + u64::from(slot) * 0x1000, 2048, WRITE)]);
    }
    assert_eq!(
        start(&mut transport, basic_features(), &[(0, rxq), (1, txq)]),
        0xf
    );
    manager.run_with_timeout(100).unwrap();
    let first = test_frame(60, 1);
    queue_frame(mem, txq, 0, &first);
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, TX_QUEUE as u32);
    run_until_used(&mut manager, txq, 1, WAIT);
    assert_eq!(port.recv().unwrap(), first);
    port.send(&test_frame(80, 2));
    run_until_used(&mut manager, rxq, 1, WAIT);

    queue_frame(mem, txq, 1, pending);
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, TX_QUEUE as u32);
    let saved = (
        through_json(&transport.state()),
        through_json(&net.lock().unwrap().state()),
    );
    assert_eq!(saved.0.queues[TX_QUEUE].next_avail, 1, "not taken yet");
    saved
}

#[test]
fn a_frame_queued_before_the_save_is_sent_once_after_the_restore() {
    in_netns(|| {
        let mem = memory(&[(0, MEM_SIZE)]);
        let mut rxq = GuestQueue::new(&mem, 0x1000, 16);
        let mut txq = GuestQueue::new(&mem, 0x4000, 16);
        let pending = test_frame(70, 3);
        let (transport_state, net_state) =
            save_with_a_pending_frame(&mem, &mut rxq, &mut txq, &pending);
        assert_eq!((net_state.mtu, net_state.mac), (Some(1400), MAC));
        assert_eq!(
            (net_state.counters.tx_frames, net_state.counters.rx_frames),
            (1, 1)
        );

        // The old device is gone with its TAP; a new one is made by name.
        let tap = Tap::open(&net_state.host_dev_name).unwrap();
        let net = Arc::new(Mutex::new(
            Net::<Mem>::restore(&net_state, Box::new(tap), None).unwrap(),
        ));
        let port = HostPort::new(TAP);
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(net.clone());
        let transport = MmioTransport::restore(mem.clone(), net.clone(), &transport_state).unwrap();
        assert_eq!(transport.state(), transport_state);
        let mut restored = net.lock().unwrap().state();
        // The refill clock restarted: the time accrued differs, the levels not.
        let ops = restored.tx_rate_limiter.ops.as_mut().unwrap();
        let saved_ops = net_state.tx_rate_limiter.ops.unwrap();
        assert_eq!(ops.budget, saved_ops.budget);
        ops.pending_refill_ns = saved_ops.pending_refill_ns;
        assert_eq!(restored, net_state);

        run_until_used(&mut manager, &txq, 2, WAIT);
        assert_eq!(port.recv().unwrap(), pending);
        for _ in 0..3 {
            notify_queue(&net, TX_QUEUE);
            manager.run_with_timeout(20).unwrap();
        }
        assert_eq!(port.recv_within(Duration::from_millis(50)).unwrap(), None);
        assert_eq!(txq.used_idx(), 2, "sent once");
        // Receiving goes on into the second buffer posted before the save.
        let incoming = test_frame(100, 4);
        port.send(&incoming);
        run_until_used(&mut manager, &rxq, 2, WAIT);
        let (head, len) = rxq.used_elem(1);
        assert_eq!((head, len as usize), (1, VNET_HDR_LEN + incoming.len()));
        let got = guest_bytes(&mem, 0x1_1000 + VNET_HDR_LEN as u64, incoming.len());
        assert_eq!(got, incoming);
        let counters = net.lock().unwrap().counters();
        assert_eq!((counters.tx_frames, counters.rx_frames), (2, 2));
    });
}

#[test]
fn an_mmds_interface_needs_its_store_on_restore() {
    in_netns(|| {
        let net = Net::<Mem>::new(net_config(TAP)).unwrap();
        let address = std::net::Ipv4Addr::new(169, 254, 169, 254);
        let mut with_mmds = Net::<Mem>::new(net_config("ember-snap2")).unwrap();
        with_mmds.set_mmds(Arc::new(Mutex::new(Mmds::default())), address);
        let state = with_mmds.state();
        assert_eq!(state.mmds_address, Some(address));
        drop(with_mmds);
        let tap = Tap::open("ember-snap2").unwrap();
        let err = Net::<Mem>::restore(&state, Box::new(tap), None).unwrap_err();
        assert!(matches!(err, Error::RestoreMismatch { .. }), "{err}");
        let tap = Tap::open("ember-snap2").unwrap();
        let store = Arc::new(Mutex::new(Mmds::default()));
        let restored = Net::<Mem>::restore(&state, Box::new(tap), Some(store)).unwrap();
        assert_eq!(restored.state().mmds_address, Some(address));
        drop(net);
    });
}
