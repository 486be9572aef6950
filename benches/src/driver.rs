//! The guest driver's side shared by the device benchmarks: the event loop
//! a VMM runs its devices on, the virtio-mmio initialisation up to
//! DRIVER_OK, and "kick a queue, run the loop until the device has used
//! what was made available" — the part that is timed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_devices::virtio::test_utils::{
    add_status, negotiate, read_reg, setup_queue, GuestQueue, Mem,
};
use ember_devices::virtio::MmioTransport;
use event_manager::{EventManager, MutEventSubscriber};
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_DRIVER_OK;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_STATUS;
use vmm_sys_util::eventfd::EventFd;

use crate::{Context, Error, Result};

/// The event loop, as the VMM's.
pub type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// How long the device may take to use one batch.
const BATCH_DEADLINE: Duration = Duration::from_secs(10);

/// A new event loop.
pub fn manager() -> Result<Manager> {
    Manager::new().map_err(|e| Error::Unexpected(format!("creating the event loop: {e:?}")))
}

/// Runs the loop once, waiting at most `timeout_ms`.
pub fn run_once(manager: &mut Manager, timeout_ms: i32) -> Result<()> {
    manager
        .run_with_timeout(timeout_ms)
        .map(|_| ())
        .map_err(|e| Error::Unexpected(format!("event loop: {e:?}")))
}

/// A guest-memory error as a benchmark error.
pub fn guest_error(e: vm_memory::GuestMemoryError) -> Error {
    Error::Unexpected(format!("guest memory: {e}"))
}

/// The driver's initialisation through the MMIO registers, up to
/// DRIVER_OK: `features`, then each queue in order. Returns the queues'
/// notification eventfds, as KVM's ioeventfds would hold them.
pub fn driver_init(
    transport: &mut MmioTransport<Mem>,
    features: u64,
    queues: &[&GuestQueue],
) -> Result<Vec<EventFd>> {
    const FEATURES_OK: u32 = 8;
    if negotiate(transport, features) & FEATURES_OK == 0 {
        return Err(Error::Unexpected(format!(
            "the device refused features {features:#x}"
        )));
    }
    for (index, queue) in queues.iter().enumerate() {
        setup_queue(transport, u32::try_from(index).unwrap_or(u32::MAX), queue);
    }
    add_status(transport, VIRTIO_CONFIG_S_DRIVER_OK);
    let status = read_reg(transport, VIRTIO_MMIO_STATUS);
    if status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
        return Err(Error::Unexpected(format!(
            "the device did not start: status {status:#x}"
        )));
    }
    transport
        .queue_events()
        .iter()
        .map(|evt| evt.try_clone().ctx("cloning a queue eventfd"))
        .collect()
}

/// Kicks `kick` (the guest's QueueNotify through an ioeventfd) and runs the
/// loop until `queue`'s used index is `target`; returns the time taken.
pub fn kick_and_wait(
    manager: &mut Manager,
    queue: &GuestQueue,
    kick: &EventFd,
    target: u16,
) -> Result<Duration> {
    let start = Instant::now();
    kick.write(1).ctx("kicking a queue")?;
    while queue.used_idx() != target {
        run_once(manager, 1000)?;
        if start.elapsed() > BATCH_DEADLINE {
            return Err(Error::Timeout(format!(
                "the queue at {:#x} used up to {}, not {target}",
                queue.desc.0,
                queue.used_idx()
            )));
        }
    }
    Ok(start.elapsed())
}
