//! Ember with its API: binds the socket, starts the API thread, and runs the
//! VMM thread's event loop (API requests, then the VM's devices) until the VM
//! ends or a termination signal arrives before it starts.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use ember_vmm::seccomp::ThreadKind;
use ember_vmm::signals::TerminationSignals;
use ember_vmm::{EventLoop, ExitReason, StartTime};
use event_manager::SubscriberOps;

use crate::controller::{Controller, VmOverrides};
use crate::model::VmResources;
use crate::server::{self, ApiCounters, ServerLimits};
use crate::{channel, socket};
use crate::{Error, Result};

/// How to run the API service.
#[derive(Debug)]
pub struct ServiceOptions {
    /// The API socket path; `None` runs a config file's VM without an API.
    pub socket: Option<PathBuf>,
    /// When the start request arrived (process start for a config-file boot).
    pub start_time: StartTime,
    /// Instance id for `GET /` and logs.
    pub instance_id: String,
    /// Resources from a config file: the VM starts at once when given.
    pub resources: Option<VmResources>,
    /// Settings applied to the VM (seccomp filters, KVM device).
    pub overrides: VmOverrides,
    /// What the API server accepts from its clients.
    pub api_limits: ServerLimits,
    /// Metrics destination from the command line (`--metrics-path`), set up
    /// as `PUT /metrics` would before anything else.
    pub metrics_path: Option<PathBuf>,
    /// The start times the jailer passed, for the start-up metrics.
    pub process_start: ProcessStartTimes,
}

/// The start times Firecracker's jailer passes to the program it starts
/// (`--start-time-us`, `--start-time-cpu-us`, `--parent-cpu-time-us`), used
/// as Firecracker uses them: once the API socket exists, the `api_server`
/// metrics `process_startup_time_us` (monotonic time since `start_time_us`)
/// and `process_startup_time_cpu_us` (this process's CPU time since
/// `start_time_cpu_us`, plus `parent_cpu_time_us`) are set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessStartTimes {
    /// `CLOCK_MONOTONIC` microseconds when the jailer started.
    pub start_time_us: Option<u64>,
    /// This process's CPU microseconds when the program was executed.
    pub start_time_cpu_us: Option<u64>,
    /// CPU microseconds the jailer used before.
    pub parent_cpu_time_us: Option<u64>,
}

impl ProcessStartTimes {
    /// Records the start-up times in `counters`, each only when the jailer
    /// passed its start, as Firecracker does.
    pub fn report(&self, counters: &ApiCounters) {
        let now = ember_jailer::StartTimes::now();
        let wall = self
            .start_time_us
            .map(|start| now.monotonic_us.saturating_sub(start));
        let cpu = self.start_time_cpu_us.map(|start| {
            now.cpu_us
                .saturating_sub(start)
                .saturating_add(self.parent_cpu_time_us.unwrap_or(0))
        });
        counters.record_startup(wall, cpu);
    }
}

/// Serves the API and runs the VM it configures; returns how the VM ended.
pub fn run(
    options: ServiceOptions,
    termination: Option<&TerminationSignals>,
) -> Result<ExitReason> {
    let (channel, api_end) = channel::channel()?;
    let counters = Arc::new(ApiCounters::default());
    crate::metrics::count_panics();
    let _socket_guard = match &options.socket {
        Some(socket) => {
            let (listener, guard) = socket::bind(socket)?;
            let thread_counters = counters.clone();
            let limits = options.api_limits;
            let api_filter = options
                .overrides
                .seccomp
                .as_ref()
                .and_then(|filters| filters.get(&ThreadKind::Api).cloned());
            std::thread::Builder::new()
                .name("ember_api".into())
                .spawn(move || {
                    let filter = api_filter.as_ref();
                    if let Err(e) =
                        server::serve(listener, channel, thread_counters, limits, filter)
                    {
                        log::error!("API server stopped: {e}");
                    }
                })
                .map_err(Error::Io)?;
            options.process_start.report(&counters);
            Some(guard)
        }
        None => None,
    };

    let start_now = options.resources.is_some();
    let controller = Arc::new(Mutex::new(Controller::new(
        options.instance_id,
        options.resources.unwrap_or_default(),
        api_end,
        termination,
        counters,
        options.overrides,
    )?));
    {
        let mut controller = controller.lock().unwrap_or_else(PoisonError::into_inner);
        if start_now {
            controller
                .apply_config_file_settings()
                .map_err(Error::ConfigFileSettings)?;
        }
        // After the config file's own `metrics`: both at once are refused,
        // as Firecracker refuses to set up metrics twice.
        if let Some(path) = &options.metrics_path {
            controller
                .configure_metrics(path)
                .map_err(Error::MetricsPath)?;
        }
        if start_now {
            controller.request_start(options.start_time);
        }
    }
    let mut event_loop =
        EventLoop::new().map_err(|e| Error::Vmm(ember_vmm::Error::EventLoop(e)))?;
    event_loop.add_subscriber(controller.clone());
    loop {
        {
            let mut controller = controller.lock().unwrap_or_else(PoisonError::into_inner);
            controller.start_if_requested(&mut event_loop, termination);
            if let Some(done) = controller.take_finished() {
                return done.map_err(Error::Vmm);
            }
        }
        event_loop
            .run()
            .map_err(|e| Error::Vmm(ember_vmm::Error::EventLoop(e)))?;
    }
}
