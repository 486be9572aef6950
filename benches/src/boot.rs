//! `ember` as a process: start to the boot-timer signal, the whole process
//! for a guest that resets at once, each with seccomp on and off and inside
//! the jailer or not; the memory of a monitor whose guest is parked; and
//! launches per second, back to back and in parallel.
//!
//! Three ways of starting the same VM (`ember run --kernel guest-elf64
//! --cmdline "console=ttyS0 ember.test=<scenario>"`, 1 vCPU, 128 MiB):
//!
//! - [`Mode::Plain`]: as is (seccomp filters on, the default);
//! - [`Mode::NoSeccomp`]: with `--no-seccomp`;
//! - [`Mode::Jailed`]: through `ember-jailer` as an unprivileged user, with
//!   seccomp on. The jail is prepared before the clock starts (the `ember`
//!   binary is dynamically linked, so its ELF interpreter and libraries, as
//!   `ldd` lists them, are copied in, with the guest image); what is timed
//!   is the jailer's own work (directories, device nodes, the program's copy, mount
//!   namespace, `pivot_root`, dropping privileges, `execve`) plus `ember`.
//!
//! The modes run in turn within each round, so drift (other builds on the
//! machine, a warming page cache) hits all of them alike. Times are
//! `guest-boot-time-us` and `guest-boot-cpu-us` as `ember` logs them (from
//! its own start), and wall times seen from here: spawn to the log line,
//! spawn to exit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::paths::Binaries;
use crate::process::{parse_boot_time, BootTime, Running, BOOT_TIME_KEY};
use crate::procfs::memory;
use crate::report::{Figure, GroupError, Report};
use crate::stats::{millis, per_second, Better, Summary};
use crate::{Context, Error, Result};

/// The group name in reports.
pub const GROUP: &str = "boot";
/// The guest every run boots.
pub const GUEST: &str = ember_test_guests::ELF64_PATH;
/// How long one VM may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The unprivileged ids the jailed `ember` runs as.
const JAIL_UID: u32 = 10_123;
const JAIL_GID: u32 = 10_123;

/// How `ember` is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `ember run ...` (seccomp on).
    Plain,
    /// `ember run --no-seccomp ...`.
    NoSeccomp,
    /// `ember-jailer ... -- run ...` (seccomp on).
    Jailed,
}

/// `ember run` arguments for `scenario` of the test guest at `kernel`.
pub fn run_args(kernel: &Path, scenario: &str, seccomp: bool) -> Vec<String> {
    let mut args = vec![
        "run".to_owned(),
        "--kernel".to_owned(),
        kernel.display().to_string(),
        "--cmdline".to_owned(),
        format!("console=ttyS0 ember.test={scenario}"),
    ];
    if !seccomp {
        args.push("--no-seccomp".to_owned());
    }
    args
}

/// Files the jailed `ember` needs besides itself: what `ldd` prints as
/// absolute paths (the ELF interpreter and the shared libraries).
pub fn parse_ldd(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| line.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

/// A chroot base where each run gets a fresh jail.
#[derive(Debug)]
pub struct Jails {
    jailer: PathBuf,
    ember: PathBuf,
    base: PathBuf,
    libraries: Vec<PathBuf>,
    next: usize,
}

impl Jails {
    /// Checks that jails can be made (root, `ldd`), under `base`.
    pub fn new(bins: &Binaries, base: &Path) -> Result<Jails> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::Unexpected(
                "the jailer needs root (mknod, mount namespaces)".to_owned(),
            ));
        }
        let out = Command::new("ldd")
            .arg(&bins.ember)
            .output()
            .ctx("running ldd")?;
        let libraries = if out.status.success() {
            parse_ldd(&String::from_utf8_lossy(&out.stdout))
        } else {
            Vec::new() // statically linked
        };
        std::fs::create_dir_all(base).ctx(format!("creating {}", base.display()))?;
        Ok(Jails {
            jailer: bins.jailer.clone(),
            ember: bins.ember.clone(),
            base: base.to_path_buf(),
            libraries,
            next: 0,
        })
    }

    /// A new jail holding the libraries and the guest (at `/guest`), and the
    /// command that runs `ember_args` in it. Remove it with
    /// [`Jails::remove`].
    pub fn prepare(&mut self, ember_args: &[String]) -> Result<(Command, PathBuf)> {
        self.next += 1;
        let id = format!("bench-{}-{}", std::process::id(), self.next);
        let exec_name = self
            .ember
            .file_name()
            .ok_or_else(|| Error::Unexpected("the ember binary has no name".to_owned()))?;
        let jail = self.base.join(exec_name).join(&id);
        let root = jail.join("root");
        for file in &self.libraries {
            let inside = root.join(file.strip_prefix("/").unwrap_or(file));
            if let Some(dir) = inside.parent() {
                std::fs::create_dir_all(dir).ctx(format!("creating {}", dir.display()))?;
            }
            std::fs::copy(file, &inside).ctx(format!("copying {}", file.display()))?;
        }
        std::fs::create_dir_all(&root).ctx(format!("creating {}", root.display()))?;
        std::fs::copy(GUEST, root.join("guest")).ctx("copying the guest into the jail")?;
        let mut command = Command::new(&self.jailer);
        command
            .arg("--id")
            .arg(&id)
            .arg("--exec-file")
            .arg(&self.ember)
            .args([
                "--uid",
                &JAIL_UID.to_string(),
                "--gid",
                &JAIL_GID.to_string(),
            ])
            .arg("--chroot-base-dir")
            .arg(&self.base)
            .arg("--")
            .args(ember_args);
        Ok((command, jail))
    }

    /// Removes a jail [`Jails::prepare`] made.
    pub fn remove(jail: &Path) -> Result<()> {
        std::fs::remove_dir_all(jail).ctx(format!("removing {}", jail.display()))
    }
}

/// Starts `scenario` in `mode`; runs `body` on the process; cleans up.
fn with_vm<T>(
    bins: &Binaries,
    jails: Option<&mut Jails>,
    mode: Mode,
    scenario: &str,
    stdout: bool,
    body: impl FnOnce(&mut Running) -> Result<T>,
) -> Result<T> {
    let (command, jail) = match mode {
        Mode::Plain | Mode::NoSeccomp => {
            let mut command = Command::new(&bins.ember);
            command.args(run_args(Path::new(GUEST), scenario, mode == Mode::Plain));
            (command, None)
        }
        Mode::Jailed => {
            let jails = jails.ok_or_else(|| Error::Unexpected("no jails".to_owned()))?;
            let (command, jail) = jails.prepare(&run_args(Path::new("/guest"), scenario, true))?;
            (command, Some(jail))
        }
    };
    let result = Running::spawn(command, stdout).and_then(|mut vm| body(&mut vm));
    if let Some(jail) = jail {
        Jails::remove(&jail)?;
    }
    result
}

/// One boot to the boot-timer signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootRun {
    /// What `ember` logged.
    pub logged: BootTime,
    /// Spawn to the log line, seen from here.
    pub to_signal: Duration,
}

/// Boots the `boottimer` scenario once.
pub fn boot_once(bins: &Binaries, jails: Option<&mut Jails>, mode: Mode) -> Result<BootRun> {
    with_vm(bins, jails, mode, "boottimer", false, |vm| {
        let (at, line) = vm.wait_line(BOOT_TIME_KEY, TIMEOUT)?;
        let logged = parse_boot_time(&line)
            .ok_or_else(|| Error::Unexpected(format!("cannot parse {line:?}")))?;
        exit_ok(vm)?;
        Ok(BootRun {
            logged,
            to_signal: at - vm.started,
        })
    })
}

/// Runs the `reset` scenario once: spawn to exit.
pub fn reset_once(bins: &Binaries, jails: Option<&mut Jails>, mode: Mode) -> Result<Duration> {
    with_vm(bins, jails, mode, "reset", false, exit_ok)
}

/// Waits for a clean exit; returns spawn to exit.
fn exit_ok(vm: &mut Running) -> Result<Duration> {
    let (at, status) = vm.wait_exit(TIMEOUT)?;
    if status.success() {
        Ok(at - vm.started)
    } else {
        Err(Error::Unexpected(format!("ember exited with {status}")))
    }
}

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Boots (and resets) per mode.
    pub runs: usize,
    /// VMs for each launches-per-second figure.
    pub launches: usize,
    /// VMs at a time for the parallel launch figure.
    pub parallel: usize,
}

/// Samples of one mode.
#[derive(Debug, Default)]
struct Samples {
    wall_ms: Vec<f64>,
    cpu_ms: Vec<f64>,
    to_signal: Vec<Duration>,
    reset: Vec<Duration>,
}

/// Runs the group, adding figures (and a note of what was skipped) to `report`.
pub fn run(bins: &Binaries, scratch: &Path, options: Options, report: &mut Report) -> Result<()> {
    let mut jails = match Jails::new(bins, &scratch.join("jails")) {
        Ok(jails) => Some(jails),
        Err(e) => {
            report.errors.push(GroupError {
                group: GROUP.to_owned(),
                error: format!("jailed runs skipped: {e}"),
            });
            None
        }
    };
    let mut modes = vec![Mode::Plain, Mode::NoSeccomp];
    if jails.is_some() {
        modes.push(Mode::Jailed);
    }
    let mut samples: Vec<Samples> = modes.iter().map(|_| Samples::default()).collect();
    // One unmeasured boot per mode warms the page cache.
    for &mode in &modes {
        boot_once(bins, jails.as_mut(), mode)?;
    }
    for _ in 0..options.runs {
        for (&mode, s) in modes.iter().zip(&mut samples) {
            let boot = boot_once(bins, jails.as_mut(), mode)?;
            s.wall_ms.push(boot.logged.wall_us as f64 / 1e3);
            s.cpu_ms.push(boot.logged.cpu_us as f64 / 1e3);
            s.to_signal.push(boot.to_signal);
            s.reset.push(reset_once(bins, jails.as_mut(), mode)?);
        }
    }
    let summary =
        |values: &[f64]| Summary::of(values).ok_or_else(|| Error::Unexpected("no runs".to_owned()));
    let plain = &samples[0];
    let no_seccomp = &samples[1];
    let n = options.runs;
    type Series = (&'static str, &'static str, fn(&Samples) -> Vec<f64>);
    let series: [Series; 4] = [
        ("boot-timer wall (ember's log)", "from process start", |s| {
            s.wall_ms.clone()
        }),
        (
            "boot-timer CPU (ember's log)",
            "process CPU time at the signal",
            |s| s.cpu_ms.clone(),
        ),
        ("spawn to boot signal", "seen from the parent", |s| {
            millis(&s.to_signal)
        }),
        ("whole process, reset scenario", "spawn to exit", |s| {
            millis(&s.reset)
        }),
    ];
    for (name, how, values) in series {
        let on = summary(&values(plain))?;
        let off = summary(&values(no_seccomp))?;
        for (stat, a, b) in [("median", on.median, off.median), ("p90", on.p90, off.p90)] {
            report.figures.push(
                Figure::new(GROUP, &format!("{name} {stat}"), a, "ms", Better::Lower)
                    .baseline("no seccomp", b)
                    .note(&format!("{how}; seccomp adds {:+.2} ms; n={n}", a - b)),
            );
        }
    }
    if let Some(jailed) = samples.get(2) {
        for (name, values) in [
            ("jailed: spawn to boot signal", millis(&jailed.to_signal)),
            ("jailed: whole process, reset", millis(&jailed.reset)),
        ] {
            let baseline = if name.contains("reset") {
                millis(&plain.reset)
            } else {
                millis(&plain.to_signal)
            };
            let (j, p) = (summary(&values)?, summary(&baseline)?);
            for (stat, a, b) in [("median", j.median, p.median), ("p90", j.p90, p.p90)] {
                report.figures.push(
                    Figure::new(GROUP, &format!("{name} {stat}"), a, "ms", Better::Lower)
                        .baseline("not jailed", b)
                        .note(&format!("jailer adds {:+.2} ms; n={n}", a - b)),
                );
            }
        }
    }
    parked_memory(bins, report)?;
    launch_rates(bins, options, report)
}

/// RSS of a monitor whose guest is parked in `hlt`.
fn parked_memory(bins: &Binaries, report: &mut Report) -> Result<()> {
    let mem = with_vm(bins, None, Mode::Plain, "hlt", true, |vm| {
        vm.wait_line("hlt: parked", TIMEOUT)?;
        let mem = memory(vm.pid());
        vm.terminate(TIMEOUT)?;
        mem
    })?;
    let how = "ember run, 1 vCPU, 128 MiB, guest parked";
    for (name, kib, note) in [
        ("parked VM: VmRSS", mem.rss_kib, how),
        (
            "parked VM: RssAnon",
            mem.anon_kib,
            "heap, stacks, touched guest RAM",
        ),
        ("parked VM: RssFile", mem.file_kib, "binary and libraries"),
    ] {
        report
            .figures
            .push(Figure::new(GROUP, name, kib as f64 / 1024.0, "MiB", Better::Lower).note(note));
    }
    Ok(())
}

/// `options.launches` reset-scenario VMs back to back, then
/// `options.parallel` at a time.
fn launch_rates(bins: &Binaries, options: Options, report: &mut Report) -> Result<()> {
    let start = Instant::now();
    for _ in 0..options.launches {
        reset_once(bins, None, Mode::Plain)?;
    }
    let serial = per_second(options.launches as f64, start.elapsed());
    let workers = options.parallel.max(1);
    let start = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let count =
                    options.launches / workers + usize::from(w < options.launches % workers);
                scope.spawn(move || -> Result<()> {
                    for _ in 0..count {
                        reset_once(bins, None, Mode::Plain)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(Error::Unexpected("a launch thread panicked".to_owned())))
        })
    })?;
    let parallel = per_second(options.launches as f64, start.elapsed());
    let n = options.launches;
    report.figures.push(
        Figure::new(
            GROUP,
            "launches back to back",
            serial,
            "VMs/s",
            Better::Higher,
        )
        .note(&format!("reset scenario, {n} VMs one after another")),
    );
    report.figures.push(
        Figure::new(
            GROUP,
            &format!("launches {workers} at a time"),
            parallel,
            "VMs/s",
            Better::Higher,
        )
        .note(&format!(
            "reset scenario, {n} VMs on {} CPUs",
            crate::report::Host::detect().cpus
        )),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_to_files() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tstatically linked\n").is_empty());
    }

    #[test]
    fn run_arguments() {
        let args = run_args(Path::new("/guest"), "reset", false);
        assert_eq!(
            args,
            [
                "run",
                "--kernel",
                "/guest",
                "--cmdline",
                "console=ttyS0 ember.test=reset",
                "--no-seccomp"
            ]
        );
        assert!(!run_args(Path::new("/g"), "hlt", true).contains(&"--no-seccomp".to_owned()));
    }
}
