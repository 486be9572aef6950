//! One thread per vCPU. Each runs its vCPU until the guest stops it or the VMM
//! asks it to pause or stop, and reports guest-initiated stops back through a
//! channel and an eventfd. The VMM changes a thread's course by setting the
//! requested state and kicking the thread out of `KVM_RUN` with the kick signal,
//! repeating the kick until every thread has answered (a kick that lands before
//! a thread first enters the run loop would otherwise be lost). A thread that
//! never answers is left behind rather than hanging the VMM.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ember_cpu::vcpu::KickSignal;
use ember_cpu::{Vcpu, VcpuStop};
use ember_devices::trigger::EventTrigger;
use ember_jailer::seccomp::{self, BpfProgram};
use vmm_sys_util::signal::Killable;

use crate::exit::ThreadReport;
use crate::io::IoBuses;
use crate::{Error, Result};

/// The name of vCPU `index`'s thread: `fc_vcpu N`, as Firecracker names its
/// vCPU threads (tools such as Kata Containers find them by that name to pin them).
pub fn vcpu_thread_name(index: impl std::fmt::Display) -> String {
    format!("fc_vcpu {index}")
}

/// How often a state change re-kicks threads that have not answered.
const KICK_INTERVAL: Duration = Duration::from_millis(5);
/// How long a state change waits for the vCPU threads.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the VMM wants the vCPU threads to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Run,
    Pause,
    Stop,
}

/// Work a parked vCPU thread does on its own vCPU (saving its state: KVM
/// wants a vCPU's ioctls from the thread that runs it).
type VcpuTask = Arc<dyn Fn(&Vcpu) -> Box<dyn Any + Send> + Send + Sync>;

struct ControlState {
    request: Request,
    /// Threads parked because of a pause request.
    parked: usize,
    /// The task for parked threads, with its number; each thread runs each
    /// task once.
    task: Option<(u64, VcpuTask)>,
    /// What the threads answered to the current task, by vCPU index.
    answers: Vec<(u8, Box<dyn Any + Send>)>,
}

impl std::fmt::Debug for ControlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlState")
            .field("request", &self.request)
            .field("parked", &self.parked)
            .field("task", &self.task.as_ref().map(|(number, _)| number))
            .field("answers", &self.answers.len())
            .finish()
    }
}

/// Shared between the VMM and the vCPU threads.
#[derive(Debug)]
struct Control {
    state: Mutex<ControlState>,
    changed: Condvar,
    /// Set when a thread's run loop ends, so the VMM stops waiting for it to park.
    any_ended: AtomicBool,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called by a kicked thread: parks while paused, running the tasks the
    /// VMM posts on `vcpu`. Returns `false` when the thread must end.
    fn obey(&self, vcpu: &Vcpu) -> bool {
        let mut state = self.lock();
        let mut tasks_done = state.task.as_ref().map_or(0, |(number, _)| *number);
        loop {
            match state.request {
                Request::Run => return true,
                Request::Stop => return false,
                Request::Pause => {
                    state.parked += 1;
                    self.changed.notify_all();
                    while state.request == Request::Pause {
                        if let Some((number, task)) = state.task.clone() {
                            if number > tasks_done {
                                tasks_done = number;
                                drop(state);
                                let answer = task(vcpu);
                                state = self.lock();
                                state.answers.push((vcpu.index(), answer));
                                self.changed.notify_all();
                                continue;
                            }
                        }
                        state = self
                            .changed
                            .wait(state)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                    state.parked -= 1;
                    self.changed.notify_all();
                }
            }
        }
    }
}

/// The running vCPU threads.
#[derive(Debug)]
pub(crate) struct VcpuThreads {
    handles: Vec<JoinHandle<()>>,
    control: Arc<Control>,
    /// Disconnects when every thread has ended (each holds a sender).
    finished: Receiver<()>,
    /// The signal that kicks the threads out of `KVM_RUN`.
    kick: KickSignal,
}

fn run_vcpu(
    mut vcpu: Vcpu,
    io: &IoBuses,
    control: &Control,
    reports: &Sender<ThreadReport>,
    wake: &EventTrigger,
    filter: Option<&BpfProgram>,
) {
    let installed = filter.map_or(Ok(()), |program| {
        seccomp::apply(program).map_err(|source| Error::Seccomp {
            thread: "vcpu",
            source,
        })
    });
    let result = match installed {
        Err(e) => Err(e),
        // A VM started paused parks here, before it first enters the guest.
        Ok(()) if !control.obey(&vcpu) => Ok(VcpuStop::Kicked),
        Ok(()) => loop {
            match vcpu.run(io) {
                Ok(VcpuStop::Kicked) if control.obey(&vcpu) => continue,
                other => break other.map_err(Error::Cpu),
            }
        },
    };
    control.any_ended.store(true, Ordering::SeqCst);
    control.changed.notify_all();
    if matches!(result, Ok(VcpuStop::Kicked)) {
        return;
    }
    let index = vcpu.index();
    let thread = vcpu_thread_name(index);
    if reports.send(ThreadReport { thread, result }).is_ok() {
        if let Err(e) = wake.trigger() {
            log::error!("vCPU {index}: cannot wake the VMM: {e}");
        }
    }
}

impl VcpuThreads {
    /// Starts a thread for each vCPU.
    pub(crate) fn start(
        vcpus: Vec<Vcpu>,
        io: &Arc<IoBuses>,
        reports: &Sender<ThreadReport>,
        wake: &EventTrigger,
        filter: Option<&BpfProgram>,
        paused: bool,
        kick: KickSignal,
    ) -> Result<VcpuThreads> {
        kick.install_handler()?;
        let (finished_tx, finished) = mpsc::channel();
        let mut threads = VcpuThreads {
            handles: Vec::with_capacity(vcpus.len()),
            control: Arc::new(Control {
                state: Mutex::new(ControlState {
                    request: if paused { Request::Pause } else { Request::Run },
                    parked: 0,
                    task: None,
                    answers: Vec::new(),
                }),
                changed: Condvar::new(),
                any_ended: AtomicBool::new(false),
            }),
            finished,
            kick,
        };
        for vcpu in vcpus {
            let name = vcpu_thread_name(vcpu.index());
            let (io, control, reports, wake, alive, filter) = (
                io.clone(),
                threads.control.clone(),
                reports.clone(),
                wake.try_clone()?,
                finished_tx.clone(),
                filter.cloned(),
            );
            let spawned = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    run_vcpu(vcpu, &io, &control, &reports, &wake, filter.as_ref());
                    drop(alive);
                });
            match spawned {
                Ok(handle) => threads.handles.push(handle),
                Err(source) => {
                    threads.stop();
                    return Err(Error::Thread { name, source });
                }
            }
        }
        drop(finished_tx);
        Ok(threads)
    }

    fn kick_running(&self) {
        for handle in self.handles.iter().filter(|h| !h.is_finished()) {
            if let Err(e) = handle.kill(self.kick.number()) {
                log::warn!("cannot kick a vCPU thread: {e}");
            }
        }
    }

    /// Pauses every vCPU: returns once all are parked outside `KVM_RUN`.
    pub(crate) fn pause(&self) -> Result<()> {
        self.control.lock().request = Request::Pause;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            self.kick_running();
            let state = self.control.lock();
            let all_parked = state.parked == self.handles.len();
            if all_parked || self.control.any_ended.load(Ordering::SeqCst) {
                return if all_parked {
                    Ok(())
                } else {
                    Err(Error::VcpuControl("a vCPU ended while pausing"))
                };
            }
            if Instant::now() >= deadline {
                return Err(Error::VcpuControl("vCPUs did not pause in time"));
            }
            let wait = KICK_INTERVAL.min(deadline.saturating_duration_since(Instant::now()));
            drop(
                self.control
                    .changed
                    .wait_timeout(state, wait)
                    .unwrap_or_else(PoisonError::into_inner),
            );
        }
    }

    /// Runs `task` on every vCPU, each on its own thread, while they are
    /// paused ([`VcpuThreads::pause`] first); returns the answers in vCPU order.
    pub(crate) fn on_each_vcpu<T: Send + 'static>(
        &self,
        task: impl Fn(&Vcpu) -> T + Send + Sync + 'static,
    ) -> Result<Vec<T>> {
        let count = self.handles.len();
        let mut state = self.control.lock();
        if state.request != Request::Pause || state.parked != count {
            return Err(Error::InvalidState("the vCPUs are not paused"));
        }
        let number = state.task.as_ref().map_or(1, |(number, _)| number + 1);
        let task: VcpuTask = Arc::new(move |vcpu| Box::new(task(vcpu)));
        state.task = Some((number, task));
        state.answers.clear();
        self.control.changed.notify_all();
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        while state.answers.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.control.any_ended.load(Ordering::SeqCst) {
                return Err(Error::VcpuControl("the vCPUs did not answer in time"));
            }
            state = self
                .control
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let mut answers = std::mem::take(&mut state.answers);
        answers.sort_by_key(|(index, _)| *index);
        answers
            .into_iter()
            .map(|(_, answer)| {
                answer
                    .downcast::<T>()
                    .map(|answer| *answer)
                    .map_err(|_| Error::VcpuControl("a vCPU answered another task"))
            })
            .collect()
    }

    /// Lets paused vCPUs run again.
    pub(crate) fn resume(&self) {
        self.control.lock().request = Request::Run;
        self.control.changed.notify_all();
    }

    /// Stops and joins every thread. Returns `false` if some thread did not
    /// stop in time and was left running (its vCPU may still use guest memory).
    pub(crate) fn stop(self) -> bool {
        self.control.lock().request = Request::Stop;
        self.control.changed.notify_all();
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let all_ended = loop {
            self.kick_running();
            let wait = KICK_INTERVAL.min(deadline.saturating_duration_since(Instant::now()));
            match self.finished.recv_timeout(wait) {
                Err(RecvTimeoutError::Disconnected) => break true,
                _ if Instant::now() >= deadline => break false,
                _ => {}
            }
        };
        if !all_ended {
            let stuck = self.handles.iter().filter(|h| !h.is_finished()).count();
            log::error!("{stuck} vCPU thread(s) did not stop; leaving them");
            return false;
        }
        for handle in self.handles {
            if handle.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        }
        true
    }
}
