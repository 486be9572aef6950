//! A built VM and its run: vCPU threads plus the device event loop on the
//! calling thread, until something ends the VM.

use std::fmt;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use ember_cpu::Vcpu;
use ember_devices::legacy::{BootTimer, Serial};
use ember_devices::trigger::EventTrigger;
use ember_memory::GuestMemoryMmap;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{Kvm, VmFd};

use crate::exit::{ExitReason, ExitWatcher, StopHandle};
use crate::io::IoBuses;
use crate::signals::TerminationSignals;
use crate::terminal::RawTerminal;
use crate::vcpu_threads::VcpuThreads;
use crate::{Error, Result};

/// A subscriber of the device event loop.
pub(crate) type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A VM ready to run. Fields drop in order: vCPUs and the VM before the memory
/// KVM maps.
pub struct Vm {
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) vm_fd: VmFd,
    pub(crate) kvm: Kvm,
    pub(crate) io: Arc<IoBuses>,
    pub(crate) serial: Arc<Mutex<Serial>>,
    pub(crate) subscribers: Vec<Subscriber>,
    pub(crate) boot_timer: Arc<Mutex<BootTimer>>,
    pub(crate) reset: EventTrigger,
    pub(crate) stop: EventTrigger,
    pub(crate) terminal: Option<RawTerminal>,
    pub(crate) memory: GuestMemoryMmap,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &self.vcpus.len())
            .field("io", &self.io)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// The boot-timer device, to read the boot time after (or during) a run.
    pub fn boot_timer(&self) -> Arc<Mutex<BootTimer>> {
        self.boot_timer.clone()
    }

    /// A handle that stops this VM while it runs.
    pub fn stop_handle(&self) -> Result<StopHandle> {
        Ok(StopHandle(self.stop.try_clone()?))
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The KVM VM.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Runs the VM until the guest resets or powers off, a vCPU fails, or (with
    /// `termination`) SIGTERM/SIGINT arrives. vCPUs are stopped and joined, the
    /// serial output flushed and the terminal restored before this returns.
    pub fn run(self, termination: Option<&TerminationSignals>) -> Result<ExitReason> {
        let Vm {
            vcpus,
            vm_fd,
            kvm,
            io,
            serial,
            subscribers,
            boot_timer: _,
            reset,
            stop,
            terminal,
            memory,
        } = self;

        let mut manager = EventManager::<Subscriber>::new().map_err(Error::EventLoop)?;
        let (report_tx, report_rx) = mpsc::channel();
        let vcpu_event = EventTrigger::new()?;
        let watcher = Arc::new(Mutex::new(ExitWatcher::new(
            reset,
            stop,
            vcpu_event.try_clone()?,
            report_rx,
            termination
                .map(TerminationSignals::try_clone_event)
                .transpose()?,
        )));
        manager.add_subscriber(watcher.clone());
        for subscriber in subscribers {
            manager.add_subscriber(subscriber);
        }

        let threads = VcpuThreads::start(vcpus, &io, &report_tx, &vcpu_event)?;
        let outcome = loop {
            let settled = watcher
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take_outcome();
            if let Some(outcome) = settled {
                break outcome.map_err(Error::Cpu);
            }
            if let Err(e) = manager.run() {
                break Err(Error::EventLoop(e));
            }
        };

        let joined = threads.stop();
        if let Err(e) = serial
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush_output()
        {
            log::warn!("cannot flush the serial output: {e}");
        }
        drop(terminal);
        drop(vm_fd);
        drop(kvm);
        if !joined {
            // A vCPU thread may still be in the guest: keep its memory mapped.
            std::mem::forget(memory);
        }
        outcome
    }
}
