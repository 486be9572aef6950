//! A device on a backend other than a TAP: a datagram socket pair, so no
//! network namespace (nor root) is needed.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use virtio_bindings::virtio_net::VIRTIO_NET_F_STATUS;

use super::host::test_frame;
use super::*;

/// One end of a datagram socket pair: one frame per datagram, no offloads.
#[derive(Debug)]
struct SocketBackend(UnixDatagram);

impl AsRawFd for SocketBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl NetBackend for SocketBackend {
    fn name(&self) -> &str {
        "socket-pair"
    }
    fn set_vnet_hdr_size(&self, size: i32) -> io::Result<()> {
        assert_eq!(size, VNET_HDR_LEN as i32);
        Ok(())
    }
    fn set_offload(&self, flags: u32) -> io::Result<()> {
        match flags {
            0 => Ok(()),
            _ => Err(io::ErrorKind::Unsupported.into()),
        }
    }
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf)
    }
}

/// A harness-like set-up on a socket pair: the device, its event loop, the
/// guest's queues and the host end of the pair.
struct OnSocket {
    mem: Mem,
    rxq: GuestQueue,
    txq: GuestQueue,
    net: Arc<Mutex<Net<Mem>>>,
    manager: Manager,
    host: UnixDatagram,
}

fn on_socket() -> OnSocket {
    let (device_end, host) = UnixDatagram::pair().unwrap();
    device_end.set_nonblocking(true).unwrap();
    let backend = Box::new(SocketBackend(device_end));
    let net = Arc::new(Mutex::new(
        Net::with_backend(net_config("unused"), backend).unwrap(),
    ));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(net.clone());
    let mem = memory(&[(0, MEM_SIZE)]);
    let (rxq, txq) = (
        GuestQueue::new(&mem, RX_BASE, QUEUE_SIZE),
        GuestQueue::new(&mem, TX_BASE, QUEUE_SIZE),
    );
    let queues = vec![rxq.device_queue(QUEUE_SIZE), txq.device_queue(QUEUE_SIZE)];
    let irq = Arc::new(IrqTrigger::new().unwrap());
    net.lock()
        .unwrap()
        .activate(mem.clone(), queues, irq, basic_features())
        .unwrap();
    manager.run_with_timeout(1000).unwrap();
    OnSocket {
        mem,
        rxq,
        txq,
        net,
        manager,
        host,
    }
}

#[test]
fn frames_cross_a_socket_pair_backend_both_ways() {
    let mut s = on_socket();
    let mut areas = Areas::new(AREA_START);

    let frame = test_frame(60, 1);
    let at = areas.take(72);
    s.mem.write_slice(&ZERO_HDR, GuestAddress(at)).unwrap();
    s.mem.write_slice(&frame, GuestAddress(at + 12)).unwrap();
    s.txq.add_chain(0, &[(at, 72, 0)]);
    notify_queue(&s.net, TX_QUEUE);
    run_until_used(&mut s.manager, &s.txq, 1, Duration::from_secs(5));
    let mut sent = [0u8; 128];
    let n = s.host.recv(&mut sent).unwrap();
    assert_eq!(sent[..n], [&ZERO_HDR[..], &frame[..]].concat());

    let reply = test_frame(80, 2);
    let buf = areas.take(256);
    s.rxq.add_chain(0, &[(buf, 256, WRITE)]);
    s.host.send(&[&ZERO_HDR[..], &reply[..]].concat()).unwrap();
    notify_queue(&s.net, RX_QUEUE);
    run_until_used(&mut s.manager, &s.rxq, 1, Duration::from_secs(5));
    assert_eq!(s.rxq.used_elem(0), (0, 92));
    let bytes = guest_bytes(&s.mem, buf, 92);
    assert_eq!(bytes[..VNET_HDR_LEN], RX_HDR);
    assert_eq!(bytes[VNET_HDR_LEN..], reply[..]);
}

#[test]
fn a_backend_is_named_in_the_state_and_offers_only_its_offloads() {
    let s = on_socket();
    let net = s.net.lock().unwrap();
    assert_eq!(net.backend().name(), "socket-pair");
    let state = net.state();
    assert_eq!(state.host_dev_name, "socket-pair");
    assert_eq!(state.tap_offloads_supported, 0);
    assert_eq!(
        net.avail_features() & !basic_features(),
        feature_bit(VIRTIO_NET_F_STATUS) | feature_bit(VIRTIO_RING_F_EVENT_IDX)
    );
}
