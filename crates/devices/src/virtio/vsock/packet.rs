//! The virtio-vsock packet: the 44-byte little-endian header, and the
//! descriptor chains that carry packets, trusting nothing in them.
//!
//! A TX chain (guest to device) is a device-readable byte stream: the header,
//! then `len` bytes of data, whatever the descriptor boundaries. An RX chain
//! (device to guest) is a device-writable byte stream the device fills the
//! same way. Every buffer is checked against guest memory before it is used.

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use super::MAX_PKT_LEN;

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

/// One guest buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) addr: GuestAddress,
    pub(crate) len: u32,
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

/// A chain's buffers, all in the expected direction and in guest memory.
fn collect<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
    writable: bool,
) -> Result<(Vec<Segment>, u64), ChainError> {
    let mut segs = Vec::new();
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
        let access = if writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(desc.addr(), desc.len() as usize, access) {
            error = error.or(Some(ChainError::OutOfMemory));
            continue;
        }
        total += u64::from(desc.len());
        segs.push(Segment {
            addr: desc.addr(),
            len: desc.len(),
        });
    }
    // virtio-queue ends the iteration early, without an error, on loops,
    // over-long chains and unreadable descriptors: the last descriptor then
    // still says another one follows.
    if !terminated {
        return Err(ChainError::Unterminated);
    }
    match error {
        Some(e) => Err(e),
        None => Ok((segs, total)),
    }
}

/// Calls `f(address, range of buf)` for each piece of the byte stream `segs`
/// that `buf.len()` bytes from stream offset `offset` cover. The caller has
/// checked that the stream is long enough.
fn for_each_piece(
    segs: &[Segment],
    mut offset: u64,
    len: usize,
    mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
) -> bool {
    let mut done = 0usize;
    for seg in segs {
        if done == len {
            break;
        }
        let seg_len = u64::from(seg.len);
        if offset >= seg_len {
            offset -= seg_len;
            continue;
        }
        let avail = usize::try_from(seg_len - offset).unwrap_or(usize::MAX);
        let n = avail.min(len - done);
        let Some(addr) = seg.addr.checked_add(offset) else {
            return false;
        };
        if !f(addr, done..done + n) {
            return false;
        }
        done += n;
        offset = 0;
    }
    done == len
}

/// Reads `buf.len()` bytes at stream offset `offset` of `segs`.
fn read_stream<M: GuestMemory>(mem: &M, segs: &[Segment], offset: u64, buf: &mut [u8]) -> bool {
    let len = buf.len();
    for_each_piece(segs, offset, len, |addr, range| {
        mem.read_slice(&mut buf[range], addr).is_ok()
    })
}

/// Writes `buf` at stream offset `offset` of `segs`.
fn write_stream<M: GuestMemory>(mem: &M, segs: &[Segment], offset: u64, buf: &[u8]) -> bool {
    for_each_piece(segs, offset, buf.len(), |addr, range| {
        mem.write_slice(&buf[range], addr).is_ok()
    })
}

/// Why a TX chain was refused, with its header when one could be read (so
/// the device can reset the connection it belongs to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TxError {
    pub(crate) error: ChainError,
    pub(crate) header: Option<Header>,
}

/// Parses a TX chain: returns its header and puts its `len` data bytes in
/// `data` (cleared first).
pub(crate) fn parse_tx<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
    data: &mut Vec<u8>,
) -> Result<Header, TxError> {
    data.clear();
    let fail = |error, header| TxError { error, header };
    let (segs, total) = collect(mem, chain, false).map_err(|e| fail(e, None))?;
    let mut raw = [0u8; HDR_LEN];
    if total < HDR_LEN as u64 || !read_stream(mem, &segs, 0, &mut raw) {
        return Err(fail(ChainError::ShortHeader, None));
    }
    let header = Header::from_bytes(&raw);
    if header.len > MAX_PKT_LEN {
        return Err(fail(ChainError::TooLong, Some(header)));
    }
    if u64::from(header.len) > total - HDR_LEN as u64 {
        return Err(fail(ChainError::Truncated, Some(header)));
    }
    data.resize(header.len as usize, 0);
    if !read_stream(mem, &segs, HDR_LEN as u64, data) {
        return Err(fail(ChainError::OutOfMemory, Some(header)));
    }
    Ok(header)
}

/// A guest RX buffer: device-writable, at least a header long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RxBuffer {
    segs: Vec<Segment>,
    total: u64,
}

impl RxBuffer {
    /// Checks an RX chain.
    pub(crate) fn parse<M: GuestMemory>(
        mem: &M,
        chain: DescriptorChain<&M>,
    ) -> Result<RxBuffer, ChainError> {
        let (segs, total) = collect(mem, chain, true)?;
        if total < HDR_LEN as u64 {
            return Err(ChainError::ShortHeader);
        }
        Ok(RxBuffer { segs, total })
    }

    /// How many data bytes fit after the header (at most [`MAX_PKT_LEN`]).
    pub(crate) fn data_capacity(&self) -> usize {
        let room = (self.total - HDR_LEN as u64).min(u64::from(MAX_PKT_LEN));
        usize::try_from(room).unwrap_or(0)
    }

    /// Writes a packet: `header` (whose `len` must be `data.len()`) and `data`.
    /// Returns the number of bytes written, or `None` if guest memory refused
    /// them.
    pub(crate) fn write<M: GuestMemory>(
        &self,
        mem: &M,
        header: &Header,
        data: &[u8],
    ) -> Option<u32> {
        if data.len() > self.data_capacity() {
            return None;
        }
        let ok = write_stream(mem, &self.segs, 0, &header.to_bytes())
            && write_stream(mem, &self.segs, HDR_LEN as u64, data);
        if !ok {
            return None;
        }
        u32::try_from(HDR_LEN + data.len()).ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use virtio_queue::QueueOwnedT;

    use super::*;
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

    fn parse_descs(mem: &Mem, descs: &[(u64, u32, u16)]) -> (Result<Header, TxError>, Vec<u8>) {
        let mut gq = GuestQueue::new(mem, 0, 16);
        gq.add_chain(0, descs);
        let mut q = gq.device_queue(16);
        let chain = q.iter(mem).unwrap().next().unwrap();
        let mut data = Vec::new();
        (parse_tx(mem, chain, &mut data), data)
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
        let parse = |descs: &[(u64, u32, u16)]| {
            let mut gq = GuestQueue::new(&mem, 0, 16);
            gq.add_chain(0, descs);
            let mut q = gq.device_queue(16);
            let chain = q.iter(&mem).unwrap().next().unwrap();
            RxBuffer::parse(&mem, chain)
        };
        assert_eq!(
            parse(&[(0x1000, 64, 0)]).unwrap_err(),
            ChainError::WrongDirection
        );
        assert_eq!(
            parse(&[(0x1000, 43, WRITE)]).unwrap_err(),
            ChainError::ShortHeader
        );
        let buf = parse(&[(0x1000, 10, WRITE), (0x2000, 40, WRITE)]).unwrap();
        assert_eq!(buf.data_capacity(), 6);
        assert_eq!(buf.write(&mem, &sample(), b"1234567"), None);
        assert_eq!(buf.write(&mem, &sample(), b"hello"), Some(49));
        let mut raw = [0u8; HDR_LEN];
        mem.read_slice(&mut raw[..10], GuestAddress(0x1000))
            .unwrap();
        mem.read_slice(&mut raw[10..], GuestAddress(0x2000))
            .unwrap();
        assert_eq!(Header::from_bytes(&raw), sample());
        let mut data = [0u8; 5];
        mem.read_slice(&mut data, GuestAddress(0x2000 + 34))
            .unwrap();
        assert_eq!(&data, b"hello");
        let big = parse(&[(0x1000, 0x11000, WRITE)]).unwrap();
        assert_eq!(big.data_capacity(), MAX_PKT_LEN as usize);
    }
}
