//! The REST API end to end: an `ember --api-sock` process driven by an
//! in-process HTTP client and by curl, configuring, booting, pausing and
//! resuming test guests, and answering every kind of bad request with a 4xx and
//! a clear fault_message while it keeps serving.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ember_test_guests::{ELF64_PATH, PVH_PATH};

use common::*;

#[test]
fn configure_and_boot_entirely_over_the_api() {
    let mut ember = Ember::start(&[]);
    let info = ember.call("GET", "/", None);
    assert_eq!(info.status, 200);
    assert_eq!(info.json()["state"], "Not started");
    assert_eq!(info.json()["app_name"], "Ember");
    assert_eq!(ember.call("GET", "/version", None).status, 200);
    ember.boot(PVH_PATH, "console=ttyS0 ember.test=bootinfo", 2);
    ember.wait_for("guest: done");
    assert_eq!(ember.wait_exit(), 0);
    assert!(
        ember.output().contains("mptable cpus=0x2"),
        "{}",
        ember.output()
    );
    assert!(!ember.socket.exists(), "the socket is removed on exit");
}

#[test]
fn vm_config_reflects_what_was_put() {
    let ember = Ember::start(&[]);
    ember.ok(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{ELF64_PATH}", "boot_args": "a=b"}}"#),
    );
    ember.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 3, "mem_size_mib": 96}"#,
    );
    ember.ok("PATCH", "/machine-config", r#"{"mem_size_mib": 80}"#);
    let config = ember.call("GET", "/vm/config", None).json();
    assert_eq!(config["boot-source"]["boot_args"], "a=b");
    assert_eq!(config["machine-config"]["vcpu_count"], 3);
    assert_eq!(config["machine-config"]["mem_size_mib"], 80);
    let machine = ember.call("GET", "/machine-config", None).json();
    assert_eq!(machine["mem_size_mib"], 80);
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    let ember = Ember::start(&[]);
    ember.boot(
        ELF64_PATH,
        "console=ttyS0 ember.test=spin count.delay=20000",
        2,
    );
    ember.wait_for("tick=0x2\n");
    assert_eq!(ember.state(), "Running");
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(ember.state(), "Paused");
    let frozen = ember.count("tick=");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(ember.count("tick="), frozen, "ticks while paused");
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    ember.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(ember.state(), "Running");
    ember.wait_for(&format!("tick={:#x}\n", frozen + 2));
}

#[test]
fn ctrl_alt_del_reaches_the_guests_i8042() {
    let mut ember = Ember::start(&[]);
    ember.boot(PVH_PATH, "console=ttyS0 ember.test=keys", 1);
    ember.wait_for("keys: ready");
    ember.ok("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    ember.wait_for("keys: done count=0x4");
    let keys: Vec<String> = ember
        .output()
        .lines()
        .filter_map(|l| l.strip_prefix("key=").map(str::to_owned))
        .collect();
    // Firecracker's sequence: Ctrl, Alt, Delete make codes, no break codes.
    assert_eq!(keys, ["0x14", "0x11", "0xe0", "0x71"]);
    assert_eq!(ember.wait_exit(), 0);
}

#[test]
fn metrics_and_logs_go_where_configured() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ember.log");
    let metrics = dir.path().join("metrics.json");
    let mut ember = Ember::start(&[]);
    ember.ok(
        "PUT",
        "/logger",
        &format!(r#"{{"log_path": "{}", "level": "Debug", "show_level": true, "show_log_origin": true}}"#, log.display()),
    );
    ember.ok(
        "PUT",
        "/metrics",
        &format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
    );
    // As in Firecracker, flushing is for a started VM.
    let early = ember.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FlushMetrics"}"#),
    );
    assert_eq!(early.status, 400, "{early:?}");
    ember.boot(ELF64_PATH, "console=ttyS0 ember.test=boottimer", 1);
    assert_eq!(ember.wait_exit(), 0);

    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("guest-boot-time-us="), "{log_text}");
    assert!(log_text.contains(":INFO:"), "{log_text}");
    assert!(log_text.contains(".rs:"), "origin shown: {log_text}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty(), "a line at exit: {lines:?}");
    let last = lines.last().unwrap();
    assert!(last["vcpu"]["exit_io_out"].as_u64().unwrap() > 10);
    assert!(last["uart"]["write_count"].as_u64().unwrap() > 10);
    assert_eq!(last["put_api_requests"]["boot_source_count"], 1);
    assert_eq!(
        last["ember"]["api_server"]["put_count"], 6,
        "every PUT: no flush came between (the early one was refused)"
    );
    assert_eq!(last["i8042"]["reset_count"], 1);
    assert_eq!(last["logger"]["missed_metrics_count"], 0);
}

#[test]
fn a_log_fifo_nobody_reads_counts_lost_lines() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("log.fifo");
    let metrics = dir.path().join("metrics.json");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let mut ember = Ember::start(&[]);
    ember.ok(
        "PUT",
        "/logger",
        &format!(r#"{{"log_path": "{}", "level": "Trace"}}"#, fifo.display()),
    );
    ember.ok(
        "PUT",
        "/metrics",
        &format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
    );
    // Each failing request logs a line: far more than a pipe holds.
    let long_path = "/x".repeat(2000);
    for _ in 0..60 {
        let reply = ember.call(
            "PUT",
            "/boot-source",
            Some(&format!(r#"{{"kernel_image_path": "{long_path}"}}"#)),
        );
        assert_eq!(reply.status, 400);
    }
    ember.boot(ELF64_PATH, "console=ttyS0 ember.test=reset", 1);
    assert_eq!(ember.wait_exit(), 0);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(
        last["logger"]["missed_log_count"].as_u64().unwrap() > 0,
        "{last}"
    );
}

#[test]
fn curl_drives_the_api() {
    let ember = Ember::start(&[]);
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(&ember.socket)
            .args(args)
            .output()
            .expect("curl is needed for this test");
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_owned(), body.to_owned())
    };
    let (code, body) = curl(&["http://localhost/"]);
    assert_eq!(code, "200");
    assert!(body.contains("\"Not started\""), "{body}");
    let (code, _) = curl(&[
        "-X",
        "PUT",
        "http://localhost/machine-config",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"vcpu_count": 2, "mem_size_mib": 128}"#,
    ]);
    assert_eq!(code, "204");
    let (code, body) = curl(&[
        "-X",
        "PUT",
        "http://localhost/machine-config",
        "-d",
        "{broken",
    ]);
    assert_eq!(code, "400");
    assert!(body.contains("fault_message"), "{body}");
    let (code, body) = curl(&["http://localhost/machine-config"]);
    assert_eq!(code, "200");
    assert!(body.contains("\"vcpu_count\":2"), "{body}");
}

#[test]
fn bad_requests_get_400_and_the_vmm_keeps_serving() {
    let ember = Ember::start(&[]);
    let bad = |method: &str, path: &str, body: Option<&str>, needle: &str| {
        let reply = ember.call(method, path, body);
        assert_eq!(reply.status, 400, "{method} {path}: {}", reply.body);
        let fault = reply.fault();
        assert!(
            fault.contains(needle),
            "{method} {path}: {fault:?} lacks {needle:?}"
        );
    };
    bad(
        "PUT",
        "/machine-config",
        Some("{\"vcpu_count\": 2,"),
        "An error occurred when deserializing the json body of a request",
    );
    bad(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 2, "mem_size_mib": 8, "x": 1}"#),
        "unknown field `x`",
    );
    bad(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": true, "mem_size_mib": 8}"#),
        "invalid type",
    );
    bad(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 0, "mem_size_mib": 8}"#),
        "vcpu_count",
    );
    bad("DELETE", "/machine-config", None, "Invalid request method");
    bad("POST", "/actions", Some("{}"), "Invalid request method");
    bad(
        "PATCH",
        "/boot-source",
        Some("{}"),
        "Invalid request method and/or path",
    );
    bad(
        "GET",
        "/no/such/path",
        None,
        "Invalid request method and/or path: GET no.",
    );
    bad(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "Detonate"}"#),
        "unknown variant",
    );
    bad(
        "PATCH",
        "/vm",
        Some(r#"{"state": "Paused"}"#),
        "not supported before starting the microVM",
    );
    bad(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
        "not supported before starting the microVM",
    );
    bad(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FlushMetrics"}"#),
        "not supported before starting the microVM",
    );
    bad(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#),
        "The kernel file cannot be opened: No such file or directory (os error 2) (/nonexistent/vmlinux)",
    );
    bad(
        "PUT",
        "/boot-source",
        Some(&format!(
            r#"{{"kernel_image_path": "{ELF64_PATH}", "initrd_path": "/nonexistent/initrd"}}"#
        )),
        "The initrd file cannot be opened",
    );
    bad(
        "PUT",
        "/logger",
        Some(r#"{"log_path": "/nonexistent/dir/log"}"#),
        "cannot open log file",
    );
    bad(
        "PUT",
        "/metrics",
        Some(r#"{"metrics_path": "/nonexistent/dir/m"}"#),
        "cannot open the metrics file",
    );
    bad(
        "PUT",
        "/drives/rootfs",
        Some(
            r#"{"drive_id": "other", "path_on_host": "/x", "is_root_device": true, "is_read_only": true}"#,
        ),
        "The id from the path does not match the id from the body!",
    );

    // A body over the size limit.
    let huge = format!(r#"{{"kernel_image_path": "{}"}}"#, "a".repeat(60_000));
    let reply = ember.call("PUT", "/boot-source", Some(&huge));
    assert!((400..500).contains(&reply.status), "{reply:?}");

    // A body without a Content-Length: the body is not taken as one.
    let reply = raw(
        &ember.socket,
        b"PUT /machine-config HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{\"vcpu_count\": 2, \"mem_size_mib\": 64}",
    );
    assert_eq!(reply.status, 400, "{reply:?}");

    // Starting without a kernel fails, and the VMM stays configurable.
    let reply = ember.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(reply.status, 400);
    assert!(reply.fault().contains("boot-source"), "{}", reply.fault());
    assert_eq!(ember.state(), "Not started");
    // A file that is not a kernel fails at start, also without harm.
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), vec![0x42u8; 4096]).unwrap();
    ember.ok(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}"}}"#, junk.path().display()),
    );
    let reply = ember.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(reply.status, 400);
    assert!(
        reply.fault().contains("not a kernel image"),
        "{}",
        reply.fault()
    );

    assert_eq!(ember.call("GET", "/", None).status, 200, "still serving");
}

#[test]
fn wrong_state_and_double_start() {
    let ember = Ember::start(&[]);
    ember.boot(ELF64_PATH, "console=ttyS0 ember.test=hlt", 1);
    ember.wait_for("hlt: parked");
    for (method, path, body) in [
        ("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
        ),
        ("PATCH", "/machine-config", r#"{"vcpu_count": 2}"#),
        (
            "PUT",
            "/boot-source",
            &format!(r#"{{"kernel_image_path": "{ELF64_PATH}"}}"#),
        ),
        ("PUT", "/logger", r#"{"level": "Info"}"#),
    ] {
        let reply = ember.call(method, path, Some(body));
        assert_eq!(reply.status, 400, "{method} {path}");
        let fault = reply.fault();
        assert!(
            fault.contains("The requested operation is not supported after starting the microVM"),
            "{fault}"
        );
    }
    assert_eq!(ember.state(), "Running");
}

#[test]
fn a_stalled_client_does_not_block_others() {
    let ember = Ember::start(&[]);
    let mut stalled = UnixStream::connect(&ember.socket).unwrap();
    stalled
        .write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"vcpu")
        .unwrap();
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(ember.call("GET", "/", None).status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(stalled);
    assert_eq!(ember.call("GET", "/", None).status, 200);
}

#[test]
fn many_clients_at_once() {
    let ember = Ember::start(&[]);
    let socket = ember.socket.clone();
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                for j in 0..10 {
                    let mem = 64 + i * 10 + j;
                    let reply = request(
                        &socket,
                        "PATCH",
                        "/machine-config",
                        Some(&format!(r#"{{"mem_size_mib": {mem}}}"#)),
                    );
                    assert_eq!(reply.status, 204, "{reply:?}");
                    assert_eq!(request(&socket, "GET", "/", None).status, 200);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let metrics = ember.call("GET", "/machine-config", None).json();
    assert!(metrics["mem_size_mib"].as_u64().unwrap() >= 64);
}

#[test]
fn config_file_with_api_boots_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{ELF64_PATH}", "boot_args": "ember.test=spin count.delay=20000"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}}}}"#
        ),
    )
    .unwrap();
    let ember = Ember::start(&["--config-file", config.to_str().unwrap()]);
    ember.wait_for("tick=0x1");
    assert_eq!(ember.state(), "Running");
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(ember.state(), "Paused");
}

#[test]
fn socket_paths_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "precious").unwrap();
    let out = Command::new(EMBER)
        .arg("--api-sock")
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");

    // A socket left behind by a dead process is replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let mut child = Command::new(EMBER)
        .arg("--api-sock")
        .arg(&stale)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while request_ok(&stale).is_none() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_died_by(child.wait().unwrap(), libc::SIGTERM);
    assert!(!stale.exists(), "removed on exit");
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn disk(dir: &Path, name: &str, sectors: usize, byte: u8) -> PathBuf {
    let path = dir.join(name);
    let bytes: Vec<u8> = (0..sectors * 512).map(|i| byte ^ (i % 253) as u8).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

fn put_drive(ember: &Ember, id: &str, path: &Path, extra: &str) {
    ember.ok(
        "PUT",
        &format!("/drives/{id}"),
        &format!(
            r#"{{"drive_id": "{id}", "path_on_host": "{}", "is_root_device": false, "is_read_only": true{extra}}}"#,
            path.display()
        ),
    );
}

#[test]
fn swapping_a_drive_while_running_shows_the_new_content_after_a_rescan() {
    let dir = tempfile::tempdir().unwrap();
    let first = disk(dir.path(), "first.img", 16, 0x11);
    let second = disk(dir.path(), "second.img", 40, 0x77);
    let ember = Ember::start(&[]);
    put_drive(&ember, "data", &first, "");
    let reply = ember.call(
        "PATCH",
        "/drives/data",
        Some(&format!(
            r#"{{"drive_id": "data", "path_on_host": "{}"}}"#,
            second.display()
        )),
    );
    assert_eq!(reply.status, 400, "PATCH before start");
    assert!(reply
        .fault()
        .contains("not supported before starting the microVM"));
    ember.boot(ELF64_PATH, "console=ttyS0 ember.test=blk-rescan", 1);
    ember.wait_for("blk-rescan: waiting");
    let reply = ember.call("PATCH", "/drives/nope", Some(r#"{"drive_id": "nope"}"#));
    assert!(
        reply.fault().contains("no drive `nope`"),
        "{}",
        reply.fault()
    );
    ember.ok(
        "PATCH",
        "/drives/data",
        &format!(
            r#"{{"drive_id": "data", "path_on_host": "{}"}}"#,
            second.display()
        ),
    );
    ember.wait_for("phase=0x2");
    let output = ember.output();
    let phase = |n: &str| {
        output
            .lines()
            .find(|l| l.starts_with("blk-rescan") && l.contains(&format!("phase={n}")))
            .unwrap()
            .to_owned()
    };
    let sum = |path: &Path| format!("sum={:#x}", fnv1a(&std::fs::read(path).unwrap()[..512]));
    assert!(
        phase("0x1").contains("capacity=0x10") && phase("0x1").contains(&sum(&first)),
        "{output}"
    );
    assert!(
        phase("0x2").contains("capacity=0x28") && phase("0x2").contains(&sum(&second)),
        "{output}"
    );
}

#[test]
fn a_rate_limiter_is_updated_live() {
    let dir = tempfile::tempdir().unwrap();
    let image = disk(dir.path(), "disk.img", 8, 0x33);
    let mut ember = Ember::start(&[]);
    // One request a second: 40 reads would take more than half a minute.
    put_drive(
        &ember,
        "slow",
        &image,
        r#", "rate_limiter": {"ops": {"size": 1, "refill_time": 1000}}"#,
    );
    ember.boot(
        ELF64_PATH,
        "console=ttyS0 ember.test=blk-read blk.repeat=40",
        1,
    );
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !ember.output().contains("blk-read status"),
        "still throttled"
    );
    ember.ok(
        "PATCH",
        "/drives/slow",
        r#"{"drive_id": "slow", "rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}"#,
    );
    ember.wait_for("blk-read status=0x0");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ember.wait_exit(), 0);
}

#[test]
fn an_entropy_device_put_before_boot_serves_the_guest_at_its_rate() {
    let mut ember = Ember::start(&[]);
    // 2 requests a second, no burst: 6 requests are 4 past the bucket's
    // first fill, so they take at least 2 s.
    let (requests, per_second) = (6u64, 2u64);
    ember.ok(
        "PUT",
        "/entropy",
        &format!(r#"{{"rate_limiter": {{"ops": {{"size": {per_second}, "refill_time": 1000}}}}}}"#),
    );
    let started = Instant::now();
    ember.boot(
        ELF64_PATH,
        &format!("console=ttyS0 ember.test=rng-read rng.reqs={requests} rng.bytes=32"),
        1,
    );
    ember.wait_for("rng: reqs=");
    let elapsed = started.elapsed();
    let output = ember.output();
    assert!(
        output.contains(&format!("got={:#x} nonzero=0x1", requests * 32)),
        "{output}"
    );
    let lower = Duration::from_millis((requests - per_second) * 1000 / per_second);
    assert!(
        elapsed >= lower,
        "{requests} requests took {elapsed:?}, less than {lower:?}"
    );
    // Under the VMM thread's seccomp filter (getrandom allowed), to a clean
    // exit when the guest resets (PUT after the start: firecracker_compat.rs).
    assert_eq!(ember.wait_exit(), 0);
}

#[path = "../../../crates/devices/src/virtio/net/tests/host.rs"]
mod host;

#[test]
fn network_interfaces_over_the_api() {
    // ember starts from a thread in a private network namespace, so it and its
    // TAP live there.
    host::in_netns(|| {
        let ember = Ember::start(&[]);
        let bad = ember.call(
            "PUT",
            "/network-interfaces/eth0",
            Some(r#"{"iface_id": "eth0", "host_dev_name": "ember-api0", "guest_mac": "zz:00"}"#),
        );
        assert!(bad.fault().contains("not a MAC address"), "{}", bad.fault());
        let bad = ember.call(
            "PUT",
            "/network-interfaces/eth0",
            Some(r#"{"iface_id": "eth9", "host_dev_name": "ember-api0"}"#),
        );
        assert!(bad.fault().contains("[eth0]"), "{}", bad.fault());
        ember.ok(
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "ember-api0", "guest_mac": "06:00:ac:10:00:02",
                "rx_rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}}"#,
        );
        let early = ember.call(
            "PATCH",
            "/network-interfaces/eth0",
            Some(r#"{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 5, "refill_time": 100}}}"#),
        );
        assert!(early
            .fault()
            .contains("not supported before starting the microVM"));
        ember.boot(ELF64_PATH, "console=ttyS0 ember.test=net-recv", 1);
        let port = host::HostPort::new("ember-api0");
        ember.wait_for("net-recv: ready");
        ember.ok(
            "PATCH",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 1000000, "refill_time": 100}}}"#,
        );
        let unknown = ember.call(
            "PATCH",
            "/network-interfaces/eth7",
            Some(r#"{"iface_id": "eth7"}"#),
        );
        assert!(
            unknown.fault().contains("no network interface `eth7`"),
            "{}",
            unknown.fault()
        );
        let mut frame = vec![0x42u8; 80];
        frame[..6].copy_from_slice(&[0x06, 0x00, 0xac, 0x10, 0x00, 0x02]);
        frame[12..14].copy_from_slice(&[0x88, 0xb5]);
        let config = ember.call("GET", "/vm/config", None).json();
        assert_eq!(
            config["network-interfaces"][0]["guest_mac"],
            "06:00:ac:10:00:02"
        );
        port.send(&frame);
        ember.wait_for("net-recv len=0x50 ethertype=0x88b5");
    });
}
