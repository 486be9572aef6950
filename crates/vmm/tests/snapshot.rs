//! Snapshots of whole test-guest VMs: a guest keeps its progress across a
//! save and a restore (for several generations), and every bad input is
//! refused with one line before anything is created.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;

use common::{Capture, Guest, Live, SavedFiles};
use ember_test_guests::{ELF64_PATH, PVH_PATH};
use ember_vmm::{restore, RestoreConfig, SerialInput, SerialOutput, SnapshotFiles, SnapshotKind};

/// A restore of `files` with output to a new capture, resumed.
fn restore_config(state: &Path, mem: &Path, capture: &Capture) -> RestoreConfig {
    let mut config = RestoreConfig::new(state, mem);
    config.resume = true;
    config.serial_output = SerialOutput::Writer(Box::new(capture.clone()));
    config.serial_input = SerialInput::None;
    config
}

/// Restores `files` and runs the VM in the test's hands.
fn restored(files: &SavedFiles) -> Live {
    let capture = Capture::default();
    let vm = restore(restore_config(&files.state, &files.mem, &capture)).expect("restores");
    Live::start(vm, capture)
}

/// The `spin` guest prints `tick=N` forever; a short `count.delay` keeps it quick.
fn spinning_guest() -> Guest {
    Guest::new(ELF64_PATH, "spin").args("count.delay=2000")
}

/// Waits for tick `n` or later; returns the last tick seen.
fn wait_for_tick(live: &mut Live, n: u64) -> u64 {
    live.wait_for(&format!("tick {n}"), |text| {
        common::complete_lines(text)
            .filter_map(|l| l.strip_prefix("tick="))
            .any(|v| common::hex(v.trim()) >= n)
    });
    live.last_value("tick").unwrap()
}

#[test]
fn a_counting_guest_continues_where_it_was_for_two_generations() {
    let first = SavedFiles::new();
    let mut live = Live::boot(spinning_guest());
    wait_for_tick(&mut live, 3);
    live.vm.pause().unwrap();
    let saved_tick = live.last_value("tick").unwrap();
    let report = live.vm.snapshot(&first.full()).unwrap();
    assert!(
        report.state_bytes > 0 && report.memory_bytes > 0,
        "{report:?}"
    );
    live.vm.shutdown();
    // The memory file holds all of guest memory, sparsely.
    let len = std::fs::metadata(&first.mem).unwrap().len();
    assert_eq!(len, 128 << 20);

    // Generation 2: the count goes on from the saved tick, never from 0.
    let mut second_live = restored(&first);
    let tick = wait_for_tick(&mut second_live, saved_tick + 2);
    let text = second_live.capture.text();
    assert!(
        !text.contains("spin: running"),
        "the guest booted again:\n{text}"
    );
    let first_tick = common::complete_lines(&text)
        .find_map(|l| l.strip_prefix("tick="))
        .map(|v| common::hex(v.trim()))
        .unwrap();
    assert!(
        first_tick > saved_tick && first_tick <= saved_tick + 2,
        "after tick {saved_tick} the restored guest printed tick {first_tick} first"
    );

    // Generation 3: a snapshot of the restored VM restores too.
    let second = SavedFiles::new();
    second_live.vm.pause().unwrap();
    let saved_tick = second_live.last_value("tick").unwrap();
    assert!(saved_tick >= tick);
    second_live.vm.snapshot(&second.full()).unwrap();
    second_live.vm.shutdown();
    let mut third_live = restored(&second);
    wait_for_tick(&mut third_live, saved_tick + 2);
    third_live.vm.shutdown();
}

#[test]
fn a_snapshot_of_a_running_vm_is_refused_and_writes_nothing() {
    let out = SavedFiles::new();
    let mut live = Live::boot(spinning_guest());
    wait_for_tick(&mut live, 1);
    let err = live.vm.snapshot(&out.full()).unwrap_err();
    let err = ember_vmm::error_chain(&err);
    assert!(err.contains("pause"), "{err}");
    assert!(!out.state.exists() && !out.mem.exists());
    live.vm.shutdown();
}

#[test]
fn a_snapshot_to_an_unwritable_place_fails_and_leaves_nothing() {
    let mut live = Live::boot(spinning_guest());
    wait_for_tick(&mut live, 1);
    live.vm.pause().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = SnapshotFiles::new(
        SnapshotKind::Full,
        dir.path().join("missing-dir/vm.state"),
        dir.path().join("vm.mem"),
    );
    let err = live.vm.snapshot(&files).unwrap_err();
    let err = ember_vmm::error_chain(&err);
    assert!(err.contains("missing-dir"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // The VM is still paused and can go on.
    live.vm.resume().unwrap();
    let tick = live.last_value("tick").unwrap();
    wait_for_tick(&mut live, tick + 1);
    live.vm.shutdown();
}

/// One saved VM, for the bad-input tests.
fn saved_vm() -> SavedFiles {
    let out = SavedFiles::new();
    let mut live = Live::boot(spinning_guest());
    wait_for_tick(&mut live, 1);
    live.vm.pause().unwrap();
    live.vm.snapshot(&out.full()).unwrap();
    live.vm.shutdown();
    out
}

fn restore_error(state: &Path, mem: &Path) -> String {
    let capture = Capture::default();
    let err = restore(restore_config(state, mem, &capture))
        .map(|_| ())
        .expect_err("the restore is refused");
    let message = ember_vmm::error_chain(&err);
    assert!(!message.contains('\n'), "not one line: {message}");
    message
}

#[test]
fn bad_state_and_memory_files_are_refused_with_one_line() {
    let saved = saved_vm();
    let good = std::fs::read(&saved.state).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let variant = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };

    let truncated = variant("truncated", &good[..good.len() / 2]);
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    let flipped = variant("flipped", &flipped);
    let mut magic = good.clone();
    magic[0] = b'X';
    let magic = variant("magic", &magic);
    let mut version = good.clone();
    version[8] = 0x7f;
    let version = variant("version", &version);
    for (path, expected) in [
        (&truncated, ""),
        (&flipped, "checksum"),
        (&magic, "magic"),
        (&version, "version"),
    ] {
        let message = restore_error(path, &saved.mem);
        assert!(
            message.to_lowercase().contains(expected),
            "{}: {message}",
            path.display()
        );
    }

    let short_mem = variant("short.mem", &[0u8; 4096]);
    let message = restore_error(&saved.state, &short_mem);
    assert!(message.contains("memory file"), "{message}");
    let message = restore_error(&saved.state, &dir.path().join("absent.mem"));
    assert!(message.contains("absent.mem"), "{message}");
    let message = restore_error(dir.path(), &saved.mem);
    assert!(!message.is_empty());
}

/// The values of `key` on the output's complete lines starting with `prefix`
/// (a pause may cut the last line short).
fn values(text: &str, prefix: &str, key: &str) -> Vec<u64> {
    common::complete_lines(text)
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| common::value_of(l, key))
        .map(|v| common::hex(&v))
        .collect()
}

#[test]
fn timer_interrupts_keep_coming_and_time_never_goes_back_after_restore() {
    let out = SavedFiles::new();
    let mut live = Live::boot(Guest::new(ELF64_PATH, "ticks").args("ticks.every=5"));
    live.wait_for("3 tick lines", |t| t.matches("tick=").count() >= 3);
    live.vm.pause().unwrap();
    let before = live.capture.text();
    live.vm.snapshot(&out.full()).unwrap();
    live.vm.shutdown();
    let last = |key| *values(&before, "tick=", key).last().unwrap();
    let (tick, tsc) = (last("tick"), last("tsc"));
    let kvmclock = before.contains("kvmclock=0x1");

    let mut live = restored(&out);
    let after = live.wait_for("3 tick lines after restore", |t| {
        t.matches("tick=").count() >= 3
    });
    live.vm.shutdown();
    assert!(!after.contains("backwards"), "{after}");
    assert!(!after.contains("unexpected"), "{after}");
    let ticks = values(&after, "tick=", "tick");
    assert!(ticks[0] > tick, "tick {} after {tick}", ticks[0]);
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "{after}");
    assert!(values(&after, "tick=", "tsc")[0] > tsc, "{before}\n{after}");
    if kvmclock {
        let clock = *values(&before, "tick=", "clock").last().unwrap();
        assert!(values(&after, "tick=", "clock")[0] > clock, "{after}");
    }
}

/// The counts CPU `cpu` printed.
fn cpu_counts(text: &str, cpu: u32) -> Vec<u64> {
    let prefix = format!("cpu{cpu}=");
    common::complete_lines(text)
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(common::hex)
        .collect()
}

#[test]
fn every_vcpu_goes_on_and_one_never_started_still_starts_after_restore() {
    let out = SavedFiles::new();
    let (_host, guest_end) = UnixStream::pair().unwrap();
    let mut live = Live::boot(
        Guest::new(ELF64_PATH, "smp")
            .vcpus(3)
            .args("smp.start=1 smp.every=20000")
            .input(SerialInput::Reader(Box::new(guest_end))),
    );
    live.wait_for("cpu1 counting", |t| cpu_counts(t, 1).len() >= 2);
    live.vm.pause().unwrap();
    let before = live.capture.text();
    live.vm.snapshot(&out.full()).unwrap();
    live.vm.shutdown();
    assert!(cpu_counts(&before, 2).is_empty(), "{before}");
    let saved: Vec<u64> = (0..2)
        .map(|cpu| *cpu_counts(&before, cpu).last().unwrap())
        .collect();

    let (mut host, guest_end) = UnixStream::pair().unwrap();
    let capture = Capture::default();
    let mut config = restore_config(&out.state, &out.mem, &capture);
    config.serial_input = SerialInput::Reader(Box::new(guest_end));
    let mut live = Live::start(restore(config).unwrap(), capture);
    live.wait_for("cpu0 and cpu1 going on", |t| {
        (0..2).all(|cpu| cpu_counts(t, cpu).iter().any(|&n| n > saved[cpu as usize]))
    });
    let text = live.capture.text();
    for cpu in 0..2 {
        let counts = cpu_counts(&text, cpu);
        assert!(
            counts[0] > saved[cpu as usize],
            "cpu{cpu} restarted:\n{text}"
        );
    }
    assert!(cpu_counts(&text, 2).is_empty(), "{text}");
    host.write_all(b"s").unwrap();
    live.wait_for("cpu2 started after restore", |t| {
        t.contains("cpu2: online") && cpu_counts(t, 2).len() >= 2
    });
    live.vm.shutdown();
}

#[test]
fn a_diff_snapshot_writes_the_dirtied_pages_and_restores_over_its_base() {
    let base = SavedFiles::new();
    let (mut host, guest_end) = UnixStream::pair().unwrap();
    let capture = Capture::default();
    let mut config = Guest::new(PVH_PATH, "snapcount")
        .args("count.delay=20000 snap.pages=8 snap.dirty=3")
        .input(SerialInput::Reader(Box::new(guest_end)))
        .config(&capture);
    config.track_dirty_pages = true;
    let mut live = Live::start(ember_vmm::build(config).unwrap(), capture);
    live.wait_for("counting", |t| t.matches("count=").count() >= 2);
    live.vm.pause().unwrap();
    let full_report = live.vm.snapshot(&base.full()).unwrap();
    live.vm.resume().unwrap();

    host.write_all(b"d").unwrap();
    let text = live.wait_for("pages dirtied", |t| t.contains("dirty: n="));
    live.vm.pause().unwrap();
    let diff_state = base.state.with_extension("diff");
    let diff = SnapshotFiles::new(SnapshotKind::Diff, &diff_state, &base.mem);
    let report = live.vm.snapshot(&diff).unwrap();
    live.vm.shutdown();
    // The three dirtied pages, the counter page and what the guest's code
    // touched meanwhile (stack, serial buffers): a handful of pages, far from
    // the full snapshot's.
    assert!(
        report.memory_bytes >= 4 * 4096 && report.memory_bytes <= 64 * 4096,
        "diff wrote {} bytes",
        report.memory_bytes
    );
    assert!(report.memory_bytes * 4 < full_report.memory_bytes);
    let mem = std::fs::read(&base.mem).unwrap();
    for line in text.lines().filter(|l| l.starts_with("dirty addr=")) {
        let addr = common::hex(&common::value_of(line, "addr").unwrap());
        let gen = common::hex(&common::value_of(line, "gen").unwrap());
        let at = usize::try_from(addr + 8).unwrap();
        let word = u64::from_le_bytes(mem[at..at + 8].try_into().unwrap());
        let expected = ((addr + 8) ^ (gen << 48))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(gen);
        assert_eq!(word, expected, "page {addr:#x} in the memory file");
    }

    let (mut host, guest_end) = UnixStream::pair().unwrap();
    let capture = Capture::default();
    let mut config = restore_config(&diff_state, &base.mem, &capture);
    config.serial_input = SerialInput::Reader(Box::new(guest_end));
    let mut live = Live::start(restore(config).unwrap(), capture);
    host.write_all(b"v").unwrap();
    let text = live.wait_for("verify", |t| t.contains("pages: verify"));
    live.vm.shutdown();
    let verify = text
        .lines()
        .find(|l| l.starts_with("pages: verify"))
        .unwrap();
    assert_eq!(
        common::value_of(verify, "bad").as_deref(),
        Some("0x0"),
        "{text}"
    );
}
