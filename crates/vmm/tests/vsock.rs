//! vsock end to end on KVM, Firecracker's hybrid way: host clients connect to
//! the device's Unix socket with `CONNECT <port>`, and guest connections to
//! port P reach a host listener at `<uds_path>_<P>`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{run_vm, Capture, Guest};
use ember_test_guests::{ELF64_PATH, PVH_PATH};
use ember_vmm::{build, VsockConfig};

fn vsock(uds: &Path) -> VsockConfig {
    VsockConfig {
        guest_cid: 42,
        uds_path: uds.to_owned(),
    }
}

fn wait_for(capture: &Capture, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !capture.text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} never appeared:\n{}",
            capture.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_guest_sees_its_cid() {
    let dir = tempfile::tempdir().unwrap();
    let run = Guest::new(ELF64_PATH, "vsock-info")
        .vsock(vsock(&dir.path().join("v.sock")))
        .run();
    run.assert_clean_reset();
    assert_eq!(run.field("vsock dev", "cid").as_deref(), Some("0x2a"));
}

#[test]
fn the_host_connects_to_a_guest_listener_and_data_flows_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let uds: PathBuf = dir.path().join("v.sock");
    let capture = Capture::default();
    let guest = Guest::new(PVH_PATH, "vsock-listen")
        .args("vsock.port=1234 vsock.len=16")
        .vsock(vsock(&uds));
    let vm = build(guest.config(&capture)).unwrap();
    let watcher = capture.clone();
    let client = std::thread::spawn(move || {
        wait_for(&watcher, "vsock-listen: ready");
        let mut stream = UnixStream::connect(&uds).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream.write_all(b"CONNECT 1234\n").unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut ok = String::new();
        reader.read_line(&mut ok).unwrap();
        stream.write_all(b"abcdefghijklmnop").unwrap();
        let mut echo = [0u8; 16];
        reader.read_exact(&mut echo).unwrap();
        (ok, echo)
    });
    let run = run_vm(vm, &capture, common::GUEST_DEADLINE);
    let (ok, echo) = client.join().unwrap();
    run.assert_clean_reset();
    assert!(ok.starts_with("OK ") && ok.ends_with('\n'), "{ok:?}");
    assert!(
        ok.trim_end()["OK ".len()..].parse::<u32>().is_ok(),
        "{ok:?}"
    );
    assert_eq!(&echo, b"ABCDEFGHIJKLMNOP");
    assert_eq!(
        run.field("vsock-listen received", "received").as_deref(),
        Some("abcdefghijklmnop")
    );
    assert!(run.metric("vsock", "conns_opened") >= 1);
}

#[test]
fn the_guest_connects_to_a_host_listener() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(format!("{}_1234", uds.display())).unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        (&stream).write_all(b"pong\n").unwrap();
        line
    });
    let run = Guest::new(ELF64_PATH, "vsock-connect")
        .args("vsock.port=1234")
        .vsock(vsock(&uds))
        .run();
    let line = server.join().unwrap();
    run.assert_clean_reset();
    assert_eq!(line, "hello from the guest\n");
    assert_eq!(
        run.field("vsock-connect status", "status").as_deref(),
        Some("ok")
    );
    // The guest prints bytes outside 0x21..0x7e, the newline here, as `?`.
    assert_eq!(
        run.field("vsock-connect status", "reply").as_deref(),
        Some("pong?")
    );
}

#[test]
fn a_port_nobody_listens_on_is_reset() {
    let dir = tempfile::tempdir().unwrap();
    let run = Guest::new(ELF64_PATH, "vsock-connect")
        .args("vsock.port=4321")
        .vsock(vsock(&dir.path().join("v.sock")))
        .run();
    run.assert_clean_reset();
    assert_eq!(
        run.field("vsock-connect status", "status").as_deref(),
        Some("rst")
    );
    assert!(run.metric("vsock", "rsts_sent") >= 1);
}

#[test]
fn a_socket_path_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    std::fs::write(&uds, "taken").unwrap();
    let err = build(
        Guest::new(ELF64_PATH, "vsock-info")
            .vsock(vsock(&uds))
            .config(&Capture::default()),
    )
    .unwrap_err();
    let err = ember_vmm::error_chain(&err);
    assert!(err.starts_with("vsock:"), "{err}");
    assert!(err.contains("v.sock"), "{err}");
    assert_eq!(std::fs::read_to_string(&uds).unwrap(), "taken");
}
