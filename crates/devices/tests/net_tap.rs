//! virtio-net through the public API only, wired the way a VMM wires it:
//! a [`Net`] on an event loop, behind an [`MmioTransport`], driven by the
//! guest-side helpers of the `test-utils` feature, with a real TAP whose
//! other side is an `AF_PACKET` socket.
//!
//! Network namespaces: each test body runs on a new thread that first calls
//! `unshare(CLONE_NEWNET)` (see `host::in_netns`, shared with the unit
//! tests). Namespaces belong to threads, so the TAP interfaces and sockets
//! the test creates live in a private namespace that disappears with the
//! thread; the host's interfaces are never touched. The tests need root (or
//! `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`) and `/dev/net/tun`.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

#[path = "../src/virtio/net/tests/host.rs"]
mod host;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_devices::bus::BusDevice;
use ember_devices::virtio::mmio::{CONFIG_SPACE_OFFSET, QUEUE_NOTIFY_OFFSET};
use ember_devices::virtio::net::{
    Net, NetConfig, RateLimiterUpdate, Tap, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN,
};
use ember_devices::virtio::test_utils::{
    add_status, memory, negotiate, read_reg, setup_queue, GuestQueue, Mem, WRITE,
};
use ember_devices::virtio::{MmioTransport, VirtioDevice};
use ember_ratelimit::{BucketConfig, BucketUpdate};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use host::{in_netns, test_frame, HostPort};
use vm_memory::{Bytes, GuestAddress};

type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

const MAC: [u8; 6] = [0x06, 0x00, 0x00, 0x00, 0x00, 0x42];
const VERSION_1: u64 = 1 << 32;
const F_MAC: u64 = 1 << 5;
const DRIVER_OK: u32 = 4;
const MMIO_DEVICE_ID: u32 = 0x008;
const MMIO_STATUS: u32 = 0x070;

/// A VMM's view: the device on its loop, the transport on the "bus", and the
/// guest's queues in guest memory.
struct Vm {
    mem: Mem,
    manager: Manager,
    net: Arc<Mutex<Net<Mem>>>,
    transport: MmioTransport<Mem>,
    rxq: GuestQueue,
    txq: GuestQueue,
    port: HostPort,
}

impl Vm {
    fn new(tap: &str, configure: impl FnOnce(&mut NetConfig)) -> Vm {
        let mut config = NetConfig {
            iface_id: "net0".to_owned(),
            host_dev_name: tap.to_owned(),
            guest_mac: Some(MAC),
            ..NetConfig::default()
        };
        configure(&mut config);
        let mem = memory(&[(0, 0x20_0000)]);
        let net = Arc::new(Mutex::new(Net::new(config).unwrap()));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(net.clone());
        let transport = MmioTransport::new(mem.clone(), net.clone()).unwrap();
        let port = HostPort::new(tap);
        Vm {
            rxq: GuestQueue::new(&mem, 0x1000, 16),
            txq: GuestQueue::new(&mem, 0x2000, 16),
            mem,
            manager,
            net,
            transport,
            port,
        }
    }

    /// The driver's initialisation, up to DRIVER_OK.
    fn boot(&mut self) {
        assert_eq!(read_reg(&mut self.transport, MMIO_DEVICE_ID), 1);
        assert_eq!(negotiate(&mut self.transport, VERSION_1 | F_MAC) & 8, 8);
        setup_queue(&mut self.transport, RX_QUEUE as u32, &self.rxq);
        setup_queue(&mut self.transport, TX_QUEUE as u32, &self.txq);
        add_status(&mut self.transport, DRIVER_OK);
        assert_eq!(read_reg(&mut self.transport, MMIO_STATUS), 0xf);
        self.manager.run_with_timeout(100).unwrap();
    }

    /// A write to QueueNotify, as KVM's ioeventfd would turn it into an
    /// eventfd signal.
    fn notify(&mut self, queue: usize) {
        let value = (queue as u32).to_le_bytes();
        self.transport.write(QUEUE_NOTIFY_OFFSET, &value);
    }

    fn run_until(&mut self, mut done: impl FnMut(&Vm) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out");
            self.manager.run_with_timeout(50).unwrap();
        }
    }
}

#[test]
fn a_vmm_wires_the_device_and_frames_flow_both_ways() {
    in_netns(|| {
        let mut vm = Vm::new("ember-vmm0", |_| {});
        let mut mac = [0u8; 6];
        vm.transport.read(CONFIG_SPACE_OFFSET, &mut mac);
        assert_eq!(mac, MAC);
        vm.boot();

        // Guest to host: 16 frames, header and frame in one buffer each.
        for i in 0..16u16 {
            let frame = test_frame(60 + usize::from(i), i as u8);
            let at = 0x1_0000 + 0x800 * u64::from(i);
            vm.mem
                .write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(at))
                .unwrap();
            vm.mem.write_slice(&frame, GuestAddress(at + 12)).unwrap();
            vm.txq.add_chain(i, &[(at, 12 + frame.len() as u32, 0)]);
        }
        vm.notify(TX_QUEUE);
        vm.run_until(|vm| vm.txq.used_idx() == 16);
        for i in 0..16u16 {
            assert_eq!(
                vm.port.recv().unwrap(),
                test_frame(60 + usize::from(i), i as u8)
            );
        }

        // Host to guest: buffers first, then frames.
        for i in 0..16u16 {
            vm.rxq
                .add_chain(i, &[(0x10_0000 + 0x800 * u64::from(i), 0x800, WRITE)]);
        }
        vm.notify(RX_QUEUE);
        for i in 0..16u8 {
            vm.port.send(&test_frame(100, i));
        }
        vm.run_until(|vm| vm.rxq.used_idx() == 16);
        for i in 0..16u16 {
            let (head, len) = vm.rxq.used_elem(i);
            assert_eq!((head, len), (u32::from(i), 112));
            let mut got = vec![0u8; 112];
            vm.mem
                .read_slice(&mut got, GuestAddress(0x10_0000 + 0x800 * u64::from(i)))
                .unwrap();
            assert_eq!(got[10..12], [1, 0], "num_buffers");
            assert_eq!(got[12..], test_frame(100, i as u8)[..]);
        }

        let counters = vm.net.lock().unwrap().counters();
        assert_eq!((counters.tx_frames, counters.rx_frames), (16, 16));
        let state = vm.net.lock().unwrap().state();
        assert_eq!(state.host_dev_name, "ember-vmm0");
        assert_eq!(state.mac, MAC);

        // The guest resets the device: it stops, and can start over.
        vm.transport.write(u64::from(MMIO_STATUS), &[0, 0, 0, 0]);
        assert!(!vm.net.lock().unwrap().is_activated());
    });
}

#[test]
fn rate_limits_can_be_changed_while_running() {
    in_netns(|| {
        let mut vm = Vm::new("ember-vmm1", |c| {
            c.tx_rate_limiter.ops = Some(BucketConfig {
                size: 2,
                one_time_burst: 0,
                refill_time_ms: 60_000,
            });
        });
        vm.boot();
        for i in 0..6u16 {
            let at = 0x1_0000 + 0x100 * u64::from(i);
            let frame = test_frame(60, i as u8);
            vm.mem
                .write_slice(&[&[0u8; 12][..], &frame[..]].concat(), GuestAddress(at))
                .unwrap();
            vm.txq.add_chain(i, &[(at, 72, 0)]);
        }
        vm.notify(TX_QUEUE);
        vm.run_until(|vm| vm.txq.used_idx() == 2);
        vm.manager.run_with_timeout(100).unwrap();
        assert_eq!(vm.txq.used_idx(), 2, "held back for a minute");
        vm.net.lock().unwrap().update_rate_limiters(
            RateLimiterUpdate::KEEP,
            RateLimiterUpdate {
                bandwidth: BucketUpdate::Keep,
                ops: BucketUpdate::Disable,
            },
        );
        vm.run_until(|vm| vm.txq.used_idx() == 6);
        for i in 0..6u8 {
            assert_eq!(vm.port.recv().unwrap(), test_frame(60, i));
        }
        assert!(vm.net.lock().unwrap().counters().tx_throttled >= 1);
    });
}

#[test]
fn tap_errors_name_the_interface() {
    in_netns(|| {
        let err = Net::<Mem>::new(NetConfig {
            host_dev_name: "this-name-is-too-long".to_owned(),
            ..NetConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("this-name-is-too-long"), "{err}");
        let tap = Tap::open("ember-pub").unwrap();
        assert_eq!(tap.if_name(), "ember-pub");
        tap.set_vnet_hdr_size(VNET_HDR_LEN as i32).unwrap();
        assert_eq!(tap.vnet_hdr_size().unwrap(), 12);
        // An interface attached to one device cannot be attached again.
        let err = Net::<Mem>::new(NetConfig {
            host_dev_name: "ember-pub".to_owned(),
            ..NetConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("ember-pub"), "{err}");
    });
}
