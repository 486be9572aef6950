//! Turning a descriptor chain into a block request, trusting nothing in it.
//!
//! A chain is read as the virtio spec frames it, whatever the descriptor
//! boundaries: a device-readable byte stream, then a device-writable one. The
//! readable stream starts with the 16-byte header (type, reserved, sector); the
//! last byte of the writable stream is the status. Data is the rest of the
//! readable stream for writes, the rest of the writable stream for reads and
//! GET_ID. Every buffer is checked against guest memory before any I/O: each
//! one is looked up once, and its host slices go into the request's iovec
//! list, from which the header is read and the data is transferred.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestMemory, VolatileMemory};

use crate::virtio::iov::{GuestIoVecs, GuestRegions, GuestSlice};

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

/// A well-formed request. Its data buffers are the iovec list given to
/// [`parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) kind: RequestType,
    pub(crate) sector: u64,
    pub(crate) data_len: u64,
}

/// A parsed chain: the request (or why there is none) and where its status
/// byte goes, if anywhere.
pub(crate) struct ParsedChain<'m, M: GuestMemory> {
    pub(crate) request: Result<Request, ChainError>,
    pub(crate) status: Option<GuestSlice<'m, M>>,
}

impl Streams {
    /// Counts a readable buffer of `len` bytes, all in host slice `slice`
    /// or starting there.
    fn add_readable<M: GuestMemory>(&mut self, slice: &GuestSlice<'_, M>, len: u32) {
        if self.readable_bytes == 0 && slice.len() == len as usize {
            // The common layout: the header in one host slice, read at once.
            self.header = slice.get_ref::<Header>(0).ok().map(|r| r.load());
        }
        if self.readable_bytes + u64::from(len) > u64::from(HEADER_LEN) {
            self.readable_data_descs += 1;
        }
        self.readable_bytes += u64::from(len);
    }
}

/// The shape of a chain's two streams, as the walk found it.
#[derive(Default)]
struct Streams {
    /// The header, when the first readable buffer holds it whole.
    header: Option<Header>,
    readable_bytes: u64,
    /// Readable descriptors holding bytes past the header.
    readable_data_descs: usize,
    writable_bytes: u64,
    writable_descs: usize,
}

/// Parses `chain` (whose buffers live in `mem`) into a request with at most
/// `seg_max` data buffers. The chain's buffers go to `data` (empty at
/// first), which holds the request's data buffers when it is well formed.
pub(crate) fn parse<'m, M: GuestMemory>(
    mem: &GuestRegions<'m, M>,
    chain: impl Iterator<Item = Descriptor>,
    seg_max: usize,
    data: &mut GuestIoVecs<'_, 'm>,
) -> ParsedChain<'m, M> {
    let mut streams = Streams::default();
    let mut error = None;
    let mut terminated = false;
    // Any device-writable buffer seen, in guest memory or not.
    let mut seen_writable = false;
    // The last host slice of the last writable buffer and that buffer's
    // length; `None` if it was not in guest memory.
    let mut last_writable = None;
    for desc in chain {
        terminated = !desc.has_next();
        let len = desc.len();
        if len == 0 {
            continue;
        }
        let writable = desc.is_write_only();
        // A buffer outside guest memory is never touched; a writable one
        // still counts for the shape of the chain (the status byte).
        let pushed = data.push_guest(mem, desc.addr(), len as usize, writable);
        if writable {
            seen_writable = true;
            last_writable = pushed.map(|slice| (slice, len));
            if last_writable.is_some() {
                streams.writable_descs += 1;
                streams.writable_bytes += u64::from(len);
            } else {
                error = error.or(Some(ChainError::OutOfMemory));
            }
        } else if let Some(slice) = pushed {
            streams.add_readable::<M>(&slice, len);
            if seen_writable {
                error = error.or(Some(ChainError::ReadableAfterWritable));
            }
        } else {
            error = error.or(Some(ChainError::OutOfMemory));
        }
    }
    // virtio-queue ends the iteration early, without an error, on loops,
    // over-long chains and unreadable descriptors: the last descriptor then
    // still says another one follows.
    if !terminated {
        error = Some(ChainError::Unterminated);
    }
    let status = take_status::<M>(last_writable, &mut streams, data);
    let request = match (error, &status) {
        (Some(e), _) => Err(e),
        (None, None) => Err(ChainError::NoStatus),
        (None, Some(_)) => request(&streams, seg_max, data),
    };
    ParsedChain { request, status }
}

/// Takes the status byte, the last byte of the writable stream (in
/// `last_writable`, the last writable buffer's last host slice and the
/// buffer's length), off the data buffers.
fn take_status<'m, M: GuestMemory>(
    last_writable: Option<(GuestSlice<'m, M>, u32)>,
    streams: &mut Streams,
    data: &mut GuestIoVecs<'_, 'm>,
) -> Option<GuestSlice<'m, M>> {
    let (slice, len) = last_writable?;
    let byte = slice.subslice(slice.len() - 1, 1).ok()?;
    data.pop_last_byte();
    streams.writable_bytes -= 1;
    if len == 1 {
        streams.writable_descs -= 1;
    }
    Some(byte)
}

/// Reads the header off the front of `data` and checks the data buffers
/// that remain against the request type.
fn request(
    streams: &Streams,
    seg_max: usize,
    data: &mut GuestIoVecs<'_, '_>,
) -> Result<Request, ChainError> {
    if streams.readable_bytes < u64::from(HEADER_LEN) {
        return Err(ChainError::ShortHeader);
    }
    // The readable buffers come first in the list: the header is there.
    let header = streams.header.unwrap_or_else(|| {
        let mut header = [0u8; HEADER_LEN as usize];
        data.copy_to(0, &mut header);
        header
    });
    data.advance(HEADER_LEN as usize);
    let kind = RequestType::from(field_u32(&header, 0));
    let sector = field_u64(&header, 8);
    let (segments, data_len) = match kind {
        RequestType::In | RequestType::GetId => {
            if streams.readable_bytes > u64::from(HEADER_LEN) {
                return Err(ChainError::WrongDirection);
            }
            (streams.writable_descs, streams.writable_bytes)
        }
        RequestType::Out => {
            if streams.writable_descs > 0 {
                return Err(ChainError::WrongDirection);
            }
            (
                streams.readable_data_descs,
                streams.readable_bytes - u64::from(HEADER_LEN),
            )
        }
        RequestType::Flush | RequestType::Unsupported(_) => (0, 0),
    };
    if segments > seg_max {
        return Err(ChainError::TooManySegments);
    }
    Ok(Request {
        kind,
        sector,
        data_len,
    })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use virtio_queue::QueueOwnedT;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    use super::*;
    use crate::virtio::iov::IoVecBuf;
    use crate::virtio::test_utils::{memory, GuestQueue, Mem, NEXT, WRITE};

    const HDR: u64 = 0x4000;
    const DATA: u64 = 0x5000;
    const STATUS: u64 = 0x6000;

    fn write_header(mem: &Mem, at: u64, kind: u32, sector: u64) {
        mem.write_obj(kind.to_le(), GuestAddress(at)).unwrap();
        mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(at + 8)).unwrap();
    }

    /// A parsed chain in guest terms: the status byte's address and the
    /// data buffers (guest address, length) of a well-formed request.
    struct Parsed {
        request: Result<Request, ChainError>,
        status: Option<GuestAddress>,
        data: Vec<(GuestAddress, usize)>,
    }

    /// The guest address of a host address in `mem` (one region at 0).
    fn guest(mem: &Mem, host: usize) -> GuestAddress {
        let base = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        GuestAddress((host - base) as u64)
    }

    fn parse_chain(mem: &Mem, chain: impl Iterator<Item = Descriptor>) -> Parsed {
        let mut buf = IoVecBuf::default();
        let mut data = buf.start();
        let parsed = parse(&GuestRegions::new(mem), chain, 8, &mut data);
        let status = parsed
            .status
            .map(|s| guest(mem, s.ptr_guard().as_ptr() as usize));
        let data = data
            .host_buffers()
            .into_iter()
            .map(|(host, len)| (guest(mem, host), len))
            .collect();
        Parsed {
            request: parsed.request,
            status,
            data,
        }
    }

    /// Makes `descs` available as one chain and parses it.
    fn parse_descs(mem: &Mem, descs: &[(u64, u32, u16)]) -> Parsed {
        let mut gq = GuestQueue::new(mem, 0, 16);
        gq.add_chain(0, descs);
        let mut q = gq.device_queue(16);
        let chain = q.iter(mem).unwrap().next().unwrap();
        parse_chain(mem, chain)
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
        assert_eq!(parsed.data, [(GuestAddress(DATA), 1024)]);
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
        assert_eq!(parsed.data, [(GuestAddress(HDR + 16), 512)]);
        // Data and status in one writable buffer: the status is its last byte.
        write_header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
        let parsed = parse_descs(&mem, &[(HDR, 16, 0), (DATA, 513, WRITE)]);
        assert_eq!(parsed.status, Some(GuestAddress(DATA + 512)));
        assert_eq!(parsed.request.unwrap().data_len, 512);
        assert_eq!(parsed.data, [(GuestAddress(DATA), 512)]);
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
    }

    #[test]
    fn a_write_needs_readable_data_within_seg_max_buffers() {
        let mem = memory(&[(0, 0x10000)]);
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
        let parsed = parse_chain(&mem, chain);
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
        let parsed = parse_chain(&mem, chain);
        assert_eq!(parsed.request, Err(ChainError::Unterminated));
        assert_eq!(parsed.status, None);
    }
}
