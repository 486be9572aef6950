//! The non-blocking one-shot timerfd a rate limiter arms when it refuses a
//! request, so the device sleeps in epoll until tokens are available again.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

use crate::{Error, Result};

/// Shortest wait ever armed. A zero duration would disarm the timer, and
/// sub-millisecond wake-ups would cost more than they save.
pub const MIN_WAIT: Duration = Duration::from_millis(1);

/// A one-shot, non-blocking timerfd on the monotonic clock.
#[derive(Debug)]
pub(crate) struct RefillTimer(TimerFd);

impl RefillTimer {
    pub(crate) fn new() -> Result<RefillTimer> {
        let timer = TimerFd::new().map_err(|e| Error::Timer(e.into()))?;
        set_nonblocking(timer.as_raw_fd()).map_err(Error::Timer)?;
        Ok(RefillTimer(timer))
    }

    /// Fires once after `after` (at least [`MIN_WAIT`]).
    pub(crate) fn arm(&mut self, after: Duration) -> io::Result<()> {
        self.0
            .reset(after.max(MIN_WAIT), None)
            .map_err(io::Error::from)
    }

    /// Consumes an expiration. `Ok(false)` when the timer had not fired.
    pub(crate) fn acknowledge(&mut self) -> io::Result<bool> {
        match self.0.wait() {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == libc::EAGAIN => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsRawFd for RefillTimer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Adds `O_NONBLOCK` to `fd`'s file status flags.
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL only reads the flags of `fd`, a descriptor the caller owns;
    // the result is checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL only changes the status flags of `fd`; the result is checked.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn unexpired_timer_reads_as_not_fired_without_blocking() {
        let mut timer = RefillTimer::new().unwrap();
        assert!(!timer.acknowledge().unwrap());
        timer.arm(Duration::from_secs(60)).unwrap();
        assert!(!timer.acknowledge().unwrap());
    }

    #[test]
    fn zero_wait_still_fires() {
        let mut timer = RefillTimer::new().unwrap();
        timer.arm(Duration::ZERO).unwrap();
        let mut pfd = libc::pollfd {
            fd: timer.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd and the count says so.
        let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
        assert_eq!(n, 1);
        assert!(timer.acknowledge().unwrap());
        assert!(!timer.acknowledge().unwrap(), "one-shot");
    }
}
