//! Why a VM stopped, and the event-loop subscriber that finds out: it watches
//! the i8042 reset line, the vCPU and device threads' reports and the termination signals.

use std::os::fd::AsRawFd;
use std::sync::mpsc::Receiver;

use ember_cpu::VcpuStop;
use ember_devices::trigger::EventTrigger;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

/// How a VM ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 or a KVM reset event).
    Reset,
    /// The guest powered off.
    PowerOff,
    /// A triple fault, which a PC treats as a reset.
    TripleFault,
    /// The guest reported a crash.
    GuestCrash,
    /// The VMM received a termination signal.
    Signal(i32),
    /// The VM's owner stopped it through a [`crate::StopHandle`].
    Stopped,
}

impl ExitReason {
    /// The process exit code for this reason: 0 for a guest-initiated stop,
    /// 1 for a crash, 128 + N for signal N.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Reset
            | ExitReason::PowerOff
            | ExitReason::TripleFault
            | ExitReason::Stopped => 0,
            ExitReason::GuestCrash => 1,
            ExitReason::Signal(num) => 128 + num,
        }
    }
}

/// The end of a VM run: a reason, or the error a vCPU stopped with.
pub(crate) type Outcome = crate::Result<ExitReason>;

/// What a vCPU thread or the device thread says when it ends on its own.
#[derive(Debug)]
pub(crate) struct ThreadReport {
    /// The thread's name.
    pub(crate) thread: String,
    /// Why it ended.
    pub(crate) result: crate::Result<VcpuStop>,
}

/// Watches everything that can end the VM and keeps the first outcome.
pub(crate) struct ExitWatcher {
    reset: EventTrigger,
    stop: EventTrigger,
    vcpu_event: EventTrigger,
    vcpu_reports: Receiver<ThreadReport>,
    termination: Option<(EventFd, i32)>,
    outcome: Option<Outcome>,
}

impl ExitWatcher {
    pub(crate) fn new(
        reset: EventTrigger,
        stop: EventTrigger,
        vcpu_event: EventTrigger,
        vcpu_reports: Receiver<ThreadReport>,
        termination: Option<EventFd>,
    ) -> ExitWatcher {
        ExitWatcher {
            reset,
            stop,
            vcpu_event,
            vcpu_reports,
            termination: termination.map(|fd| {
                let raw = fd.as_raw_fd();
                (fd, raw)
            }),
            outcome: None,
        }
    }

    pub(crate) fn take_outcome(&mut self) -> Option<Outcome> {
        self.outcome.take()
    }

    fn settle(&mut self, outcome: Outcome) {
        match &self.outcome {
            None => self.outcome = Some(outcome),
            Some(first) => log::debug!("VM already stopping ({first:?}); also {outcome:?}"),
        }
    }

    fn on_vcpu_reports(&mut self) {
        let _ = self.vcpu_event.event_fd().read();
        while let Ok(report) = self.vcpu_reports.try_recv() {
            let outcome = match report.result {
                Ok(VcpuStop::Reset) => Ok(ExitReason::Reset),
                Ok(VcpuStop::PowerOff) => Ok(ExitReason::PowerOff),
                Ok(VcpuStop::TripleFault) => Ok(ExitReason::TripleFault),
                Ok(VcpuStop::Crash) => Ok(ExitReason::GuestCrash),
                Ok(VcpuStop::Kicked) => continue,
                Err(e) => Err(e),
            };
            log::info!("{} stopped: {outcome:?}", report.thread);
            self.settle(outcome);
        }
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let mut fds = vec![
            self.reset.as_raw_fd(),
            self.stop.as_raw_fd(),
            self.vcpu_event.as_raw_fd(),
        ];
        fds.extend(self.termination.as_ref().map(|(_, raw)| *raw));
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("cannot watch exit event fd {fd}: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.reset.as_raw_fd() {
            let _ = self.reset.event_fd().read();
            log::info!("guest reset through the i8042");
            self.settle(Ok(ExitReason::Reset));
        } else if fd == self.stop.as_raw_fd() {
            let _ = self.stop.event_fd().read();
            log::info!("VM stop requested");
            self.settle(Ok(ExitReason::Stopped));
        } else if fd == self.vcpu_event.as_raw_fd() {
            self.on_vcpu_reports();
        } else if let Some((event, raw)) = &self.termination {
            if fd == *raw {
                let _ = event.read();
                let num = crate::signals::last_signal().unwrap_or(libc::SIGTERM);
                log::info!("received signal {num}, stopping the VM");
                self.settle(Ok(ExitReason::Signal(num)));
            }
        }
    }
}

/// Stops a running VM from another thread: [`crate::Vm::run`] returns
/// [`ExitReason::Stopped`].
#[derive(Debug)]
pub struct StopHandle(pub(crate) EventTrigger);

impl StopHandle {
    /// Asks the VM to stop.
    pub fn stop(&self) -> std::io::Result<()> {
        self.0.trigger()
    }
}
