//! A device's non-blocking timer (a timerfd on the monotonic clock): one-shot
//! at a deadline (vsock's connection deadlines) or periodic (the balloon's
//! statistics polling).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// Shortest wait armed: a zero duration would disarm the timer.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// A timer that fires once at a deadline.
#[derive(Debug)]
pub(crate) struct DeadlineTimer {
    fd: TimerFd,
    armed_for: Option<Instant>,
}

impl DeadlineTimer {
    pub(crate) fn new() -> io::Result<DeadlineTimer> {
        let fd = TimerFd::new().map_err(io::Error::from)?;
        let raw = fd.as_raw_fd();
        // SAFETY: F_GETFL only reads the flags of `raw`, a descriptor `fd`
        // owns; the result is checked.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: F_SETFL only changes the status flags of `raw`; the result
        // is checked.
        if unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(DeadlineTimer {
            fd,
            armed_for: None,
        })
    }

    /// Makes the timer fire at `deadline` (`None`: never). Does nothing if it
    /// is already set so.
    pub(crate) fn set(&mut self, deadline: Option<Instant>, now: Instant) -> io::Result<()> {
        if deadline == self.armed_for {
            return Ok(());
        }
        match deadline {
            Some(at) => self
                .fd
                .reset(at.saturating_duration_since(now).max(MIN_WAIT), None)
                .map_err(io::Error::from)?,
            None => self.fd.clear().map_err(io::Error::from)?,
        }
        self.armed_for = deadline;
        Ok(())
    }

    /// Makes the timer fire every `period` from now (`None`: never).
    pub(crate) fn set_periodic(&mut self, period: Option<Duration>) -> io::Result<()> {
        self.armed_for = None;
        match period {
            Some(every) => {
                let every = every.max(MIN_WAIT);
                self.fd.reset(every, Some(every)).map_err(io::Error::from)
            }
            None => self.fd.clear().map_err(io::Error::from),
        }
    }

    /// Makes the timer fire at once (in [`MIN_WAIT`]) and then every `period`.
    pub(crate) fn set_periodic_from_now(&mut self, period: Duration) -> io::Result<()> {
        self.armed_for = None;
        self.fd
            .reset(MIN_WAIT, Some(period.max(MIN_WAIT)))
            .map_err(io::Error::from)
    }

    /// Consumes an expiration (the timer is readable); a timer that has not
    /// fired (re-armed meanwhile) is fine too.
    pub(crate) fn acknowledge(&mut self) -> io::Result<()> {
        match self.fd.wait() {
            Ok(_) => {
                self.armed_for = None;
                Ok(())
            }
            Err(e) if e.errno() == libc::EAGAIN => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsRawFd for DeadlineTimer {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn readable(timer: &DeadlineTimer, ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: timer.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd and the count says so.
        unsafe { libc::poll(&mut pfd, 1, ms) == 1 }
    }

    #[test]
    fn fires_once_at_the_deadline_and_can_be_cancelled() {
        let mut timer = DeadlineTimer::new().unwrap();
        timer.acknowledge().unwrap();
        let now = Instant::now();
        timer.set(Some(now), now).unwrap();
        assert!(readable(&timer, 1000));
        timer.acknowledge().unwrap();
        assert!(!readable(&timer, 10));
        timer
            .set(Some(now + Duration::from_millis(20)), now)
            .unwrap();
        timer.set(None, now).unwrap();
        assert!(!readable(&timer, 50));
    }

    #[test]
    fn a_periodic_timer_fires_again_until_cleared() {
        let mut timer = DeadlineTimer::new().unwrap();
        timer.set_periodic(Some(Duration::from_millis(10))).unwrap();
        for _ in 0..2 {
            assert!(readable(&timer, 1000));
            timer.acknowledge().unwrap();
        }
        timer.set_periodic(None).unwrap();
        assert!(!readable(&timer, 50));
    }
}
