//! The API thread: an epoll loop over the listening socket, every client
//! connection and the VMM's answers. Requests are read without ever blocking
//! or sleeping, however slowly their bytes arrive; each complete one is routed
//! ([`routes`]) and handed to the VMM thread ([`channel`](crate::channel)),
//! one at a time in arrival order, and each gets exactly one answer.
//!
//! Limits ([`ServerLimits`]): bytes of a request's head and body, the number
//! of open connections (one more is answered 503 and closed, as Firecracker
//! does), the time a started request has to arrive whole (then 408) and the
//! time an idle connection is kept.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_vmm::seccomp::{self, BpfProgram};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::channel::{VmmChannel, VmmGone};
use crate::connection::{Connection, RawRequest};
use crate::http::HttpLimits;
use crate::logger::LineBudget;
use crate::request::{ApiRequest, ApiResponse};
use crate::routes;
use crate::{Error, Result};

pub use crate::metrics::api::ApiCounters;
use crate::metrics::api::Timed;

/// What the server accepts from its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Bytes of one request.
    pub http: HttpLimits,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Time from a request's first byte to its last.
    pub request_timeout: Duration,
    /// Time a connection may sit idle, or fail to take its answer.
    pub idle_timeout: Duration,
}

/// Connections open at once by default. Firecracker's clients use one or
/// two; the bound keeps the buffers of a flood of clients within a few MiB.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            http: HttpLimits::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Epoll data of the listening socket.
const LISTENER: u64 = 0;
/// Epoll data of the VMM's "answer waiting" eventfd.
const ANSWERED: u64 = 1;
/// Epoll data of the first connection; later ones count up, never reused.
const FIRST_CONNECTION: u64 = 2;
/// How long accepting pauses when the process is out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves requests on `listener` until the VMM side goes away. With `filter`,
/// the thread installs that seccomp filter once its sockets and epoll exist.
pub fn serve(
    listener: UnixListener,
    vmm: VmmChannel,
    counters: Arc<ApiCounters>,
    limits: ServerLimits,
    filter: Option<&BpfProgram>,
) -> Result<()> {
    let mut server = Server::new(listener, vmm, counters, limits)?;
    if let Some(program) = filter {
        seccomp::apply(program).map_err(|e| Error::ApiServer(format!("seccomp: {e}")))?;
    }
    server.run()
}

/// A connection and the events it is registered for (none: not in epoll).
#[derive(Debug)]
struct Slot {
    conn: Connection,
    registered: EventSet,
}

#[derive(Debug)]
struct Server {
    epoll: Epoll,
    listener: UnixListener,
    accept_paused_until: Option<Instant>,
    vmm: VmmChannel,
    counters: Arc<ApiCounters>,
    limits: ServerLimits,
    connections: HashMap<u64, Slot>,
    next_id: u64,
    /// Routed requests waiting for the VMM, oldest first.
    waiting: VecDeque<(u64, ApiRequest)>,
    /// The connection whose request the VMM is working on (it may be gone).
    in_flight: Option<u64>,
    /// A request in flight whose latency is a metric, and when it was sent.
    timed: Option<(Timed, Instant)>,
    /// Failed requests logged this second.
    log_budget: LineBudget,
}

/// Accepts one connection, non-blocking and close-on-exec.
fn accept(listener: &UnixListener) -> io::Result<UnixStream> {
    // SAFETY: accept4 on the listener's own descriptor with no address
    // buffer; on success the returned descriptor is new and owned by us.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly accepted socket that nothing else owns.
    Ok(unsafe { UnixStream::from_raw_fd(fd) })
}

fn io_error(what: &str) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| Error::ApiServer(format!("{what}: {e}"))
}

impl Server {
    fn new(
        listener: UnixListener,
        vmm: VmmChannel,
        counters: Arc<ApiCounters>,
        limits: ServerLimits,
    ) -> Result<Server> {
        listener
            .set_nonblocking(true)
            .map_err(io_error("non-blocking listener"))?;
        let epoll = Epoll::new().map_err(io_error("epoll"))?;
        let watch = |fd, data| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, data),
            )
        };
        watch(listener.as_raw_fd(), LISTENER).map_err(io_error("watching the socket"))?;
        watch(vmm.answered_event().as_raw_fd(), ANSWERED)
            .map_err(io_error("watching the VMM's answers"))?;
        Ok(Server {
            epoll,
            listener,
            accept_paused_until: None,
            vmm,
            counters,
            limits,
            connections: HashMap::new(),
            next_id: FIRST_CONNECTION,
            waiting: VecDeque::new(),
            in_flight: None,
            timed: None,
            log_budget: LineBudget::new(FAILURE_LOG_LINES_PER_SECOND),
        })
    }

    fn run(&mut self) -> Result<()> {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let timeout = self.wait_timeout_ms(Instant::now());
            let ready = match self.epoll.wait(timeout, &mut events) {
                Ok(ready) => ready,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(io_error("epoll_wait")(e)),
            };
            let now = Instant::now();
            // New connections are accepted after the others' events are
            // handled, so that slots freed by clients that left count.
            let mut accept = false;
            for event in events.iter().take(ready) {
                match event.data() {
                    LISTENER => accept = true,
                    ANSWERED => {
                        if self.take_answers(now).is_err() {
                            return Ok(());
                        }
                    }
                    id => self.on_connection_event(id, event.event_set(), now),
                }
            }
            if accept {
                self.accept_all(now);
            }
            self.expire(now);
            self.resume_accepting(now);
            if self.dispatch().is_err() {
                self.answer_all_waiting(503, "the VMM is shutting down", now);
                return Ok(());
            }
        }
    }

    /// Milliseconds until the next deadline, or -1 (wait for events only).
    fn wait_timeout_ms(&self, now: Instant) -> i32 {
        let limits = &self.limits;
        let next = self
            .connections
            .values()
            .filter_map(|slot| {
                slot.conn
                    .deadline(limits.request_timeout, limits.idle_timeout)
            })
            .chain(self.accept_paused_until)
            .min();
        next.map_or(-1, |deadline| {
            let wait = deadline.saturating_duration_since(now).as_millis() + 1;
            i32::try_from(wait).unwrap_or(i32::MAX)
        })
    }

    fn accept_all(&mut self, now: Instant) {
        loop {
            match accept(&self.listener) {
                Ok(stream) if !self.has_room() => self.refuse_connection(stream),
                Ok(stream) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    let slot = Slot {
                        conn: Connection::new(stream, now),
                        registered: EventSet::empty(),
                    };
                    self.connections.insert(id, slot);
                    self.update_registration(id);
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO) => {}
                    _ => {
                        // Out of descriptors or memory: stop polling the
                        // listener for a moment rather than spin on it.
                        log::warn!("API: cannot accept a connection: {e}");
                        self.pause_accepting(now);
                        return;
                    }
                },
            }
        }
    }

    /// Whether one more connection may be served, after dropping those whose
    /// clients have left (their hang-ups may not have been handled yet).
    fn has_room(&mut self) -> bool {
        if self.connections.len() < self.limits.max_connections {
            return true;
        }
        let departed: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, slot)| slot.conn.client_has_left())
            .map(|(&id, _)| id)
            .collect();
        for id in departed {
            self.close(id);
        }
        self.connections.len() < self.limits.max_connections
    }

    /// Answers a connection over the limit with 503 and closes it.
    fn refuse_connection(&self, stream: UnixStream) {
        self.counters
            .refused_connections
            .fetch_add(1, Ordering::Relaxed);
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        let mut conn = Connection::new(stream, Instant::now());
        let fault = ApiResponse::error(
            503,
            &format!(
                "too many open connections: at most {} are served at once",
                self.limits.max_connections
            ),
        );
        conn.respond(fault.status, fault.body.as_deref(), false);
        // Best effort: a fresh socket's buffer takes the short answer at once.
        let _ = conn.send_pending(Instant::now());
        // Whatever request already came is read and dropped, so the client
        // sees the end of the stream after the answer rather than a reset.
        conn.discard_input();
    }

    fn pause_accepting(&mut self, now: Instant) {
        let listener = self.listener.as_raw_fd();
        let unwatched = self
            .epoll
            .ctl(ControlOperation::Delete, listener, EpollEvent::default());
        if unwatched.is_ok() {
            self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
        }
    }

    fn resume_accepting(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|until| until <= now) {
            let listener = self.listener.as_raw_fd();
            let event = EpollEvent::new(EventSet::IN, LISTENER);
            match self.epoll.ctl(ControlOperation::Add, listener, event) {
                Ok(()) => self.accept_paused_until = None,
                Err(e) => log::warn!("API: cannot watch the socket again: {e}"),
            }
        }
    }

    fn on_connection_event(&mut self, id: u64, events: EventSet, now: Instant) {
        let limits = self.limits.http;
        let Some(slot) = self.connections.get_mut(&id) else {
            return;
        };
        // A client gone while its request waits is dropped, and so is its
        // request if the VMM has not taken it yet.
        let hung_up = slot.conn.is_answering() && events.contains(EventSet::HANG_UP);
        if events.contains(EventSet::ERROR) || hung_up {
            self.close(id);
            return;
        }
        let received = slot.conn.receive(&limits, now);
        let sent = if events.contains(EventSet::OUT) {
            slot.conn.send_pending(now)
        } else {
            Ok(())
        };
        if received.is_err() || sent.is_err() {
            self.close(id);
            return;
        }
        self.advance(id, now);
    }

    /// Takes what requests the connection has complete, answers those that
    /// need no VMM, queues the first that does, sends what is pending, and
    /// closes the connection when it is done.
    fn advance(&mut self, id: u64, now: Instant) {
        let limits = self.limits.http;
        let Some(slot) = self.connections.get_mut(&id) else {
            return;
        };
        // Requests are taken one at a time: the next only once the client
        // has taken the last answer (take_request waits for that).
        loop {
            if slot.conn.send_pending(now).is_err() {
                self.close(id);
                return;
            }
            let Some(taken) = slot.conn.take_request(&limits) else {
                break;
            };
            let (answer, keep_open) = match taken {
                Err(refused) => (ApiResponse::error(refused.status, &refused.message), false),
                Ok(raw) => match route(raw, &self.counters) {
                    Ok(request) => {
                        self.waiting.push_back((id, request));
                        break;
                    }
                    Err(answer) => (answer, true),
                },
            };
            count_failure(&answer, &self.counters, &mut self.log_budget);
            slot.conn
                .respond(answer.status, answer.body.as_deref(), keep_open);
        }
        if slot.conn.send_pending(now).is_err() {
            self.close(id);
        } else if slot.conn.is_done() {
            // What else the client sent is read and dropped, so it sees the
            // end of the stream after the answer rather than a reset.
            slot.conn.discard_input();
            self.close(id);
        } else {
            self.update_registration(id);
        }
    }

    /// Registers the connection for what it now waits for; one waiting for
    /// nothing at all (done, about to close) leaves the epoll set.
    fn update_registration(&mut self, id: u64) {
        let limits = self.limits.http;
        let Some(slot) = self.connections.get_mut(&id) else {
            return;
        };
        let wanted = slot.conn.interest(&limits);
        if wanted == slot.registered {
            return;
        }
        let fd = slot.conn.stream().as_raw_fd();
        let operation = if wanted.is_empty() {
            ControlOperation::Delete
        } else if slot.registered.is_empty() {
            ControlOperation::Add
        } else {
            ControlOperation::Modify
        };
        match self.epoll.ctl(operation, fd, EpollEvent::new(wanted, id)) {
            Ok(()) => slot.registered = wanted,
            Err(e) => {
                log::warn!("API: cannot watch a connection: {e}");
                self.close(id);
            }
        }
    }

    fn close(&mut self, id: u64) {
        if self.connections.remove(&id).is_some() {
            // Closing the socket takes it out of the epoll set; a request it
            // left waiting is dropped (one already with the VMM completes).
            self.waiting.retain(|(waiting_id, _)| *waiting_id != id);
        }
    }

    /// Hands the oldest waiting request to the VMM if it is free.
    fn dispatch(&mut self) -> std::result::Result<(), VmmGone> {
        if self.in_flight.is_none() {
            if let Some((id, request)) = self.waiting.pop_front() {
                self.timed = Timed::of(&request).map(|what| (what, Instant::now()));
                self.vmm.send(request)?;
                self.in_flight = Some(id);
            }
        }
        Ok(())
    }

    /// Delivers the VMM's answers to their connections.
    fn take_answers(&mut self, now: Instant) -> std::result::Result<(), VmmGone> {
        while let Some(answer) = self.vmm.try_answer()? {
            let Some(id) = self.in_flight.take() else {
                log::warn!("API: an answer nobody asked for was dropped");
                continue;
            };
            count_failure(&answer, &self.counters, &mut self.log_budget);
            if let Some((what, sent)) = self.timed.take() {
                self.counters.record_latency(what, false, sent.elapsed());
            }
            if let Some(slot) = self.connections.get_mut(&id) {
                let headers: &[(&str, &str)] = if answer.deprecated {
                    &[("Deprecation", "true")]
                } else {
                    &[]
                };
                let reply = crate::http::Answer {
                    status: answer.status,
                    body: answer.body.as_deref(),
                    headers,
                };
                slot.conn.respond_with(reply, true);
                self.advance(id, now);
            }
            self.dispatch()?;
        }
        Ok(())
    }

    /// Answers every waiting request with `status` (the VMM is gone).
    fn answer_all_waiting(&mut self, status: u16, message: &str, now: Instant) {
        let fault = ApiResponse::error(status, message);
        for (id, _) in std::mem::take(&mut self.waiting) {
            if let Some(slot) = self.connections.get_mut(&id) {
                slot.conn
                    .respond(fault.status, fault.body.as_deref(), false);
                let _ = slot.conn.send_pending(now);
            }
        }
    }

    /// Drops connections past their deadline; one in the middle of a request
    /// is told so (408) first.
    fn expire(&mut self, now: Instant) {
        let limits = self.limits;
        let expired: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, slot)| {
                slot.conn
                    .deadline(limits.request_timeout, limits.idle_timeout)
                    .is_some_and(|deadline| deadline <= now)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some(slot) = self.connections.get_mut(&id) {
                self.counters
                    .timed_out_connections
                    .fetch_add(1, Ordering::Relaxed);
                if slot.conn.has_partial_request() {
                    let fault = ApiResponse::error(
                        408,
                        &format!(
                            "the request did not arrive whole within {} s",
                            limits.request_timeout.as_secs()
                        ),
                    );
                    slot.conn
                        .respond(fault.status, fault.body.as_deref(), false);
                    let _ = slot.conn.send_pending(now);
                }
            }
            self.close(id);
        }
    }
}

/// Failed-request log lines a second: a client decides how many requests
/// fail, so it must not decide how much is logged (past this, lines are
/// counted in `logger.rate_limited_log_count`).
const FAILURE_LOG_LINES_PER_SECOND: u32 = 20;

/// Counts a failed answer and logs it within `budget`.
fn count_failure(answer: &ApiResponse, counters: &ApiCounters, budget: &mut LineBudget) {
    if answer.status >= 400 {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        if budget.allow(Instant::now()) {
            log::info!(
                "API request failed ({}): {}",
                answer.status,
                answer.body.as_deref().unwrap_or("")
            );
        }
    }
}

/// The typed request for `raw`, or the answer when it cannot be one.
fn route(raw: RawRequest, counters: &ApiCounters) -> std::result::Result<ApiRequest, ApiResponse> {
    let Some(method) = raw.method else {
        return Err(ApiResponse::bad_request(&format!(
            "Invalid request method and/or path: {} {}.",
            raw.method_name,
            raw.path
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or_default()
        )));
    };
    counters.count_request(method, &raw.path);
    let body = (!raw.body.is_empty()).then_some(raw.body.as_slice());
    let request = routes::parse(method, &raw.path, body)
        .inspect_err(|_| counters.count_refused(method, &raw.path))?;
    counters.count_deprecated(&request);
    log::debug!("API request: {} {}", method.as_str(), raw.path);
    Ok(request)
}

#[cfg(test)]
mod tests;
