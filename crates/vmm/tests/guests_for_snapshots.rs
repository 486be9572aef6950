//! Whole-VM tests of the test-guest scenarios meant for snapshot tests, run
//! on today's VMM (no snapshot taken): `ticks` (LAPIC timer interrupts with a
//! monotonic TSC and kvmclock), `smp` (every vCPU started with INIT-SIPI-SIPI
//! counts; a vCPU left out starts later on a serial byte) and `snapcount` (a
//! count in a known guest page, and pattern pages verified and dirtied on
//! request).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;

use common::{complete_lines, hex, run_vm_with, value_of, Capture, Guest, Run, GUEST_DEADLINE};
use ember_test_guests::{BZIMAGE_PATH, ELF64_PATH, PVH_PATH};
use ember_vmm::{build, ExitReason, RunningVm, SerialInput};
use vm_memory::{Bytes, GuestAddress};

/// Boots `guest` and calls `step` with the output so far (and the running
/// VM) until it returns true; then stops the VM. The deadline still applies.
fn run_until(guest: Guest, mut step: impl FnMut(&str, &RunningVm) -> bool) -> Run {
    let capture = Capture::default();
    let vm = build(guest.config(&capture)).unwrap();
    let mut stopped = false;
    let run = run_vm_with(vm, &capture, GUEST_DEADLINE, |running| {
        if !stopped && step(&capture.text(), running) {
            running.stop_handle().unwrap().stop().unwrap();
            stopped = true;
        }
    });
    assert!(
        matches!(run.result, Ok(ExitReason::Stopped)) && stopped,
        "exit {:?}; output:\n{}",
        run.result,
        run.output
    );
    run
}

/// The values of `key` on every complete line starting with `prefix`, in order.
fn values(output: &str, prefix: &str, key: &str) -> Vec<u64> {
    complete_lines(output)
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| value_of(l, key))
        .map(|v| hex(&v))
        .collect()
}

fn assert_increasing(numbers: &[u64], what: &str, output: &str) {
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "{what} not increasing: {numbers:?}\n{output}"
    );
}

/// Runs `ticks` to its 6th line and checks ticks, TSC and kvmclock grow.
fn check_ticks(kernel: &'static str) {
    let run = Guest::new(kernel, "ticks")
        .args("ticks.lines=6 ticks.every=5")
        .run();
    run.assert_clean_reset();
    assert!(!run.output.contains("backwards"), "{}", run.output);
    assert!(!run.output.contains("unexpected"), "{}", run.output);
    assert_eq!(
        run.field("ticks: running", "vector").as_deref(),
        Some("0x40")
    );
    let ticks = values(&run.output, "tick=", "tick");
    assert_eq!(ticks.len(), 6, "{}", run.output);
    assert!(ticks[0] >= 5, "{}", run.output);
    assert_increasing(&ticks, "ticks", &run.output);
    assert_increasing(&values(&run.output, "tick=", "tsc"), "tsc", &run.output);
    let clock = values(&run.output, "tick=", "clock");
    if run.field("ticks: running", "kvmclock").as_deref() == Some("0x1") {
        assert_eq!(clock.len(), 6, "{}", run.output);
        assert_increasing(&clock, "kvmclock", &run.output);
    } else {
        assert!(clock.is_empty(), "{}", run.output);
    }
}

#[test]
fn ticks_elf64_keeps_ticking_with_monotonic_time() {
    check_ticks(ELF64_PATH);
}

#[test]
fn ticks_pvh_keeps_ticking_with_monotonic_time() {
    check_ticks(PVH_PATH);
}

#[test]
fn ticks_bzimage_keeps_ticking_with_monotonic_time() {
    check_ticks(BZIMAGE_PATH);
}

/// The counts CPU `cpu` printed (`cpuN=0x..` lines).
fn cpu_counts(output: &str, cpu: u32) -> Vec<u64> {
    let prefix = format!("cpu{cpu}=");
    complete_lines(output)
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(hex)
        .collect()
}

fn counted_twice(output: &str, cpus: u32) -> bool {
    (0..cpus).all(|cpu| cpu_counts(output, cpu).len() >= 2)
}

fn check_all_count(kernel: &'static str, vcpus: u8) {
    let cpus = u32::from(vcpus);
    let run = run_until(
        Guest::new(kernel, "smp")
            .vcpus(vcpus)
            .args("smp.every=20000"),
        |output, _| counted_twice(output, cpus),
    );
    assert_eq!(
        run.field("smp: cpus", "cpus"),
        Some(format!("{cpus:#x}")),
        "{}",
        run.output
    );
    assert_eq!(
        run.field("smp: started", "started"),
        Some(format!("{cpus:#x}")),
        "{}",
        run.output
    );
    let mut apics: Vec<u64> = values(&run.output, "cpu", "apic");
    apics.sort_unstable();
    apics.dedup();
    assert_eq!(
        apics.len(),
        usize::from(vcpus),
        "distinct APIC ids\n{}",
        run.output
    );
    for cpu in 0..cpus {
        assert_increasing(&cpu_counts(&run.output, cpu), "count", &run.output);
    }
    assert!(!run.output.contains("timeout"), "{}", run.output);
}

#[test]
fn smp_two_vcpus_all_count() {
    check_all_count(ELF64_PATH, 2);
}

#[test]
fn smp_four_vcpus_all_count() {
    check_all_count(PVH_PATH, 4);
}

#[test]
fn smp_vcpu_left_out_starts_on_a_serial_byte() {
    let (mut host, guest_end) = UnixStream::pair().unwrap();
    let mut sent_at = None;
    let run = run_until(
        Guest::new(ELF64_PATH, "smp")
            .vcpus(3)
            .args("smp.start=1 smp.every=20000")
            .input(SerialInput::Reader(Box::new(guest_end))),
        |output, _| {
            if sent_at.is_none() && cpu_counts(output, 1).len() >= 3 {
                assert!(cpu_counts(output, 2).is_empty(), "{output}");
                host.write_all(b"s").unwrap();
                sent_at = Some(output.len());
            }
            sent_at.is_some() && counted_twice(output, 3)
        },
    );
    let sent_at = sent_at.unwrap();
    let (before, after) = run.output.split_at(sent_at);
    assert_eq!(
        run.field("smp: started", "started").as_deref(),
        Some("0x2"),
        "{}",
        run.output
    );
    assert!(!before.contains("cpu2"), "{}", run.output);
    assert!(after.contains("smp: started=0x3"), "{}", run.output);
    assert!(after.contains("cpu2: online"), "{}", run.output);
    // cpu0 and cpu1 kept counting meanwhile.
    assert!(!cpu_counts(after, 1).is_empty(), "{}", run.output);
}

/// The pattern qword the guest writes at `addr` for generation `gen`.
fn pattern(addr: u64, gen: u64) -> u64 {
    (addr ^ (gen << 48))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(gen)
}

fn read_u64(running: &RunningVm, addr: u64) -> u64 {
    running
        .memory()
        .unwrap()
        .read_obj::<u64>(GuestAddress(addr))
        .unwrap()
}

#[test]
fn snapcount_counts_in_its_page_and_keeps_its_pages() {
    let (mut host, guest_end) = UnixStream::pair().unwrap();
    let mut phase = 0;
    let mut counter_seen = 0;
    let mut dirty_checked = 0;
    let run = run_until(
        Guest::new(PVH_PATH, "snapcount")
            .args("count.delay=20000 snap.pages=8 snap.dirty=3")
            .input(SerialInput::Reader(Box::new(guest_end))),
        |output, running| {
            let counts = values(output, "count=", "count");
            match phase {
                0 if counts.len() >= 3 => {
                    let addr = hex(&output.lines().find_map(|l| value_of(l, "counter")).unwrap());
                    counter_seen = read_u64(running, addr);
                    // The page holds the next count to print (or, just
                    // after a line, the count on it).
                    assert!(counter_seen >= counts[counts.len() - 1], "{output}");
                    host.write_all(b"v").unwrap();
                    phase = 1;
                }
                1 if output.contains("pages: verify") => {
                    host.write_all(b"d").unwrap();
                    phase = 2;
                }
                2 if output.contains("dirty: n=") => {
                    for line in output.lines().filter(|l| l.starts_with("dirty addr=")) {
                        let addr = hex(&value_of(line, "addr").unwrap());
                        let gen = hex(&value_of(line, "gen").unwrap());
                        assert_eq!(read_u64(running, addr + 8), pattern(addr + 8, gen));
                        dirty_checked += 1;
                    }
                    host.write_all(b"v").unwrap();
                    phase = 3;
                }
                3 if output.matches("pages: verify").count() == 2 => phase = 4,
                _ => {}
            }
            phase == 4
        },
    );
    assert_eq!(dirty_checked, 3, "{}", run.output);
    let counts = values(&run.output, "count=", "count");
    assert_eq!(counts[0], 0, "{}", run.output);
    assert!(
        counts.windows(2).all(|w| w[1] == w[0] + 1),
        "{}",
        run.output
    );
    assert!(*counts.last().unwrap() >= counter_seen, "{}", run.output);

    let base = hex(&run.field("pages: base", "base").unwrap());
    assert_eq!(base, 0x200_0000);
    let sum = hex(&run.field("pages: base", "sum").unwrap());
    let expected: u64 = (0..8 * 512)
        .map(|i| pattern(base + 8 * i, 0))
        .fold(0, u64::wrapping_add);
    assert_eq!(sum, expected, "{}", run.output);
    let verifies = run.lines("pages: verify");
    assert_eq!(verifies.len(), 2, "{}", run.output);
    for line in &verifies {
        assert_eq!(value_of(line, "bad").as_deref(), Some("0x0"), "{line}");
        assert_eq!(value_of(line, "n").as_deref(), Some("0x8"), "{line}");
    }
    assert_eq!(hex(&value_of(verifies[0], "sum").unwrap()), sum);
    assert_ne!(hex(&value_of(verifies[1], "sum").unwrap()), sum);
    let dirtied: Vec<u64> = values(&run.output, "dirty addr=", "addr");
    assert_eq!(dirtied, vec![base, base + 0x1000, base + 0x2000]);
}
