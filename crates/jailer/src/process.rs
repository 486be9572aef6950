//! The last steps before the program runs: inherited descriptors, standard
//! streams, privileges and `execve`, plus how a forked child reports a
//! failure of those steps to its parent.
//!
//! Privileges are dropped with the saved set-user-ID and set-group-ID left at
//! 0: a successful `execve` copies the new effective ids into the saved ones,
//! so the program runs with all three ids unprivileged, while a failed
//! `execve` can still regain root and undo the jail.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::{sys, Error, Result};

/// A step of the launch that can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// `setsid` in a forked child.
    Setsid,
    /// Pointing stdin, stdout and stderr at `/dev/null`.
    Stdio,
    /// Clearing the ambient capabilities.
    Capabilities,
    /// Dropping supplementary groups.
    Groups,
    /// `setresgid`.
    Gid,
    /// `setresuid`.
    Uid,
    /// `execve`.
    Exec,
}

impl Stage {
    const ALL: [Stage; 7] = [
        Stage::Setsid,
        Stage::Stdio,
        Stage::Capabilities,
        Stage::Groups,
        Stage::Gid,
        Stage::Uid,
        Stage::Exec,
    ];

    /// The call that failed, for error messages.
    pub(crate) fn call(self) -> &'static str {
        match self {
            Stage::Setsid => "setsid",
            Stage::Stdio => "dup2 of /dev/null onto the standard streams",
            Stage::Capabilities => "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
            Stage::Groups => "setgroups(0)",
            Stage::Gid => "setresgid",
            Stage::Uid => "setresuid",
            Stage::Exec => "execve of the jailed program",
        }
    }

    /// [`Stage::call`], with a hint for the usual cause of `error`.
    pub(crate) fn call_failing_with(self, error: &io::Error) -> &'static str {
        match (self, error.raw_os_error()) {
            (Stage::Exec, Some(libc::ENOENT)) => {
                "execve of the jailed program (a dynamically linked program needs its \
                 ELF interpreter and libraries inside the jail: build it statically)"
            }
            _ => self.call(),
        }
    }

    fn code(self) -> u8 {
        match self {
            Stage::Setsid => 0,
            Stage::Stdio => 1,
            Stage::Capabilities => 2,
            Stage::Groups => 3,
            Stage::Gid => 4,
            Stage::Uid => 5,
            Stage::Exec => 6,
        }
    }
}

/// Marks every descriptor above standard error close-on-exec: those inherited
/// from whoever started the jailer are closed when the program starts, while
/// the jailer's own (the undo list's) stay usable until then.
pub(crate) fn close_inherited_on_exec() -> Result<()> {
    match sys::cloexec_from(3) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) => {
            // Before Linux 5.11: walk the descriptor table.
            let error = |source| Error::Fs {
                action: "list",
                path: "/proc/self/fd".into(),
                source,
            };
            for entry in std::fs::read_dir("/proc/self/fd").map_err(error)? {
                let name = entry.map_err(error)?.file_name();
                if let Some(fd) = name.to_str().and_then(|n| n.parse::<i32>().ok()) {
                    if fd > 2 {
                        sys::set_cloexec(fd).map_err(|source| Error::Sys {
                            call: "fcntl(F_SETFD, FD_CLOEXEC)",
                            source,
                        })?;
                    }
                }
            }
            Ok(())
        }
        Err(source) => Err(Error::Sys {
            call: "close_range(CLOSE_RANGE_CLOEXEC)",
            source,
        }),
    }
}

/// What the final steps need.
#[derive(Debug)]
pub(crate) struct Launch<'a> {
    /// The unprivileged user.
    pub(crate) uid: u32,
    /// The unprivileged group.
    pub(crate) gid: u32,
    /// `/dev/null`, when daemonizing.
    pub(crate) dev_null: Option<BorrowedFd<'a>>,
    /// The program, as seen inside the jail.
    pub(crate) program: &'a CStr,
    /// Its arguments, `argv[0]` included.
    pub(crate) argv: &'a [CString],
}

/// Drops privileges and executes the program. Returns only on failure, with
/// the failed step, after taking root back so that the caller can undo.
pub(crate) fn drop_privileges_and_exec(launch: &Launch<'_>) -> (Stage, io::Error) {
    let failure = try_exec(launch);
    // Only possible because the saved ids are still 0; errors here would leave
    // the undo without rights, which it then reports as its own failures.
    let _ = sys::setresuid(0, 0, 0);
    let _ = sys::setresgid(0, 0, 0);
    failure
}

fn try_exec(launch: &Launch<'_>) -> (Stage, io::Error) {
    let steps = || -> std::result::Result<(), (Stage, io::Error)> {
        if let Some(null) = launch.dev_null {
            for stream in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
                sys::dup2(null, stream).map_err(|e| (Stage::Stdio, e))?;
            }
        }
        sys::clear_ambient_capabilities().map_err(|e| (Stage::Capabilities, e))?;
        sys::clear_groups().map_err(|e| (Stage::Groups, e))?;
        sys::setresgid(launch.gid, launch.gid, 0).map_err(|e| (Stage::Gid, e))?;
        sys::setresuid(launch.uid, launch.uid, 0).map_err(|e| (Stage::Uid, e))?;
        Ok(())
    };
    match steps() {
        Ok(()) => (Stage::Exec, sys::execv(launch.program, launch.argv)),
        Err(failure) => failure,
    }
}

/// In a forked child: sends the failure to the parent through `pipe` and ends
/// the child.
pub(crate) fn report_and_exit(pipe: OwnedFd, stage: Stage, error: &io::Error) -> ! {
    let errno = error.raw_os_error().unwrap_or(libc::EIO);
    let mut message = [0u8; 5];
    message[0] = stage.code();
    message[1..].copy_from_slice(&errno.to_le_bytes());
    // The parent treats a short or missing report as a failure of its own read.
    let _ = sys::write_all(pipe.as_fd(), &message);
    sys::exit_now(1)
}

/// In the parent: waits for the child to execute the program (the pipe then
/// closes without a report) or to report a failure.
pub(crate) fn read_report(pipe: &OwnedFd) -> Result<Option<(Stage, io::Error)>> {
    let mut message = [0u8; 5];
    let mut filled = 0;
    while filled < message.len() {
        let read =
            sys::read(pipe.as_fd(), &mut message[filled..]).map_err(|source| Error::Sys {
                call: "reading the child's launch report",
                source,
            })?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    match filled {
        0 => Ok(None),
        5 => {
            let stage = Stage::ALL
                .into_iter()
                .find(|s| s.code() == message[0])
                .unwrap_or(Stage::Exec);
            let errno = i32::from_le_bytes([message[1], message[2], message[3], message[4]]);
            Ok(Some((stage, io::Error::from_raw_os_error(errno))))
        }
        _ => Err(Error::Sys {
            call: "reading the child's launch report",
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "truncated report"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_cross_the_pipe() {
        let (read, write) = sys::pipe().unwrap();
        let mut message = [Stage::Uid.code(), 0, 0, 0, 0];
        message[1..].copy_from_slice(&libc::EPERM.to_le_bytes());
        sys::write_all(write.as_fd(), &message).unwrap();
        drop(write);
        let (stage, error) = read_report(&read).unwrap().unwrap();
        assert_eq!(stage, Stage::Uid);
        assert_eq!(error.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn a_closed_pipe_means_the_program_started() {
        let (read, write) = sys::pipe().unwrap();
        drop(write);
        assert!(read_report(&read).unwrap().is_none());
    }

    #[test]
    fn a_truncated_report_is_an_error() {
        let (read, write) = sys::pipe().unwrap();
        sys::write_all(write.as_fd(), &[6, 1]).unwrap();
        drop(write);
        assert!(read_report(&read).is_err());
    }

    #[test]
    fn a_missing_interpreter_gets_a_hint() {
        let missing = io::Error::from_raw_os_error(libc::ENOENT);
        assert!(Stage::Exec
            .call_failing_with(&missing)
            .contains("statically"));
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(Stage::Exec.call_failing_with(&denied), Stage::Exec.call());
        assert_eq!(Stage::Uid.call_failing_with(&missing), Stage::Uid.call());
    }

    #[test]
    fn stage_codes_are_distinct() {
        for (index, stage) in Stage::ALL.iter().enumerate() {
            assert_eq!(usize::from(stage.code()), index);
            assert!(!stage.call().is_empty());
        }
    }
}
