//! A jail: built on the host by [`Jail::prepare`], entered and handed to the
//! program by [`Jail::exec`]. Both record what they create in one undo list,
//! which takes everything back if any step fails.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use crate::args::JailConfig;
use crate::cgroup::Cgroups;
use crate::dirs::Dir;
use crate::process::{self, Launch, Stage};
use crate::undo::Undo;
use crate::{mount_ns, sys, Error, Result};

/// Device nodes made in the jail: path below `dev`, name, major and minor.
const DEVICES: [(&str, &std::ffi::CStr, (u32, u32)); 3] = [
    ("dev", c"kvm", (10, 232)),
    ("dev", c"urandom", (1, 9)),
    ("dev/net", c"tun", (10, 200)),
];

/// The jailer process is left holding this when the program runs in a child
/// it forked (`--new-pid-ns`, or `--daemonize` from a process-group leader):
/// the program has started and the caller should exit with status 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forked {
    /// The child's pid, as seen by the caller.
    pub pid: i32,
}

/// A moment on the monotonic clock and in this process's CPU time: when the
/// jailer started, for the start-time arguments it passes to the program as
/// Firecracker's jailer does (and, in the program, the end of its start-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartTimes {
    /// `CLOCK_MONOTONIC` in microseconds.
    pub monotonic_us: u64,
    /// This process's CPU time in microseconds.
    pub cpu_us: u64,
}

impl StartTimes {
    /// Now.
    pub fn now() -> StartTimes {
        StartTimes {
            monotonic_us: sys::clock_us(libc::CLOCK_MONOTONIC),
            cpu_us: sys::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID),
        }
    }
}

/// The arguments Firecracker's jailer puts before the user's (after `--`):
/// `--id ID --start-time-us N --start-time-cpu-us N --parent-cpu-time-us N`.
/// `start` is when the jailer started; `forked` says whether the program runs
/// in a child forked after now, whose CPU clock starts again from 0, so its
/// start CPU time is 0 and all the jailer's CPU time so far is the parent's.
///
/// # Example
///
/// ```
/// use ember_jailer::{firecracker_args, StartTimes};
///
/// let args = firecracker_args("vm1", StartTimes::now(), true);
/// assert_eq!(args[..2], ["--id", "vm1"]);
/// assert_eq!(args[4..6], ["--start-time-cpu-us", "0"], "a forked child starts from 0");
/// ```
pub fn firecracker_args(id: &str, start: StartTimes, forked: bool) -> Vec<String> {
    let cpu_now = sys::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID);
    let start_cpu = if forked { 0 } else { cpu_now };
    let parent_cpu = cpu_now.saturating_sub(start.cpu_us);
    vec![
        "--id".to_owned(),
        id.to_owned(),
        "--start-time-us".to_owned(),
        start.monotonic_us.to_string(),
        "--start-time-cpu-us".to_owned(),
        start_cpu.to_string(),
        "--parent-cpu-time-us".to_owned(),
        parent_cpu.to_string(),
    ]
}

/// A jail built on the host, ready to be entered.
#[derive(Debug)]
pub struct Jail {
    config: JailConfig,
    root: Dir,
    cgroups: Option<Cgroups>,
    dev_null: Option<OwnedFd>,
    program: CString,
    user_args: Vec<CString>,
    undo: Undo,
}

fn cstring(text: OsString) -> Result<CString> {
    CString::new(text.into_vec())
        .map_err(|_| Error::Usage("an argument contains a NUL byte".to_owned()))
}

impl Jail {
    /// Builds the jail on the host: the directory tree
    /// `<chroot-base>/<exec-name>/<id>/root` (directories that already exist
    /// are reused), a copy of the program in it (mode 0755, root's), the device
    /// nodes `dev/kvm`, `dev/net/tun` and `dev/urandom` and the directories
    /// `dev`, `dev/net`, `run` and the root itself owned by the jail's user
    /// with mode 0700, then the cgroups with their values. On error, all of it
    /// is removed again.
    pub fn prepare(config: JailConfig) -> Result<Jail> {
        let mut undo = Undo::new();
        let base = Dir::create_all(config.chroot_base(), &mut undo)?;
        let (exec_dir, _) = base.subdir(config.exec_name(), 0o755, &mut undo)?;
        let (id_dir, _) = exec_dir.subdir(OsStr::new(config.id()), 0o755, &mut undo)?;
        let (root, _) = id_dir.subdir(OsStr::new("root"), 0o700, &mut undo)?;
        root.place_exec(config.exec_name(), config.exec_file(), &mut undo)?;

        let owner = (config.uid(), config.gid());
        let (dev, _) = root.subdir(OsStr::new("dev"), 0o700, &mut undo)?;
        let (net, _) = dev.subdir(OsStr::new("net"), 0o700, &mut undo)?;
        for (dir, name, numbers) in DEVICES {
            let dir = if dir == "dev" { &dev } else { &net };
            dir.mknod(name, numbers, owner, 0o600, &mut undo)?;
        }
        let (run, _) = root.subdir(OsStr::new("run"), 0o700, &mut undo)?;
        for dir in [&net, &dev, &run, &root] {
            dir.own(owner.0, owner.1, 0o700, &mut undo)?;
        }

        let cgroups = match config.cgroups() {
            Some(plan) => Some(plan.create(&mut undo)?),
            None => None,
        };
        let dev_null = if config.daemonize() {
            let fd =
                sys::open_at(None, c"/dev/null", libc::O_RDWR, 0).map_err(|source| Error::Fs {
                    action: "open",
                    path: "/dev/null".into(),
                    source,
                })?;
            Some(fd)
        } else {
            None
        };

        let mut program = OsString::from("/");
        program.push(config.exec_name());
        let program = cstring(program)?;
        let user_args = config
            .exec_args()
            .iter()
            .map(|arg| cstring(arg.clone()))
            .collect::<Result<_>>()?;
        Ok(Jail {
            config,
            root,
            cgroups,
            dev_null,
            program,
            user_args,
            undo,
        })
    }

    /// The program's `argv`: its path in the jail, [`firecracker_args`], then
    /// the user's arguments (those after `--`), in Firecracker's jailer's order.
    fn argv(&self, forked: bool) -> Result<Vec<CString>> {
        let mut argv = vec![self.program.clone()];
        for arg in firecracker_args(self.config.id(), self.config.start_times(), forked) {
            argv.push(cstring(arg.into())?);
        }
        argv.extend(self.user_args.iter().cloned());
        Ok(argv)
    }

    /// The jail's root directory on the host.
    pub fn root_path(&self) -> &Path {
        self.root.path()
    }

    /// The validated configuration.
    pub fn config(&self) -> &JailConfig {
        &self.config
    }

    /// Enters the jail and executes the program in it, in this order: every
    /// descriptor but 0, 1 and 2 is marked close-on-exec; a new mount
    /// namespace is entered and `pivot_root` makes the jail its root; the
    /// process joins its cgroups and network namespace and sets its resource
    /// limits; with `--daemonize` it starts a new session; with
    /// `--new-pid-ns` it forks the program's process as PID 1 of a new PID
    /// namespace (writing its pid to `/<exec-name>.pid` in the jail); finally
    /// the standard streams go to `/dev/null` when daemonizing, privileges
    /// drop to the jail's gid and uid, and the program is executed.
    ///
    /// Without a fork this returns only on failure. With one, the parent
    /// returns [`Forked`] once the child has executed the program, or the
    /// child's error. Either way, a failure removes everything the jail
    /// created. Call it from a single-threaded process.
    pub fn exec(mut self) -> Result<Forked> {
        process::close_inherited_on_exec()?;
        self.enter_namespaces_and_limits()?;
        let setsid_in_child = self.start_session()?;
        if self.config.new_pid_ns() {
            sys::unshare(libc::CLONE_NEWPID).map_err(|source| Error::Sys {
                call: "unshare(CLONE_NEWPID)",
                source,
            })?;
        }
        let forks = self.config.new_pid_ns() || setsid_in_child;
        let argv = self.argv(forks)?;
        let launch = Launch {
            uid: self.config.uid(),
            gid: self.config.gid(),
            dev_null: self.dev_null.as_ref().map(AsFd::as_fd),
            program: &self.program,
            argv: &argv,
        };
        if !forks {
            let (stage, source) = process::drop_privileges_and_exec(&launch);
            return Err(Error::Sys {
                call: stage.call_failing_with(&source),
                source,
            });
        }
        let child = fork_launcher(&launch, setsid_in_child)?;
        self.start_child(child)
    }

    /// Enters the jail's mount namespace and root, its cgroups and network
    /// namespace, and applies its resource limits.
    fn enter_namespaces_and_limits(&mut self) -> Result<()> {
        mount_ns::enter(&self.root)?;
        if let Some(cgroups) = self.cgroups.take() {
            cgroups.attach(&mut self.undo)?;
        }
        if let Some(netns) = self.config.netns() {
            netns.join()?;
        }
        for limit in self.config.resource_limits() {
            limit.apply()?;
        }
        Ok(())
    }

    /// With `--daemonize`, starts a new session; returns whether a forked
    /// child must do it instead (a process-group leader cannot).
    fn start_session(&self) -> Result<bool> {
        if !self.config.daemonize() {
            return Ok(false);
        }
        match sys::setsid() {
            Ok(()) => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(true),
            Err(source) => Err(Error::Sys {
                call: "setsid",
                source,
            }),
        }
    }

    /// In the parent, once the child is forked: writes its pid file (with
    /// `--new-pid-ns`), lets it go, and waits for its report that the program
    /// runs (then the undo is committed) or why it does not.
    fn start_child(mut self, child: ForkedLauncher) -> Result<Forked> {
        let pid = child.pid;
        if self.config.new_pid_ns() {
            let mut name = self.config.exec_name().to_owned();
            name.push(".pid");
            let written = self
                .root
                .create_file(&name, pid.to_string().as_bytes(), &mut self.undo);
            if let Err(e) = written {
                kill_and_reap(pid);
                return Err(e);
            }
        }
        if let Err(source) = sys::write_all(child.go.as_fd(), b"g") {
            kill_and_reap(pid);
            return Err(Error::Sys {
                call: "starting the forked child",
                source,
            });
        }
        drop(child.go);
        match process::read_report(&child.report) {
            Ok(None) => {
                std::mem::take(&mut self.undo).commit();
                Ok(Forked { pid })
            }
            Ok(Some((stage, source))) => {
                let _ = sys::wait(pid);
                Err(Error::Child {
                    call: stage.call_failing_with(&source),
                    source,
                })
            }
            Err(e) => {
                kill_and_reap(pid);
                Err(e)
            }
        }
    }
}

/// The parent's side of a forked child that will execute the program.
struct ForkedLauncher {
    /// The child's pid.
    pid: i32,
    /// Where the child reports why it could not execute the program; closed
    /// without a word when it did.
    report: OwnedFd,
    /// Written once the parent lets the child go on.
    go: OwnedFd,
}

/// Forks a child that waits for the parent's go, starts a session if
/// `setsid_in_child`, drops privileges and executes the program (or reports
/// why it could not and exits, leaving the undo to the parent).
fn fork_launcher(launch: &Launch<'_>, setsid_in_child: bool) -> Result<ForkedLauncher> {
    let pipe = || {
        sys::pipe().map_err(|source| Error::Sys {
            call: "pipe2",
            source,
        })
    };
    let (report, report_child) = pipe()?;
    // The child waits on `go` until the parent has recorded its pid, so the
    // program never runs before its pid file exists.
    let (go_child, go) = pipe()?;
    let child = sys::fork().map_err(|source| Error::Sys {
        call: "fork",
        source,
    })?;
    let Some(pid) = child else {
        drop(report);
        drop(go);
        run_launcher(launch, setsid_in_child, go_child, report_child)
    };
    Ok(ForkedLauncher { pid, report, go })
}

/// The forked child's life: never returns.
fn run_launcher(launch: &Launch<'_>, setsid_in_child: bool, go: OwnedFd, report: OwnedFd) -> ! {
    let mut signal = [0u8; 1];
    if !matches!(sys::read(go.as_fd(), &mut signal), Ok(1)) {
        // The parent gave up (or died) before letting the child go.
        sys::exit_now(1);
    }
    drop(go);
    if setsid_in_child {
        if let Err(e) = sys::setsid() {
            process::report_and_exit(report, Stage::Setsid, &e);
        }
    }
    let (stage, error) = process::drop_privileges_and_exec(launch);
    process::report_and_exit(report, stage, &error)
}

/// Ends a forked child that must not run the program, and reaps it.
fn kill_and_reap(pid: i32) {
    let _ = sys::kill(pid, libc::SIGKILL);
    let _ = sys::wait(pid);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_args_come_in_the_jailers_order() {
        let start = StartTimes {
            monotonic_us: 1234,
            cpu_us: 0,
        };
        let args = firecracker_args("vm-1", start, false);
        let names: Vec<&str> = args.iter().step_by(2).map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "--id",
                "--start-time-us",
                "--start-time-cpu-us",
                "--parent-cpu-time-us"
            ]
        );
        assert_eq!((args[1].as_str(), args[3].as_str()), ("vm-1", "1234"));
        // Not forked: the program's CPU clock continues this process's, and
        // everything since the start counts as the jailer's.
        let start_cpu: u64 = args[5].parse().unwrap();
        let parent_cpu: u64 = args[7].parse().unwrap();
        assert_eq!(start_cpu, parent_cpu, "the start CPU time was 0");
        // Forked: the child's CPU clock starts from 0.
        assert_eq!(firecracker_args("vm-1", start, true)[5], "0");
    }
}
