//! The `ember` binary's seccomp filters end to end: every thread of a running
//! VM is filtered (or none with `--no-seccomp`), `--seccomp-filter FILE` is
//! what gets installed, and a call outside a thread's filter ends the process
//! with SIGSYS's status and a line naming the call and the thread.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use ember_test_guests::ELF64_PATH;

use common::*;

/// The filters `ember` installs by default, in the `--seccomp-filter` format.
const DEFAULT_FILTERS: &str = include_str!("../../../crates/jailer/seccomp/x86_64.json");
/// `ember`'s exit status after a seccomp violation (128 + SIGSYS).
const VIOLATION_EXIT: i32 = 128 + libc::SIGSYS;

/// Writes the default filters, minus every rule for `syscall` in `kind`'s
/// filter, to `dir/name`.
fn filter_file_without(dir: &Path, name: &str, kind: &str, syscall: &str) -> String {
    let mut filters: serde_json::Value = serde_json::from_str(DEFAULT_FILTERS).unwrap();
    let rules = filters[kind]["filter"].as_array_mut().unwrap();
    let before = rules.len();
    rules.retain(|rule| rule["syscall"] != syscall);
    assert!(rules.len() < before, "the {kind} filter has no {syscall}");
    let path = dir.join(name);
    std::fs::write(&path, filters.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Asserts `out` is a seccomp violation of `syscall` on thread `thread`.
fn assert_violation(out: &Output, syscall: i64, thread: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(VIOLATION_EXIT), "stderr: {stderr}");
    let expected = format!("seccomp violation: syscall {syscall} on thread {thread}\n");
    assert!(stderr.contains(&expected), "{expected:?} not in {stderr}");
}

#[test]
fn a_call_outside_each_thread_kinds_filter_ends_the_process_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = |filter: &str| {
        ember_to_the_end(&[
            "run",
            "--kernel",
            ELF64_PATH,
            "--cmdline",
            "ember.test=reset",
            "--seccomp-filter",
            filter,
        ])
    };

    // The vCPU thread's first ioctl is KVM_RUN.
    let no_vcpu_ioctl = filter_file_without(dir.path(), "vcpu.json", "vcpu", "ioctl");
    assert_violation(&run(&no_vcpu_ioctl), libc::SYS_ioctl, "fc_vcpu 0");

    // The VMM thread and the device thread both wait on event loops, under
    // the `vmm` filter: whichever waits first is named.
    let no_vmm_wait = filter_file_without(dir.path(), "vmm.json", "vmm", "epoll_wait");
    let out = run(&no_vmm_wait);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let thread = if stderr.contains("on thread ember_devices") {
        "ember_devices"
    } else {
        "ember"
    };
    assert_violation(&out, libc::SYS_epoll_wait, thread);

    // The API thread waits for clients as soon as it starts.
    let no_api_wait = filter_file_without(dir.path(), "api.json", "api", "epoll_wait");
    let socket = dir.path().join("api.sock");
    let out = ember_to_the_end(&[
        "--api-sock",
        socket.to_str().unwrap(),
        "--seccomp-filter",
        &no_api_wait,
    ]);
    assert_violation(&out, libc::SYS_epoll_wait, "ember_api");

    // The unchanged defaults, given as a file, run the guest to its reset.
    let defaults = dir.path().join("defaults.json");
    std::fs::write(&defaults, DEFAULT_FILTERS).unwrap();
    let out = run(defaults.to_str().unwrap());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `Seccomp:` mode of every thread of a VM whose guest is parked
/// (0: none, 2: filter), read from `/proc` before the VM is stopped.
fn seccomp_modes_of_a_parked_vm(extra: &[&str]) -> Vec<(String, u32)> {
    let mut args = vec![
        "run",
        "--kernel",
        ELF64_PATH,
        "--vcpus",
        "2",
        "--cmdline",
        "ember.test=hlt",
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new(EMBER)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let parked = lines.any(|l| l.map(|l| l.contains("hlt: parked")).unwrap_or(false));
    let mut modes = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        modes.push((
            field("Name:"),
            field("Seccomp:").parse().unwrap_or(u32::MAX),
        ));
    }
    // SAFETY: sending a signal to our own child process by its pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(parked, "the guest never parked");
    assert_died_by(status, libc::SIGTERM);
    modes
}

#[test]
fn every_thread_is_filtered_by_default_and_none_with_no_seccomp() {
    let filtered = seccomp_modes_of_a_parked_vm(&[]);
    let names: Vec<&str> = filtered.iter().map(|(name, _)| name.as_str()).collect();
    for expected in ["ember", "fc_vcpu 0", "fc_vcpu 1"] {
        assert!(names.contains(&expected), "no {expected} in {names:?}");
    }
    assert!(filtered.iter().all(|&(_, mode)| mode == 2), "{filtered:?}");

    let unfiltered = seccomp_modes_of_a_parked_vm(&["--no-seccomp"]);
    assert_eq!(unfiltered.len(), filtered.len(), "{unfiltered:?}");
    assert!(
        unfiltered.iter().all(|&(_, mode)| mode == 0),
        "{unfiltered:?}"
    );
}

#[test]
fn filter_files_that_cannot_be_used_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut without_api: serde_json::Value = serde_json::from_str(DEFAULT_FILTERS).unwrap();
    without_api.as_object_mut().unwrap().remove("api");
    let cases = [
        ("missing.json", None, "cannot open seccomp filter file"),
        (
            "garbage.json",
            Some("{ not json".to_owned()),
            "seccomp filter",
        ),
        (
            "no-api.json",
            Some(without_api.to_string()),
            "no filter for thread kind \"api\"",
        ),
    ];
    for (name, contents, needle) in cases {
        let path = dir.path().join(name);
        if let Some(contents) = contents {
            std::fs::write(&path, contents).unwrap();
        }
        let out = ember_to_the_end(&[
            "run",
            "--kernel",
            ELF64_PATH,
            "--seccomp-filter",
            path.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("ember: error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{name}: {stderr}");
        assert!(
            errors[0].contains(needle) && errors[0].contains(name),
            "{name}: {needle:?} not in {:?}",
            errors[0]
        );
    }
}

#[test]
fn a_filter_file_compiled_by_seccompiler_bin_filters_every_thread() {
    let compiled = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crates/jailer/src/seccomp/compiled/default-filters.bpf"
    );
    let modes = seccomp_modes_of_a_parked_vm(&["--seccomp-filter", compiled]);
    let names: Vec<&str> = modes.iter().map(|(name, _)| name.as_str()).collect();
    assert!(names.contains(&"fc_vcpu 0"), "{names:?}");
    assert!(modes.iter().all(|&(_, mode)| mode == 2), "{modes:?}");
}
