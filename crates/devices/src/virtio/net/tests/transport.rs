//! The whole virtio-mmio handshake a guest driver performs, then one frame
//! each way, notified through the QueueNotify register.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_DRIVER_OK;
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_DEVICE_FEATURES, VIRTIO_MMIO_DEVICE_FEATURES_SEL, VIRTIO_MMIO_DEVICE_ID,
    VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_INT_VRING,
    VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_STATUS,
};
use virtio_bindings::virtio_net::{VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use vm_memory::{Bytes, GuestAddress};

use super::host::{in_netns, test_frame, HostPort};
use super::*;
use crate::bus::BusDevice;
use crate::virtio::mmio::CONFIG_SPACE_OFFSET;
use crate::virtio::test_utils::{
    add_status, memory, negotiate, read_reg, setup_queue, write_reg, WRITE,
};
use crate::virtio::MmioTransport;

/// What a driver does before it sets up the queues: checks the device ID,
/// accepts the basic features and STATUS, and reads the MAC (byte by byte,
/// as a driver may) and the link status.
fn negotiate_and_read_config(t: &mut MmioTransport<Mem>) {
    assert_eq!(read_reg(t, VIRTIO_MMIO_DEVICE_ID), 1);
    let mut offered = 0u64;
    for sel in 0..2 {
        write_reg(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
        offered |= u64::from(read_reg(t, VIRTIO_MMIO_DEVICE_FEATURES)) << (32 * sel);
    }
    let wanted = basic_features() | feature_bit(VIRTIO_NET_F_STATUS);
    assert_eq!(offered & wanted, wanted);
    assert_eq!(negotiate(t, wanted) & 0x8, 0x8, "FEATURES_OK");
    let mut mac = [0u8; 6];
    for (i, byte) in mac.iter_mut().enumerate() {
        let mut b = [0u8; 1];
        t.read(CONFIG_SPACE_OFFSET + i as u64, &mut b);
        *byte = b[0];
    }
    assert_eq!(mac, MAC);
    let mut status = [0u8; 2];
    t.read(CONFIG_SPACE_OFFSET + 6, &mut status);
    assert_eq!(u32::from(u16::from_le_bytes(status)), VIRTIO_NET_S_LINK_UP);
}

#[test]
fn mmio_handshake_drives_the_net_device() {
    in_netns(|| {
        let mem = memory(&[(0, MEM_SIZE)]);
        let net = Arc::new(Mutex::new(
            Net::<Mem>::new(net_config("ember-mmio")).unwrap(),
        ));
        let port = HostPort::new("ember-mmio");
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(net.clone());
        let mut t = MmioTransport::new(mem.clone(), net.clone()).unwrap();

        negotiate_and_read_config(&mut t);

        let mut rxq = GuestQueue::new(&mem, 0x1000, 8);
        let mut txq = GuestQueue::new(&mem, 0x2000, 8);
        for (index, queue) in [(0, &rxq), (1, &txq)] {
            write_reg(&mut t, VIRTIO_MMIO_QUEUE_SEL, index);
            assert_eq!(read_reg(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
            setup_queue(&mut t, index, queue);
        }
        let rx_buf = 0x1_0000u64;
        rxq.add_chain(0, &[(rx_buf, 2048, WRITE)]);
        add_status(&mut t, VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(read_reg(&mut t, VIRTIO_MMIO_STATUS), 0xf);
        manager.run_with_timeout(100).unwrap();

        // Transmit, notified through the register.
        let frame = test_frame(64, 1);
        let tx_buf = 0x2_0000u64;
        mem.write_slice(&ZERO_HDR, GuestAddress(tx_buf)).unwrap();
        mem.write_slice(&frame, GuestAddress(tx_buf + 12)).unwrap();
        txq.add_chain(0, &[(tx_buf, 76, 0)]);
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        manager.run_with_timeout(1000).unwrap();
        assert_eq!(port.recv().unwrap(), frame);
        assert_eq!(txq.used_elem(0), (0, 0));

        // Receive into the buffer posted before DRIVER_OK.
        let incoming = test_frame(100, 2);
        port.send(&incoming);
        manager.run_with_timeout(1000).unwrap();
        assert_eq!(rxq.used_elem(0), (0, 112));
        let mut got = vec![0u8; 112];
        mem.read_slice(&mut got, GuestAddress(rx_buf)).unwrap();
        assert_eq!(got[..12], RX_HDR);
        assert_eq!(got[12..], incoming[..]);

        assert_eq!(
            read_reg(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_VRING
        );
        assert!(t.interrupt_event().event_fd().read().unwrap() >= 1);
        write_reg(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);

        // The driver resets the device: it stops, frames wait in the TAP.
        write_reg(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert!(!net.lock().unwrap().is_activated());
        port.send(&incoming);
        manager.run_with_timeout(100).unwrap();
        assert_eq!(rxq.used_idx(), 1);
    });
}
