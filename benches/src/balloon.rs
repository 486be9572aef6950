//! The memory balloon (virtio-balloon): inflating and deflating 64 MiB of a
//! 128 MiB guest region through the device model (PFN buffers in a real
//! inflate or deflate queue, kicked and drained on the event loop as the
//! VMM runs it), timed from the kick to the last used buffer, with this
//! process's resident memory before and after.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_devices::virtio::balloon::{
    Balloon, BalloonConfig, DEFLATE_QUEUE, INFLATE_QUEUE, MAX_PFNS_PER_BUFFER,
};
use ember_devices::virtio::test_utils::{memory, GuestQueue, Mem};
use ember_devices::virtio::{feature_bit, MmioTransport};
use event_manager::SubscriberOps;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::driver::{driver_init, guest_error, kick_and_wait, manager, Manager};
use crate::report::Figure;
use crate::stats::{median, millis, Better};
use crate::{procfs, Context, Error, Result};

/// The group name in reports.
pub const GROUP: &str = "balloon";

const PAGE: usize = 4096;
/// The guest region.
const MEM_SIZE: usize = 128 << 20;
/// The part inflated: the region's upper half.
const BALLOON: usize = 64 << 20;
/// Buffers of [`MAX_PFNS_PER_BUFFER`] PFNs (1 MiB each) for the balloon.
const BUFFERS: u16 = 64;
const _: () = assert!(BUFFERS as usize * MAX_PFNS_PER_BUFFER * PAGE == BALLOON);
/// Bytes of one PFN buffer.
const BUFFER_LEN: u32 = 1024;
const _: () = assert!(BUFFER_LEN as usize == MAX_PFNS_PER_BUFFER * 4);
const QUEUE_SIZE: u16 = 256;
const QUEUE_BASES: [u64; 2] = [0x1000, 0x4000];
/// The PFN arrays, one page each.
const PFN_AREA: u64 = 0x10_0000;

/// A guest driving a balloon through its inflate and deflate queues.
struct Guest {
    mem: Mem,
    queues: [GuestQueue; 2],
    kicks: Vec<EventFd>,
    manager: Manager,
    balloon: Arc<Mutex<Balloon<Mem>>>,
    // Keeps the device's registers alive, as the VMM's MMIO bus does.
    _transport: MmioTransport<Mem>,
}

impl Guest {
    fn new() -> Result<Guest> {
        let balloon = Arc::new(Mutex::new(
            Balloon::new(BalloonConfig::default())
                .map_err(|e| Error::Unexpected(format!("creating the balloon: {e}")))?,
        ));
        let mut manager = manager()?;
        manager.add_subscriber(balloon.clone());
        let mem = memory(&[(0, MEM_SIZE)]);
        let mut transport =
            MmioTransport::new(mem.clone(), balloon.clone()).ctx("creating the MMIO transport")?;
        let queues = QUEUE_BASES.map(|base| GuestQueue::new(&mem, base, QUEUE_SIZE));
        let kicks = driver_init(
            &mut transport,
            feature_bit(VIRTIO_F_VERSION_1),
            &[&queues[0], &queues[1]],
        )?;
        // Buffer i names the 256 pages from the balloon's start + i MiB.
        let first = (MEM_SIZE - BALLOON) / PAGE;
        for i in 0..BUFFERS {
            let at = pfn_buffer(i);
            let pfns: Vec<u8> = (0..MAX_PFNS_PER_BUFFER)
                .flat_map(|p| {
                    let pfn = first + usize::from(i) * MAX_PFNS_PER_BUFFER + p;
                    u32::try_from(pfn).unwrap_or(u32::MAX).to_le_bytes()
                })
                .collect();
            mem.write_slice(&pfns, GuestAddress(at))
                .map_err(guest_error)?;
            for queue in &queues {
                queue.set_desc(i, (at, BUFFER_LEN, 0, 0));
            }
        }
        Ok(Guest {
            mem,
            queues,
            kicks,
            manager,
            balloon,
            _transport: transport,
        })
    }

    /// Writes every page of the region (as a guest using its memory does).
    fn touch(&self) -> Result<()> {
        let page = [0x5au8; PAGE];
        let mut at = pfn_buffer(BUFFERS);
        while self.mem.write_slice(&page, GuestAddress(at)).is_ok() {
            at += page.len() as u64;
        }
        Ok(())
    }

    /// Makes every PFN buffer available on `queue`, kicks, waits for all.
    fn batch(&mut self, queue: usize) -> Result<Duration> {
        let q = &mut self.queues[queue];
        for i in 0..BUFFERS {
            q.publish(i);
        }
        let target = q.used_idx().wrapping_add(BUFFERS);
        kick_and_wait(&mut self.manager, q, &self.kicks[queue], target)
    }
}

/// Where PFN buffer `i` lies (one page each).
fn pfn_buffer(i: u16) -> u64 {
    PFN_AREA + u64::from(i) * 4096
}

fn rss_mib() -> Result<f64> {
    Ok(procfs::memory(std::process::id())?.rss_kib as f64 / 1024.0)
}

/// Runs the group: `rounds` of touch, inflate, deflate.
pub fn run(rounds: usize) -> Result<Vec<Figure>> {
    let mut guest = Guest::new()?;
    let (mut inflate, mut deflate) = (Vec::new(), Vec::new());
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        guest.touch()?;
        before.push(rss_mib()?);
        inflate.push(guest.batch(INFLATE_QUEUE)?);
        after.push(rss_mib()?);
        deflate.push(guest.batch(DEFLATE_QUEUE)?);
    }
    let counters = guest.balloon.lock().map(|b| b.counters()).ok();
    let released = ((BALLOON / PAGE) * rounds) as u64;
    if counters.is_none_or(|c| c.pages_released != released || c.event_fails != 0) {
        return Err(Error::Unexpected(format!(
            "the balloon did not release every page: {counters:?}"
        )));
    }
    let mid = |v: &[f64]| median(v).unwrap_or(0.0);
    let note = "64 buffers of 256 PFNs in one kick; 128 MiB region, all touched first";
    Ok(vec![
        Figure::new(
            GROUP,
            "inflate 64 MiB",
            mid(&millis(&inflate)),
            "ms",
            Better::Lower,
        )
        .note(note),
        Figure::new(
            GROUP,
            "deflate 64 MiB",
            mid(&millis(&deflate)),
            "ms",
            Better::Lower,
        )
        .note("deflated pages need no host call: the guest faults them back in"),
        Figure::new(
            GROUP,
            "RSS after inflating 64 MiB",
            mid(&after),
            "MiB",
            Better::Lower,
        )
        .baseline("RSS before", mid(&before))
        .note("this process's VmRSS; the drop is the 64 MiB given back"),
    ])
}
