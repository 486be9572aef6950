//! Snapshots through the real binary, seccomp on: Firecracker's
//! `PUT /snapshot/create` and `PUT /snapshot/load`, their refusals, the
//! latency metrics, and the command line's snapshot options.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};

use common::{ember, stderr, stdout, Ember};
use ember_test_guests::ELF64_PATH;

const SPIN: &str = "console=ttyS0 ember.test=spin count.delay=2000";

/// The last `tick=` value in `text`.
fn last_tick(text: &str) -> Option<u64> {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("tick="))
        .map(|v| u64::from_str_radix(v.trim().trim_start_matches("0x"), 16).unwrap())
}

/// Waits until the guest printed tick `n` or later.
fn wait_for_tick(ember: &Ember, n: u64) {
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while last_tick(&ember.output()).is_none_or(|t| t < n) {
        assert!(
            std::time::Instant::now() < deadline,
            "no tick {n}:\n{}",
            ember.output()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Asserts `method path body` gets a 400 whose fault message contains `needle`.
fn refused(ember: &Ember, method: &str, path: &str, body: &str, needle: &str) {
    let reply = ember.call(method, path, Some(body));
    assert_eq!(reply.status, 400, "{method} {path}: {}", reply.body);
    let fault = reply.fault();
    assert!(fault.contains(needle), "{method} {path}: {fault}");
}

fn create_body(state: &Path, mem: &Path, kind: &str) -> String {
    format!(
        r#"{{"snapshot_type": "{kind}", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        state.display(),
        mem.display()
    )
}

fn load_body(state: &Path, mem: &Path, resume: bool) -> String {
    format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": {resume}}}"#,
        state.display(),
        mem.display()
    )
}

/// A spinning guest booted, ticked, paused and saved; the files are in a
/// directory that outlives the process.
fn saved_guest(dir: &Path) -> (PathBuf, PathBuf, u64) {
    let ember = Ember::start(&[]);
    ember.boot(ELF64_PATH, SPIN, 1);
    wait_for_tick(&ember, 2);
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let tick = last_tick(&ember.output()).unwrap();
    let (state, mem) = (dir.join("vm.state"), dir.join("vm.mem"));
    ember.ok(
        "PUT",
        "/snapshot/create",
        &create_body(&state, &mem, "Full"),
    );
    assert_eq!(ember.state(), "Paused");
    (state, mem, tick)
}

#[test]
fn a_vm_saved_through_the_api_loads_in_a_new_process_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (state, mem, tick) = saved_guest(dir.path());

    let ember = Ember::start(&[]);
    let metrics = ember.put_metrics();
    ember.ok("PUT", "/snapshot/load", &load_body(&state, &mem, false));
    assert_eq!(ember.state(), "Paused");
    let config = ember.call("GET", "/machine-config", None).json();
    assert_eq!(config["mem_size_mib"], 64);
    assert_eq!(config["vcpu_count"], 1);
    let full = ember.call("GET", "/vm/config", None).json();
    assert_eq!(
        full["boot-source"]["kernel_image_path"], ELF64_PATH,
        "{full}"
    );
    assert_eq!(full["machine-config"]["mem_size_mib"], 64, "{full}");
    ember.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    wait_for_tick(&ember, tick + 2);
    let first = ember
        .output()
        .lines()
        .find_map(|l| l.strip_prefix("tick="))
        .map(|v| u64::from_str_radix(v.trim().trim_start_matches("0x"), 16).unwrap())
        .unwrap();
    assert!(first > tick, "restarted from {first} after {tick}");
    assert!(!ember.output().contains("spin: running"));

    ember.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(
        line["latencies_us"]["vmm_load_snapshot"].as_u64().unwrap() > 0,
        "{line}"
    );
    // A load after the VM exists is refused.
    let reply = ember.call(
        "PUT",
        "/snapshot/load",
        Some(&load_body(&state, &mem, true)),
    );
    assert_eq!(reply.status, 400);
    assert!(
        reply.fault().contains("after starting"),
        "{}",
        reply.fault()
    );
}

#[test]
fn snapshot_requests_are_refused_as_firecracker_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let (state, mem) = (dir.path().join("s"), dir.path().join("m"));
    let full = create_body(&state, &mem, "Full");
    let load = load_body(&state, &mem, false);
    let ember = Ember::start(&[]);

    refused(&ember, "PUT", "/snapshot/create", &full, "before starting");
    // A load of missing files: a 400, and the process is still there to
    // take another request.
    refused(
        &ember,
        "PUT",
        "/snapshot/load",
        &load,
        "Load snapshot error:",
    );
    assert_eq!(ember.state(), "Not started");
    // Uffd is refused by name; the deprecated field gets its header.
    let uffd =
        r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Uffd", "backend_path": "u"}}"#;
    refused(&ember, "PUT", "/snapshot/load", uffd, "Uffd");
    let reply = ember.call(
        "PUT",
        "/snapshot/load",
        Some(r#"{"snapshot_path": "/nonexistent/s", "mem_file_path": "/nonexistent/m"}"#),
    );
    assert_eq!(reply.status, 400);
    assert_eq!(reply.header("deprecation"), Some("true"));
    // After a boot-specific call, a load is refused.
    ember.ok(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{ELF64_PATH}", "boot_args": "{SPIN}"}}"#),
    );
    let not_allowed = "not allowed after configuring boot-specific resources";
    refused(&ember, "PUT", "/snapshot/load", &load, not_allowed);
    // Create while running.
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    ember.wait_for("tick=");
    refused(&ember, "PUT", "/snapshot/create", &full, "pause");
    assert!(!state.exists() && !mem.exists());
    // A diff without dirty page tracking.
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let diff = create_body(&state, &mem, "Diff");
    refused(
        &ember,
        "PUT",
        "/snapshot/create",
        &diff,
        "track_dirty_pages",
    );
    // An unwritable place.
    let nowhere = dir.path().join("no/such/dir");
    let body = create_body(&nowhere.join("s"), &nowhere.join("m"), "Full");
    refused(&ember, "PUT", "/snapshot/create", &body, "no/such/dir");
    // The VM is unharmed.
    ember.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    let tick = last_tick(&ember.output()).unwrap();
    wait_for_tick(&ember, tick + 1);
}

#[test]
fn the_command_line_describes_and_restores_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let (state, mem, tick) = saved_guest(dir.path());

    let out = ember(&["--snapshot-version"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim(), "v1.0.0");
    let out = ember(&["--describe-snapshot", state.to_str().unwrap()]);
    assert_eq!(stdout(&out).trim(), "v1.0.0", "{}", stderr(&out));
    let out = ember(&["snapshot", "describe", state.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(
        text.contains("1 vCPU(s)") && text.contains("64 MiB"),
        "{text}"
    );
    assert!(text.contains("kvm.vcpu.0"), "{text}");
    let out = ember(&["snapshot", "describe", mem.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("magic"), "{}", stderr(&out));

    // `ember run --restore` runs the saved guest on; it is stopped by a signal.
    let mut child = std::process::Command::new(common::EMBER)
        .args(["run", "--restore"])
        .arg(&state)
        .arg("--mem-file")
        .arg(&mem)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = common::collect_output(child.stdout.take().unwrap());
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while last_tick(&output()).is_none_or(|t| t < tick + 2) {
        assert!(std::time::Instant::now() < deadline, "{}", output());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    common::send_signal(i32::try_from(child.id()).unwrap(), libc::SIGTERM);
    child.wait().unwrap();

    let out = ember(&["run", "--restore", "s", "--kernel", "k"]);
    assert!(stderr(&out).contains("--kernel does not go with --restore"));
    let out = ember(&["run", "--restore", "s"]);
    assert!(stderr(&out).contains("--mem-file"));
}

#[test]
fn full_config_after_a_load_as_test_get_full_config_after_restoring_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let ember = Ember::start(&[]);
    let vsock = dir.path().join("v.sock");
    ember.ok(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{ELF64_PATH}", "boot_args": "{SPIN}"}}"#),
    );
    ember.ok(
        "PATCH",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": true, "track_dirty_pages": true}"#,
    );
    ember.ok(
        "PUT",
        "/balloon",
        r#"{"amount_mib": 1, "deflate_on_oom": true}"#,
    );
    ember.ok(
        "PUT",
        "/vsock",
        &format!(r#"{{"guest_cid": 15, "uds_path": "{}"}}"#, vsock.display()),
    );
    ember.ok("PUT", "/entropy", "{}");
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    wait_for_tick(&ember, 1);
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let before = ember.call("GET", "/vm/config", None).json();
    let (state, mem) = (dir.path().join("s"), dir.path().join("m"));
    ember.ok(
        "PUT",
        "/snapshot/create",
        &create_body(&state, &mem, "Full"),
    );
    drop(ember);

    let ember = Ember::start(&[]);
    let moved = dir.path().join("moved.sock");
    ember.ok(
        "PUT",
        "/snapshot/load",
        &format!(
            r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}},
                "vsock_override": {{"uds_path": "{}"}}, "resume_vm": true}}"#,
            state.display(),
            mem.display(),
            moved.display()
        ),
    );
    let mut expected = before.clone();
    expected["vsock"]["uds_path"] = serde_json::Value::from(moved.to_str().unwrap());
    // Dirty pages are tracked as the load asks (here: not), as in Firecracker.
    assert_eq!(before["machine-config"]["track_dirty_pages"], true);
    expected["machine-config"]["track_dirty_pages"] = serde_json::Value::from(false);
    let after = ember.call("GET", "/vm/config", None).json();
    assert_eq!(after, expected);
    assert!(moved.exists(), "the vsock socket is bound at the override");
}
