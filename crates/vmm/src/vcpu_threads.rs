//! One thread per vCPU. Each runs its vCPU until the guest stops it or the VMM
//! asks it to stop, then reports back through a channel and an eventfd.
//! Stopping kicks every thread with the kick signal, repeating until each has
//! left `KVM_RUN` (a kick that lands before a thread first enters the run loop
//! would otherwise be lost), and gives up on a thread that never answers rather
//! than hanging the VMM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
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
    /// Disconnects when every thread has ended (each holds a sender).
    finished: Receiver<()>,
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
        let (finished_tx, finished) = mpsc::channel();
        let mut threads = VcpuThreads {
            handles: Vec::with_capacity(vcpus.len()),
            stop: Arc::new(AtomicBool::new(false)),
            finished,
        };
        for vcpu in vcpus {
            let name = format!("ember_vcpu{}", vcpu.index());
            let (io, stop, reports, wake, alive) = (
                io.clone(),
                threads.stop.clone(),
                reports.clone(),
                wake.try_clone()?,
                finished_tx.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    run_vcpu(vcpu, &io, &stop, &reports, &wake);
                    drop(alive);
                });
            match spawned {
                Ok(handle) => threads.handles.push(handle),
                Err(source) => {
                    threads.stop();
                    return Err(Error::Thread { name, source });
                }
            }
        }
        drop(finished_tx);
        Ok(threads)
    }

    /// Stops and joins every thread. Returns `false` if some thread did not
    /// stop in time and was left running (its vCPU may still use guest memory).
    pub(crate) fn stop(self) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let all_ended = loop {
            for handle in self.handles.iter().filter(|h| !h.is_finished()) {
                if let Err(e) = handle.kill(kick_signal()) {
                    log::warn!("cannot kick a vCPU thread: {e}");
                }
            }
            let wait = KICK_INTERVAL.min(deadline.saturating_duration_since(Instant::now()));
            match self.finished.recv_timeout(wait) {
                Err(RecvTimeoutError::Disconnected) => break true,
                _ if Instant::now() >= deadline => break false,
                _ => {}
            }
        };
        if !all_ended {
            let stuck = self.handles.iter().filter(|h| !h.is_finished()).count();
            log::error!("{stuck} vCPU thread(s) did not stop; leaving them");
            return false;
        }
        for handle in self.handles {
            if handle.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        }
        true
    }
}
