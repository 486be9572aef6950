//! `PUT /serial` and `ember run --serial-out` with the real binary: the
//! guest's console lands in a file or FIFO instead of standard output, a FIFO
//! nobody reads costs counted, lost bytes and never a stuck guest, bad paths
//! are refused at the PUT, and the console cannot move once the VM runs.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ember_test_guests::ELF64_PATH;
use serde_json::Value;

use common::*;

/// A count scenario printing about `n` * 11 bytes and resetting at once.
fn count_cmdline(n: u32) -> String {
    format!("console=ttyS0 ember.test=count count.n={n} count.delay=0")
}

fn put_serial(ember: &Ember, path: &Path) -> Reply {
    ember.call(
        "PUT",
        "/serial",
        Some(&format!(r#"{{"serial_out_path": "{}"}}"#, path.display())),
    )
}

/// The one metrics line written at the exit, to `path`.
fn last_metrics(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(text.lines().last().expect("a metrics line")).unwrap()
}

#[test]
fn the_console_is_appended_to_the_file_and_not_to_stdout() {
    let mut ember = Ember::start(&[]);
    let console = temp_file(ember.dir(), "console.log", b"before\n");
    let reply = put_serial(&ember, &console);
    assert_eq!(reply.status, 204, "{}", reply.body);
    ember.boot(ELF64_PATH, &count_cmdline(3), 1);
    assert_eq!(ember.wait_exit(), 0);
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(text.starts_with("before\n"), "{text}");
    assert!(text.contains("count=0x2\n"), "{text}");
    assert!(text.contains("guest: done"), "{text}");
    assert!(
        !ember.output().contains("guest: start"),
        "{}",
        ember.output()
    );
}

#[test]
fn a_fifo_nobody_reads_loses_counted_bytes_and_the_guest_still_ends() {
    let mut ember = Ember::start(&[]);
    let fifo = ember.dir().join("console.fifo");
    mkfifo(&fifo);
    // Held open but never read, shrunk to one page so the guest's ~11 KB
    // overflow it: the pipe lives as long as this end.
    let held = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor this test owns.
    let size = unsafe { libc::fcntl(held.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert_eq!(size, 4096, "{}", std::io::Error::last_os_error());
    let metrics = ember.dir().join("metrics.json");
    ember.ok(
        "PUT",
        "/metrics",
        &format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
    );
    assert_eq!(put_serial(&ember, &fifo).status, 204);
    ember.boot(ELF64_PATH, &count_cmdline(1000), 1);
    assert_eq!(ember.wait_exit(), 0, "the guest reached its reset");

    let line = last_metrics(&metrics);
    let lost = line["uart"]["missed_write_count"].as_u64().unwrap();
    let written = line["uart"]["write_count"].as_u64().unwrap();
    assert!(lost > 0, "{line}");
    assert_eq!(written, 4096, "the pipe took one page: {line}");
    assert_eq!(line["put_api_requests"]["serial_count"], 1, "{line}");
    let mut head = String::new();
    (&held).take(4096).read_to_string(&mut head).unwrap();
    assert!(head.starts_with("guest: start"), "{head}");
}

#[test]
fn output_beyond_the_rate_limit_is_dropped_and_counted() {
    let mut ember = Ember::start(&[]);
    let console = ember.dir().join("console.log");
    let metrics = ember.dir().join("metrics.json");
    ember.ok(
        "PUT",
        "/metrics",
        &format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
    );
    // 100 bytes, then one byte per 1000 s.
    let body = format!(
        r#"{{"serial_out_path": "{}", "rate_limiter": {{"size": 100, "refill_time": 100000000}}}}"#,
        console.display()
    );
    let reply = ember.call("PUT", "/serial", Some(&body));
    assert_eq!(reply.status, 204, "{}", reply.body);
    ember.boot(ELF64_PATH, &count_cmdline(300), 1);
    assert_eq!(ember.wait_exit(), 0, "the guest reached its reset");
    let kept = std::fs::read(&console).unwrap();
    assert_eq!(kept.len(), 100, "{}", String::from_utf8_lossy(&kept));
    assert!(kept.starts_with(b"guest: start"));
    let line = last_metrics(&metrics);
    let dropped = line["uart"]["rate_limiter_dropped_bytes"].as_u64().unwrap();
    let written = line["uart"]["write_count"].as_u64().unwrap();
    assert!(dropped > 2000, "{line}");
    assert_eq!(
        written,
        dropped + 100,
        "dropped bytes count as written: {line}"
    );
    assert_eq!(line["uart"]["missed_write_count"], 0, "{line}");
}

#[test]
fn bad_bodies_and_paths_are_refused_at_the_put() {
    let ember = Ember::start(&[]);
    let dir = ember.dir().display().to_string();
    let cases = [
        (
            format!(r#"{{"serial_out_path": "{dir}"}}"#),
            "Is a directory",
        ),
        (
            format!(r#"{{"serial_out_path": "{dir}/missing/console"}}"#),
            "No such file or directory",
        ),
        (r#"{"serial_out_path": 3}"#.to_owned(), "deserializing"),
        (r#"{"serial_path": "x"}"#.to_owned(), "unknown field"),
        (
            r#"{"rate_limiter": {"size": "1", "refill_time": 1}}"#.to_owned(),
            "deserializing",
        ),
    ];
    for (body, needle) in cases {
        let reply = ember.call("PUT", "/serial", Some(&body));
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        assert!(reply.fault().contains(needle), "{body}: {}", reply.fault());
    }
    assert!(!ember.dir().join("missing").exists());
    // As in Firecracker, the console is no part of GET /vm/config.
    let config = temp_file(ember.dir(), "console.log", b"");
    assert_eq!(put_serial(&ember, &config).status, 204);
    let shown = ember.call("GET", "/vm/config", None).body;
    assert!(!shown.contains("serial"), "{shown}");
}

#[test]
fn put_serial_after_the_start_is_refused() {
    let ember = Ember::start(&[]);
    let console = ember.dir().join("console.log");
    assert_eq!(put_serial(&ember, &console).status, 204);
    ember.boot(ELF64_PATH, "console=ttyS0 ember.test=hlt", 1);
    let deadline = std::time::Instant::now() + DEADLINE;
    while !std::fs::read_to_string(&console)
        .unwrap()
        .contains("hlt: parked")
    {
        assert!(std::time::Instant::now() < deadline, "never parked");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let other = ember.dir().join("other.log");
    let reply = put_serial(&ember, &other);
    assert_eq!(reply.status, 400);
    assert!(
        reply.fault().contains("after starting"),
        "{}",
        reply.fault()
    );
    assert!(!other.exists());
}

#[test]
fn run_serial_out_sends_the_console_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let cmdline = count_cmdline(2);
    let out = ember_to_the_end(&[
        "run",
        "--kernel",
        ELF64_PATH,
        "--cmdline",
        &cmdline,
        "--serial-out",
        console.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stdout(&out).contains("guest:"), "{}", stdout(&out));
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(
        text.contains("count=0x1\n") && text.contains("guest: done"),
        "{text}"
    );

    let missing = dir.path().join("no/such/dir");
    let out = ember(&[
        "run",
        "--kernel",
        ELF64_PATH,
        "--serial-out",
        missing.to_str().unwrap(),
    ]);
    assert_error(&out, "--serial-out");
}
