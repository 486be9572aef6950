//! The VMM side of the API: the resources a client builds up before
//! `InstanceStart`, the running VM after it, and the rule of which request is
//! allowed when. It is a subscriber of the VMM thread's event loop, woken by
//! the API thread's eventfd; starting the VM is done by the loop's owner
//! ([`Controller::start_if_requested`]) because it adds subscribers to the loop.

use std::fs::File;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use ember_vmm::error_chain;
use ember_vmm::host_files::{open_input, BoundListener, InputKind};
use ember_vmm::seccomp::Filters;
use ember_vmm::signals::TerminationSignals;
use ember_vmm::{
    BucketUpdate, EventLoop, ExitReason, MetricGroup, OpenedInputs, RateLimiterUpdate, RunState,
    RunningVm, SerialInput, SerialOutput, StartTime,
};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::balloon;
use crate::channel::{ApiEnd, Responder};
use crate::destination::Destination;
use crate::full_config::FullVmConfig;
use crate::logger::{self, parse_level, LoggerConfig};
use crate::metrics::{api::Timed, MetricsWriter};
use crate::mmds::{config_refused, MmdsHost};
use crate::model::{
    BootSource, Drive, Logger, MachineConfigUpdate, Metrics, RateLimiter, SerialConfig,
    TokenBucket, VmResources, Vsock,
};
use crate::request::{
    Action, ApiRequest, ApiResponse, DriveUpdate, NetworkInterfaceUpdate, VmStateRequest,
};
use crate::server::ApiCounters;
use crate::snapshot::{self, SnapshotLoad};

/// How often metrics are written once a destination is set.
pub const METRICS_PERIOD: Duration = Duration::from_secs(60);

/// `GET /` body.
#[derive(Serialize)]
struct InstanceInfo<'a> {
    app_name: &'static str,
    id: &'a str,
    state: &'static str,
    vmm_version: &'static str,
}

/// `GET /version` body: the same Firecracker version as `ember --version`.
#[derive(Serialize)]
struct VersionInfo {
    firecracker_version: &'static str,
    ember_version: &'static str,
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the VM stands in its life.
enum Phase {
    /// Being configured.
    Configuring,
    /// `InstanceStart` received; the loop's owner starts the VM next.
    Starting { reply: bool, start: StartTime },
    /// `PUT /snapshot/load` received; the loop's owner restores the VM next.
    Loading {
        load: SnapshotLoad,
        start: StartTime,
    },
    /// Started.
    Running(RunningVm),
}

/// The API's view of the VM, on the VMM thread.
pub struct Controller {
    instance_id: String,
    resources: VmResources,
    /// Files and sockets opened at PUT, for the VM to be built from.
    opened: OpenedInputs,
    /// `PUT /serial`, and its destination opened then (reopened at the start
    /// if a failed start used it up).
    serial: SerialConfig,
    serial_out: Option<Destination>,
    phase: Phase,
    /// A boot-specific resource was configured: a snapshot load is refused
    /// from then on, as Firecracker refuses it.
    boot_specific: bool,
    requests: Receiver<ApiRequest>,
    responses: Responder,
    wake: EventFd,
    termination: Option<EventFd>,
    terminated: Option<i32>,
    metrics: Option<MetricsWriter>,
    metrics_timer: Option<TimerFd>,
    api_counters: Arc<ApiCounters>,
    overrides: VmOverrides,
    finished: Option<ember_vmm::Result<ExitReason>>,
}

/// Settings from the command line applied to every VM the controller builds.
#[derive(Debug, Default)]
pub struct VmOverrides {
    /// Seccomp filters for the VMM, vCPU (and API) threads; `None` runs unfiltered.
    pub seccomp: Option<Filters>,
    /// The KVM device to open instead of `/dev/kvm`.
    pub kvm_device: Option<std::path::PathBuf>,
    /// The MMDS data store (`--mmds-size-limit`, `--metadata`).
    pub mmds: MmdsHost,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

/// Firecracker's answer to a request that only a VM not yet started takes.
fn not_after_start() -> ApiResponse {
    ApiResponse::bad_request("The requested operation is not supported after starting the microVM.")
}

/// Firecracker's answer to a request that only a started VM takes.
fn not_before_start() -> ApiResponse {
    ApiResponse::bad_request(
        "The requested operation is not supported before starting the microVM.",
    )
}

fn refused(error: &crate::Error) -> ApiResponse {
    ApiResponse::bad_request(&error_chain(error))
}

/// Opens the kernel and initrd of `source` (never blocking, see
/// [`open_input`]) and checks its command line; refused in Firecracker's
/// words otherwise.
fn open_boot_source(source: &BootSource) -> Result<(File, Option<File>), ApiResponse> {
    source.validate().map_err(|e| refused(&e))?;
    let kernel =
        open_input(&source.kernel_image_path, InputKind::RegularFile, false).map_err(|e| {
            ApiResponse::bad_request(&format!(
                "The kernel file cannot be opened: {e} ({})",
                source.kernel_image_path.display()
            ))
        })?;
    let initrd = match &source.initrd_path {
        Some(path) => Some(
            open_input(path, InputKind::RegularFile, false).map_err(|e| {
                ApiResponse::bad_request(&format!(
                    "The initrd file cannot be opened due to invalid path or invalid permissions. \
                 {e} ({})",
                    path.display()
                ))
            })?,
        ),
        None => None,
    };
    Ok((kernel, initrd))
}

/// A bucket update from an optional new bucket: kept when absent.
fn bucket_update(bucket: Option<TokenBucket>) -> BucketUpdate {
    bucket.map_or(BucketUpdate::Keep, |b| {
        BucketUpdate::Set(b.to_bucket_config())
    })
}

impl Controller {
    /// A controller for instance `instance_id` with `resources` as the starting
    /// configuration, talking to the API thread through the channels.
    pub fn new(
        instance_id: String,
        resources: VmResources,
        api: ApiEnd,
        termination: Option<&TerminationSignals>,
        api_counters: Arc<ApiCounters>,
        overrides: VmOverrides,
    ) -> ember_vmm::Result<Controller> {
        Ok(Controller {
            instance_id,
            resources,
            opened: OpenedInputs::default(),
            serial: SerialConfig::default(),
            serial_out: None,
            phase: Phase::Configuring,
            boot_specific: false,
            requests: api.requests,
            responses: api.responses,
            wake: api.wake,
            overrides,
            termination: termination
                .map(TerminationSignals::try_clone_event)
                .transpose()?,
            terminated: None,
            metrics: None,
            metrics_timer: None,
            api_counters,
            finished: None,
        })
    }

    /// Starts the VM at the next turn of the loop, without an API client waiting
    /// (for a config file), timing the boot from `start`.
    pub fn request_start(&mut self, start: StartTime) {
        if matches!(self.phase, Phase::Configuring) {
            self.phase = Phase::Starting {
                reply: false,
                start,
            };
        }
    }

    /// How the VMM ended, once it has: the VM stopped, the start failed for a
    /// config-file boot, or a termination signal arrived before the start.
    /// Metrics are flushed once more whenever it has ended.
    pub fn take_finished(&mut self) -> Option<ember_vmm::Result<ExitReason>> {
        let done = match self.finished.take() {
            Some(done) => done,
            None => match &self.phase {
                Phase::Running(vm) => vm.take_outcome(),
                _ => None,
            }
            .or_else(|| {
                self.terminated
                    .take()
                    .map(|signal| Ok(ExitReason::Signal(signal)))
            })?,
        };
        self.flush_metrics();
        Some(done)
    }

    /// Builds and starts the VM if `InstanceStart` arrived, or restores it if
    /// `PUT /snapshot/load` did, answering the client.
    pub fn start_if_requested(
        &mut self,
        event_loop: &mut EventLoop,
        termination: Option<&TerminationSignals>,
    ) {
        if matches!(self.phase, Phase::Loading { .. }) {
            let Phase::Loading { load, start } =
                std::mem::replace(&mut self.phase, Phase::Configuring)
            else {
                return;
            };
            let mut response = self.load_snapshot(&load, start, event_loop, termination);
            if load.deprecated {
                log::warn!("{}", snapshot::LOAD_DEPRECATION);
                response.deprecated = true;
            }
            self.reply(response);
            return;
        }
        let Phase::Starting { reply, start } = self.phase else {
            return;
        };
        let opened = std::mem::take(&mut self.opened);
        let serial_out = self.serial_out.take();
        let started = self.resources.to_vm_config(start).and_then(|mut config| {
            config.opened = opened;
            if let Some(out) =
                serial_out.map_or_else(|| self.serial.open_output(), |d| Ok(Some(d)))?
            {
                // As Firecracker: a console sent elsewhere takes no input.
                config.serial_output = SerialOutput::Writer(Box::new(out));
                config.serial_input = SerialInput::None;
            }
            config.serial_output_limit = self.serial.output_limit();
            config.seccomp = self.overrides.seccomp.clone();
            if let Some(mmds) = &self.resources.mmds_config {
                config.mmds = Some(ember_vmm::MmdsNetConfig {
                    store: self.overrides.mmds.store_or_create(),
                    address: mmds.ipv4_address(),
                    network_interfaces: mmds.network_interfaces.clone(),
                });
            }
            if let Some(device) = &self.overrides.kvm_device {
                config.kvm_device = device.clone();
            }
            Ok(ember_vmm::build(config)?.start(event_loop, termination)?)
        });
        let response = match started {
            Ok(vm) => {
                log::info!("VM started");
                self.phase = Phase::Running(vm);
                ApiResponse::no_content()
            }
            Err(error) => {
                let message = error_chain(&error);
                log::error!("cannot start the VM: {message}");
                self.phase = Phase::Configuring;
                if !reply {
                    // A config file's VM: the process ends with this error.
                    self.finished = Some(Err(match error {
                        crate::Error::Vmm(error) => error,
                        other => ember_vmm::Error::InvalidConfig(other.to_string()),
                    }));
                }
                ApiResponse::bad_request(&format!("cannot start the VM: {message}"))
            }
        };
        if reply {
            self.reply(response);
        }
    }

    /// Restores the VM from a snapshot, with this controller's serial
    /// settings, seccomp filters and KVM device.
    fn load_snapshot(
        &mut self,
        load: &SnapshotLoad,
        start: StartTime,
        event_loop: &mut EventLoop,
        termination: Option<&TerminationSignals>,
    ) -> ApiResponse {
        let started = std::time::Instant::now();
        let mut config = ember_vmm::RestoreConfig::new(&load.snapshot_path, &load.mem_file_path);
        config.track_dirty_pages = load.track_dirty_pages;
        config.resume = load.resume_vm;
        config.net_overrides = load
            .network_overrides
            .iter()
            .map(|o| (o.iface_id.clone(), o.host_dev_name.clone()))
            .collect();
        config.vsock_override = load.vsock_override.as_ref().map(|o| o.uds_path.clone());
        config.serial_output_limit = self.serial.output_limit();
        config.start_time = start;
        config.seccomp = self.overrides.seccomp.clone();
        if let Some(device) = &self.overrides.kvm_device {
            config.kvm_device = device.clone();
        }
        // Interfaces that answered for the MMDS go on answering from this
        // process's store (the document itself is not in the snapshot, as in
        // Firecracker: the client puts it again).
        config.mmds_store = Some(self.overrides.mmds.store_or_create());
        let mut sections = Vec::new();
        let restored = (|| -> crate::Result<RunningVm> {
            let serial_out = match self.serial_out.take() {
                Some(out) => Some(out),
                None => self.serial.open_output()?,
            };
            if let Some(out) = serial_out {
                config.serial_output = SerialOutput::Writer(Box::new(out));
                config.serial_input = SerialInput::None;
            }
            let mut vm = ember_vmm::restore(config)?;
            sections = vm.take_app_sections();
            Ok(vm.start(event_loop, termination)?)
        })();
        match restored {
            Ok(vm) => {
                self.resources = snapshot::restored_resources(&sections, load, vm.machine());
                if let Some(config) = &self.resources.mmds_config {
                    self.overrides.mmds.configure(config);
                }
                log::info!(
                    "VM restored from {} in {:?} ({})",
                    load.snapshot_path.display(),
                    started.elapsed(),
                    if load.resume_vm { "running" } else { "paused" }
                );
                self.api_counters
                    .record_latency(Timed::LoadSnapshot, true, started.elapsed());
                self.phase = Phase::Running(vm);
                ApiResponse::no_content()
            }
            Err(error) => {
                let message = error_chain(&error);
                log::error!("cannot load the snapshot: {message}");
                ApiResponse::bad_request(&format!("Load snapshot error: {message}"))
            }
        }
    }

    fn reply(&self, response: ApiResponse) {
        if self.responses.send(response).is_err() {
            log::warn!("the API thread is gone; a response was dropped");
        }
    }

    fn state_name(&self) -> &'static str {
        match &self.phase {
            Phase::Configuring | Phase::Starting { .. } | Phase::Loading { .. } => "Not started",
            Phase::Running(vm) => match vm.state() {
                RunState::Running => "Running",
                RunState::Paused => "Paused",
            },
        }
    }

    fn running(&mut self) -> Option<&mut RunningVm> {
        match &mut self.phase {
            Phase::Running(vm) => Some(vm),
            _ => None,
        }
    }

    fn running_vm(&self) -> Option<&RunningVm> {
        match &self.phase {
            Phase::Running(vm) => Some(vm),
            _ => None,
        }
    }

    fn configuring(&self) -> bool {
        matches!(self.phase, Phase::Configuring)
    }

    /// Handles one request; `None` when the answer comes later (InstanceStart).
    fn handle(&mut self, request: ApiRequest) -> Option<ApiResponse> {
        let configuring = self.configuring();
        if configuring && snapshot::is_boot_specific(&request) {
            self.boot_specific = true;
        }
        let response = match request {
            ApiRequest::GetInstanceInfo => ApiResponse::ok(&InstanceInfo {
                app_name: "Ember",
                id: &self.instance_id,
                state: self.state_name(),
                vmm_version: VERSION,
            }),
            ApiRequest::GetVersion => ApiResponse::ok(&VersionInfo {
                firecracker_version: crate::REPORTED_FIRECRACKER_VERSION,
                ember_version: VERSION,
            }),
            ApiRequest::GetMachineConfig => ApiResponse::ok(&self.resources.machine()),
            ApiRequest::GetVmConfig => ApiResponse::ok(&FullVmConfig::of(&self.resources)),
            ApiRequest::Action(action) => return self.action(action),
            ApiRequest::PatchDrive(update) => self.patch_drive(update),
            ApiRequest::PatchNetworkInterface(update) => self.patch_network_interface(update),
            ApiRequest::PatchVm(state) => self.patch_vm(state),
            ApiRequest::GetMmds => self.overrides.mmds.get(!configuring),
            ApiRequest::PutMmds(data) => self.overrides.mmds.put(data, !configuring),
            ApiRequest::PatchMmds(patch) => self.overrides.mmds.patch(patch, !configuring),
            ApiRequest::GetBalloon => balloon::get(&self.resources, self.running_vm()),
            ApiRequest::PatchBalloon(update) => match &self.phase {
                Phase::Running(vm) => balloon::patch(&mut self.resources, vm, update),
                _ => not_before_start(),
            },
            ApiRequest::PatchBalloonStats(update) => match &self.phase {
                Phase::Running(vm) => balloon::patch_stats(&mut self.resources, vm, update),
                _ => not_before_start(),
            },
            ApiRequest::GetBalloonStats => match self.running_vm() {
                Some(vm) => balloon::get_stats(vm),
                None => not_before_start(),
            },
            ApiRequest::CreateSnapshot(create) => match &mut self.phase {
                Phase::Running(vm) => {
                    snapshot::create(vm, &create, &self.resources, &self.api_counters)
                }
                _ => not_before_start(),
            },
            ApiRequest::StartBalloonHinting(cmd) => match self.running_vm() {
                Some(vm) => balloon::start_hinting(vm, cmd),
                None => not_before_start(),
            },
            ApiRequest::GetBalloonHintingStatus => match self.running_vm() {
                Some(vm) => balloon::hinting_status(vm),
                None => not_before_start(),
            },
            ApiRequest::StopBalloonHinting => match self.running_vm() {
                Some(vm) => balloon::stop_hinting(vm),
                None => not_before_start(),
            },
            _ if !configuring => not_after_start(),
            ApiRequest::LoadSnapshot(_) if self.boot_specific => {
                ApiResponse::bad_request(snapshot::LOAD_NOT_ALLOWED)
            }
            ApiRequest::LoadSnapshot(load) => {
                self.phase = Phase::Loading {
                    load,
                    start: StartTime::now(),
                };
                return None;
            }
            ApiRequest::PutBalloon(config) => balloon::put(&mut self.resources, config),
            ApiRequest::PutMmdsConfig(config) => self.put_mmds_config(config),
            ApiRequest::PutMachineConfig(config) => {
                self.update_machine_config(&MachineConfigUpdate::from(config))
            }
            ApiRequest::PatchMachineConfig(update) => self.update_machine_config(&update),
            ApiRequest::PutBootSource(source) => self.put_boot_source(source),
            ApiRequest::PutDrive(drive) => self.put_drive(drive),
            ApiRequest::PutNetworkInterface(iface) => {
                match self.resources.put_network_interface(iface) {
                    Ok(()) => ApiResponse::no_content(),
                    Err(e) => refused(&e),
                }
            }
            ApiRequest::PutVsock(vsock) => self.put_vsock(vsock),
            ApiRequest::PutSerial(serial) => self.put_serial(serial),
            ApiRequest::PutEntropy(entropy) => {
                self.resources.entropy = Some(entropy);
                ApiResponse::no_content()
            }
            ApiRequest::PutLogger(request) => self.put_logger(request),
            ApiRequest::PutMetrics(request) => self.put_metrics(request),
        };
        Some(response)
    }

    /// Checks the configuration against the interfaces the VM has and
    /// applies it to the store.
    fn put_mmds_config(&mut self, config: ember_mmds::MmdsConfig) -> ApiResponse {
        match self.resources.set_mmds_config(config) {
            Ok(config) => {
                self.overrides.mmds.configure(config);
                ApiResponse::no_content()
            }
            Err(e) => config_refused(&e),
        }
    }

    fn update_machine_config(&mut self, update: &MachineConfigUpdate) -> ApiResponse {
        match self.resources.machine().update(update) {
            Ok(config) if !balloon::fits(&self.resources, config.mem_size_mib) => {
                ApiResponse::bad_request(balloon::INCOMPATIBLE_MEMORY)
            }
            Ok(config) => {
                self.resources.machine_config = Some(config);
                ApiResponse::no_content()
            }
            Err(e) => refused(&e),
        }
    }

    /// Opens the kernel and initrd now, as Firecracker does: the VM boots
    /// from these files even if their paths change before `InstanceStart`.
    fn put_boot_source(&mut self, source: BootSource) -> ApiResponse {
        match open_boot_source(&source) {
            Ok((kernel, initrd)) => {
                self.opened.kernel = Some(kernel);
                self.opened.initrd = initrd;
                self.resources.boot_source = Some(source);
                ApiResponse::no_content()
            }
            Err(response) => response,
        }
    }

    /// Opens the backing file now (for writing unless read-only), as
    /// Firecracker does, and keeps it for the VM.
    fn put_drive(&mut self, drive: Drive) -> ApiResponse {
        if let Err(e) = drive.validate() {
            return refused(&e);
        }
        let path = drive.path();
        let file = match ember_vmm::open_disk(&path, drive.read_only()) {
            Ok(file) => file,
            Err(e) => {
                return ApiResponse::bad_request(&format!(
                    "Drive config error: Unable to create the virtio block device: \
                     cannot open the drive {}: {e}",
                    path.display()
                ))
            }
        };
        let id = drive.drive_id.clone();
        if let Err(e) = self.resources.put_drive(drive) {
            return refused(&e);
        }
        self.opened.drives.retain(|(opened, _)| *opened != id);
        self.opened.drives.push((id, file));
        ApiResponse::no_content()
    }

    /// Opens the console's destination now, so that a path that cannot be
    /// written to is refused here rather than at `InstanceStart`.
    fn put_serial(&mut self, serial: SerialConfig) -> ApiResponse {
        match serial.open_output() {
            Ok(out) => {
                self.serial_out = out;
                self.serial = serial;
                ApiResponse::no_content()
            }
            Err(e) => refused(&e),
        }
    }

    /// Binds the vsock socket now, as Firecracker does (a previous vsock's
    /// socket is removed first).
    fn put_vsock(&mut self, vsock: Vsock) -> ApiResponse {
        let config = match vsock.to_vsock_config() {
            Ok(config) => config,
            Err(e) => return refused(&e),
        };
        self.opened.vsock = None;
        self.resources.vsock = None;
        match BoundListener::bind(&config.uds_path) {
            Ok(listener) => {
                self.opened.vsock = Some(listener);
                self.resources.vsock = Some(vsock);
                ApiResponse::no_content()
            }
            Err(e) => ApiResponse::bad_request(&format!(
                "Vsock config error: Cannot create backend for vsock device: \
                 cannot bind {}: {e}",
                config.uds_path.display()
            )),
        }
    }

    fn patch_drive(&mut self, update: DriveUpdate) -> ApiResponse {
        let Some(vm) = self.running() else {
            return not_before_start();
        };
        let block = match vm.drive(&update.drive_id) {
            Ok(block) => block,
            Err(e) => return ApiResponse::bad_request(&error_chain(&e)),
        };
        if update.path_on_host.is_none() && update.rate_limiter.is_none() {
            // Firecracker's words: such a PATCH is for vhost-user drives.
            return ApiResponse::bad_request(&format!(
                "Drive config error: Unable to patch the block device: Running method expected \
                 different backend. Please verify the request arguments. (drive `{}`: give \
                 path_on_host or rate_limiter)",
                update.drive_id
            ));
        }
        let mut block = block
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(path) = &update.path_on_host {
            if let Err(e) = block.swap_backing_file(path) {
                return ApiResponse::bad_request(&format!("drive `{}`: {e}", update.drive_id));
            }
            log::info!("drive {} now backed by {}", update.drive_id, path.display());
        }
        if let Some(limiter) = update.rate_limiter {
            block.update_rate_limiter(bucket_update(limiter.bandwidth), bucket_update(limiter.ops));
        }
        drop(block);
        if let Some(drive) = self
            .resources
            .drives
            .iter_mut()
            .find(|d| d.drive_id == update.drive_id)
        {
            if let Some(path) = update.path_on_host {
                drive.path_on_host = Some(path);
            }
            if let Some(limiter) = update.rate_limiter {
                let current = drive.rate_limiter.get_or_insert_with(Default::default);
                current.bandwidth = limiter.bandwidth.or(current.bandwidth);
                current.ops = limiter.ops.or(current.ops);
            }
        }
        ApiResponse::no_content()
    }

    fn patch_network_interface(&mut self, update: NetworkInterfaceUpdate) -> ApiResponse {
        let Some(vm) = self.running() else {
            return not_before_start();
        };
        let net = match vm.net(&update.iface_id) {
            Ok(net) => net,
            Err(e) => return ApiResponse::bad_request(&error_chain(&e)),
        };
        let to_update = |limiter: Option<RateLimiter>| {
            limiter.map_or(RateLimiterUpdate::KEEP, |l| RateLimiterUpdate {
                bandwidth: bucket_update(l.bandwidth),
                ops: bucket_update(l.ops),
            })
        };
        net.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .update_rate_limiters(
                to_update(update.rx_rate_limiter),
                to_update(update.tx_rate_limiter),
            );
        if let Some(iface) = self
            .resources
            .network_interfaces
            .iter_mut()
            .find(|i| i.iface_id == update.iface_id)
        {
            iface.rx_rate_limiter = update.rx_rate_limiter.or(iface.rx_rate_limiter);
            iface.tx_rate_limiter = update.tx_rate_limiter.or(iface.tx_rate_limiter);
        }
        ApiResponse::no_content()
    }

    fn put_logger(&mut self, request: Logger) -> ApiResponse {
        let level = match request.level.as_deref().map(parse_level) {
            Some(None) => {
                return ApiResponse::bad_request(
                    "invalid level: use Error, Warning, Info, Debug, Trace or Off",
                )
            }
            Some(Some(level)) => level,
            None => log::LevelFilter::Info,
        };
        let config = LoggerConfig {
            instance_id: self.instance_id.clone(),
            path: request.log_path.clone(),
            level,
            show_level: request.show_level.unwrap_or(false),
            show_origin: request.show_log_origin.unwrap_or(false),
            module: request.module.clone(),
        };
        match logger::configure(config) {
            Ok(()) => {
                self.resources.logger = Some(request);
                ApiResponse::no_content()
            }
            Err(e) => ApiResponse::bad_request(&error_chain(&e)),
        }
    }

    /// Applies the `logger`, `metrics` and `mmds-config` objects of a config
    /// file, as if they had come through the API. Returns the first refusal.
    pub fn apply_config_file_settings(&mut self) -> std::result::Result<(), String> {
        if let Some(config) = &self.resources.mmds_config {
            self.overrides.mmds.configure(config);
        }
        let responses = [
            self.resources.logger.clone().map(|l| self.put_logger(l)),
            self.resources.metrics.clone().map(|m| self.put_metrics(m)),
        ];
        for response in responses.into_iter().flatten() {
            if response.status >= 400 {
                return Err(response.body.unwrap_or_default());
            }
        }
        Ok(())
    }

    /// Sets up metrics to `path` as `PUT /metrics` would (for `--metrics-path`);
    /// the refusal's message on failure.
    pub fn configure_metrics(&mut self, path: &std::path::Path) -> std::result::Result<(), String> {
        let response = self.put_metrics(Metrics {
            metrics_path: path.to_owned(),
            emit_id: false,
            properties: None,
        });
        if response.status >= 400 {
            return Err(response.body.unwrap_or_default());
        }
        Ok(())
    }

    fn put_metrics(&mut self, request: Metrics) -> ApiResponse {
        if self.metrics.is_some() {
            return ApiResponse::bad_request(
                "Metrics error: Cannot initialize the metrics system due to bad user input: \
                 Reinitialization of metrics not allowed.",
            );
        }
        let id = request.emit_id.then(|| self.instance_id.clone());
        let opened = MetricsWriter::open(&request.metrics_path)
            .map(|writer| writer.with_labels(id, request.properties.clone()));
        let writer = match opened {
            Ok(writer) => writer,
            Err(e) => {
                return ApiResponse::bad_request(&format!(
                    "cannot open the metrics file {}: {e}",
                    request.metrics_path.display()
                ))
            }
        };
        let armed = TimerFd::new().and_then(|mut timer| {
            timer.reset(METRICS_PERIOD, Some(METRICS_PERIOD))?;
            Ok(timer)
        });
        match armed {
            Ok(timer) => {
                self.metrics = Some(writer);
                self.metrics_timer = Some(timer);
                self.resources.metrics = Some(request);
                // The loop picks the timer up when this subscriber is next processed.
                ApiResponse::no_content()
            }
            Err(e) => ApiResponse::error(500, &format!("cannot arm the metrics timer: {e}")),
        }
    }

    fn action(&mut self, action: Action) -> Option<ApiResponse> {
        let response = match action {
            Action::InstanceStart => {
                if !self.configuring() {
                    return Some(not_after_start());
                }
                self.phase = Phase::Starting {
                    reply: true,
                    start: StartTime::now(),
                };
                return None;
            }
            Action::SendCtrlAltDel => match self.running() {
                None => not_before_start(),
                Some(vm) => match vm.send_ctrl_alt_del() {
                    Ok(()) => ApiResponse::no_content(),
                    Err(e) => ApiResponse::bad_request(&error_chain(&e)),
                },
            },
            // As Firecracker: refused before the start; afterwards a line is
            // written if there is a destination, and it succeeds either way.
            Action::FlushMetrics => match self.running() {
                None => not_before_start(),
                Some(_) => {
                    self.flush_metrics();
                    ApiResponse::no_content()
                }
            },
        };
        Some(response)
    }

    fn patch_vm(&mut self, state: VmStateRequest) -> ApiResponse {
        let Some(vm) = self.running() else {
            return not_before_start();
        };
        let started = std::time::Instant::now();
        let (result, timed) = match state {
            VmStateRequest::Paused => (vm.pause(), Timed::Pause),
            VmStateRequest::Resumed => (vm.resume(), Timed::Resume),
        };
        self.api_counters
            .record_latency(timed, true, started.elapsed());
        match result {
            Ok(()) => ApiResponse::no_content(),
            Err(e) => ApiResponse::error(500, &error_chain(&e)),
        }
    }

    /// All counters: the VM's and the process's (cumulative, Ember's names).
    fn metric_groups(&self) -> Vec<MetricGroup> {
        let mut groups = match &self.phase {
            Phase::Running(vm) => vm.metrics(),
            _ => Vec::new(),
        };
        groups.extend(crate::metrics::process_groups(&self.api_counters));
        groups
    }

    fn flush_metrics(&mut self) {
        let groups = self.metric_groups();
        if let Some(writer) = &mut self.metrics {
            writer.write(&groups);
        }
    }

    fn on_requests(&mut self) {
        let _ = self.wake.read();
        while let Ok(request) = self.requests.try_recv() {
            let deprecation = request.deprecation();
            if let Some(mut response) = self.handle(request) {
                if let Some(warning) = deprecation {
                    log::warn!("{warning}");
                    response.deprecated = true;
                }
                self.reply(response);
            }
        }
    }
}

impl MutEventSubscriber for Controller {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.wake, EventSet::IN)) {
            log::error!("API: cannot watch the request eventfd: {e:?}");
        }
        if let Some(termination) = &self.termination {
            if let Err(e) = ops.add(Events::new(termination, EventSet::IN)) {
                log::error!("API: cannot watch the termination eventfd: {e:?}");
            }
        }
        if let Some(timer) = &self.metrics_timer {
            if let Err(e) = ops.add(Events::new(timer, EventSet::IN)) {
                log::error!("metrics: cannot watch the timer: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == std::os::fd::AsRawFd::as_raw_fd(&self.wake) {
            let had_timer = self.metrics_timer.is_some();
            self.on_requests();
            if !had_timer {
                if let Some(timer) = &self.metrics_timer {
                    if let Err(e) = ops.add(Events::new(timer, EventSet::IN)) {
                        log::error!("metrics: cannot watch the timer: {e:?}");
                    }
                }
            }
        } else if self
            .termination
            .as_ref()
            .is_some_and(|t| std::os::fd::AsRawFd::as_raw_fd(t) == fd)
        {
            if let Some(termination) = &self.termination {
                let _ = termination.read();
            }
            if self.configuring() {
                self.terminated = Some(ember_vmm::signals::last_signal().unwrap_or(libc::SIGTERM));
            }
        } else if self
            .metrics_timer
            .as_ref()
            .is_some_and(|t| std::os::fd::AsRawFd::as_raw_fd(t) == fd)
        {
            if let Some(timer) = &mut self.metrics_timer {
                let _ = timer.wait();
            }
            self.flush_metrics();
        }
    }
}
