//! virtio-block saved and restored through the MMIO transport, as a VMM
//! snapshots a paused VM: a request the guest queued before the save is
//! completed exactly once after the restore; a disk that changed size is
//! refused.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::SubscriberOps;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::test_utils::{
    bucket, memory, run_until_used, start, through_json, write_reg, GuestQueue, Manager, Mem, WRITE,
};
use crate::virtio::{feature_bit, MmioTransport, MmioTransportState, VirtioDevice};
use crate::Error;

const QUEUE_BASE: u64 = 0x1000;
const FEATURES: u64 = feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_RING_F_EVENT_IDX);

/// Queues a one-sector request of `kind` at sector 1 with descriptors
/// `first..first + 3` and buffers from `base`; returns the data and status
/// addresses.
fn queue_request(mem: &Mem, gq: &mut GuestQueue, first: u16, kind: u32, base: u64) -> (u64, u64) {
    let (hdr, data, status) = (base, base + 0x100, base + 0x400);
    mem.write_obj(kind.to_le(), GuestAddress(hdr)).unwrap();
    mem.write_obj(1u64.to_le(), GuestAddress(hdr + 8)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
    let data_flags = if kind == VIRTIO_BLK_T_IN { WRITE } else { 0 };
    gq.add_chain(
        first,
        &[(hdr, 16, 0), (data, 512, data_flags), (status, 1, WRITE)],
    );
    (data, status)
}

/// A block device on `file` behind a transport the driver started, on an
/// event loop.
fn started(mem: &Mem, file: &tempfile::NamedTempFile, gq: &GuestQueue) -> Setup {
    let config = BlockConfig {
        drive_id: "rootfs".to_owned(),
        path: file.path().to_path_buf(),
        cache_type: CacheType::Writeback,
        ops: bucket(100, 10, 60_000),
        ..BlockConfig::default()
    };
    let block = Arc::new(Mutex::new(Block::new(config).unwrap()));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(block.clone());
    let mut transport = MmioTransport::new(mem.clone(), block.clone()).unwrap();
    assert_eq!(start(&mut transport, FEATURES, &[(0, gq)]), 0xf);
    Setup {
        block,
        transport,
        manager,
    }
}

struct Setup {
    block: Arc<Mutex<Block<Mem>>>,
    transport: MmioTransport<Mem>,
    manager: Manager,
}

fn disk(len: usize) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&vec![0u8; len]).unwrap();
    file
}

/// The device and its transport rebuilt from their states (the backing
/// file reopened), which they give back unchanged but for the rate
/// limiter's refill clock, on a new event loop.
fn restored(mem: &Mem, block_state: &BlockState, transport_state: &MmioTransportState) -> Setup {
    let reopened = open_disk(&block_state.path, block_state.read_only).unwrap();
    let block = Arc::new(Mutex::new(
        Block::<Mem>::restore(block_state, reopened).unwrap(),
    ));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(block.clone());
    let transport = MmioTransport::restore(mem.clone(), block.clone(), transport_state).unwrap();
    assert_eq!(&transport.state(), transport_state);
    let mut restored = block.lock().unwrap().state();
    // The refill clock restarted: the time accrued differs, the levels not.
    let ops = restored.rate_limiter.ops.as_mut().unwrap();
    let saved_ops = block_state.rate_limiter.ops.unwrap();
    assert_eq!((ops.budget, ops.burst), (saved_ops.budget, saved_ops.burst));
    ops.pending_refill_ns = saved_ops.pending_refill_ns;
    assert_eq!(&restored, block_state);
    Setup {
        block,
        transport,
        manager,
    }
}

#[test]
fn a_request_queued_before_the_save_completes_once_after_the_restore() {
    let mem = memory(&[(0, 0x10_0000)]);
    let file = disk(8 * 512);
    let mut gq = GuestQueue::new(&mem, QUEUE_BASE, 64);
    let mut live = started(&mem, &file, &gq);

    // A write the device completes before the snapshot.
    queue_request(&mem, &mut gq, 0, VIRTIO_BLK_T_OUT, 0x2_0000);
    mem.write_slice(&[0x5a; 512], GuestAddress(0x2_0100))
        .unwrap();
    write_reg(&mut live.transport, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    run_until_used(&mut live.manager, &gq, 1, Duration::from_secs(5));
    // A read the guest queues and notifies; the VM is paused before the
    // event loop gets to it.
    let (data, status) = queue_request(&mem, &mut gq, 3, VIRTIO_BLK_T_IN, 0x3_0000);
    write_reg(&mut live.transport, VIRTIO_MMIO_QUEUE_NOTIFY, 0);

    let transport_state = through_json(&live.transport.state());
    let block_state = through_json(&live.block.lock().unwrap().state());
    let q0 = transport_state.queues[0];
    assert_eq!(
        (q0.next_avail, q0.next_used),
        (1, 1),
        "the read is not taken"
    );
    assert_eq!(block_state.counters.writes, 1);
    drop(live);

    let Setup {
        block,
        transport: _transport,
        mut manager,
    } = restored(&mem, &block_state, &transport_state);
    let saved_ops = block_state.rate_limiter.ops.unwrap();

    run_until_used(&mut manager, &gq, 2, Duration::from_secs(5));
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(status)).unwrap(),
        VIRTIO_BLK_S_OK as u8
    );
    let mut read = [0u8; 512];
    mem.read_slice(&mut read, GuestAddress(data)).unwrap();
    assert_eq!(read, [0x5a; 512]);
    assert_eq!(gq.used_elem(1), (3, 513));
    // Spurious wake-ups find nothing more: the request is not done twice.
    for _ in 0..3 {
        block.lock().unwrap().queue_events()[0].write(1).unwrap();
        manager.run_with_timeout(50).unwrap();
    }
    assert_eq!(gq.used_idx(), 2);
    let counters = block.lock().unwrap().counters();
    assert_eq!(
        (counters.requests, counters.reads, counters.writes),
        (2, 1, 1)
    );
    let ops = block.lock().unwrap().state().rate_limiter.ops.unwrap();
    assert_eq!(
        ops.burst,
        saved_ops.burst - 1,
        "the restored one-time burst pays for the read"
    );
}

#[test]
fn a_disk_that_changed_size_is_refused() {
    let mem = memory(&[(0, 0x10_0000)]);
    let file = disk(8 * 512);
    let gq = GuestQueue::new(&mem, QUEUE_BASE, 64);
    let live = started(&mem, &file, &gq);
    let state = live.block.lock().unwrap().state();
    drop(live);
    file.as_file().set_len(16 * 512).unwrap();
    let reopened = open_disk(&state.path, state.read_only).unwrap();
    let err = Block::<Mem>::restore(&state, reopened).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Block(super::Error::DiskSizeChanged {
                saved: 8,
                found: 16,
                ..
            })
        ),
        "{err}"
    );
    let mut read_only = state.clone();
    read_only.read_only = true;
    file.as_file().set_len(8 * 512).unwrap();
    let reopened = open_disk(&state.path, true).unwrap();
    let err = Block::<Mem>::restore(&read_only, reopened).unwrap_err();
    assert!(matches!(err, Error::RestoreMismatch { .. }), "{err}");
}
