//! Turning a descriptor chain into a block request, trusting nothing in it.
//!
//! A chain is read as the virtio spec frames it, whatever the descriptor
//! boundaries: a device-readable byte stream, then a device-writable one. The
//! readable stream starts with the 16-byte header (type, reserved, sector); the
//! last byte of the writable stream is the status. Data is the rest of the
//! readable stream for writes, the rest of the writable stream for reads and
//! GET_ID. Every buffer is checked against guest memory before any I/O.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use super::disk::Segment;

/// Size of the request header.
pub(crate) const HEADER_LEN: u32 = 16;

/// What the driver asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestType {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    /// Make written data durable.
    Flush,
    /// Return the device ID string.
    GetId,
    /// Any other type.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> RequestType {
        match value {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            other => RequestType::Unsupported(other),
        }
    }
}

/// Why a chain is not a well-formed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChainError {
    /// The chain does not end: it loops, is longer than the queue, runs past
    /// 4 GiB in total, or a descriptor cannot be read.
    Unterminated,
    /// A buffer is not (entirely) in guest memory.
    OutOfMemory,
    /// A device-readable buffer follows a device-writable one.
    ReadableAfterWritable,
    /// Fewer than 16 device-readable bytes for the header.
    ShortHeader,
    /// No device-writable byte for the status.
    NoStatus,
    /// Data in the wrong direction for the request type.
    WrongDirection,
    /// More data buffers than the device's `seg_max`.
    TooManySegments,
}

/// A well-formed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) kind: RequestType,
    pub(crate) sector: u64,
    pub(crate) data: Vec<Segment>,
    pub(crate) data_len: u64,
}

/// A parsed chain: the request (or why there is none) and where its status
/// byte goes, if anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParsedChain {
    pub(crate) request: Result<Request, ChainError>,
    pub(crate) status: Option<GuestAddress>,
}

/// The chain's buffers in order, split by direction; empty buffers dropped.
struct Streams {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
}

fn collect<M: GuestMemory>(mem: &M, chain: DescriptorChain<&M>) -> (Streams, Option<ChainError>) {
    let mut streams = Streams {
        readable: Vec::new(),
        writable: Vec::new(),
    };
    let mut error = None;
    let mut terminated = false;
    for desc in chain {
        terminated = !desc.has_next();
        if desc.len() == 0 {
            continue;
        }
        let seg = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        let access = if desc.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(seg.addr, seg.len as usize, access) {
            error = error.or(Some(ChainError::OutOfMemory));
            // Keep the shape of the chain (for the status byte) but never
            // touch this buffer.
            if desc.is_write_only() {
                streams.writable.push(Segment { len: 0, ..seg });
            }
            continue;
        }
        if desc.is_write_only() {
            streams.writable.push(seg);
        } else {
            if !streams.writable.is_empty() {
                error = error.or(Some(ChainError::ReadableAfterWritable));
            }
            streams.readable.push(seg);
        }
    }
    // virtio-queue ends the iteration early, without an error, on loops,
    // over-long chains and unreadable descriptors: the last descriptor then
    // still says another one follows.
    if !terminated {
        error = Some(ChainError::Unterminated);
    }
    (streams, error)
}

/// Removes the last byte of the writable stream and returns its address.
/// `None` if that byte is not in guest memory or there is none.
fn take_status(writable: &mut Vec<Segment>) -> Option<GuestAddress> {
    let last = writable.last_mut()?;
    if last.len == 0 {
        // The last writable buffer was outside guest memory.
        return None;
    }
    last.len -= 1;
    let status = last.addr.checked_add(u64::from(last.len));
    if last.len == 0 {
        writable.pop();
    }
    status
}

/// Reads the 16-byte header from the front of the readable stream and returns
/// the remaining readable buffers.
fn take_header<M: GuestMemory>(
    mem: &M,
    readable: &[Segment],
) -> Result<(Header, Vec<Segment>), ChainError> {
    let mut header = [0u8; HEADER_LEN as usize];
    let mut filled = 0u32;
    let mut rest = Vec::new();
    for seg in readable {
        let take = (HEADER_LEN - filled).min(seg.len);
        if take > 0 {
            let dst = &mut header[filled as usize..(filled + take) as usize];
            mem.read_slice(dst, seg.addr)
                .map_err(|_| ChainError::OutOfMemory)?;
            filled += take;
        }
        let left = seg.len - take;
        if left > 0 {
            let addr = seg
                .addr
                .checked_add(u64::from(take))
                .ok_or(ChainError::OutOfMemory)?;
            rest.push(Segment { addr, len: left });
        }
    }
    if filled < HEADER_LEN {
        return Err(ChainError::ShortHeader);
    }
    Ok((header, rest))
}

/// The raw request header.
type Header = [u8; HEADER_LEN as usize];

fn field_u32(header: &Header, at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&header[at..at + 4]);
    u32::from_le_bytes(bytes)
}

fn field_u64(header: &Header, at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&header[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Parses `chain` (whose buffers live in `mem`) into a request with at most
/// `seg_max` data buffers.
pub(crate) fn parse<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
    seg_max: usize,
) -> ParsedChain {
    let (mut streams, error) = collect(mem, chain);
    let status = take_status(&mut streams.writable);
    let request = match (error, status) {
        (Some(e), _) => Err(e),
        (None, None) => Err(ChainError::NoStatus),
        (None, Some(_)) => request(mem, streams, seg_max),
    };
    ParsedChain { request, status }
}

fn request<M: GuestMemory>(
    mem: &M,
    streams: Streams,
    seg_max: usize,
) -> Result<Request, ChainError> {
    let (header, readable_data) = take_header(mem, &streams.readable)?;
    let kind = RequestType::from(field_u32(&header, 0));
    let sector = field_u64(&header, 8);
    let data = match kind {
        RequestType::In | RequestType::GetId => {
            if !readable_data.is_empty() {
                return Err(ChainError::WrongDirection);
            }
            streams.writable
        }
        RequestType::Out => {
            if !streams.writable.is_empty() {
                return Err(ChainError::WrongDirection);
            }
            readable_data
        }
        RequestType::Flush | RequestType::Unsupported(_) => Vec::new(),
    };
    if data.len() > seg_max {
        return Err(ChainError::TooManySegments);
    }
    let data_len = data.iter().map(|s| u64::from(s.len)).sum();
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use virtio_queue::QueueOwnedT;

    use super::*;
    use crate::virtio::test_utils::{memory, GuestQueue, Mem, NEXT, WRITE};

    const HDR: u64 = 0x4000;
    const DATA: u64 = 0x5000;
    const STATUS: u64 = 0x6000;

    fn write_header(mem: &Mem, at: u64, kind: u32, sector: u64) {
        mem.write_obj(kind.to_le(), GuestAddress(at)).unwrap();
        mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(at + 8)).unwrap();
    }

    /// Makes `descs` available as one chain and parses it.
    fn parse_descs(mem: &Mem, descs: &[(u64, u32, u16)]) -> ParsedChain {
        let mut gq = GuestQueue::new(mem, 0, 16);
        gq.add_chain(0, descs);
        let mut q = gq.device_queue(16);
        let chain = q.iter(mem).unwrap().next().unwrap();
        parse(mem, chain, 8)
    }

    #[test]
    fn classic_layout_read() {
        let mem = memory(&[(0, 0x10000)]);
        write_header(&mem, HDR, VIRTIO_BLK_T_IN, 3);
        let parsed = parse_descs(
            &mem,
            &[(HDR, 16, 0), (DATA, 1024, WRITE), (STATUS, 1, WRITE)],
        );
        assert_eq!(parsed.status, Some(GuestAddress(STATUS)));
        let req = parsed.request.unwrap();
        assert_eq!(
            (req.kind, req.sector, req.data_len),
            (RequestType::In, 3, 1024)
        );
        assert_eq!(
            req.data,
            [Segment {
                addr: GuestAddress(DATA),
                len: 1024
            }]
        );
    }

    #[test]
    fn any_layout_write_with_header_and_data_merged() {
        let mem = memory(&[(0, 0x10000)]);
        write_header(&mem, HDR, VIRTIO_BLK_T_OUT, 9);
        // Header split over two descriptors, the second one carrying data too.
        let parsed = parse_descs(
            &mem,
            &[(HDR, 10, 0), (HDR + 10, 6 + 512, 0), (STATUS, 1, WRITE)],
        );
        let req = parsed.request.unwrap();
        assert_eq!(
            (req.kind, req.sector, req.data_len),
            (RequestType::Out, 9, 512)
        );
        assert_eq!(req.data[0].addr, GuestAddress(HDR + 16));
        // Data and status in one writable buffer: the status is its last byte.
        write_header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
        let parsed = parse_descs(&mem, &[(HDR, 16, 0), (DATA, 513, WRITE)]);
        assert_eq!(parsed.status, Some(GuestAddress(DATA + 512)));
        assert_eq!(parsed.request.unwrap().data_len, 512);
    }

    #[test]
    fn request_types() {
        let mem = memory(&[(0, 0x10000)]);
        for (raw, kind) in [
            (VIRTIO_BLK_T_FLUSH, RequestType::Flush),
            (VIRTIO_BLK_T_GET_ID, RequestType::GetId),
            (0x1234, RequestType::Unsupported(0x1234)),
        ] {
            write_header(&mem, HDR, raw, 0);
            let parsed = parse_descs(&mem, &[(HDR, 16, 0), (STATUS, 1, WRITE)]);
            assert_eq!(parsed.request.unwrap().kind, kind);
        }
    }

    #[test]
    fn malformed_chains() {
        let mem = memory(&[(0, 0x10000)]);
        write_header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
        type Case<'a> = (&'a [(u64, u32, u16)], ChainError, Option<u64>);
        let cases: &[Case] = &[
            (
                &[(HDR, 8, 0), (STATUS, 1, WRITE)],
                ChainError::ShortHeader,
                Some(STATUS),
            ),
            (&[(HDR, 16, 0)], ChainError::NoStatus, None),
            (
                &[(HDR, 16, 0), (STATUS, 0, WRITE)],
                ChainError::NoStatus,
                None,
            ),
            (
                &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, WRITE)],
                ChainError::WrongDirection,
                Some(STATUS),
            ),
            (
                &[
                    (HDR, 16, 0),
                    (DATA, 512, WRITE),
                    (DATA + 512, 8, 0),
                    (STATUS, 1, WRITE),
                ],
                ChainError::ReadableAfterWritable,
                Some(STATUS),
            ),
            (
                &[(HDR, 16, 0), (0xff000, 512, WRITE), (STATUS, 1, WRITE)],
                ChainError::OutOfMemory,
                Some(STATUS),
            ),
            (
                &[(HDR, 16, 0), (DATA, 512, WRITE), (0xfff0_0000, 1, WRITE)],
                ChainError::OutOfMemory,
                None,
            ),
            (
                &[(HDR, 16, 0), (DATA, 0xffff_fff0, WRITE), (STATUS, 1, WRITE)],
                ChainError::Unterminated,
                None,
            ),
        ];
        for (i, (descs, error, status)) in cases.iter().enumerate() {
            let parsed = parse_descs(&mem, descs);
            assert_eq!(parsed.request, Err(*error), "case {i}");
            assert_eq!(parsed.status, status.map(GuestAddress), "case {i}");
        }

        write_header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
        let parsed = parse_descs(
            &mem,
            &[(HDR, 16, 0), (DATA, 512, WRITE), (STATUS, 1, WRITE)],
        );
        assert_eq!(parsed.request, Err(ChainError::WrongDirection));
        let many: Vec<_> = std::iter::once((HDR, 16, 0))
            .chain((0..9).map(|i| (DATA + 512 * i, 512, 0)))
            .chain(std::iter::once((STATUS, 1, WRITE)))
            .collect();
        let parsed = parse_descs(&mem, &many);
        assert_eq!(parsed.request, Err(ChainError::TooManySegments));
    }

    #[test]
    fn looping_chain_is_unterminated() {
        let mem = memory(&[(0, 0x10000)]);
        write_header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
        let mut gq = GuestQueue::new(&mem, 0, 16);
        gq.set_desc(0, (HDR, 16, NEXT, 1));
        gq.set_desc(1, (STATUS, 1, WRITE | NEXT, 0));
        gq.publish(0);
        let mut q = gq.device_queue(16);
        let chain = q.iter(&mem).unwrap().next().unwrap();
        let parsed = parse(&mem, chain, 8);
        assert_eq!(parsed.request, Err(ChainError::Unterminated));
    }

    #[test]
    fn head_index_beyond_the_queue_yields_nothing() {
        let mem = memory(&[(0, 0x10000)]);
        let mut gq = GuestQueue::new(&mem, 0, 16);
        gq.publish(40);
        let mut q = gq.device_queue(16);
        let chain = q.iter(&mem).unwrap().next().unwrap();
        assert_eq!(chain.head_index(), 40);
        let parsed = parse(&mem, chain, 8);
        assert_eq!(parsed.request, Err(ChainError::Unterminated));
        assert_eq!(parsed.status, None);
    }
}
