//! The hybrid back-end: the listening Unix socket, host clients before their
//! `CONNECT` line, the connection table, which connection gets the next RX
//! buffer, RST replies for packets that belong to no connection, deadlines,
//! and the bookkeeping that keeps the event loop's epoll set in step with all
//! of it.
//!
//! The epoll set can only be changed with the `EventOps` the event loop hands
//! to the device, so changes are recorded here and applied by
//! [`Muxer::sync`] at the end of every event. Streams of removed connections
//! stay open until then, so a descriptor number is never reused while epoll
//! still knows it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};

use super::connection::{ConnKey, Connection, Phase};
use super::packet::{Header, Op, RxBuffer, TYPE_STREAM};
use super::unix::{connect_nonblocking, port_path, HostClient, LineStatus};
use super::{Limits, VsockCounters, HOST_CID, HOST_PORT_FIRST};
use crate::host_files::BoundListener;
use crate::virtio::iov::GuestIoVecs;

/// Most RST replies waiting for RX buffers; more are dropped.
const MAX_PENDING_RSTS: usize = 256;
/// Most clients accepted per listener event.
const ACCEPT_BATCH: usize = 32;
/// How long the listener is ignored after `accept` failed (for example for
/// lack of file descriptors), instead of spinning on it.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A host client before its `CONNECT` line.
#[derive(Debug)]
struct Client {
    inner: HostClient,
    registered: bool,
}

/// The connection multiplexer.
#[derive(Debug)]
pub(crate) struct Muxer {
    guest_cid: u64,
    listener: BoundListener,
    /// Set while the listener is ignored after an accept failure.
    listener_paused_until: Option<Instant>,
    /// Whether the listener is watched for IN (it is always registered).
    listener_watched: bool,
    limits: Limits,
    conns: HashMap<ConnKey, Connection>,
    fd_conns: HashMap<RawFd, ConnKey>,
    clients: HashMap<RawFd, Client>,
    new_clients: Vec<RawFd>,
    /// Host-side ports of host-initiated connections.
    host_ports: HashSet<u32>,
    next_host_port: u32,
    /// Connections with something for the guest, served in turn.
    rx_list: VecDeque<ConnKey>,
    /// RST replies for packets of no connection.
    rsts: VecDeque<ConnKey>,
    dirty: Vec<ConnKey>,
    /// Streams to close, and whether they are in the epoll set.
    graveyard: Vec<(UnixStream, bool)>,
    /// No deadline is earlier than this (it may be stale, never late).
    earliest: Option<Instant>,
    pub(crate) counters: VsockCounters,
}

impl Muxer {
    /// A multiplexer accepting host clients on `listener` (bound at the
    /// device's `uds_path`, see [`BoundListener`]).
    pub(crate) fn new(guest_cid: u64, listener: BoundListener, limits: Limits) -> Muxer {
        Muxer {
            guest_cid,
            listener,
            listener_paused_until: None,
            listener_watched: false,
            limits,
            conns: HashMap::new(),
            fd_conns: HashMap::new(),
            clients: HashMap::new(),
            new_clients: Vec::new(),
            host_ports: HashSet::new(),
            next_host_port: HOST_PORT_FIRST,
            rx_list: VecDeque::new(),
            rsts: VecDeque::new(),
            dirty: Vec::new(),
            graveyard: Vec::new(),
            earliest: None,
            counters: VsockCounters::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Entries waiting for RX buffers (queued RSTs and connections).
    #[cfg(test)]
    pub(crate) fn rx_backlog(&self) -> usize {
        self.rsts.len() + self.rx_list.len()
    }

    /// Adds the listener to the epoll set (once, from the subscriber's init).
    pub(crate) fn register_listener(&mut self, ops: &mut EventOps) -> event_manager::Result<()> {
        ops.add(Events::new(self.listener.listener(), EventSet::IN))?;
        self.listener_watched = true;
        Ok(())
    }

    /// Connections and clients waiting for their `CONNECT` line.
    fn in_use(&self) -> usize {
        self.conns.len() + self.clients.len()
    }

    /// Whether a packet for the guest may be due.
    pub(crate) fn has_rx_work(&self) -> bool {
        !self.rsts.is_empty() || !self.rx_list.is_empty()
    }

    /// The earliest deadline (possibly already passed, possibly stale).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.earliest
    }

    fn note_deadline(&mut self, at: Instant) {
        self.earliest = Some(self.earliest.map_or(at, |e| e.min(at)));
    }

    /// Brings the muxer's records up to date after `key`'s connection may
    /// have changed: removes it if it is dead, queues it for RX if it has a
    /// packet due (and `requeue`), marks it for re-registration.
    fn after(&mut self, key: ConnKey, requeue: bool) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.is_dead() {
            self.remove(key);
            return;
        }
        if requeue && conn.has_pending_rx() && !conn.in_rx_list {
            conn.in_rx_list = true;
            self.rx_list.push_back(key);
        }
        if conn.wanted_events() != conn.registered && !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
        if let Some(at) = conn.deadline() {
            self.note_deadline(at);
        }
    }

    fn insert(&mut self, conn: Connection) {
        let key = conn.key();
        self.fd_conns.insert(conn.stream().as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.counters.connections = self.conns.len() as u64;
        self.after(key, true);
    }

    fn remove(&mut self, key: ConnKey) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        self.fd_conns.remove(&conn.stream().as_raw_fd());
        if conn.in_rx_list {
            // No stale entries: a key reused by a new connection must not
            // pile up in the list.
            self.rx_list.retain(|k| *k != key);
        }
        if conn.is_host_initiated() {
            self.host_ports.remove(&key.local_port);
        }
        if conn.was_opened() {
            self.counters.conns_closed += 1;
        }
        conn.release(&mut self.counters);
        let registered = conn.registered.is_some();
        self.graveyard.push((conn.into_stream(), registered));
        self.counters.connections = self.conns.len() as u64;
    }

    /// A host-side port for a new host-initiated connection to `peer_port`,
    /// in [2^30, 2^31) like Firecracker's.
    fn allocate_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_host_port;
            self.next_host_port = if port >= (1 << 31) - 1 {
                HOST_PORT_FIRST
            } else {
                port + 1
            };
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            // At most `max_connections` ports are taken: this ends quickly.
            if !self.host_ports.contains(&port) && !self.conns.contains_key(&key) {
                self.host_ports.insert(port);
                return port;
            }
        }
    }

    fn queue_rst(&mut self, key: ConnKey) {
        if self.rsts.len() >= MAX_PENDING_RSTS {
            self.counters.dropped_rsts += 1;
        } else {
            self.rsts.push_back(key);
        }
    }

    /// Resets `key`'s connection, or answers with an RST if there is none
    /// (and `reply`).
    fn refuse(&mut self, key: ConnKey, reply: bool) {
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.send_rst();
            self.after(key, true);
        } else if reply {
            self.queue_rst(key);
        }
    }

    fn addressed_to_host(&self, hdr: &Header) -> bool {
        hdr.src_cid == self.guest_cid && hdr.dst_cid == HOST_CID
    }

    /// A TX chain that does not hold a valid packet; `header` if it had one.
    pub(crate) fn on_malformed(&mut self, header: Option<&Header>) {
        self.counters.tx_packets += 1;
        self.counters.malformed_packets += 1;
        if let Some(hdr) = header {
            if self.addressed_to_host(hdr) {
                let key = ConnKey {
                    local_port: hdr.dst_port,
                    peer_port: hdr.src_port,
                };
                self.refuse(key, hdr.op != Op::Rst as u16);
            }
        }
    }

    /// A packet from the guest with `data` (in guest memory) as its payload.
    pub(crate) fn on_guest_packet(
        &mut self,
        hdr: &Header,
        data: &GuestIoVecs<'_, '_>,
        now: Instant,
    ) {
        self.counters.tx_packets += 1;
        if !self.addressed_to_host(hdr) {
            log::debug!(
                "vsock: dropped a packet from CID {} to CID {}",
                hdr.src_cid,
                hdr.dst_cid
            );
            self.counters.bad_addresses += 1;
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        let op = hdr.op();
        let Some(op) = op.filter(|&op| hdr.type_ == TYPE_STREAM && (op == Op::Rw || hdr.len == 0))
        else {
            log::debug!(
                "vsock: malformed packet type {} op {} len {}",
                hdr.type_,
                hdr.op,
                hdr.len
            );
            self.counters.malformed_packets += 1;
            self.refuse(key, op != Some(Op::Rst));
            return;
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.on_guest_packet(op, hdr, data, &self.limits, now, &mut self.counters);
            self.after(key, true);
            return;
        }
        match op {
            Op::Request => self.guest_connect(key, hdr),
            Op::Rst => {}
            _ => {
                log::debug!("vsock: {op:?} for no connection ({key:?})");
                self.counters.protocol_errors += 1;
                self.queue_rst(key);
            }
        }
    }

    /// The guest connects to host port `key.local_port`: `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: ConnKey, hdr: &Header) {
        if self.in_use() >= self.limits.max_connections {
            log::debug!("vsock: connection limit reached; guest request refused");
            self.counters.conns_refused += 1;
            self.queue_rst(key);
            return;
        }
        let path = port_path(self.listener.path(), key.local_port);
        match connect_nonblocking(&path) {
            Ok(stream) => {
                let conn = Connection::guest_initiated(key, self.guest_cid, stream, hdr);
                self.counters.conns_opened += 1;
                self.insert(conn);
            }
            Err(e) => {
                log::debug!("vsock: cannot connect to {}: {e}", path.display());
                self.counters.conns_refused += 1;
                self.queue_rst(key);
            }
        }
    }

    /// An epoll event on the listener or one of the streams.
    pub(crate) fn on_fd_event(&mut self, fd: RawFd, set: EventSet, now: Instant) {
        if fd == self.listener.listener().as_raw_fd() {
            self.accept_clients(now);
        } else if self.clients.contains_key(&fd) {
            self.client_event(fd, set);
        } else if let Some(&key) = self.fd_conns.get(&fd) {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.on_stream_event(set, &self.limits, now, &mut self.counters);
            }
            self.after(key, true);
        } else {
            log::debug!("vsock: event on unknown fd {fd}");
        }
    }

    fn accept_clients(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.listener().accept() {
                Ok((stream, _)) => {
                    if self.in_use() >= self.limits.max_connections {
                        log::warn!("vsock: connection limit reached; host client closed");
                        self.counters.conns_refused += 1;
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        log::warn!("vsock: cannot make a host client non-blocking: {e}");
                        self.counters.host_errors += 1;
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    let inner = HostClient::new(stream);
                    self.clients.insert(
                        fd,
                        Client {
                            inner,
                            registered: false,
                        },
                    );
                    self.new_clients.push(fd);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("vsock: cannot accept a host client: {e}");
                    self.counters.host_errors += 1;
                    let until = now + ACCEPT_PAUSE;
                    self.listener_paused_until = Some(until);
                    self.note_deadline(until);
                    return;
                }
            }
        }
    }

    /// Reads a client's `CONNECT` line; a complete one makes it a connection.
    fn client_event(&mut self, fd: RawFd, set: EventSet) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let status = if set.contains(EventSet::ERROR) {
            LineStatus::Invalid
        } else {
            client.inner.read_line()
        };
        match status {
            LineStatus::Incomplete => {}
            LineStatus::Invalid => {
                log::debug!("vsock: host client without a valid CONNECT line");
                self.counters.conns_refused += 1;
                if let Some(client) = self.clients.remove(&fd) {
                    self.graveyard
                        .push((client.inner.stream, client.registered));
                }
            }
            LineStatus::Connect(peer_port) => {
                let Some(client) = self.clients.remove(&fd) else {
                    return;
                };
                let local_port = self.allocate_port(peer_port);
                let key = ConnKey {
                    local_port,
                    peer_port,
                };
                let mut conn = Connection::host_initiated(key, self.guest_cid, client.inner.stream);
                conn.registered = client.registered.then_some(EventSet::IN);
                self.insert(conn);
            }
        }
    }

    /// The timer fired: resets connections past their deadline.
    pub(crate) fn expire(&mut self, now: Instant) {
        if self.listener_paused_until.is_some_and(|t| t <= now) {
            self.listener_paused_until = None;
        }
        let expired: Vec<ConnKey> = self
            .conns
            .iter_mut()
            .filter_map(|(key, conn)| conn.on_timer(now, &mut self.counters).then_some(*key))
            .collect();
        for key in expired {
            self.after(key, true);
        }
        self.earliest = self
            .conns
            .values()
            .filter_map(Connection::deadline)
            .chain(self.listener_paused_until)
            .min();
    }

    /// The next packet for the guest, for an RX buffer with `room` data bytes
    /// (data goes to `buffer`): queued RSTs first, then the connections in
    /// turn. `None` if nothing can be sent now.
    pub(crate) fn next_rx(
        &mut self,
        room: usize,
        buffer: &mut RxBuffer<'_, '_>,
        now: Instant,
    ) -> Option<(Header, usize)> {
        if let Some(key) = self.rsts.pop_front() {
            self.counters.rsts_sent += 1;
            self.counters.rx_packets += 1;
            let hdr = Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: key.local_port,
                dst_port: key.peer_port,
                type_: TYPE_STREAM,
                op: Op::Rst as u16,
                ..Header::default()
            };
            return Some((hdr, 0));
        }
        while let Some(key) = self.rx_list.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_rx_list = false;
            let packet = conn.next_packet(room, buffer, &self.limits, now, &mut self.counters);
            // A connection with nothing to send now leaves the list until an
            // event gives it something.
            self.after(key, packet.is_some());
            if packet.is_some() {
                return packet;
            }
        }
        None
    }

    /// The device was reset: connections the guest knew about are dropped
    /// without a word (its queues are gone). Host requests not yet sent stay
    /// due for the next activation.
    pub(crate) fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            let Some(conn) = self.conns.get(&key) else {
                continue;
            };
            if conn.phase() == Phase::Connecting {
                if !conn.request_sent() {
                    continue;
                }
                self.counters.conns_refused += 1;
            }
            self.remove(key);
        }
        self.rsts.clear();
        self.rx_list.clear();
        for (key, conn) in &mut self.conns {
            conn.in_rx_list = conn.has_pending_rx();
            if conn.in_rx_list {
                self.rx_list.push_back(*key);
            }
        }
    }

    /// Applies the recorded epoll changes: closes removed streams, watches
    /// new clients, pauses or resumes the listener, re-registers connections.
    pub(crate) fn sync(&mut self, ops: &mut EventOps) {
        self.unwatch_closed(ops);
        self.watch_new_clients(ops);
        self.sync_listener(ops);
        self.sync_connections(ops);
    }

    /// Closes the removed streams, taking those still watched out of epoll.
    fn unwatch_closed(&mut self, ops: &mut EventOps) {
        for (stream, registered) in std::mem::take(&mut self.graveyard) {
            if registered {
                if let Err(e) = ops.remove(Events::empty(&stream)) {
                    log::warn!("vsock: cannot unwatch a closed stream: {e:?}");
                    self.counters.event_errors += 1;
                }
            }
        }
    }

    /// Watches the host clients accepted since the last sync; one that
    /// cannot be watched is dropped.
    fn watch_new_clients(&mut self, ops: &mut EventOps) {
        for fd in std::mem::take(&mut self.new_clients) {
            let Some(client) = self.clients.get_mut(&fd) else {
                continue;
            };
            match ops.add(Events::new(&client.inner.stream, EventSet::IN)) {
                Ok(()) => client.registered = true,
                Err(e) => {
                    log::warn!("vsock: cannot watch a host client: {e:?}");
                    self.counters.event_errors += 1;
                    self.clients.remove(&fd);
                }
            }
        }
    }

    /// Watches the listener, or stops while accepting is paused.
    fn sync_listener(&mut self, ops: &mut EventOps) {
        let watch_listener = self.listener_paused_until.is_none();
        if watch_listener != self.listener_watched {
            let set = if watch_listener {
                EventSet::IN
            } else {
                EventSet::empty()
            };
            match ops.modify(Events::new(self.listener.listener(), set)) {
                Ok(()) => self.listener_watched = watch_listener,
                Err(e) => {
                    log::warn!("vsock: cannot change the listener's events: {e:?}");
                    self.counters.event_errors += 1;
                }
            }
        }
    }

    /// Registers the events the changed connections now want; a new
    /// connection that cannot be watched is reset.
    fn sync_connections(&mut self, ops: &mut EventOps) {
        let mut failed = Vec::new();
        for key in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.dirty = false;
            let want = conn.wanted_events();
            let result = match (conn.registered, want) {
                (None, Some(set)) => ops.add(Events::new(conn.stream(), set)),
                (Some(old), Some(set)) if old != set => ops.modify(Events::new(conn.stream(), set)),
                (Some(_), None) => ops.remove(Events::empty(conn.stream())),
                _ => Ok(()),
            };
            match result {
                Ok(()) => conn.registered = want,
                Err(e) => {
                    log::warn!("vsock: cannot watch the stream of {key:?}: {e:?}");
                    self.counters.event_errors += 1;
                    if want.is_some() && conn.registered.is_none() {
                        // Unwatched, the connection would hang: end it.
                        conn.send_rst();
                        failed.push(key);
                    }
                }
            }
        }
        for key in failed {
            self.after(key, true);
        }
    }
}
