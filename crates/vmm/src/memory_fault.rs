//! A clear end for the VMM when guest memory backed by a file goes away
//! under it: once a restored VM's memory file is truncated (or its storage
//! fails), any read of the missing pages by the VMM's own code (a device, a
//! snapshot) raises SIGBUS, which no code path can recover from. The handler
//! says so in one line on standard error and ends the process with
//! [`MEMORY_FAULT_EXIT_CODE`], using only `write` and `exit_group`, which
//! every seccomp filter allows. (Without it, Rust's runtime handler would
//! try `rt_sigaction`, which the filters trap as a seccomp violation.)

use std::sync::atomic::{AtomicBool, Ordering};

use libc::{c_int, c_void, siginfo_t};

use crate::{Error, Result};

/// Exit status after guest memory could not be read (128 + SIGBUS).
pub const MEMORY_FAULT_EXIT_CODE: i32 = 128 + libc::SIGBUS;

/// What the handler writes.
const MESSAGE: &[u8] = b"guest memory could not be read (SIGBUS): the memory file was truncated \
or its storage failed; the VMM stops\n";

static INSTALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigbus(_signal: c_int, _info: *mut siginfo_t, _context: *mut c_void) {
    // SAFETY: write and _exit are async-signal-safe; MESSAGE is valid for its
    // length. _exit never returns.
    unsafe {
        libc::write(libc::STDERR_FILENO, MESSAGE.as_ptr().cast(), MESSAGE.len());
        libc::_exit(MEMORY_FAULT_EXIT_CODE);
    }
}

/// Installs the SIGBUS handler for the whole process, once (before guest
/// memory is mapped from a file, while `rt_sigaction` is still allowed).
pub(crate) fn install_memory_fault_handler() -> Result<()> {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    // SAFETY: an all-zero sigaction is valid (SIG_DFL, empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigbus as extern "C" fn(c_int, *mut siginfo_t, *mut c_void) as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action` is a valid sigaction whose handler only makes
    // async-signal-safe calls; the old action is not asked for.
    if unsafe { libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) } != 0 {
        INSTALLED.store(false, Ordering::SeqCst);
        return Err(Error::Signal {
            what: "SIGBUS",
            source: vmm_sys_util::errno::Error::last(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_sigbus_ends_the_process_with_one_line_and_its_exit_code() {
        // SAFETY: the child only calls async-signal-safe functions (and the
        // handler's installation, which allocates nothing) before _exit.
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            // SAFETY: in the child: stderr goes to /dev/null, the handler is
            // installed, then SIGBUS is raised; _exit if anything returns.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                libc::dup2(null, libc::STDERR_FILENO);
                if install_memory_fault_handler().is_ok() {
                    libc::raise(libc::SIGBUS);
                }
                libc::_exit(3);
            }
        }
        let mut status = 0;
        // SAFETY: `child` is this process's child; `status` is a valid out-parameter.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), MEMORY_FAULT_EXIT_CODE);
    }
}
