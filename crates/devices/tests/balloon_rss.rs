//! Inflating the balloon gives memory back to the host: after the guest
//! touches N MiB and inflates them, the process's resident set is about
//! N MiB smaller. A test binary of its own, so no other test's allocations
//! move the figure.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_devices::virtio::balloon::{Balloon, BalloonConfig, INFLATE_QUEUE, QUEUE_SIZE};
use ember_devices::virtio::test_utils::{
    memory, notify_queue, run_until_used, GuestQueue, Manager, Mem,
};
use ember_devices::virtio::{IrqTrigger, VirtioDevice};
use event_manager::SubscriberOps;
use vm_memory::{Bytes, GuestAddress};

const MIB: usize = 1 << 20;
/// Guest memory, and the part inflated (from 16 MiB).
const GUEST_MIB: usize = 64;
const INFLATED_MIB: usize = 32;
const FIRST_PFN: u32 = ((16 * MIB) >> 12) as u32;

/// The process's resident set in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    pages * page
}

/// The guest touches `pages` pages from [`FIRST_PFN`], then puts them in
/// buffers of 256 PFNs on the inflate queue; returns the buffer count.
fn touch_and_queue_pages(mem: &Mem, inflate: &mut GuestQueue, pages: u32) -> u32 {
    let touched = vec![0x5au8; pages as usize * 4096];
    mem.write_slice(&touched, GuestAddress(u64::from(FIRST_PFN) << 12))
        .unwrap();
    drop(touched);
    let buffers = pages / 256;
    for i in 0..buffers {
        let at = 0x1_0000 + u64::from(i) * 1024;
        let pfns: Vec<u8> = (0..256)
            .flat_map(|j| (FIRST_PFN + i * 256 + j).to_le_bytes())
            .collect();
        mem.write_slice(&pfns, GuestAddress(at)).unwrap();
        inflate.add_chain(i as u16, &[(at, 1024, 0)]);
    }
    buffers
}

#[test]
fn inflating_n_mib_lowers_the_rss_by_about_n_mib() {
    let mem = memory(&[(0, GUEST_MIB * MIB)]);
    let balloon = Arc::new(Mutex::new(
        Balloon::new(BalloonConfig {
            amount_mib: INFLATED_MIB as u32,
            ..BalloonConfig::default()
        })
        .unwrap(),
    ));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(balloon.clone());
    let mut inflate = GuestQueue::new(&mem, 0x1000, QUEUE_SIZE);
    let deflate = GuestQueue::new(&mem, 0x4000, QUEUE_SIZE);
    let queues = vec![
        inflate.device_queue(QUEUE_SIZE),
        deflate.device_queue(QUEUE_SIZE),
    ];
    balloon
        .lock()
        .unwrap()
        .activate(
            mem.clone(),
            queues,
            Arc::new(IrqTrigger::new().unwrap()),
            1 << 32,
        )
        .unwrap();

    let pages = ((INFLATED_MIB * MIB) >> 12) as u32;
    let buffers = touch_and_queue_pages(&mem, &mut inflate, pages);
    let before = rss();
    notify_queue(&balloon, INFLATE_QUEUE);
    run_until_used(
        &mut manager,
        &inflate,
        buffers as u16,
        Duration::from_secs(10),
    );
    let after = rss();

    let dropped = before.saturating_sub(after);
    eprintln!(
        "RSS {} MiB -> {} MiB: {:.1} MiB given back for {INFLATED_MIB} MiB inflated",
        before / MIB,
        after / MIB,
        dropped as f64 / MIB as f64
    );
    assert!(dropped >= INFLATED_MIB * MIB * 9 / 10, "dropped {dropped}");
    assert!(dropped <= INFLATED_MIB * MIB * 11 / 10, "dropped {dropped}");
    assert_eq!(
        balloon.lock().unwrap().counters().pages_released,
        u64::from(pages)
    );
}
