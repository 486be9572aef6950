//! Ember with its API: binds the socket, starts the API thread, and runs the
//! VMM thread's event loop (API requests, then the VM's devices) until the VM
//! ends or a termination signal arrives before it starts.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use ember_vmm::signals::TerminationSignals;
use ember_vmm::{EventLoop, ExitReason};
use event_manager::SubscriberOps;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::controller::Controller;
use crate::model::VmResources;
use crate::server::{self, ApiCounters, VmmChannel};
use crate::{Error, Result};

/// How to run the API service.
#[derive(Debug)]
pub struct ServiceOptions {
    /// The API socket path.
    pub socket: PathBuf,
    /// Instance id for `GET /` and logs.
    pub instance_id: String,
    /// Resources from a config file: the VM starts at once when given.
    pub resources: Option<VmResources>,
}

/// Serves the API and runs the VM it configures; returns how the VM ended.
pub fn run(
    options: ServiceOptions,
    termination: Option<&TerminationSignals>,
) -> Result<ExitReason> {
    let (listener, _socket_guard) = server::bind(&options.socket)?;
    let (request_tx, request_rx) = mpsc::channel();
    let (response_tx, response_rx) = mpsc::channel();
    let wake = EventFd::new(EFD_NONBLOCK).map_err(Error::Io)?;
    let counters = Arc::new(ApiCounters::default());
    let channel = VmmChannel {
        requests: request_tx,
        responses: response_rx,
        wake: wake.try_clone().map_err(Error::Io)?,
    };
    let thread_counters = counters.clone();
    std::thread::Builder::new()
        .name("ember_api".into())
        .spawn(move || {
            if let Err(e) = server::serve(listener, channel, thread_counters) {
                log::error!("API server stopped: {e}");
            }
        })
        .map_err(Error::Io)?;

    let start_now = options.resources.is_some();
    let controller = Arc::new(Mutex::new(Controller::new(
        options.instance_id,
        options.resources.unwrap_or_default(),
        request_rx,
        response_tx,
        wake,
        termination,
        counters,
    )?));
    if start_now {
        controller
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .request_start();
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
