//! The virtio-vsock packet: the 44-byte little-endian header, and the
//! descriptor chains that carry packets, trusting nothing in them.
//!
//! A TX chain (guest to device) is a device-readable byte stream: the header,
//! then `len` bytes of data, whatever the descriptor boundaries. An RX chain
//! (device to guest) is a device-writable byte stream the device fills the
//! same way. Every buffer is checked against guest memory before it is
//! used, and goes into an iovec list as host slices: data moves between
//! them and the host socket without a copy through a host buffer.

use std::io;
use std::os::unix::net::UnixStream;

use virtio_queue::desc::split::Descriptor;
use vm_memory::GuestMemory;

use super::MAX_PKT_LEN;
use crate::virtio::iov::{GuestIoVecs, GuestRegions};

/// Size of the packet header.
pub const HDR_LEN: usize = 44;
/// `type` of a stream-socket packet, the only type this device supports.
pub const TYPE_STREAM: u16 = 1;
/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags.
pub(crate) const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// A packet's operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    /// Connection request.
    Request = 1,
    /// Connection accepted.
    Response = 2,
    /// Connection reset (refused, aborted or finally closed).
    Rst = 3,
    /// The sender stops receiving and/or sending (flags).
    Shutdown = 4,
    /// Data.
    Rw = 5,
    /// The sender's receive-buffer state, unsolicited or on request.
    CreditUpdate = 6,
    /// Asks the receiver for a CREDIT_UPDATE.
    CreditRequest = 7,
}

impl Op {
    /// The operation with the raw value `raw`, if it is one.
    pub fn from_raw(raw: u16) -> Option<Op> {
        Some(match raw {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// `struct virtio_vsock_hdr`, decoded (fields in wire order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context ID.
    pub src_cid: u64,
    /// Destination context ID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Data bytes after the header.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation (an [`Op`] value).
    pub op: u16,
    /// SHUTDOWN flags ([`SHUTDOWN_RCV`], [`SHUTDOWN_SEND`]).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Data bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

fn le_u16(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8; HDR_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8; HDR_LEN], at: usize) -> u64 {
    u64::from(le_u32(b, at)) | (u64::from(le_u32(b, at + 4)) << 32)
}

impl Header {
    /// Decodes the wire format.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        Header {
            src_cid: le_u64(b, 0),
            dst_cid: le_u64(b, 8),
            src_port: le_u32(b, 16),
            dst_port: le_u32(b, 20),
            len: le_u32(b, 24),
            type_: le_u16(b, 28),
            op: le_u16(b, 30),
            flags: le_u32(b, 32),
            buf_alloc: le_u32(b, 36),
            fwd_cnt: le_u32(b, 40),
        }
    }

    /// Encodes the wire format.
    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The operation, if the raw value is a known one.
    pub fn op(&self) -> Option<Op> {
        Op::from_raw(self.op)
    }
}

/// Why a chain cannot carry a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChainError {
    /// The chain does not end (loop, longer than the queue, unreadable
    /// descriptor).
    Unterminated,
    /// A buffer is not (entirely) in guest memory.
    OutOfMemory,
    /// A device-writable buffer in a TX chain, or a device-readable one in an
    /// RX chain.
    WrongDirection,
    /// Fewer bytes than a header.
    ShortHeader,
    /// `len` is larger than the device accepts.
    TooLong,
    /// `len` is larger than the data the chain carries.
    Truncated,
}

/// Puts a chain's buffers into `out` (empty at first) and returns their
/// total length; all must go the expected direction and lie in guest memory.
fn collect<'m, M: GuestMemory>(
    mem: &GuestRegions<'m, M>,
    chain: impl Iterator<Item = Descriptor>,
    writable: bool,
    out: &mut GuestIoVecs<'_, 'm>,
) -> Result<u64, ChainError> {
    let mut total = 0u64;
    let mut error = None;
    let mut terminated = false;
    for desc in chain {
        terminated = !desc.has_next();
        if desc.len() == 0 {
            continue;
        }
        if desc.is_write_only() != writable {
            error = error.or(Some(ChainError::WrongDirection));
            continue;
        }
        if out
            .push_guest(mem, desc.addr(), desc.len() as usize, writable)
            .is_none()
        {
            error = error.or(Some(ChainError::OutOfMemory));
            continue;
        }
        total += u64::from(desc.len());
    }
    // virtio-queue ends the iteration early, without an error, on loops,
    // over-long chains and unreadable descriptors: the last descriptor then
    // still says another one follows.
    if !terminated {
        return Err(ChainError::Unterminated);
    }
    match error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Why a TX chain was refused, with its header when one could be read (so
/// the device can reset the connection it belongs to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TxError {
    pub(crate) error: ChainError,
    pub(crate) header: Option<Header>,
}

/// Parses a TX chain: returns its header, and leaves its `len` data bytes
/// (still in guest memory) as the buffers of `data`, empty at first.
pub(crate) fn parse_tx<'m, M: GuestMemory>(
    mem: &GuestRegions<'m, M>,
    chain: impl Iterator<Item = Descriptor>,
    data: &mut GuestIoVecs<'_, 'm>,
) -> Result<Header, TxError> {
    let fail = |error, header| TxError { error, header };
    let total = collect(mem, chain, false, data).map_err(|e| fail(e, None))?;
    let mut raw = [0u8; HDR_LEN];
    if total < HDR_LEN as u64 || data.copy_to(0, &mut raw) != HDR_LEN {
        return Err(fail(ChainError::ShortHeader, None));
    }
    let header = Header::from_bytes(&raw);
    if header.len > MAX_PKT_LEN {
        return Err(fail(ChainError::TooLong, Some(header)));
    }
    if u64::from(header.len) > total - HDR_LEN as u64 {
        return Err(fail(ChainError::Truncated, Some(header)));
    }
    data.advance(HDR_LEN);
    data.truncate(header.len as usize);
    Ok(header)
}

/// A guest RX buffer: device-writable, at least a header long, as the
/// host slices of its buffers.
#[derive(Debug)]
pub(crate) struct RxBuffer<'b, 'm> {
    iovs: GuestIoVecs<'b, 'm>,
    total: u64,
}

impl<'b, 'm> RxBuffer<'b, 'm> {
    /// Checks an RX chain; its buffers go to `iovs` (empty at first).
    pub(crate) fn parse<M: GuestMemory>(
        mem: &GuestRegions<'m, M>,
        chain: impl Iterator<Item = Descriptor>,
        mut iovs: GuestIoVecs<'b, 'm>,
    ) -> Result<RxBuffer<'b, 'm>, ChainError> {
        let total = collect(mem, chain, true, &mut iovs)?;
        if total < HDR_LEN as u64 {
            return Err(ChainError::ShortHeader);
        }
        Ok(RxBuffer { iovs, total })
    }

    /// How many data bytes fit after the header (at most [`MAX_PKT_LEN`]).
    pub(crate) fn data_capacity(&self) -> usize {
        let room = (self.total - HDR_LEN as u64).min(u64::from(MAX_PKT_LEN));
        usize::try_from(room).unwrap_or(0)
    }

    /// Reads at most `max` bytes (and at most the data capacity) from
    /// `stream` into the data area, after the header, in one `readv`
    /// (retried if interrupted).
    pub(crate) fn recv(&mut self, stream: &UnixStream, max: usize) -> io::Result<usize> {
        let max = max.min(self.data_capacity());
        loop {
            match self.iovs.readv_at(stream, HDR_LEN, max) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    /// Writes `header` in front of its `len` data bytes (already in the
    /// buffer). Returns the number of bytes of the packet, or `None` if they
    /// do not fit.
    pub(crate) fn write_header(&self, header: &Header) -> Option<u32> {
        let len = header.len as usize;
        if len > self.data_capacity() || self.iovs.copy_from(0, &header.to_bytes()) != HDR_LEN {
            return None;
        }
        u32::try_from(HDR_LEN + len).ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use virtio_queue::QueueOwnedT;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::iov::IoVecBuf;
    use crate::virtio::test_utils::{memory, GuestQueue, Mem, WRITE};

    fn sample() -> Header {
        Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 1234,
            len: 5,
            type_: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: 3,
            buf_alloc: 0x4_0000,
            fwd_cnt: 0xdead_beef,
        }
    }

    #[test]
    fn header_layout_matches_the_spec() {
        let h = sample();
        let b = h.to_bytes();
        assert_eq!(b[0..8], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(b[8..16], 2u64.to_le_bytes());
        assert_eq!(b[16..20], 0x1122_3344u32.to_le_bytes());
        assert_eq!(b[20..24], 1234u32.to_le_bytes());
        assert_eq!(b[24..28], 5u32.to_le_bytes());
        assert_eq!(b[28..30], 1u16.to_le_bytes());
        assert_eq!(b[30..32], 5u16.to_le_bytes());
        assert_eq!(b[32..36], 3u32.to_le_bytes());
        assert_eq!(b[36..40], 0x4_0000u32.to_le_bytes());
        assert_eq!(b[40..44], 0xdead_beefu32.to_le_bytes());
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn ops() {
        for raw in 1..=7u16 {
            assert_eq!(Op::from_raw(raw).unwrap() as u16, raw);
        }
        assert_eq!(Op::from_raw(0), None);
        assert_eq!(Op::from_raw(8), None);
        assert_eq!(Op::from_raw(u16::MAX), None);
    }

    /// Parses `descs` as a TX chain: the result and the data bytes.
    fn parse_descs(mem: &Mem, descs: &[(u64, u32, u16)]) -> (Result<Header, TxError>, Vec<u8>) {
        let mut gq = GuestQueue::new(mem, 0, 16);
        gq.add_chain(0, descs);
        let mut q = gq.device_queue(16);
        let chain = q.iter(mem).unwrap().next().unwrap();
        let mut buf = IoVecBuf::default();
        let mut iovs = buf.start();
        let res = parse_tx(&GuestRegions::new(mem), chain, &mut iovs);
        let mut data = vec![0u8; iovs.len()];
        iovs.copy_to(0, &mut data);
        (res, data)
    }

    #[test]
    fn tx_header_and_data_in_any_layout() {
        let mem = memory(&[(0, 0x10000)]);
        let mut bytes = sample().to_bytes().to_vec();
        bytes.extend_from_slice(b"hello");
        mem.write_slice(&bytes, GuestAddress(0x1000)).unwrap();
        // One buffer, header split in two, header and data apart.
        for descs in [
            vec![(0x1000, 49, 0)],
            vec![(0x1000, 20, 0), (0x1014, 29, 0)],
            vec![(0x1000, 44, 0), (0x102c, 5, 0)],
            vec![(0x1000, 40, 0), (0x1028, 100, 0)],
        ] {
            let (res, data) = parse_descs(&mem, &descs);
            assert_eq!(res.unwrap(), sample(), "{descs:?}");
            assert_eq!(data, b"hello");
        }
    }

    #[test]
    fn tx_refusals() {
        let mem = memory(&[(0, 0x10000)]);
        let mut h = sample();
        mem.write_slice(&h.to_bytes(), GuestAddress(0x1000))
            .unwrap();
        let (res, _) = parse_descs(&mem, &[(0x1000, 43, 0)]);
        assert_eq!(res.unwrap_err().error, ChainError::ShortHeader);
        let (res, _) = parse_descs(&mem, &[(0x1000, 48, 0)]);
        assert_eq!(
            res.unwrap_err(),
            TxError {
                error: ChainError::Truncated,
                header: Some(h)
            }
        );
        let (res, _) = parse_descs(&mem, &[(0x1000, 49, 0), (0x2000, 8, WRITE)]);
        assert_eq!(res.unwrap_err().error, ChainError::WrongDirection);
        let (res, _) = parse_descs(&mem, &[(0x1000, 49, 0), (0x20_0000, 8, 0)]);
        assert_eq!(res.unwrap_err().error, ChainError::OutOfMemory);
        h.len = MAX_PKT_LEN + 1;
        mem.write_slice(&h.to_bytes(), GuestAddress(0x1000))
            .unwrap();
        let (res, _) = parse_descs(&mem, &[(0x1000, 0x8000, 0), (0x9000, 0x7000, 0)]);
        assert_eq!(res.unwrap_err().error, ChainError::TooLong);
        h.len = u32::MAX;
        mem.write_slice(&h.to_bytes(), GuestAddress(0x1000))
            .unwrap();
        let (res, _) = parse_descs(&mem, &[(0x1000, 49, 0)]);
        assert_eq!(res.unwrap_err().error, ChainError::TooLong);
    }

    #[test]
    fn rx_buffers() {
        let mem = memory(&[(0, 0x20000)]);
        let mut iov_buf = IoVecBuf::default();
        let mut parse =
            |descs: &[(u64, u32, u16)],
             with: &mut dyn FnMut(Result<RxBuffer<'_, '_>, ChainError>)| {
                let mut gq = GuestQueue::new(&mem, 0, 16);
                gq.add_chain(0, descs);
                let mut q = gq.device_queue(16);
                let chain = q.iter(&mem).unwrap().next().unwrap();
                with(RxBuffer::parse(
                    &GuestRegions::new(&mem),
                    chain,
                    iov_buf.start(),
                ));
            };
        parse(&[(0x1000, 64, 0)], &mut |r| {
            assert_eq!(r.unwrap_err(), ChainError::WrongDirection)
        });
        parse(&[(0x1000, 43, WRITE)], &mut |r| {
            assert_eq!(r.unwrap_err(), ChainError::ShortHeader)
        });
        parse(&[(0x1000, 10, WRITE), (0x2000, 40, WRITE)], &mut |r| {
            let mut buf = r.unwrap();
            assert_eq!(buf.data_capacity(), 6);
            let (a, mut b) = UnixStream::pair().unwrap();
            b.write_all(b"hello, world").unwrap();
            assert_eq!(buf.recv(&a, 5).unwrap(), 5);
            let mut h = sample();
            h.len = 7;
            assert_eq!(buf.write_header(&h), None, "does not fit");
            assert_eq!(buf.write_header(&sample()), Some(49));
            assert_eq!(buf.recv(&a, 100).unwrap(), 6, "at most the capacity");
        });
        let mut raw = [0u8; HDR_LEN];
        mem.read_slice(&mut raw[..10], GuestAddress(0x1000))
            .unwrap();
        mem.read_slice(&mut raw[10..], GuestAddress(0x2000))
            .unwrap();
        assert_eq!(Header::from_bytes(&raw), sample());
        let mut data = [0u8; 6];
        mem.read_slice(&mut data, GuestAddress(0x2000 + 34))
            .unwrap();
        assert_eq!(&data, b", worl", "the second read overwrote the first");
        parse(&[(0x1000, 0x11000, WRITE)], &mut |r| {
            assert_eq!(r.unwrap().data_capacity(), MAX_PKT_LEN as usize)
        });
    }
}
