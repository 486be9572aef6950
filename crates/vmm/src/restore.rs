//! Restoring a VM from a snapshot: the state file is read and checked, the
//! memory file and every host resource (drives by path, TAPs by name, the
//! vsock socket) are opened before any KVM state exists, then the VM is
//! rebuilt with the saved placement and state instead of loading a kernel.
//! Guest memory is the memory file mapped privately: pages load lazily, and
//! clean pages are shared between every VM restored from the same file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ember_cpu::{restore_vm_state, Vcpu, VcpuState};
use ember_devices::host_files::{open_input, BoundListener, InputKind};
use ember_devices::legacy::StartTime;
use ember_devices::virtio::balloon::Balloon;
use ember_devices::virtio::block::{open_disk, Block};
use ember_devices::virtio::net::{Net, Tap};
use ember_devices::virtio::rng::Rng;
use ember_devices::virtio::vsock::Vsock;
use ember_devices::virtio::{MmioTransport, VirtioDevice};
use ember_jailer::seccomp::Filters;
use ember_memory::GuestMemoryMmap;
use ember_mmds::Mmds;
use ember_snapshot::StateFile;
use event_manager::MutEventSubscriber;
use kvm_ioctls::VmFd;

use ember_memory::{map_guest_memory, Backing};

use crate::builder::{
    check_vcpus_against, create_devices, dirty_page_tracking, open_kvm, KvmVm, LegacyInputs,
};
use crate::config::{SerialInput, SerialOutput, DEFAULT_KVM_DEVICE};
use crate::memory_fault::install_memory_fault_handler;
use crate::snapshot::{ids, SavedDevice, SavedVirtio, SavedVm};
use crate::virtio_devices::{Placer, SharedDevice};
use crate::{memory_layout, Error, Result, Vm};

/// How to restore a VM.
#[derive(Debug)]
pub struct RestoreConfig {
    /// The state file.
    pub state_path: PathBuf,
    /// The memory file.
    pub mem_path: PathBuf,
    /// Track dirty pages, for diff snapshots of the restored VM.
    pub track_dirty_pages: bool,
    /// Run the vCPUs once started (otherwise the VM starts paused).
    pub resume: bool,
    /// Network interfaces moved to other TAPs: (interface id, TAP name).
    pub net_overrides: Vec<(String, String)>,
    /// The vsock device's socket at another path.
    pub vsock_override: Option<PathBuf>,
    /// The KVM device.
    pub kvm_device: PathBuf,
    /// Where the serial output goes.
    pub serial_output: SerialOutput,
    /// A limit on the serial output's bytes (what is over it is dropped).
    pub serial_output_limit: Option<ember_ratelimit::BucketConfig>,
    /// Where the serial input comes from.
    pub serial_input: SerialInput,
    /// When the restore was asked for (for the boot timer).
    pub start_time: StartTime,
    /// Seccomp filters for the VMM and vCPU threads.
    pub seccomp: Option<Filters>,
    /// The metadata store the interfaces that answered for the MMDS answer
    /// from (a new empty store if `None` and some interface did).
    pub mmds_store: Option<Arc<Mutex<Mmds>>>,
}

impl RestoreConfig {
    /// Restores from `state_path` and `mem_path`, paused, with serial on stdio,
    /// on `/dev/kvm`, nothing overridden.
    pub fn new(state_path: impl Into<PathBuf>, mem_path: impl Into<PathBuf>) -> RestoreConfig {
        RestoreConfig {
            state_path: state_path.into(),
            mem_path: mem_path.into(),
            track_dirty_pages: false,
            resume: false,
            net_overrides: Vec::new(),
            vsock_override: None,
            kvm_device: PathBuf::from(DEFAULT_KVM_DEVICE),
            serial_output: SerialOutput::Stdout,
            serial_output_limit: None,
            serial_input: SerialInput::Stdin,
            start_time: StartTime::now(),
            seccomp: None,
            mmds_store: None,
        }
    }
}

/// Reads and checks a state file: a one-line error for anything wrong with
/// it, before anything is created.
pub(crate) fn read_saved_vm(path: &Path) -> Result<SavedVm> {
    let bytes = ember_snapshot::read_state_file(path).map_err(Error::Snapshot)?;
    let file =
        StateFile::from_bytes(&bytes, &ids::known).map_err(|source| Error::SnapshotState {
            path: path.to_owned(),
            source,
        })?;
    SavedVm::from_state_file(&file)
}

/// A virtio device's host resource, opened ahead.
enum HostResource {
    Disk(File),
    Tap(Tap),
    Listener(BoundListener),
    None,
}

/// The TAP name of a saved interface, or its override.
fn tap_name<'a>(config: &'a RestoreConfig, id: &str, saved: &'a str) -> &'a str {
    config
        .net_overrides
        .iter()
        .find(|(iface, _)| iface == id)
        .map_or(saved, |(_, tap)| tap.as_str())
}

/// Opens what `saved` needs from the host.
fn open_host_resource(config: &RestoreConfig, saved: &SavedVirtio) -> Result<HostResource> {
    Ok(match &saved.device {
        SavedDevice::Block(state) => {
            let file = open_disk(&state.path, state.read_only).map_err(|source| Error::Open {
                what: "drive file",
                path: state.path.clone(),
                source,
            })?;
            HostResource::Disk(file)
        }
        SavedDevice::Net(state) => {
            let name = tap_name(config, &state.iface_id, &state.host_dev_name);
            let tap = Tap::open(name).map_err(|source| Error::NetworkInterface {
                id: state.iface_id.clone(),
                source: source.into(),
            })?;
            HostResource::Tap(tap)
        }
        SavedDevice::Vsock(state) => {
            let path = config.vsock_override.as_deref().unwrap_or(&state.uds_path);
            let listener = BoundListener::bind(path).map_err(|source| Error::Open {
                what: "vsock socket",
                path: path.to_owned(),
                source,
            })?;
            HostResource::Listener(listener)
        }
        SavedDevice::Rng(_) | SavedDevice::Balloon(_) => HostResource::None,
    })
}

/// Refuses overrides that name nothing in the snapshot.
fn check_overrides(config: &RestoreConfig, saved: &SavedVm) -> Result<()> {
    for (id, _) in &config.net_overrides {
        let known = saved
            .virtio
            .iter()
            .any(|v| matches!(&v.device, SavedDevice::Net(state) if &state.iface_id == id));
        if !known {
            return Err(Error::InvalidConfig(format!(
                "network override: the snapshot has no network interface `{id}`"
            )));
        }
    }
    let has_vsock = saved
        .virtio
        .iter()
        .any(|v| matches!(v.device, SavedDevice::Vsock(_)));
    if config.vsock_override.is_some() && !has_vsock {
        return Err(Error::InvalidConfig(
            "vsock override: the snapshot has no vsock device".into(),
        ));
    }
    Ok(())
}

/// Opens the memory file (a regular file, never blocking) and checks it
/// holds all of guest memory.
fn open_memory_file(path: &Path, size: u64) -> Result<File> {
    let open_err = |source| Error::Open {
        what: "memory file",
        path: path.to_owned(),
        source,
    };
    let file = open_input(path, InputKind::RegularFile, false).map_err(open_err)?;
    let len = file.metadata().map_err(open_err)?.len();
    if len < size {
        return Err(Error::InvalidConfig(format!(
            "memory file {} holds {len} bytes; the snapshot's guest memory is {size} bytes",
            path.display()
        )));
    }
    Ok(file)
}

/// Rebuilds a virtio device from its saved state and host resource, and puts
/// it back at its saved place.
fn restore_virtio(
    placer: &mut Placer<'_>,
    saved: &SavedVirtio,
    host: HostResource,
    mmds_store: &mut Option<Arc<Mutex<Mmds>>>,
) -> Result<()> {
    Placer::check_placement(saved.base, saved.irq)?;
    match (&saved.device, host) {
        (SavedDevice::Block(state), HostResource::Disk(file)) => {
            let device = Block::restore(state, file).map_err(|source| Error::Drive {
                id: state.drive_id.clone(),
                source,
            })?;
            put_back(placer, saved, device, |d| {
                SharedDevice::Block(state.drive_id.clone(), d)
            })
        }
        (SavedDevice::Net(state), HostResource::Tap(tap)) => {
            let mmds = state
                .mmds_address
                .map(|_| mmds_store.get_or_insert_with(Default::default).clone());
            let device = Net::restore(state, Box::new(tap), mmds).map_err(|source| {
                Error::NetworkInterface {
                    id: state.iface_id.clone(),
                    source,
                }
            })?;
            put_back(placer, saved, device, |d| {
                SharedDevice::Net(state.iface_id.clone(), d)
            })
        }
        (SavedDevice::Vsock(state), HostResource::Listener(listener)) => {
            let device = Vsock::restore(state, listener).map_err(Error::Vsock)?;
            put_back(placer, saved, device, SharedDevice::Vsock)
        }
        (SavedDevice::Rng(state), _) => {
            let device = Rng::restore(state).map_err(Error::Entropy)?;
            put_back(placer, saved, device, SharedDevice::Rng)
        }
        (SavedDevice::Balloon(state), _) => {
            let device = Balloon::restore(state).map_err(Error::Balloon)?;
            put_back(placer, saved, device, SharedDevice::Balloon)
        }
        _ => Err(Error::InvalidState(
            "a device's host resource does not match it",
        )),
    }
}

/// Puts a restored `device` behind a transport restored from `saved`, at
/// the saved place; `shared` is how the running VM keeps it.
fn put_back<D>(
    placer: &mut Placer<'_>,
    saved: &SavedVirtio,
    device: D,
    shared: impl FnOnce(Arc<Mutex<D>>) -> SharedDevice,
) -> Result<()>
where
    D: VirtioDevice<GuestMemoryMmap> + MutEventSubscriber + Send + 'static,
{
    let device = Arc::new(Mutex::new(device));
    let transport =
        MmioTransport::restore(placer.memory().clone(), device.clone(), &saved.transport)?;
    let shared = shared(device.clone());
    placer.wire(transport, device, shared, saved.base, saved.irq)
}

/// Logs (at debug level) how long each stage of a restore took.
struct StageTimer {
    last: std::time::Instant,
}

impl StageTimer {
    fn start() -> StageTimer {
        StageTimer {
            last: std::time::Instant::now(),
        }
    }

    fn stage(&mut self, what: &str) {
        let now = std::time::Instant::now();
        log::debug!("restore: {what} in {:?}", now - self.last);
        self.last = now;
    }
}

/// Refuses a saved VM whose vCPU count is out of range or does not match
/// its vCPU states.
fn check_saved_vcpus(saved: &SavedVm) -> Result<()> {
    let count = saved.machine.vcpu_count;
    crate::check_vcpu_count(count)?;
    if saved.vcpus.len() != usize::from(count) {
        return Err(Error::InvalidConfig(format!(
            "the snapshot has {} vCPU states for {count} vCPUs",
            saved.vcpus.len(),
        )));
    }
    Ok(())
}

/// Fresh vCPUs of `vm_fd` with the saved states, in index order.
fn restore_vcpus(vm_fd: &VmFd, states: &[VcpuState]) -> Result<Vec<Vcpu>> {
    let mut vcpus = Vec::with_capacity(states.len());
    for (index, state) in (0..=u8::MAX).zip(states) {
        let vcpu = Vcpu::new(vm_fd, index)?;
        vcpu.restore_state(state)?;
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// Restores a VM from a snapshot. Nothing runs until [`Vm::start`]; the VM
/// then starts paused unless [`RestoreConfig::resume`].
pub fn restore(mut config: RestoreConfig) -> Result<Vm> {
    let mut timer = StageTimer::start();
    let saved = read_saved_vm(&config.state_path)?;
    timer.stage("state file read");
    let machine = saved.machine.clone();
    check_saved_vcpus(&saved)?;
    let layout = memory_layout(machine.mem_size_mib)?;
    let mem_file = open_memory_file(&config.mem_path, layout.size())?;
    check_overrides(&config, &saved)?;
    let hosts = saved
        .virtio
        .iter()
        .map(|device| open_host_resource(&config, device))
        .collect::<Result<Vec<_>>>()?;

    timer.stage("host resources opened");
    let kvm = open_kvm(&config.kvm_device)?;
    check_vcpus_against(Some(&kvm), machine.vcpu_count)?;
    let track_dirty_pages = config.track_dirty_pages;
    install_memory_fault_handler()?;
    let memory = map_guest_memory(
        &layout,
        Backing::File(&mem_file),
        dirty_page_tracking(track_dirty_pages),
    )?;
    timer.stage("memory file mapped");
    let KvmVm { vm_fd, memory } = KvmVm::create(&kvm, memory, track_dirty_pages)?;
    timer.stage("KVM VM created, memory registered");
    restore_vm_state(&vm_fd, &saved.vm)?;

    let inputs = LegacyInputs::take(
        &mut config.serial_output,
        &mut config.serial_input,
        config.serial_output_limit,
        config.start_time,
    );
    let mut devices = create_devices(&vm_fd, inputs, Some((&saved.serial, &saved.i8042)))?;
    let mut placer = Placer::new(&vm_fd, &memory, &mut devices.mmio);
    for (device, host) in saved.virtio.iter().zip(hosts) {
        restore_virtio(&mut placer, device, host, &mut config.mmds_store)?;
    }
    let virtio = placer.finish();
    timer.stage("devices restored");

    let vcpus = restore_vcpus(&vm_fd, &saved.vcpus)?;
    let mut machine = machine;
    machine.track_dirty_pages = track_dirty_pages;
    timer.stage("vCPUs restored");
    let mut vm = Vm::assemble(
        kvm,
        vm_fd,
        memory,
        vcpus,
        devices,
        virtio,
        machine,
        config.seccomp.take(),
        !config.resume,
    )?;
    vm.app_sections = saved.app;
    Ok(vm)
}
