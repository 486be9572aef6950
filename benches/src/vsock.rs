//! The virtio-vsock device model against a plain Unix socket pair: MB/s of
//! one stream connection, each way.
//!
//! The device is wired as a VMM wires it (on an event loop, behind an
//! [`MmioTransport`], initialised with `VIRTIO_F_VERSION_1` and
//! `VIRTIO_RING_F_EVENT_IDX`), with its Unix socket in the scratch
//! directory. This benchmark plays the guest driver: it opens a connection
//! to host port [`PORT`] (the device connects to `<uds_path>_<PORT>`, where
//! the benchmark listens and accepts), then moves [`Options::bytes`] bytes
//! each way, following the virtio credit rules:
//!
//! - **guest to host**: RW packets of 64 KiB (the device's largest) while
//!   the device's credit allows, the host end read without blocking; the
//!   device's CREDIT_UPDATE packets (in 64 KiB + header receive buffers)
//!   return the credit;
//! - **host to guest**: the host end written without blocking (64 KiB at a
//!   time), RW packets taken from the receive queue and their buffers given
//!   back at once, a CREDIT_UPDATE sent whenever a quarter of the guest's
//!   256 KiB receive buffer has been consumed.
//!
//! Everything runs on one thread (event loop with zero timeouts, driver,
//! host peer), so the figure is the CPU cost of the whole path, the
//! driver's bookkeeping included. Baseline: the same bytes through a Unix
//! stream socket pair on the same thread, 64 KiB writes each read back at
//! once. The two sides take turns (each first every other round); the
//! median round is reported.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ember_devices::virtio::test_utils::{memory, GuestQueue, Mem, WRITE};
use ember_devices::virtio::vsock::{
    Op, PacketHeader, Vsock, VsockConfig, VsockCounters, HOST_CID, MAX_PKT_LEN, PACKET_HEADER_LEN,
    TYPE_STREAM,
};
use ember_devices::virtio::{feature_bit, MmioTransport};
use event_manager::SubscriberOps;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::driver::{driver_init, guest_error, manager, run_once, Manager};
use crate::report::Figure;
use crate::stats::{in_turn, median, per_second, Better};
use crate::{Context, Error, Result};

/// The group name in reports.
pub const GROUP: &str = "vsock";
/// The host port the guest connects to.
pub const PORT: u32 = 5000;
const GUEST_CID: u64 = 3;
const GUEST_PORT: u32 = 1234;
/// Data per packet, and per write of the baseline.
const CHUNK: usize = MAX_PKT_LEN as usize;
const HDR: usize = PACKET_HEADER_LEN;
/// The guest's receive buffer, as it advertises it.
const GUEST_BUF: u32 = 256 << 10;
/// Receive buffers: a header and a whole packet each.
const RX_SLOTS: u16 = 64;
const RX_BUF_LEN: u32 = MAX_PKT_LEN + HDR_U32;
/// The header's length, as descriptors take it.
const HDR_U32: u32 = 44;
const _: () = assert!(HDR_U32 as usize == HDR);
/// Transmit packets in flight (two descriptors each).
const TX_SLOTS: u16 = 64;
const TX_QUEUE_SIZE: u16 = 256;
const SLOT: u64 = 0x1_1000;
const RXQ: u64 = 0x1000;
const TXQ: u64 = 0x4000;
const EVQ: u64 = 0x8000;
const RX_AREA: u64 = 0x10_0000;
const TX_AREA: u64 = RX_AREA + RX_SLOTS as u64 * SLOT;
const MEM_SIZE: u64 = TX_AREA + TX_SLOTS as u64 * SLOT;
/// Offset of a TX packet's data in its slot.
const TX_DATA: u64 = 0x100;
// Each queue fits before the next, each buffer in its slot, each TX packet's
// two descriptors in the queue.
const _: () = assert!(RXQ + 24 * RX_SLOTS as u64 + 12 <= TXQ);
const _: () = assert!(TXQ + 24 * TX_QUEUE_SIZE as u64 + 12 <= EVQ);
const _: () = assert!(RX_BUF_LEN as u64 <= SLOT && TX_DATA + CHUNK as u64 <= SLOT);
const _: () = assert!(2 * TX_SLOTS <= TX_QUEUE_SIZE);

/// How long one transfer may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Rounds per side; the median round is reported.
    pub rounds: usize,
    /// Bytes per transfer.
    pub bytes: usize,
}

impl Options {
    /// The full run, or a quick one.
    pub fn new(quick: bool) -> Options {
        if quick {
            Options {
                rounds: 2,
                bytes: 32 << 20,
            }
        } else {
            Options {
                rounds: 9,
                bytes: 256 << 20,
            }
        }
    }
}

/// Runs the group with the device's socket in `scratch`.
pub fn run(scratch: &Path, options: Options) -> Result<Vec<Figure>> {
    let uds = scratch.join(format!("vsock-{}.sock", std::process::id()));
    let listen_path = PathBuf::from(format!("{}_{PORT}", uds.display()));
    for path in [&uds, &listen_path] {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(e).ctx(format!("removing {}", path.display()))
            }
            _ => {}
        }
    }
    let listener =
        UnixListener::bind(&listen_path).ctx(format!("binding {}", listen_path.display()))?;
    let result = measure(&uds, &listener, options);
    let _ = std::fs::remove_file(&listen_path);
    result
}

fn measure(uds: &Path, listener: &UnixListener, options: Options) -> Result<Vec<Figure>> {
    let mut guest = Guest::new(uds)?;
    let mut host = guest.connect(listener)?;
    host.set_nonblocking(true)
        .ctx("making the host end non-blocking")?;
    let (a, b) = UnixStream::pair().ctx("creating a socket pair")?;
    let bytes = options.bytes;
    let mut tx = (Vec::new(), Vec::new());
    let mut rx = (Vec::new(), Vec::new());
    let mut device = (&mut guest, &mut host);
    for round in 0..options.rounds {
        let (pair, through) = in_turn(
            round,
            &mut device,
            |_| socket_pair(&a, &b, bytes),
            |(guest, host)| guest.send_to_host(host, bytes),
        )?;
        tx.1.push(per_second(bytes as f64, pair));
        tx.0.push(per_second(bytes as f64, through));
        let (pair, through) = in_turn(
            round,
            &mut device,
            |_| socket_pair(&b, &a, bytes),
            |(guest, host)| guest.receive_from_host(host, bytes),
        )?;
        rx.1.push(per_second(bytes as f64, pair));
        rx.0.push(per_second(bytes as f64, through));
    }
    let counters = guest.counters();
    let broken = counters.malformed_packets
        + counters.protocol_errors
        + counters.credit_violations
        + counters.host_errors
        + counters.rsts_sent
        + counters.rsts_received;
    if broken != 0 {
        return Err(Error::Unexpected(format!(
            "the vsock device reports errors: {counters:?}"
        )));
    }
    let mb = |rates: &[f64]| median(rates).unwrap_or(0.0) / 1e6;
    let note = format!(
        "one connection, 64 KiB packets, {} MiB per round",
        bytes >> 20
    );
    Ok(vec![
        Figure::new(GROUP, "guest to host", mb(&tx.0), "MB/s", Better::Higher)
            .baseline("unix socket pair", mb(&tx.1))
            .note(&note),
        Figure::new(GROUP, "host to guest", mb(&rx.0), "MB/s", Better::Higher)
            .baseline("unix socket pair", mb(&rx.1))
            .note(&note),
    ])
}

/// The baseline: `bytes` written to `from` 64 KiB at a time, each chunk
/// read back from `to` at once.
fn socket_pair(mut from: &UnixStream, mut to: &UnixStream, bytes: usize) -> Result<Duration> {
    let chunk = vec![0x5au8; CHUNK];
    let mut sink = vec![0u8; 4 * CHUNK];
    let start = Instant::now();
    let mut moved = 0;
    while moved < bytes {
        let n = CHUNK.min(bytes - moved);
        from.write_all(&chunk[..n]).ctx("writing the socket pair")?;
        let mut got = 0;
        while got < n {
            got += to.read(&mut sink).ctx("reading the socket pair")?;
        }
        moved += n;
    }
    Ok(start.elapsed())
}

/// The guest driver's side of a vsock device, and its one connection.
struct Guest {
    mem: Mem,
    manager: Manager,
    vsock: Arc<Mutex<Vsock<Mem>>>,
    rxq: GuestQueue,
    txq: GuestQueue,
    /// Kept for its layout: the device never uses the event queue.
    _evq: GuestQueue,
    rx_kick: EventFd,
    tx_kick: EventFd,
    _transport: MmioTransport<Mem>,
    /// RX used entries handled so far.
    rx_seen: u16,
    /// TX packets made available so far.
    tx_posted: u16,
    /// The device's receive buffer and what it has consumed of it.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Data bytes sent, and received-and-consumed.
    tx_cnt: u32,
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the device.
    fwd_cnt_told: u32,
    connected: bool,
}

/// What the receive queue brought.
#[derive(Debug, Default)]
struct Received {
    /// Data bytes.
    data: usize,
    /// A CREDIT_UPDATE came.
    credit: bool,
    /// The device asked for the guest's credit.
    credit_requested: bool,
}

impl Guest {
    fn new(uds: &Path) -> Result<Guest> {
        let config = VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: uds.to_path_buf(),
        };
        let vsock = Arc::new(Mutex::new(
            Vsock::new(config).ctx("creating the vsock device")?,
        ));
        let mut manager = manager()?;
        manager.add_subscriber(vsock.clone());
        let mem = memory(&[(0, usize::try_from(MEM_SIZE).unwrap_or(usize::MAX))]);
        let mut transport =
            MmioTransport::new(mem.clone(), vsock.clone()).ctx("creating the MMIO transport")?;
        let rxq = GuestQueue::new(&mem, RXQ, RX_SLOTS);
        let txq = GuestQueue::new(&mem, TXQ, TX_QUEUE_SIZE);
        let evq = GuestQueue::new(&mem, EVQ, 4);
        let features = feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_RING_F_EVENT_IDX);
        let mut kicks = driver_init(&mut transport, features, &[&rxq, &txq, &evq])?.into_iter();
        let mut kick = || {
            kicks
                .next()
                .ok_or_else(|| Error::Unexpected("no queue eventfd".to_owned()))
        };
        let (rx_kick, tx_kick) = (kick()?, kick()?);
        let pattern: Vec<u8> = (0..=250u8).cycle().take(CHUNK).collect();
        for slot in 0..u64::from(TX_SLOTS) {
            mem.write_slice(&pattern, GuestAddress(TX_AREA + slot * SLOT + TX_DATA))
                .map_err(guest_error)?;
        }
        let mut guest = Guest {
            mem,
            manager,
            vsock,
            rxq,
            txq,
            _evq: evq,
            rx_kick,
            tx_kick,
            _transport: transport,
            rx_seen: 0,
            tx_posted: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            connected: false,
        };
        for slot in 0..RX_SLOTS {
            guest.post_rx(slot);
        }
        guest.rx_kick.write(1).ctx("kicking the receive queue")?;
        run_once(&mut guest.manager, 100)?;
        Ok(guest)
    }

    fn counters(&self) -> VsockCounters {
        self.vsock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counters()
    }

    fn post_rx(&mut self, slot: u16) {
        self.rxq.add_chain(
            slot,
            &[(RX_AREA + u64::from(slot) * SLOT, RX_BUF_LEN, WRITE)],
        );
    }

    /// A header from the guest's port to [`PORT`] on the host.
    fn header(&self, op: Op, len: usize) -> PacketHeader {
        PacketHeader {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: GUEST_PORT,
            dst_port: PORT,
            len: u32::try_from(len).unwrap_or(0),
            type_: TYPE_STREAM,
            op: op as u16,
            flags: 0,
            buf_alloc: GUEST_BUF,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// TX packets not yet used by the device.
    fn tx_in_flight(&self) -> u16 {
        self.tx_posted.wrapping_sub(self.txq.used_idx())
    }

    /// Makes a packet available (not kicked): the header, and `len` bytes
    /// of the slot's data.
    fn send(&mut self, op: Op, len: usize) -> Result<()> {
        if self.tx_in_flight() >= TX_SLOTS {
            return Err(Error::Unexpected("no free transmit slot".to_owned()));
        }
        let slot = self.tx_posted % TX_SLOTS;
        let at = TX_AREA + u64::from(slot) * SLOT;
        let header = self.header(op, len);
        self.mem
            .write_slice(&header.to_bytes(), GuestAddress(at))
            .map_err(guest_error)?;
        let hdr_desc = (at, HDR_U32, 0);
        if len == 0 {
            self.txq.add_chain(2 * slot, &[hdr_desc]);
        } else {
            let data = (at + TX_DATA, u32::try_from(len).unwrap_or(0), 0);
            self.txq.add_chain(2 * slot, &[hdr_desc, data]);
        }
        self.tx_posted = self.tx_posted.wrapping_add(1);
        self.fwd_cnt_told = self.fwd_cnt;
        if op == Op::Rw {
            self.tx_cnt = self.tx_cnt.wrapping_add(u32::try_from(len).unwrap_or(0));
        }
        Ok(())
    }

    /// Handles what the device put in the receive queue and gives the
    /// buffers back (kicking the queue if any).
    fn receive(&mut self) -> Result<Received> {
        let mut got = Received::default();
        let first = self.rx_seen;
        while self.rx_seen != self.rxq.used_idx() {
            let (id, len) = self.rxq.used_elem(self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let slot = u16::try_from(id).unwrap_or(0);
            let mut raw = [0u8; HDR];
            let at = GuestAddress(RX_AREA + u64::from(slot) * SLOT);
            self.mem.read_slice(&mut raw, at).map_err(guest_error)?;
            let header = PacketHeader::from_bytes(&raw);
            if (len as usize) < HDR || header.len as usize != len as usize - HDR {
                return Err(Error::Unexpected(format!(
                    "bad receive entry of {len} bytes: {header:?}"
                )));
            }
            self.peer_buf_alloc = header.buf_alloc;
            self.peer_fwd_cnt = header.fwd_cnt;
            match header.op() {
                Some(Op::Response) => self.connected = true,
                Some(Op::Rw) => {
                    got.data += header.len as usize;
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(header.len);
                }
                Some(Op::CreditUpdate) => got.credit = true,
                Some(Op::CreditRequest) => got.credit_requested = true,
                other => {
                    return Err(Error::Unexpected(format!(
                        "unexpected {other:?} packet: {header:?}"
                    )))
                }
            }
            self.post_rx(slot);
        }
        if self.rx_seen != first {
            self.rx_kick.write(1).ctx("kicking the receive queue")?;
        }
        Ok(got)
    }

    /// Data bytes the device's credit lets the guest send now.
    fn credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Opens the connection; returns the host end.
    fn connect(&mut self, listener: &UnixListener) -> Result<UnixStream> {
        self.send(Op::Request, 0)?;
        self.tx_kick.write(1).ctx("kicking the transmit queue")?;
        let start = Instant::now();
        while !self.connected {
            run_once(&mut self.manager, 10)?;
            self.receive()?;
            if start.elapsed() > DEADLINE {
                return Err(Error::Timeout(format!(
                    "vsock connection: {:?}",
                    self.counters()
                )));
            }
        }
        let (stream, _) = listener.accept().ctx("accepting the device's connection")?;
        Ok(stream)
    }

    /// Sends `bytes` to the host end; returns the time taken.
    fn send_to_host(&mut self, host: &mut UnixStream, bytes: usize) -> Result<Duration> {
        let mut sink = vec![0u8; 4 * CHUNK];
        let (mut sent, mut received) = (0usize, 0usize);
        let mut asked = false;
        let start = Instant::now();
        while received < bytes {
            let mut queued = false;
            while sent < bytes && self.tx_in_flight() < TX_SLOTS {
                let n = CHUNK.min(bytes - sent).min(self.credit() as usize);
                if n == 0 {
                    break;
                }
                self.send(Op::Rw, n)?;
                sent += n;
                queued = true;
            }
            if sent < bytes && self.credit() == 0 && !asked && self.tx_in_flight() < TX_SLOTS {
                // Out of credit with no update on its way: ask once.
                self.send(Op::CreditRequest, 0)?;
                asked = true;
                queued = true;
            }
            if queued {
                self.tx_kick.write(1).ctx("kicking the transmit queue")?;
            }
            run_once(&mut self.manager, 0)?;
            received += drain(host, &mut sink)?;
            run_once(&mut self.manager, 0)?;
            let got = self.receive()?;
            if got.credit {
                asked = false;
            }
            if got.credit_requested {
                self.send(Op::CreditUpdate, 0)?;
                self.tx_kick.write(1).ctx("kicking the transmit queue")?;
            }
            if start.elapsed() > DEADLINE {
                return Err(Error::Timeout(format!(
                    "guest to host: {received} of {bytes} bytes: {:?}",
                    self.counters()
                )));
            }
        }
        Ok(start.elapsed())
    }

    /// Receives `bytes` written to the host end; returns the time taken.
    fn receive_from_host(&mut self, host: &mut UnixStream, bytes: usize) -> Result<Duration> {
        let chunk = vec![0xa5u8; CHUNK];
        let (mut written, mut received) = (0usize, 0usize);
        let start = Instant::now();
        while received < bytes {
            while written < bytes {
                match host.write(&chunk[..CHUNK.min(bytes - written)]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e).ctx("writing the host end"),
                }
            }
            run_once(&mut self.manager, 0)?;
            let got = self.receive()?;
            received += got.data;
            if got.credit_requested || self.fwd_cnt.wrapping_sub(self.fwd_cnt_told) >= GUEST_BUF / 4
            {
                self.send(Op::CreditUpdate, 0)?;
                self.tx_kick.write(1).ctx("kicking the transmit queue")?;
            }
            if start.elapsed() > DEADLINE {
                return Err(Error::Timeout(format!(
                    "host to guest: {received} of {bytes} bytes: {:?}",
                    self.counters()
                )));
            }
        }
        Ok(start.elapsed())
    }
}

/// Reads everything `stream` has now; returns the byte count.
fn drain(stream: &mut UnixStream, sink: &mut [u8]) -> Result<usize> {
    let mut total = 0;
    loop {
        match stream.read(sink) {
            Ok(0) => {
                return Err(Error::Unexpected(
                    "the device closed the connection".to_owned(),
                ))
            }
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(total),
            Err(e) => return Err(e).ctx("reading the host end"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_flow_both_ways() {
        let dir = std::env::temp_dir().join(format!("ember-benches-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let figures = run(
            &dir,
            Options {
                rounds: 1,
                bytes: 3 << 20,
            },
        )
        .unwrap();
        assert_eq!(figures.len(), 2);
        assert!(
            figures
                .iter()
                .all(|f| f.value > 0.0 && f.baseline.unwrap() > 0.0),
            "{figures:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
