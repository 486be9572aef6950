//! Saving a paused VM to a state file and a memory file, and the sections of
//! the state file: the machine, the KVM VM, each vCPU, the legacy devices and
//! each virtio device with its placement, so that a restore rebuilds the same
//! machine.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ember_cpu::{VcpuState, VmState};
use ember_devices::legacy::{I8042State, SerialState};
use ember_devices::virtio::balloon::BalloonState;
use ember_devices::virtio::block::BlockState;
use ember_devices::virtio::mmio::MmioTransportState;
use ember_devices::virtio::net::NetState;
use ember_devices::virtio::rng::RngState;
use ember_devices::virtio::vsock::VsockState;
use ember_memory::GuestMemoryMmap;
use ember_snapshot::{Section, StateFile};
use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryBackend;

mod targets;

use ember_snapshot::PendingFile;
use targets::{check_targets, open_diff_target};

use crate::virtio_devices::{SharedDevice, VirtioSlot};
use crate::vm::RunningVm;
use crate::{Error, Result};

/// Section ids and versions.
pub(crate) mod ids {
    /// The machine: vCPU count, memory, SMT, dirty tracking.
    pub(crate) const MACHINE: &str = "machine";
    /// The KVM VM: irqchips, PIT, clock.
    pub(crate) const KVM_VM: &str = "kvm.vm";
    /// Prefix of each vCPU's section (`kvm.vcpu.N`).
    pub(crate) const VCPU_PREFIX: &str = "kvm.vcpu.";
    /// The serial port.
    pub(crate) const SERIAL: &str = "device.serial";
    /// The i8042.
    pub(crate) const I8042: &str = "device.i8042";
    /// Prefix of each virtio device's section (`device.virtio.N`, in placement order).
    pub(crate) const VIRTIO_PREFIX: &str = "device.virtio.";
    /// Prefix of the sections the VMM's user adds (see [`super::SnapshotFiles::extra`]).
    pub(crate) const APP_PREFIX: &str = "app.";
    /// Version of every section Ember writes today.
    pub(crate) const VERSION: u16 = 1;

    /// Whether this Ember reads section `id`.
    pub(crate) fn known(id: &str) -> bool {
        [MACHINE, KVM_VM, SERIAL, I8042].contains(&id)
            || id.starts_with(APP_PREFIX)
            || [VCPU_PREFIX, VIRTIO_PREFIX].iter().any(|prefix| {
                id.strip_prefix(prefix)
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
    }
}

pub use ember_snapshot::FORMAT_VERSION;

/// The format version of the state file at `path`, whatever it is (for
/// `--describe-snapshot`).
pub fn format_version(path: &Path) -> Result<u16> {
    let bytes = ember_snapshot::read_state_file(path).map_err(Error::Snapshot)?;
    ember_snapshot::format_version(&bytes).map_err(|source| Error::SnapshotState {
        path: path.to_owned(),
        source,
    })
}

/// A human description of the state file at `path`: its format and sections
/// and, when this Ember can read it, the machine and its devices.
pub fn describe(path: &Path) -> Result<String> {
    let bytes = ember_snapshot::read_state_file(path).map_err(Error::Snapshot)?;
    let state_error = |source| Error::SnapshotState {
        path: path.to_owned(),
        source,
    };
    let mut text = ember_snapshot::describe(&bytes).map_err(state_error)?;
    let file = StateFile::from_bytes(&bytes, &ids::known).map_err(state_error)?;
    let saved = SavedVm::from_state_file(&file)?;
    let machine = &saved.machine;
    text.push_str(&format!(
        "machine: {} vCPU(s){}, {} MiB of memory, dirty page tracking {}\n",
        machine.vcpu_count,
        if machine.smt { " (SMT)" } else { "" },
        machine.mem_size_mib,
        if machine.track_dirty_pages {
            "on"
        } else {
            "off"
        },
    ));
    for device in &saved.virtio {
        let what = match &device.device {
            SavedDevice::Block(s) => format!(
                "block `{}` on {}{}",
                s.drive_id,
                s.path.display(),
                if s.read_only { " (read-only)" } else { "" }
            ),
            SavedDevice::Net(s) => format!("net `{}` on TAP {}", s.iface_id, s.host_dev_name),
            SavedDevice::Vsock(s) => {
                format!("vsock CID {} on {}", s.guest_cid, s.uds_path.display())
            }
            SavedDevice::Rng(_) => "entropy".to_owned(),
            SavedDevice::Balloon(s) => format!("balloon, target {} MiB", s.config.amount_mib),
        };
        text.push_str(&format!(
            "device: {what} at {:#x} IRQ {}\n",
            device.base, device.irq
        ));
    }
    Ok(text.trim_end().to_owned())
}

/// What a snapshot holds of guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    /// All of guest memory, as a sparse file.
    Full,
    /// The pages written since the last snapshot (or the start), written into
    /// the existing memory file (created if missing). Needs dirty page tracking.
    Diff,
}

/// Where a snapshot goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFiles {
    /// Full or diff.
    pub kind: SnapshotKind,
    /// The state file.
    pub state_path: PathBuf,
    /// The memory file.
    pub mem_path: PathBuf,
    /// Sections of the caller's own to keep in the state file (an API's view
    /// of the VM, say): their ids must start with `app.`. A restore hands
    /// them back ([`crate::Vm::take_app_sections`]).
    pub extra: Vec<Section>,
}

impl SnapshotFiles {
    /// A snapshot of `kind` to these two files, with no extra section.
    pub fn new(
        kind: SnapshotKind,
        state_path: impl Into<PathBuf>,
        mem_path: impl Into<PathBuf>,
    ) -> SnapshotFiles {
        SnapshotFiles {
            kind,
            state_path: state_path.into(),
            mem_path: mem_path.into(),
            extra: Vec::new(),
        }
    }
}

/// What a snapshot wrote, and how long it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotReport {
    /// Size of the state file.
    pub state_bytes: u64,
    /// Bytes of guest memory written (zero pages of a full snapshot are holes
    /// and not counted).
    pub memory_bytes: u64,
    /// From the request to both files in place.
    pub duration: Duration,
}

/// The machine a VM is (and a snapshot records).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// vCPUs.
    pub vcpu_count: u8,
    /// Two threads per core.
    pub smt: bool,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Whether dirty pages are tracked.
    pub track_dirty_pages: bool,
}

/// A virtio device's saved state, by kind.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum SavedDevice {
    /// A drive.
    Block(BlockState),
    /// A network interface.
    Net(NetState),
    /// The vsock device.
    Vsock(VsockState),
    /// The entropy device.
    Rng(RngState),
    /// The balloon.
    Balloon(BalloonState),
}

/// A virtio device where it was placed, its transport and its state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SavedVirtio {
    /// Guest-physical base of its MMIO window.
    pub(crate) base: u64,
    /// Its interrupt line.
    pub(crate) irq: u32,
    /// The transport's registers and queues.
    pub(crate) transport: MmioTransportState,
    /// The device.
    pub(crate) device: SavedDevice,
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Saves a virtio device and its transport.
pub(crate) fn save_virtio(slot: &VirtioSlot) -> SavedVirtio {
    let device = match &slot.device {
        SharedDevice::Block(_, block) => SavedDevice::Block(lock(block).state()),
        SharedDevice::Net(_, net) => SavedDevice::Net(lock(net).state()),
        SharedDevice::Vsock(vsock) => SavedDevice::Vsock(lock(vsock).state()),
        SharedDevice::Rng(rng) => SavedDevice::Rng(lock(rng).state()),
        SharedDevice::Balloon(balloon) => SavedDevice::Balloon(lock(balloon).state()),
    };
    SavedVirtio {
        base: slot.base,
        irq: slot.irq,
        transport: lock(&slot.transport).state(),
        device,
    }
}

/// Everything a state file holds, decoded.
#[derive(Clone, Debug)]
pub(crate) struct SavedVm {
    pub(crate) machine: MachineInfo,
    pub(crate) vm: VmState,
    pub(crate) vcpus: Vec<VcpuState>,
    pub(crate) serial: SerialState,
    pub(crate) i8042: I8042State,
    pub(crate) virtio: Vec<SavedVirtio>,
    /// The caller's own sections (`app.*`).
    pub(crate) app: Vec<Section>,
}

impl SavedVm {
    /// The state file's sections.
    pub(crate) fn to_state_file(&self) -> Result<StateFile> {
        let section = |id: &str, value: &dyn erased::Json| value.section(id);
        let mut sections = vec![
            section(ids::MACHINE, &self.machine)?,
            section(ids::KVM_VM, &self.vm)?,
        ];
        for (index, vcpu) in self.vcpus.iter().enumerate() {
            sections.push(section(&format!("{}{index}", ids::VCPU_PREFIX), vcpu)?);
        }
        sections.push(section(ids::SERIAL, &self.serial)?);
        sections.push(section(ids::I8042, &self.i8042)?);
        for (index, device) in self.virtio.iter().enumerate() {
            sections.push(section(&format!("{}{index}", ids::VIRTIO_PREFIX), device)?);
        }
        sections.extend(self.app.iter().cloned());
        Ok(StateFile { sections })
    }

    /// Decodes and checks a state file: every section this VM needs is there
    /// and consistent with the machine.
    pub(crate) fn from_state_file(file: &StateFile) -> Result<SavedVm> {
        let machine: MachineInfo = decode(file, ids::MACHINE)?;
        let vcpus = (0..machine.vcpu_count)
            .map(|index| decode(file, &format!("{}{index}", ids::VCPU_PREFIX)))
            .collect::<Result<Vec<VcpuState>>>()?;
        let mut virtio = Vec::new();
        while let Some(section) = file.section(&format!("{}{}", ids::VIRTIO_PREFIX, virtio.len())) {
            virtio.push(section.decode().map_err(Error::Snapshot)?);
        }
        Ok(SavedVm {
            vm: decode(file, ids::KVM_VM)?,
            serial: decode(file, ids::SERIAL)?,
            i8042: decode(file, ids::I8042)?,
            machine,
            vcpus,
            virtio,
            app: file
                .sections
                .iter()
                .filter(|s| s.id.starts_with(ids::APP_PREFIX))
                .cloned()
                .collect(),
        })
    }
}

fn decode<T: serde::de::DeserializeOwned>(file: &StateFile, id: &str) -> Result<T> {
    file.section(id)
        .ok_or_else(|| Error::SnapshotMissingSection(id.to_owned()))?
        .decode()
        .map_err(Error::Snapshot)
}

/// Object-safe JSON sections, so one closure makes sections of every type.
mod erased {
    use super::*;

    pub(crate) trait Json {
        fn section(&self, id: &str) -> Result<Section>;
    }

    impl<T: Serialize> Json for T {
        fn section(&self, id: &str) -> Result<Section> {
            Section::json(id, ids::VERSION, self).map_err(Error::Snapshot)
        }
    }
}

/// Marks the pages of `dirty` (one KVM-format bitmap per region) written
/// again in the regions' own dirty bitmaps, so that the next diff snapshot
/// writes them.
fn mark_dirty_again(memory: &GuestMemoryMmap, dirty: &[Vec<u64>]) {
    for (region, words) in memory.iter().zip(dirty) {
        let mapping = region.get_mmap();
        let Some(bitmap) = mapping.bitmap() else {
            continue;
        };
        for (index, &word) in words.iter().enumerate() {
            for bit in (0..64).filter(|bit| word & (1 << bit) != 0) {
                let page = index * 64 + bit;
                bitmap.set_addr_range(page * ember_snapshot::PAGE_SIZE, ember_snapshot::PAGE_SIZE);
            }
        }
    }
}

impl RunningVm {
    /// The machine: vCPUs, memory, SMT, dirty page tracking.
    pub fn machine(&self) -> &MachineInfo {
        &self.machine
    }

    /// Saves the paused VM: guest memory to `files.mem_path` (all of it, or
    /// for [`SnapshotKind::Diff`] the pages written since the last snapshot),
    /// then the state to `files.state_path`. Paths naming directories, in
    /// unreachable directories or both naming the same file are refused
    /// first, and a diff goes only into a regular file. A full snapshot's
    /// memory file and the state file are written whole under temporary
    /// names before either is renamed, so a failure leaves the paths as they
    /// were; a failed diff leaves its pages dirty for the next one.
    pub fn snapshot(&mut self, files: &SnapshotFiles) -> Result<SnapshotReport> {
        let start = Instant::now();
        self.check_snapshot_request(files)?;
        let (Some(kvm), Some(vm_fd), Some(memory)) = (&self.kvm, &self.vm_fd, &self.memory) else {
            return Err(Error::InvalidState("the VM has stopped"));
        };
        let saved = SavedVm {
            machine: self.machine.clone(),
            vm: ember_cpu::save_vm_state(vm_fd)?,
            vcpus: self.save_vcpus(kvm)?,
            serial: lock(&self.devices.serial).state(),
            i8042: lock(&self.devices.i8042).state().clone(),
            virtio: self.devices.virtio.iter().map(save_virtio).collect(),
            app: files.extra.clone(),
        };
        let state = saved.to_state_file()?.to_bytes().map_err(Error::Snapshot)?;
        let memory_bytes = match files.kind {
            SnapshotKind::Full => {
                let track_dirty_pages = self.machine.track_dirty_pages;
                write_full(files, &state, memory, track_dirty_pages.then_some(vm_fd))?
            }
            SnapshotKind::Diff => write_diff(files, &state, memory, vm_fd)?,
        };
        let report = SnapshotReport {
            state_bytes: state.len() as u64,
            memory_bytes,
            duration: start.elapsed(),
        };
        log::info!(
            "snapshot ({:?}) written in {:?}: state {} bytes, memory {} bytes",
            files.kind,
            report.duration,
            report.state_bytes,
            report.memory_bytes
        );
        Ok(report)
    }

    /// Refuses a snapshot of a running VM, a diff without dirty page
    /// tracking, caller's sections not named `app.*`, and paths that name
    /// directories or the same file ([`check_targets`]).
    fn check_snapshot_request(&self, files: &SnapshotFiles) -> Result<()> {
        if !self.paused {
            return Err(Error::InvalidState(
                "save/restore unavailable while running: pause the VM first",
            ));
        }
        if files.kind == SnapshotKind::Diff && !self.machine.track_dirty_pages {
            return Err(Error::InvalidState(
                "a diff snapshot needs dirty page tracking (track_dirty_pages)",
            ));
        }
        if let Some(section) = files
            .extra
            .iter()
            .find(|s| !s.id.starts_with(ids::APP_PREFIX))
        {
            return Err(Error::InvalidConfig(format!(
                "snapshot section `{}`: the caller's sections are named `{}...`",
                section.id,
                ids::APP_PREFIX
            )));
        }
        check_targets(&files.state_path, &files.mem_path)
    }

    /// Each vCPU's state, saved on its own (parked) thread.
    fn save_vcpus(&self, kvm: &kvm_ioctls::Kvm) -> Result<Vec<VcpuState>> {
        // KVM's list as is: each vCPU skips the MSRs it refuses to read (a
        // scratch VM to probe them, as `saveable_msrs` does, would need more
        // of the filtered VMM thread).
        let msrs = kvm
            .get_msr_index_list()
            .map_err(|source| Error::Kvm {
                what: "KVM_GET_MSR_INDEX_LIST",
                source,
            })?
            .as_slice()
            .to_vec();
        let msrs = Arc::new(msrs);
        Ok(self
            .threads()?
            .on_each_vcpu(move |vcpu| vcpu.save_state(&msrs))?
            .into_iter()
            .collect::<std::result::Result<Vec<_>, _>>()?)
    }
}

/// A full snapshot: all of guest memory and the state, each to a temporary
/// file beside its path; both are complete before either is renamed into
/// place, so a failure leaves neither. With dirty page tracking
/// (`tracked_vm`), the dirty log is then cleared so that the next diff
/// starts from this snapshot. Returns the memory bytes written.
fn write_full(
    files: &SnapshotFiles,
    state: &[u8],
    memory: &GuestMemoryMmap,
    tracked_vm: Option<&kvm_ioctls::VmFd>,
) -> Result<u64> {
    let mem_out = PendingFile::create(&files.mem_path)?;
    let written =
        ember_snapshot::write_full_memory(memory, mem_out.file()).map_err(Error::Snapshot)?;
    let state_out = PendingFile::with_bytes(&files.state_path, state)?;
    mem_out.commit()?;
    state_out.commit()?;
    if let Some(vm_fd) = tracked_vm {
        ember_memory::dirty_pages(memory, vm_fd)?;
    }
    Ok(written)
}

/// A diff snapshot: the pages written since the last snapshot, into the
/// memory file (created if missing, a regular file: [`open_diff_target`]),
/// then the state file, renamed into place. If either fails, the pages stay
/// dirty for the next diff. Returns the memory bytes written.
fn write_diff(
    files: &SnapshotFiles,
    state: &[u8],
    memory: &GuestMemoryMmap,
    vm_fd: &kvm_ioctls::VmFd,
) -> Result<u64> {
    let mem_file = open_diff_target(&files.mem_path)?;
    let state_out = PendingFile::with_bytes(&files.state_path, state)?;
    let dirty = ember_memory::dirty_pages(memory, vm_fd)?;
    let written = ember_snapshot::write_diff_memory(memory, &dirty, &mem_file)
        .map_err(Error::Snapshot)
        .and_then(|written| Ok(state_out.commit().map(|()| written)?));
    if written.is_err() {
        mark_dirty_again(memory, &dirty);
    }
    written
}

#[cfg(test)]
mod tests;
