//! The entropy device (virtio-rng): random bytes per second through the
//! device model (a guest queue of 4 KiB buffers, kicked and drained on the
//! event loop as the VMM runs it), against `getrandom` into a host buffer of
//! the same size.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_devices::virtio::rng::{fill_random, Rng, RngConfig};
use ember_devices::virtio::test_utils::{memory, GuestQueue, Mem, WRITE};
use ember_devices::virtio::{feature_bit, MmioTransport};
use event_manager::SubscriberOps;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vmm_sys_util::eventfd::EventFd;

use crate::driver::{driver_init, kick_and_wait, manager, Manager};
use crate::report::Figure;
use crate::stats::{in_turn, median, per_second, Better};
use crate::{Context, Error, Result};

/// The group name in reports.
pub const GROUP: &str = "rng";

/// Bytes per request (one descriptor each).
const REQUEST: u32 = 4096;
/// Requests per batch (one kick): the queue's size.
const BATCH: u16 = 256;
const QUEUE_BASE: u64 = 0x1000;
const BUFFERS: u64 = 0x10_0000;
const MEM_SIZE: usize = 0x20_0000;

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Measured rounds (each: the device, then the baseline, or the reverse).
    pub rounds: usize,
    /// Batches per round.
    pub batches: usize,
}

impl Options {
    /// The options of a full or a quick run.
    pub fn new(quick: bool) -> Options {
        if quick {
            Options {
                rounds: 3,
                batches: 10,
            }
        } else {
            Options {
                rounds: 9,
                batches: 100,
            }
        }
    }
}

/// A guest driving an rng device through one queue.
struct Guest {
    queue: GuestQueue,
    kick: EventFd,
    manager: Manager,
    rng: Arc<Mutex<Rng<Mem>>>,
    // Keeps the device's registers alive, as the VMM's MMIO bus does.
    _transport: MmioTransport<Mem>,
}

impl Guest {
    fn new() -> Result<Guest> {
        let rng = Arc::new(Mutex::new(
            Rng::new(RngConfig::default()).ctx("creating the rng device")?,
        ));
        let mut manager = manager()?;
        manager.add_subscriber(rng.clone());
        let mem = memory(&[(0, MEM_SIZE)]);
        let mut transport =
            MmioTransport::new(mem.clone(), rng.clone()).ctx("creating the MMIO transport")?;
        let queue = GuestQueue::new(&mem, QUEUE_BASE, BATCH);
        let kick = driver_init(&mut transport, feature_bit(VIRTIO_F_VERSION_1), &[&queue])?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Unexpected("no queue eventfd".to_owned()))?;
        for i in 0..BATCH {
            let at = BUFFERS + u64::from(i) * u64::from(REQUEST);
            queue.set_desc(i, (at, REQUEST, WRITE, 0));
        }
        Ok(Guest {
            queue,
            kick,
            manager,
            rng,
            _transport: transport,
        })
    }

    /// Makes every buffer available again, kicks, and waits for all.
    fn batch(&mut self) -> Result<Duration> {
        for i in 0..BATCH {
            self.queue.publish(i);
        }
        let target = self.queue.used_idx().wrapping_add(BATCH);
        kick_and_wait(&mut self.manager, &self.queue, &self.kick, target)
    }
}

fn baseline(host: &mut [u8], batches: usize) -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..batches {
        for chunk in host.chunks_mut(REQUEST as usize) {
            fill_random(chunk).ctx("getrandom")?;
        }
    }
    Ok(start.elapsed())
}

/// Runs the group.
pub fn run(options: Options) -> Result<Vec<Figure>> {
    let mut guest = Guest::new()?;
    let mut host = vec![0u8; usize::from(BATCH) * REQUEST as usize];
    let bytes = options.batches as f64 * f64::from(BATCH) * f64::from(REQUEST);
    let (mut device, mut plain) = (Vec::new(), Vec::new());
    let mut shared = (&mut guest, &mut host);
    for round in 0..options.rounds {
        let (through, direct) = in_turn(
            round,
            &mut shared,
            |(guest, _)| {
                let mut total = Duration::ZERO;
                for _ in 0..options.batches {
                    total += guest.batch()?;
                }
                Ok::<_, Error>(total)
            },
            |(_, host)| baseline(host, options.batches),
        )?;
        device.push(per_second(bytes, through));
        plain.push(per_second(bytes, direct));
    }
    let counters = guest.rng.lock().map(|r| r.counters()).ok();
    if counters.is_none_or(|c| c.invalid_chains + c.host_rng_fails + c.event_errors != 0) {
        return Err(Error::Unexpected(format!(
            "the rng device reports errors: {counters:?}"
        )));
    }
    let mb = |rates: &[f64]| median(rates).unwrap_or(0.0) / 1e6;
    Ok(vec![Figure::new(
        GROUP,
        "random bytes, 4 KiB requests",
        mb(&device),
        "MB/s",
        Better::Higher,
    )
    .baseline("getrandom(2)", mb(&plain))
    .note("256 requests per kick; median of rounds")])
}
