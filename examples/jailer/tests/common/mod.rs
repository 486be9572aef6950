//! Helpers for the ember-jailer integration tests: running the binary on the
//! static probe program, reading the probe's `key=value` report, and finding
//! the host's pids cgroup hierarchy.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test file uses part of it

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The jailer binary under test.
pub const JAILER: &str = env!("CARGO_BIN_EXE_ember-jailer");
/// The statically linked probe that build.rs makes.
pub const PROBE: &str = env!("EMBER_JAIL_PROBE");
/// The probe's name, hence its name in the jail and in cgroup paths.
pub const PROBE_NAME: &str = "ember-jail-probe";
/// The unprivileged ids the probe runs as.
pub const UID: u32 = 4321;
/// See [`UID`].
pub const GID: u32 = 8765;

/// Fails (never skips) when not root: jailing needs mknod, mount namespaces
/// and cgroups.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the ember-jailer integration tests must run as root (mknod, mount namespaces, cgroups)"
    );
}

/// A jail id unique to this test process.
pub fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// The jailer binary with `args`.
pub fn jailer(args: &[&str]) -> Command {
    let mut command = Command::new(JAILER);
    command.args(args);
    command
}

/// A chroot base in a fresh temporary directory (not created yet, so a test
/// can check that a failure leaves no trace of it).
pub struct Base {
    tmp: tempfile::TempDir,
}

impl Base {
    /// A new base.
    pub fn new() -> Base {
        Base {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// The chroot base directory.
    pub fn path(&self) -> PathBuf {
        self.tmp.path().join("base")
    }

    /// The jail root for `id`.
    pub fn root(&self, id: &str) -> PathBuf {
        self.path().join(PROBE_NAME).join(id).join("root")
    }

    /// A scratch directory beside the base.
    pub fn scratch(&self) -> &Path {
        self.tmp.path()
    }

    /// The jailer command for `id` with `flags`, running `exec` (the probe
    /// by default) with `args`.
    pub fn command(&self, id: &str, flags: &[&str], args: &[&str]) -> Command {
        self.command_for(PROBE, id, flags, args)
    }

    /// [`Base::command`] for another program.
    pub fn command_for(&self, exec: &str, id: &str, flags: &[&str], args: &[&str]) -> Command {
        let mut command = jailer(&["--id", id, "--exec-file", exec]);
        command
            .args(["--uid", &UID.to_string(), "--gid", &GID.to_string()])
            .arg("--chroot-base-dir")
            .arg(self.path())
            .args(flags)
            .arg("--")
            .args(args);
        command
    }

    /// Whether the chroot base exists at all.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }
}

/// The arguments the probe reports it was given (its `args=` line), split
/// on spaces.
pub fn probe_args(stdout: &str) -> Vec<String> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("args="))
        .expect("the probe reports its arguments");
    line.split(' ').map(str::to_owned).collect()
}

/// `CLOCK_MONOTONIC` in microseconds, as the jailer's `--start-time-us`.
pub fn monotonic_us() -> u64 {
    ember_jailer::StartTimes::now().monotonic_us
}

/// Parses `key=value` pairs, several per line allowed.
pub fn report(text: &str) -> BTreeMap<String, String> {
    text.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Runs `command` to the end and returns its status code, stdout and stderr.
pub fn run(mut command: Command) -> (i32, String, String) {
    let output = command.stdin(Stdio::null()).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Starts `command` (whose probe was given `--wait`) and reads its report up
/// to the `ready` line. The child's stdin is a pipe: dropping it ends the probe.
pub fn start_waiting(mut command: Command) -> (Child, BTreeMap<String, String>) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut text = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line == "ready" {
            return (child, report(&text));
        }
        text.push_str(&line);
        text.push('\n');
    }
    let output = child.wait_with_output().unwrap();
    panic!(
        "the probe ended before `ready`: {:?}\nstdout: {text}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Ends a probe started by [`start_waiting`] and checks it exited 0.
pub fn finish(mut child: Child) {
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "probe: {status:?}");
}

/// Where the pids controller can be used: the cgroup version to ask for and
/// the hierarchy's mount point (v1 when mounted, as on hybrid hosts, else v2).
pub fn pids_hierarchy() -> (&'static str, PathBuf) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut v2 = None;
    for line in mountinfo.lines() {
        let Some((head, tail)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = PathBuf::from(head.split(' ').nth(4).unwrap_or_default());
        let mut tail = tail.split(' ');
        let fs_type = tail.next().unwrap_or_default();
        let options = tail.nth(1).unwrap_or_default();
        if fs_type == "cgroup" && options.split(',').any(|o| o == "pids") {
            return ("1", mount_point);
        }
        if fs_type == "cgroup2" && v2.is_none() {
            v2 = Some(mount_point);
        }
    }
    let v2 = v2.expect("no cgroup v1 pids hierarchy and no cgroup2 mount");
    let controllers = std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap();
    assert!(
        controllers.split_whitespace().any(|c| c == "pids"),
        "the pids controller is neither mounted as v1 nor offered by cgroup2 at {}",
        v2.display()
    );
    ("2", v2)
}

/// Removes `<mount>/<parent>/<id>` and its parent, which a successful jail
/// leaves behind, when dropped (so also when a test fails).
pub struct CgroupCleanup {
    dirs: [PathBuf; 2],
}

impl CgroupCleanup {
    /// Cleans up the jail cgroup `id` below `<mount>/<parent>`.
    pub fn new(mount: &Path, parent: &str, id: &str) -> CgroupCleanup {
        let top = mount.join(parent);
        CgroupCleanup {
            dirs: [top.join(id), top],
        }
    }
}

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // Best effort: a failed test may have left a process in it.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A jail with its own cgroup, below a parent cgroup unique to this test
/// process: its id and parent, where the cgroups go, and their clean-up.
pub struct JailCgroup {
    /// The jail id.
    pub id: String,
    /// The parent cgroup (`--parent-cgroup`).
    pub parent: String,
    /// The cgroup version (`--cgroup-version`).
    pub version: &'static str,
    /// The hierarchy's mount point.
    pub mount: PathBuf,
    _cleanup: CgroupCleanup,
}

impl JailCgroup {
    /// Jail `name` (parent `ember-test-<name>`) in the pids hierarchy (see
    /// [`pids_hierarchy`]).
    pub fn pids(name: &str) -> JailCgroup {
        let (version, mount) = pids_hierarchy();
        JailCgroup::new(name, version, mount)
    }

    /// Jail `name` (parent `ember-test-<name>`) in the cgroup `version`
    /// hierarchy mounted at `mount`.
    pub fn new(name: &str, version: &'static str, mount: PathBuf) -> JailCgroup {
        let id = unique(name);
        let parent = unique(&format!("ember-test-{name}"));
        let cleanup = CgroupCleanup::new(&mount, &parent, &id);
        JailCgroup {
            id,
            parent,
            version,
            mount,
            _cleanup: cleanup,
        }
    }

    /// The jailer flags for this cgroup, with one `--cgroup` per setting.
    pub fn flags<'a>(&'a self, settings: &[&'a str]) -> Vec<&'a str> {
        let mut flags = vec![
            "--cgroup-version",
            self.version,
            "--parent-cgroup",
            &self.parent,
        ];
        for setting in settings {
            flags.extend(["--cgroup", *setting]);
        }
        flags
    }

    /// The jail's own cgroup directory: `<mount>/<parent>/<id>`, as
    /// Firecracker's jailer makes it.
    pub fn leaf(&self) -> PathBuf {
        self.mount.join(&self.parent).join(&self.id)
    }

    /// Checks that the jailer removed every cgroup it created.
    pub fn assert_removed(&self) {
        assert!(
            !self.mount.join(&self.parent).exists(),
            "the cgroups were left behind"
        );
    }
}

/// `major:minor` of a device number.
pub fn device_numbers(rdev: u64) -> (u32, u32) {
    (libc::major(rdev), libc::minor(rdev))
}
