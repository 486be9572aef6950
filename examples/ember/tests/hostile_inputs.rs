//! The `ember` binary (seccomp on) against inputs meant to hang or kill it:
//! FIFOs, directories and character devices where files are expected (over
//! the API, on the command line, as config files), a vsock socket left by a
//! killed VMM, every termination signal, and values beyond Firecracker's
//! limits. Every refusal is quick, and the VMM keeps answering afterwards.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_test_guests::ELF64_PATH;

use common::*;

/// A refusal must come at once: far less than any wait in these tests.
const QUICK: Duration = Duration::from_secs(10);

/// A FIFO, a directory and a character device, each with what Ember must
/// call it, in a temporary directory.
struct NotFiles {
    _dir: tempfile::TempDir,
    cases: Vec<(PathBuf, &'static str)>,
}

impl NotFiles {
    fn new() -> NotFiles {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let subdir = dir.path().join("dir");
        std::fs::create_dir(&subdir).unwrap();
        NotFiles {
            cases: vec![
                (fifo, "a FIFO"),
                (subdir, "a directory"),
                (PathBuf::from("/dev/zero"), "a character device"),
            ],
            _dir: dir,
        }
    }
}

/// Asserts that the VMM still answers `GET /` with its JSON.
fn assert_alive(ember: &Ember, state: &str) {
    let reply = ember.call("GET", "/", None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["state"], state, "{}", reply.body);
}

/// Sends a request that must be refused with a 400 quickly, naming `needle`.
fn assert_refused(ember: &Ember, method: &str, path: &str, body: &str, needle: &str) {
    let started = Instant::now();
    let reply = ember.call(method, path, Some(body));
    assert!(
        started.elapsed() < QUICK,
        "{method} {path} took {:?}",
        started.elapsed()
    );
    assert_eq!(reply.status, 400, "{method} {path} {body}: {}", reply.body);
    let fault = reply.fault();
    assert!(fault.contains(needle), "{needle:?} not in {fault:?}");
}

fn drive_body(path: &Path) -> String {
    format!(
        r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}}"#,
        path.display()
    )
}

#[test]
fn kernels_initrds_and_drives_that_are_not_files_get_400_at_put() {
    let ember = Ember::start(&[]);
    let not_files = NotFiles::new();
    for (path, what) in &not_files.cases {
        let shown = path.display();
        assert_refused(
            &ember,
            "PUT",
            "/boot-source",
            &format!(r#"{{"kernel_image_path": "{shown}"}}"#),
            &format!(
                "The kernel file cannot be opened: it is {what}, not a regular file ({shown})"
            ),
        );
        assert_refused(
            &ember,
            "PUT",
            "/boot-source",
            &format!(r#"{{"kernel_image_path": "{ELF64_PATH}", "initrd_path": "{shown}"}}"#),
            &format!("The initrd file cannot be opened due to invalid path or invalid permissions. it is {what}, not a regular file ({shown})"),
        );
        assert_refused(
            &ember,
            "PUT",
            "/drives/data",
            &drive_body(path),
            &format!(
                "cannot open the drive {shown}: it is {what}, not a regular file or a block device"
            ),
        );
        assert_alive(&ember, "Not started");
    }
    // Nothing refused was kept (an unset boot source has an empty path, as
    // Firecracker prints it).
    let config = ember.call("GET", "/vm/config", None).json();
    assert_eq!(config["boot-source"]["kernel_image_path"], "", "{config}");
    assert_eq!(config["drives"], serde_json::json!([]));
}

#[test]
fn a_running_drive_cannot_be_swapped_to_something_that_is_not_a_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = temp_file(dir.path(), "disk.img", &[0u8; 4096]);
    let ember = Ember::start(&[]);
    ember.ok("PUT", "/drives/data", &drive_body(&disk));
    ember.boot(ELF64_PATH, "console=ttyS0 ember.test=hlt", 1);
    ember.wait_for("hlt: parked");
    let not_files = NotFiles::new();
    for (path, what) in &not_files.cases {
        assert_refused(
            &ember,
            "PATCH",
            "/drives/data",
            &format!(
                r#"{{"drive_id": "data", "path_on_host": "{}"}}"#,
                path.display()
            ),
            &format!(
                "{}: it is {what}, not a regular file or a block device",
                path.display()
            ),
        );
        assert_alive(&ember, "Running");
    }
    let config = ember.call("GET", "/vm/config", None).json();
    assert_eq!(config["drives"][0]["path_on_host"], disk.to_str().unwrap());
}

#[test]
fn the_command_line_and_config_files_refuse_what_is_not_a_file_at_once() {
    let not_files = NotFiles::new();
    let dir = tempfile::tempdir().unwrap();
    for (path, what) in &not_files.cases {
        let shown = path.to_str().unwrap();
        let started = Instant::now();
        assert_error(
            &ember_to_the_end(&["--no-api", "--config-file", shown]),
            &format!("cannot read config file {shown}: it is {what}, not a regular file"),
        );
        assert_error(
            &ember_to_the_end(&["run", "--kernel", shown]),
            &format!("cannot open kernel image {shown}: it is {what}, not a regular file"),
        );
        assert_error(
            &ember_to_the_end(&["run", "--kernel", ELF64_PATH, "--initrd", shown]),
            &format!("cannot open initrd {shown}: it is {what}, not a regular file"),
        );
        assert_error(
            &ember_to_the_end(&["run", "--kernel", ELF64_PATH, "--drive", shown]),
            &format!("{shown}: it is {what}, not a regular file or a block device"),
        );
        // A config file naming it as its kernel fails when the VM is built.
        let config = temp_file(
            dir.path(),
            "vm.json",
            format!(r#"{{"boot-source": {{"kernel_image_path": "{shown}"}}}}"#).as_bytes(),
        );
        assert_error(
            &ember_to_the_end(&["--no-api", "--config-file", config.to_str().unwrap()]),
            &format!("cannot open kernel image {shown}: it is {what}"),
        );
        assert!(
            started.elapsed() < QUICK,
            "{shown}: {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_vsock_socket_left_by_a_killed_vmm_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let vsock = format!(r#"{{"guest_cid": 3, "uds_path": "{}"}}"#, uds.display());

    let mut first = Ember::start(&[]);
    first.ok("PUT", "/vsock", &vsock);
    first.boot(ELF64_PATH, "console=ttyS0 ember.test=hlt", 1);
    first.wait_for("hlt: parked");
    first.signal(libc::SIGKILL);
    assert_eq!(first.wait_exit(), -1, "killed");
    assert!(uds.exists(), "SIGKILL leaves the socket behind");
    assert!(
        UnixStream::connect(&uds).is_err(),
        "and nobody accepts on it"
    );

    let second = Ember::start(&[]);
    second.ok("PUT", "/vsock", &vsock);
    second.boot(ELF64_PATH, "console=ttyS0 ember.test=hlt", 1);
    second.wait_for("hlt: parked");
    assert_alive(&second, "Running");
    UnixStream::connect(&uds).expect("the new VMM listens on the vsock path");

    // A live socket is not taken over (refused at PUT, where Firecracker
    // binds it too).
    let third = Ember::start(&[]);
    assert_refused(
        &third,
        "PUT",
        "/vsock",
        &vsock,
        "another process is listening on it",
    );
    assert_alive(&third, "Not started");
    assert_alive(&second, "Running");

    // Removed on a clean exit, as before.
    let mut second = second;
    second.signal(libc::SIGTERM);
    assert_died_by(second.wait_status(), libc::SIGTERM);
    assert!(!uds.exists(), "removed on exit");
}

/// The signals `/proc/PID/status` lists as ignored (`SigIgn`).
fn ignored_signals(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .unwrap()
        .trim();
    u64::from_str_radix(mask, 16).unwrap()
}

/// The metrics file's lines, each checked to be a JSON object.
fn metrics_lines(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(value.get("utc_timestamp_ms").is_some(), "{line}");
    }
    text.lines().count()
}

/// Sends `signal` to `ember` and checks a clean stop: the API socket removed,
/// one more metrics line than before, then death by that same signal.
fn assert_stops_cleanly(mut ember: Ember, signal: i32, metrics: &Path) {
    let before = metrics_lines(metrics);
    ember.signal(signal);
    assert_died_by(ember.wait_status(), signal);
    assert!(
        !ember.socket.exists(),
        "signal {signal}: socket left behind"
    );
    assert_eq!(
        metrics_lines(metrics),
        before + 1,
        "signal {signal}: no final metrics line"
    );
}

#[test]
fn every_termination_signal_stops_the_vm_cleanly() {
    // SIGQUIT's default action dumps core: not here.
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid rlimit; it only lowers this process's
    // (and its children's) core size limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) }, 0);
    for signal in [
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
    ] {
        let ember = Ember::start(&[]);
        let metrics = ember.put_metrics();
        ember.boot(ELF64_PATH, "console=ttyS0 ember.test=hlt", 1);
        ember.wait_for("hlt: parked");
        ember.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
        assert_eq!(metrics_lines(&metrics), 1);
        assert_alive(&ember, "Running");
        if signal == libc::SIGHUP {
            // Writes to a closed pipe or past RLIMIT_FSIZE are errors, not deaths.
            let ignored = ignored_signals(ember.pid());
            for ignored_signal in [libc::SIGPIPE, libc::SIGXFSZ] {
                assert_ne!(ignored & (1 << (ignored_signal - 1)), 0, "{ignored:#x}");
            }
        }
        assert_stops_cleanly(ember, signal, &metrics);
    }
}

#[test]
fn a_signal_before_the_vm_starts_still_flushes_the_metrics() {
    let ember = Ember::start(&[]);
    let metrics = ember.put_metrics();
    assert_alive(&ember, "Not started");
    assert_stops_cleanly(ember, libc::SIGUSR1, &metrics);
}

#[test]
fn values_beyond_firecrackers_limits_are_refused_at_put() {
    let ember = Ember::start(&[]);
    let machine =
        |vcpus: &str, mem: &str| format!(r#"{{"vcpu_count": {vcpus}, "mem_size_mib": {mem}}}"#);
    assert_refused(
        &ember,
        "PUT",
        "/machine-config",
        &machine("33", "128"),
        "invalid machine-config.vcpu_count: 33: The number of vCPUs must be greater than 0, less than 32",
    );
    ember.ok("PUT", "/machine-config", &machine("32", "128"));
    for (method, body) in [
        ("PUT", machine("1", "18446744073709551615")),
        (
            "PATCH",
            r#"{"mem_size_mib": 18446744073709551615}"#.to_owned(),
        ),
    ] {
        assert_refused(
            &ember,
            method,
            "/machine-config",
            &body,
            "invalid machine-config.mem_size_mib: guest memory of 18446744073709551615 MiB \
             is too large",
        );
    }
    // Just beyond the host's guest-physical address space (read as Ember does).
    let phys_bits = ember_vmm::host_phys_addr_bits();
    let beyond = (1u64 << (phys_bits - 20)).to_string();
    assert_refused(
        &ember,
        "PATCH",
        "/machine-config",
        &format!(r#"{{"mem_size_mib": {beyond}}}"#),
        &format!("beyond the {phys_bits}-bit guest-physical address space of this host"),
    );
    let config = ember.call("GET", "/machine-config", None).json();
    assert_eq!(
        (
            config["vcpu_count"].as_u64(),
            config["mem_size_mib"].as_u64()
        ),
        (Some(32), Some(128))
    );

    let boot_source =
        |args: &str| format!(r#"{{"kernel_image_path": "{ELF64_PATH}", "boot_args": "{args}"}}"#);
    assert_refused(
        &ember,
        "PUT",
        "/boot-source",
        &boot_source(&"x".repeat(2048)),
        "the kernel command line is 2048 bytes; the boot protocol allows at most 2047",
    );
    ember.ok("PUT", "/boot-source", &boot_source(&"x".repeat(2047)));
    assert_alive(&ember, "Not started");
}
