//! The balloon end to end on KVM: a test guest's driver inflates to the
//! target the VMM sets (at build, and while it runs), deflates, and reports
//! statistics the VMM reads back.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

use common::{run_vm_with, Capture, Guest, Run, GUEST_DEADLINE};
use ember_test_guests::{ELF64_PATH, PVH_PATH};
use ember_vmm::{build, BalloonConfig, RunningVm};

fn balloon(amount_mib: u32, stats_polling_interval_s: u16) -> BalloonConfig {
    BalloonConfig {
        amount_mib,
        deflate_on_oom: true,
        stats_polling_interval_s,
        free_page_hinting: false,
        free_page_reporting: false,
    }
}

/// Boots `guest` with `config`, calling `hook` while it runs.
fn run(guest: Guest, config: BalloonConfig, hook: impl FnMut(&RunningVm, &str)) -> Run {
    let capture = Capture::default();
    let mut vm_config = guest.config(&capture);
    vm_config.balloon = Some(config);
    let vm = build(vm_config).expect("the VM builds");
    let watched = capture.clone();
    let mut hook = hook;
    run_vm_with(vm, &capture, GUEST_DEADLINE, move |vm| {
        hook(vm, &watched.text());
    })
}

#[test]
fn the_guest_inflates_to_the_target_and_deflates() {
    let run = run(
        Guest::new(ELF64_PATH, "balloon-inflate"),
        balloon(4, 0),
        |_, _| {},
    );
    run.assert_clean_reset();
    let field = |key| run.field("balloon-inflate ", key);
    assert_eq!(
        field("num_pages").as_deref(),
        Some("0x400"),
        "{}",
        run.output
    );
    assert_eq!(field("inflated").as_deref(), Some("0x400"));
    assert_eq!(field("actual").as_deref(), Some("0x400"));
    assert_eq!(
        field("zeroed").as_deref(),
        Some("0x1"),
        "the host took the pages"
    );
    assert_eq!(
        field("features_lo").as_deref(),
        Some("0x4"),
        "DEFLATE_ON_OOM offered, no statistics"
    );
    assert_eq!(
        run.field("balloon-deflate", "deflated").as_deref(),
        Some("0x400")
    );
    assert_eq!(
        run.field("balloon-deflate", "actual").as_deref(),
        Some("0x0")
    );
    assert_eq!(
        run.field("balloon-deflate", "usable").as_deref(),
        Some("0x1")
    );
    assert_eq!(run.metric("balloon", "inflate_count"), 4);
    assert_eq!(run.metric("balloon", "deflate_count"), 4);
    assert_eq!(run.metric("balloon", "pages_released"), 1024);
    assert_eq!(run.metric("balloon", "pages_outside"), 0);
    assert_eq!(run.metric("balloon", "event_fails"), 0);
}

#[test]
fn a_new_target_reaches_the_running_guest() {
    let mut updated = None;
    let run = run(
        Guest::new(PVH_PATH, "balloon-follow"),
        balloon(0, 0),
        |vm, output| {
            if updated.is_none() && output.contains("balloon-follow: waiting") {
                let device = vm.balloon().unwrap();
                let mut device = device.lock().unwrap();
                let too_big = device.update_size(129).is_err();
                updated = Some((too_big, device.update_size(2).is_ok()));
            }
        },
    );
    run.assert_clean_reset();
    assert_eq!(updated, Some((true, true)), "{}", run.output);
    assert_eq!(
        run.field("balloon-follow ", "inflated").as_deref(),
        Some("0x200"),
        "{}",
        run.output
    );
    assert_eq!(run.metric("balloon", "pages_released"), 512);
}

#[test]
fn the_guest_reports_statistics_and_gets_its_buffer_back() {
    let mut seen = None;
    let run = run(
        Guest::new(ELF64_PATH, "balloon-stats"),
        balloon(1, 1),
        |vm, output| {
            if seen.is_none() && output.contains("balloon-stats: posted") {
                let stats = vm
                    .balloon()
                    .unwrap()
                    .lock()
                    .unwrap()
                    .latest_stats()
                    .unwrap();
                if stats.reported().count() > 0 {
                    seen = Some(stats.reported().collect::<Vec<_>>());
                }
            }
        },
    );
    run.assert_clean_reset();
    assert_eq!(
        seen,
        Some(vec![
            ("free_memory", 0x100_0000),
            ("total_memory", 0x800_0000)
        ])
    );
    assert_eq!(
        run.field("balloon-stats ", "returned").as_deref(),
        Some("0x1"),
        "{}",
        run.output
    );
    assert_eq!(run.metric("balloon", "stats_updates_count"), 1);
}
