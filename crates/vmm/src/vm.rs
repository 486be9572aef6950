//! A built VM, and a running one: vCPU threads, the device thread, and an exit
//! watcher on an event loop the caller owns, with pause, resume, key
//! injection, metrics and an orderly stop.

use std::fmt;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ember_cpu::vcpu::KickSignal;
use ember_cpu::Vcpu;
use ember_devices::legacy::{BootTimer, Serial, I8042};
use ember_devices::trigger::EventTrigger;
use ember_jailer::seccomp::{self, Filters, ThreadKind};
use ember_memory::GuestMemoryMmap;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{Kvm, VmFd};

use crate::builder::Devices;
use crate::device_thread::DeviceThread;
use crate::exit::{ExitReason, ExitWatcher, StopHandle, ThreadReport};
use crate::io::IoBuses;
use crate::metrics::MetricGroup;
use crate::signals::TerminationSignals;
use crate::snapshot::MachineInfo;
use crate::terminal::RawTerminal;
use crate::vcpu_threads::VcpuThreads;
use crate::virtio_devices::{
    SharedBalloon, SharedBlock, SharedNet, SharedRng, SharedVsock, VirtioDevices, VirtioSlot,
};
use crate::{Error, Result};
use ember_devices::virtio::balloon::BalloonCounters;

/// A subscriber of the device event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The event loop a VM's devices run on.
pub type EventLoop = EventManager<Subscriber>;

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Devices the running VM keeps handles on.
pub(crate) struct DeviceHandles {
    pub(crate) io: Arc<IoBuses>,
    pub(crate) serial: Arc<Mutex<Serial>>,
    pub(crate) i8042: Arc<Mutex<I8042>>,
    pub(crate) boot_timer: Arc<Mutex<BootTimer>>,
    pub(crate) reset: EventTrigger,
    pub(crate) stop: EventTrigger,
    pub(crate) drives: Vec<(String, SharedBlock)>,
    pub(crate) nets: Vec<(String, SharedNet)>,
    pub(crate) vsock: Option<SharedVsock>,
    pub(crate) entropy: Option<SharedRng>,
    pub(crate) balloon: Option<SharedBalloon>,
    /// Every virtio device with its placement, for snapshots.
    pub(crate) virtio: Vec<VirtioSlot>,
}

/// A VM ready to run. Fields drop in order: vCPUs and the VM before the memory
/// KVM maps.
///
/// # Example
///
/// A VM whose vCPU threads are kicked with `SIGRTMIN + 3`, for a process
/// that uses `SIGRTMIN` itself (needs `/dev/kvm` and a kernel):
///
/// ```no_run
/// use ember_vmm::cpu::KickSignal;
/// use ember_vmm::{build, VmConfig};
///
/// let mut vm = build(VmConfig::new("vmlinux", "console=ttyS0"))?;
/// vm.set_kick_signal(KickSignal::realtime(3)?);
/// let reason = vm.run(None)?;
/// println!("the VM ended: {reason:?}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Vm {
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) vm_fd: VmFd,
    pub(crate) kvm: Kvm,
    pub(crate) devices: DeviceHandles,
    pub(crate) subscribers: Vec<Subscriber>,
    pub(crate) terminal: Option<RawTerminal>,
    pub(crate) seccomp: Option<Filters>,
    /// What a snapshot records of the machine.
    pub(crate) machine: MachineInfo,
    /// Start with the vCPUs and devices paused (a restored VM not resumed).
    pub(crate) start_paused: bool,
    /// The signal that kicks vCPU threads out of `KVM_RUN`.
    pub(crate) kick_signal: KickSignal,
    /// The caller's own sections of the snapshot this VM was restored from.
    pub(crate) app_sections: Vec<ember_snapshot::Section>,
    pub(crate) memory: GuestMemoryMmap,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &self.vcpus.len())
            .field("io", &self.devices.io)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Puts a built or restored VM together.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assemble(
        kvm: Kvm,
        vm_fd: VmFd,
        memory: GuestMemoryMmap,
        vcpus: Vec<Vcpu>,
        devices: Devices,
        virtio: VirtioDevices,
        machine: MachineInfo,
        seccomp: Option<Filters>,
        start_paused: bool,
    ) -> Result<Vm> {
        let mut subscribers = devices.subscribers;
        subscribers.extend(virtio.subscribers);
        Ok(Vm {
            vcpus,
            vm_fd,
            kvm,
            devices: DeviceHandles {
                io: Arc::new(IoBuses {
                    pio: devices.pio,
                    mmio: devices.mmio,
                    counters: Default::default(),
                }),
                serial: devices.serial,
                i8042: devices.i8042,
                boot_timer: devices.boot_timer,
                reset: devices.reset,
                stop: EventTrigger::new()?,
                drives: virtio.drives,
                nets: virtio.nets,
                vsock: virtio.vsock,
                entropy: virtio.entropy,
                balloon: virtio.balloon,
                virtio: virtio.slots,
            },
            subscribers,
            terminal: devices.terminal,
            seccomp,
            machine,
            start_paused,
            kick_signal: KickSignal::default(),
            app_sections: Vec::new(),
            memory,
        })
    }

    /// Kicks the vCPU threads with `signal` instead of `SIGRTMIN`, for a VMM
    /// that uses `SIGRTMIN` for something else; its handler is installed
    /// when the VM starts.
    pub fn set_kick_signal(&mut self, signal: KickSignal) {
        self.kick_signal = signal;
    }

    /// Takes the caller's own sections (`app.*`) of the snapshot this VM was
    /// restored from (none for a booted VM).
    pub fn take_app_sections(&mut self) -> Vec<ember_snapshot::Section> {
        std::mem::take(&mut self.app_sections)
    }

    /// The boot-timer device, to read the boot time after (or during) a run.
    pub fn boot_timer(&self) -> Arc<Mutex<BootTimer>> {
        self.devices.boot_timer.clone()
    }

    /// A handle that stops this VM while it runs.
    pub fn stop_handle(&self) -> Result<StopHandle> {
        Ok(StopHandle(self.devices.stop.try_clone()?))
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The KVM VM.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// Starts the vCPUs and the device thread (which runs the devices' event
    /// loop), and registers the exit watcher on `event_loop`. The caller runs
    /// the loop and checks [`RunningVm::take_outcome`] after each turn.
    ///
    /// With seccomp filters configured, each vCPU thread installs the `vcpu`
    /// filter before it first enters the guest, the device thread the `vmm`
    /// filter before it handles any event, and the calling thread (the VMM
    /// thread) the `vmm` filter once the vCPUs are running: from then on it
    /// must not use system calls the filter refuses.
    pub fn start(
        self,
        event_loop: &mut EventLoop,
        termination: Option<&TerminationSignals>,
    ) -> Result<RunningVm> {
        let Vm {
            vcpus,
            vm_fd,
            kvm,
            devices,
            subscribers,
            terminal,
            seccomp,
            machine,
            start_paused,
            kick_signal,
            app_sections: _,
            memory,
        } = self;
        let (report_tx, report_rx) = mpsc::channel();
        let vcpu_event = EventTrigger::new()?;
        let watcher = watch_exits(&devices, &vcpu_event, report_rx, termination)?;
        event_loop.add_subscriber(watcher.clone());
        let filter = |kind| seccomp.as_ref().and_then(|f| f.get(&kind));
        let device_thread = DeviceThread::start(
            subscribers,
            filter(ThreadKind::Vmm),
            &report_tx,
            &vcpu_event,
        )?;
        let threads = VcpuThreads::start(
            vcpus,
            &devices.io,
            &report_tx,
            &vcpu_event,
            filter(ThreadKind::Vcpu),
            start_paused,
            kick_signal,
        )?;
        if start_paused {
            device_thread.pause()?;
        }
        let running = RunningVm {
            threads: Some(threads),
            device_thread: Some(device_thread),
            paused: start_paused,
            machine,
            watcher,
            devices,
            terminal,
            vm_fd: Some(vm_fd),
            kvm: Some(kvm),
            memory: Some(memory),
        };
        if let Some(program) = filter(ThreadKind::Vmm) {
            seccomp::apply(program).map_err(|source| Error::Seccomp {
                thread: "vmm",
                source,
            })?;
        }
        Ok(running)
    }

    /// Runs the VM on its own event loop until the guest resets or powers off,
    /// a vCPU fails, or (with `termination`) SIGTERM/SIGINT arrives. vCPUs are
    /// stopped and joined, the serial output flushed and the terminal restored
    /// before this returns.
    pub fn run(self, termination: Option<&TerminationSignals>) -> Result<ExitReason> {
        let mut event_loop = EventLoop::new().map_err(Error::EventLoop)?;
        let running = self.start(&mut event_loop, termination)?;
        let outcome = loop {
            if let Some(outcome) = running.take_outcome() {
                break outcome;
            }
            if let Err(e) = event_loop.run() {
                break Err(Error::EventLoop(e));
            }
        };
        running.shutdown();
        outcome
    }
}

/// The state of a started VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// vCPUs are running.
    Running,
    /// vCPUs are parked; guest state is kept.
    Paused,
}

/// A started VM. Dropping it stops the vCPUs.
pub struct RunningVm {
    pub(crate) threads: Option<VcpuThreads>,
    device_thread: Option<DeviceThread>,
    pub(crate) paused: bool,
    pub(crate) machine: MachineInfo,
    watcher: Arc<Mutex<ExitWatcher>>,
    pub(crate) devices: DeviceHandles,
    terminal: Option<RawTerminal>,
    pub(crate) vm_fd: Option<VmFd>,
    pub(crate) kvm: Option<Kvm>,
    pub(crate) memory: Option<GuestMemoryMmap>,
}

impl fmt::Debug for RunningVm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningVm")
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}

impl RunningVm {
    /// How the VM ended, once it has (reported once).
    pub fn take_outcome(&self) -> Option<Result<ExitReason>> {
        lock(&self.watcher).take_outcome()
    }

    /// Running or paused.
    pub fn state(&self) -> RunState {
        if self.paused {
            RunState::Paused
        } else {
            RunState::Running
        }
    }

    pub(crate) fn threads(&self) -> Result<&VcpuThreads> {
        self.threads
            .as_ref()
            .ok_or(Error::InvalidState("the VM has stopped"))
    }

    fn device_thread(&self) -> Result<&DeviceThread> {
        self.device_thread
            .as_ref()
            .ok_or(Error::InvalidState("the VM has stopped"))
    }

    /// Parks every vCPU outside `KVM_RUN` and the device loop, keeping guest
    /// state: once this returns nothing writes guest memory until
    /// [`RunningVm::resume`].
    pub fn pause(&mut self) -> Result<()> {
        if !self.paused {
            let result = self
                .threads()?
                .pause()
                .and_then(|()| self.device_thread()?.pause());
            if result.is_err() {
                self.device_thread()?.resume();
                self.threads()?.resume();
                return result;
            }
            self.paused = true;
            log::info!("VM paused");
        }
        Ok(())
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&mut self) -> Result<()> {
        if self.paused {
            self.device_thread()?.resume();
            self.threads()?.resume();
            self.paused = false;
            log::info!("VM resumed");
        }
        Ok(())
    }

    /// Injects Ctrl-Alt-Del into the i8042 for the guest to read.
    pub fn send_ctrl_alt_del(&self) -> Result<()> {
        lock(&self.devices.i8042).send_ctrl_alt_del()?;
        Ok(())
    }

    /// A handle that stops this VM.
    pub fn stop_handle(&self) -> Result<StopHandle> {
        Ok(StopHandle(self.devices.stop.try_clone()?))
    }

    /// The boot-timer device.
    pub fn boot_timer(&self) -> Arc<Mutex<BootTimer>> {
        self.devices.boot_timer.clone()
    }

    /// Guest memory (while the VM exists).
    pub fn memory(&self) -> Option<&GuestMemoryMmap> {
        self.memory.as_ref()
    }

    /// The block device with id `drive_id`.
    pub fn drive(&self, drive_id: &str) -> Result<SharedBlock> {
        self.devices
            .drives
            .iter()
            .find(|(id, _)| id == drive_id)
            .map(|(_, block)| block.clone())
            .ok_or_else(|| Error::UnknownDrive(drive_id.to_owned()))
    }

    /// The network device with id `iface_id`.
    pub fn net(&self, iface_id: &str) -> Result<SharedNet> {
        self.devices
            .nets
            .iter()
            .find(|(id, _)| id == iface_id)
            .map(|(_, net)| net.clone())
            .ok_or_else(|| Error::UnknownNetworkInterface(iface_id.to_owned()))
    }

    /// The balloon device.
    pub fn balloon(&self) -> Result<SharedBalloon> {
        self.devices.balloon.clone().ok_or(Error::NoBalloon)
    }

    /// Counters of the vCPUs and devices, grouped.
    pub fn metrics(&self) -> Vec<MetricGroup> {
        let devices = &self.devices;
        let mut groups = vec![MetricGroup::new("vcpu", devices.io.counters.snapshot())];
        groups.extend(devices.legacy_metrics());
        groups.extend(devices.drive_metrics());
        groups.extend(devices.net_metrics());
        // One `mmds` group per interface answering for the MMDS: the metrics
        // line adds them up.
        groups.extend(devices.nets.iter().filter_map(|(_, net)| {
            let c = lock(net).mmds_counters()?;
            Some(MetricGroup::new("mmds", c.snapshot()))
        }));
        groups.extend(devices.vsock_metrics());
        if let Some(rng) = &devices.entropy {
            groups.push(rng_metrics(lock(rng).counters()));
        }
        if let Some(balloon) = &devices.balloon {
            groups.push(balloon_metrics(&lock(balloon).counters()));
        }
        groups
    }

    /// The entropy device, if the VM has one.
    pub fn entropy(&self) -> Option<SharedRng> {
        self.devices.entropy.clone()
    }

    /// Stops and joins the vCPUs, flushes the serial output and restores the
    /// terminal.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let Some(threads) = self.threads.take() else {
            return;
        };
        threads.resume();
        let joined = threads.stop();
        let devices_stopped = self.device_thread.take().is_none_or(DeviceThread::stop);
        if let Err(e) = lock(&self.devices.serial).flush_output() {
            log::warn!("cannot flush the serial output: {e}");
        }
        self.terminal.take();
        self.vm_fd.take();
        self.kvm.take();
        if !joined || !devices_stopped {
            // A vCPU may still be in the guest, or a device handler running:
            // keep guest memory mapped.
            std::mem::forget(self.memory.take());
        }
    }
}

/// The entropy device's counters as the `entropy` metrics group.
/// The event-loop subscriber that learns how the VM ends: a reset, a stop
/// request, a vCPU thread's report (woken by `vcpu_event`), or a
/// termination signal.
fn watch_exits(
    devices: &DeviceHandles,
    vcpu_event: &EventTrigger,
    reports: mpsc::Receiver<ThreadReport>,
    termination: Option<&TerminationSignals>,
) -> Result<Arc<Mutex<ExitWatcher>>> {
    Ok(Arc::new(Mutex::new(ExitWatcher::new(
        devices.reset.try_clone()?,
        devices.stop.try_clone()?,
        vcpu_event.try_clone()?,
        reports,
        termination
            .map(TerminationSignals::try_clone_event)
            .transpose()?,
    ))))
}

impl DeviceHandles {
    /// The serial port's and the i8042's counters.
    fn legacy_metrics(&self) -> [MetricGroup; 2] {
        let serial = lock(&self.serial).counters();
        let i8042 = lock(&self.i8042).counters();
        [
            MetricGroup::new(
                "uart",
                vec![
                    ("write_count", serial.bytes_out),
                    ("missed_write_count", serial.bytes_lost),
                    ("read_count", serial.bytes_in),
                    ("rate_limiter_dropped_bytes", serial.bytes_dropped),
                ],
            ),
            MetricGroup::new(
                "i8042",
                vec![
                    ("reset_count", i8042.resets),
                    ("keys_injected", i8042.keys_injected),
                    ("missed_interrupts", i8042.missed_interrupts),
                ],
            ),
        ]
    }

    /// One group per drive.
    fn drive_metrics(&self) -> impl Iterator<Item = MetricGroup> + '_ {
        self.drives.iter().map(|(id, block)| {
            let c = lock(block).counters();
            MetricGroup::new(
                format!("block_{id}"),
                vec![
                    ("requests", c.requests),
                    ("read_count", c.reads),
                    ("write_count", c.writes),
                    ("flush_count", c.flushes),
                    ("sync_count", c.syncs),
                    ("read_bytes", c.read_bytes),
                    ("write_bytes", c.write_bytes),
                    ("io_errors", c.io_errors),
                    ("unsupported", c.unsupported),
                    ("invalid_chains", c.invalid_chains),
                    ("throttled", c.throttled),
                    ("event_errors", c.event_errors),
                ],
            )
        })
    }

    /// One group per network interface.
    fn net_metrics(&self) -> impl Iterator<Item = MetricGroup> + '_ {
        self.nets.iter().map(|(id, net)| {
            let c = lock(net).counters();
            MetricGroup::new(
                format!("net_{id}"),
                vec![
                    ("rx_frames", c.rx_frames),
                    ("rx_bytes", c.rx_bytes),
                    ("rx_no_buffer", c.rx_no_buffer),
                    ("rx_too_big", c.rx_too_big),
                    ("rx_dropped", c.rx_dropped),
                    ("rx_malformed", c.rx_malformed),
                    ("rx_tap_errors", c.rx_tap_errors),
                    ("rx_throttled", c.rx_throttled),
                    ("tx_frames", c.tx_frames),
                    ("tx_bytes", c.tx_bytes),
                    ("tx_too_big", c.tx_too_big),
                    ("tx_malformed", c.tx_malformed),
                    ("tx_tap_errors", c.tx_tap_errors),
                    ("tx_throttled", c.tx_throttled),
                    ("rx_queue_events", c.rx_queue_events),
                    ("tx_queue_events", c.tx_queue_events),
                    ("tap_events", c.tap_events),
                    ("event_errors", c.event_errors),
                ],
            )
        })
    }

    /// The vsock device's counters, if it has one.
    fn vsock_metrics(&self) -> Option<MetricGroup> {
        let vsock = self.vsock.as_ref()?;
        let c = lock(vsock).counters();
        Some(MetricGroup::new(
            "vsock",
            vec![
                ("conns_opened", c.conns_opened),
                ("conns_closed", c.conns_closed),
                ("conns_refused", c.conns_refused),
                ("rx_packets", c.rx_packets),
                ("tx_packets", c.tx_packets),
                ("rx_bytes", c.rx_bytes),
                ("tx_bytes", c.tx_bytes),
                ("rsts_sent", c.rsts_sent),
                ("malformed_packets", c.malformed_packets),
                ("credit_violations", c.credit_violations),
                ("credit_stalls", c.credit_stalls),
                ("connections", c.connections),
                ("buffered_bytes", c.buffered_bytes),
            ],
        ))
    }
}

fn rng_metrics(c: ember_devices::virtio::rng::RngCounters) -> MetricGroup {
    MetricGroup::new(
        "entropy",
        vec![
            ("requests", c.requests),
            ("bytes", c.bytes),
            ("invalid_chains", c.invalid_chains),
            ("host_rng_fails", c.host_rng_fails),
            ("throttled", c.throttled),
            ("rate_limiter_events", c.rate_limiter_events),
            ("ignored_notifications", c.ignored_notifications),
            ("event_errors", c.event_errors),
        ],
    )
}

/// The balloon's counters: Firecracker's `balloon` group and Ember's own.
fn balloon_metrics(c: &BalloonCounters) -> MetricGroup {
    MetricGroup::new(
        "balloon",
        vec![
            ("activate_fails", c.activate_fails),
            ("inflate_count", c.inflate_count),
            ("stats_updates_count", c.stats_updates_count),
            ("stats_update_fails", c.stats_update_fails),
            ("deflate_count", c.deflate_count),
            ("event_fails", c.event_fails),
            ("free_page_report_count", c.free_page_report_count),
            ("free_page_report_freed", c.free_page_report_freed),
            ("free_page_report_fails", c.free_page_report_fails),
            ("free_page_hint_count", c.free_page_hint_count),
            ("free_page_hint_freed", c.free_page_hint_freed),
            ("free_page_hint_fails", c.free_page_hint_fails),
            ("pages_released", c.pages_released),
            ("pages_outside", c.pages_outside),
            ("malformed_buffers", c.malformed_buffers),
            ("ignored_notifications", c.ignored_notifications),
        ],
    )
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.stop_now();
    }
}
