//! Snapshots of whole test-guest VMs: a guest keeps its progress across a
//! save and a restore (for several generations), and every bad input is
//! refused with one line before anything is created.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;

use common::{Capture, Guest, Live, SavedFiles};
use ember_test_guests::ELF64_PATH;
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
        text.lines()
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
    let first_tick = text
        .lines()
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
    let err = live.vm.snapshot(&out.full()).unwrap_err().to_string();
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
    let files = SnapshotFiles {
        kind: SnapshotKind::Full,
        state_path: dir.path().join("missing-dir/vm.state"),
        mem_path: dir.path().join("vm.mem"),
    };
    let err = live.vm.snapshot(&files).unwrap_err().to_string();
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
    let mut live = Live::boot(spinning_guest());
    wait_for_tick(&mut live, 1);
    live.save_and_stop()
}

fn restore_error(state: &Path, mem: &Path) -> String {
    let capture = Capture::default();
    let err = restore(restore_config(state, mem, &capture))
        .map(|_| ())
        .expect_err("the restore is refused");
    let message = err.to_string();
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
