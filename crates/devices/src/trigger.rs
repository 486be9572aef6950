//! Event lines backed by eventfds: interrupts (registered by the VMM as KVM
//! irqfds) and notifications such as "the guest asked for a reset".

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{Error, Result};

/// vm-superio's interrupt-line trait, which the legacy devices raise their
/// lines through; [`EventTrigger`] implements it.
pub use vm_superio::Trigger;

/// An eventfd that fires once per [`EventTrigger::trigger`].
#[derive(Debug)]
pub struct EventTrigger(EventFd);

impl EventTrigger {
    /// A new non-blocking eventfd.
    pub fn new() -> Result<EventTrigger> {
        EventFd::new(EFD_NONBLOCK)
            .map(EventTrigger)
            .map_err(Error::EventFd)
    }

    /// Another handle on the same eventfd.
    pub fn try_clone(&self) -> Result<EventTrigger> {
        self.0.try_clone().map(EventTrigger).map_err(Error::EventFd)
    }

    /// The underlying eventfd.
    pub fn event_fd(&self) -> &EventFd {
        &self.0
    }

    /// Signals the event.
    pub fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl AsRawFd for EventTrigger {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl vm_superio::Trigger for EventTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        EventTrigger::trigger(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_counter() {
        let a = EventTrigger::new().unwrap();
        let b = a.try_clone().unwrap();
        a.trigger().unwrap();
        vm_superio::Trigger::trigger(&b).unwrap();
        assert_eq!(b.event_fd().read().unwrap(), 2);
        assert!(a.event_fd().read().is_err(), "drained and non-blocking");
    }
}
