//! The jailer binary on the real kernel (as root): what the jailed program
//! sees (ids, descriptors, root, mounts, limits, session, namespaces) and what
//! the jail holds on the host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn the_program_runs_unprivileged_in_a_private_root_with_only_stdio_open() {
    require_root();
    let base = Base::new();
    let id = unique("basic");
    let leaked = std::fs::File::open("/proc/self/status").unwrap();
    let leaked_fd = std::os::fd::AsRawFd::as_raw_fd(&leaked);
    let mut command = base.command(&id, &[], &["--wait", "extra arg"]);
    // SAFETY: dup2 is async-signal-safe and the closure touches nothing else.
    unsafe {
        command.pre_exec(move || match libc::dup2(leaked_fd, 7) {
            -1 => Err(std::io::Error::last_os_error()),
            _ => Ok(()),
        });
    }
    let (child, report) = start_waiting(command);
    assert_eq!(
        report["pid"],
        child.id().to_string(),
        "the jailer became the program"
    );
    assert_eq!(report["uid"], format!("{UID},{UID},{UID}"));
    assert_eq!(report["gid"], format!("{GID},{GID},{GID}"));
    assert_eq!(report["groups"], "0");
    assert_eq!(report["fds"], "0,1,2", "fd 7 was inherited by the jailer");
    assert_eq!(report["root"], format!("dev,{PROBE_NAME},run"));
    // The jail's nodes work wherever the host has the devices behind them.
    for (device, host_path) in [("kvm", "/dev/kvm"), ("tun", "/dev/net/tun")] {
        if Path::new(host_path).exists() {
            assert_eq!(report[device], "ok", "{device}");
        }
    }
    assert_eq!(report["urandom"], "ok");
    assert_eq!(report["nofile"], "2048,2048", "Firecracker's default");

    // Its mount namespace has exactly one mount: the jail root, at "/".
    let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", child.id())).unwrap();
    let mounts: Vec<Vec<&str>> = mountinfo.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(mounts.len(), 1, "{mountinfo}");
    assert_eq!(mounts[0][4], "/", "{mountinfo}");
    let jail_suffix = format!("/{PROBE_NAME}/{id}/root");
    assert!(mounts[0][3].ends_with(&jail_suffix), "{mountinfo}");
    let own_ns = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let probe_ns = std::fs::read_link(format!("/proc/{}/ns/mnt", child.id())).unwrap();
    assert_ne!(own_ns, probe_ns);
    finish(child);

    // On the host: the program and the device nodes, owned by the jail user.
    let root = base.root(&id);
    let meta = std::fs::metadata(&root).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (UID, GID, 0o700)
    );
    for (path, numbers) in [
        ("dev/kvm", (10, 232)),
        ("dev/net/tun", (10, 200)),
        ("dev/urandom", (1, 9)),
    ] {
        let meta = std::fs::symlink_metadata(root.join(path)).unwrap();
        assert!(meta.file_type().is_char_device(), "{path}");
        assert_eq!(device_numbers(meta.rdev()), numbers, "{path}");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (UID, GID, 0o600),
            "{path}"
        );
    }
    let program = std::fs::metadata(root.join(PROBE_NAME)).unwrap();
    assert_eq!(
        program.uid(),
        0,
        "the program stays root's, read-only to the jail"
    );
    assert_eq!(program.mode() & 0o7777, 0o755);
    let host_program = std::fs::metadata(PROBE).unwrap();
    assert_ne!(
        (program.dev(), program.ino()),
        (host_program.dev(), host_program.ino()),
        "the jail holds a copy, not a hard link to the host's program"
    );
    assert_eq!(
        std::fs::read(root.join(PROBE_NAME)).unwrap(),
        std::fs::read(PROBE).unwrap()
    );
}

#[test]
fn root_ids_work_with_a_one_line_warning() {
    require_root();
    let base = Base::new();
    let mut command = jailer(&["--id", &unique("root-ids"), "--exec-file", PROBE]);
    command
        .args(["--uid", "0", "--gid", "0", "--chroot-base-dir"])
        .arg(base.path());
    let (code, stdout, stderr) = run(command);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report(&stdout)["uid"], "0,0,0");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("ember-jailer: warning: --uid 0 and --gid 0: "),
        "{stderr}"
    );
}

#[test]
fn resource_limits_are_applied() {
    require_root();
    let base = Base::new();
    let flags = [
        "--resource-limit",
        "fsize=4096",
        "--resource-limit",
        "no-file=128",
    ];
    let (code, stdout, stderr) =
        run(base.command(&unique("rlimit"), &flags, &["--write", "10000"]));
    assert_eq!(code, 0, "{stderr}");
    let report = report(&stdout);
    assert_eq!(report["nofile"], "128,128");
    assert_eq!(report["fsize"], "4096,4096");
    assert_eq!(report["write_error"], libc::EFBIG.to_string());
}

#[test]
fn new_pid_ns_runs_the_program_as_pid_1_and_records_its_pid() {
    require_root();
    let base = Base::new();
    let id = unique("pidns");
    let (code, stdout, stderr) = run(base.command(&id, &["--new-pid-ns"], &[]));
    assert_eq!(code, 0, "{stderr}");
    let report = report(&stdout);
    assert_eq!(report["pid"], "1", "{stdout}");
    assert_eq!(
        report["root"],
        format!("dev,{PROBE_NAME},{PROBE_NAME}.pid,run")
    );
    let pid_file = base.root(&id).join(format!("{PROBE_NAME}.pid"));
    let pid: u32 = std::fs::read_to_string(pid_file).unwrap().parse().unwrap();
    assert!(pid > 1);
}

fn wait_for(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with("done\n") {
                return text;
            }
        }
        assert!(Instant::now() < deadline, "no report at {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn daemonize_starts_a_session_with_streams_on_dev_null() {
    require_root();
    let base = Base::new();
    let id = unique("daemon");
    let (code, stdout, stderr) = run(base.command(&id, &["--daemonize"], &["--report", "/report"]));
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (0, "", ""));
    let report = report(&wait_for(&base.root(&id).join("report")));
    assert_eq!(report["sid"], report["pid"], "a session leader");
    assert_eq!(report["stdio"], "1:3,1:3,1:3", "/dev/null on 0, 1 and 2");
}

#[test]
fn daemonize_from_a_process_group_leader_forks_first() {
    require_root();
    let base = Base::new();
    let id = unique("leader");
    let mut command = base.command(&id, &["--daemonize"], &["--report", "/report"]);
    command.process_group(0);
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let jailer = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = report(&wait_for(&base.root(&id).join("report")));
    assert_ne!(
        report["pid"],
        jailer.to_string(),
        "the program runs in a child"
    );
    assert_eq!(report["sid"], report["pid"]);
    assert_eq!(report["stdio"], "1:3,1:3,1:3");
}

#[test]
fn the_program_joins_the_network_namespace() {
    require_root();
    // A process in a new network namespace provides the namespace file.
    let mut holder = Command::new("sleep");
    holder.arg("60").stdin(Stdio::null());
    // SAFETY: unshare is async-signal-safe and the closure touches nothing else.
    unsafe {
        holder.pre_exec(|| match libc::unshare(libc::CLONE_NEWNET) {
            -1 => Err(std::io::Error::last_os_error()),
            _ => Ok(()),
        });
    }
    let mut holder = holder.spawn().unwrap();
    let netns = format!("/proc/{}/ns/net", holder.id());
    let base = Base::new();
    let (child, _) =
        start_waiting(base.command(&unique("netns"), &["--netns", &netns], &["--wait"]));
    let probe_ns = std::fs::read_link(format!("/proc/{}/ns/net", child.id())).unwrap();
    let wanted = std::fs::read_link(&netns).unwrap();
    finish(child);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(probe_ns, wanted);
    assert_ne!(probe_ns, std::fs::read_link("/proc/self/ns/net").unwrap());
}

#[test]
fn the_program_gets_firecrackers_start_arguments_before_the_users() {
    require_root();
    let base = Base::new();
    for (name, flags) in [
        ("startargs", &[][..]),
        ("startargs-pidns", &["--new-pid-ns"][..]),
    ] {
        let id = unique(name);
        let before = monotonic_us();
        let (code, stdout, stderr) = run(base.command(&id, flags, &["user", "args"]));
        assert_eq!(code, 0, "{stderr}");
        let args = probe_args(&stdout);
        assert_eq!(args.len(), 10, "{args:?}");
        let names = [&args[0], &args[2], &args[4], &args[6]];
        assert_eq!(
            names,
            [
                "--id",
                "--start-time-us",
                "--start-time-cpu-us",
                "--parent-cpu-time-us"
            ],
            "{args:?}"
        );
        assert_eq!(args[1], id);
        let start: u64 = args[3].parse().unwrap();
        assert!(
            (before..=monotonic_us()).contains(&start),
            "{start} not while the jailer ran"
        );
        let start_cpu: u64 = args[5].parse().unwrap();
        let _parent_cpu: u64 = args[7].parse().unwrap();
        if name.ends_with("pidns") {
            assert_eq!(start_cpu, 0, "a forked child's CPU clock starts at 0");
        }
        assert_eq!(
            &args[8..],
            ["user", "args"],
            "the user's arguments come last"
        );
    }
}
