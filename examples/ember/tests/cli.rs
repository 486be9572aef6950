//! The `ember` binary end to end: boots through `ember run` and a config file,
//! exit codes, signals, and a one-line error for every kind of bad input.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ember_test_guests::{BZIMAGE_PATH, ELF64_PATH, PVH_PATH};

use common::*;

fn run_guest(kernel: &str, scenario: &str, extra: &[&str]) -> Output {
    let cmdline = format!("console=ttyS0 ember.test={scenario}");
    let mut args = vec!["run", "--kernel", kernel, "--cmdline", &cmdline];
    args.extend_from_slice(extra);
    ember(&args)
}

#[test]
fn run_boots_each_image_and_exits_0_on_reset() {
    for kernel in [ELF64_PATH, PVH_PATH, BZIMAGE_PATH] {
        let out = run_guest(kernel, "bootinfo", &["--vcpus", "2", "--mem", "256"]);
        assert_eq!(out.status.code(), Some(0), "{kernel}: {}", stderr(&out));
        assert!(
            stdout(&out).contains("mptable cpus=0x2"),
            "{}",
            stdout(&out)
        );
        assert!(stdout(&out).contains("guest: done"));
    }
}

#[test]
fn guest_args_follow_a_double_dash() {
    let out = ember(&[
        "run",
        "--kernel",
        ELF64_PATH,
        "--cmdline",
        "ember.test=bootinfo",
        "--",
        "init-arg",
        "x=1",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("cmdline=ember.test=bootinfo -- init-arg x=1"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn config_file_boot_logs_the_boot_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = temp_file(
        dir.path(),
        "vm.json",
        format!(
            r#"{{
              "boot-source": {{"kernel_image_path": "{PVH_PATH}",
                               "boot_args": "console=ttyS0 ember.test=boottimer"}},
              "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}},
              "drives": []
            }}"#
        )
        .as_bytes(),
    );
    let out = ember(&[
        "--no-api",
        "--config-file",
        config.to_str().unwrap(),
        "--boot-timer",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("boottimer: signalled"));
    let line = stderr(&out)
        .lines()
        .find(|l| l.contains("guest-boot-time-us="))
        .map(str::to_owned)
        .expect("boot-time line");
    let us: u64 = line
        .split("guest-boot-time-us=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(us > 0);
}

#[test]
fn logs_go_to_the_log_path() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ember.log");
    let out = run_guest(
        ELF64_PATH,
        "boottimer",
        &[
            "--log-path",
            log.to_str().unwrap(),
            "--level",
            "Debug",
            "--show-level",
            "--id",
            "t1",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("[t1:"), "{text}");
    assert!(text.contains(":INFO]"), "{text}");
    assert!(text.contains("guest-boot-time-us="), "{text}");
}

#[test]
fn serial_input_from_a_pipe_reaches_the_guest() {
    let mut child = Command::new(EMBER)
        .args(["run", "--kernel", PVH_PATH, "--cmdline", "ember.test=echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"ping through the uart\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("echo=ping through the uart"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn internal_error_exits_1_with_the_rip() {
    let out = run_guest(ELF64_PATH, "badinsn", &[]);
    assert_error(&out, "KVM internal error");
    let err = stderr(&out);
    assert!(err.contains("at guest RIP 0x10"), "{err}");
    assert!(stdout(&out).contains("badinsn: now"));
}

#[test]
fn sigterm_stops_a_parked_guest() {
    let mut child = Command::new(EMBER)
        .args([
            "run",
            "--kernel",
            ELF64_PATH,
            "--vcpus",
            "2",
            "--cmdline",
            "ember.test=hlt",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let parked = lines.any(|l| l.map(|l| l.contains("hlt: parked")).unwrap_or(false));
    assert!(parked);
    // SAFETY: sending a signal to our own child process by its pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ember did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_died_by(status, libc::SIGTERM);
}

#[test]
fn help_and_version() {
    let out = ember(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("ember run --kernel"));
    let out = ember(&["--version"]);
    assert!(
        stdout(&out).starts_with("Firecracker v"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("+ember."), "{}", stdout(&out));
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        &["--no-api"][..],
        &["run"],
        &["--bogus"],
        &["run", "--kernel", "k", "--vcpus", "lots"],
    ] {
        let out = ember(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).starts_with("ember: "), "{}", stderr(&out));
    }
}

#[test]
fn missing_or_unreadable_kernel_initrd_and_config() {
    assert_error(
        &ember(&["run", "--kernel", "/nonexistent/vmlinux"]),
        "cannot open kernel image /nonexistent/vmlinux: No such file",
    );
    let dir = tempfile::tempdir().unwrap();
    assert_error(
        &ember(&["run", "--kernel", dir.path().to_str().unwrap()]),
        &format!(
            "cannot open kernel image {}: it is a directory, not a regular file",
            dir.path().display()
        ),
    );
    assert_error(
        &ember(&[
            "run",
            "--kernel",
            ELF64_PATH,
            "--initrd",
            "/nonexistent/initrd",
        ]),
        "cannot open initrd /nonexistent/initrd",
    );
    assert_error(
        &ember(&["--config-file", "/nonexistent/vm.json", "--no-api"]),
        "cannot read config file /nonexistent/vm.json",
    );
}

#[test]
fn malformed_and_unknown_config() {
    let dir = tempfile::tempdir().unwrap();
    let bad = temp_file(
        dir.path(),
        "bad.json",
        b"{\n  \"boot-source\": {\n    \"kernel_image_path\": 7,\n",
    );
    let out = ember(&["--config-file", bad.to_str().unwrap(), "--no-api"]);
    assert_error(&out, "line 3 column");
    let unknown = temp_file(
        dir.path(),
        "unknown.json",
        br#"{"boot-source": {"kernel_image_path": "k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "cores": 2}}"#,
    );
    assert_error(
        &ember(&["--config-file", unknown.to_str().unwrap()]),
        "unknown field `cores`",
    );
    let zero = temp_file(
        dir.path(),
        "zero.json",
        format!(r#"{{"boot-source": {{"kernel_image_path": "{ELF64_PATH}"}}, "machine-config": {{"vcpu_count": 0, "mem_size_mib": 64}}}}"#).as_bytes(),
    );
    assert_error(
        &ember(&["--config-file", zero.to_str().unwrap()]),
        "machine-config.vcpu_count",
    );
}

#[test]
fn files_that_are_not_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let junk = temp_file(dir.path(), "junk", &[0x5a; 8192]);
    assert_error(
        &ember(&["run", "--kernel", junk.to_str().unwrap()]),
        "not a kernel image",
    );
    let empty = temp_file(dir.path(), "empty", &[]);
    assert_error(
        &ember(&["run", "--kernel", empty.to_str().unwrap()]),
        "not a kernel image",
    );

    let elf = std::fs::read(ELF64_PATH).unwrap();
    let truncated_elf = temp_file(dir.path(), "elf", &elf[..elf.len() / 2]);
    assert_error(
        &ember(&["run", "--kernel", truncated_elf.to_str().unwrap()]),
        "truncated ELF kernel",
    );
    let bz = std::fs::read(BZIMAGE_PATH).unwrap();
    let truncated_bz = temp_file(dir.path(), "bz", &bz[..bz.len() - 100]);
    assert_error(
        &ember(&["run", "--kernel", truncated_bz.to_str().unwrap()]),
        "truncated bzImage kernel",
    );
}

#[test]
fn bad_vcpu_counts() {
    assert_error(
        &ember(&["run", "--kernel", ELF64_PATH, "--vcpus", "0"]),
        "0 vCPUs requested: between 1 and",
    );
    for count in ["33", "255"] {
        assert_error(
            &ember(&["run", "--kernel", ELF64_PATH, "--vcpus", count]),
            &format!("{count} vCPUs requested: between 1 and 32"),
        );
    }
}

#[test]
fn bad_memory_sizes() {
    assert_error(
        &ember(&["run", "--kernel", ELF64_PATH, "--mem", "0"]),
        "guest memory size must be greater than zero",
    );
    assert_error(
        &ember(&["run", "--kernel", ELF64_PATH, "--mem", "1"]),
        "the kernel needs guest memory up to",
    );
    let dir = tempfile::tempdir().unwrap();
    let initrd = temp_file(dir.path(), "initrd", &vec![7u8; 3 << 20]);
    assert_error(
        &ember(&[
            "run",
            "--kernel",
            ELF64_PATH,
            "--mem",
            "3",
            "--initrd",
            initrd.to_str().unwrap(),
        ]),
        "does not fit in guest memory",
    );
    let with_mem = |mib: &str| ember(&["run", "--kernel", ELF64_PATH, "--mem", mib]);
    // The host's guest-physical width, as Ember reads it (CPUID 0x80000008).
    let phys_bits = u32::from(ember_vmm::host_phys_addr_bits());
    // 2^phys_bits bytes of RAM: the part above 3 GiB moves up past the 1 GiB
    // MMIO gap, so the RAM ends 1 GiB beyond the address space.
    let beyond_mib = 1u64 << (phys_bits - 20);
    let end = (1u64 << phys_bits) + (1 << 30);
    assert_error(
        &with_mem(&beyond_mib.to_string()),
        &format!(
            "guest memory of {beyond_mib} MiB would end at {end:#x}, beyond the \
             {phys_bits}-bit guest-physical address space of this host"
        ),
    );
    // Inside the host's width but beyond the 47-bit window where Linux maps a
    // process's memory on x86_64 (without an address hint, which Ember never
    // gives, on 4- and 5-level paging alike): refused when mapping.
    const USER_ADDRESS_BITS: u32 = 47;
    if phys_bits > USER_ADDRESS_BITS {
        // Halfway between the two (its end, 1 GiB further, is still inside).
        let between_mib = ((1u64 << (USER_ADDRESS_BITS - 20)) + (1u64 << (phys_bits - 20))) / 2;
        assert_error(
            &with_mem(&between_mib.to_string()),
            &format!("cannot map {between_mib} MiB of guest memory"),
        );
    }
    assert_error(
        &ember(&[
            "run",
            "--kernel",
            ELF64_PATH,
            "--mem",
            "18446744073709551615",
        ]),
        "guest memory of 18446744073709551615 MiB is too large",
    );
}

#[test]
fn command_line_too_long() {
    let long = "x".repeat(3000);
    assert_error(
        &ember(&["run", "--kernel", ELF64_PATH, "--cmdline", &long]),
        "the kernel command line is 3000 bytes; the boot protocol allows at most 2047",
    );
}

#[test]
fn kvm_device_missing() {
    assert_error(
        &ember(&[
            "run",
            "--kernel",
            ELF64_PATH,
            "--kvm-device",
            "/nonexistent/kvm",
        ]),
        "cannot open /nonexistent/kvm: No such file",
    );
}

#[test]
fn kvm_device_not_permitted() {
    assert!(
        is_root(),
        "this test must run as root to switch to an unprivileged user"
    );
    // Everything the unprivileged run needs, in a directory it can traverse,
    // plus a private KVM device node (mode 0600, owned by root).
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("ember");
    std::fs::copy(EMBER, &exe).unwrap();
    let kernel = dir.path().join("kernel");
    std::fs::copy(ELF64_PATH, &kernel).unwrap();
    let kvm = dir.path().join("kvm");
    let c_kvm = std::ffi::CString::new(kvm.to_str().unwrap()).unwrap();
    // SAFETY: mknod with a valid NUL-terminated path; 10:232 is the KVM device.
    let rc = unsafe {
        libc::mknod(
            c_kvm.as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(10, 232),
        )
    };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    let mut command = Command::new(&exe);
    command
        .args([
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--kvm-device",
            kvm.to_str().unwrap(),
        ])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null());
    // The copy's write descriptor may live on for a moment in a child another
    // test thread is forking (until its exec closes it): exec then fails with
    // "Text file busy". Retry briefly.
    let out = (0..100)
        .find_map(|_| match command.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(20));
                None
            }
            other => Some(other.unwrap()),
        })
        .expect("the copied binary stayed busy");
    assert_error(
        &out,
        &format!("cannot open {}: Permission denied", kvm.display()),
    );
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn drives_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let image = temp_file(dir.path(), "disk.img", &vec![0u8; 64 * 512]);
    let spec = format!("{},id=data", image.display());
    let out = ember(&[
        "run",
        "--kernel",
        ELF64_PATH,
        "--cmdline",
        "ember.test=blk-write blk.sector=0x2 blk.seed=0x5",
        "--drive",
        &spec,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("blk-write status=0x0"),
        "{}",
        stdout(&out)
    );
    let file = std::fs::read(&image).unwrap();
    assert!(file[2 * 512..3 * 512].iter().any(|b| *b != 0), "written");
    assert_error(
        &ember(&[
            "run",
            "--kernel",
            ELF64_PATH,
            "--drive",
            "/nonexistent/disk.img",
        ]),
        "drive `drive0`: block backing file /nonexistent/disk.img",
    );
    let bad = ember(&["run", "--kernel", ELF64_PATH, "--drive", "x.img,turbo"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn vsock_both_ways_with_seccomp_on() {
    use std::os::unix::net::{UnixListener, UnixStream};
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let spec = format!("cid=9,uds={}", uds.display());

    // Guest to host: a listener at <uds>_5000 answers.
    let listener = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        (&stream).write_all(b"ack\n").unwrap();
        line
    });
    let out = ember(&[
        "run",
        "--kernel",
        ELF64_PATH,
        "--vsock",
        &spec,
        "--cmdline",
        "ember.test=vsock-connect vsock.port=5000",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("vsock-connect status=ok reply=ack"),
        "{}",
        stdout(&out)
    );
    assert_eq!(server.join().unwrap(), "hello from the guest\n");

    // Host to guest: CONNECT to a guest listener.
    let mut child = Command::new(EMBER)
        .args(["run", "--kernel", PVH_PATH, "--vsock", &spec])
        .args([
            "--cmdline",
            "ember.test=vsock-listen vsock.port=77 vsock.len=4",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l
        .map(|l| l.contains("vsock-listen: ready"))
        .unwrap_or(false)));
    let mut stream = UnixStream::connect(&uds).unwrap();
    stream.write_all(b"CONNECT 77\n").unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK "), "{ok:?}");
    stream.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    std::io::Read::read_exact(&mut reader, &mut echo).unwrap();
    assert_eq!(&echo, b"PING");
    drop((stream, reader));
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn config_file_logger_and_metrics_objects_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("vm.log");
    let metrics = dir.path().join("vm.metrics");
    let config = temp_file(
        dir.path(),
        "vm.json",
        format!(
            r#"{{
              "boot-source": {{"kernel_image_path": "{ELF64_PATH}", "boot_args": "ember.test=boottimer"}},
              "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}},
              "logger": {{"log_path": "{}", "level": "Info", "show_level": true}},
              "metrics": {{"metrics_path": "{}"}}
            }}"#,
            log.display(),
            metrics.display()
        )
        .as_bytes(),
    );
    let out = ember(&["--no-api", "--config-file", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains(":INFO] guest-boot-time-us="),
        "{log_text}"
    );
    let last = std::fs::read_to_string(&metrics).unwrap();
    let line: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    assert!(line["uart"]["write_count"].as_u64().unwrap() > 0, "{line}");

    let bad = temp_file(
        dir.path(),
        "bad.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{ELF64_PATH}"}},
                "metrics": {{"metrics_path": "/nonexistent/dir/m"}}}}"#
        )
        .as_bytes(),
    );
    assert_error(
        &ember(&["--no-api", "--config-file", bad.to_str().unwrap()]),
        "cannot open the metrics file /nonexistent/dir/m",
    );
}
