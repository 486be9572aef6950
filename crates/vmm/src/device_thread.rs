//! The devices' event loop, on a thread of its own so that a pause can park
//! it: while the VM is paused no device handler runs, so nothing (network
//! receive, vsock, rate-limiter timers, balloon statistics) writes guest memory
//! or moves a virtqueue, and a snapshot taken then is consistent. The VMM
//! thread keeps its own loop for the API and the exit watcher.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ember_devices::trigger::EventTrigger;
use ember_jailer::seccomp::{self, BpfProgram};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};

use crate::exit::ThreadReport;
use crate::vm::{EventLoop, Subscriber};
use crate::{Error, Result};

/// The device thread's name.
pub(crate) const DEVICE_THREAD_NAME: &str = "ember_devices";
/// How long pause and stop wait for the device thread to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Run,
    Pause,
    Stop,
}

#[derive(Debug)]
struct LoopState {
    request: Request,
    parked: bool,
    ended: bool,
}

#[derive(Debug)]
struct LoopControl {
    state: Mutex<LoopState>,
    changed: Condvar,
    /// Set with each new request, so the loop takes the lock only then, not
    /// on every turn.
    requested: AtomicBool,
}

impl LoopControl {
    fn lock(&self) -> MutexGuard<'_, LoopState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits while `busy` holds, up to the answer timeout. Returns whether it
    /// stopped holding.
    fn wait_while(&self, mut busy: impl FnMut(&LoopState) -> bool) -> bool {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut state = self.lock();
        while busy(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// Wakes the device loop out of `epoll_wait` so that it sees a new request.
struct Waker(EventTrigger);

impl MutEventSubscriber for Waker {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.event_fd(), EventSet::IN)) {
            log::error!("device loop: cannot watch its wake-up event: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.event_fd().read();
    }
}

/// The running device thread.
#[derive(Debug)]
pub(crate) struct DeviceThread {
    control: Arc<LoopControl>,
    wake: EventTrigger,
    handle: JoinHandle<()>,
}

impl DeviceThread {
    /// Starts the device loop with `subscribers` on a new thread, which
    /// installs `filter` first. A failure of the loop is reported on `reports`
    /// and signalled on `report_event`.
    pub(crate) fn start(
        subscribers: Vec<Subscriber>,
        filter: Option<&BpfProgram>,
        reports: &Sender<ThreadReport>,
        report_event: &EventTrigger,
    ) -> Result<DeviceThread> {
        let mut devices = EventLoop::new().map_err(Error::EventLoop)?;
        let wake = EventTrigger::new()?;
        devices.add_subscriber(Arc::new(Mutex::new(Waker(wake.try_clone()?))));
        for subscriber in subscribers {
            devices.add_subscriber(subscriber);
        }
        let control = Arc::new(LoopControl {
            state: Mutex::new(LoopState {
                request: Request::Run,
                parked: false,
                ended: false,
            }),
            changed: Condvar::new(),
            requested: AtomicBool::new(false),
        });
        let (thread_control, filter, reports, report_event) = (
            control.clone(),
            filter.cloned(),
            reports.clone(),
            report_event.try_clone()?,
        );
        let handle = std::thread::Builder::new()
            .name(DEVICE_THREAD_NAME.to_owned())
            .spawn(move || {
                let result = run_devices(&mut devices, &thread_control, filter.as_ref());
                thread_control.lock().ended = true;
                thread_control.changed.notify_all();
                if let Err(e) = result {
                    log::error!("the device loop stopped: {e}");
                    let report = ThreadReport {
                        thread: DEVICE_THREAD_NAME.to_owned(),
                        result: Err(e),
                    };
                    if reports.send(report).is_ok() {
                        let _ = report_event.trigger();
                    }
                }
            })
            .map_err(|source| Error::Thread {
                name: DEVICE_THREAD_NAME.to_owned(),
                source,
            })?;
        Ok(DeviceThread {
            control,
            wake,
            handle,
        })
    }

    fn request(&self, request: Request) {
        self.control.lock().request = request;
        self.control.requested.store(true, Ordering::SeqCst);
        self.control.changed.notify_all();
        if let Err(e) = self.wake.trigger() {
            log::error!("cannot wake the device loop: {e}");
        }
    }

    /// Parks the device loop: returns once no device handler runs, and none
    /// will until [`DeviceThread::resume`].
    pub(crate) fn pause(&self) -> Result<()> {
        self.request(Request::Pause);
        if self.control.wait_while(|s| !s.parked && !s.ended) {
            if self.control.lock().parked {
                return Ok(());
            }
            return Err(Error::InvalidState("the device loop has stopped"));
        }
        Err(Error::VcpuControl("the device loop did not pause in time"))
    }

    /// Lets a parked device loop run again.
    pub(crate) fn resume(&self) {
        self.request(Request::Run);
    }

    /// Stops and joins the thread. Returns `false` if it did not stop in time
    /// (it is left running).
    pub(crate) fn stop(self) -> bool {
        self.request(Request::Stop);
        if !self.control.wait_while(|s| !s.ended) {
            log::error!("the device loop did not stop; leaving it");
            return false;
        }
        if self.handle.join().is_err() {
            log::error!("the device loop panicked");
        }
        true
    }
}

/// The device thread's body: dispatch device events until asked to stop,
/// parking while asked to pause.
fn run_devices(
    devices: &mut EventLoop,
    control: &LoopControl,
    filter: Option<&BpfProgram>,
) -> Result<()> {
    if let Some(program) = filter {
        seccomp::apply(program).map_err(|source| Error::Seccomp {
            thread: "vmm",
            source,
        })?;
    }
    loop {
        if control.requested.swap(false, Ordering::SeqCst) {
            let mut state = control.lock();
            while state.request == Request::Pause {
                state.parked = true;
                control.changed.notify_all();
                state = control
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            state.parked = false;
            if state.request == Request::Stop {
                return Ok(());
            }
        }
        devices.run().map_err(Error::EventLoop)?;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    use super::*;

    /// Counts how often its eventfd fired (and drains it).
    struct Counter {
        event: EventTrigger,
        seen: Arc<AtomicUsize>,
    }

    impl MutEventSubscriber for Counter {
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(self.event.event_fd(), EventSet::IN))
                .unwrap();
        }

        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            let _ = self.event.event_fd().read();
            self.seen.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn wait_for(mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    #[test]
    fn a_paused_loop_runs_no_handler_until_resumed() {
        let event = EventTrigger::new().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter: Subscriber = Arc::new(Mutex::new(Counter {
            event: event.try_clone().unwrap(),
            seen: seen.clone(),
        }));
        let (tx, _rx) = mpsc::channel();
        let thread =
            DeviceThread::start(vec![counter], None, &tx, &EventTrigger::new().unwrap()).unwrap();

        event.trigger().unwrap();
        assert!(wait_for(|| seen.load(Ordering::SeqCst) == 1));

        thread.pause().unwrap();
        event.trigger().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(seen.load(Ordering::SeqCst), 1, "a handler ran while paused");
        // Pausing twice is harmless.
        thread.pause().unwrap();

        thread.resume();
        assert!(wait_for(|| seen.load(Ordering::SeqCst) == 2));
        assert!(thread.stop());
    }

    #[test]
    fn stop_ends_a_paused_loop() {
        let (tx, _rx) = mpsc::channel();
        let thread = DeviceThread::start(vec![], None, &tx, &EventTrigger::new().unwrap()).unwrap();
        thread.pause().unwrap();
        assert!(thread.stop());
    }
}
