//! Firecracker's command line on the `ember` binary: `--version` in the
//! format Firecracker's users parse, `--metrics-path`, the jailer's start
//! times, `--module`, `--mmds-size-limit` (with the API: `mmds.rs`), the
//! refused `--enable-pci`, the logging flags, and Firecracker's compiled seccomp
//! filter format.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use ember_test_guests::{ELF64_PATH, PVH_PATH};

use common::*;

/// The seccompiler-bin-format file holding Ember's default filters.
const COMPILED_FILTERS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../crates/jailer/src/seccomp/compiled/default-filters.bpf"
);

fn run_guest(scenario: &str, extra: &[&str]) -> Output {
    let cmdline = format!("console=ttyS0 ember.test={scenario}");
    let mut args = extra.to_vec();
    args.extend(["run", "--kernel", ELF64_PATH, "--cmdline", &cmdline]);
    ember(&args)
}

/// The version in `ember --version`'s first line, `Firecracker vVERSION`.
fn version_line() -> String {
    let out = ember(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    stdout(&out).lines().next().unwrap().to_owned()
}

/// `x.y.z` as numbers, as semver orders releases (build metadata after `+`
/// does not count).
fn release(version: &str) -> (u64, u64, u64) {
    let core = version.split('+').next().unwrap();
    assert!(!core.contains('-'), "{version}: a pre-release");
    let parts: Vec<u64> = core.split('.').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts.len(), 3, "{version}");
    (parts[0], parts[1], parts[2])
}

#[test]
fn version_reads_as_firecracker_to_kata_and_the_go_sdk_and_names_ember() {
    let out = ember(&["--version"]);
    let text = stdout(&out);
    let first = version_line();
    // The Go SDK's tests: `Firecracker v(?P<version>[0-9]+\.[0-9]+\.[0-9]+-?.*)`.
    let sdk = first
        .strip_prefix("Firecracker v")
        .expect("Firecracker v prefix");
    // Kata Containers: the first line's second space-separated word, without
    // its `v`, must be a semver of at least 0.21.1 (older Kata split the
    // whole output on spaces: the same word).
    let kata = first
        .split(' ')
        .nth(1)
        .unwrap()
        .trim()
        .trim_start_matches('v');
    let old_kata = text
        .split(' ')
        .nth(1)
        .unwrap()
        .trim()
        .trim_start_matches('v');
    assert_eq!(kata, sdk);
    assert_eq!(old_kata, sdk);
    assert!(release(kata) >= (0, 21, 1), "{kata}");
    assert_eq!(
        sdk,
        format!(
            "{}+ember.{}",
            ember_api::FIRECRACKER_VERSION,
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn get_version_reports_what_dash_dash_version_prints() {
    let version = version_line();
    let vmm = Ember::start(&[]);
    let reply = vmm.call("GET", "/version", None);
    assert_eq!(reply.status, 200);
    let json = reply.json();
    assert_eq!(
        format!(
            "Firecracker v{}",
            json["firecracker_version"].as_str().unwrap()
        ),
        version
    );
    assert_eq!(json["ember_version"], env!("CARGO_PKG_VERSION"));
}

/// The metrics file's lines as JSON.
fn metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn metrics_path_sets_up_metrics_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.json");
    let mut vmm = Ember::start(&["--metrics-path", path.to_str().unwrap()]);
    // As if PUT /metrics had been done: a second is refused, and the stop
    // writes a last line.
    let body = format!(r#"{{"metrics_path": "{}"}}"#, path.display());
    let reply = vmm.call("PUT", "/metrics", Some(&body));
    assert_eq!(reply.status, 400);
    assert!(
        reply
            .fault()
            .contains("Reinitialization of metrics not allowed"),
        "{}",
        reply.fault()
    );
    vmm.signal(libc::SIGTERM);
    vmm.wait_exit();
    assert_eq!(metrics(&path).len(), 1);

    // Without the API too: the config-file VM's last metrics line at exit.
    let config = temp_file(
        dir.path(),
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{PVH_PATH}", "boot_args": "console=ttyS0 ember.test=reset"}}}}"#
        )
        .as_bytes(),
    );
    let no_api_metrics = dir.path().join("no-api.json");
    let out = ember(&[
        "--no-api",
        "--config-file",
        config.to_str().unwrap(),
        "--metrics-path",
        no_api_metrics.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!metrics(&no_api_metrics).is_empty());

    let unwritable = dir.path().join("missing-dir/m.json");
    let out = ember(&[
        "--no-api",
        "--config-file",
        config.to_str().unwrap(),
        "--metrics-path",
        unwritable.to_str().unwrap(),
    ]);
    assert_error(&out, "--metrics-path");
}

/// `CLOCK_MONOTONIC` in microseconds, as the jailer's `--start-time-us`.
fn monotonic_us() -> u64 {
    ember_jailer::StartTimes::now().monotonic_us
}

/// `api_server`'s start-up metrics of an `ember --api-sock EXTRA`.
fn startup_metrics(extra: &[&str]) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.json");
    let mut args = vec!["--metrics-path", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut vmm = Ember::start(&args);
    // The line written at the stop.
    vmm.signal(libc::SIGTERM);
    vmm.wait_exit();
    let line = metrics(&path).remove(0);
    let get = |key: &str| line["api_server"][key].as_u64().unwrap();
    (
        get("process_startup_time_us"),
        get("process_startup_time_cpu_us"),
    )
}

#[test]
fn the_jailers_start_times_become_the_startup_metrics() {
    // The jailer started 2 s ago and used 5 ms of CPU before this process.
    let start = (monotonic_us() - 2_000_000).to_string();
    let before = monotonic_us();
    let (wall, cpu) = startup_metrics(&[
        "--start-time-us",
        &start,
        "--start-time-cpu-us",
        "0",
        "--parent-cpu-time-us",
        "5000",
    ]);
    let waited = monotonic_us() - before;
    assert!(
        (2_000_000..=2_000_000 + waited).contains(&wall),
        "{wall} us since the jailer started"
    );
    assert!(cpu >= 5000, "{cpu}: the jailer's CPU time is included");
    // As Firecracker: without start times, nothing is measured.
    assert_eq!(startup_metrics(&[]), (0, 0));
    let out = ember(&["--start-time-us", "soon", "--api-sock", "/nonexistent/s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a number of microseconds"));
}

#[test]
fn enable_pci_is_refused_naming_the_missing_feature() {
    let out = ember(&["--enable-pci", "--api-sock", "/nonexistent/s"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let first = err.lines().next().unwrap();
    assert!(first.starts_with("ember: "), "{err}");
    assert!(first.contains("PCI"), "{err}");
}

#[test]
fn mmds_size_limit_is_accepted_and_checked() {
    let out = run_guest("reset", &["--mmds-size-limit", "4096"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run_guest("reset", &["--mmds-size-limit", "-5"]);
    assert_eq!(out.status.code(), Some(2));
}

/// The log of a boot-timer guest run with `extra` logging flags.
fn boot_log(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut args = vec!["--log-path", log.to_str().unwrap(), "--level", "Debug"];
    args.extend_from_slice(extra);
    let out = run_guest("boottimer", &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn module_keeps_only_the_lines_of_matching_modules() {
    let all = boot_log(&[]);
    assert!(
        all.contains("guest-boot-time-us=") && all.contains("guest reset through the i8042"),
        "{all}"
    );
    let devices = boot_log(&["--module", "ember_devices"]);
    assert!(devices.contains("guest-boot-time-us="), "{devices}");
    assert!(
        !devices.contains("guest reset through the i8042"),
        "{devices}"
    );
    let vmm = boot_log(&["--module", "ember_vmm", "--show-log-origin", "--show-level"]);
    assert!(vmm.contains("guest reset through the i8042"), "{vmm}");
    assert!(!vmm.contains("guest-boot-time-us="), "{vmm}");
    // Origin and level: `[id:thread:LEVEL:file:line]`.
    let line = vmm
        .lines()
        .find(|l| l.contains("guest reset through the i8042"))
        .unwrap();
    assert!(line.contains(":INFO:crates/vmm/src/"), "{line}");
}

#[test]
fn the_api_payload_limit_is_taken_from_the_command_line() {
    let vmm = Ember::start(&["--http-api-max-payload-size", "100"]);
    let big = format!(
        r#"{{"vcpu_count": 1, "mem_size_mib": 128 {}}}"#,
        " ".repeat(100)
    );
    let reply = vmm.call("PUT", "/machine-config", Some(&big));
    assert_eq!(reply.status, 400, "a body over 100 bytes");
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
    );
}

/// A copy of the compiled default filters in `dir`, changed by `edit`.
fn compiled_copy(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(COMPILED_FILTERS).unwrap();
    edit(&mut bytes);
    temp_file(dir, name, &bytes)
}

#[test]
fn seccomp_filter_takes_firecrackers_compiled_format() {
    let out = run_guest("bootinfo", &["--seccomp-filter", COMPILED_FILTERS]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("guest: done"), "{}", stdout(&out));

    let dir = tempfile::tempdir().unwrap();
    let truncated = compiled_copy(dir.path(), "truncated.bpf", |b| b.truncate(b.len() / 2));
    let out = run_guest(
        "bootinfo",
        &["--seccomp-filter", truncated.to_str().unwrap()],
    );
    assert_error(&out, "not a valid compiled filter");
    let trailing = compiled_copy(dir.path(), "trailing.bpf", |b| b.push(0));
    let out = run_guest(
        "bootinfo",
        &["--seccomp-filter", trailing.to_str().unwrap()],
    );
    assert_error(&out, "after the end");
}
