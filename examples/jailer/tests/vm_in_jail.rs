//! A test-guest VM inside the jail: `ember` jailed by `ember-jailer` as an
//! unprivileged user, with its seccomp filters on, boots a guest to completion;
//! while a guest is parked, the process shows the jail as its only mount, the
//! unprivileged ids, and a seccomp filter on every thread.
//!
//! `ember` is the sibling binary built by `cargo test --workspace`. It is
//! dynamically linked, so the test copies its ELF interpreter and libraries
//! (as `ldd` lists them) into the jail first, which is what lets it through
//! the jailer's check for dynamically linked programs (the interpreter is in
//! the jail); production jails should run a statically linked `ember`
//! instead (see crates/jailer/README.md).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_root, unique, Base, GID, JAILER, UID};

/// The `ember` binary next to this test's `ember-jailer`.
fn ember_binary() -> PathBuf {
    let path = Path::new(JAILER).with_file_name("ember");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p ember` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// Copies `ember`'s ELF interpreter and shared libraries into `root`.
fn copy_libraries(ember: &Path, root: &Path) {
    let out = Command::new("ldd").arg(ember).output().expect("ldd runs");
    assert!(out.status.success(), "ldd failed");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let file = line
            .split_whitespace()
            .find(|word| word.starts_with('/'))
            .map(PathBuf::from);
        let Some(file) = file else { continue };
        let target = root.join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
}

/// A jail for `id` prepared with the libraries and the test guest.
fn prepare(base: &Base, id: &str) -> PathBuf {
    let ember = ember_binary();
    let root = base.path().join("ember").join(id).join("root");
    std::fs::create_dir_all(&root).unwrap();
    copy_libraries(&ember, &root);
    std::fs::copy(ember_test_guests::PVH_PATH, root.join("guest")).unwrap();
    root
}

fn jailed_ember(base: &Base, id: &str, scenario: &str) -> Command {
    let ember = ember_binary();
    let cmdline = format!("console=ttyS0 ember.test={scenario}");
    let args = [
        "run",
        "--kernel",
        "/guest",
        "--vcpus",
        "2",
        "--mem",
        "64",
        "--cmdline",
        &cmdline,
    ];
    let mut command = base.command_for(ember.to_str().unwrap(), id, &[], &args);
    command.stdin(Stdio::null());
    command
}

#[test]
fn a_test_guest_runs_to_completion_in_the_jail() {
    require_root();
    let base = Base::new();
    let id = unique("done");
    prepare(&base, &id);
    let out = jailed_ember(&base, &id, "bootinfo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("mptable cpus=0x2"), "{stdout}");
    assert!(stdout.contains("guest: done"), "{stdout}");
}

#[test]
fn the_jailed_vmm_is_unprivileged_confined_and_filtered() {
    require_root();
    let base = Base::new();
    let id = unique("parked");
    let root = prepare(&base, &id);
    let mut child = jailed_ember(&base, &id, "hlt")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.map(|l| l.contains("hlt: parked")).unwrap_or(false)),
        "the guest never parked"
    );
    let pid = child.id();
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));

    let status = std::fs::read_to_string(proc_dir.join("status")).unwrap();
    let ids = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .unwrap()
    };
    assert_eq!(ids("Uid:"), vec![UID.to_string(); 4], "{status}");
    assert_eq!(ids("Gid:"), vec![GID.to_string(); 4], "{status}");

    let mountinfo = std::fs::read_to_string(proc_dir.join("mountinfo")).unwrap();
    assert_eq!(
        mountinfo.lines().count(),
        1,
        "only the jail is mounted:\n{mountinfo}"
    );
    let fields: Vec<&str> = mountinfo.split_whitespace().collect();
    assert_eq!(fields[4], "/", "mounted as the root: {mountinfo}");
    // Field 3 is the mounted directory within its file system: the jail.
    let jail_suffix = root.strip_prefix(base.scratch()).unwrap();
    assert!(
        Path::new(fields[3]).ends_with(jail_suffix),
        "{} is not the jail {}",
        fields[3],
        root.display()
    );

    let mut filtered = Vec::new();
    for task in std::fs::read_dir(proc_dir.join("task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm"))
            .unwrap()
            .trim()
            .to_owned();
        if name.starts_with("kvm") {
            continue; // KVM's own kernel workers are counted as the process's threads
        }
        let task_status = std::fs::read_to_string(task.join("status")).unwrap();
        let mode = task_status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .map(str::trim)
            .unwrap();
        assert_eq!(mode, "2", "thread {name} has no seccomp filter");
        filtered.push(name);
    }
    filtered.sort();
    assert_eq!(
        filtered,
        ["ember", "ember_devices", "fc_vcpu 0", "fc_vcpu 1"]
    );

    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the jailed VMM did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Death by the signal, as Firecracker (the jailer became ember).
    assert_eq!(status.code(), None, "{status:?}");
    assert_eq!(status.signal(), Some(libc::SIGTERM));
}

/// Sends `request` on a new connection to `socket` and returns the whole
/// answer (the request asks the server to close after it). A server that
/// closes without reading everything (a 503 over the connection cap) makes
/// the read after its answer fail: what came before is the answer.
fn exchange(socket: &Path, request: &str) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut chunk) {
        answer.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(answer).unwrap()
}

fn put(socket: &Path, path: &str, body: &str) -> String {
    let request = format!(
        "PUT {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(socket, &request)
}

/// Connects to `socket`, or fails the test with how the VMM ended and its log.
fn connect_or_report(socket: &Path, child: &mut std::process::Child) -> UnixStream {
    UnixStream::connect(socket).unwrap_or_else(|e| {
        let _ = child.kill();
        let mut log = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut log);
        panic!("cannot connect ({e}); the VMM: {:?}\n{log}", child.wait());
    })
}

#[test]
fn the_jailed_api_survives_hostile_clients() {
    require_root();
    let base = Base::new();
    let id = unique("api");
    let root = prepare(&base, &id);
    let mut child = base
        .command_for(
            ember_binary().to_str().unwrap(),
            &id,
            &[],
            &["--api-sock", "/api.sock"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let socket = root.join("api.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "the jailed API never accepted");
        assert!(child.try_wait().unwrap().is_none(), "the jailed VMM exited");
        std::thread::sleep(Duration::from_millis(10));
    }
    let boot = r#"{"kernel_image_path": "/guest", "boot_args": "console=ttyS0 ember.test=hlt"}"#;
    assert!(put(&socket, "/boot-source", boot).starts_with("HTTP/1.1 204"));
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert!(put(&socket, "/actions", start).starts_with("HTTP/1.1 204"));

    // Connections each holding a large partial body, then all dropped at
    // once: the allocation pattern that once ended the VMM.
    for _ in 0..3 {
        let held: Vec<UnixStream> = (0..60)
            .map(|_| {
                let mut stream = connect_or_report(&socket, &mut child);
                let head = "PUT /machine-config HTTP/1.1\r\nContent-Length: 51000\r\n\r\n";
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&[b'a'; 50_000]);
                stream
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Thousands of clients that hang up without reading.
    for _ in 0..2000 {
        let mut stream = connect_or_report(&socket, &mut child);
        let _ = stream.write_all(b"GET / HTTP/1.1\r\n\r\n");
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let answer = exchange(&socket, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        if !answer.starts_with("HTTP/1.1 503") || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""state":"Running""#), "{answer}");
    assert!(child.try_wait().unwrap().is_none(), "the jailed VMM died");

    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let mut log = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut log);
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{log}");
}
