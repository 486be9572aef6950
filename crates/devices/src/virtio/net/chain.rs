//! Descriptor chains as lists of guest buffers, trusting nothing in them:
//! a transmit chain is device-readable buffers holding a header and a frame,
//! a receive chain device-writable buffers for them. Every buffer is checked
//! against guest memory before it is used.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// A guest buffer: `len` bytes at `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) addr: GuestAddress,
    pub(crate) len: u32,
}

/// Which way the data goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// The device reads the buffers (transmit).
    Readable,
    /// The device writes the buffers (receive).
    Writable,
}

/// Why a chain cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChainError {
    /// The chain does not end: it loops, is longer than the queue or its
    /// indirect table, runs past 4 GiB in total, or a descriptor cannot be read.
    Unterminated,
    /// A buffer is not (entirely) in guest memory.
    OutOfMemory,
    /// A buffer goes the wrong way.
    WrongDirection,
    /// The buffers add up to more than the limit.
    TooLong,
    /// The buffers add up to less than the minimum (checked by the caller).
    TooShort,
}

/// Collects the non-empty buffers of `chain` into `out` (cleared first) and
/// returns their total length. All must go `direction`, lie in guest memory
/// and add up to at most `limit` bytes; the first violation is returned.
pub(crate) fn collect<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
    direction: Direction,
    limit: u64,
    out: &mut Vec<Segment>,
) -> Result<u64, ChainError> {
    out.clear();
    let (want_writable, access) = match direction {
        Direction::Readable => (false, Permissions::Read),
        Direction::Writable => (true, Permissions::Write),
    };
    let mut total = 0u64;
    let mut terminated = false;
    for desc in chain {
        terminated = !desc.has_next();
        if desc.is_write_only() != want_writable {
            return Err(ChainError::WrongDirection);
        }
        if desc.len() == 0 {
            continue;
        }
        total += u64::from(desc.len());
        if total > limit {
            return Err(ChainError::TooLong);
        }
        if !mem.check_range(desc.addr(), desc.len() as usize, access) {
            return Err(ChainError::OutOfMemory);
        }
        out.push(Segment {
            addr: desc.addr(),
            len: desc.len(),
        });
    }
    // virtio-queue ends the iteration early, without an error, on loops,
    // over-long chains and unreadable descriptors: the last descriptor then
    // still says another one follows (or there was none at all).
    if !terminated {
        return Err(ChainError::Unterminated);
    }
    Ok(total)
}

/// Copies the guest buffers `segs` into the front of `buf`, which must be
/// at least as long as they are together; returns the bytes copied.
pub(crate) fn gather<M: GuestMemory>(
    mem: &M,
    segs: &[Segment],
    buf: &mut [u8],
) -> Result<usize, ChainError> {
    let mut at = 0usize;
    for seg in segs {
        let end = at + seg.len as usize;
        let dst = buf.get_mut(at..end).ok_or(ChainError::TooLong)?;
        mem.read_slice(dst, seg.addr)
            .map_err(|_| ChainError::OutOfMemory)?;
        at = end;
    }
    Ok(at)
}

/// Copies `data` into the guest buffers `segs`, in order, which must hold it.
pub(crate) fn scatter<M: GuestMemory>(
    mem: &M,
    segs: &[Segment],
    mut data: &[u8],
) -> Result<(), ChainError> {
    for seg in segs {
        if data.is_empty() {
            break;
        }
        let n = data.len().min(seg.len as usize);
        mem.write_slice(&data[..n], seg.addr)
            .map_err(|_| ChainError::OutOfMemory)?;
        data = &data[n..];
    }
    if data.is_empty() {
        Ok(())
    } else {
        Err(ChainError::TooLong)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use virtio_queue::QueueT;

    use super::*;
    use crate::virtio::test_utils::{memory, GuestQueue, Mem, NEXT, WRITE};

    fn collect_descs(
        mem: &Mem,
        descs: &[(u64, u32, u16)],
        direction: Direction,
        limit: u64,
    ) -> Result<(u64, Vec<Segment>), ChainError> {
        let mut gq = GuestQueue::new(mem, 0, 16);
        gq.add_chain(0, descs);
        let mut q = gq.device_queue(16);
        let chain = q.pop_descriptor_chain(mem).unwrap();
        let mut out = vec![Segment {
            addr: GuestAddress(1),
            len: 1,
        }];
        collect(mem, chain, direction, limit, &mut out).map(|total| (total, out))
    }

    fn seg(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn readable_and_writable_chains() {
        let mem = memory(&[(0, 0x10000)]);
        let (total, segs) = collect_descs(
            &mem,
            &[(0x1000, 12, 0), (0x2000, 0, 0), (0x3000, 100, 0)],
            Direction::Readable,
            1000,
        )
        .unwrap();
        assert_eq!(total, 112);
        assert_eq!(
            segs,
            [seg(0x1000, 12), seg(0x3000, 100)],
            "empty ones skipped"
        );
        let (total, _) = collect_descs(
            &mem,
            &[(0x1000, 2048, WRITE), (0x3000, 10, WRITE)],
            Direction::Writable,
            u64::MAX,
        )
        .unwrap();
        assert_eq!(total, 2058);
    }

    #[test]
    fn bad_chains() {
        let mem = memory(&[(0, 0x10000)]);
        type Case<'a> = (&'a [(u64, u32, u16)], Direction, ChainError);
        let cases: &[Case] = &[
            (
                &[(0x1000, 12, 0), (0x2000, 10, WRITE)],
                Direction::Readable,
                ChainError::WrongDirection,
            ),
            (
                &[(0x1000, 12, WRITE), (0x2000, 10, 0)],
                Direction::Writable,
                ChainError::WrongDirection,
            ),
            (
                &[(0x1000, 12, 0), (0xfff0, 0x20, 0)],
                Direction::Readable,
                ChainError::OutOfMemory,
            ),
            (
                &[(u64::MAX - 4, 12, WRITE)],
                Direction::Writable,
                ChainError::OutOfMemory,
            ),
            (
                &[(0x1000, 600, 0), (0x2000, 500, 0)],
                Direction::Readable,
                ChainError::TooLong,
            ),
        ];
        for (i, (descs, direction, error)) in cases.iter().enumerate() {
            assert_eq!(
                collect_descs(&mem, descs, *direction, 1000).map(|r| r.0),
                Err(*error),
                "case {i}"
            );
        }
        // More than 4 GiB in total: virtio-queue stops the chain.
        assert_eq!(
            collect_descs(
                &mem,
                &[(0x1000, 0x10, 0), (0x1000, 0xffff_fff8, 0)],
                Direction::Readable,
                u64::MAX
            )
            .map(|r| r.0),
            Err(ChainError::Unterminated)
        );
    }

    #[test]
    fn loops_and_bogus_heads_are_unterminated() {
        let mem = memory(&[(0, 0x10000)]);
        let mut gq = GuestQueue::new(&mem, 0, 16);
        gq.set_desc(0, (0x1000, 12, NEXT, 1));
        gq.set_desc(1, (0x2000, 12, NEXT, 0));
        gq.publish(0);
        gq.publish(99);
        let mut q = gq.device_queue(16);
        let mut out = Vec::new();
        for _ in 0..2 {
            let chain = q.pop_descriptor_chain(&mem).unwrap();
            assert_eq!(
                collect(&mem, chain, Direction::Readable, u64::MAX, &mut out),
                Err(ChainError::Unterminated)
            );
        }
        assert_eq!(q.next_avail(), 2);
    }

    #[test]
    fn gather_and_scatter_cross_buffers() {
        let mem = memory(&[(0, 0x2000), (0x2000, 0x2000)]);
        let data: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        // The second buffer spans two memory regions.
        let segs = [seg(0x100, 100), seg(0x1f80, 200)];
        scatter(&mem, &segs, &data).unwrap();
        let mut back = [0u8; 400];
        assert_eq!(gather(&mem, &segs, &mut back).unwrap(), 300);
        assert_eq!(back[..300], data[..]);
        assert_eq!(
            scatter(&mem, &segs[..1], &data),
            Err(ChainError::TooLong),
            "does not fit"
        );
        assert_eq!(
            gather(&mem, &segs, &mut back[..200]),
            Err(ChainError::TooLong)
        );
        assert_eq!(
            scatter(&mem, &[seg(0x3f00, 0x200)], &data),
            Err(ChainError::OutOfMemory)
        );
    }
}
