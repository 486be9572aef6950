//! One stream connection between a guest socket and a host Unix stream: its
//! state machine, credit-based flow control in both directions, the bounded
//! guest-to-host buffer, and the packets it owes the guest.
//!
//! Flow control (virtio spec 5.10.6.3): every packet carries the sender's
//! receive buffer size (`buf_alloc`) and how many bytes it has consumed
//! (`fwd_cnt`); a sender never has more than `buf_alloc` bytes in flight.
//!
//! - Host to guest: data is read from the Unix stream only when the guest has
//!   credit and an RX buffer to put it in, straight into that buffer (one
//!   `readv` into its guest memory); nothing is buffered here. Without credit the connection stops watching the stream
//!   (the host's writes then block in its socket) and asks the guest for
//!   credit once.
//! - Guest to host: data goes straight to the Unix stream (one `sendmsg`
//!   from guest memory); what the host peer does not take is copied into a
//!   buffer, at most [`CONN_BUF_SIZE`] bytes (the
//!   `buf_alloc` the device advertises). `fwd_cnt` counts bytes handed to the
//!   stream, so a guest that respects its credit never overflows the buffer;
//!   one that does not gets an RST.
//!
//! Shutdown: each direction ends on its own (the guest's SHUTDOWN flags, the
//! host's EOF or hang-up); once both have ended the connection is reset and
//! removed. When the host end went away first, the device sends a full
//! SHUTDOWN and gives the guest [`super::Limits::shutdown_timeout`] to answer
//! with an RST.

use std::collections::VecDeque;
use std::io;
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use event_manager::EventSet;

use super::packet::{
    Header, Op, RxBuffer, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::unix::{ok_line, send, send_guest};
use super::{Limits, VsockCounters, CONN_BUF_SIZE, CREDIT_UPDATE_THRESHOLD, HOST_CID};
use crate::virtio::iov::GuestIoVecs;

/// A connection's identity: the host-side and guest-side ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    /// The host-side port (`src_port` of packets to the guest).
    pub(crate) local_port: u32,
    /// The guest-side port.
    pub(crate) peer_port: u32,
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Host-initiated, waiting for the guest's RESPONSE.
    Connecting,
    /// Established; data may flow in the directions not shut down.
    Open,
    /// The device sent a full SHUTDOWN and waits for the guest's RST.
    Closing,
}

// Packets the connection owes the guest, in the order it sends them.
const P_RST: u8 = 1 << 0;
const P_RESPONSE: u8 = 1 << 1;
const P_REQUEST: u8 = 1 << 2;
/// The stream may have data (or EOF) for the guest.
const P_RW: u8 = 1 << 3;
const P_SHUTDOWN: u8 = 1 << 4;
const P_CREDIT_UPDATE: u8 = 1 << 5;

/// What reading the stream for the guest gave.
enum Read {
    Data(usize),
    AskCredit,
    Nothing,
}

/// A vsock stream connection.
#[derive(Debug)]
pub(crate) struct Connection {
    key: ConnKey,
    guest_cid: u64,
    stream: UnixStream,
    phase: Phase,
    host_initiated: bool,
    pending: u8,
    /// When a REQUEST or a closing connection times out.
    deadline: Option<Instant>,
    request_sent: bool,
    /// Counted in `conns_opened`.
    opened: bool,
    /// To be removed: the RST went out, the guest reset it, or it never
    /// reached the guest.
    dead: bool,

    // Guest to host.
    tx_buf: VecDeque<u8>,
    /// Bytes handed to the stream (or dropped for a host that went away).
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: Wrapping<u32>,

    // Host to guest.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Data bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    credit_requested: bool,
    /// The stream has data the guest cannot take yet: stop watching it.
    read_stalled: bool,

    // Shutdown.
    /// SHUTDOWN flags the guest sent.
    guest_shut: u32,
    /// SHUTDOWN flags sent to the guest.
    shut_sent: u32,
    /// The host stream reached EOF: the host sends no more.
    host_eof: bool,
    /// The host peer cannot receive any more (hang-up or write error).
    host_gone: bool,
    /// The stream reported a hang-up: it must leave the epoll set, which
    /// would otherwise report it forever.
    hup: bool,
    write_shut: bool,

    /// The events the stream is registered for (`None`: not registered).
    pub(crate) registered: Option<EventSet>,
    /// In the muxer's RX list.
    pub(crate) in_rx_list: bool,
    /// In the muxer's list of connections to re-register.
    pub(crate) dirty: bool,
}

impl Connection {
    fn new(key: ConnKey, guest_cid: u64, stream: UnixStream, phase: Phase) -> Connection {
        Connection {
            key,
            guest_cid,
            stream,
            phase,
            host_initiated: phase == Phase::Connecting,
            pending: 0,
            deadline: None,
            request_sent: false,
            opened: false,
            dead: false,
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            credit_requested: false,
            read_stalled: false,
            guest_shut: 0,
            shut_sent: 0,
            host_eof: false,
            host_gone: false,
            hup: false,
            write_shut: false,
            registered: None,
            in_rx_list: false,
            dirty: false,
        }
    }

    /// A host client asked for guest port `key.peer_port`: a REQUEST is due.
    pub(crate) fn host_initiated(key: ConnKey, guest_cid: u64, stream: UnixStream) -> Connection {
        let mut conn = Connection::new(key, guest_cid, stream, Phase::Connecting);
        conn.pending = P_REQUEST;
        conn
    }

    /// The guest's REQUEST `hdr` reached a host listener: a RESPONSE is due.
    pub(crate) fn guest_initiated(
        key: ConnKey,
        guest_cid: u64,
        stream: UnixStream,
        hdr: &Header,
    ) -> Connection {
        let mut conn = Connection::new(key, guest_cid, stream, Phase::Open);
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        conn.pending = P_RESPONSE;
        conn.opened = true;
        conn
    }

    pub(crate) fn key(&self) -> ConnKey {
        self.key
    }

    pub(crate) fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Takes the stream, to close it once it left the epoll set.
    pub(crate) fn into_stream(self) -> UnixStream {
        self.stream
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    pub(crate) fn is_host_initiated(&self) -> bool {
        self.host_initiated
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead
    }

    pub(crate) fn was_opened(&self) -> bool {
        self.opened
    }

    pub(crate) fn request_sent(&self) -> bool {
        self.request_sent
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the connection has (or may have) a packet for the guest.
    pub(crate) fn has_pending_rx(&self) -> bool {
        !self.dead && self.pending != 0
    }

    /// The events to watch on the stream; `None` once it must not be watched.
    /// Hang-ups and errors are always reported.
    pub(crate) fn wanted_events(&self) -> Option<EventSet> {
        if self.dead || self.hup {
            return None;
        }
        let mut set = EventSet::empty();
        if self.can_read() && !self.read_stalled {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() && !self.host_gone {
            set |= EventSet::OUT;
        }
        Some(set)
    }

    fn can_read(&self) -> bool {
        self.phase == Phase::Open && !self.host_eof && self.guest_shut & SHUTDOWN_RCV == 0
    }

    /// How many more bytes the guest can take.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Ends the connection with an RST to the guest, or silently if the guest
    /// never heard of it.
    pub(crate) fn send_rst(&mut self) {
        if self.phase == Phase::Connecting && !self.request_sent {
            self.dead = true;
        } else {
            self.pending = P_RST;
        }
        self.deadline = None;
    }

    fn drop_tx_buf(&mut self, c: &mut VsockCounters) {
        c.buffered_bytes = c.buffered_bytes.saturating_sub(self.tx_buf.len() as u64);
        self.tx_buf = VecDeque::new();
    }

    /// Drops the data buffered for a host peer that went away, as if it had
    /// been delivered (the guest's credit stays consistent).
    fn discard_tx_buf(&mut self, c: &mut VsockCounters) {
        self.fwd_cnt += Wrapping(u32::try_from(self.tx_buf.len()).unwrap_or(0));
        self.drop_tx_buf(c);
    }

    /// Releases the guest-to-host buffer (the connection is being removed).
    pub(crate) fn release(&mut self, c: &mut VsockCounters) {
        self.drop_tx_buf(c);
    }

    /// A packet from the guest for this connection (type and op already
    /// checked, `data` is its payload, in guest memory).
    pub(crate) fn on_guest_packet(
        &mut self,
        op: Op,
        hdr: &Header,
        data: &GuestIoVecs<'_, '_>,
        limits: &Limits,
        now: Instant,
        c: &mut VsockCounters,
    ) {
        if self.dead {
            return;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        self.credit_requested = false;
        if op == Op::Rst {
            c.rsts_received += 1;
            if self.phase == Phase::Connecting {
                c.conns_refused += 1;
            }
            self.dead = true;
            return;
        }
        if self.pending & P_RST != 0 {
            // Already being reset: whatever the guest says no longer matters.
            return;
        }
        match (self.phase, op) {
            (Phase::Connecting, Op::Response) if self.request_sent => self.establish(c),
            (Phase::Open, Op::Rw) => self.guest_data(data, c),
            (Phase::Open | Phase::Closing, Op::CreditUpdate) => {}
            (Phase::Open, Op::CreditRequest) => self.pending |= P_CREDIT_UPDATE,
            (Phase::Open, Op::Shutdown) => self.guest_shutdown(hdr.flags),
            (Phase::Closing, Op::Shutdown) => {
                self.guest_shut |= hdr.flags & SHUTDOWN_BOTH;
                if self.guest_shut == SHUTDOWN_BOTH {
                    self.send_rst();
                }
            }
            // Data or a credit request still in flight when the device closed:
            // the host peer is gone, so is the data.
            (Phase::Closing, Op::Rw | Op::CreditRequest) => {
                self.fwd_cnt += Wrapping(u32::try_from(data.len()).unwrap_or(0));
            }
            _ => {
                log::debug!(
                    "vsock: {op:?} unexpected on {:?} in {:?}",
                    self.key,
                    self.phase
                );
                c.protocol_errors += 1;
                self.send_rst();
                return;
            }
        }
        self.progress(limits, now);
    }

    /// The guest accepted a host-initiated connection: tell the host client.
    fn establish(&mut self, c: &mut VsockCounters) {
        self.phase = Phase::Open;
        self.deadline = None;
        let line = ok_line(self.key.local_port);
        match send(&self.stream, line.as_bytes()) {
            Ok(n) if n == line.len() => {
                self.opened = true;
                c.conns_opened += 1;
            }
            other => {
                log::debug!(
                    "vsock: cannot acknowledge {:?} to the host: {other:?}",
                    self.key
                );
                c.host_errors += 1;
                self.send_rst();
            }
        }
    }

    fn guest_data(&mut self, data: &GuestIoVecs<'_, '_>, c: &mut VsockCounters) {
        if self.guest_shut & SHUTDOWN_SEND != 0 {
            log::debug!("vsock: data after SHUTDOWN(SEND) on {:?}", self.key);
            c.protocol_errors += 1;
            self.send_rst();
            return;
        }
        if self.tx_buf.len() + data.len() > CONN_BUF_SIZE as usize {
            log::debug!(
                "vsock: guest overran its credit on {:?}: {} buffered + {}",
                self.key,
                self.tx_buf.len(),
                data.len()
            );
            c.credit_violations += 1;
            self.send_rst();
            return;
        }
        c.tx_bytes += data.len() as u64;
        let mut taken = 0;
        if self.host_gone {
            taken = data.len();
        } else if self.tx_buf.is_empty() {
            match send_guest(&self.stream, data) {
                Ok(n) => taken = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.host_write_failed(&e, c);
                    taken = data.len();
                }
            }
        }
        self.fwd_cnt += Wrapping(u32::try_from(taken).unwrap_or(0));
        if taken < data.len() {
            // What the host peer did not take is copied out of guest memory,
            // into a buffer grown once.
            self.tx_buf.reserve(data.len() - taken);
            let mut chunk = [0u8; 4096];
            let mut at = taken;
            while at < data.len() {
                let n = data.copy_to(at, &mut chunk);
                self.tx_buf.extend(&chunk[..n]);
                at += n;
            }
            c.buffered_bytes += (data.len() - taken) as u64;
        }
        self.check_credit_update();
    }

    /// The host peer cannot take data any more: what is buffered for it, and
    /// what the guest still sends, is dropped.
    fn host_write_failed(&mut self, e: &io::Error, c: &mut VsockCounters) {
        if e.kind() != io::ErrorKind::BrokenPipe {
            log::debug!("vsock: write to the host failed on {:?}: {e}", self.key);
            c.host_errors += 1;
        }
        self.host_gone = true;
        self.discard_tx_buf(c);
        // Whatever the host sent before leaving still goes to the guest.
        if self.can_read() {
            self.pending |= P_RW;
        }
    }

    fn guest_shutdown(&mut self, flags: u32) {
        let new = flags & SHUTDOWN_BOTH & !self.guest_shut;
        self.guest_shut |= new;
        if new & SHUTDOWN_RCV != 0 {
            // The host peer's further writes fail (EPIPE) instead of piling up.
            let _ = self.stream.shutdown(Shutdown::Read);
            self.pending &= !P_RW;
            self.read_stalled = false;
        }
    }

    /// Asks for a CREDIT_UPDATE once the guest's idea of our free space is
    /// far enough behind.
    fn check_credit_update(&mut self) {
        if (self.fwd_cnt - self.fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= P_CREDIT_UPDATE;
        }
    }

    /// Writes buffered guest data to the stream.
    fn flush(&mut self, c: &mut VsockCounters) {
        while !self.tx_buf.is_empty() && !self.host_gone {
            let (front, _) = self.tx_buf.as_slices();
            match send(&self.stream, front) {
                Ok(0) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    self.host_write_failed(&e, c);
                }
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(u32::try_from(n).unwrap_or(0));
                    c.buffered_bytes = c.buffered_bytes.saturating_sub(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => self.host_write_failed(&e, c),
            }
        }
        if self.tx_buf.is_empty() && self.tx_buf.capacity() > 0 {
            self.tx_buf = VecDeque::new();
        }
        self.check_credit_update();
    }

    /// An epoll event on the stream.
    pub(crate) fn on_stream_event(
        &mut self,
        set: EventSet,
        limits: &Limits,
        now: Instant,
        c: &mut VsockCounters,
    ) {
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            self.hup = true;
        }
        if self.dead || self.pending & P_RST != 0 {
            return;
        }
        if set.contains(EventSet::ERROR) {
            log::debug!("vsock: error on the host stream of {:?}", self.key);
            c.host_errors += 1;
            self.send_rst();
            return;
        }
        if set.contains(EventSet::IN) && self.can_read() {
            if self.pending & P_RW != 0 {
                // Still readable while data waits for the guest: stop
                // watching until the guest catches up.
                self.read_stalled = true;
            }
            self.pending |= P_RW;
        }
        if set.contains(EventSet::HANG_UP) {
            if self.phase == Phase::Connecting {
                // The host client left before the guest answered.
                c.conns_refused += 1;
                self.send_rst();
                return;
            }
            self.host_gone = true;
            self.discard_tx_buf(c);
            // Whatever the host sent before leaving still goes to the guest,
            // read without the (now unwatched) stream's events.
            if self.can_read() {
                self.pending |= P_RW;
            }
        }
        if set.contains(EventSet::OUT) {
            self.flush(c);
        }
        self.progress(limits, now);
    }

    /// Resets the connection if its deadline passed; returns whether it did.
    pub(crate) fn on_timer(&mut self, now: Instant, c: &mut VsockCounters) -> bool {
        match self.deadline {
            Some(deadline) if deadline <= now => {
                log::debug!("vsock: {:?} timed out in {:?}", self.key, self.phase);
                c.timeouts += 1;
                if self.phase == Phase::Connecting {
                    c.conns_refused += 1;
                }
                self.send_rst();
                true
            }
            _ => false,
        }
    }

    /// Moves the shutdown along after any change: passes the guest's
    /// end-of-data on to the host, owes the guest a SHUTDOWN when the host's
    /// side ended, and ends the connection once both directions have.
    fn progress(&mut self, limits: &Limits, now: Instant) {
        if self.dead || self.pending & P_RST != 0 || self.phase != Phase::Open {
            return;
        }
        if self.guest_shut & SHUTDOWN_SEND != 0
            && self.tx_buf.is_empty()
            && !self.write_shut
            && !self.host_gone
        {
            let _ = self.stream.shutdown(Shutdown::Write);
            self.write_shut = true;
        }
        if self.host_flags() & !self.shut_sent != 0 {
            self.pending |= P_SHUTDOWN;
        }
        let host_to_guest_done = self.host_eof || self.guest_shut & SHUTDOWN_RCV != 0;
        let guest_to_host_done =
            self.host_gone || (self.guest_shut & SHUTDOWN_SEND != 0 && self.tx_buf.is_empty());
        if host_to_guest_done && guest_to_host_done && self.pending & P_SHUTDOWN == 0 {
            if self.shut_sent == SHUTDOWN_BOTH && self.guest_shut != SHUTDOWN_BOTH {
                // The host end closed first: the guest answers with an RST.
                self.phase = Phase::Closing;
                self.deadline = Some(now + limits.shutdown_timeout);
                self.pending = 0;
            } else {
                self.send_rst();
            }
        }
    }

    /// The SHUTDOWN flags that describe the host end.
    fn host_flags(&self) -> u32 {
        let mut flags = 0;
        if self.host_eof {
            flags |= SHUTDOWN_SEND;
        }
        if self.host_gone {
            flags |= SHUTDOWN_RCV;
        }
        flags
    }

    /// Reads host data for the guest into the data area of `buffer`: at most
    /// `room` bytes and the guest's credit.
    fn read_for_guest(
        &mut self,
        room: usize,
        buffer: &mut RxBuffer<'_, '_>,
        c: &mut VsockCounters,
    ) -> Read {
        if !self.can_read() {
            self.pending &= !P_RW;
            self.read_stalled = false;
            return Read::Nothing;
        }
        let credit = self.peer_credit();
        if credit == 0 {
            self.read_stalled = true;
            if self.credit_requested {
                return Read::Nothing;
            }
            c.credit_stalls += 1;
            self.credit_requested = true;
            return Read::AskCredit;
        }
        let n = room.min(buffer.data_capacity()).min(credit as usize);
        if n == 0 {
            self.read_stalled = true;
            return Read::Nothing;
        }
        match buffer.recv(&self.stream, n) {
            Ok(0) => {
                self.host_eof = true;
                self.pending &= !P_RW;
                self.read_stalled = false;
                Read::Nothing
            }
            Ok(k) => {
                self.rx_cnt += Wrapping(u32::try_from(k).unwrap_or(0));
                c.rx_bytes += k as u64;
                Read::Data(k)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.pending &= !P_RW;
                self.read_stalled = false;
                Read::Nothing
            }
            Err(e) => {
                log::debug!("vsock: read from the host failed on {:?}: {e}", self.key);
                c.host_errors += 1;
                self.send_rst();
                Read::Nothing
            }
        }
    }

    /// The next packet for the guest, for an RX buffer with `room` data bytes;
    /// data goes to `buffer`. Returns the header and the data length, or
    /// `None` if there is nothing to send now.
    pub(crate) fn next_packet(
        &mut self,
        room: usize,
        buffer: &mut RxBuffer<'_, '_>,
        limits: &Limits,
        now: Instant,
        c: &mut VsockCounters,
    ) -> Option<(Header, usize)> {
        // A few rounds: reading can turn into an EOF (then a SHUTDOWN is due)
        // or an error (then an RST).
        for _ in 0..4 {
            if self.dead {
                return None;
            }
            let (op, flags, len) = if self.pending & P_RST != 0 {
                self.pending = 0;
                self.dead = true;
                c.rsts_sent += 1;
                (Op::Rst, 0, 0)
            } else if self.pending & P_RESPONSE != 0 {
                self.pending &= !P_RESPONSE;
                (Op::Response, 0, 0)
            } else if self.pending & P_REQUEST != 0 {
                self.pending &= !P_REQUEST;
                self.request_sent = true;
                self.deadline = Some(now + limits.request_timeout);
                (Op::Request, 0, 0)
            } else if self.pending & P_RW != 0 {
                match self.read_for_guest(room, buffer, c) {
                    Read::Data(n) => (Op::Rw, 0, n),
                    Read::AskCredit => (Op::CreditRequest, 0, 0),
                    Read::Nothing => {
                        self.progress(limits, now);
                        if self.pending & P_RW != 0 {
                            // Stalled: only control packets may go out.
                            self.control_packet()?
                        } else {
                            continue;
                        }
                    }
                }
            } else {
                self.control_packet()?
            };
            if op == Op::Shutdown {
                self.shut_sent |= flags;
                self.progress(limits, now);
            }
            c.rx_packets += 1;
            return Some((self.header(op, flags, len), len));
        }
        None
    }

    /// A pending SHUTDOWN or CREDIT_UPDATE, taken off the pending set.
    fn control_packet(&mut self) -> Option<(Op, u32, usize)> {
        if self.pending & P_SHUTDOWN != 0 {
            self.pending &= !P_SHUTDOWN;
            let flags = self.host_flags();
            if flags & !self.shut_sent != 0 {
                return Some((Op::Shutdown, flags | self.shut_sent, 0));
            }
        }
        if self.pending & P_CREDIT_UPDATE != 0 {
            self.pending &= !P_CREDIT_UPDATE;
            return Some((Op::CreditUpdate, 0, 0));
        }
        None
    }

    fn header(&mut self, op: Op, flags: u32, len: usize) -> Header {
        // Every packet carries the credit: no separate update is owed.
        self.fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !P_CREDIT_UPDATE;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len: u32::try_from(len).unwrap_or(0),
            type_: TYPE_STREAM,
            op: op as u16,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }
}
