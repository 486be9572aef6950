//! The Linux lane: boots the reference Linux guest (resources/guest/build.sh)
//! and runs a command in it. It needs hardware virtualization, so these tests
//! are ignored by default; run them with
//! `EMBER_LINUX_TESTS=1 cargo test -p ember-vmm --test linux -- --ignored`
//! (or `EMBER_LINUX_TESTS=1 .ci/run`). The guest is built on first use into
//! `target/linux-guest`, or taken from `EMBER_LINUX_GUEST_DIR`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{run_vm, Capture, GUEST_DEADLINE};
use ember_vmm::{build, BlockConfig, DriveConfig, ExitReason, SerialInput, SerialOutput, VmConfig};

fn guest_dir() -> PathBuf {
    assert_eq!(
        std::env::var("EMBER_LINUX_TESTS").as_deref(),
        Ok("1"),
        "the Linux lane runs only with EMBER_LINUX_TESTS=1 (it needs hardware virtualization)"
    );
    if let Ok(dir) = std::env::var("EMBER_LINUX_GUEST_DIR") {
        return PathBuf::from(dir);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("target/linux-guest");
    if !dir.join("vmlinux").exists() {
        let status = Command::new(root.join("resources/guest/build.sh"))
            .arg(&dir)
            .status()
            .expect("resources/guest/build.sh runs");
        assert!(status.success(), "building the Linux guest failed");
    }
    dir
}

fn boot_linux(kernel: &str, command: &str) -> common::Run {
    let dir = guest_dir();
    let capture = Capture::default();
    let mut config = VmConfig::new(
        dir.join(kernel),
        format!("console=ttyS0 reboot=k panic=1 pci=off -- {command}"),
    );
    config.initrd = Some(dir.join("initramfs.cpio.gz"));
    config.vcpu_count = 2;
    config.mem_size_mib = 256;
    config.serial_input = SerialInput::None;
    config.serial_output = SerialOutput::Writer(Box::new(capture.clone()));
    run_vm(build(config).unwrap(), &capture, GUEST_DEADLINE)
}

fn check_linux_run(kernel: &str) {
    let run = boot_linux(
        kernel,
        "echo ember-linux-ok; grep -c ^processor /proc/cpuinfo",
    );
    assert!(
        matches!(run.result, Ok(ExitReason::Reset)),
        "{:?}\n{}",
        run.result,
        run.output
    );
    assert!(run.output.contains("guest-init: ready"), "{}", run.output);
    assert!(run.output.contains("ember-linux-ok"), "{}", run.output);
    assert!(run.output.contains("guest-exit: 0"), "{}", run.output);
    assert!(
        run.boot_time.is_some(),
        "the guest's init signalled the boot timer"
    );
}

#[test]
#[ignore = "needs hardware virtualization: EMBER_LINUX_TESTS=1 ... -- --ignored"]
fn linux_boots_from_a_virtio_root_drive() {
    let dir = guest_dir();
    let scratch = tempfile::tempdir().unwrap();
    let rootfs = scratch.path().join("rootfs.ext4");
    std::fs::copy(dir.join("rootfs.ext4"), &rootfs).unwrap();
    let capture = Capture::default();
    let mut config = VmConfig::new(
        dir.join("vmlinux"),
        "console=ttyS0 reboot=k panic=1 pci=off -- echo ember-root-ok; cat /proc/mounts",
    );
    config.drives = vec![DriveConfig {
        block: BlockConfig {
            drive_id: "rootfs".into(),
            path: rootfs,
            ..Default::default()
        },
        is_root_device: true,
        partuuid: None,
    }];
    config.mem_size_mib = 256;
    config.serial_input = SerialInput::None;
    config.serial_output = SerialOutput::Writer(Box::new(capture.clone()));
    let run = run_vm(build(config).unwrap(), &capture, GUEST_DEADLINE);
    assert!(
        matches!(run.result, Ok(ExitReason::Reset)),
        "{:?}\n{}",
        run.result,
        run.output
    );
    assert!(run.output.contains("ember-root-ok"), "{}", run.output);
    assert!(run.output.contains("/dev/vda / ext4"), "{}", run.output);
}

#[test]
#[ignore = "needs hardware virtualization: EMBER_LINUX_TESTS=1 ... -- --ignored"]
fn linux_pvh_vmlinux_runs_a_command() {
    check_linux_run("vmlinux");
}

#[test]
#[ignore = "needs hardware virtualization: EMBER_LINUX_TESTS=1 ... -- --ignored"]
fn linux_bzimage_runs_a_command() {
    check_linux_run("bzImage");
}
