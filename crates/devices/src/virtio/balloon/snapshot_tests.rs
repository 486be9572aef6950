//! The balloon saved and restored through the MMIO transport: target,
//! actual size, statistics, the statistics buffer the device holds,
//! configuration generation and counters carry over, and inflating goes on.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::SubscriberOps;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::bus::BusDevice;
use crate::virtio::mmio::CONFIG_SPACE_OFFSET;
use crate::virtio::test_utils::{
    memory, run_until_used, start, through_json, write_reg, GuestQueue, Manager, Mem,
};
use crate::virtio::{feature_bit, MmioTransport, MmioTransportState};

const WAIT: Duration = Duration::from_secs(5);
/// Tag of the free-memory statistic.
const FREE_MEMORY: u16 = 4;

/// Inflates the page at `pfn` with descriptor `head`, whose 4-byte buffer
/// is at `at`, and waits until the device has used `head + 1` entries.
fn inflate(
    mem: &Mem,
    transport: &mut MmioTransport<Mem>,
    manager: &mut Manager,
    queue: &mut GuestQueue,
    (head, pfn, at): (u16, u32, u64),
) {
    mem.write_slice(&pfn.to_le_bytes(), GuestAddress(at))
        .unwrap();
    queue.add_chain(head, &[(at, 4, 0)]);
    write_reg(transport, VIRTIO_MMIO_QUEUE_NOTIFY, INFLATE_QUEUE as u32);
    run_until_used(manager, queue, head + 1, WAIT);
}

/// A device on its event loop behind its transport.
type Running = (Arc<Mutex<Balloon<Mem>>>, Manager, MmioTransport<Mem>);

/// A balloon of 1 MiB with statistics every minute, started by the driver
/// with its three queues at 0x1000, 0x4000 and 0x7000.
fn started(mem: &Mem) -> (Running, Vec<GuestQueue>) {
    let config = BalloonConfig {
        amount_mib: 1,
        deflate_on_oom: true,
        stats_polling_interval_s: 60,
        free_page_reporting: false,
        free_page_hinting: false,
    };
    let balloon = Arc::new(Mutex::new(Balloon::<Mem>::new(config).unwrap()));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(balloon.clone());
    let mut transport = MmioTransport::new(mem.clone(), balloon.clone()).unwrap();
    let queues: Vec<GuestQueue> = [0x1000, 0x4000, 0x7000]
        .into_iter()
        .map(|base| GuestQueue::new(mem, base, 16))
        .collect();
    let features = feature_bit(VIRTIO_F_VERSION_1)
        | feature_bit(VIRTIO_BALLOON_F_STATS_VQ)
        | feature_bit(VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
    let setup: Vec<(u32, &GuestQueue)> = (0..).zip(&queues).collect();
    assert_eq!(start(&mut transport, features, &setup), 0xf);
    manager.run_with_timeout(50).unwrap();
    ((balloon, manager, transport), queues)
}

/// Checks the state saved after the target went to 2 MiB, the driver
/// reported 256 pages and its free memory, and kept a statistics buffer.
fn assert_saved(state: &BalloonState) {
    assert_eq!(state.config.amount_mib, 2);
    assert_eq!(state.stats.actual_pages, 256);
    assert_eq!(state.stats.values[usize::from(FREE_MEMORY)], Some(12_345));
    assert_eq!(state.stats_desc, Some(0));
    assert_eq!(state.config_generation, 1);
}

/// The balloon and its transport rebuilt from their states, which they
/// give back unchanged, on a new event loop.
fn restored(
    mem: &Mem,
    transport_state: &MmioTransportState,
    balloon_state: &BalloonState,
) -> Running {
    let balloon = Arc::new(Mutex::new(Balloon::<Mem>::restore(balloon_state).unwrap()));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(balloon.clone());
    let transport = MmioTransport::restore(mem.clone(), balloon.clone(), transport_state).unwrap();
    assert_eq!(&transport.state(), transport_state);
    assert_eq!(&balloon.lock().unwrap().state(), balloon_state);
    (balloon, manager, transport)
}

#[test]
fn the_balloon_carries_on_after_a_restore() {
    let mem = memory(&[(0, 0x40_0000)]);
    let ((balloon, mut manager, mut transport), mut queues) = started(&mem);

    // The host raises the target; the driver reports 256 pages and its
    // statistics, and inflates one page.
    balloon.lock().unwrap().update_size(2).unwrap();
    transport.write(CONFIG_SPACE_OFFSET + 4, &256u32.to_le_bytes());
    let mut entry = FREE_MEMORY.to_le_bytes().to_vec();
    entry.extend(12_345u64.to_le_bytes());
    mem.write_slice(&entry, GuestAddress(0x2_0000)).unwrap();
    queues[STATS_QUEUE].add_chain(0, &[(0x2_0000, 10, 0)]);
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, STATS_QUEUE as u32);
    let inflate_queue = &mut queues[INFLATE_QUEUE];
    inflate(
        &mem,
        &mut transport,
        &mut manager,
        inflate_queue,
        (0, 0x100, 0x3_0000),
    );
    while balloon.lock().unwrap().counters().stats_updates_count == 0 {
        manager.run_with_timeout(50).unwrap();
    }

    let transport_state = through_json(&transport.state());
    let balloon_state = through_json(&balloon.lock().unwrap().state());
    assert_saved(&balloon_state);
    drop((transport, manager, balloon));

    let (balloon, mut manager, mut transport) = restored(&mem, &transport_state, &balloon_state);
    let mut target = [0u8; 8];
    transport.read(CONFIG_SPACE_OFFSET, &mut target);
    assert_eq!(
        target,
        [0, 2, 0, 0, 0, 1, 0, 0],
        "num_pages 512, actual 256"
    );
    manager.run_with_timeout(50).unwrap();

    // Inflating goes on where the ring was.
    let inflate_queue = &mut queues[INFLATE_QUEUE];
    inflate(
        &mem,
        &mut transport,
        &mut manager,
        inflate_queue,
        (1, 0x101, 0x3_0100),
    );
    assert_eq!(queues[INFLATE_QUEUE].used_elem(1), (1, 0));
    assert_eq!(balloon.lock().unwrap().counters().inflate_count, 2);
    // The statistics buffer held across the snapshot goes back to the
    // driver when the host asks for statistics (on the event loop's next
    // turn: never from the API's thread, so never while the VM is paused).
    balloon.lock().unwrap().update_stats_interval(30).unwrap();
    assert_eq!(queues[STATS_QUEUE].used_idx(), 0);
    run_until_used(&mut manager, &queues[STATS_QUEUE], 1, WAIT);
    assert_eq!(queues[STATS_QUEUE].used_elem(0), (0, 0));
    let stats = balloon.lock().unwrap().latest_stats().unwrap();
    assert_eq!(stats.values[usize::from(FREE_MEMORY)], Some(12_345));
}
