//! What the virtio device models (block, net, rng, vsock) share: the
//! bounds-checked configuration-space read (and the ignored write), the
//! activation preamble (the
//! already-active check and taking the queues), the event-loop plumbing
//! ([`DeviceEvents`]: draining a queue eventfd, kicking the queues after
//! activation), interrupting the driver after used buffers, the
//! rate-limit charge of one operation, and the feature check of a restore.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::vec;

use ember_ratelimit::{RateLimiter, TokenType};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

use super::ring::Ring;
use super::{ActivationError, InterruptKind, VirtioDevice, VirtioInterrupt};
use crate::{Error, Result};

/// Copies the configuration space `config` from `offset` into `data`
/// (see [`VirtioDevice::read_config`]): bytes past the end read as 0.
pub(crate) fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let available = usize::try_from(offset)
        .ok()
        .and_then(|start| config.get(start..))
        .unwrap_or(&[]);
    let n = available.len().min(data.len());
    data[..n].copy_from_slice(&available[..n]);
}

/// Logs (and otherwise ignores) a driver's write to a read-only
/// configuration space; `device` names the device.
pub(crate) fn ignore_config_write(device: fmt::Arguments<'_>, offset: u64, data: &[u8]) {
    log::debug!(
        "{device}: {}-byte write to read-only config at {offset:#x} ignored",
        data.len()
    );
}

/// What a one-queue device holds once the driver has activated it.
pub(crate) struct SingleQueue<M> {
    /// Guest memory.
    pub(crate) mem: M,
    /// The device's queue.
    pub(crate) queue: Queue,
    /// How the device interrupts the driver.
    pub(crate) interrupt: Arc<dyn VirtioInterrupt>,
    /// The features the driver accepted.
    pub(crate) acked_features: u64,
}

impl<M> SingleQueue<M> {
    /// Activates the device whose activation state is `slot` with the one
    /// queue of an activation, which must be enabled; fails, changing
    /// nothing, with [`Error::AlreadyActive`] if `slot` holds one already.
    pub(crate) fn activate(
        slot: &mut Option<SingleQueue<M>>,
        mem: M,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
        acked_features: u64,
    ) -> Result<()> {
        let queue = ActivationQueues::new(slot.is_some(), queues)?.ready()?;
        *slot = Some(SingleQueue {
            mem,
            queue,
            interrupt,
            acked_features,
        });
        Ok(())
    }

    /// The live queue of an active device (none while inactive), for
    /// [`VirtioDevice::queue_states`](super::VirtioDevice::queue_states).
    pub(crate) fn queue_states(slot: &Option<SingleQueue<M>>) -> Vec<QueueState> {
        slot.iter().map(|active| active.queue.state()).collect()
    }
}

/// The queues given to [`VirtioDevice::activate`], taken in queue order.
#[derive(Debug)]
pub(crate) struct ActivationQueues {
    queues: vec::IntoIter<Queue>,
    index: usize,
}

impl ActivationQueues {
    /// Starts an activation; fails with [`ActivationError::AlreadyActive`] if
    /// the device is `active` already.
    pub(crate) fn new(active: bool, queues: Vec<Queue>) -> Result<ActivationQueues> {
        if active {
            return Err(ActivationError::AlreadyActive.into());
        }
        Ok(ActivationQueues {
            queues: queues.into_iter(),
            index: 0,
        })
    }

    /// The next queue, which the driver must have enabled
    /// ([`ActivationError::QueueNotReady`] otherwise).
    pub(crate) fn ready(&mut self) -> Result<Queue> {
        self.next(true)
    }

    /// The next queue, enabled or not (one the device never uses).
    pub(crate) fn any(&mut self) -> Result<Queue> {
        self.next(false)
    }

    fn next(&mut self, ready: bool) -> Result<Queue> {
        let index = self.index;
        self.index += 1;
        match self.queues.next() {
            Some(queue) if queue.ready() || !ready => Ok(queue),
            _ => Err(ActivationError::QueueNotReady(index).into()),
        }
    }
}

/// What one pass over a queue's available chains did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Pass {
    /// At least one chain was returned to the driver.
    pub(crate) progressed: bool,
    /// The rate limiter refused a chain, which stays available.
    pub(crate) throttled: bool,
}

/// Consumes an eventfd's count; an eventfd with nothing to read is fine.
pub(crate) fn consume_event(evt: &EventFd) -> io::Result<()> {
    match evt.read() {
        Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
        _ => Ok(()),
    }
}

/// Interrupts the driver if it wants to know about the buffers just put in
/// `ring`'s used ring; failures go to `report`.
pub(crate) fn signal_used<M: GuestMemory>(
    ring: &mut Ring<'_, '_, M>,
    interrupt: &dyn VirtioInterrupt,
    report: &mut dyn FnMut(fmt::Arguments<'_>),
) {
    match ring.needs_notification() {
        Ok(false) => {}
        Ok(true) => {
            if let Err(e) = interrupt.trigger(InterruptKind::Used) {
                report(format_args!("cannot interrupt the driver: {e}"));
            }
        }
        Err(e) => report(format_args!("cannot read used_event: {e}")),
    }
}

/// Checks that a device rebuilt from a saved state offers the features it
/// offered when saved (`saved`); `device` names it in the error.
pub(crate) fn check_restored_features(
    device: &'static str,
    saved: u64,
    offered: u64,
) -> Result<()> {
    if saved == offered {
        return Ok(());
    }
    Err(Error::RestoreMismatch {
        device,
        reason: format!("features {saved:#x} saved, the device offers {offered:#x}"),
    })
}

/// Charges `limiter` for one operation of `bytes` bytes, all or nothing.
pub(crate) fn admit(limiter: &mut RateLimiter, bytes: u64) -> bool {
    if !limiter.consume(1, TokenType::Ops) {
        return false;
    }
    if !limiter.consume(bytes, TokenType::Bytes) {
        limiter.manual_replenish(1, TokenType::Ops);
        return false;
    }
    true
}

/// The event-loop side of a device model: queue notifications in and out.
///
/// A device says how it reports a failure of its event-loop work and where
/// it counts notifications it ignored; the rest comes from
/// [`VirtioDevice`].
pub(crate) trait DeviceEvents<M>: VirtioDevice<M> {
    /// Logs a failure of the device's event-loop work, naming the device,
    /// and counts it (`event_errors`).
    fn event_error(&mut self, what: fmt::Arguments<'_>);

    /// Counts a notification that arrived while the device was inactive
    /// (`ignored_notifications`).
    fn count_ignored(&mut self);

    /// Consumes queue `queue`'s notification. Returns whether to act on
    /// it: an inactive device ignores it (and counts it).
    fn take_queue_event(&mut self, queue: usize) -> bool {
        let read = self.queue_events().get(queue).map(consume_event);
        if let Some(Err(e)) = read {
            self.event_error(format_args!("cannot read queue {queue}'s event: {e}"));
        }
        if !self.is_activated() {
            self.count_ignored();
            return false;
        }
        true
    }

    /// Signals the eventfds of `queues`, so that the event loop picks up
    /// what the driver made available before DRIVER_OK.
    fn kick_queues(&mut self, queues: &[usize]) {
        for &queue in queues {
            let kicked = self.queue_events().get(queue).map(|evt| evt.write(1));
            if let Some(Err(e)) = kicked {
                self.event_error(format_args!("cannot kick queue {queue}: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn config_reads_are_bounds_checked() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 3];
        read_config_space(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0]);
        read_config_space(&config, 4, &mut data);
        assert_eq!(data, [0; 3]);
        read_config_space(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 3]);
    }

    fn queue(ready: bool) -> Queue {
        let mut q = Queue::new(16).unwrap();
        q.set_ready(ready);
        q
    }

    #[test]
    fn activation_takes_the_queues_in_order() {
        let err = ActivationQueues::new(true, vec![queue(true)]).unwrap_err();
        assert!(
            matches!(err, Error::Activation(ActivationError::AlreadyActive)),
            "{err}"
        );

        let mut queues =
            ActivationQueues::new(false, vec![queue(true), queue(false), queue(false)]).unwrap();
        assert!(queues.ready().unwrap().ready());
        assert!(!queues.any().unwrap().ready(), "an unused queue may be off");
        let err = queues.ready().unwrap_err();
        assert!(
            matches!(err, Error::Activation(ActivationError::QueueNotReady(2))),
            "{err}"
        );
        let err = queues.any().unwrap_err();
        assert!(
            matches!(err, Error::Activation(ActivationError::QueueNotReady(3))),
            "missing: {err}"
        );
    }

    #[test]
    fn restored_features_must_be_the_saved_ones() {
        check_restored_features("test", 0b101, 0b101).unwrap();
        let err = check_restored_features("test", 0b101, 0b100).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot restore the test state: features 0x5 saved, the device offers 0x4"
        );
    }

    #[test]
    fn an_empty_eventfd_is_not_an_error() {
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        consume_event(&evt).unwrap();
        evt.write(3).unwrap();
        consume_event(&evt).unwrap();
        consume_event(&evt).unwrap();
    }
}
