//! COM1 as a 16550A-compatible UART (vm-superio), with output to any writer
//! (optionally through a bandwidth limit: bytes beyond the budget are dropped
//! and counted, never waited for) and input fed from a file descriptor by an
//! event-manager subscriber. Input is flow-controlled: when the guest's
//! receive FIFO is full, the subscriber stops reading until the guest drains
//! it, so nothing is lost or buffered without bound.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use ember_ratelimit::{BucketConfig, Reduction, TokenBucket};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_superio::serial::SerialEvents;

use super::{SerialState, UartState};
use crate::bus::ByteRegisters;
use crate::trigger::{EventTrigger, Trigger};
use crate::{Error, Result};

/// Most input bytes read from the host in one go (the UART FIFO is 64 bytes).
const INPUT_CHUNK: usize = 64;

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SerialCounters {
    /// Bytes the guest wrote that reached the output.
    pub bytes_out: u64,
    /// Bytes the guest wrote that the output refused.
    pub bytes_lost: u64,
    /// Bytes the guest wrote beyond the output's rate limit (dropped).
    pub bytes_dropped: u64,
    /// Bytes of host input queued for the guest.
    pub bytes_in: u64,
}

/// UART events: counts output and tells the input subscriber when the guest has
/// emptied the receive FIFO.
#[derive(Debug)]
struct UartEvents {
    drained: EventTrigger,
    bytes_out: AtomicU64,
    bytes_lost: AtomicU64,
}

impl SerialEvents for UartEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {
        self.bytes_out.fetch_add(1, Ordering::Relaxed);
    }
    fn tx_lost_byte(&self) {
        self.bytes_lost.fetch_add(1, Ordering::Relaxed);
    }
    fn in_buffer_empty(&self) {
        if let Err(e) = self.drained.trigger() {
            log::warn!("serial: cannot signal drained input: {e}");
        }
    }
}

/// The output writer behind an optional token bucket on its bytes.
struct LimitedOutput {
    out: Box<dyn Write + Send>,
    limit: Option<TokenBucket>,
    dropped: u64,
}

impl Write for LimitedOutput {
    /// Writes `buf`, or drops it whole (reporting it written, as
    /// Firecracker does) when the bucket cannot pay for it now.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(bucket) = &mut self.limit {
            let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
            if let Reduction::Insufficient(_) = bucket.reduce(len, Instant::now()) {
                self.dropped += len;
                return Ok(buf.len());
            }
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

type Uart<T> = vm_superio::Serial<T, UartEvents, LimitedOutput>;

/// The COM1 device, raising its interrupt through `T` (any vm-superio
/// [`Trigger`]; an eventfd by default).
///
/// # Example
///
/// Output limited to 4 bytes a minute (the rest is dropped and counted),
/// and host input the guest reads, announced by the data-ready interrupt:
///
/// ```
/// use ember_devices::legacy::Serial;
/// use ember_devices::trigger::EventTrigger;
/// use ember_devices::ByteRegisters;
/// use ember_ratelimit::BucketConfig;
///
/// const DATA: u8 = 0; // receive and transmit holding registers
/// const IER: u8 = 1; // interrupt enable
///
/// let irq4 = EventTrigger::new()?;
/// let mut serial = Serial::new(irq4.try_clone()?, EventTrigger::new()?, Box::new(std::io::sink()));
/// serial.limit_output(BucketConfig { size: 4, one_time_burst: 0, refill_time_ms: 60_000 });
/// for byte in b"hello" {
///     serial.write_register(DATA, *byte);
/// }
/// let counters = serial.counters();
/// assert_eq!((counters.bytes_out, counters.bytes_dropped), (5, 1));
///
/// serial.write_register(IER, 0x01); // interrupt when data is ready
/// assert_eq!(serial.enqueue_input(b"ok"), 2);
/// assert!(irq4.event_fd().read().is_ok(), "IRQ 4 raised");
/// assert_eq!([serial.read_register(DATA), serial.read_register(DATA)], *b"ok");
/// # Ok::<(), ember_devices::Error>(())
/// ```
pub struct Serial<T: Trigger = EventTrigger> {
    uart: Uart<T>,
    bytes_in: u64,
}

impl<T: Trigger> fmt::Debug for Serial<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serial").finish_non_exhaustive()
    }
}

impl<T: Trigger> Serial<T> {
    /// A UART raising `interrupt`, writing guest output to `out`, and firing
    /// `input_drained` when the guest has read all pending input.
    pub fn new(interrupt: T, input_drained: EventTrigger, out: Box<dyn Write + Send>) -> Serial<T> {
        let events = UartEvents {
            drained: input_drained,
            bytes_out: AtomicU64::new(0),
            bytes_lost: AtomicU64::new(0),
        };
        let out = LimitedOutput {
            out,
            limit: None,
            dropped: 0,
        };
        Serial {
            uart: vm_superio::Serial::with_events(interrupt, events, out),
            bytes_in: 0,
        }
    }

    /// The device in the saved `state` (registers, receive FIFO, counters),
    /// with the host's lines and output as [`Serial::new`]. As on real
    /// hardware, an interrupt the restored registers call for (data ready or
    /// transmitter empty, and enabled) is raised at once. Fails if the FIFO
    /// holds more than it can or the interrupt cannot be raised.
    pub fn from_state(
        state: &SerialState,
        interrupt: T,
        input_drained: EventTrigger,
        out: Box<dyn Write + Send>,
    ) -> Result<Serial<T>>
    where
        T::E: fmt::Display,
    {
        let events = UartEvents {
            drained: input_drained,
            bytes_out: AtomicU64::new(state.counters.bytes_out),
            bytes_lost: AtomicU64::new(state.counters.bytes_lost),
        };
        let out = LimitedOutput {
            out,
            limit: None,
            dropped: state.counters.bytes_dropped,
        };
        let uart_state = state.uart.clone().into();
        let uart =
            vm_superio::Serial::from_state(&uart_state, interrupt, events, out).map_err(|e| {
                Error::RestoreMismatch {
                    device: "serial",
                    reason: e.to_string(),
                }
            })?;
        Ok(Serial {
            uart,
            bytes_in: state.counters.bytes_in,
        })
    }

    /// The device as plain data.
    pub fn state(&self) -> SerialState {
        SerialState {
            uart: UartState::from(self.uart.state()),
            counters: self.counters(),
        }
    }

    /// Limits the output's bandwidth to `limit` (bytes); an unlimited
    /// configuration (size or refill time 0) removes the limit.
    pub fn limit_output(&mut self, limit: BucketConfig) {
        self.uart.writer_mut().limit = TokenBucket::new(limit, Instant::now());
    }

    /// The counters.
    pub fn counters(&self) -> SerialCounters {
        let events = self.uart.events();
        SerialCounters {
            bytes_out: events.bytes_out.load(Ordering::Relaxed),
            bytes_lost: events.bytes_lost.load(Ordering::Relaxed),
            bytes_dropped: self.uart.writer().dropped,
            bytes_in: self.bytes_in,
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues `bytes` for the guest; returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => {
                self.bytes_in += n as u64;
                n
            }
            Err(e) => {
                log::debug!("serial: input not queued: {e:?}");
                0
            }
        }
    }

    /// Flushes the output writer.
    pub fn flush_output(&mut self) -> io::Result<()> {
        self.uart.writer_mut().flush()
    }
}

impl<T: Trigger + Send> ByteRegisters for Serial<T> {
    fn read_register(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    fn write_register(&mut self, offset: u8, value: u8) {
        if let Err(e) = self.uart.write(offset, value) {
            log::debug!("serial: write to register {offset} failed: {e:?}");
        }
    }
}

/// Reads the process's standard input without buffering (so epoll readiness
/// and what is read always agree) and without closing it on drop.
#[derive(Debug, Default)]
pub struct StdinReader;

impl Read for StdinReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: fd 0 stays open for the life of the process and `buf` is a
        // valid, writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

impl AsRawFd for StdinReader {
    fn as_raw_fd(&self) -> RawFd {
        libc::STDIN_FILENO
    }
}

/// Moves bytes from a host fd into the serial device's receive FIFO.
pub struct SerialInput<R, T: Trigger = EventTrigger> {
    serial: Arc<Mutex<Serial<T>>>,
    input: R,
    drained: EventTrigger,
    paused: bool,
    closed: bool,
}

impl<R, T: Trigger> fmt::Debug for SerialInput<R, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerialInput")
            .field("paused", &self.paused)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl<R: Read + AsRawFd, T: Trigger> SerialInput<R, T> {
    /// Feeds `input` into `serial`; `drained` must be the trigger given to
    /// [`Serial::new`] as `input_drained`.
    pub fn new(serial: Arc<Mutex<Serial<T>>>, input: R, drained: &EventTrigger) -> Result<Self> {
        Ok(SerialInput {
            serial,
            input,
            drained: drained.try_clone()?,
            paused: false,
            closed: false,
        })
    }

    fn stop_reading(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.remove(Events::new(&self.input, EventSet::IN)) {
            log::debug!("serial: cannot stop polling input: {e:?}");
        }
    }

    fn on_input(&mut self, ops: &mut EventOps) {
        let mut serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        let room = serial.input_capacity().min(INPUT_CHUNK);
        if room == 0 {
            drop(serial);
            self.paused = true;
            self.stop_reading(ops);
            return;
        }
        let mut buf = [0u8; INPUT_CHUNK];
        match self.input.read(&mut buf[..room]) {
            Ok(0) => {
                drop(serial);
                self.closed = true;
                self.stop_reading(ops);
            }
            Ok(n) => {
                serial.enqueue_input(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                drop(serial);
                log::warn!("serial: input closed after read error: {e}");
                self.closed = true;
                self.stop_reading(ops);
            }
        }
    }

    fn on_drained(&mut self, ops: &mut EventOps) {
        // Drain the counter; an empty eventfd (spurious wake-up) is harmless.
        let _ = self.drained.event_fd().read();
        if self.paused && !self.closed {
            self.paused = false;
            if let Err(e) = ops.add(Events::new(&self.input, EventSet::IN)) {
                log::warn!("serial: cannot resume polling input: {e:?}");
            }
        }
    }
}

impl<R: Read + AsRawFd, T: Trigger> MutEventSubscriber for SerialInput<R, T> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.drained, EventSet::IN)) {
            log::warn!("serial: cannot poll the drained event: {e:?}");
        }
        if let Err(e) = ops.add(Events::new(&self.input, EventSet::IN)) {
            log::info!("serial: guest input disabled, the input cannot be polled: {e:?}");
            self.closed = true;
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.drained.as_raw_fd() {
            self.on_drained(ops);
        } else if events.fd() == self.input.as_raw_fd() {
            self.on_input(ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use event_manager::{EventManager, SubscriberOps};
    use std::os::unix::net::UnixStream;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 1;

    /// An interrupt line that counts how often it was raised.
    #[derive(Clone, Default)]
    struct CountingLine(Arc<std::sync::atomic::AtomicU32>);

    impl Trigger for CountingLine {
        type E = io::Error;
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    #[test]
    fn the_interrupt_goes_through_any_trigger() {
        let line = CountingLine::default();
        let out = Box::new(Capture::default());
        let mut serial = Serial::new(line.clone(), EventTrigger::new().unwrap(), out);
        serial.write_register(1, 0x01); // IER: data ready
        assert_eq!(line.0.load(Ordering::Relaxed), 0);
        serial.enqueue_input(b"x");
        assert_eq!(line.0.load(Ordering::Relaxed), 1);
        let restored = Serial::from_state(
            &serial.state(),
            line.clone(),
            EventTrigger::new().unwrap(),
            Box::new(Capture::default()),
        )
        .unwrap();
        assert_eq!(
            line.0.load(Ordering::Relaxed),
            2,
            "data ready again on restore"
        );
        assert_eq!(restored.counters().bytes_in, 1);
    }

    fn serial() -> (Arc<Mutex<Serial>>, EventTrigger, EventTrigger, Capture) {
        let irq = EventTrigger::new().unwrap();
        let drained = EventTrigger::new().unwrap();
        let out = Capture::default();
        let serial = Serial::new(
            irq.try_clone().unwrap(),
            drained.try_clone().unwrap(),
            Box::new(out.clone()),
        );
        (Arc::new(Mutex::new(serial)), irq, drained, out)
    }

    fn guest_read_all(serial: &Arc<Mutex<Serial>>) -> Vec<u8> {
        let mut got = Vec::new();
        let mut s = serial.lock().unwrap();
        loop {
            let mut lsr = [0u8];
            s.read(LSR, &mut lsr);
            if lsr[0] & LSR_DATA_READY == 0 {
                return got;
            }
            let mut byte = [0u8];
            s.read(0, &mut byte);
            got.push(byte[0]);
        }
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let (serial, _irq, _drained, out) = serial();
        for b in b"hi\n" {
            serial.lock().unwrap().write(0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
        assert_eq!(serial.lock().unwrap().counters().bytes_out, 3);
    }

    const IER: u64 = 1;
    const LCR: u64 = 3;
    const SCRATCH: u64 = 7;
    const IER_RDA: u8 = 1;
    const LCR_DLAB: u8 = 0x80;

    #[test]
    fn state_round_trips_with_bytes_in_the_fifo() {
        let (serial, _irq, _drained, _out) = serial();
        {
            let mut s = serial.lock().unwrap();
            s.write(LCR, &[LCR_DLAB]);
            s.write(0, &[0x0c]);
            s.write(LCR, &[0x03]);
            s.write(IER, &[IER_RDA]);
            s.write(SCRATCH, &[0x5a]);
            s.write(0, b"x");
            assert_eq!(s.enqueue_input(b"abc"), 3);
        }
        let saved = serial.lock().unwrap().state();
        assert_eq!(saved.uart.in_buffer, b"abc");
        assert_eq!(saved.uart.interrupt_enable, IER_RDA);
        assert_eq!((saved.counters.bytes_in, saved.counters.bytes_out), (3, 1));
        let json = serde_json::to_string(&saved).unwrap();
        let parsed: SerialState = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, saved);

        let irq = EventTrigger::new().unwrap();
        let out = Capture::default();
        let restored = Serial::from_state(
            &parsed,
            irq.try_clone().unwrap(),
            EventTrigger::new().unwrap(),
            Box::new(out.clone()),
        )
        .unwrap();
        assert_eq!(restored.state(), saved);
        assert_eq!(
            irq.event_fd().read().unwrap(),
            1,
            "data waits and its interrupt is enabled"
        );
        let restored = Arc::new(Mutex::new(restored));
        let mut lsr = [0u8];
        restored.lock().unwrap().read(LSR, &mut lsr);
        assert_ne!(lsr[0] & LSR_DATA_READY, 0);
        assert_eq!(guest_read_all(&restored), b"abc");
        let mut s = restored.lock().unwrap();
        let mut scratch = [0u8];
        s.read(SCRATCH, &mut scratch);
        assert_eq!(scratch, [0x5a]);
        s.write(LCR, &[LCR_DLAB]);
        let mut divisor = [0u8];
        s.read(0, &mut divisor);
        assert_eq!(divisor, [0x0c]);
        s.write(LCR, &[0x03]);
        s.write(0, b"y");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"y");
        assert_eq!(s.counters().bytes_out, 2);
    }

    #[test]
    fn a_state_with_an_overfull_fifo_is_refused() {
        let state = SerialState {
            uart: UartState {
                in_buffer: vec![0; 65],
                ..UartState::default()
            },
            ..SerialState::default()
        };
        let err = Serial::from_state(
            &state,
            EventTrigger::new().unwrap(),
            EventTrigger::new().unwrap(),
            Box::new(io::sink()),
        )
        .unwrap_err();
        assert!(matches!(err, Error::RestoreMismatch { .. }), "{err}");
    }

    #[test]
    fn output_beyond_the_rate_limit_is_dropped_and_counted() {
        let (serial, _irq, _drained, out) = serial();
        // 4 bytes at once, then one byte per 10 s: the test never waits
        // long enough to earn another.
        serial.lock().unwrap().limit_output(BucketConfig {
            size: 1,
            one_time_burst: 3,
            refill_time_ms: 10_000,
        });
        for b in b"abcdefgh" {
            serial.lock().unwrap().write(0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"abcd");
        let counters = serial.lock().unwrap().counters();
        assert_eq!(
            (
                counters.bytes_out,
                counters.bytes_dropped,
                counters.bytes_lost
            ),
            (8, 4, 0),
            "dropped bytes count as written, as in Firecracker"
        );
        serial.lock().unwrap().limit_output(BucketConfig::default());
        serial.lock().unwrap().write(0, b"z");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"abcdz", "unlimited");
    }

    #[test]
    fn odd_sized_accesses_are_ignored() {
        let (serial, _irq, _drained, out) = serial();
        let mut s = serial.lock().unwrap();
        s.write(0, &[1, 2]);
        s.write(1 << 40, &[1]);
        let mut wide = [0u8; 4];
        s.read(0, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        assert!(out.0.lock().unwrap().is_empty());
    }

    #[test]
    fn input_is_flow_controlled_and_nothing_is_lost() {
        let (serial, _irq, drained, _out) = serial();
        let (host, guest_side) = UnixStream::pair().unwrap();
        let input = SerialInput::new(serial.clone(), guest_side, &drained).unwrap();
        let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
        let sub = Arc::new(Mutex::new(input));
        manager.add_subscriber(sub.clone());

        let message: Vec<u8> = (0..200u32).map(|i| b'a' + (i % 26) as u8).collect();
        (&host).write_all(&message).unwrap();
        let mut received = Vec::new();
        for _ in 0..100 {
            manager.run_with_timeout(50).unwrap();
            assert!(serial.lock().unwrap().input_capacity() <= 64);
            received.extend(guest_read_all(&serial));
            if received.len() == message.len() {
                break;
            }
        }
        assert_eq!(received, message);
        assert_eq!(serial.lock().unwrap().counters().bytes_in, 200);

        drop(host);
        for _ in 0..3 {
            manager.run_with_timeout(50).unwrap();
        }
        assert!(sub.lock().unwrap().closed, "EOF stops the input");
    }
}
