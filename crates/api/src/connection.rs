//! One client connection of the API server: a non-blocking Unix stream, the
//! bytes of its current request as they trickle in, and the bytes of its
//! answer as the socket takes them. A connection holds at most one request at
//! a time: the next one is parsed only once the previous one is answered, so
//! its buffers stay within one request and one response however the client
//! behaves. The server's loop ([`server`](crate::server)) drives it.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use crate::http::{self, FramingError, Head, HttpLimits};
use crate::routes::Method;

/// Bytes asked of the socket per `read`.
const READ_CHUNK: usize = 4096;

/// Buffers larger than this are released once empty, so an idle connection
/// costs little whatever its last request was.
const KEEP_CAPACITY: usize = 8192;

/// A complete request, as the client sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRequest {
    /// The method, when the API serves it.
    pub method: Option<Method>,
    /// The method as sent.
    pub method_name: String,
    /// The path.
    pub path: String,
    /// The body (empty without one).
    pub body: Vec<u8>,
}

/// What the connection is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Receiving a request (or idle between requests).
    Reading,
    /// A request was handed over and its answer is awaited.
    Answering,
    /// The last answer is being written; then the connection closes.
    Closing,
}

/// A client connection.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    input: Vec<u8>,
    /// Bytes at the front of `input` already taken (dropped at the next read,
    /// so pipelined requests cost one move per read, not one per request).
    consumed: usize,
    /// Bytes of the pending input already searched for the end of the head.
    scanned: usize,
    head: Option<Head>,
    continue_sent: bool,
    output: Vec<u8>,
    written: usize,
    phase: Phase,
    keep_alive: bool,
    peer_closed: bool,
    request_started: Option<Instant>,
    last_progress: Instant,
}

/// Sends `bytes` without raising SIGPIPE if the peer has gone.
fn send(stream: &UnixStream, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe the live `bytes` slice, and the
    // descriptor is the stream's own for the duration of the call.
    let sent = unsafe {
        libc::send(
            stream.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

impl Connection {
    /// A connection on `stream`, which must be non-blocking.
    pub fn new(stream: UnixStream, now: Instant) -> Connection {
        Connection {
            stream,
            input: Vec::new(),
            consumed: 0,
            scanned: 0,
            head: None,
            continue_sent: false,
            output: Vec::new(),
            written: 0,
            phase: Phase::Reading,
            keep_alive: true,
            peer_closed: false,
            request_started: None,
            last_progress: now,
        }
    }

    /// The socket, for the poller.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// The events to wait for: input while a request is being received and
    /// there is room for it, output while an answer is unsent. While its
    /// request waits for the VMM, only the client's hang-up (which the poller
    /// always reports), edge-triggered so that it is reported once.
    pub fn interest(&self, limits: &HttpLimits) -> EventSet {
        if self.phase == Phase::Answering {
            return EventSet::EDGE_TRIGGERED;
        }
        let mut events = EventSet::empty();
        if self.wants_input(limits) {
            events |= EventSet::IN | EventSet::READ_HANG_UP;
        }
        if self.written < self.output.len() {
            events |= EventSet::OUT;
        }
        events
    }

    /// Input is read only while a request is being received, there is room
    /// for it, and every answer so far has been taken by the client: one that
    /// pipelines requests without reading answers is not read either.
    fn wants_input(&self, limits: &HttpLimits) -> bool {
        self.phase == Phase::Reading
            && !self.peer_closed
            && self.written >= self.output.len()
            && self.pending().len() < request_capacity(limits)
    }

    /// The input not taken yet.
    fn pending(&self) -> &[u8] {
        self.input.get(self.consumed..).unwrap_or_default()
    }

    /// Reads what the socket has, up to what the current request may still
    /// need. Passed file descriptors are never taken: reading without a
    /// control buffer makes the kernel close them.
    pub fn receive(&mut self, limits: &HttpLimits, now: Instant) -> io::Result<()> {
        if self.consumed > 0 && self.wants_input(limits) {
            self.input.drain(..self.consumed);
            self.consumed = 0;
        }
        while self.wants_input(limits) {
            let room = request_capacity(limits) - self.input.len();
            let old_len = self.input.len();
            self.input.resize(old_len + room.min(READ_CHUNK), 0);
            let result = (&self.stream).read(&mut self.input[old_len..]);
            let got = match result {
                Ok(got) => got,
                Err(e) => {
                    self.input.truncate(old_len);
                    return match e.kind() {
                        io::ErrorKind::WouldBlock => Ok(()),
                        io::ErrorKind::Interrupted => continue,
                        _ => Err(e),
                    };
                }
            };
            self.input.truncate(old_len + got);
            if got == 0 {
                self.peer_closed = true;
                return Ok(());
            }
            self.last_progress = now;
            if self.request_started.is_none() {
                self.request_started = Some(now);
            }
        }
        Ok(())
    }

    /// The next complete request, if one has arrived: `Ok` to route, `Err`
    /// for a request the framing refuses (answer it; the connection then
    /// closes). Queues the interim `100 Continue` when the client waits for it.
    pub fn take_request(
        &mut self,
        limits: &HttpLimits,
    ) -> Option<Result<RawRequest, FramingError>> {
        if self.phase != Phase::Reading || self.written < self.output.len() {
            return None;
        }
        self.skip_blank_lines();
        if self.head.is_none() {
            match self.parse_head(limits)? {
                Ok(head) => self.head = Some(head),
                Err(refused) => return Some(Err(refused)),
            }
        }
        let head = self.head.as_ref()?;
        let total = head.len + head.content_length;
        if self.pending().len() < total {
            if head.expects_continue && !self.continue_sent {
                self.output.extend_from_slice(http::CONTINUE);
                self.continue_sent = true;
            }
            return None;
        }
        let head = self.head.take()?;
        let body = self
            .pending()
            .get(head.len..total)
            .unwrap_or_default()
            .to_vec();
        self.consumed += total;
        self.scanned = 0;
        self.continue_sent = false;
        self.keep_alive = head.keep_alive;
        self.phase = Phase::Answering;
        Some(Ok(RawRequest {
            method: head.method,
            method_name: head.method_name,
            path: head.path,
            body,
        }))
    }

    /// Blank lines between requests are ignored (RFC 9112, 2.2).
    fn skip_blank_lines(&mut self) {
        if self.head.is_none() {
            let blank = self
                .pending()
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if blank > 0 {
                self.consumed += blank;
                self.scanned = 0;
            }
        }
        if self.pending().is_empty() && self.head.is_none() {
            self.request_started = None;
        }
    }

    fn parse_head(&mut self, limits: &HttpLimits) -> Option<Result<Head, FramingError>> {
        match http::find_head_end(self.pending(), self.scanned) {
            Some(end) if end <= limits.max_header_bytes => {
                Some(http::parse_head(self.pending(), end, limits))
            }
            found if found.is_some() || self.pending().len() >= limits.max_header_bytes => {
                Some(Err(FramingError {
                    status: 400,
                    message: format!(
                        "the request line and headers exceed the limit of {} bytes",
                        limits.max_header_bytes
                    ),
                }))
            }
            _ => {
                self.scanned = self.pending().len();
                None
            }
        }
    }

    /// Queues the answer to the current request (or to a refused one, which
    /// closes the connection once written).
    pub fn respond(&mut self, status: u16, body: Option<&str>, keep_open: bool) {
        let answer = http::Answer {
            status,
            body,
            headers: &[],
        };
        self.respond_with(answer, keep_open);
    }

    /// As [`Connection::respond`], with extra headers in `answer`.
    pub fn respond_with(&mut self, answer: http::Answer<'_>, keep_open: bool) {
        self.keep_alive &= keep_open;
        http::write_response(&mut self.output, answer, self.keep_alive);
        self.phase = if self.keep_alive {
            Phase::Reading
        } else {
            Phase::Closing
        };
        self.head = None;
        self.release_input_if_idle();
        // A pipelined request already (partly) here has been under way since
        // its bytes came.
        self.request_started = (!self.pending().is_empty()).then_some(self.last_progress);
    }

    fn release_input_if_idle(&mut self) {
        if self.pending().is_empty() {
            self.input.clear();
            self.consumed = 0;
            if self.input.capacity() > KEEP_CAPACITY {
                self.input = Vec::new();
            }
        }
    }

    /// Writes what the socket takes of the pending output.
    pub fn send_pending(&mut self, now: Instant) -> io::Result<()> {
        while self.written < self.output.len() {
            match send(&self.stream, &self.output[self.written..]) {
                Ok(sent) => {
                    self.written += sent;
                    self.last_progress = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.output.clear();
        self.written = 0;
        if self.output.capacity() > KEEP_CAPACITY {
            self.output = Vec::new();
        }
        Ok(())
    }

    /// Reads and drops what the client has sent so far (one socket buffer at
    /// most), without blocking.
    pub fn discard_input(&mut self) {
        let mut sink = [0u8; READ_CHUNK];
        for _ in 0..16 {
            match (&self.stream).read(&mut sink) {
                Ok(1..) => {}
                Ok(0) | Err(_) => return,
            }
        }
    }

    /// Whether the client has closed its end and left nothing unread, looked
    /// at without taking anything (for reclaiming slots at the cap before
    /// the hang-up's event is handled).
    pub fn client_has_left(&self) -> bool {
        let mut byte = [0u8; 1];
        // SAFETY: a one-byte buffer that lives across the call, on the
        // stream's own descriptor; MSG_PEEK leaves the data where it is.
        let peeked = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        peeked == 0 && self.phase != Phase::Answering
    }

    /// Bytes of requests held (at most one request's worth).
    pub fn buffered_bytes(&self) -> usize {
        self.pending().len()
    }

    /// Whether a request has been handed over and awaits its answer.
    pub fn is_answering(&self) -> bool {
        self.phase == Phase::Answering
    }

    /// Whether the connection has nothing more to do: its answer is written
    /// and it closes, or the client closed its end with no request pending.
    pub fn is_done(&self) -> bool {
        let flushed = self.written >= self.output.len();
        match self.phase {
            Phase::Closing => flushed,
            Phase::Reading => flushed && self.peer_closed,
            Phase::Answering => false,
        }
    }

    /// When the connection is to be dropped if nothing happens: a request
    /// must arrive whole within `request_timeout` of its first byte (also
    /// while earlier answers wait for the client to read them), an answer
    /// must make progress and an idle connection must be used within
    /// `idle_timeout`. No deadline while the VMM works on its request.
    pub fn deadline(&self, request_timeout: Duration, idle_timeout: Duration) -> Option<Instant> {
        match (self.phase, self.request_started) {
            (Phase::Answering, _) => None,
            (Phase::Reading, Some(started)) => Some(started + request_timeout),
            _ => Some(self.last_progress + idle_timeout),
        }
    }

    /// Whether the connection timed out in the middle of a request (which
    /// then gets a 408 before closing) rather than while idle.
    pub fn has_partial_request(&self) -> bool {
        self.phase == Phase::Reading && self.request_started.is_some()
    }
}

/// The most bytes one request can occupy.
fn request_capacity(limits: &HttpLimits) -> usize {
    limits.max_header_bytes + limits.max_payload_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pair() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (Connection::new(ours, Instant::now()), theirs)
    }

    fn read_all(stream: &mut UnixStream) -> String {
        stream.set_nonblocking(true).unwrap();
        let mut text = Vec::new();
        let _ = stream.read_to_end(&mut text);
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn a_request_in_pieces_is_taken_whole_once() {
        let limits = HttpLimits::default();
        let (mut conn, mut client) = pair();
        let request = b"PUT /vm HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        for byte in request {
            assert_eq!(conn.take_request(&limits), None);
            client.write_all(&[*byte]).unwrap();
            conn.receive(&limits, Instant::now()).unwrap();
        }
        let taken = conn.take_request(&limits).unwrap().unwrap();
        assert_eq!(
            (taken.path.as_str(), taken.body.as_slice()),
            ("/vm", &b"hello"[..])
        );
        assert!(conn.is_answering());
        assert_eq!(conn.take_request(&limits), None, "one request at a time");
        conn.respond(204, None, true);
        conn.send_pending(Instant::now()).unwrap();
        assert!(read_all(&mut client).starts_with("HTTP/1.1 204"));
    }

    #[test]
    fn pipelined_requests_are_answered_in_turn() {
        let limits = HttpLimits::default();
        let (mut conn, mut client) = pair();
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n\r\nGET /version HTTP/1.1\r\n\r\n")
            .unwrap();
        conn.receive(&limits, Instant::now()).unwrap();
        assert_eq!(conn.take_request(&limits).unwrap().unwrap().path, "/");
        assert_eq!(
            conn.interest(&limits),
            EventSet::EDGE_TRIGGERED,
            "no reading while answering"
        );
        conn.respond(200, Some("{}"), true);
        assert_eq!(
            conn.take_request(&limits),
            None,
            "not before the answer is sent"
        );
        conn.send_pending(Instant::now()).unwrap();
        assert_eq!(
            conn.take_request(&limits).unwrap().unwrap().path,
            "/version"
        );
    }

    #[test]
    fn expect_continue_is_answered_before_the_body() {
        let limits = HttpLimits::default();
        let (mut conn, mut client) = pair();
        client
            .write_all(b"PUT /vm HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        conn.receive(&limits, Instant::now()).unwrap();
        assert_eq!(conn.take_request(&limits), None);
        assert_eq!(conn.take_request(&limits), None);
        conn.send_pending(Instant::now()).unwrap();
        assert_eq!(read_all(&mut client), "HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"{}").unwrap();
        conn.receive(&limits, Instant::now()).unwrap();
        assert_eq!(conn.take_request(&limits).unwrap().unwrap().body, b"{}");
    }

    #[test]
    fn oversized_heads_are_refused_and_input_is_bounded() {
        let limits = HttpLimits {
            max_header_bytes: 64,
            max_payload_bytes: 16,
        };
        let (mut conn, mut client) = pair();
        client.set_nonblocking(true).unwrap();
        let line = [b'x'; 1000];
        let _ = client.write(&line);
        conn.receive(&limits, Instant::now()).unwrap();
        assert!(
            conn.input.len() <= 80,
            "read stops at the request's capacity"
        );
        let refused = conn.take_request(&limits).unwrap().unwrap_err();
        assert!(refused.message.contains("64 bytes"), "{}", refused.message);
        conn.respond(refused.status, Some("{}"), false);
        conn.send_pending(Instant::now()).unwrap();
        assert!(conn.is_done());
    }

    #[test]
    fn a_client_that_does_not_read_its_answers_is_not_read_either() {
        let limits = HttpLimits::default();
        let (mut conn, mut client) = pair();
        client.set_nonblocking(true).unwrap();
        let request = b"GET /nope HTTP/1.1\r\n\r\n";
        let mut answered = 0;
        for _ in 0..20_000 {
            let _ = client.write(request);
            conn.receive(&limits, Instant::now()).unwrap();
            while let Some(taken) = conn.take_request(&limits) {
                assert!(taken.is_ok());
                conn.respond(400, Some(&"x".repeat(500)), true);
                conn.send_pending(Instant::now()).unwrap();
                answered += 1;
            }
        }
        // The socket holds what the client did not read; the connection
        // holds at most one answer and one request's bytes.
        assert!(
            conn.output.len() - conn.written <= 1024,
            "{}",
            conn.output.len()
        );
        assert!(conn.buffered_bytes() <= limits.max_header_bytes + limits.max_payload_bytes);
        assert!(
            answered < 20_000,
            "stopped answering once the client stopped reading"
        );
        assert_eq!(
            conn.interest(&limits),
            EventSet::OUT,
            "waits to write, not to read"
        );
    }

    #[test]
    fn a_request_behind_unread_answers_still_has_its_deadline() {
        let limits = HttpLimits::default();
        let (mut conn, mut client) = pair();
        let (request, idle) = (Duration::from_secs(1), Duration::from_secs(100));
        let start = Instant::now();
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\nGET /vers")
            .unwrap();
        conn.receive(&limits, start).unwrap();
        conn.take_request(&limits).unwrap().unwrap();
        conn.respond(200, Some("{}"), true);
        // The answer is not sent (as if the client's buffer were full): the
        // partial request behind it is still bound by the request timeout.
        assert_eq!(conn.deadline(request, idle), Some(start + request));
    }

    #[test]
    fn deadlines_follow_the_phase() {
        let limits = HttpLimits::default();
        let (mut conn, mut client) = pair();
        let (request, idle) = (Duration::from_secs(1), Duration::from_secs(100));
        let start = Instant::now();
        assert_eq!(
            conn.deadline(request, idle),
            Some(conn.last_progress + idle)
        );
        client.write_all(b"GET").unwrap();
        conn.receive(&limits, start).unwrap();
        assert!(conn.has_partial_request());
        assert_eq!(conn.deadline(request, idle), Some(start + request));
        client.write_all(b" / HTTP/1.1\r\n\r\n").unwrap();
        conn.receive(&limits, start).unwrap();
        conn.take_request(&limits).unwrap().unwrap();
        assert_eq!(conn.deadline(request, idle), None);
        drop(client);
        conn.respond(200, Some("{}"), true);
        assert!(
            conn.send_pending(Instant::now()).is_err(),
            "the peer is gone"
        );
    }
}
