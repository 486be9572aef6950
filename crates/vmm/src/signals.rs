//! SIGTERM and SIGINT as events: the handler records the signal and writes to
//! an eventfd that the VMM's event loop watches, so the VM stops cleanly
//! (vCPUs joined, serial flushed, terminal restored) instead of dying mid-write.

use std::sync::atomic::{AtomicI32, Ordering};

use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::register_signal_handler;

use crate::{Error, Result};

/// The eventfd the handler writes to, or -1.
static TERMINATION_FD: AtomicI32 = AtomicI32::new(-1);
/// The last termination signal received, or 0.
static TERMINATION_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_termination(num: c_int, _info: *mut siginfo_t, _ctx: *mut c_void) {
    TERMINATION_SIGNAL.store(num, Ordering::SeqCst);
    let fd = TERMINATION_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `fd` is an eventfd kept open by the
        // live `TerminationSignals` (which resets TERMINATION_FD before closing it)
        // and the buffer is 8 valid bytes.
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

/// Routes SIGTERM and SIGINT to an eventfd while it lives.
#[derive(Debug)]
pub struct TerminationSignals {
    event: EventFd,
}

impl TerminationSignals {
    /// Installs the handlers. Only one instance should exist per process.
    pub fn install() -> Result<TerminationSignals> {
        let event = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        TERMINATION_FD.store(std::os::fd::AsRawFd::as_raw_fd(&event), Ordering::SeqCst);
        for (num, what) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
            register_signal_handler(num, on_termination)
                .map_err(|source| Error::Signal { what, source })?;
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

impl Drop for TerminationSignals {
    fn drop(&mut self) {
        TERMINATION_FD.store(-1, Ordering::SeqCst);
    }
}
