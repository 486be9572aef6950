//! The MMDS's TCP connections: smoltcp sockets on port 80, one always
//! listening, at most [`super::MAX_CONNECTIONS`] (the oldest dropped for a
//! new one), each with its request buffer and the answer it is sending.

use std::sync::{Mutex, PoisonError};

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp::{Socket, SocketBuffer, State};

use super::http::{self, Parsed, MAX_REQUEST_LEN};
use super::{MmdsNetCounters, CONN_RX_BUF, CONN_TX_BUF, MAX_CONNECTIONS, MMDS_PORT};
use crate::Mmds;

/// Requests answered per connection in one pass (pipelined ones wait).
const REQUESTS_PER_PASS: usize = 4;

#[derive(Debug)]
struct Conn {
    handle: SocketHandle,
    /// Order of listening: the smallest is the oldest connection.
    serial: u64,
    /// Counted in `connections_created`.
    counted: bool,
    request: Vec<u8>,
    answer: Vec<u8>,
    sent: usize,
    close_after: bool,
}

/// The sockets and what each connection is doing.
#[derive(Debug)]
pub(super) struct Pool {
    sockets: SocketSet<'static>,
    conns: Vec<Conn>,
    next_serial: u64,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool {
            sockets: SocketSet::new(Vec::new()),
            conns: Vec::new(),
            next_serial: 0,
        }
    }
}

impl Pool {
    pub(super) fn len(&self) -> usize {
        self.conns.len()
    }

    pub(super) fn sockets_mut(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }

    fn state(&self, conn: &Conn) -> State {
        self.sockets.get::<Socket>(conn.handle).state()
    }

    /// Makes sure one socket listens, so that a SYN finds it: a new one
    /// under the cap, else the oldest connection's, dropped.
    pub(super) fn keep_listener(&mut self, counters: &mut MmdsNetCounters) {
        if self.conns.iter().any(|c| self.state(c) == State::Listen) {
            return;
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        if self.conns.len() < MAX_CONNECTIONS {
            let mut socket = Socket::new(
                SocketBuffer::new(vec![0; CONN_RX_BUF]),
                SocketBuffer::new(vec![0; CONN_TX_BUF]),
            );
            // The stack runs only when the guest sends or takes frames, so
            // nothing may wait for a timer: ACKs and short segments go out
            // at once.
            socket.set_ack_delay(None);
            socket.set_nagle_enabled(false);
            let handle = self.sockets.add(socket);
            self.conns.push(Conn::new(handle, serial));
            self.listen(handle);
            return;
        }
        let Some(oldest) = self.conns.iter_mut().min_by_key(|c| c.serial) else {
            return;
        };
        if oldest.counted {
            counters.connections_destroyed += 1;
        }
        let handle = oldest.handle;
        *oldest = Conn::new(handle, serial);
        self.sockets.get_mut::<Socket>(handle).abort();
        self.listen(handle);
    }

    fn listen(&mut self, handle: SocketHandle) {
        let socket = self.sockets.get_mut::<Socket>(handle);
        // Only an open socket refuses, and this one was just made or
        // aborted; a refusal would only leave no listener until next time.
        let _ = socket.listen(MMDS_PORT);
    }

    /// Reads requests, answers them and sends the answers.
    pub(super) fn serve(&mut self, store: &Mutex<Mmds>, counters: &mut MmdsNetCounters) {
        for conn in &mut self.conns {
            let socket = self.sockets.get_mut::<Socket>(conn.handle);
            if !conn.counted && socket.state() != State::Listen {
                conn.counted = true;
                counters.connections_created += 1;
            }
            for _ in 0..REQUESTS_PER_PASS {
                conn.send(socket);
                if conn.sent < conn.answer.len() || !conn.read(socket) {
                    break;
                }
                let mut mmds = store.lock().unwrap_or_else(PoisonError::into_inner);
                if !conn.answer_one(&mut mmds, counters) {
                    break;
                }
            }
            // The guest closed its side and has its answers: close ours.
            if conn.sent == conn.answer.len() && socket.state() == State::CloseWait {
                socket.close();
            }
        }
    }

    /// Forgets closed connections.
    pub(super) fn reap(&mut self, counters: &mut MmdsNetCounters) {
        let sockets = &mut self.sockets;
        self.conns.retain(|conn| {
            if sockets.get::<Socket>(conn.handle).state() != State::Closed {
                return true;
            }
            if conn.counted {
                counters.connections_destroyed += 1;
            }
            sockets.remove(conn.handle);
            false
        });
    }
}

impl Conn {
    fn new(handle: SocketHandle, serial: u64) -> Conn {
        Conn {
            handle,
            serial,
            counted: false,
            request: Vec::new(),
            answer: Vec::new(),
            sent: 0,
            close_after: false,
        }
    }

    /// Sends what the socket takes of the answer; closes after the last
    /// byte if the answer says so.
    fn send(&mut self, socket: &mut Socket<'_>) {
        if self.sent < self.answer.len() && socket.can_send() {
            self.sent += socket.send_slice(&self.answer[self.sent..]).unwrap_or(0);
        }
        if self.sent == self.answer.len() {
            self.answer.clear();
            self.sent = 0;
            if self.close_after {
                socket.close();
            }
        }
    }

    /// Reads what fits of the request; whether there is anything to parse.
    fn read(&mut self, socket: &mut Socket<'_>) -> bool {
        if self.close_after {
            return false;
        }
        let room = MAX_REQUEST_LEN.saturating_sub(self.request.len());
        if room > 0 && socket.can_recv() {
            let mut chunk = [0u8; CONN_RX_BUF];
            let take = room.min(chunk.len());
            let got = socket.recv_slice(&mut chunk[..take]).unwrap_or(0);
            self.request.extend_from_slice(&chunk[..got]);
        }
        !self.request.is_empty()
    }

    /// Answers the request at the start of the buffer if it is whole.
    fn answer_one(&mut self, mmds: &mut Mmds, counters: &mut MmdsNetCounters) -> bool {
        let Parsed::Done { consumed, answer } = http::handle(&self.request, mmds) else {
            return false;
        };
        self.request.drain(..consumed.min(self.request.len()));
        counters.rx_count += 1;
        counters.tx_count += 1;
        counters.rx_no_token += u64::from(answer.tokens.no_token);
        counters.rx_invalid_token += u64::from(answer.tokens.invalid_token);
        self.answer = answer.bytes;
        self.sent = 0;
        self.close_after = answer.close;
        true
    }
}
