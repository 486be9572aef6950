//! Metrics lines from the real binary in Firecracker's format: every group
//! and counter Firecracker's CI requires, per-drive groups with their
//! aggregate, counts that restart at each flush, and the latencies of pause
//! and resume.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

use std::path::Path;

use ember_test_guests::ELF64_PATH;
use serde_json::Value;

use common::*;

/// `group.key[.field]` paths every Firecracker metrics line has.
const REQUIRED: &str =
    include_str!("../../../crates/api/src/metrics/firecracker_required_keys.txt");

/// The number at `path` (`group.key` or `group.key.field`) of `line`.
fn at(line: &Value, path: &str) -> u64 {
    path.split('.')
        .fold(line, |value, part| &value[part])
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {line}"))
}

/// The metrics lines written so far, each checked to have every required
/// group and counter, and each per-device group (`block_<id>`, `net_<id>`)
/// those of its aggregate.
fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let required: Vec<&str> = REQUIRED
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for line in &lines {
        for path in &required {
            at(line, path);
        }
        for device in line.as_object().unwrap().keys() {
            let Some((aggregate, _)) = device
                .split_once('_')
                .filter(|(a, _)| ["block", "net"].contains(a))
            else {
                continue;
            };
            for key in required
                .iter()
                .filter_map(|p| p.strip_prefix(&format!("{aggregate}.")))
            {
                at(line, &format!("{device}.{key}"));
            }
        }
        assert!(line["ember"].is_object(), "{line}");
    }
    lines
}

#[test]
fn a_guest_using_a_drive_shows_in_firecracker_named_metrics() {
    let mut ember = Ember::start(&[]);
    let metrics = ember.put_metrics();
    let disk = temp_file(ember.dir(), "disk.img", &[0u8; 16 * 512]);
    let drive = |id: &str| {
        format!(
            r#"{{"drive_id": "{id}", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}}"#,
            disk.display()
        )
    };
    let mismatch = ember.call("PUT", "/drives/rootfs", Some(&drive("other")));
    assert_eq!(mismatch.status, 400);
    ember.ok("PUT", "/drives/rootfs", &drive("rootfs"));
    // As in Firecracker, FlushMetrics is for a started VM.
    let early = ember.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FlushMetrics"}"#),
    );
    assert_eq!(early.status, 400, "{early:?}");
    ember.boot(
        ELF64_PATH,
        "console=ttyS0 ember.test=blk-roundtrip blk.count=4",
        1,
    );
    assert_eq!(ember.wait_exit(), 0);
    assert!(ember.output().contains("match=0x1"), "{}", ember.output());

    let lines = lines(&metrics);
    assert_eq!(lines.len(), 1, "one line, at exit");
    let after = &lines[0];
    assert_eq!(at(after, "put_api_requests.drive_count"), 2);
    assert_eq!(at(after, "put_api_requests.drive_fails"), 1);
    assert_eq!(at(after, "put_api_requests.metrics_count"), 1);
    assert_eq!(at(after, "put_api_requests.actions_count"), 2);
    assert_eq!(at(after, "put_api_requests.boot_source_count"), 1);
    assert_eq!(at(after, "put_api_requests.machine_cfg_count"), 1);
    assert!(after["block_rootfs"].is_object(), "{after}");

    assert_eq!(at(after, "block_rootfs.write_count"), 1);
    assert_eq!(at(after, "block_rootfs.read_count"), 1);
    assert_eq!(at(after, "block_rootfs.write_bytes"), 4 * 512);
    assert_eq!(at(after, "block_rootfs.read_bytes"), 4 * 512);
    assert_eq!(at(after, "block_rootfs.execute_fails"), 0);
    assert_eq!(
        after["block"], after["block_rootfs"],
        "one drive: aggregate = drive"
    );
    assert!(at(after, "vcpu.exit_mmio_write") > 0);
    assert!(at(after, "vcpu.exit_io_out") > 10);
    assert!(at(after, "uart.write_count") > 10);
    assert_eq!(at(after, "i8042.reset_count"), 1);
    assert_eq!(at(after, "logger.missed_metrics_count"), 0);
    assert_eq!(at(after, "seccomp.num_faults"), 0);
    assert_eq!(at(after, "vmm.panic_count"), 0);
    // As in Firecracker, start-up times are measured only from the start
    // times a jailer passes (firecracker_cli.rs tests those).
    assert_eq!(at(after, "api_server.process_startup_time_us"), 0);
}

#[test]
fn pause_and_resume_latencies_and_signals_are_reported() {
    let mut ember = Ember::start(&[]);
    let metrics = ember.put_metrics();
    ember.boot(
        ELF64_PATH,
        "console=ttyS0 ember.test=spin count.delay=20000",
        1,
    );
    ember.wait_for("tick=0x1");
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    ember.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    ember.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    ember.signal(libc::SIGHUP);
    ember.wait_exit();

    let lines = lines(&metrics);
    let (flushed, last) = (&lines[0], lines.last().unwrap());
    for what in ["pause_vm", "resume_vm"] {
        let api = at(flushed, &format!("latencies_us.{what}"));
        let vmm = at(flushed, &format!("latencies_us.vmm_{what}"));
        assert!(
            vmm > 0 && vmm <= api && api < 10_000_000,
            "{what}: {vmm} {api}"
        );
        assert_eq!(at(last, &format!("latencies_us.{what}")), api, "a value");
    }
    assert_eq!(at(flushed, "latencies_us.load_snapshot"), 0);
    assert_eq!(at(flushed, "signals.sighup"), 0);
    assert_eq!(at(last, "signals.sighup"), 1);
    assert_eq!(at(last, "ember.signals.sigterm"), 0);
    assert_eq!(at(flushed, "patch_api_requests.machine_cfg_count"), 0);
}
