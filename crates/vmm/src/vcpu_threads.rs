//! One thread per vCPU. Each runs its vCPU until the guest stops it or the VMM
//! asks it to stop, then reports back through a channel and an eventfd.
//! Stopping kicks every thread with the kick signal, repeating until each has
//! left `KVM_RUN` (a kick that lands before a thread first enters the run loop
//! would otherwise be lost), and gives up on a thread that never answers rather
//! than hanging the VMM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ember_cpu::vcpu::{install_kick_handler, kick_signal};
use ember_cpu::{Vcpu, VcpuStop};
use ember_devices::trigger::EventTrigger;
use vmm_sys_util::signal::Killable;

use crate::io::IoBuses;
use crate::{Error, Result};

/// How often stop re-kicks threads still in `KVM_RUN`.
const KICK_INTERVAL: Duration = Duration::from_millis(5);
/// How long stop waits for a vCPU thread before leaving it behind.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a vCPU thread says when it ends on its own.
#[derive(Debug)]
pub(crate) struct VcpuReport {
    pub(crate) index: u8,
    pub(crate) result: ember_cpu::Result<VcpuStop>,
}

/// The running vCPU threads.
#[derive(Debug)]
pub(crate) struct VcpuThreads {
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

fn run_vcpu(
    mut vcpu: Vcpu,
    io: &IoBuses,
    stop: &AtomicBool,
    reports: &Sender<VcpuReport>,
    wake: &EventTrigger,
) {
    let result = loop {
        match vcpu.run(io) {
            Ok(VcpuStop::Kicked) if !stop.load(Ordering::SeqCst) => continue,
            other => break other,
        }
    };
    if matches!(result, Ok(VcpuStop::Kicked)) {
        return;
    }
    let index = vcpu.index();
    if reports.send(VcpuReport { index, result }).is_ok() {
        if let Err(e) = wake.trigger() {
            log::error!("vCPU {index}: cannot wake the VMM: {e}");
        }
    }
}

impl VcpuThreads {
    /// Starts a thread for each vCPU.
    pub(crate) fn start(
        vcpus: Vec<Vcpu>,
        io: &Arc<IoBuses>,
        reports: &Sender<VcpuReport>,
        wake: &EventTrigger,
    ) -> Result<VcpuThreads> {
        install_kick_handler()?;
        let mut threads = VcpuThreads {
            handles: Vec::with_capacity(vcpus.len()),
            stop: Arc::new(AtomicBool::new(false)),
        };
        for vcpu in vcpus {
            let name = format!("ember_vcpu{}", vcpu.index());
            let (io, stop, reports, wake) = (
                io.clone(),
                threads.stop.clone(),
                reports.clone(),
                wake.try_clone()?,
            );
            let spawned = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || run_vcpu(vcpu, &io, &stop, &reports, &wake));
            match spawned {
                Ok(handle) => threads.handles.push(handle),
                Err(source) => {
                    threads.stop();
                    return Err(Error::Thread { name, source });
                }
            }
        }
        Ok(threads)
    }

    /// Stops and joins every thread. Returns `false` if some thread did not
    /// stop in time and was left running (its vCPU may still use guest memory).
    pub(crate) fn stop(self) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut pending = self.handles;
        while !pending.is_empty() && Instant::now() < deadline {
            for handle in pending.iter().filter(|h| !h.is_finished()) {
                if let Err(e) = handle.kill(kick_signal()) {
                    log::warn!("cannot kick a vCPU thread: {e}");
                }
            }
            std::thread::sleep(
                KICK_INTERVAL.min(deadline.saturating_duration_since(Instant::now())),
            );
            let (finished, running): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|h| h.is_finished());
            for handle in finished {
                if handle.join().is_err() {
                    log::error!("a vCPU thread panicked");
                }
            }
            pending = running;
        }
        if !pending.is_empty() {
            log::error!(
                "{} vCPU thread(s) did not stop; leaving them",
                pending.len()
            );
        }
        pending.is_empty()
    }
}
