//! virtio-balloon driven the way a guest drives it: PFN lists and the
//! statistics buffer in real virtqueues in guest memory, notifications
//! through the event loop. Includes a hostile guest and one that never
//! answers statistics requests.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::SubscriberOps;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::test_utils::{
    assert_features, memory, notify_queue, run_until_used, Areas, GuestQueue, Manager, Mem, WRITE,
};
use crate::virtio::{feature_bit, IrqTrigger, VirtioDevice};

/// RAM: 1 MiB at 0, a gap, 1 MiB at 2 MiB.
const RAM: [(u64, usize); 2] = [(0, 0x10_0000), (0x20_0000, 0x10_0000)];
const QUEUE_BASES: [u64; 3] = [0x1000, 0x4000, 0x7000];
/// Buffers are allocated upwards from here.
const AREA_START: u64 = 0x1_0000;
/// Pages the tests inflate lie from here (below: queues and buffers).
const FREE_PFN: u32 = 0x80;
const WAIT: Duration = Duration::from_secs(5);

/// A balloon on an event loop, with the guest side of its queues.
struct Harness {
    mem: Mem,
    queues: Vec<GuestQueue>,
    balloon: Arc<Mutex<Balloon<Mem>>>,
    manager: Manager,
    irq: Arc<IrqTrigger>,
    next_desc: [u16; 3],
    areas: Areas,
}

impl Harness {
    /// An active device set up with `config`.
    fn new(config: BalloonConfig) -> Harness {
        Harness::with_memory(config, memory(&RAM))
    }

    fn with_memory(config: BalloonConfig, mem: Mem) -> Harness {
        let balloon = Arc::new(Mutex::new(Balloon::new(config).unwrap()));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(balloon.clone());
        let count = balloon.lock().unwrap().queue_max_sizes().len();
        let queues: Vec<GuestQueue> = QUEUE_BASES[..count]
            .iter()
            .map(|&base| GuestQueue::new(&mem, base, QUEUE_SIZE))
            .collect();
        let irq = Arc::new(IrqTrigger::new().unwrap());
        let device_queues = queues.iter().map(|q| q.device_queue(QUEUE_SIZE)).collect();
        let features = balloon.lock().unwrap().avail_features();
        balloon
            .lock()
            .unwrap()
            .activate(mem.clone(), device_queues, irq.clone(), features)
            .unwrap();
        Harness {
            mem,
            queues,
            balloon,
            manager,
            irq,
            next_desc: [0; 3],
            areas: Areas::new(AREA_START),
        }
    }

    fn counters(&self) -> BalloonCounters {
        self.balloon.lock().unwrap().counters()
    }

    /// Puts `descs` (address, length, flags) as one chain on `queue`.
    fn chain(&mut self, queue: usize, descs: &[(u64, u32, u16)]) {
        let first = self.next_desc[queue];
        self.next_desc[queue] = (first + descs.len() as u16) % QUEUE_SIZE;
        self.queues[queue].add_chain(first, descs);
    }

    /// Puts `pfns` in one buffer on `queue`.
    fn pfn_buffer(&mut self, queue: usize, pfns: &[u32]) {
        let len = (pfns.len() * 4) as u32;
        let at = self.areas.take(len);
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        self.chain(queue, &[(at, len, 0)]);
    }

    /// Notifies `queue` and runs the loop until it has used `n` in all.
    fn run(&mut self, queue: usize, n: u16) {
        notify_queue(&self.balloon, queue);
        run_until_used(&mut self.manager, &self.queues[queue], n, WAIT);
    }

    fn page_byte(&self, pfn: u32) -> u8 {
        self.mem
            .read_obj(GuestAddress(u64::from(pfn) << 12))
            .unwrap()
    }

    fn fill_page(&self, pfn: u32, byte: u8) {
        self.mem
            .write_slice(&[byte; 4096], GuestAddress(u64::from(pfn) << 12))
            .unwrap();
    }
}

fn config(amount_mib: u32, stats_polling_interval_s: u16) -> BalloonConfig {
    BalloonConfig {
        amount_mib,
        deflate_on_oom: false,
        stats_polling_interval_s,
        free_page_hinting: false,
        free_page_reporting: false,
    }
}

fn stat(tag: u16, value: u64) -> Vec<u8> {
    let mut e = tag.to_le_bytes().to_vec();
    e.extend_from_slice(&value.to_le_bytes());
    e
}

#[test]
fn features_queues_and_config_space_follow_the_config() {
    let plain: Balloon<Mem> = Balloon::new(config(1, 0)).unwrap();
    assert_eq!(plain.device_type(), 5);
    assert_eq!(plain.queue_max_sizes(), [QUEUE_SIZE; 2]);
    assert_eq!(plain.avail_features(), feature_bit(VIRTIO_F_VERSION_1));
    let mut bytes = [0u8; 12];
    plain.read_config(0, &mut bytes);
    assert_eq!(
        bytes,
        [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        "1 MiB is 256 pages; no hinting run"
    );

    let full: Balloon<Mem> = Balloon::new(BalloonConfig {
        amount_mib: 0,
        deflate_on_oom: true,
        stats_polling_interval_s: 1,
        free_page_hinting: true,
        free_page_reporting: true,
    })
    .unwrap();
    assert_eq!(full.queue_max_sizes().len(), 5);
    assert_features(
        full.avail_features(),
        &[
            VIRTIO_F_VERSION_1,
            VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
            VIRTIO_BALLOON_F_STATS_VQ,
            VIRTIO_BALLOON_F_FREE_PAGE_HINT,
            VIRTIO_BALLOON_F_FREE_PAGE_REPORTING,
        ],
    );
    let err = Balloon::<Mem>::new(config(u32::MAX / 256 + 1, 0)).unwrap_err();
    assert!(
        matches!(err, BalloonError::TooMuchMemoryRequested(_)),
        "{err}"
    );
}

#[test]
fn the_driver_writes_actual_only() {
    let mut b: Balloon<Mem> = Balloon::new(config(2, 0)).unwrap();
    b.write_config(4, &300u32.to_le_bytes());
    b.write_config(0, &[9, 9, 9, 9]);
    b.write_config(6, &[1, 1, 1, 1]);
    b.write_config(u64::MAX, &[1]);
    let mut bytes = [0u8; 8];
    b.read_config(0, &mut bytes);
    assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()), 512);
    assert_eq!(
        u32::from_le_bytes(bytes[4..].try_into().unwrap()),
        300 | 0x0101_0000
    );
}

#[test]
fn a_new_target_interrupts_the_driver_and_is_bounded_by_memory() {
    let inactive: Balloon<Mem> = Balloon::new(config(0, 0)).unwrap();
    let mut inactive = inactive;
    assert!(matches!(
        inactive.update_size(1),
        Err(BalloonError::DeviceNotActive)
    ));
    let h = Harness::new(config(0, 0));
    let mut b = h.balloon.lock().unwrap();
    let generation = b.config_generation();
    b.update_size(2).unwrap();
    assert_eq!(
        h.irq.status() & VIRTIO_MMIO_INT_CONFIG,
        VIRTIO_MMIO_INT_CONFIG
    );
    assert_ne!(b.config_generation(), generation);
    assert_eq!(b.config().amount_mib, 2);
    let err = b.update_size(3).unwrap_err();
    assert!(
        matches!(err, BalloonError::TooMuchMemoryRequested(3)),
        "{err}"
    );
    assert_eq!(b.config().amount_mib, 2, "unchanged");
}

#[test]
fn inflated_pages_are_zeroed_and_deflated_pages_counted() {
    let mut h = Harness::new(config(0, 0));
    for pfn in FREE_PFN..FREE_PFN + 8 {
        h.fill_page(pfn, 0x5a);
    }
    let pfns: Vec<u32> = (FREE_PFN..FREE_PFN + 4).chain([FREE_PFN + 6]).collect();
    h.pfn_buffer(INFLATE_QUEUE, &pfns);
    h.run(INFLATE_QUEUE, 1);
    for pfn in FREE_PFN..FREE_PFN + 8 {
        let inflated = pfns.contains(&pfn);
        assert_eq!(
            h.page_byte(pfn),
            if inflated { 0 } else { 0x5a },
            "pfn {pfn:#x}"
        );
    }
    let c = h.counters();
    assert_eq!((c.inflate_count, c.pages_released), (1, 5));
    assert_eq!(h.queues[INFLATE_QUEUE].used_elem(0), (0, 0));

    h.pfn_buffer(DEFLATE_QUEUE, &pfns);
    h.run(DEFLATE_QUEUE, 1);
    let c = h.counters();
    assert_eq!(
        (c.deflate_count, c.event_fails, c.malformed_buffers),
        (1, 0, 0)
    );
    h.fill_page(FREE_PFN, 1);
    assert_eq!(h.page_byte(FREE_PFN), 1, "a deflated page is usable again");
}

#[test]
fn hostile_pfn_lists_never_reach_outside_guest_ram() {
    let mut h = Harness::new(config(0, 0));
    let second = (RAM[1].0 >> 12) as u32;
    h.fill_page(second, 0x77);
    h.fill_page(second + 1, 0x77);
    // Duplicates, pages in the gap, past the end, and the last page of the
    // first region followed by the gap and the second region's first page.
    let first_end = (RAM[0].1 >> 12) as u32;
    let hostile = [
        second,
        second,
        second,
        u32::MAX,
        u32::MAX - 1,
        first_end,
        first_end + 1,
        0x40_0000,
        first_end - 1,
    ];
    h.fill_page(first_end - 1, 0x77);
    h.pfn_buffer(INFLATE_QUEUE, &hostile);
    // A buffer longer than allowed, one the device would write, one outside
    // memory, and one of odd length.
    let big = h.areas.take(8192);
    h.chain(INFLATE_QUEUE, &[(big, 8192, 0)]);
    h.chain(INFLATE_QUEUE, &[(big, 8, WRITE)]);
    h.chain(INFLATE_QUEUE, &[(0x1000_0000, 8, 0)]);
    h.chain(INFLATE_QUEUE, &[(big, 7, 0)]);
    h.run(INFLATE_QUEUE, 5);
    assert_eq!(h.page_byte(second), 0);
    assert_eq!(h.page_byte(first_end - 1), 0);
    assert_eq!(h.page_byte(second + 1), 0x77, "not named");
    let c = h.counters();
    assert_eq!(c.pages_released, 2);
    assert_eq!(c.pages_outside, 5);
    assert_eq!(c.malformed_buffers, 4);
    assert_eq!(c.inflate_count, 1);
}

#[test]
fn an_avail_index_far_ahead_is_bounded() {
    let mut h = Harness::new(config(0, 0));
    h.pfn_buffer(INFLATE_QUEUE, &[FREE_PFN]);
    // The guest claims 40000 buffers in a 256-entry queue.
    h.queues[INFLATE_QUEUE].set_avail_idx(40_000);
    notify_queue(&h.balloon, INFLATE_QUEUE);
    for _ in 0..10 {
        h.manager.run_with_timeout(10).unwrap();
    }
    assert!(h.counters().inflate_count <= 1);
    let b = h.balloon.lock().unwrap();
    assert!(b.is_activated());
}

#[test]
fn statistics_round_trip_at_each_tick() {
    let mut h = Harness::new(config(0, 1));
    let buf = h.areas.take(40);
    let mut bytes = stat(4, 1 << 20);
    bytes.extend(stat(5, 4 << 20));
    bytes.extend(stat(99, 1));
    bytes.extend(stat(15, 7));
    h.mem.write_slice(&bytes, GuestAddress(buf)).unwrap();
    h.chain(STATS_QUEUE, &[(buf, 40, 0)]);
    notify_queue(&h.balloon, STATS_QUEUE);
    h.manager.run_with_timeout(100).unwrap();
    let stats = h.balloon.lock().unwrap().latest_stats().unwrap();
    let reported: Vec<_> = stats.reported().collect();
    assert_eq!(
        reported,
        [
            ("free_memory", 1 << 20),
            ("total_memory", 4 << 20),
            ("direct_reclaim", 7)
        ]
    );
    assert_eq!(h.queues[STATS_QUEUE].used_idx(), 0, "the buffer is held");
    // At the tick the buffer goes back for the driver to refill.
    run_until_used(&mut h.manager, &h.queues[STATS_QUEUE], 1, WAIT);
    assert_eq!(h.queues[STATS_QUEUE].used_elem(0), (0, 0));
    assert_eq!(h.counters().stats_updates_count, 1);
}

#[test]
fn a_guest_that_never_answers_statistics_is_harmless() {
    let mut h = Harness::new(config(0, 1));
    let start = std::time::Instant::now();
    while h.counters().stats_update_fails == 0 {
        assert!(start.elapsed() < WAIT, "no tick");
        h.manager.run_with_timeout(100).unwrap();
    }
    let b = h.balloon.lock().unwrap();
    assert_eq!(h.queues[STATS_QUEUE].used_idx(), 0);
    let stats = b.latest_stats().unwrap();
    assert_eq!(stats.reported().count(), 0);
}

#[test]
fn the_polling_interval_changes_but_never_from_or_to_zero() {
    let h = Harness::new(config(0, 5));
    let mut b = h.balloon.lock().unwrap();
    b.update_stats_interval(2).unwrap();
    assert_eq!(b.config().stats_polling_interval_s, 2);
    let err = b.update_stats_interval(0).unwrap_err();
    assert!(matches!(err, BalloonError::StatisticsStateChange), "{err}");
    drop(b);
    let mut off: Balloon<Mem> = Balloon::new(config(0, 0)).unwrap();
    assert!(matches!(
        off.update_stats_interval(1),
        Err(BalloonError::StatisticsStateChange)
    ));
    assert!(matches!(
        off.latest_stats(),
        Err(BalloonError::StatisticsDisabled)
    ));
    off.update_stats_interval(0).unwrap();
}

#[test]
fn a_driver_without_statistics_leaves_the_queue_off() {
    let mem = memory(&RAM);
    let b = Arc::new(Mutex::new(Balloon::<Mem>::new(config(0, 1)).unwrap()));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(b.clone());
    let mut queues: Vec<_> = QUEUE_BASES[..2]
        .iter()
        .map(|&base| GuestQueue::new(&mem, base, QUEUE_SIZE).device_queue(QUEUE_SIZE))
        .collect();
    queues.push(Queue::new(QUEUE_SIZE).unwrap());
    let irq = Arc::new(IrqTrigger::new().unwrap());
    let features = feature_bit(VIRTIO_F_VERSION_1);
    b.lock()
        .unwrap()
        .activate(mem.clone(), queues, irq, features)
        .unwrap();
    notify_queue(&b, STATS_QUEUE);
    // Past the 1 s interval: a polling timer would have ticked (and
    // counted a failure, with no buffer).
    let until = std::time::Instant::now() + Duration::from_millis(1300);
    while std::time::Instant::now() < until {
        manager.run_with_timeout(100).unwrap();
    }
    let c = b.lock().unwrap().counters();
    assert_eq!(
        (c.stats_updates_count, c.stats_update_fails),
        (0, 0),
        "no timer"
    );
}

#[test]
fn notifications_before_activation_are_ignored_and_reset_stops_the_device() {
    let mut b: Balloon<Mem> = Balloon::new(config(0, 0)).unwrap();
    let err = b
        .activate(
            memory(&RAM),
            vec![],
            Arc::new(IrqTrigger::new().unwrap()),
            0,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            crate::Error::Activation(crate::virtio::ActivationError::QueueNotReady(0))
        ),
        "{err}"
    );
    assert_eq!(b.counters().activate_fails, 1);
    let h = Harness::new(config(0, 1));
    let mut b = h.balloon.lock().unwrap();
    b.reset();
    assert!(!b.is_activated());
    assert!(b.queue_states().is_empty());
    assert!(matches!(
        b.update_size(1),
        Err(BalloonError::DeviceNotActive)
    ));
}

#[test]
fn only_the_event_loop_arms_and_disarms_the_polling_timer() {
    // Activation and reset run on vCPU threads, whose seccomp filter has
    // no timer calls: the event loop arms the timer after activation and
    // disarms it after a reset.
    let mut h = Harness::new(config(0, 1));
    assert_eq!(h.balloon.lock().unwrap().timer_period(), None);
    h.manager.run_with_timeout(100).unwrap();
    assert_eq!(
        h.balloon.lock().unwrap().timer_period(),
        Some(Duration::from_secs(1))
    );
    h.balloon.lock().unwrap().reset();
    assert!(h.balloon.lock().unwrap().timer_period().is_some());
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    while h.balloon.lock().unwrap().timer_period().is_some() {
        assert!(std::time::Instant::now() < until, "still armed");
        h.manager.run_with_timeout(100).unwrap();
    }
}

#[test]
fn reported_free_pages_go_back_whole_and_bounded() {
    let mut h = Harness::new(BalloonConfig {
        free_page_reporting: true,
        ..config(0, 0)
    });
    // Without statistics the reporting queue is queue 2.
    let reporting = 2;
    for pfn in FREE_PFN..FREE_PFN + 6 {
        h.fill_page(pfn, 0x66);
    }
    let at = |pfn: u32| u64::from(pfn) << 12;
    // Two whole pages; a range starting mid-page covering one whole page and
    // half of the next; a range across the end of RAM; one far outside.
    let second_end = RAM[1].0 + RAM[1].1 as u64;
    h.chain(
        reporting,
        &[
            (at(FREE_PFN), 0x2000, WRITE),
            (at(FREE_PFN + 2) + 0x800, 0x1800, WRITE),
            (second_end - 0x1000, 0x3000, WRITE),
            (1 << 40, 0x7fff_f000, WRITE),
        ],
    );
    h.run(reporting, 1);
    let zeroed: Vec<bool> = (FREE_PFN..FREE_PFN + 6)
        .map(|pfn| h.page_byte(pfn) == 0)
        .collect();
    assert_eq!(zeroed, [true, true, false, true, false, false]);
    let c = h.counters();
    assert_eq!(c.free_page_report_count, 1);
    assert_eq!(c.free_page_report_freed, 4 * 4096);
    assert_eq!(c.free_page_report_fails, 0);
    assert_eq!(c.pages_outside, 2 + 0x7_ffff);
    assert_eq!(c.inflate_count, 0, "reports are not inflations");
}

fn hinting_config() -> BalloonConfig {
    BalloonConfig {
        free_page_hinting: true,
        ..config(0, 0)
    }
}

/// The command id the configuration space shows.
fn config_cmd_id(b: &Balloon<Mem>) -> u32 {
    let mut bytes = [0u8; 4];
    b.read_config(8, &mut bytes);
    u32::from_le_bytes(bytes)
}

impl Harness {
    /// A readable le32 command for the hinting queue: its descriptor.
    fn command(&mut self, cmd: u32) -> (u64, u32, u16) {
        let at = self.areas.take(4);
        self.mem.write_obj(cmd.to_le(), GuestAddress(at)).unwrap();
        (at, 4, 0)
    }
}

/// The hinting run's host and guest commands.
fn hinting_commands(h: &Harness) -> (u32, Option<u32>) {
    let status = h.balloon.lock().unwrap().hinting_status().unwrap();
    (status.host_cmd, status.guest_cmd)
}

#[test]
fn a_hinting_run_gives_back_hinted_pages_and_ends_when_the_driver_stops() {
    let mut h = Harness::new(hinting_config());
    // Without statistics the hinting queue is queue 2.
    let hinting = 2;
    let at = |pfn: u32| u64::from(pfn) << 12;
    for pfn in FREE_PFN..FREE_PFN + 4 {
        h.fill_page(pfn, 0x44);
    }
    // A hint before any run is ignored.
    h.chain(hinting, &[(at(FREE_PFN), 0x1000, WRITE)]);
    h.run(hinting, 1);
    assert_eq!(h.page_byte(FREE_PFN), 0x44);

    h.balloon.lock().unwrap().start_hinting(true).unwrap();
    assert_eq!(
        h.irq.status() & VIRTIO_MMIO_INT_CONFIG,
        VIRTIO_MMIO_INT_CONFIG
    );
    assert_eq!(config_cmd_id(&h.balloon.lock().unwrap()), 2);
    // A hint for an older run, then the driver's answer with two hints
    // (one far outside guest memory).
    let old = h.command(7);
    h.chain(hinting, &[old, (at(FREE_PFN + 3), 0x1000, WRITE)]);
    let start = h.command(2);
    h.chain(
        hinting,
        &[
            start,
            (at(FREE_PFN), 0x2000, WRITE),
            (1 << 40, 0x7fff_f000, WRITE),
        ],
    );
    h.run(hinting, 3);
    let zeroed: Vec<bool> = (FREE_PFN..FREE_PFN + 4)
        .map(|pfn| h.page_byte(pfn) == 0)
        .collect();
    assert_eq!(zeroed, [true, true, false, false]);
    let c = h.counters();
    assert_eq!(
        (c.free_page_hint_count, c.free_page_hint_freed),
        (2, 0x2000)
    );
    assert_eq!((c.pages_outside, c.free_page_hint_fails), (0x7_ffff, 0));
    assert_eq!(hinting_commands(&h), (2, Some(2)));

    // STOP (with a hint after it, ignored) ends the run: DONE.
    let stop = h.command(FREE_PAGE_HINT_STOP);
    h.chain(hinting, &[stop, (at(FREE_PFN + 2), 0x1000, WRITE)]);
    h.run(hinting, 4);
    assert_eq!(h.page_byte(FREE_PFN + 2), 0x44);
    let done = (FREE_PAGE_HINT_DONE, Some(FREE_PAGE_HINT_STOP));
    assert_eq!(hinting_commands(&h), done);
    let b = h.balloon.lock().unwrap();
    assert_eq!(config_cmd_id(&b), FREE_PAGE_HINT_DONE);
    assert_eq!(b.counters().free_page_hint_count, 2);
}

#[test]
fn hostile_hinting_commands_are_counted_and_harmless() {
    let mut h = Harness::new(hinting_config());
    let hinting = 2;
    h.balloon.lock().unwrap().start_hinting(true).unwrap();
    let start = h.command(2);
    // A short command, a command outside memory, a long one.
    h.chain(hinting, &[(start.0, 3, 0)]);
    h.chain(hinting, &[(1 << 40, 4, 0)]);
    h.chain(hinting, &[(start.0, 8, 0)]);
    h.run(hinting, 3);
    let b = h.balloon.lock().unwrap();
    assert_eq!(b.counters().malformed_buffers, 3);
    assert_eq!(b.hinting_status().unwrap().guest_cmd, None);
    assert_eq!(b.counters().event_fails, 0);
}

#[test]
fn hinting_requests_follow_firecracker() {
    let mut plain: Balloon<Mem> = Balloon::new(config(0, 0)).unwrap();
    for err in [
        plain.start_hinting(true).unwrap_err(),
        plain.stop_hinting().unwrap_err(),
        plain.hinting_status().unwrap_err(),
    ] {
        assert!(matches!(err, BalloonError::HintingNotEnabled), "{err}");
    }
    let mut inactive: Balloon<Mem> = Balloon::new(hinting_config()).unwrap();
    assert!(matches!(
        inactive.start_hinting(true),
        Err(BalloonError::DeviceNotActive)
    ));
    assert_eq!(inactive.hinting_status().unwrap(), HintingStatus::default());

    // Without acknowledgement the run goes on after STOP, until the host
    // stops it; a reset forgets the run.
    let mut h = Harness::new(hinting_config());
    h.balloon.lock().unwrap().start_hinting(false).unwrap();
    let start = h.command(2);
    let stop = h.command(FREE_PAGE_HINT_STOP);
    h.chain(2, &[start, stop]);
    h.run(2, 1);
    let mut b = h.balloon.lock().unwrap();
    assert_eq!(b.hinting_status().unwrap().host_cmd, 2);
    b.stop_hinting().unwrap();
    assert_eq!(b.hinting_status().unwrap().host_cmd, FREE_PAGE_HINT_DONE);
    b.start_hinting(true).unwrap();
    assert_eq!(b.hinting_status().unwrap().host_cmd, 3, "a fresh id");
    assert_eq!(b.state().hinting.last_run_id, 3);
    b.reset();
    assert_eq!(b.hinting_status().unwrap(), HintingStatus::default());
    assert_eq!(config_cmd_id(&b), FREE_PAGE_HINT_STOP);
}
