//! Termination signals as events: the handler records the signal and writes
//! to an eventfd that the VMM's event loop watches, so the VM stops cleanly
//! (vCPUs joined, serial flushed, terminal restored, sockets removed, metrics
//! flushed) instead of dying mid-write. [`TERMINATION_SIGNALS`] lists them:
//! SIGTERM and SIGINT, and the signals whose default action would otherwise
//! kill the VMM without any of that (SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2,
//! SIGALRM). Each handler is one-shot (`SA_RESETHAND`): once the VM has
//! stopped cleanly, [`die_by_signal`] raises the signal again with its default
//! action, so the parent sees death by that signal, as with Firecracker (which
//! does not catch them); a second signal during the clean stop ends the
//! process at once. [`ignore_write_signals`] makes SIGPIPE and SIGXFSZ write
//! errors instead of deaths.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{Error, Result};

/// The eventfd the handler writes to, or -1.
static TERMINATION_FD: AtomicI32 = AtomicI32::new(-1);
/// The last termination signal received, or 0.
static TERMINATION_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Bit `n` set: signal `n` was received (for metrics).
static RECEIVED: AtomicU64 = AtomicU64::new(0);

/// The bit of signal `num` in [`RECEIVED`], if it has one.
fn signal_bit(num: c_int) -> Option<u64> {
    u32::try_from(num).ok().and_then(|n| 1u64.checked_shl(n))
}
/// The thread that installed the handlers (its kernel thread id), or 0:
/// [`die_by_signal`] sends the signal there, since asking for the calling
/// thread's id (`gettid`, which `raise` does) is outside the seccomp filters.
static INSTALLING_THREAD: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_termination(num: c_int, _info: *mut siginfo_t, _ctx: *mut c_void) {
    TERMINATION_SIGNAL.store(num, Ordering::SeqCst);
    if let Some(bit) = signal_bit(num) {
        RECEIVED.fetch_or(bit, Ordering::SeqCst);
    }
    let fd = TERMINATION_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `fd` is an eventfd kept open by the
        // live `TerminationSignals` (which resets TERMINATION_FD before closing it)
        // and the buffer is 8 valid bytes.
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

/// The signals that stop the VM cleanly, with their names.
pub const TERMINATION_SIGNALS: [(c_int, &str); 7] = [
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGINT, "SIGINT"),
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGUSR2, "SIGUSR2"),
    (libc::SIGALRM, "SIGALRM"),
];

/// Installs `on_termination` for `num`, reset to the default action on its
/// first delivery (`SA_RESETHAND`), with every signal blocked while it runs.
fn register_one_shot(num: c_int) -> std::result::Result<(), vmm_sys_util::errno::Error> {
    // SAFETY: a zeroed sigaction is a valid value (no handler, empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_termination as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
    // SAFETY: `sa_mask` is a valid sigset_t owned by `action`.
    if unsafe { libc::sigfillset(&mut action.sa_mask) } < 0 {
        return Err(vmm_sys_util::errno::Error::last());
    }
    // SAFETY: `action` is fully initialised and its handler only does
    // async-signal-safe work (atomics and write(2)); the old action is not wanted.
    match unsafe { libc::sigaction(num, &action, std::ptr::null_mut()) } {
        0 => Ok(()),
        _ => Err(vmm_sys_util::errno::Error::last()),
    }
}

/// Ends the process by `num` with the signal's default action, after a clean
/// stop caused by that signal (whose one-shot handler has already reset it to
/// the default). Call it from the thread that installed
/// [`TerminationSignals`]: it unblocks `num` and sends it to that thread with
/// only `rt_sigprocmask`, `getpid` and `tgkill`, which the main thread's
/// seccomp filter allows (without an installation, or in a forked child,
/// it falls back to `raise`).
/// Returns only if the signal did not end the process (its disposition is
/// not the default, for example when it was not delivered through
/// [`TerminationSignals`]); the caller should then exit with `128 + num`.
pub fn die_by_signal(num: c_int) {
    let thread = INSTALLING_THREAD.load(Ordering::SeqCst);
    // SAFETY: an empty sigset_t built by sigemptyset/sigaddset is valid; the
    // calls only change this thread's signal mask, then send `num` to a
    // thread of this process.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, num);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        if thread <= 0 || libc::syscall(libc::SYS_tgkill, libc::getpid(), thread, num) != 0 {
            libc::raise(num);
        }
    }
}

/// Routes the [`TERMINATION_SIGNALS`] to an eventfd while it lives.
#[derive(Debug)]
pub struct TerminationSignals {
    event: EventFd,
}

impl TerminationSignals {
    /// Installs the handlers, each for one delivery (see the module's
    /// documentation). Only one instance should exist per process.
    pub fn install() -> Result<TerminationSignals> {
        let event = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        // SAFETY: gettid has no preconditions.
        INSTALLING_THREAD.store(unsafe { libc::gettid() }, Ordering::SeqCst);
        TERMINATION_FD.store(std::os::fd::AsRawFd::as_raw_fd(&event), Ordering::SeqCst);
        for (num, what) in TERMINATION_SIGNALS {
            register_one_shot(num).map_err(|source| Error::Signal { what, source })?;
        }
        Ok(TerminationSignals { event })
    }

    /// The eventfd that becomes readable when a signal arrives.
    pub fn event_fd(&self) -> &EventFd {
        &self.event
    }

    /// A second handle on the eventfd, for an event loop to own.
    pub fn try_clone_event(&self) -> Result<EventFd> {
        self.event.try_clone().map_err(Error::EventFd)
    }
}

/// The last termination signal received, if any.
pub fn last_signal() -> Option<i32> {
    match TERMINATION_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        num => Some(num),
    }
}

/// Whether termination signal `num` has been received by this process.
pub fn received(num: c_int) -> bool {
    signal_bit(num).is_some_and(|bit| RECEIVED.load(Ordering::SeqCst) & bit != 0)
}

/// Ignores SIGPIPE and SIGXFSZ, so that a write to a socket or FIFO whose
/// reader is gone, or past the file-size limit (`RLIMIT_FSIZE`, which the
/// jailer's `--resource-limit fsize=N` sets, for example on a guest's disk),
/// fails with `EPIPE` or `EFBIG` where the caller handles it instead of killing
/// the VMM. (Rust's runtime already ignores SIGPIPE; this does not rely on it.)
pub fn ignore_write_signals() -> Result<()> {
    for (num, what) in [(libc::SIGPIPE, "SIGPIPE"), (libc::SIGXFSZ, "SIGXFSZ")] {
        // SAFETY: SIG_IGN installs no code; signal(2) only changes this
        // process's disposition of `num`.
        let previous = unsafe { libc::signal(num, libc::SIG_IGN) };
        if previous == libc::SIG_ERR {
            return Err(Error::Signal {
                what,
                source: vmm_sys_util::errno::Error::last(),
            });
        }
    }
    Ok(())
}

impl Drop for TerminationSignals {
    fn drop(&mut self) {
        TERMINATION_FD.store(-1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The disposition of `num` (its handler address, or SIG_IGN / SIG_DFL).
    fn disposition(num: c_int) -> libc::sighandler_t {
        // SAFETY: a zeroed sigaction is a valid out-parameter; a null new
        // action only reads the current one.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(num, std::ptr::null(), &mut old), 0);
            old.sa_sigaction
        }
    }

    #[test]
    fn every_termination_signal_reaches_the_eventfd_once() {
        let signals = TerminationSignals::install().unwrap();
        assert!(!received(libc::SIGPIPE));
        for (num, name) in TERMINATION_SIGNALS {
            assert_ne!(disposition(num), libc::SIG_DFL, "{name}");
            // SAFETY: raising a signal whose handler was just installed.
            assert_eq!(unsafe { libc::raise(num) }, 0, "{name}");
            assert_eq!(signals.event_fd().read().unwrap(), 1, "{name}");
            assert_eq!(last_signal(), Some(num), "{name}");
            assert!(received(num), "{name}");
            // One-shot: the next one would take the default action.
            assert_eq!(disposition(num), libc::SIG_DFL, "{name}");
        }
        assert!(!received(libc::SIGPIPE));
        assert!(!received(-1));
    }

    #[test]
    fn die_by_signal_kills_with_the_default_action() {
        // In a forked child, so that the test process survives.
        // SAFETY: the child only calls async-signal-safe functions before _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: SIG_DFL installs no code; then the child ends one way or the other.
            unsafe {
                libc::signal(libc::SIGUSR1, libc::SIG_DFL);
                die_by_signal(libc::SIGUSR1);
                libc::_exit(3);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child into a valid int.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGUSR1);
    }

    #[test]
    fn write_signals_are_ignored() {
        ignore_write_signals().unwrap();
        assert_eq!(disposition(libc::SIGPIPE), libc::SIG_IGN);
        assert_eq!(disposition(libc::SIGXFSZ), libc::SIG_IGN);
    }
}
