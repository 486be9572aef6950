//! Building a VM from a [`VmConfig`]: inputs are validated and opened first, so
//! a bad path or size fails before any KVM state exists; then the VM, memory,
//! kernel, boot structures, devices and vCPUs are set up.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ember_boot::{configure_boot, load_initrd, load_kernel, BootAddresses, BootInfo, BootProtocol};
use ember_cpu::cpuid::host_phys_addr_bits;
use ember_cpu::mptable::setup_mptable;
use ember_cpu::platform::setup_platform;
use ember_cpu::{EntryPoint, Vcpu, MAX_VCPUS};
use ember_devices::host_files::{open_input, InputKind};
use ember_devices::legacy::{
    self, BootTimer, I8042State, Serial, SerialInput as SerialInputDevice, SerialState,
    StdinReader, I8042,
};
use ember_devices::trigger::EventTrigger;
use ember_devices::Bus;
use ember_memory::layout::{
    BOOT_TIMER_SIZE, BOOT_TIMER_START, CMDLINE_START, HIMEM_START, PVH_INFO_START,
    PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use ember_memory::{
    map_guest_memory, register_with_kvm, register_with_kvm_logging_dirty_pages, Backing,
    DirtyPageTracking, GuestMemoryMmap, MemoryLayout,
};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestAddress;

use crate::config::{BoxedInput, SerialInput, SerialOutput, VmConfig};
use crate::snapshot::MachineInfo;
use crate::terminal::RawTerminal;
use crate::virtio_devices::{attach_devices, extend_cmdline, DeviceConfigs};
use crate::vm::{Subscriber, Vm};
use crate::{Error, Result};

/// Most vCPUs a VM may have: Firecracker's limit (the MP table and KVM allow
/// more, but nothing is tested beyond it).
pub const MAX_VCPU_COUNT: u8 = 32;

/// Opens the kernel or initrd at `path`: a regular file, opened without ever
/// blocking (a FIFO, directory or device is refused, see [`open_input`]).
fn open(what: &'static str, path: &Path) -> Result<File> {
    open_input(path, InputKind::RegularFile, false).map_err(|source| Error::Open {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Refuses a vCPU count outside 1..=[`MAX_VCPU_COUNT`].
pub fn check_vcpu_count(count: u8) -> Result<()> {
    check_vcpus_against(None, count)
}

/// Lays out `mem_size_mib` MiB of guest memory, refusing a size whose bytes
/// do not fit in 64 bits or that would end beyond the host's guest-physical
/// address width. (Whether the host can map it is only known at build.)
pub fn memory_layout(mem_size_mib: u64) -> Result<MemoryLayout> {
    Ok(MemoryLayout::with_mib(mem_size_mib, host_phys_addr_bits())?)
}

/// Refuses a kernel command line the boot protocol cannot carry (too long,
/// or holding a NUL byte).
pub fn check_cmdline(cmdline: &str) -> Result<()> {
    Ok(ember_boot::cmdline::validate(
        cmdline,
        ember_memory::layout::CMDLINE_MAX_SIZE,
    )?)
}

pub(crate) fn open_kvm(path: &Path) -> Result<Kvm> {
    let kvm_err = |source| Error::OpenKvm {
        path: path.to_owned(),
        source,
    };
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| kvm_err(kvm_ioctls::Error::new(libc::EINVAL)))?;
    Kvm::new_with_path(&c_path).map_err(kvm_err)
}

pub(crate) fn check_vcpus_against(kvm: Option<&Kvm>, count: u8) -> Result<()> {
    let limit = usize::from(MAX_VCPUS.min(MAX_VCPU_COUNT));
    let max = kvm.map_or(limit, |kvm| kvm.get_max_vcpus().min(limit));
    if count == 0 || usize::from(count) > max {
        return Err(ember_cpu::Error::VcpuCount {
            count: usize::from(count),
            max,
        }
        .into());
    }
    Ok(())
}

/// Where Ember's memory layout puts the boot structures.
const BOOT_ADDRESSES: BootAddresses = BootAddresses {
    cmdline: GuestAddress(CMDLINE_START),
    zero_page: GuestAddress(ZERO_PAGE_START),
    pvh_start_info: GuestAddress(PVH_INFO_START),
    pvh_modules: GuestAddress(PVH_MODLIST_START),
    pvh_memmap: GuestAddress(PVH_MEMMAP_START),
};

/// Loads the kernel, initrd and boot structures; returns how to enter the kernel.
fn load_guest(
    config: &VmConfig,
    cmdline: &str,
    layout: &MemoryLayout,
    memory: &GuestMemoryMmap,
    mut kernel_file: File,
    initrd_file: Option<File>,
) -> Result<EntryPoint> {
    let highmem_start = GuestAddress(HIMEM_START);
    let kernel = load_kernel(
        memory,
        &mut kernel_file,
        highmem_start,
        layout.low_ram_end(),
    )
    .map_err(|source| Error::Kernel {
        path: config.kernel.clone(),
        source,
    })?;
    let initrd = match (initrd_file, &config.initrd) {
        (Some(mut file), Some(path)) => {
            let limit = kernel.setup_header.map_or(layout.low_ram_end(), |hdr| {
                layout.low_ram_end().min(u64::from(hdr.initrd_addr_max) + 1)
            });
            Some(
                load_initrd(memory, &mut file, kernel.end, limit).map_err(|source| {
                    Error::Initrd {
                        path: path.clone(),
                        source,
                    }
                })?,
            )
        }
        _ => None,
    };
    let e820 = layout.e820_entries();
    configure_boot(
        memory,
        &kernel,
        &BootInfo {
            cmdline,
            e820: &e820,
            initrd,
        },
        &BOOT_ADDRESSES,
    )?;
    setup_mptable(memory, config.vcpu_count)?;
    log::info!(
        "kernel {} loaded as {}, entry {:#x}",
        config.kernel.display(),
        kernel.format,
        kernel.entry.0
    );
    Ok(match kernel.protocol {
        BootProtocol::Linux64 => EntryPoint::Linux64 {
            entry: kernel.entry.0,
        },
        BootProtocol::Pvh => EntryPoint::Pvh {
            entry: kernel.entry.0,
        },
    })
}

/// The legacy devices, the buses they sit on and their event-loop subscribers.
pub(crate) struct Devices {
    pub(crate) pio: Bus,
    pub(crate) mmio: Bus,
    pub(crate) serial: Arc<Mutex<Serial>>,
    pub(crate) i8042: Arc<Mutex<I8042>>,
    pub(crate) boot_timer: Arc<Mutex<BootTimer>>,
    pub(crate) reset: EventTrigger,
    pub(crate) subscribers: Vec<Subscriber>,
    pub(crate) terminal: Option<RawTerminal>,
}

/// The host ends of the legacy devices.
pub(crate) struct LegacyInputs {
    pub(crate) serial_output: SerialOutput,
    pub(crate) serial_output_limit: Option<ember_ratelimit::BucketConfig>,
    pub(crate) serial_input: SerialInput,
    pub(crate) start_time: ember_devices::legacy::StartTime,
}

impl LegacyInputs {
    /// Takes the serial ends out of a configuration (leaving a sink and no
    /// input), with the output limit and the start time.
    pub(crate) fn take(
        serial_output: &mut SerialOutput,
        serial_input: &mut SerialInput,
        serial_output_limit: Option<ember_ratelimit::BucketConfig>,
        start_time: ember_devices::legacy::StartTime,
    ) -> LegacyInputs {
        LegacyInputs {
            serial_output: std::mem::replace(serial_output, SerialOutput::Sink),
            serial_output_limit,
            serial_input: std::mem::replace(serial_input, SerialInput::None),
            start_time,
        }
    }
}

/// The serial port on COM1, writing to the configured output (with its
/// limit) and signalling `drained` when its input buffer empties.
fn create_serial(
    vm: &VmFd,
    output: SerialOutput,
    limit: Option<ember_ratelimit::BucketConfig>,
    saved: Option<&SerialState>,
    drained: &EventTrigger,
) -> Result<Arc<Mutex<Serial>>> {
    let irq = EventTrigger::new()?;
    vm.register_irqfd(irq.event_fd(), legacy::COM1_IRQ)
        .map_err(|source| Error::Kvm {
            what: "KVM_IRQFD (COM1)",
            source,
        })?;
    let output: Box<dyn Write + Send> = match output {
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::Writer(writer) => writer,
        SerialOutput::Sink => Box::new(std::io::sink()),
    };
    let mut serial = match saved {
        Some(state) => Serial::from_state(state, irq, drained.try_clone()?, output)?,
        None => Serial::new(irq, drained.try_clone()?, output),
    };
    if let Some(limit) = limit {
        serial.limit_output(limit);
    }
    Ok(Arc::new(Mutex::new(serial)))
}

/// What feeds the serial port's input: its event-loop subscriber, and the
/// terminal put in raw mode when that is this process's terminal.
fn serial_input(
    serial: &Arc<Mutex<Serial>>,
    input: SerialInput,
    drained: &EventTrigger,
) -> Result<(Vec<Subscriber>, Option<RawTerminal>)> {
    let (subscriber, terminal): (Subscriber, _) = match input {
        SerialInput::Stdin => {
            let terminal = RawTerminal::enable_if_tty();
            let input = SerialInputDevice::new(serial.clone(), StdinReader, drained)?;
            (Arc::new(Mutex::new(input)), terminal)
        }
        SerialInput::Reader(reader) => {
            let input = SerialInputDevice::new(serial.clone(), BoxedInput(reader), drained)?;
            (Arc::new(Mutex::new(input)), None)
        }
        SerialInput::None => return Ok((Vec::new(), None)),
    };
    Ok((vec![subscriber], terminal))
}

/// Creates the legacy devices, fresh or (with `saved`) as a snapshot had them.
pub(crate) fn create_devices(
    vm: &VmFd,
    inputs: LegacyInputs,
    saved: Option<(&SerialState, &I8042State)>,
) -> Result<Devices> {
    let LegacyInputs {
        serial_output,
        serial_output_limit,
        serial_input: input,
        start_time,
    } = inputs;
    let drained = EventTrigger::new()?;
    let saved_serial = saved.map(|(state, _)| state);
    let serial = create_serial(
        vm,
        serial_output,
        serial_output_limit,
        saved_serial,
        &drained,
    )?;
    let (subscribers, terminal) = serial_input(&serial, input, &drained)?;

    let reset = EventTrigger::new()?;
    let keyboard_irq = EventTrigger::new()?;
    vm.register_irqfd(keyboard_irq.event_fd(), legacy::I8042_IRQ)
        .map_err(|source| Error::Kvm {
            what: "KVM_IRQFD (i8042)",
            source,
        })?;
    let i8042 = match saved {
        Some((_, state)) => I8042::from_state(state, reset.try_clone()?, keyboard_irq),
        None => I8042::new(reset.try_clone()?, keyboard_irq),
    };
    let i8042 = Arc::new(Mutex::new(i8042));
    let boot_timer = Arc::new(Mutex::new(BootTimer::new(start_time)));

    let mut pio = Bus::new();
    pio.insert(serial.clone(), legacy::COM1_PORT, legacy::COM1_PORT_COUNT)?;
    pio.insert(i8042.clone(), legacy::I8042_PORT, legacy::I8042_PORT_COUNT)?;
    let mut mmio = Bus::new();
    mmio.insert(boot_timer.clone(), BOOT_TIMER_START, BOOT_TIMER_SIZE)?;

    Ok(Devices {
        pio,
        mmio,
        serial,
        i8042,
        boot_timer,
        reset,
        subscribers,
        terminal,
    })
}

/// The memory crate's tracking switch for `track_dirty_pages`.
pub(crate) fn dirty_page_tracking(track_dirty_pages: bool) -> DirtyPageTracking {
    if track_dirty_pages {
        DirtyPageTracking::On
    } else {
        DirtyPageTracking::Off
    }
}

/// A KVM VM with its platform devices and guest memory registered.
pub(crate) struct KvmVm {
    pub(crate) vm_fd: VmFd,
    pub(crate) memory: GuestMemoryMmap,
}

impl KvmVm {
    /// Creates the VM, its in-kernel irqchip, PIT and TSS, and registers
    /// `memory` (logging dirty pages when `track_dirty_pages`).
    pub(crate) fn create(
        kvm: &Kvm,
        memory: GuestMemoryMmap,
        track_dirty_pages: bool,
    ) -> Result<KvmVm> {
        let vm_fd = kvm.create_vm().map_err(|source| Error::Kvm {
            what: "KVM_CREATE_VM",
            source,
        })?;
        setup_platform(&vm_fd)?;
        // `memory` is returned with `vm_fd` and stored in the `Vm` after `vm_fd`
        // and the vCPUs, so it is unmapped only after they are gone (or never,
        // if a vCPU thread could not be stopped).
        if track_dirty_pages {
            // SAFETY: `memory` outlives every use of `vm_fd` (see above).
            unsafe { register_with_kvm_logging_dirty_pages(&vm_fd, &memory) }?;
        } else {
            // SAFETY: `memory` outlives every use of `vm_fd` (see above).
            unsafe { register_with_kvm(&vm_fd, &memory) }?;
        }
        Ok(KvmVm { vm_fd, memory })
    }
}

/// The kernel and initrd files: those opened ahead of the build, else
/// opened now from their paths.
fn open_boot_files(config: &mut VmConfig) -> Result<(File, Option<File>)> {
    let kernel = match config.opened.kernel.take() {
        Some(file) => file,
        None => open("kernel image", &config.kernel)?,
    };
    let initrd = match (config.opened.initrd.take(), config.initrd.as_deref()) {
        (Some(file), Some(_)) => Some(file),
        (_, path) => path.map(|path| open("initrd", path)).transpose()?,
    };
    Ok((kernel, initrd))
}

/// Creates and configures the vCPUs; the first enters the kernel at `entry`.
fn create_vcpus(
    kvm: &Kvm,
    vm_fd: &VmFd,
    config: &VmConfig,
    memory: &GuestMemoryMmap,
    entry: EntryPoint,
) -> Result<Vec<Vcpu>> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| Error::Kvm {
            what: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    let threads_per_core = if config.smt { 2 } else { 1 };
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpu_count));
    for index in 0..config.vcpu_count {
        let vcpu = Vcpu::new(vm_fd, index)?;
        let boot_entry = (index == 0).then_some(entry);
        vcpu.configure(
            kvm,
            &supported,
            config.vcpu_count,
            threads_per_core,
            memory,
            boot_entry,
        )?;
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// Builds a VM from `config`. Nothing runs until [`Vm::run`].
pub fn build(mut config: VmConfig) -> Result<Vm> {
    check_vcpu_count(config.vcpu_count)?;
    let layout = memory_layout(config.mem_size_mib)?;
    let (kernel_file, initrd_file) = open_boot_files(&mut config)?;
    check_cmdline(&config.cmdline)?;

    let kvm = open_kvm(&config.kvm_device)?;
    check_vcpus_against(Some(&kvm), config.vcpu_count)?;
    let memory = map_guest_memory(
        &layout,
        Backing::Anonymous,
        dirty_page_tracking(config.track_dirty_pages),
    )?;
    let KvmVm { vm_fd, memory } = KvmVm::create(&kvm, memory, config.track_dirty_pages)?;

    let inputs = LegacyInputs::take(
        &mut config.serial_output,
        &mut config.serial_input,
        config.serial_output_limit,
        config.start_time,
    );
    let mut devices = create_devices(&vm_fd, inputs, None)?;
    let virtio = attach_devices(
        &vm_fd,
        &memory,
        &mut devices.mmio,
        DeviceConfigs {
            drives: &config.drives,
            nets: &config.net_interfaces,
            vsock: config.vsock.as_ref(),
            entropy: config.entropy.as_ref(),
            mmds: config.mmds.as_ref(),
            balloon: config.balloon.as_ref(),
        },
        &mut config.opened,
    )?;
    let cmdline = extend_cmdline(&config.cmdline, &virtio.cmdline);
    let entry = load_guest(
        &config,
        &cmdline,
        &layout,
        &memory,
        kernel_file,
        initrd_file,
    )?;
    let vcpus = create_vcpus(&kvm, &vm_fd, &config, &memory, entry)?;
    let machine = MachineInfo {
        vcpu_count: config.vcpu_count,
        smt: config.smt,
        mem_size_mib: config.mem_size_mib,
        track_dirty_pages: config.track_dirty_pages,
    };
    Vm::assemble(
        kvm,
        vm_fd,
        memory,
        vcpus,
        devices,
        virtio,
        machine,
        config.seccomp.take(),
        false,
    )
}
